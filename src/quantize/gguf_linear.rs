//! `GgufLinear`: a GGUF Q8_0 / Q4_0 / Q4_1 weight kept in blocks, with the kernels of
//! [`crate::kernels`]: decode kernels for a few input rows, the int8 GEMM for many (prefill),
//! or dequantize + dense GEMM where the CPU has no VNNI.
use super::{gemm_by_row_tiles, QuantLinear};

/// From this many input rows on, dequantize + GEMM beats the integer kernels, which already
/// reuse each weight row for every input row (measured on the fixture: a 16-row decode batch
/// ran 2x faster on the kernels than through the GEMM).
pub const GGUF_GEMM_MIN_ROWS: usize = 48;
/// From this many input rows on, the int8 GEMM ([`crate::kernels::gemm`]) is used where the CPU
/// has it (AVX-512 VNNI); below, the decode kernels, whose finer activation scales cost more
/// per product but nothing per call (measured: at 8 rows the two are even on the fixture and
/// the GEMM is 6% slower on the 7B shape; at 16 it is 1.5-1.7x faster).
pub const INT8_GEMM_MIN_ROWS: usize = 12;
use crate::error::{Error, Result};
use crate::kernels::gemm;
use crate::kernels::{matvec, BlockFormat, Kernel, PackedMatrix, QuantActs};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

pub struct GgufLinear {
    w: PackedMatrix,
    /// Checked against the CPU when built.
    kernel: Kernel,
}

impl std::fmt::Debug for GgufLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GgufLinear {{ {:?} [{}, {}], {:?} }}",
            self.w.format, self.w.rows, self.w.cols, self.kernel
        )
    }
}

impl GgufLinear {
    /// Whether `dtype` has kernels here.
    pub fn supports(dtype: GgmlDType) -> bool {
        BlockFormat::from_ggml(dtype).is_some()
    }

    /// Repack a 2-D `[out, in]` GGUF tensor, using the best kernel for this CPU.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        Self::with_kernel(q, Kernel::best())
    }

    /// As [`Self::from_qtensor`] with a given kernel (an error if this CPU lacks it).
    pub fn with_kernel(q: &QTensor, kernel: Kernel) -> Result<Self> {
        let err = |m: String| Error::tensor("GgufLinear", m);
        let format = BlockFormat::from_ggml(q.dtype()).ok_or_else(|| err(format!("no kernels for {:?}", q.dtype())))?;
        let (rows, cols) = q.shape().dims2().map_err(|e| err(e.to_string()))?;
        if kernel.dot_fn(format).is_none() {
            return Err(err(format!("this CPU cannot run the {kernel:?} kernels")));
        }
        // Q4 rows go in panels where the panel kernel runs (see `kernels::panel`).
        let panels = crate::kernels::panel::suits(kernel);
        let w = PackedMatrix::from_gguf_in(format, rows, cols, &q.data()?, panels).map_err(err)?;
        Ok(GgufLinear { w, kernel })
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    pub fn format(&self) -> BlockFormat {
        self.w.format
    }

    /// Bytes held by the packed weight.
    pub fn weight_bytes(&self) -> usize {
        self.w.bytes()
    }

    /// The weight as an f32 `[out, in]` tensor, equal to candle's `QTensor::dequantize`.
    pub fn dequantize_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.dequantize_weight(),
            (self.w.rows, self.w.cols),
            &Device::Cpu,
        )?)
    }

    /// Decode kernel: `x` [n, in] → y [n, out].
    fn forward_matvec(&self, x: &[f32], n: usize) -> Vec<f32> {
        let xa = QuantActs::new(x, self.w.cols);
        let mut y = vec![0f32; n * self.w.rows];
        matvec(&self.w, &xa, self.kernel, &mut y);
        y
    }
}

impl QuantLinear for GgufLinear {
    fn storage_bytes(&self) -> usize {
        self.w.codes.len() + 2 * (self.w.scales.len() + self.w.mins.len())
    }

    fn in_features(&self) -> usize {
        self.w.cols
    }

    fn out_features(&self) -> usize {
        self.w.rows
    }

    fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if x.len() != n * self.w.cols {
            return Err(Error::invalid(
                "GgufLinear input",
                format!("{} values do not form [{n}, {}]", x.len(), self.w.cols),
            ));
        }
        if n >= INT8_GEMM_MIN_ROWS && gemm::available() {
            return Ok(gemm::gemm(&self.w, x, n));
        }
        if n >= GGUF_GEMM_MIN_ROWS {
            return gemm_by_row_tiles(self.w.rows, self.w.cols, x, n, |o, dst| self.w.dequantize_row(o, dst));
        }
        Ok(self.forward_matvec(x, n))
    }

    fn dequantize_weight(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.w.rows * self.w.cols];
        w.par_chunks_mut(self.w.cols)
            .enumerate()
            .for_each(|(r, dst)| self.w.dequantize_row(r, dst));
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pack::tests::random_qtensor;
    use rand::{Rng, SeedableRng};

    fn dense(q: &QTensor) -> Vec<f32> {
        q.dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn dequantize_weight_is_candles_bit_for_bit() {
        for f in [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1] {
            let q = random_qtensor(f, 7, 576, 1);
            let g = GgufLinear::from_qtensor(&q).unwrap();
            let (a, b) = (dense(&q), g.dequantize_weight());
            assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "{f:?}");
        }
    }

    /// Forward against f64 `x W^T` on the dequantized weight: the kernels may differ by the
    /// rounding of x to int8 (half a step of its 4-value lane per value) plus f32 summation;
    /// the int8 GEMM by the rounding of x per 32-block; the dense GEMM (CPUs without VNNI,
    /// n >= 48) by f32 summation only.
    #[test]
    fn forward_matches_dense_matmul() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for f in [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1] {
            for (out, inf) in [(33, 576), (64, 32), (5, 4096)] {
                let q = random_qtensor(f, out, inf, out as u64);
                let wd = dense(&q);
                for k in Kernel::available() {
                    let g = GgufLinear::with_kernel(&q, k).unwrap();
                    for n in [1, 3, INT8_GEMM_MIN_ROWS, GGUF_GEMM_MIN_ROWS, 53] {
                        let x: Vec<f32> = (0..n * inf).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                        let y = g.forward_f32(&x, n).unwrap();
                        for r in 0..n {
                            for o in 0..out {
                                let (xr, wr) = (&x[r * inf..(r + 1) * inf], &wd[o * inf..(o + 1) * inf]);
                                let want: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                                let mag: f64 = xr.iter().zip(wr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                                // Rounding x to int8 moves each x_i by at most half its lane's
                                // step: lanes of 4 in the decode kernels, blocks of 32 in the
                                // int8 GEMM.
                                let lane = if n >= INT8_GEMM_MIN_ROWS && gemm::available() {
                                    32
                                } else {
                                    4
                                };
                                let round = crate::kernels::act::rounding_bound(xr, wr, lane);
                                let dense = n >= GGUF_GEMM_MIN_ROWS && !gemm::available();
                                let tol = 1e-5 * mag + if dense { 0.0 } else { 1.001 * round };
                                let got = y[r * out + o] as f64;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{f:?} {k:?} [{out},{inf}] n {n}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_other_types_and_bad_input() {
        let q = random_qtensor(BlockFormat::Q8_0, 2, 64, 0);
        let g = GgufLinear::from_qtensor(&q).unwrap();
        assert!(g.forward_f32(&[0.0; 65], 1).is_err());
        let t = Tensor::zeros((2, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
        let k = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
        assert!(!GgufLinear::supports(GgmlDType::Q4K) && GgufLinear::from_qtensor(&k).is_err());
    }
}
