//! `Linear` is the single seam where weight formats plug in: the decoder only calls `forward`
//! and never asks which format it holds.
use crate::error::Result;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};
use std::sync::Arc;

/// A weight as a source hands it over: dense (any float dtype) or GGUF block-quantized.
#[derive(Clone, Debug)]
pub enum Weight {
    Dense(Tensor),
    Quant(Arc<QTensor>),
}

impl Weight {
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Dense(t) => t.dims().to_vec(),
            Weight::Quant(q) => q.shape().dims().to_vec(),
        }
    }

    /// The weight as a dense tensor of `dtype` (dequantizing block formats).
    pub fn to_dense(&self, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(t) => t.to_dtype(dtype)?,
            Weight::Quant(q) => q.dequantize(&q.device())?.to_dtype(dtype)?,
        })
    }
}

/// From this many input rows on, quantized weights are dequantized for a dense GEMM.
const PREFILL_DEQUANT_ROWS: usize = 16;

#[derive(Clone, Debug)]
pub enum Linear {
    /// `[out, in]` in the compute dtype.
    Dense(Tensor),
    /// GGUF blocks; candle quantizes the activations per block and uses integer dot products.
    Quant(QMatMul),
}

impl Linear {
    pub fn new(w: Weight, dtype: DType) -> Result<Self> {
        Ok(match w {
            Weight::Dense(t) => Linear::Dense(t.to_dtype(dtype)?),
            Weight::Quant(q) => Linear::Quant(QMatMul::from_arc(q)?),
        })
    }

    pub fn out_features(&self) -> usize {
        match self {
            Linear::Dense(w) => w.dims()[0],
            Linear::Quant(QMatMul::QTensor(q)) => q.shape().dims()[0],
            Linear::Quant(QMatMul::Tensor(t)) | Linear::Quant(QMatMul::TensorF16(t)) => t.dims()[0],
        }
    }

    /// `x @ W^T` for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(w) => {
                let dims = x.dims().to_vec();
                let k = dims[dims.len() - 1];
                let x2 = x.reshape(((), k))?;
                let y = x2.matmul(&w.t()?)?;
                let mut out = dims;
                let n = out.len();
                out[n - 1] = w.dims()[0];
                Ok(y.reshape(out)?)
            }
            Linear::Quant(q) => {
                let dt = x.dtype();
                let xf = if dt == DType::F32 {
                    x.contiguous()?
                } else {
                    x.to_dtype(DType::F32)?
                };
                let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
                // Block-quantized kernels are matrix-vector products: fine for decoding, but for
                // a prompt of many rows a dense GEMM on the dequantized weight is several times
                // faster, and dequantizing is cheap next to the GEMM itself.
                if rows >= PREFILL_DEQUANT_ROWS {
                    if let QMatMul::QTensor(qt) = q {
                        let w = qt.dequantize(&qt.device())?;
                        let y = Linear::Dense(w).forward(&xf)?;
                        return Ok(if dt == DType::F32 { y } else { y.to_dtype(dt)? });
                    }
                }
                let y = q.forward(&xf)?;
                Ok(if dt == DType::F32 { y } else { y.to_dtype(dt)? })
            }
        }
    }
}
