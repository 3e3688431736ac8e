//! Quantization formats and kernels: AutoAWQ int4 (pack/unpack, checkpoints, packed linear),
//! AutoAWQ-exact round-to-nearest, bitsandbytes-style int8 / NF4 / FP4, and GGUF block types.
//! Each format keeps its codes in memory and exposes a matmul, so the model's `Linear` can hold
//! any of them without expanding weights to f32.
pub mod awq;
pub mod awq_linear;
pub mod rtn;

pub use awq::{load_awq_linear, write_awq_checkpoint, AwqConfig, AwqVersion};
pub use awq_linear::AwqLinear;
pub use rtn::{pseudo_quantize, GroupQuant};
