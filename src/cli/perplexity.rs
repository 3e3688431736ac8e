//! `biomistral perplexity`: windowed perplexity over a text file, or per-document over JSONL.
use super::common::ModelArgs;
use anyhow::Context;
use biomistral::scoring::{perplexity_docs, perplexity_windowed};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A plain text file scored as one stream with a sliding window.
    #[arg(long, conflicts_with = "jsonl")]
    pub file: Option<PathBuf>,
    /// JSONL, one document per line in field `text`, each scored on its own.
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Window length in tokens (default: the model's context, at most 2048).
    #[arg(long)]
    pub context: Option<usize>,
    /// Window advance in tokens (default: half the window).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Truncate each JSONL document to this many tokens.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    if args.file.is_none() && args.jsonl.is_none() {
        anyhow::bail!("give --file TEXT or --jsonl FILE");
    }
    if args.max_tokens < 2 {
        anyhow::bail!("invalid --max-tokens: {} (must be >= 2)", args.max_tokens);
    }
    // Read and validate the input before loading the model.
    let (text, docs) = if let Some(f) = &args.file {
        let t = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        if t.trim().is_empty() {
            anyhow::bail!("{}: the file is empty", f.display());
        }
        (Some(t), vec![])
    } else {
        let f = args.jsonl.as_ref().expect("checked above");
        let content = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let mut docs = vec![];
        for (i, line) in content.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", f.display(), i + 1))?;
            let t = v
                .get("text")
                .and_then(|t| t.as_str())
                .with_context(|| format!("{}:{}: missing string field 'text'", f.display(), i + 1))?;
            docs.push(t.to_string());
        }
        if docs.is_empty() {
            anyhow::bail!("{}: no documents", f.display());
        }
        (None, docs)
    };
    let m = args.model.load()?;
    let bar = indicatif::ProgressBar::new(0);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let p = if let Some(t) = text {
        let ids = m.tokenizer.encode(&t, true)?;
        let ctx = args.context.unwrap_or(m.model.cfg.max_position_embeddings.min(2048));
        let stride = args.stride.unwrap_or(ctx.div_ceil(2));
        bar.set_length(ids.len() as u64);
        perplexity_windowed(&m.model, &ids, ctx, stride, |done, _| bar.set_position(done as u64))?
    } else {
        bar.set_length(docs.len() as u64);
        let ids: Vec<Vec<u32>> = docs
            .iter()
            .map(|d| m.tokenizer.encode(d, true))
            .collect::<Result<_, _>>()?;
        perplexity_docs(&m.model, &ids, args.max_tokens, || bar.inc(1))?
    };
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        println!(
            "perplexity {:.4}  (mean NLL {:.5} over {} predicted tokens, {} input tokens)",
            p.ppl, p.mean_nll, p.total_predicted_tokens, p.total_input_tokens
        );
    }
    Ok(())
}
