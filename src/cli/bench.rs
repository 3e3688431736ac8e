//! `biomistral bench`: llama-bench-style prompt processing (pp) and generation (tg) speed.
use super::common::{peak_rss_bytes, ModelArgs};
use biomistral::model::{ForwardOpts, Logits};
use candle_core::Tensor;
use clap::Args;
use rand::{Rng, SeedableRng};
use std::time::Instant;

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
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
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
    if args.reps == 0 {
        anyhow::bail!("invalid --reps: 0");
    }
    let t0 = Instant::now();
    let m = args.model.load()?;
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
            let mut tok = rng.gen_range(3..vocab);
            let s = Instant::now();
            for _ in 0..args.tg {
                let t = Tensor::new(&[tok], &dev)?.unsqueeze(0)?;
                let l = model.forward(&t, &mut cache, Logits::Last, &ForwardOpts::default())?;
                let v: Vec<f32> = l.squeeze(0)?.to_vec1()?;
                tok = biomistral::generate::sampler::argmax(&v);
            }
            if rep > 0 {
                tg_times.push(s.elapsed().as_secs_f64());
            }
        }
    }
    let threads = rayon::current_num_threads();
    let pp_tps = if args.pp > 0 {
        args.pp as f64 / median(pp_times.clone())
    } else {
        f64::NAN
    };
    let tg_tps = if args.tg > 0 {
        args.tg as f64 / median(tg_times.clone())
    } else {
        f64::NAN
    };
    let v = serde_json::json!({
        "model": args.model.model,
        "dtype": format!("{:?}", model.dtype).to_lowercase(),
        "threads": threads,
        "pp": args.pp, "tg": args.tg, "reps": args.reps,
        "pp_tps": pp_tps, "tg_tps": tg_tps,
        "pp_s": pp_times, "tg_s": tg_times,
        "load_s": load_s,
        "peak_rss_bytes": peak_rss_bytes(),
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
            "\npeak RSS {:.1} MiB, load {load_s:.2} s",
            peak_rss_bytes() as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
