//! The model: configuration, the decoder, its KV cache and the `Linear` weight seam
//! (with f16 / bf16 weights kept at 2 bytes in `half_linear`).
pub mod config;
pub mod embedding;
pub mod half_linear;
pub mod kv_cache;
pub mod linear;
pub mod mistral;

pub use config::ModelConfig;
pub use kv_cache::KvCache;
pub use mistral::{ForwardOpts, Logits, Model};
