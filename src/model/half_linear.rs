//! f16 / bf16 weights kept at 2 bytes for f32 (or bf16) inference on the CPU, behind
//! `LinearKind::Custom`: decode rows go through [`crate::kernels::half`], prompts widen a tile
//! of weight rows at a time into candle's f32 GEMM (the widening is amortised over the rows), or,
//! for bf16 weights and bf16 activations, run [`crate::kernels::bf16_gemm`].
use crate::error::{Error, Result};
use crate::kernels::bf16_gemm;
use crate::kernels::half::{HalfKind, HalfMatrix};
use crate::quantize::{gemm_by_row_tiles, QuantLinear};
use candle_core::{DType, Tensor};
use std::sync::Arc;

/// From this many input rows on, widen + GEMM beats the matrix-vector kernel.
pub const HALF_GEMM_MIN_ROWS: usize = 8;

#[derive(Debug)]
pub struct HalfLinear {
    w: HalfMatrix,
}

impl HalfLinear {
    /// `w`: a 2-D `[out, in]` f16 or bf16 tensor on the CPU; None for other dtypes or devices.
    pub fn from_tensor(w: &Tensor) -> Result<Option<Arc<HalfLinear>>> {
        if !w.device().is_cpu() {
            return Ok(None);
        }
        let err = |m: String| Error::tensor("half-precision weight", m);
        let (rows, cols) = w.dims2().map_err(|e| err(e.to_string()))?;
        let flat = w.flatten_all()?;
        let (kind, bits): (HalfKind, Vec<u16>) = match w.dtype() {
            DType::F16 => (
                HalfKind::F16,
                flat.to_vec1::<half::f16>()?.into_iter().map(|v| v.to_bits()).collect(),
            ),
            DType::BF16 => (
                HalfKind::Bf16,
                flat.to_vec1::<half::bf16>()?.into_iter().map(|v| v.to_bits()).collect(),
            ),
            _ => return Ok(None),
        };
        Ok(Some(Arc::new(HalfLinear {
            w: HalfMatrix::new(kind, rows, cols, bits).map_err(err)?,
        })))
    }
}

impl QuantLinear for HalfLinear {
    fn in_features(&self) -> usize {
        self.w.cols
    }

    fn out_features(&self) -> usize {
        self.w.rows
    }

    fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if n >= HALF_GEMM_MIN_ROWS {
            // bf16 compute: the activations are bf16 values, and bf16 products are exact in
            // f32, so the bf16-dot GEMM gives the widened GEMM's result at twice its speed.
            if self.w.kind == HalfKind::Bf16 && bf16_gemm::available() {
                if let Some(xb) = bf16_gemm::exact_bf16(x, self.w.cols) {
                    return Ok(bf16_gemm::gemm(&self.w, &xb, n, true));
                }
            }
            return gemm_by_row_tiles(self.w.rows, self.w.cols, x, n, |o, dst| self.w.widen_row(o, dst));
        }
        let mut y = vec![0f32; n * self.w.rows];
        self.w.matvec(x, n, &mut y);
        Ok(y)
    }

    fn dequantize_weight(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.w.rows * self.w.cols];
        for (o, dst) in out.chunks_exact_mut(self.w.cols).enumerate() {
            self.w.widen_row(o, dst);
        }
        out
    }

    fn storage_bytes(&self) -> usize {
        self.w.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Decode rows and prompt rows both agree with the upcast weight's f32 matmul.
    #[test]
    fn matches_the_upcast_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (70, 96), &dev).unwrap();
        for dt in [DType::F16, DType::BF16] {
            let wh = w.to_dtype(dt).unwrap();
            let lin = HalfLinear::from_tensor(&wh).unwrap().unwrap();
            assert_eq!(lin.storage_bytes(), 70 * 96 * 2);
            let wf = wh.to_dtype(DType::F32).unwrap();
            // f32 activations, and activations that are bf16 values (bf16 compute: the
            // bf16-dot GEMM where the CPU has it).
            let inputs = [1, 3, HALF_GEMM_MIN_ROWS, 20]
                .into_iter()
                .flat_map(|n| [(n, false), (n, true)]);
            for (n, bf16_acts) in inputs {
                let x = Tensor::randn(0f32, 1.0, (n, 96), &dev).unwrap();
                let x = if bf16_acts {
                    x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
                } else {
                    x
                };
                let want = x.matmul(&wf.t().unwrap()).unwrap();
                let got = lin.forward(&x).unwrap();
                let d = crate::model::linear::max_abs_diff(&got, &want);
                assert!(d < 1e-4, "{dt:?} n={n} bf16 activations {bf16_acts}: max diff {d}");
            }
            assert_eq!(
                lin.dequantize_weight(),
                wf.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert!(HalfLinear::from_tensor(&w).unwrap().is_none());
    }
}
