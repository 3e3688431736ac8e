//! Text generation on top of the model: prompt checks, the decode loop with a KV cache,
//! sampling, EOS and stop strings, and UTF-8-safe streaming.
pub mod chat_template;
pub mod sampler;

use crate::error::{Error, Result};
use crate::model::{ForwardOpts, KvCache, Logits};
use crate::source::tokenizer::StreamDecoder;
use crate::source::LoadedModel;
use candle_core::Tensor;
pub use chat_template::{ChatTemplate, Message};
pub use sampler::{Sampler, SamplingParams};
use std::sync::atomic::{AtomicBool, Ordering};

/// The research-use advisory from BioMistral's model card, shown to people who chat.
pub const ADVISORY: &str =
    "Advisory: BioMistral is a research tool. It has not been validated for clinical use: do not use \
its answers for diagnosis, treatment or other medical decisions without professional review.";

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_strings: Vec<String>,
    /// Stop when one of these is generated (the model's EOS ids by default).
    pub eos_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    ContextFull,
    Cancelled,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateOutput {
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    pub text: String,
    pub stopped_at_eos: bool,
    pub stop_reason: StopReason,
}

/// Check a prompt against the model's context before running it.
pub fn check_prompt(m: &LoadedModel, ids: &[u32], max_new_tokens: usize) -> Result<()> {
    if ids.is_empty() {
        return Err(Error::invalid("prompt", "is empty (0 tokens)"));
    }
    let ctx = m.model.cfg.max_position_embeddings;
    if ids.len() > ctx {
        return Err(Error::invalid(
            "prompt",
            format!(
                "has {} tokens, more than the model's context of {ctx} (by {})",
                ids.len(),
                ids.len() - ctx
            ),
        ));
    }
    let _ = max_new_tokens;
    Ok(())
}

/// Longest suffix of `text` that is a proper prefix of some stop string: held back while streaming.
pub fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for k in (1..s.len()).rev() {
            if k <= text.len()
                && text.is_char_boundary(text.len() - k)
                && s.is_char_boundary(k)
                && text.ends_with(&s[..k])
            {
                hold = hold.max(k);
                break;
            }
        }
    }
    hold
}

/// Generate from `req.prompt_ids`, calling `on_text` with each new piece of text as it becomes
/// final. `cancel` stops generation between tokens (Ctrl-C, a client that went away).
pub fn generate(
    m: &LoadedModel,
    req: &GenerateRequest,
    cancel: Option<&AtomicBool>,
    mut on_text: impl FnMut(&str),
) -> Result<GenerateOutput> {
    check_prompt(m, &req.prompt_ids, req.max_new_tokens)?;
    let mut sampler = Sampler::new(req.sampling.clone())?;
    let ctx = m.model.cfg.max_position_embeddings;
    let mut cache: KvCache = m.model.new_cache();
    let mut history = req.prompt_ids.clone();
    let mut new_ids = Vec::new();
    let mut decoder = StreamDecoder::new(false);
    let mut text = String::new();
    let mut emitted = 0usize;
    let mut reason = StopReason::MaxTokens;
    let mut input = req.prompt_ids.clone();
    let dev = &m.model.device;
    while new_ids.len() < req.max_new_tokens {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            reason = StopReason::Cancelled;
            break;
        }
        if history.len() >= ctx {
            reason = StopReason::ContextFull;
            break;
        }
        let t = Tensor::new(input.as_slice(), dev)?.unsqueeze(0)?;
        let logits = m.model.forward(&t, &mut cache, Logits::Last, &ForwardOpts::default())?;
        let logits: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let next = sampler.sample(&logits, &history);
        history.push(next);
        new_ids.push(next);
        input = vec![next];
        if req.eos_ids.contains(&next) {
            reason = StopReason::Eos;
            break;
        }
        text.push_str(&decoder.push(&m.tokenizer, next)?);
        if let Some(pos) = req.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(pos);
            reason = StopReason::StopString;
            break;
        }
        let safe = text.len() - held_back(&text, &req.stop_strings);
        if safe > emitted {
            on_text(&text[emitted..safe]);
            emitted = safe;
        }
    }
    if reason != StopReason::StopString {
        text.push_str(&decoder.flush(&m.tokenizer)?);
    }
    if text.len() > emitted {
        on_text(&text[emitted..]);
    }
    Ok(GenerateOutput {
        prompt_ids: req.prompt_ids.clone(),
        stopped_at_eos: reason == StopReason::Eos,
        new_ids,
        text,
        stop_reason: reason,
    })
}

/// Render messages with the model's chat template and tokenize them as transformers'
/// `apply_chat_template(..., tokenize=True)` does (no extra special tokens).
pub fn encode_chat(m: &LoadedModel, messages: &[Message]) -> Result<Vec<u32>> {
    let tmpl = ChatTemplate::new(
        m.chat_template.as_deref(),
        m.tokenizer.bos_token.as_deref(),
        m.tokenizer.eos_token.as_deref(),
    );
    let text = tmpl.render(messages, true)?;
    m.tokenizer.encode(&text, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdback_for_partial_stop_strings() {
        let stops = vec!["###".to_string(), "\nUser:".to_string()];
        assert_eq!(held_back("answer #", &stops), 1);
        assert_eq!(held_back("answer ##", &stops), 2);
        assert_eq!(held_back("answer\nUs", &stops), 3);
        assert_eq!(held_back("answer", &stops), 0);
    }
}
