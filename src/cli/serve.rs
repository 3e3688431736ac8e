//! `biomistral serve`: the OpenAI-compatible HTTP server.
use super::common::ModelArgs;
use biomistral::serve::{self, ServeConfig};
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (loopback by default; use 0.0.0.0 to expose it).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 routes (also read from BIOMISTRAL_API_KEY).
    #[arg(long, env = "BIOMISTRAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sequences decoded together in one batched forward.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Requests that may wait for a batch slot; beyond that the server answers 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Context limit in tokens (prompt + generation); default the model's.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Model id clients send as `model` (default: the model's file or folder name, or hub id).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Seconds in-flight requests may run after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10)]
    pub shutdown_timeout: u64,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let model = a.model.load()?;
    let cfg = ServeConfig {
        host: a.host,
        port: a.port,
        api_key: a.api_key,
        max_batch: a.max_batch,
        max_queue: a.max_queue,
        ctx: a.ctx,
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        model_id: a.model_id,
    };
    serve::run(model, cfg)?;
    Ok(())
}
