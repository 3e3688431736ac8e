//! `biomistral merge CONFIG.yml --out DIR`: merge models from a mergekit YAML config.
use anyhow::Context;
use biomistral::merge::{self, tensor::Dtype, writer::parse_size, MergeOptions};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct MergeArgs {
    /// mergekit-style YAML config (merge_method, models or slices, base_model, parameters, dtype, ...).
    pub config: PathBuf,
    /// Output folder (Hugging Face layout). Must not exist or be empty; it appears only when the merge succeeds.
    #[arg(long)]
    pub out: PathBuf,
    /// Maximum tensor data per safetensors shard (e.g. 5GB, 500MB, 2GiB).
    #[arg(long, default_value = "5GB")]
    pub shard_size: String,
    /// Copy the tokenizer files from the base model (or the first model, or `tokenizer_source`).
    #[arg(long)]
    pub copy_tokenizer: bool,
    /// Output dtype (bfloat16, float16, float32); overrides the config's out_dtype.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Random seed for DARE; the same seed reproduces the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Validate the config against the models and print the plan without writing anything.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: MergeArgs) -> anyhow::Result<()> {
    let mut opts = MergeOptions::new(&args.config, &args.out);
    opts.shard_size = parse_size(&args.shard_size)?;
    opts.copy_tokenizer = args.copy_tokenizer;
    opts.dtype = args.dtype.as_deref().map(|d| Dtype::parse("--dtype", d)).transpose()?;
    opts.seed = args.seed;
    opts.threads = args.threads;
    opts.dry_run = args.dry_run;
    opts.progress = true;
    let report = merge::run_merge(&opts).with_context(|| format!("merging {}", args.config.display()))?;
    let text = if args.dry_run {
        format!("{}dry run: config is valid; nothing written\n", report.plan)
    } else {
        format!(
            "merged {} tensors ({:.1} MB, seed {}) into {}: {}\n",
            report.tensors,
            report.bytes as f64 / 1e6,
            report.seed,
            args.out.display(),
            report.files.join(", ")
        )
    };
    // A closed pipe (`... --dry-run | head`) is not an error worth a panic or a failure.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(())
}
