//! `biomistral init-random`: a random-weight model of a real shape, for benchmarks and tests.
use biomistral::source::random::{preset, write_random_model};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InitRandomArgs {
    /// Shape preset: mistral-7b, smollm2-135m or tiny.
    #[arg(long, default_value = "mistral-7b")]
    pub shape: String,
    /// Number of decoder layers (default: the preset's).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Stored dtype: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

pub fn run(args: InitRandomArgs) -> anyhow::Result<()> {
    let cfg = preset(&args.shape, args.layers)?;
    let dtype = biomistral::source::parse_dtype(&args.dtype)?.unwrap_or(candle_core::DType::BF16);
    write_random_model(&cfg, &args.out, dtype, args.seed)?;
    eprintln!(
        "wrote {} ({} layers, {:.2}B parameters) to {}",
        args.shape,
        cfg.num_hidden_layers,
        cfg.n_params() as f64 / 1e9,
        args.out.display()
    );
    Ok(())
}
