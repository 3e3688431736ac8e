//! Tokenizer metadata for GGUF files we write (`tokenizer.ggml.*`), derived from a Hugging Face
//! `tokenizer.json`: byte-level BPE becomes llama.cpp's `gpt2` model, SentencePiece-style BPE with
//! byte fallback (Mistral, Llama-2) becomes its `llama` model.
use super::gguf::{GgufWriter, Value};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use std::path::Path;

// llama.cpp token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

fn merges_of(model: &serde_json::Value) -> Vec<String> {
    model
        .get("merges")
        .and_then(|m| m.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|m| match m {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Array(p) if p.len() == 2 => {
                        Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?))
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Which llama.cpp pre-tokenizer name matches a tokenizer.json pre_tokenizer.
fn pre_name(tok: &serde_json::Value) -> &'static str {
    let pre = tok.get("pre_tokenizer").map(|p| p.to_string()).unwrap_or_default();
    if pre.contains("\"Digits\"") && pre.contains("individual_digits\":true") && pre.contains("ByteLevel") {
        "smollm"
    } else if pre.contains("(?i:'s|'t|'re|'ve|'m|'ll|'d)") {
        "llama-bpe"
    } else {
        "default"
    }
}

pub fn write_tokenizer_metadata(dir: &Path, cfg: &ModelConfig, w: &mut GgufWriter) -> Result<()> {
    let path = dir.join("tokenizer.json");
    let text = crate::fsutil::read_to_string(&path)?;
    let tok: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))?;
    let model = tok
        .get("model")
        .ok_or_else(|| Error::format(&path, "missing 'model'"))?;
    if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
        return Err(Error::format(&path, "only BPE tokenizers can be written to GGUF"));
    }
    let vocab = model
        .get("vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| Error::format(&path, "missing 'model.vocab'"))?;
    let mut size = cfg.vocab_size.max(vocab.len());
    let mut added: Vec<(usize, String, bool)> = Vec::new();
    for a in tok.get("added_tokens").and_then(|a| a.as_array()).into_iter().flatten() {
        if let (Some(id), Some(c)) = (
            a.get("id").and_then(|i| i.as_u64()),
            a.get("content").and_then(|c| c.as_str()),
        ) {
            added.push((
                id as usize,
                c.to_string(),
                a.get("special").and_then(|s| s.as_bool()).unwrap_or(false),
            ));
            size = size.max(id as usize + 1);
        }
    }
    let mut tokens: Vec<Option<String>> = vec![None; size];
    for (t, id) in vocab {
        if let Some(id) = id.as_u64() {
            if (id as usize) < size {
                tokens[id as usize] = Some(t.clone());
            }
        }
    }
    let mut types = vec![NORMAL; size];
    for (id, c, special) in &added {
        tokens[*id] = Some(c.clone());
        types[*id] = if *special { CONTROL } else { USER_DEFINED };
    }
    let spm = model.get("byte_fallback").and_then(|b| b.as_bool()).unwrap_or(false);
    let merges = merges_of(model);
    let unk = model.get("unk_token").and_then(|u| u.as_str()).map(String::from);
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
        .collect();
    if spm {
        // SentencePiece merges by score: give each merge result a score that follows merge rank.
        let mut scores = vec![0f32; size];
        let index: std::collections::HashMap<&str, usize> =
            tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
        for (rank, m) in merges.iter().enumerate() {
            if let Some((a, b)) = m.split_once(' ') {
                if let Some(&id) = index.get(format!("{a}{b}").as_str()) {
                    if scores[id] == 0.0 {
                        scores[id] = -(rank as f32) - 1.0;
                    }
                }
            }
        }
        for (i, t) in tokens.iter().enumerate() {
            if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
                types[i] = BYTE;
            }
            if unk.as_deref() == Some(t.as_str()) {
                types[i] = UNKNOWN;
            }
        }
        w.set("tokenizer.ggml.model", Value::String("llama".into()));
        w.set(
            "tokenizer.ggml.scores",
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        );
    } else {
        w.set("tokenizer.ggml.model", Value::String("gpt2".into()));
        w.set("tokenizer.ggml.pre", Value::String(pre_name(&tok).into()));
        w.set(
            "tokenizer.ggml.merges",
            Value::Array(merges.into_iter().map(Value::String).collect()),
        );
    }
    let id_of = |t: &str| tokens.iter().position(|x| x == t);
    w.set(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.iter().cloned().map(Value::String).collect()),
    );
    w.set(
        "tokenizer.ggml.token_type",
        Value::Array(types.into_iter().map(Value::I32).collect()),
    );

    let tc_path = dir.join("tokenizer_config.json");
    let tc: serde_json::Value = if tc_path.exists() {
        serde_json::from_str(&crate::fsutil::read_to_string(&tc_path)?)
            .map_err(|e| Error::format(&tc_path, format!("invalid JSON: {e}")))?
    } else {
        serde_json::Value::Null
    };
    let tok_str = |k: &str| match tc.get(k) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        None => None,
    };
    let bos = tok_str("bos_token")
        .and_then(|t| id_of(&t))
        .or(cfg.bos_token_id.map(|b| b as usize));
    let eos = tok_str("eos_token")
        .and_then(|t| id_of(&t))
        .or(cfg.eos_token_ids.first().map(|&e| e as usize));
    if let Some(b) = bos {
        w.set("tokenizer.ggml.bos_token_id", Value::U32(b as u32));
    }
    if let Some(e) = eos {
        w.set("tokenizer.ggml.eos_token_id", Value::U32(e as u32));
    }
    if let Some(u) = unk.as_deref().and_then(id_of) {
        w.set("tokenizer.ggml.unknown_token_id", Value::U32(u as u32));
    }
    if let Some(p) = tok_str("pad_token").and_then(|t| id_of(&t)) {
        w.set("tokenizer.ggml.padding_token_id", Value::U32(p as u32));
    }
    let adds_bos = tok
        .get("post_processor")
        .map(|p| p.to_string().contains("SpecialToken"))
        .unwrap_or(false);
    w.set(
        "tokenizer.ggml.add_bos_token",
        Value::Bool(tc.get("add_bos_token").and_then(|b| b.as_bool()).unwrap_or(adds_bos)),
    );
    if spm {
        w.set("tokenizer.ggml.add_space_prefix", Value::Bool(true));
    }
    if let Some(t) = tc.get("chat_template").and_then(|t| t.as_str()) {
        w.set("tokenizer.chat_template", Value::String(t.to_string()));
    }
    Ok(())
}
