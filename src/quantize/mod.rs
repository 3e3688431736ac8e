//! Quantization formats and kernels. Every format keeps its codes in memory and implements
//! [`QuantLinear`] (`y = x W^T + b` without expanding W), so the model's `Linear` can hold any of
//! them behind one variant, e.g. `Linear::Custom(Arc<dyn QuantLinear>)` calling
//! [`QuantLinear::forward`] (any float dtype, shape `[..., in]`).
//!
//! * [`awq`]: AutoAWQ checkpoints. [`AwqConfig::from_json`] on config.json, then per module
//!   [`load_awq_linear`]`(&safetensors, "model.layers.0.self_attn.q_proj", &cfg)` → [`AwqLinear`]
//!   (packed int4; [`awq_linear`] documents the kernels). [`write_awq_checkpoint`] writes one.
//!   [`awq_model::dequantize_awq_checkpoint`] gives plain f32 weights instead.
//! * [`rtn`]: AutoAWQ-exact round-to-nearest ([`pseudo_quantize`]), the quantizer AWQ ends with.
//! * [`awq_search`] / [`awq_model`]: the activation-aware search itself, generic over a block
//!   closure and wired to the engine's decoder ([`awq_model::awq_quantize_model`]).
//! * [`bnb`]: LLM.int8() ([`Int8Linear`]) and NF4/FP4 ([`Bnb4Linear`]); [`bnb_ckpt`] loads and
//!   writes them in transformers' bitsandbytes serialization.
//! * [`at_load`]: `--quant int8|nf4|fp4|q8_0|q4_k|…` applied to a float checkpoint as it loads.
//! * [`gguf_quant`]: per-tensor GGUF block encoding ([`quantize_for_gguf`]).
//! * [`gguf_linear`]: GGUF Q8_0/Q4_0/Q4_1 weights with the kernels of [`crate::kernels`]
//!   ([`GgufLinear`]); the model's `Linear` uses it for those types.
pub mod at_load;
pub mod awq;
pub mod awq_linear;
pub mod awq_model;
pub mod awq_panels;
pub mod awq_search;
pub mod bnb;
pub mod bnb_ckpt;
pub mod gguf_linear;
pub mod gguf_quant;
pub mod rtn;

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use rayon::prelude::*;

pub use at_load::LoadQuant;
pub use awq::{load_awq_linear, write_awq_checkpoint, AwqConfig, AwqVersion};
pub use awq_linear::AwqLinear;
pub use bnb::{Bnb4Kind, Bnb4Linear, Int8Linear};
pub use gguf_linear::GgufLinear;
pub use gguf_quant::quantize_for_gguf;
pub use rtn::{pseudo_quantize, GroupQuant};

/// A linear layer whose weight stays quantized: `y = x W^T (+ b)`.
/// `Debug` is a supertrait so `Arc<dyn QuantLinear>` fits in `#[derive(Debug)]` enums; the
/// implementations print shapes, not their millions of codes.
pub trait QuantLinear: Send + Sync + std::fmt::Debug {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// `x` [n, in] row-major f32 → y [n, out].
    fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>>;
    /// The weight as dense `[out, in]` f32 values (for merging adapters, training, conversion).
    fn dequantize_weight(&self) -> Vec<f32>;
    /// Bytes the layer holds in memory (codes, scales, zeros, outliers, bias).
    fn storage_bytes(&self) -> usize;

    /// candle entry point: `x` [..., in] of any float dtype → [..., out] in x's dtype (CPU).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let Some((&last, lead)) = dims.split_last() else {
            return Err(Error::invalid("quantized linear input", "a scalar has no feature dim"));
        };
        if last != self.in_features() {
            return Err(Error::invalid(
                "quantized linear input",
                format!("shape {dims:?}, last dim must be {}", self.in_features()),
            ));
        }
        let n = lead.iter().product();
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let y = self.forward_f32(&xs, n)?;
        let mut out_dims = lead.to_vec();
        out_dims.push(self.out_features());
        Ok(Tensor::from_vec(y, out_dims, x.device())?.to_dtype(x.dtype())?)
    }
}

/// Batches at least this large go through dequantize + GEMM instead of the decode kernels.
pub(crate) const GEMM_MIN_ROWS: usize = 16;
/// Output rows dequantized per GEMM call (1024 x 4096 f32 = 16 MiB, reused per thread). Measured
/// on the 7B-shape f16 pp128, 2 threads: 64 rows 54 t/s, 256 61, 1024 79, 4096 76.
const GEMM_TILE: usize = 1024;

/// `y = x W^T` for x [n, in] by dequantizing `GEMM_TILE` rows of W at a time (`dequant_row(o,
/// dst)` fills row o) into a GEMM: the dequantization is amortised over the n input rows.
/// The gemm crate (candle's CPU matmul) is called directly on a reused tile buffer and writes
/// into `y`'s columns: through tensors, each tile cost an allocation (page faults) and two
/// copies, which took a third of the time of a 7B-shape f16 prompt.
pub(crate) fn gemm_by_row_tiles(
    out: usize,
    inf: usize,
    x: &[f32],
    n: usize,
    dequant_row: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<Vec<f32>> {
    if x.len() != n * inf {
        return Err(Error::invalid(
            "GEMM input",
            format!("{} values for [{n}, {inf}]", x.len()),
        ));
    }
    // One tile buffer per thread, kept between calls (up to GEMM_TILE x in f32: 58 MiB for a
    // 14336-wide down projection). A thread that waits in a rayon join may run another job that
    // lands here again; that nested call gets a buffer of its own instead of a borrow panic.
    thread_local! {
        static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut y = vec![0f32; n * out];
    if n == 0 || out == 0 || inf == 0 {
        return Ok(y);
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut run = |buf: &mut Vec<f32>| {
        buf.resize(GEMM_TILE.min(out) * inf, 0.0);
        for o0 in (0..out).step_by(GEMM_TILE) {
            let rows = GEMM_TILE.min(out - o0);
            buf[..rows * inf]
                .par_chunks_mut(inf)
                .enumerate()
                .for_each(|(k, dst)| dequant_row(o0 + k, dst));
            // y[:, o0..o0 + rows] = x [n, inf] . tile^T, tile [rows, inf] row-major.
            // SAFETY: every pointer and stride stays inside `y` (n rows of `out`, columns
            // o0..o0 + rows), `x` (n x inf) and `buf` (rows x inf).
            unsafe {
                gemm::gemm(
                    n,
                    rows,
                    inf,
                    y.as_mut_ptr().add(o0),
                    1,
                    out as isize,
                    false,
                    x.as_ptr(),
                    1,
                    inf as isize,
                    buf.as_ptr(),
                    inf as isize,
                    1,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
    };
    TILE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        Err(_) => run(&mut Vec::new()),
    });
    Ok(y)
}
