//! biomistral-rs: run, quantize, merge, evaluate, fine-tune and serve Mistral-architecture
//! medical LLMs. Modules follow the pipeline a user walks through:
//! source (load) → model → generate → quantize → merge → eval → train → serve.
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod generate;
pub mod hugepages;
pub mod kernels;
pub mod merge;
pub mod model;
pub mod quantize;
pub mod scoring;
pub mod serve;
pub mod source;
pub mod train;

pub use error::{Error, Result};

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
