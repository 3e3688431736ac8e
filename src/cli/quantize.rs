//! `biomistral quantize`: AutoAWQ-format int4 (activation-aware search or plain round-to-nearest)
//! and llama.cpp GGUF block types.
use anyhow::{bail, Context};
use biomistral::model::mistral::WeightSource;
use biomistral::model::ModelConfig;
use biomistral::quantize::awq_model::{awq_quantize_lazy, rtn_quantize_lazy};
use biomistral::quantize::awq_search::AwqSearchOptions;
use biomistral::quantize::AwqConfig;
use biomistral::source::convert::{hf_to_gguf, parse_ggml_type, HfToGgufOptions};
use biomistral::source::safetensors_store::SafetensorsStore;
use candle_core::{Device, Tensor};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// A Hugging Face model folder.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// awq (activation-aware search), rtn (round-to-nearest baseline) or gguf.
    #[arg(long)]
    pub method: String,
    /// Output folder (awq/rtn) or .gguf file (gguf).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// GGUF type: q8_0, q4_0, q4_1, q4_k_m, q5_k_m, q6_k (gguf only).
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// Calibration text: plain text, JSONL (`text`), PubMed/PMC XML or PubTator
    /// (default: $BIOMISTRAL_DATA/pubmed_calib/ncbi_disease/NCBItrainset_corpus.txt).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 128)]
    pub group_size: usize,
    /// AutoAWQ layout: gemm or gemv.
    #[arg(long, default_value = "gemm")]
    pub version: String,
    /// Tokens sampled for AWQ's clipping search (fewer is faster on large models).
    #[arg(long, default_value_t = 512)]
    pub clip_tokens: usize,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    super::common::set_threads(args.threads)?;
    if !args.model.is_dir() {
        bail!("{}: quantize takes a Hugging Face model folder", args.model.display());
    }
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match args.method.as_str() {
        "gguf" => {
            let name = args.ty.as_deref().context("--method gguf needs --type (e.g. q4_k_m)")?;
            let ty = parse_ggml_type(name)?;
            let k_medium = biomistral::source::convert::is_k_medium(name);
            hf_to_gguf(&args.model, &args.out, &HfToGgufOptions { ty, progress, k_medium })?;
        }
        "awq" | "rtn" => quantize_awq(&args)?,
        other => bail!("invalid --method '{other}' (awq, rtn or gguf)"),
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn quantize_awq(args: &QuantizeArgs) -> anyhow::Result<()> {
    let version = match args.version.as_str() {
        "gemm" => biomistral::quantize::awq::AwqVersion::Gemm,
        "gemv" => biomistral::quantize::awq::AwqVersion::Gemv,
        other => bail!("invalid --version '{other}' (gemm or gemv)"),
    };
    // Staged before the (long) quantization so a bad --out fails at once.
    let staged = biomistral::fsutil::StagedDir::new(&args.out)?;
    let cfg_path = args.model.join("config.json");
    let cfg = ModelConfig::from_json_file(&cfg_path)?;
    let base_config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)?;
    for (name, n) in [
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
    ] {
        if n % args.group_size != 0 {
            bail!(
                "invalid --group-size {}: it does not divide {name} {n} (try 64 or 32)",
                args.group_size
            );
        }
    }
    let store = SafetensorsStore::open_dir(&args.model)?;
    let names: Vec<String> = store.summaries().into_iter().map(|t| t.name).collect();
    let out = if args.method == "rtn" {
        rtn_quantize_lazy(&cfg, names, |n| store.tensor(n), args.group_size)?
    } else {
        let src = biomistral::source::ModelSource::open(args.model.to_str().unwrap_or_default())?;
        let calib_path = match &args.calib {
            Some(p) => p.clone(),
            None => {
                let data = std::env::var_os("BIOMISTRAL_DATA")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "../shared/data".into());
                data.join("pubmed_calib/ncbi_disease/NCBItrainset_corpus.txt")
            }
        };
        let docs = biomistral::train::data::load_documents(&calib_path)
            .with_context(|| format!("reading calibration text {}", calib_path.display()))?;
        let mut stream: Vec<u32> = vec![];
        for d in &docs {
            stream.extend(src.tokenizer.encode(d, false)?);
            if stream.len() >= args.samples * args.seq_len {
                break;
            }
        }
        let n = (stream.len() / args.seq_len).min(args.samples);
        if n == 0 {
            bail!(
                "{}: not enough calibration text for one {}-token sample",
                calib_path.display(),
                args.seq_len
            );
        }
        let calib = Tensor::from_vec(stream[..n * args.seq_len].to_vec(), (n, args.seq_len), &Device::Cpu)?;
        let opts = AwqSearchOptions {
            group_size: args.group_size,
            clip_tokens: args.clip_tokens.max(1),
            ..Default::default()
        };
        awq_quantize_lazy(&cfg, names, |n| store.tensor(n), &calib, &opts)?
    };
    let qcfg = AwqConfig {
        group_size: args.group_size,
        version,
        ..Default::default()
    };
    let tmp = &staged.path;
    out.write(tmp, &qcfg, &base_config)?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
    ] {
        if args.model.join(f).exists() {
            std::fs::copy(args.model.join(f), tmp.join(f))?;
        }
    }
    staged.commit()?;
    Ok(())
}
