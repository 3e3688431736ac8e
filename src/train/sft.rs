//! Supervised fine-tuning data: multiple-choice QA in the BioMistral benchmark prompt format
//! (loss on the answer letter only) and chat JSONL (loss on assistant turns only), plus the
//! multiple-choice evaluation used to check that fine-tuning helped.
use super::data::Example;
use crate::error::{Error, Result};
use crate::generate::chat_template::{ChatTemplate, Message};
use crate::model::{ForwardOpts, Logits, Model};
use crate::source::tokenizer::Tokenizer;
use candle_core::{Tensor, D};
use std::path::{Path, PathBuf};

pub const TASKS: [&str; 5] = ["medqa4", "medqa5", "medmcqa", "pubmedqa", "mmlu"];
const LETTERS: [&str; 5] = ["A", "B", "C", "D", "E"];

/// One multiple-choice item.
#[derive(Debug, Clone, PartialEq)]
pub struct McqItem {
    pub context: Option<String>,
    pub question: String,
    pub options: Vec<String>,
    pub answer: usize,
}

/// The BioMistral evaluation prompt; the model continues with the answer letter.
pub fn mcq_prompt(item: &McqItem) -> String {
    let mut s = String::from("The following are multiple choice questions (with answers) about medical knowledge.\n\n");
    if let Some(c) = &item.context {
        s.push_str(&format!("**Context:** {c}\n"));
    }
    s.push_str(&format!("**Question:** {}\n", item.question));
    for (l, o) in LETTERS.iter().zip(&item.options) {
        s.push_str(&format!("({l}) {o}\n"));
    }
    s.push_str("**Answer:**(");
    s
}

fn jsonl_values(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = crate::fsutil::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(serde_json::from_str(line).map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))?);
    }
    if out.is_empty() {
        return Err(Error::format(path, "no records"));
    }
    Ok(out)
}

fn field<'a>(v: &'a serde_json::Value, k: &str, path: &Path, i: usize) -> Result<&'a str> {
    v.get(k)
        .and_then(|x| x.as_str())
        .ok_or_else(|| Error::format(path, format!("record {}: missing string field '{k}'", i + 1)))
}

/// Items of a benchmark task from the data folder (layout of shared/data, see PROVENANCE.md).
pub fn load_task(task: &str, data_dir: &Path) -> Result<Vec<McqItem>> {
    let bad = |p: &PathBuf, i: usize, m: &str| Error::format(p, format!("record {}: {m}", i + 1));
    match task {
        "medqa4" | "medqa5" => {
            let p = if task == "medqa4" {
                data_dir.join("medqa/4_options/phrases_no_exclude_test.jsonl")
            } else {
                data_dir.join("medqa/5_options/test.jsonl")
            };
            let mut items = Vec::new();
            for (i, v) in jsonl_values(&p)?.iter().enumerate() {
                let opts = v
                    .get("options")
                    .and_then(|o| o.as_object())
                    .ok_or_else(|| bad(&p, i, "no options"))?;
                let mut keys: Vec<&String> = opts.keys().collect();
                keys.sort();
                let options: Vec<String> = keys
                    .iter()
                    .filter_map(|k| opts[*k].as_str().map(String::from))
                    .collect();
                let ans = field(v, "answer_idx", &p, i)?;
                let answer = keys
                    .iter()
                    .position(|k| k.as_str() == ans)
                    .ok_or_else(|| bad(&p, i, "bad answer_idx"))?;
                items.push(McqItem {
                    context: None,
                    question: field(v, "question", &p, i)?.to_string(),
                    options,
                    answer,
                });
            }
            Ok(items)
        }
        "medmcqa" => {
            let p = data_dir.join("medmcqa/dev.json");
            let mut items = Vec::new();
            for (i, v) in jsonl_values(&p)?.iter().enumerate() {
                let options = ["opa", "opb", "opc", "opd"]
                    .iter()
                    .map(|k| field(v, k, &p, i).map(String::from))
                    .collect::<Result<Vec<_>>>()?;
                // The raw dump numbers the correct option from 1.
                let cop = v
                    .get("cop")
                    .and_then(|c| c.as_u64())
                    .ok_or_else(|| bad(&p, i, "no 'cop'"))? as usize;
                if !(1..=4).contains(&cop) {
                    return Err(bad(&p, i, "cop outside 1..=4"));
                }
                items.push(McqItem {
                    context: None,
                    question: field(v, "question", &p, i)?.to_string(),
                    options,
                    answer: cop - 1,
                });
            }
            Ok(items)
        }
        "pubmedqa" => {
            let p = data_dir.join("pubmedqa/ori_pqal.json");
            let text = crate::fsutil::read_to_string(&p)?;
            let v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).map_err(|e| Error::format(&p, e.to_string()))?;
            let mut keys: Vec<&String> = v.keys().collect();
            keys.sort();
            let mut items = Vec::new();
            for (i, k) in keys.iter().enumerate() {
                let r = &v[*k];
                let ctx: Vec<&str> = r
                    .get("CONTEXTS")
                    .and_then(|c| c.as_array())
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                let dec = field(r, "final_decision", &p, i)?;
                let answer = ["yes", "no", "maybe"]
                    .iter()
                    .position(|d| *d == dec)
                    .ok_or_else(|| bad(&p, i, "bad final_decision"))?;
                items.push(McqItem {
                    context: Some(ctx.join(" ")),
                    question: field(r, "QUESTION", &p, i)?.to_string(),
                    options: vec!["yes".into(), "no".into(), "maybe".into()],
                    answer,
                });
            }
            Ok(items)
        }
        other => Err(Error::invalid(
            "--task",
            format!(
                "'{other}' (known: {}, or pass --data FILE.jsonl)",
                TASKS[..4].join(", ")
            ),
        )),
    }
}

fn letter_ids(tok: &Tokenizer, n: usize) -> Result<Vec<u32>> {
    LETTERS[..n]
        .iter()
        .map(|l| {
            let ids = tok.encode(l, false)?;
            ids.first()
                .copied()
                .ok_or_else(|| Error::msg(format!("tokenizer gives no token for '{l}'")))
        })
        .collect()
}

/// prompt (with the tokenizer's own special tokens, e.g. BOS) + answer letter + EOS; loss on
/// the letter and EOS only.
pub fn mcq_example(item: &McqItem, tok: &Tokenizer, eos: u32) -> Result<Example> {
    let mut ids = tok.encode(&mcq_prompt(item), true)?;
    let n_prompt = ids.len();
    ids.extend(tok.encode(LETTERS[item.answer], false)?);
    ids.push(eos);
    let target = (0..ids.len()).map(|i| i >= n_prompt).collect();
    Ok(Example { ids, target })
}

/// Chat JSONL (`{"messages": [{"role", "content"}, ...]}`) rendered with the model's template;
/// the loss covers what each assistant turn adds to the rendering.
pub fn chat_examples(path: &Path, tok: &Tokenizer, template: &ChatTemplate) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (i, v) in jsonl_values(path)?.iter().enumerate() {
        let msgs: Vec<Message> = v
            .get("messages")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| Error::format(path, format!("record {}: {e}", i + 1)))?
            .ok_or_else(|| Error::format(path, format!("record {}: no 'messages' list", i + 1)))?;
        if !msgs.iter().any(|m| m.role == "assistant") {
            return Err(Error::format(
                path,
                format!("record {}: no assistant turn to learn from", i + 1),
            ));
        }
        let mut ids = Vec::new();
        let mut target = Vec::new();
        let mut done = String::new();
        for (k, m) in msgs.iter().enumerate() {
            let (pieces, learn): (Vec<String>, Vec<bool>) = if m.role == "assistant" {
                let prompt = template.render(&msgs[..k], true)?;
                let full = template.render(&msgs[..=k], false)?;
                (vec![prompt, full], vec![false, true])
            } else {
                (vec![template.render(&msgs[..=k], false)?], vec![false])
            };
            for (text, learn) in pieces.into_iter().zip(learn) {
                let delta = text.strip_prefix(done.as_str()).ok_or_else(|| {
                    Error::format(
                        path,
                        format!("record {}: the chat template does not render turns as a prefix", i + 1),
                    )
                })?;
                let d = tok.encode(delta, false)?;
                target.extend(std::iter::repeat_n(learn, d.len()));
                ids.extend(d);
                done = text;
            }
        }
        if let Some(t) = target.first_mut() {
            *t = false;
        }
        out.push(Example { ids, target });
    }
    Ok(out)
}

/// Held-out multiple-choice results: accuracy (argmax over option letters) and the mean
/// log-probability of the gold letter.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct McqEval {
    pub n: usize,
    pub accuracy: f64,
    pub mean_gold_logprob: f64,
}

pub fn evaluate_mcq(model: &Model, tok: &Tokenizer, items: &[McqItem]) -> Result<McqEval> {
    let mut correct = 0;
    let mut lp_sum = 0.0;
    for item in items {
        let ids = tok.encode(&mcq_prompt(item), true)?;
        let t = Tensor::new(ids.as_slice(), &model.device)?.unsqueeze(0)?;
        let logits = model.forward(&t, &mut model.new_cache(), Logits::Last, &ForwardOpts::default())?;
        let logp: Vec<f32> = candle_nn::ops::log_softmax(&logits.squeeze(0)?, D::Minus1)?.to_vec1()?;
        let letters = letter_ids(tok, item.options.len())?;
        let scores: Vec<f32> = letters.iter().map(|&i| logp[i as usize]).collect();
        let best = scores
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        correct += usize::from(best == item.answer);
        lp_sum += scores[item.answer] as f64;
    }
    let n = items.len().max(1) as f64;
    Ok(McqEval {
        n: items.len(),
        accuracy: correct as f64 / n,
        mean_gold_logprob: lp_sum / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_format() {
        let it = McqItem {
            context: None,
            question: "Q?".into(),
            options: vec!["x".into(), "y".into()],
            answer: 1,
        };
        assert_eq!(
            mcq_prompt(&it),
            "The following are multiple choice questions (with answers) about medical knowledge.\n\n**Question:** Q?\n(A) x\n(B) y\n**Answer:**("
        );
    }
}
