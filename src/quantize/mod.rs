//! Quantization formats and kernels: AutoAWQ int4 (pack/unpack, checkpoints, packed linear),
//! AutoAWQ-exact round-to-nearest, bitsandbytes-style int8 / NF4 / FP4, and GGUF block types.
//! Each format keeps its codes in memory and exposes a matmul, so the model's `Linear` can hold
//! any of them without expanding weights to f32.
pub mod awq;
pub mod awq_linear;
pub mod awq_model;
pub mod awq_search;
pub mod bnb;
pub mod gguf_quant;
pub mod rtn;

use crate::error::{Error, Result};
use candle_core::{DType, Tensor};

pub use awq::{load_awq_linear, write_awq_checkpoint, AwqConfig, AwqVersion};
pub use awq_linear::AwqLinear;
pub use bnb::{Bnb4Kind, Bnb4Linear, Int8Linear};
pub use gguf_quant::quantize_for_gguf;
pub use rtn::{pseudo_quantize, GroupQuant};

/// A linear layer whose weight stays quantized: `y = x W^T (+ b)`.
pub trait QuantLinear: Send + Sync {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// `x` [n, in] row-major f32 → y [n, out].
    fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>>;

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
