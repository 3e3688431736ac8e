//! `biomistral eval`: run the medical benchmark on one model (or an ensemble of several).
use anyhow::{bail, Context};
use biomistral::eval::backend::{RemoteBackend, RemoteConfig};
use biomistral::eval::report::{self, RunResults};
use biomistral::eval::{run_eval, Backend, EvalConfig, OnBadRow, Protocol, TaskId};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Model: a local folder, GGUF file or hub id for the local engine; with --endpoint, the server's model name.
    #[arg(long, required_unless_present = "ensemble")]
    pub model: Option<String>,
    /// Comma-separated task ids, or `all`.
    #[arg(long, default_value = "all")]
    pub tasks: String,
    /// Benchmark files (default: $BIOMISTRAL_DATA, else ../shared/data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Output folder: results.json, samples_<task>.jsonl, report.md, SVG charts. Re-running resumes.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep the first N items of each task; they form the whole pool (shots included).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Shots per prompt (0 = zero-shot).
    #[arg(long, default_value_t = 3)]
    pub shots: usize,
    /// Shot sets per item (accuracy is reported as mean ± std over them).
    #[arg(long, default_value_t = 3)]
    pub shot_sets: usize,
    #[arg(long, value_enum, default_value = "biomistral")]
    pub protocol: Protocol,
    /// Language of the test questions (non-English reads <data-dir>/<lang>/<task>.json, BioInstructQA rows).
    #[arg(long, default_value = "en", value_parser = ["en", "fr", "zh", "ar", "de", "pt", "ru", "es"])]
    pub lang: String,
    /// Draw shots from this training file (or folder of <task>.jsonl/.json/.csv) instead of the test pool.
    #[arg(long)]
    pub shots_from: Option<PathBuf>,
    /// Seed for --shots-from draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts per backend call (lets a backend batch and share the prefix cache).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// What to do with malformed rows: report and leave out, or stop.
    #[arg(long, value_enum, default_value = "fail")]
    pub on_bad_row: OnBadRow,
    /// Evaluate each of these models into OUT/<model>/ and their letter-probability ensemble into OUT/ensemble/.
    #[arg(long, value_delimiter = ',')]
    pub ensemble: Vec<String>,
    /// Weights dtype for the local engine (f32, f16, bf16).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Quantize the local engine's weights at load (int8, nf4, fp4, q8_0, q4_0, q4_k, ...).
    #[arg(long)]
    pub quant: Option<String>,
    /// Quantize the local engine's LM head at load (any --quant type, e.g. q8_0).
    #[arg(long)]
    pub quant_head: Option<String>,
    /// LoRA adapter folder for the local engine.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Threads for the local engine's CPU kernels (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device for the local engine (cpu, cuda, cuda:1).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// OpenAI-compatible server (`http://host:8000/v1`) to evaluate instead of the local engine.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// tokenizer.json for --endpoint (default: <model>/tokenizer.json when --model is a folder).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Requests in flight to --endpoint.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Top log-probabilities requested from --endpoint (its softmax is approximated over these).
    #[arg(long, default_value_t = 20)]
    pub top_logprobs: usize,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn data_dir(arg: &Option<PathBuf>) -> PathBuf {
    arg.clone()
        .or_else(|| std::env::var_os("BIOMISTRAL_DATA").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared/data"))
}

/// Build the backend for `args.model`. The local engine is plugged in here.
pub fn open_backend(args: &EvalArgs) -> anyhow::Result<Box<dyn Backend>> {
    let model = args.model.as_deref().context("--model is required")?;
    if let Some(endpoint) = &args.endpoint {
        let tokenizer = match &args.tokenizer {
            Some(t) => t.clone(),
            None if PathBuf::from(model).join("tokenizer.json").is_file() => {
                PathBuf::from(model).join("tokenizer.json")
            }
            None => {
                bail!("--endpoint needs --tokenizer PATH/tokenizer.json (or --model naming a folder that holds one)")
            }
        };
        let mut cfg = RemoteConfig::new(endpoint, model);
        cfg.concurrency = args.concurrency.max(1);
        cfg.top_logprobs = args.top_logprobs;
        return Ok(Box::new(RemoteBackend::new(cfg, &tokenizer)?));
    }
    let margs = super::common::ModelArgs {
        model: model.to_string(),
        dtype: args.dtype.clone().unwrap_or_else(|| "auto".into()),
        device: args.device.clone(),
        threads: args.threads,
        adapter: args.adapter.clone(),
        quant: args.quant.clone(),
        quant_head: args.quant_head.clone(),
    };
    let m = margs.load()?;
    Ok(Box::new(biomistral::eval::engine::EngineBackend::new(m, model)))
}

fn config(args: &EvalArgs, out: PathBuf) -> anyhow::Result<EvalConfig> {
    let mut cfg = EvalConfig::new(TaskId::parse_list(&args.tasks)?, data_dir(&args.data_dir), out);
    cfg.limit = args.limit;
    cfg.shots = args.shots;
    cfg.shot_sets = args.shot_sets;
    cfg.protocol = args.protocol;
    cfg.lang = args.lang.clone();
    cfg.shots_from = args.shots_from.clone();
    cfg.seed = args.seed;
    cfg.batch_size = args.batch_size.max(1);
    cfg.on_bad_row = args.on_bad_row;
    cfg.progress = !args.no_progress;
    let meta = json!({
        "dtype": args.dtype, "quant": args.quant, "quant_head": args.quant_head, "adapter": args.adapter, "device": args.device,
        "endpoint": args.endpoint,
    });
    if let serde_json::Value::Object(m) = meta {
        cfg.backend_meta = m.into_iter().filter(|(_, v)| !v.is_null()).collect();
    }
    Ok(cfg)
}

fn run_one(args: &EvalArgs, out: PathBuf) -> anyhow::Result<RunResults> {
    let cfg = config(args, out)?;
    let mut backend = open_backend(args)?;
    let run = run_eval(backend.as_mut(), &cfg)?;
    print_summary(&run);
    Ok(run)
}

fn print_summary(run: &RunResults) {
    for t in &run.tasks {
        println!(
            "{:28} {:5.1} ± {:4.1}  (n={}, ECE {:.3})",
            t.task,
            100.0 * t.acc_mean,
            100.0 * t.acc_std,
            t.n,
            t.ece_mean
        );
    }
    let (m, s) = report::average(&run.tasks);
    println!(
        "{:28} {:5.1} ± {:4.1}  -> {}",
        format!("{} average", run.meta.model),
        100.0 * m,
        100.0 * s,
        run.dir.display()
    );
}

/// A model name as a folder name.
fn slug(model: &str) -> String {
    let s: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.trim_matches('.').to_string()
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.ensemble.is_empty() {
        run_one(&args, args.out.clone())?;
        return Ok(());
    }
    if args.ensemble.len() < 2 {
        bail!("--ensemble needs at least two models");
    }
    let mut runs = Vec::new();
    for m in &args.ensemble {
        let mut one = args.clone();
        one.model = Some(m.clone());
        runs.push(run_one(&one, args.out.join(slug(m)))?);
    }
    let ens = report::ensemble_runs(&runs, &args.out.join("ensemble"))?;
    print_summary(&ens);
    runs.push(ens);
    report::write_report(&args.out, &runs)?;
    Ok(())
}
