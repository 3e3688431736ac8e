//! `biomistral merge-lora`: fold a PEFT LoRA adapter into its base model and write a Hugging
//! Face folder.
use super::common::ModelArgs;
use anyhow::Context;
use biomistral::train;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MergeLoraArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder (Hugging Face layout: config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight dtype to write: f32, bf16 or f16 (default: the compute dtype).
    #[arg(long)]
    pub out_dtype: Option<String>,
}

pub fn run(a: MergeLoraArgs) -> anyhow::Result<()> {
    if a.model.adapter.is_none() {
        anyhow::bail!("merge-lora needs --adapter DIR");
    }
    let mut m = a.model.load()?;
    train::lora::merge(&mut m.model)?;
    let dtype = match &a.out_dtype {
        Some(s) => biomistral::source::parse_dtype(s)?.unwrap_or(m.model.dtype),
        None => m.model.dtype,
    };
    train::save_hf_model(&mut m.model, &m.tokenizer, m.chat_template.as_deref(), dtype, &a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!("wrote {}", a.out.display());
    Ok(())
}
