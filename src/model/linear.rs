//! `Linear` is the single seam where weight formats plug in: the decoder only calls `forward`
//! and never asks which format it holds. A LoRA adapter wraps whatever base kind is there, so
//! new weight formats only add variants to `LinearKind`.
use crate::error::{Error, Result};
use crate::kernels::gemm;
use crate::kernels::kquant::{KFormat, KQuantRows};
use crate::kernels::kquant_dot::{self, K8Acts, KDecode, KDotFn};
use crate::model::half_linear::HalfLinear;
use crate::quantize::gguf_linear::INT8_GEMM_MIN_ROWS;
use crate::quantize::{GgufLinear, QuantLinear};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Shape, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};

/// A weight as a source hands it over: dense (any float dtype) or GGUF block-quantized.
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Tensor),
    Quant(Arc<QTensor>),
    /// AutoAWQ int4, bitsandbytes int8/NF4/FP4: kept packed, with kernels of their own.
    Custom(Arc<dyn QuantLinear>),
}

impl Weight {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t) => t.dims().to_vec(),
            Weight::Quant(q) => q.shape().dims().to_vec(),
            Weight::Custom(c) => vec![c.out_features(), c.in_features()],
        }
    }

    /// The weight as a dense tensor of `dtype` (dequantizing block formats).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(t) => t.to_dtype(dtype)?,
            Weight::Quant(q) => q.dequantize(&q.device())?.to_dtype(dtype)?,
            Weight::Custom(c) => custom_dense(c.as_ref(), dtype)?,
        })
    }
}

fn custom_dense(c: &dyn QuantLinear, dtype: DType) -> Result<Tensor> {
    let w = Tensor::from_vec(c.dequantize_weight(), (c.out_features(), c.in_features()), &Device::Cpu)?;
    Ok(w.to_dtype(dtype)?)
}

/// From this many input rows on, quantized weights are dequantized for a dense GEMM.
const PREFILL_DEQUANT_ROWS: usize = 16;

/// Bytes a dense tensor holds.
pub fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// Rows of `x` `[..., in]`.
fn rows_of(x: &Tensor) -> usize {
    x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1)
}

/// How the base weight is stored.
#[derive(Clone, Debug)]
pub enum LinearKind {
    /// `[out, in]` in the compute dtype.
    Dense(Tensor),
    /// GGUF blocks of types without kernels of our own (K-quants, ...): candle's QMatMul.
    Quant(QMatMul),
    /// GGUF Q8_0/Q4_0/Q4_1 blocks with our kernels (`crate::kernels`). Kept apart from
    /// `Custom` because, like `Quant`, training densifies it and a tied head is recognised.
    Gguf(Arc<GgufLinear>),
    /// Formats with kernels of their own (AWQ, bitsandbytes), see `crate::quantize`.
    Custom(Arc<dyn QuantLinear>),
}

/// Dropout state shared by all adapters of one model. `None` outside training, so inference
/// and evaluation never drop; the trainer seeds it per micro-batch so runs are reproducible.
#[derive(Clone, Debug, Default)]
pub struct LoraDropout(pub Arc<Mutex<Option<rand::rngs::SmallRng>>>);

impl LoraDropout {
    pub fn seed(&self, seed: Option<u64>) {
        if let Ok(mut g) = self.0.lock() {
            *g = seed.map(rand::rngs::SmallRng::seed_from_u64);
        }
    }

    /// A keep-mask scaled by 1/(1-p) for `x`, or None when not training.
    fn mask(&self, x: &Tensor, p: f64) -> Result<Option<Tensor>> {
        let Ok(mut g) = self.0.lock() else { return Ok(None) };
        let Some(rng) = g.as_mut() else { return Ok(None) };
        if p <= 0.0 {
            return Ok(None);
        }
        let keep = 1.0 / (1.0 - p);
        let v: Vec<f64> = (0..x.elem_count())
            .map(|_| if rng.gen::<f64>() < p { 0.0 } else { keep })
            .collect();
        Ok(Some(Tensor::from_vec(v, x.shape(), x.device())?.to_dtype(x.dtype())?))
    }
}

/// Low-rank update `W + scale * B @ A` (A: `[r, in]`, B: `[out, r]`).
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f64,
    pub dropout_state: LoraDropout,
}

impl LoraAdapter {
    /// `scale * B @ A` as a dense `[out, in]` tensor (for merging).
    pub fn delta(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dt = self.a.dtype();
        let x = x.to_dtype(dt)?;
        let x = match self.dropout_state.mask(&x, self.dropout)? {
            Some(m) => (x * m)?,
            None => x,
        };
        let h = matmul_t(&x, self.a.as_tensor())?;
        Ok((matmul_t(&h, self.b.as_tensor())? * self.scale)?)
    }
}

#[derive(Clone, Debug)]
pub struct Linear {
    pub kind: LinearKind,
    pub lora: Option<LoraAdapter>,
}

/// `a @ b`, upcasting bf16 to f32 on the CPU, where candle has no bf16 GEMM: weights stay bf16
/// in memory and the arithmetic is f32.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() == DType::BF16 && a.device().is_cpu() {
        return Ok(a
            .to_dtype(DType::F32)?
            .matmul(&b.to_dtype(DType::F32)?)?
            .to_dtype(DType::BF16)?);
    }
    Ok(a.matmul(b)?)
}

/// `x @ w^T` for `x` of shape `[..., in]` and `w` of shape `[out, in]`.
fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let n = rows_of(x);
    // Shapes that do not fit fall through to candle, which reports them as errors.
    if (1..=crate::kernels::f32_matvec::MAX_ROWS).contains(&n)
        && w.dims().len() == 2
        && w.dims()[1] == k
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.device().is_cpu()
        && w.device().is_cpu()
        && w.is_contiguous()
        && !x.track_op()
        && !w.track_op()
    {
        let (rows, cols) = w.dims2()?;
        let (xs, ws) = (x.flatten_all()?.to_vec1::<f32>()?, w.flatten_all()?);
        let mut y = vec![0f32; n * rows];
        // The weight is read in place (a contiguous f32 tensor flattens without a copy).
        let (storage, layout) = ws.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            let wv = &cpu.as_slice::<f32>()?[a..b];
            crate::kernels::f32_matvec::matvec(wv, rows, cols, &xs, n, &mut y);
            return outputs_of(y, x, rows);
        }
    }
    let y = matmul(&x.reshape(((), k))?, &w.t()?)?;
    let mut out = dims;
    let n = out.len();
    out[n - 1] = w.dims()[0];
    Ok(y.reshape(out)?)
}

/// `x @ w^T` for a frozen `w` whose backward pass yields only `dx`. candle's matmul backward
/// also builds a full-size gradient for the weight, which LoRA training never uses: that costs
/// a matmul and a weight-sized buffer per projection per step.
struct FrozenMatmul {
    /// `[out, in]` on the CPU, in the input's dtype.
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen-matmul needs a contiguous input".into()))?;
        let dims = l.shape().dims();
        let cpu = &Device::Cpu;
        let wt = self.w.t()?;
        Ok(match s {
            CpuStorage::F32(v) => {
                let y = Tensor::from_slice(&v[start..end], dims, cpu)?.matmul(&wt)?;
                (CpuStorage::F32(y.flatten_all()?.to_vec1()?), y.shape().clone())
            }
            CpuStorage::F64(v) => {
                let y = Tensor::from_slice(&v[start..end], dims, cpu)?.matmul(&wt)?;
                (CpuStorage::F64(y.flatten_all()?.to_vec1()?), y.shape().clone())
            }
            _ => return Err(candle_core::Error::Msg("frozen-matmul supports f32 and f64".into())),
        })
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// Q4_K / Q5_K / Q6_K tensors, which the int8 GEMM reads in place.
fn kquant_format(qt: &QTensor) -> Option<KFormat> {
    match qt.dtype() {
        GgmlDType::Q4K => Some(KFormat::Q4K),
        GgmlDType::Q5K => Some(KFormat::Q5K),
        GgmlDType::Q6K => Some(KFormat::Q6K),
        _ => None,
    }
}

/// `x [.., in] W^T` for a CPU Q4_K / Q5_K / Q6_K weight through the int8 GEMM.
fn kquant_gemm(qt: &QTensor, x: &Tensor, rows: usize) -> Result<Tensor> {
    let f = kquant_format(qt).ok_or_else(|| Error::tensor("k-quant GEMM", format!("{:?}", qt.dtype())))?;
    let (out, inf) = qt.shape().dims2()?;
    let data = qt.data()?;
    let w = KQuantRows::new(f, out, inf, &data).map_err(|m| Error::tensor("k-quant weight", m))?;
    outputs_of(gemm::gemm(&w, &x.flatten_all()?.to_vec1::<f32>()?, rows), x, out)
}

/// A kernel's row-major outputs `y` for input `x [.., in]` as a tensor `[.., out]`.
fn outputs_of(y: Vec<f32>, x: &Tensor, out: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("x has a feature dim") = out;
    Ok(Tensor::from_vec(y, dims, x.device())?)
}

/// Q4_K / Q6_K tensors whose decode kernel this CPU runs (AVX-512 VNNI), with that kernel.
fn kquant_decoder(qt: &QTensor) -> Option<(KDecode, KDotFn)> {
    let f = match qt.dtype() {
        GgmlDType::Q4K => KDecode::Q4K,
        GgmlDType::Q6K => KDecode::Q6K,
        _ => return None,
    };
    Some((f, f.best()?))
}

/// `x [.., in] W^T` for a few rows of a CPU Q4_K / Q6_K weight through our decode kernels.
fn kquant_decode(qt: &QTensor, f: KDecode, dot: KDotFn, x: &Tensor) -> Result<Tensor> {
    let (out, inf) = qt.shape().dims2()?;
    let data = qt.data()?;
    let err = |m| Error::tensor("k-quant weight", m);
    let xa = K8Acts::new(&x.flatten_all()?.to_vec1::<f32>()?, inf, f).map_err(err)?;
    // SAFETY: `dot` is `f`'s kernel from `KDecode::best`, which checked the CPU.
    let y = unsafe { kquant_dot::matvec(&data, out, inf, &xa, dot) }.map_err(err)?;
    outputs_of(y, x, out)
}

/// `x @ W^T` for a quantized base kind (no gradient).
fn quant_forward(kind: &LinearKind, x: &Tensor) -> Result<Tensor> {
    match kind {
        LinearKind::Dense(w) => dense_forward(x, w),
        LinearKind::Custom(c) => c.forward(x),
        // `GgufLinear` picks its kernel by row count (decode kernels, int8 GEMM, or dequantize +
        // dense GEMM where the CPU lacks VNNI).
        LinearKind::Gguf(g) => g.forward(x),
        LinearKind::Quant(q) => {
            let dt = x.dtype();
            let xf = if dt == DType::F32 {
                x.contiguous()?
            } else {
                x.to_dtype(DType::F32)?
            };
            let rows = rows_of(x);
            // Block-quantized kernels are matrix-vector products: fine for decoding, but for
            // a prompt of many rows a dense GEMM on the dequantized weight is several times
            // faster, and dequantizing is cheap next to the GEMM itself.
            let y = match q {
                QMatMul::QTensor(qt)
                    if rows >= INT8_GEMM_MIN_ROWS
                        && xf.device().is_cpu()
                        && gemm::available()
                        && kquant_format(qt).is_some() =>
                {
                    kquant_gemm(qt, &xf, rows)?
                }
                // candle's k-quant kernels are AVX2; ours use VNNI on the same activation
                // quantization (see `kernels::kquant_dot`).
                QMatMul::QTensor(qt)
                    if rows < PREFILL_DEQUANT_ROWS
                        && xf.device().is_cpu()
                        && xf.dims().last() == qt.shape().dims().last() =>
                {
                    match kquant_decoder(qt) {
                        Some((f, dot)) => kquant_decode(qt, f, dot, &xf)?,
                        None => q.forward(&xf)?,
                    }
                }
                QMatMul::QTensor(qt) if rows >= PREFILL_DEQUANT_ROWS => {
                    dense_forward(&xf, &qt.dequantize(&qt.device())?)?
                }
                _ => q.forward(&xf)?,
            };
            Ok(if dt == DType::F32 { y } else { y.to_dtype(dt)? })
        }
    }
}

/// `x @ W^T` for a frozen quantized `W` with the input gradient `grad @ W`. The weight is
/// dequantized in the backward pass only, one projection at a time, so a LoRA run on a 4- or
/// 8-bit base keeps the base's memory footprint (the QLoRA recipe).
struct QuantBaseMatmul {
    kind: LinearKind,
}

impl CustomOp1 for QuantBaseMatmul {
    fn name(&self) -> &'static str {
        "quant-base-matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("quant-base-matmul needs a contiguous input".into()))?;
        let CpuStorage::F32(v) = s else {
            return Err(candle_core::Error::Msg("quant-base-matmul takes f32 input".into()));
        };
        let x = Tensor::from_slice(&v[start..end], l.shape(), &Device::Cpu)?;
        let y = quant_forward(&self.kind, &x).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1()?), y.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let lin = Linear {
            kind: self.kind.clone(),
            lora: None,
        };
        let w = lin
            .base_dense(DType::F32)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Some(grad.to_dtype(DType::F32)?.matmul(&w)?))
    }
}

fn quant_base_differentiable(kind: &LinearKind, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let x2 = x.reshape(((), k))?.to_dtype(DType::F32)?.contiguous()?;
    let y = x2.apply_op1(QuantBaseMatmul { kind: kind.clone() })?;
    let mut out = dims;
    let n = out.len();
    out[n - 1] = y.dims()[1];
    Ok(y.reshape(out)?.to_dtype(x.dtype())?)
}

/// `x @ w^T`, through `FrozenMatmul` when gradients flow through `x` but `w` is not trained.
fn dense_forward(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let frozen_w = x.track_op()
        && !w.track_op()
        && x.device().is_cpu()
        && x.dtype() == w.dtype()
        && matches!(x.dtype(), DType::F32 | DType::F64);
    if !frozen_w {
        return matmul_t(x, w);
    }
    let dims = x.dims().to_vec();
    let k = dims[dims.len() - 1];
    let y = x
        .reshape(((), k))?
        .contiguous()?
        .apply_op1(FrozenMatmul { w: w.clone() })?;
    let mut out = dims;
    let n = out.len();
    out[n - 1] = w.dims()[0];
    Ok(y.reshape(out)?)
}

impl Linear {
    pub fn new(w: Weight, dtype: DType) -> Result<Self> {
        Ok(match w {
            Weight::Dense(t) => {
                // Half-precision weights stay at 2 bytes on the CPU (f32 arithmetic in the
                // kernels) rather than being upcast: half the bytes per token and the memory.
                let half = matches!(t.dtype(), DType::F16 | DType::BF16);
                let t = if half && dtype == DType::F32 {
                    t
                } else {
                    t.to_dtype(dtype)?
                };
                match HalfLinear::from_tensor(&t)? {
                    Some(h) => Linear {
                        kind: LinearKind::Custom(h),
                        lora: None,
                    },
                    None => Linear::dense(t),
                }
            }
            Weight::Quant(q) if GgufLinear::supports(q.dtype()) => Linear {
                kind: LinearKind::Gguf(Arc::new(GgufLinear::from_qtensor(&q)?)),
                lora: None,
            },
            Weight::Quant(q) => Linear {
                kind: LinearKind::Quant(QMatMul::from_arc(q)?),
                lora: None,
            },
            Weight::Custom(c) => Linear {
                kind: LinearKind::Custom(c),
                lora: None,
            },
        })
    }

    pub fn dense(w: Tensor) -> Self {
        Linear {
            kind: LinearKind::Dense(w),
            lora: None,
        }
    }

    pub fn out_features(&self) -> usize {
        self.dims().0
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        let d = match &self.kind {
            LinearKind::Dense(w) => w.dims().to_vec(),
            LinearKind::Quant(QMatMul::QTensor(q)) => q.shape().dims().to_vec(),
            LinearKind::Quant(QMatMul::Tensor(t)) | LinearKind::Quant(QMatMul::TensorF16(t)) => t.dims().to_vec(),
            LinearKind::Custom(c) => vec![c.out_features(), c.in_features()],
            LinearKind::Gguf(g) => vec![g.out_features(), g.in_features()],
        };
        (d[0], d[1])
    }

    /// Bytes held in memory: the base weight in its format plus the adapter.
    pub fn storage_bytes(&self) -> usize {
        let t = tensor_bytes;
        let base = match &self.kind {
            LinearKind::Dense(w) => t(w),
            LinearKind::Quant(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            LinearKind::Quant(QMatMul::Tensor(w)) | LinearKind::Quant(QMatMul::TensorF16(w)) => t(w),
            LinearKind::Custom(c) => c.storage_bytes(),
            LinearKind::Gguf(g) => g.storage_bytes(),
        };
        base + self
            .lora
            .as_ref()
            .map_or(0, |l| t(l.a.as_tensor()) + t(l.b.as_tensor()))
    }

    /// The base weight as a dense `[out, in]` tensor of `dtype` (adapter not included).
    pub fn base_dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match &self.kind {
            LinearKind::Dense(w) => w.to_dtype(dtype)?,
            LinearKind::Quant(QMatMul::QTensor(q)) => q.dequantize(&q.device())?.to_dtype(dtype)?,
            LinearKind::Quant(QMatMul::Tensor(t)) | LinearKind::Quant(QMatMul::TensorF16(t)) => t.to_dtype(dtype)?,
            LinearKind::Custom(c) => custom_dense(c.as_ref(), dtype)?,
            LinearKind::Gguf(g) => g.dequantize_tensor()?.to_dtype(dtype)?,
        })
    }

    /// Block-quantized GGUF weights (`Quant` or `Gguf`), as a GGUF file stores them (a tied
    /// head is its own quantized copy of the embedding there).
    pub fn is_block_quant(&self) -> bool {
        matches!(self.kind, LinearKind::Quant(_) | LinearKind::Gguf(_))
    }

    /// `x @ W^T` (+ the adapter's low-rank term) for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.kind {
            LinearKind::Dense(w) => dense_forward(x, w)?,
            // Training an adapter on a quantized base (QLoRA): gradients must flow to `x`.
            _ if x.track_op() => quant_base_differentiable(&self.kind, x)?,
            kind => quant_forward(kind, x)?,
        };
        match &self.lora {
            Some(l) => Ok((&y + l.forward(x)?.to_dtype(y.dtype())?)?),
            None => Ok(y),
        }
    }
}

/// Test helper: the largest absolute difference between two tensors of one shape.
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_row_f32_products_match_the_gemm_and_bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 35.0, &dev).unwrap().reshape((5, 7)).unwrap();
        let w = (w * 0.01).unwrap();
        for n in [1usize, 3, 4, 6] {
            let x = Tensor::arange(0f32, (n * 7) as f32, &dev)
                .unwrap()
                .reshape((1, n, 7))
                .unwrap();
            let got = matmul_t(&x, &w).unwrap();
            assert_eq!(got.dims(), &[1, n, 5]);
            let want = x.reshape((n, 7)).unwrap().matmul(&w.t().unwrap()).unwrap();
            let diff = max_abs_diff(&got.reshape((n, 5)).unwrap(), &want);
            assert!(diff < 1e-5, "n {n}: {diff}");
        }
        // An input whose width is not the weight's, and an empty input: errors or empty, no panic.
        let bad = Tensor::zeros((1, 6), DType::F32, &dev).unwrap();
        assert!(matmul_t(&bad, &w).is_err());
        let empty = Tensor::zeros((0, 7), DType::F32, &dev).unwrap();
        assert_eq!(matmul_t(&empty, &w).unwrap().dims(), &[0, 5]);
    }

    /// Q4_K and Q6_K weights decoding 1-3 rows (our VNNI kernels where the CPU has them, else
    /// candle's) and a 20-row prompt agree with the dense product of the dequantized weight, to
    /// the activations' int8 rounding.
    #[test]
    fn k_quant_decoding_matches_the_dequantized_product() {
        let dev = Device::Cpu;
        let (out, inf) = (40, 512);
        let w: Vec<f32> = (0..out * inf)
            .map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * 0.2)
            .collect();
        let w = Tensor::from_vec(w, (out, inf), &dev).unwrap();
        for ty in [GgmlDType::Q4K, GgmlDType::Q6K] {
            let q = Arc::new(QTensor::quantize(&w, ty).unwrap());
            let lin = Linear::new(Weight::Quant(q.clone()), DType::F32).unwrap();
            let deq = q.dequantize(&dev).unwrap();
            for n in [1usize, 3, 20] {
                let x: Vec<f32> = (0..n * inf)
                    .map(|i| ((i * 31 % 97) as f32 / 48.0 - 1.0) * 1.5)
                    .collect();
                let x = Tensor::from_vec(x, (1, n, inf), &dev).unwrap();
                let got = lin.forward(&x).unwrap().reshape((n, out)).unwrap();
                let want = x.reshape((n, inf)).unwrap().matmul(&deq.t().unwrap()).unwrap();
                let diff = max_abs_diff(&got, &want);
                assert!(diff < 2e-2, "{ty:?} n {n}: {diff}");
            }
            let bad = Tensor::zeros((1, 256), DType::F32, &dev).unwrap();
            assert!(lin.forward(&bad).is_err(), "{ty:?}");
        }
    }
}
