//! `biomistral sft`: supervised fine-tuning on a benchmark task's multiple-choice items (loss on
//! the answer) or on chat JSONL (loss on assistant turns).
use super::common::ModelArgs;
use super::pretrain::{eos_id, print_summary, train_and_save, TrainArgs};
use anyhow::Context;
use biomistral::generate::chat_template::ChatTemplate;
use biomistral::train::data::{Example, Split};
use biomistral::train::{lora, sft};
use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SftArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Benchmark task: medqa4, medqa5, medmcqa or pubmedqa (read from --data-dir).
    #[arg(long, conflicts_with = "data")]
    pub task: Option<String>,
    /// Chat JSONL: {"messages": [{"role": "user"|"assistant"|"system", "content": ...}]} per line.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Benchmark data folder (default: $BIOMISTRAL_DATA, else ../shared/data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use only the first N items/records (after a seeded shuffle).
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub train: TrainArgs,
}

fn split_off<T: Clone>(mut v: Vec<T>, frac: f64, seed: u64, limit: Option<usize>) -> (Vec<T>, Vec<T>) {
    v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    if let Some(l) = limit {
        v.truncate(l);
    }
    let n_eval = if v.len() >= 2 && frac > 0.0 {
        ((v.len() as f64 * frac).round() as usize).clamp(1, v.len() - 1)
    } else {
        0
    };
    let train = v.split_off(n_eval);
    (train, v)
}

/// Drop examples over --seq-len (with a warning); longer than the model's context is an error.
fn fit(ex: Vec<Example>, seq_len: usize, context: usize) -> anyhow::Result<Vec<Example>> {
    if let Some((i, e)) = ex.iter().enumerate().find(|(_, e)| e.ids.len() > context) {
        anyhow::bail!(
            "example {} has {} tokens, longer than the model's context ({context})",
            i + 1,
            e.ids.len()
        );
    }
    let n = ex.len();
    let kept: Vec<Example> = ex
        .into_iter()
        .filter(|e| e.ids.len() <= seq_len && e.n_targets() > 0)
        .collect();
    if kept.len() < n {
        eprintln!(
            "warning: skipped {} of {n} examples longer than --seq-len {seq_len}",
            n - kept.len()
        );
    }
    Ok(kept)
}

pub fn run(a: SftArgs) -> anyhow::Result<()> {
    let mode = a.train.mode()?;
    a.train.check_out()?;
    let data_dir = a
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("BIOMISTRAL_DATA").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("../shared/data"));
    let items = match (&a.task, &a.data) {
        (Some(t), None) => Some(sft::load_task(t, &data_dir).with_context(|| format!("loading task {t}"))?),
        (None, Some(_)) => None,
        _ => anyhow::bail!("give either --task or --data"),
    };
    let mut m = a.model.load()?;
    if !a.train.lora {
        lora::merge(&mut m.model)?;
    }
    let ctx = m.model.cfg.max_position_embeddings;
    let seq_len = a.train.seq_len(ctx)?;
    let eos = eos_id(&m)?;
    let (seed, frac) = (a.train.seed, a.train.eval_frac);
    let (split, eval_items) = match (items, &a.data) {
        (Some(items), _) => {
            let (tr, ev) = split_off(items, frac, seed, a.limit);
            let enc = |v: &[sft::McqItem]| -> anyhow::Result<Vec<Example>> {
                v.iter()
                    .map(|it| Ok(sft::mcq_example(it, &m.tokenizer, eos)?))
                    .collect()
            };
            let split = Split {
                train: fit(enc(&tr)?, seq_len, ctx)?,
                eval: fit(enc(&ev)?, seq_len, ctx)?,
            };
            (split, Some(ev))
        }
        (None, Some(path)) => {
            let tmpl = ChatTemplate::new(
                m.chat_template.as_deref(),
                m.tokenizer.bos_token.as_deref(),
                m.tokenizer.eos_token.as_deref(),
            );
            let ex = sft::chat_examples(path, &m.tokenizer, &tmpl)?;
            let (tr, ev) = split_off(ex, frac, seed, a.limit);
            (
                Split {
                    train: fit(tr, seq_len, ctx)?,
                    eval: fit(ev, seq_len, ctx)?,
                },
                None,
            )
        }
        (None, None) => anyhow::bail!("give either --task or --data"),
    };
    if split.train.is_empty() {
        anyhow::bail!("no training examples fit --seq-len {seq_len}");
    }
    eprintln!(
        "{} training and {} held-out examples",
        split.train.len(),
        split.eval.len()
    );
    let before = match &eval_items {
        Some(ev) if !ev.is_empty() => Some(sft::evaluate_mcq(&m.model, &m.tokenizer, ev)?),
        _ => None,
    };
    let s = train_and_save(&mut m, &a.train, &mode, &split, &a.model.model)?;
    print_summary(&s, &a.train.out);
    if let (Some(b), Some(ev)) = (before, &eval_items) {
        let after = sft::evaluate_mcq(&m.model, &m.tokenizer, ev)?;
        println!(
            "held-out accuracy {:.3} -> {:.3}, mean log p(gold) {:.4} -> {:.4} ({} items)",
            b.accuracy, after.accuracy, b.mean_gold_logprob, after.mean_gold_logprob, after.n
        );
        let j = serde_json::json!({"before": b, "after": after});
        std::fs::write(a.train.out.join("mcq_eval.json"), serde_json::to_string_pretty(&j)?)?;
    }
    Ok(())
}
