//! The model: configuration, the decoder, its KV cache and the `Linear` weight seam.
pub mod config;
pub mod kv_cache;
pub mod linear;
pub mod mistral;

pub use config::ModelConfig;
pub use kv_cache::KvCache;
pub use mistral::{ForwardOpts, Logits, Model};
