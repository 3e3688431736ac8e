//! `biomistral pretrain`: continued pre-training on raw text (PubMed abstracts, PMC articles).
use super::common::ModelArgs;
use anyhow::Context;
use biomistral::train::{self, data, lora, LoraConfig, Mode, TrainConfig, Trainer};
use clap::Args;
use std::path::{Path, PathBuf};

/// Options shared by `pretrain` and `sft` (defaults follow the BioMistral paper).
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Output folder: PEFT adapter (--lora) or a full Hugging Face model, logs, checkpoints.
    #[arg(long)]
    pub out: PathBuf,
    /// Train LoRA adapters instead of all weights.
    #[arg(long)]
    pub lora: bool,
    #[arg(long, default_value_t = 100)]
    pub max_steps: usize,
    /// Tokens per sequence (default: min(2048, model context)).
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Max global gradient norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
    #[arg(long, default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")]
    pub lora_targets: String,
    /// Held-out evaluation every N steps (0: before and after training only).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Checkpoint every N steps (0: never).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Fraction of documents / items held out for evaluation.
    #[arg(long, default_value_t = 0.05)]
    pub eval_frac: f64,
}

impl TrainArgs {
    pub fn mode(&self) -> anyhow::Result<Mode> {
        if !self.lora {
            return Ok(Mode::Full);
        }
        let cfg = LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self
                .lora_targets
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        };
        cfg.validate()?;
        Ok(Mode::Lora(cfg))
    }

    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            optim: train::optim::AdamWConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..Default::default()
            },
            warmup_steps: self.warmup_steps,
            clip: self.clip,
            seed: self.seed,
            eval_every: self.eval_every,
            save_every: self.save_every,
            resume: self.resume,
            stop_after: None,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    pub fn seq_len(&self, context: usize) -> anyhow::Result<usize> {
        let s = self.seq_len.unwrap_or(2048.min(context));
        if s > context {
            anyhow::bail!("--seq-len {s} is longer than the model's context ({context} tokens)");
        }
        if s < 2 {
            anyhow::bail!("--seq-len must be >= 2");
        }
        Ok(s)
    }

    /// Refuse to mix a new run into an old run's checkpoints.
    pub fn check_out(&self) -> anyhow::Result<()> {
        if !self.resume && !train::checkpoint::list(&self.out).is_empty() {
            anyhow::bail!(
                "{} already holds checkpoints; pass --resume to continue or choose another --out",
                self.out.display()
            );
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text data: a file or folder of .txt (blank-line separated or PubTator), .jsonl ("text"),
    /// PubMed .xml / PMC .nxml, optionally .gz.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Train, then write the adapter or the full model, and a summary, into `out`.
pub fn train_and_save(
    m: &mut biomistral::source::LoadedModel,
    args: &TrainArgs,
    mode: &Mode,
    split: &data::Split,
    base: &str,
) -> anyhow::Result<train::trainer::Summary> {
    let cfg = args.config();
    let summary = {
        let mut t = Trainer::new(&mut m.model, mode, &cfg, &args.out)?;
        t.run(split)?
    };
    match mode {
        Mode::Lora(l) => lora::save(&mut m.model, l, &args.out, base)?,
        Mode::Full => {
            let dt = m.model.dtype;
            train::save_hf_model(&mut m.model, &m.tokenizer, m.chat_template.as_deref(), dt, &args.out)?
        }
    }
    let json = serde_json::to_string_pretty(&summary)?;
    std::fs::write(args.out.join("train_summary.json"), &json).context("writing train_summary.json")?;
    Ok(summary)
}

pub fn print_summary(s: &train::trainer::Summary, out: &Path) {
    let ppl = |x: Option<f64>| {
        x.map(|v| format!("{v:.4} (ppl {:.3})", v.exp()))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "steps {} (from {}), last train loss {:.4}, {:.0} tokens/s, {} trainable parameters",
        s.steps, s.start_step, s.last_loss, s.tokens_per_s, s.trainable_params
    );
    println!(
        "held-out loss before {}  after {}",
        ppl(s.eval_loss_before),
        ppl(s.eval_loss_after)
    );
    println!("wrote {}", out.display());
}

pub fn eos_id(m: &biomistral::source::LoadedModel) -> anyhow::Result<u32> {
    m.eos_ids
        .first()
        .copied()
        .or_else(|| m.tokenizer.eos_id())
        .context("the model defines no EOS token to separate documents")
}

pub fn run(a: PretrainArgs) -> anyhow::Result<()> {
    let mode = a.train.mode()?;
    a.train.check_out()?;
    let docs = data::load_documents(&a.data)?;
    let mut m = a.model.load()?;
    if !a.train.lora {
        // Full fine-tuning starts from base + adapter; with --lora the adapter trains further.
        lora::merge(&mut m.model)?;
    }
    let seq_len = a.train.seq_len(m.model.cfg.max_position_embeddings)?;
    let eos = eos_id(&m)?;
    let split = data::pretraining_split(&docs, &m.tokenizer, eos, seq_len, a.train.eval_frac, a.train.seed)?;
    eprintln!(
        "{} documents -> {} training and {} held-out blocks of {seq_len} tokens",
        docs.len(),
        split.train.len(),
        split.eval.len()
    );
    let s = train_and_save(&mut m, &a.train, &mode, &split, &a.model.model)?;
    print_summary(&s, &a.train.out);
    Ok(())
}
