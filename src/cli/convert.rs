//! `biomistral convert`: GGUF -> Hugging Face folder, or Hugging Face folder -> GGUF.
use super::common::set_threads;
use biomistral::source::convert::{gguf_to_hf, hf_to_gguf, parse_ggml_type, GgufToHfOptions, HfToGgufOptions};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input: a .gguf file (converted to a Hugging Face folder) or a Hugging Face folder
    /// (converted to a GGUF file).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Output folder (HF) or file (GGUF).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Output type: bf16 (default for HF), f16, f32; for GGUF also q8_0, q4_0, q4_1, q4_k, q5_k, q6_k.
    #[arg(long = "type", alias = "dtype")]
    pub ty: Option<String>,
    /// tokenizer.json to put in the HF folder (default: beside the GGUF, else from its metadata).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Maximum shard size for HF output, e.g. 5GB or 500MB.
    #[arg(long, default_value = "5GB")]
    pub shard_size: String,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().to_ascii_uppercase();
    let (num, mult) = if let Some(n) = t.strip_suffix("GB") {
        (n, 1_000_000_000)
    } else if let Some(n) = t.strip_suffix("MB") {
        (n, 1_000_000)
    } else if let Some(n) = t.strip_suffix("KB") {
        (n, 1_000)
    } else {
        (t.as_str(), 1)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size '{s}' (e.g. 5GB, 500MB)"))?;
    if v <= 0.0 {
        anyhow::bail!("invalid size '{s}': must be positive");
    }
    Ok((v * mult as f64) as u64)
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    set_threads(args.threads)?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if args.model.is_file() {
        let dtype = match args.ty.as_deref().unwrap_or("bf16") {
            "bf16" => candle_core::DType::BF16,
            "f16" => candle_core::DType::F16,
            "f32" => candle_core::DType::F32,
            other => anyhow::bail!("invalid --type '{other}' for a Hugging Face folder (bf16, f16 or f32)"),
        };
        let opts = GgufToHfOptions {
            dtype,
            shard_size: parse_size(&args.shard_size)?,
            progress,
            tokenizer: args.tokenizer.clone(),
        };
        gguf_to_hf(&args.model, &args.out, &opts)?;
    } else if args.model.is_dir() {
        let ty = parse_ggml_type(args.ty.as_deref().unwrap_or("f16"))?;
        let k_medium = biomistral::source::convert::is_k_medium(args.ty.as_deref().unwrap_or(""));
        hf_to_gguf(&args.model, &args.out, &HfToGgufOptions { ty, progress, k_medium })?;
    } else {
        anyhow::bail!("{}: no such file or folder", args.model.display());
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
