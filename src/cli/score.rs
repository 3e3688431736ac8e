//! `biomistral score`: logits for a set of prompts, in the layout of the transformers
//! reference (`ids.i`, `logits_last.i`, `logits_all_top.i`, `logits_all_top_idx.i`).
use super::common::ModelArgs;
use anyhow::Context;
use biomistral::model::{ForwardOpts, Logits};
use biomistral::source::safetensors_writer::write_tensors;
use candle_core::{Device, Tensor};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON file: {"prompts": [{"index": i, "text": "..."}]}.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// How many top logits to keep per position.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
}

pub fn run(args: ScoreArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.prompts).with_context(|| format!("reading {}", args.prompts.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", args.prompts.display()))?;
    let list = v
        .get("prompts")
        .and_then(|p| p.as_array())
        .with_context(|| format!("{}: expected {{\"prompts\": [...]}}", args.prompts.display()))?;
    let mut prompts = vec![];
    for (k, p) in list.iter().enumerate() {
        let idx = p.get("index").and_then(|i| i.as_u64()).unwrap_or(k as u64);
        let t = p
            .get("text")
            .and_then(|t| t.as_str())
            .with_context(|| format!("{}: prompt #{k} has no string 'text'", args.prompts.display()))?;
        prompts.push((idx, t.to_string()));
    }
    if args.top_k == 0 {
        anyhow::bail!("invalid --top-k: 0");
    }
    let m = args.model.load()?;
    let k = args.top_k.min(m.model.cfg.vocab_size);
    let mut out: Vec<(String, Tensor)> = vec![];
    for (idx, text) in prompts {
        let ids = m.tokenizer.encode(&text, true)?;
        biomistral::generate::check_prompt(&m, &ids, 0).with_context(|| format!("prompt {idx}"))?;
        let t = Tensor::new(ids.as_slice(), &m.model.device)?.unsqueeze(0)?;
        let mut cache = m.model.new_cache();
        let logits = m
            .model
            .forward(&t, &mut cache, Logits::All, &ForwardOpts::default())?
            .squeeze(0)?
            .to_device(&Device::Cpu)?;
        let (n, vocab) = logits.dims2()?;
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut top = Vec::with_capacity(n * k);
        let mut top_idx = Vec::with_capacity(n * k);
        for r in &rows {
            let mut order: Vec<usize> = (0..vocab).collect();
            order.select_nth_unstable_by(k - 1, |&a, &b| r[b].total_cmp(&r[a]));
            let mut best = order[..k].to_vec();
            best.sort_by(|&a, &b| r[b].total_cmp(&r[a]).then(a.cmp(&b)));
            top.extend(best.iter().map(|&i| r[i]));
            top_idx.extend(best.iter().map(|&i| i as i64));
        }
        let ids64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
        out.push((format!("ids.{idx}"), Tensor::new(ids64.as_slice(), &Device::Cpu)?));
        out.push((
            format!("logits_last.{idx}"),
            Tensor::new(rows[n - 1].as_slice(), &Device::Cpu)?,
        ));
        out.push((
            format!("logits_all_top.{idx}"),
            Tensor::from_vec(top, (n, k), &Device::Cpu)?,
        ));
        out.push((
            format!("logits_all_top_idx.{idx}"),
            Tensor::from_vec(top_idx, (n, k), &Device::Cpu)?,
        ));
    }
    write_tensors(&args.out, &out)?;
    eprintln!("wrote {} tensors to {}", out.len(), args.out.display());
    Ok(())
}
