//! Training: continued pre-training and supervised fine-tuning, with LoRA adapters or full
//! fine-tuning. One file per concept: data, sft, lora, optim, checkpoint, trainer.
//!
//! ```text
//! biomistral pretrain --model M --data pubmed/ --out run --lora --max-steps 200 --seq-len 512 --lr 2e-4
//! biomistral sft --model M --task medqa4 --out run --lora          # or --data chat.jsonl
//! biomistral merge-lora --model M --adapter run --out merged        # PEFT adapter -> HF folder
//! biomistral generate --model M --adapter run ...                   # any loading command
//! ```
//!
//! Defaults follow the BioMistral paper: AdamW (lr 2e-5, betas 0.9/0.999, eps 1e-8, weight
//! decay 0.01 except on norm weights), linear warmup + cosine decay, clipping at global norm
//! 1.0, LoRA r=16 alpha=16 dropout 0.05 on all seven projections. The output folder gets
//! `train_log.jsonl`/`.csv`, `loss.svg`, `train_summary.json`, `checkpoints/step-N/` (with
//! `--save-every`) and the adapter (PEFT layout) or the full model (Hugging Face layout).
//!
//! LoRA on a quantized base (GGUF blocks, AWQ, or `--quant int8|nf4|...` at load) keeps the base
//! quantized, as QLoRA does: the input gradient of each frozen projection is computed from its
//! weight dequantized in the backward pass only (`model::linear`). Full fine-tuning turns every
//! weight into a dense variable.
pub mod checkpoint;
pub mod data;
pub mod lora;
pub mod optim;
pub mod plot;
pub mod sft;
pub mod trainer;
mod xml;

pub use lora::{apply_adapter, LoraConfig};
pub use trainer::{Mode, TrainConfig, Trainer};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::source::tokenizer::Tokenizer;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// Every weight of `model` under its Hugging Face name, on the CPU (a tied `lm_head` is left
/// out, as transformers does). Adapters must be merged first to be included.
pub fn dense_weights(model: &mut Model, dtype: DType) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    model.map_weights(|name, t| {
        out.push((name.to_string(), t.to_dtype(dtype)?.to_device(&Device::Cpu)?));
        Ok(t.clone())
    })?;
    Ok(out)
}

/// Write `model` as a Hugging Face folder (config, weights, tokenizer and its chat template)
/// in `dtype`.
pub fn save_hf_model(
    model: &mut Model,
    tok: &Tokenizer,
    chat_template: Option<&str>,
    dtype: DType,
    dir: &Path,
) -> Result<()> {
    if model.projections_mut().iter().any(|(_, l)| l.lora.is_some()) {
        return Err(Error::msg("merge the adapter before saving a full model"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (_, torch_dtype) = crate::source::convert::st_name(dtype)?;
    let weights = dense_weights(model, dtype)?;
    crate::source::safetensors_writer::write_tensors(&dir.join("model.safetensors"), &weights)?;
    crate::source::convert::write_json(&dir.join("config.json"), &model.cfg.to_hf_json(torch_dtype))?;
    crate::fsutil::write_bytes_atomic(&dir.join("tokenizer.json"), tok.to_json()?.as_bytes())?;
    let mut tc = serde_json::json!({
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(t) = chat_template {
        tc["chat_template"] = t.into();
    }
    crate::source::convert::write_json(&dir.join("tokenizer_config.json"), &tc)
}
