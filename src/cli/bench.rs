//! `biomistral bench`: llama-bench-style prompt processing (pp) and generation (tg) speed.
use super::common::{peak_rss_bytes, ModelArgs};
use biomistral::model::{ForwardOpts, Logits};
use candle_core::Tensor;
use clap::Args;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

/// Tokens each held-out document is cut to (as the perplexity reference does).
const PPL_MAX_TOKENS: usize = 512;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed in one batch (0 skips).
    #[arg(long, default_value_t = 512)]
    pub pp: usize,
    /// Tokens generated one at a time (0 skips).
    #[arg(long, default_value_t = 128)]
    pub tg: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Sequences decoded together in the tg test (as a server's batch); tg t/s counts all rows.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also report perplexity on held-out documents from this file (PubTator, text, JSONL, XML).
    #[arg(long)]
    pub ppl_file: Option<PathBuf>,
    /// Documents of --ppl-file scored (the first N), each truncated to 512 tokens.
    #[arg(long, default_value_t = 20)]
    pub ppl_docs: usize,
    /// Build the quantization table: one run per format in --formats (plus --extra models),
    /// each in its own process so peak memory is per format; markdown on stdout.
    #[arg(long)]
    pub quant_table: bool,
    /// Formats for --quant-table: `base` (the model as stored) and any --quant value.
    #[arg(long, value_delimiter = ',', default_value = "base,int8,nf4,fp4,q8_0,q4_0,q4_k")]
    pub formats: Vec<String>,
    /// Extra rows for --quant-table, LABEL=MODEL (e.g. awq=./BioMistral-7B-AWQ): checkpoints
    /// quantized ahead of time.
    #[arg(long)]
    pub extra: Vec<String>,
    /// With --quant-table, also write PREFIX.md and PREFIX.json.
    #[arg(long)]
    pub table_out: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    super::common::in_pool(args.model.threads, || run_in_pool(args))
}

fn run_in_pool(args: BenchArgs) -> anyhow::Result<()> {
    if args.reps == 0 || args.batch == 0 {
        anyhow::bail!("invalid --reps or --batch: 0");
    }
    if args.quant_table {
        return super::bench_quant_table::run(&args);
    }

    // Read the held-out text before loading, so a bad file fails fast.
    let ppl_docs = match &args.ppl_file {
        Some(f) => {
            let docs = biomistral::train::data::read_documents(f)?;
            if docs.is_empty() {
                anyhow::bail!("{}: no documents for perplexity", f.display());
            }
            docs.into_iter().take(args.ppl_docs.max(1)).collect()
        }
        None => vec![],
    };
    let t0 = Instant::now();
    let src = args.model.open()?;
    let disk_bytes: u64 = src
        .weights
        .files()
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let m = args.model.load_source(src)?;
    let load_s = t0.elapsed().as_secs_f64();
    let model = &m.model;
    let vocab = model.cfg.vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let dev = model.device.clone();
    let mut pp_times = vec![];
    let mut tg_times = vec![];
    for rep in 0..=args.reps {
        // Repetition 0 warms caches and is not counted.
        if args.pp > 0 {
            let ids: Vec<u32> = (0..args.pp).map(|_| rng.gen_range(3..vocab)).collect();
            let t = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
            let mut cache = model.new_cache();
            let s = Instant::now();
            let l = model.forward(&t, &mut cache, Logits::Last, &ForwardOpts::default())?;
            l.to_device(&candle_core::Device::Cpu)?;
            if rep > 0 {
                pp_times.push(s.elapsed().as_secs_f64());
            }
        }
        if args.tg > 0 {
            let mut cache = model.new_cache();
            let mut toks: Vec<u32> = (0..args.batch).map(|_| rng.gen_range(3..vocab)).collect();
            let s = Instant::now();
            for _ in 0..args.tg {
                let t = Tensor::from_vec(toks.clone(), (args.batch, 1), &dev)?;
                let l = model.forward(&t, &mut cache, Logits::Last, &ForwardOpts::default())?;
                let rows: Vec<Vec<f32>> = l.to_vec2()?;
                toks = rows.iter().map(|v| biomistral::generate::sampler::argmax(v)).collect();
            }
            if rep > 0 {
                tg_times.push(s.elapsed().as_secs_f64());
            }
        }
    }
    let ppl = if ppl_docs.is_empty() {
        None
    } else {
        let ids: Vec<Vec<u32>> = ppl_docs
            .iter()
            .map(|d| m.tokenizer.encode(d, true))
            .collect::<Result<_, _>>()?;
        Some(biomistral::scoring::perplexity_docs(model, &ids, PPL_MAX_TOKENS, || {})?.ppl)
    };
    let threads = rayon::current_num_threads();
    let pp_tps = if args.pp > 0 {
        args.pp as f64 / median(pp_times.clone())
    } else {
        f64::NAN
    };
    let tg_tps = if args.tg > 0 {
        (args.tg * args.batch) as f64 / median(tg_times.clone())
    } else {
        f64::NAN
    };
    let v = serde_json::json!({
        "model": args.model.model,
        "quant": args.model.quant,
        "quant_head": args.model.quant_head,
        "dtype": format!("{:?}", model.dtype).to_lowercase(),
        "threads": threads,
        "pp": args.pp, "tg": args.tg, "batch": args.batch, "reps": args.reps,
        "pp_tps": pp_tps, "tg_tps": tg_tps,
        "pp_s": pp_times, "tg_s": tg_times,
        "load_s": load_s,
        "peak_rss_bytes": peak_rss_bytes(),
        "weight_bytes": model.weight_bytes(),
        "disk_bytes": disk_bytes,
        "ppl": ppl,
        "ppl_docs": ppl_docs.len(),
        "params": model.cfg.n_params(),
    });
    if args.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("| model | dtype | threads | test | t/s |");
        println!("|---|---|---|---|---|");
        if args.pp > 0 {
            println!(
                "| {} | {:?} | {threads} | pp{} | {pp_tps:.2} |",
                args.model.model, model.dtype, args.pp
            );
        }
        if args.tg > 0 {
            println!(
                "| {} | {:?} | {threads} | tg{} | {tg_tps:.2} |",
                args.model.model, model.dtype, args.tg
            );
        }
        println!(
            "\npeak RSS {:.1} MiB, weights {:.1} MiB, load {load_s:.2} s",
            peak_rss_bytes() as f64 / (1 << 20) as f64,
            model.weight_bytes() as f64 / (1 << 20) as f64
        );
        if let Some(p) = ppl {
            println!("perplexity {p:.4} on {} documents", ppl_docs.len());
        }
    }
    Ok(())
}
