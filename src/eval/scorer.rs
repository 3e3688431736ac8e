//! Turning model outputs into one [`Sample`] per (item, shot set), for both protocols.
use super::backend::Backend;
use super::tasks::{letter, Item};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One line of `samples_<task>.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub task: String,
    /// Index in the task's pool (after `--limit`).
    pub item: usize,
    /// The item's id in its source file (PMID, uuid or `file:line`).
    #[serde(default)]
    pub id: String,
    pub shot_set: usize,
    pub shot_items: Vec<usize>,
    pub gold: String,
    /// Arg-max token (biomistral) or first token of the best option's continuation (loglik); `null` for
    /// ensembles, which have no single token.
    pub top1_id: Option<u32>,
    pub top1_str: String,
    pub top1_prob: f64,
    pub correct: bool,
    /// biomistral: each option letter's probability under the full-vocabulary softmax.
    /// loglik: softmax over the options' summed log-likelihoods.
    pub letter_probs: BTreeMap<String, f64>,
    pub n_prompt_tokens: usize,
    pub prompt_sha256: String,
    /// loglik only: summed log-likelihood of each option's continuation, in letter order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_loglik: Option<Vec<f64>>,
    /// loglik only: correctness when each option's log-likelihood is divided by its byte length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct_norm: Option<bool>,
}

impl Sample {
    /// The letter with the highest probability among the options (first on ties).
    pub fn letter_argmax(&self) -> Option<(&str, f64)> {
        argmax_letter(&self.letter_probs)
    }
}

pub fn argmax_letter(probs: &BTreeMap<String, f64>) -> Option<(&str, f64)> {
    probs
        .iter()
        .fold(None, |best: Option<(&str, f64)>, (l, &p)| match best {
            Some((_, bp)) if bp >= p => best,
            _ => Some((l.as_str(), p)),
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// BioMistral: next-token arg-max over the whole vocabulary must decode to the gold letter.
    Biomistral,
    /// lm-eval-harness style: compare summed log-likelihoods of each option's continuation.
    Loglik,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Biomistral => "biomistral",
            Protocol::Loglik => "loglik",
        }
    }
}

/// Softmax in f32 over the whole vocabulary (max-subtracted, like torch), with the normaliser summed in f64.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().map(|&e| e as f64).sum();
    exps.iter().map(|&e| (e as f64 / sum) as f32).collect()
}

/// First index of the largest logit (torch.argmax picks the first too).
pub fn argmax(logits: &[f32]) -> Option<usize> {
    logits
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &l)| match best {
            Some((_, bl)) if bl >= l => best,
            _ => Some((i, l)),
        })
        .map(|b| b.0)
}

/// The token a model emits for letter `L` right after `**Answer:**(`. We take the tail of
/// `encode("(" + L)` after `encode("(")`: with a SentencePiece tokenizer `encode("A")` would give "▁A", a
/// different token from the "A" that follows "(", and this way BOS handling cancels out. Falls back to
/// `encode(L)` minus any BOS when the probe merges "(" with the letter.
pub fn letter_token_ids(backend: &dyn Backend, n_letters: usize) -> Result<Vec<u32>> {
    let open = backend.encode("(")?;
    let empty = backend.encode("")?;
    (0..n_letters)
        .map(|i| {
            let l = letter(i).to_string();
            let probe = backend.encode(&format!("({l}"))?;
            if probe.len() == open.len() + 1 && probe.starts_with(&open) {
                return Ok(probe[open.len()]);
            }
            let alone = backend.encode(&l)?;
            match alone.strip_prefix(empty.as_slice()) {
                Some([one]) => Ok(*one),
                _ => Err(Error::invalid(
                    "tokenizer",
                    format!("option letter '{l}' is not a single token ({alone:?})"),
                )),
            }
        })
        .collect()
}

/// What the biomistral protocol keeps from one forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub top1_id: u32,
    pub top1_str: String,
    pub top1_prob: f64,
    pub correct: bool,
    pub letter_probs: BTreeMap<String, f64>,
}

/// Score last-position logits: prediction = arg-max token; correct iff `decode([top1]).strip() == gold`.
pub fn score_biomistral(backend: &dyn Backend, logits: &[f32], letter_ids: &[u32], item: &Item) -> Result<Scored> {
    let top1 = argmax(logits).ok_or_else(|| Error::msg("backend returned empty logits"))?;
    let probs = softmax(logits);
    let top1_str = backend.decode_token(top1 as u32)?;
    let mut letter_probs = BTreeMap::new();
    for i in 0..item.options.len() {
        let id = *letter_ids
            .get(i)
            .ok_or_else(|| Error::msg("fewer letter tokens than options"))? as usize;
        let p = *probs.get(id).ok_or_else(|| {
            Error::msg(format!(
                "letter token id {id} is outside the vocabulary ({})",
                probs.len()
            ))
        })?;
        letter_probs.insert(letter(i).to_string(), p as f64);
    }
    Ok(Scored {
        top1_id: top1 as u32,
        correct: top1_str.trim() == item.gold_letter().to_string(),
        top1_str,
        top1_prob: probs[top1] as f64,
        letter_probs,
    })
}

/// The continuation scored for each option under `--protocol loglik`: the letter, its closing
/// parenthesis and the option text (`"B) text"`), after the same prompt that ends in `**Answer:**(`.
/// Scoring the text as well as the letter is what makes this protocol differ from the biomistral one.
pub fn loglik_continuation(item: &Item, i: usize) -> String {
    format!("{}) {}", letter(i), item.options[i])
}

/// What the loglik protocol keeps for one item.
#[derive(Debug, Clone, PartialEq)]
pub struct LoglikScored {
    pub loglik: Vec<f64>,
    pub first_tokens: Vec<u32>,
    pub pred: usize,
    pub pred_norm: usize,
}

/// Sum of log-probs of each option's continuation. Continuation tokens are `encode(prompt + cont)` after
/// its common prefix with `encode(prompt)`, as lm-eval-harness does, so a merge across the boundary is
/// scored as part of the continuation.
pub fn score_loglik(backend: &mut dyn Backend, prompt: &str, prompt_ids: &[u32], item: &Item) -> Result<LoglikScored> {
    let (mut loglik, mut norm, mut first_tokens) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..item.options.len() {
        let cont = loglik_continuation(item, i);
        let whole = backend.encode(&format!("{prompt}{cont}"))?;
        let common = whole.iter().zip(prompt_ids).take_while(|(a, b)| a == b).count();
        let (ctx, cont_ids) = whole.split_at(common);
        if cont_ids.is_empty() {
            return Err(Error::msg(format!("option {} has no continuation tokens", letter(i))));
        }
        let lps = backend.continuation_logprobs(ctx, cont_ids)?;
        let sum: f64 = lps.iter().map(|&x| x as f64).sum();
        loglik.push(sum);
        norm.push(sum / cont.len() as f64);
        first_tokens.push(cont_ids[0]);
    }
    let best = |v: &[f64]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
    Ok(LoglikScored {
        pred: best(&loglik),
        pred_norm: best(&norm),
        loglik,
        first_tokens,
    })
}

/// Softmax over option log-likelihoods (f64), as letter probabilities for ensembles and calibration.
pub fn loglik_letter_probs(loglik: &[f64]) -> BTreeMap<String, f64> {
    let max = loglik.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = loglik.iter().map(|l| (l - max).exp()).sum();
    loglik
        .iter()
        .enumerate()
        .map(|(i, l)| (letter(i).to_string(), (l - max).exp() / sum))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = softmax(&[1000.0, 1000.0, f32::NEG_INFINITY]);
        assert_eq!(p, vec![0.5, 0.5, 0.0]);
        assert_eq!(argmax(&[0.0, 3.0, 3.0]), Some(1));
    }

    #[test]
    fn loglik_probs_sum_to_one() {
        let p = loglik_letter_probs(&[-1.0, -2.0, -3.0]);
        assert!((p.values().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(argmax_letter(&p).map(|x| x.0), Some("A"));
    }
}
