//! Builds a [`Tokenizer`] from the `tokenizer.ggml.*` metadata of a GGUF file, so a lone GGUF
//! runs without a tokenizer.json. We build a real `tokenizers::Tokenizer` (not a private
//! algorithm) so that `Tokenizer::to_json` can write the tokenizer.json of a converted folder.
//!
//! Two vocabulary kinds exist in the wild:
//! - `gpt2`: byte-level BPE with an explicit merge list; the pre-tokenizer regex is named by
//!   `tokenizer.ggml.pre`.
//! - `llama`: SentencePiece BPE (Llama-2, Mistral v1). GGUF stores piece scores instead of
//!   merges; SentencePiece always merges the adjacent pair whose concatenation has the highest
//!   score, which is exactly a BPE whose merge ranks follow those scores (see `spm_merges`).
use crate::error::{Error, Result};
use crate::source::gguf::{GgufFile, Value};
use crate::source::tokenizer::Tokenizer;
use serde_json::json;
use std::collections::HashMap;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::Split;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

/// llama.cpp token types (`tokenizer.ggml.token_type`).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;
pub const TOKEN_BYTE: i32 = 6;

/// Llama-3's pre-tokenizer split (the regex of its tokenizer.json, which llama.cpp calls `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Everything a GGUF says about its tokenizer, validated. Public so callers can read the
/// special ids (e.g. padding) that `Tokenizer` itself does not carry.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` or `llama`.
    pub model: String,
    /// `tokenizer.ggml.pre`; `None` when absent.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One per token; required for `llama`.
    pub scores: Vec<f32>,
    /// One per token; all [`TOKEN_NORMAL`] when absent.
    pub token_types: Vec<i32>,
    /// `"left right"` strings; required for `gpt2`.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; `None` means the model kind's default (see [`Self::adds_bos`]).
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`; SentencePiece's dummy prefix, default true for `llama`.
    pub add_space_prefix: Option<bool>,
}

/// Build the tokenizer a GGUF file describes.
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    GgufVocab::from_gguf(g)?.build()
}

fn field_err(key: &str, msg: impl Into<String>) -> Error {
    Error::config(key, msg)
}

fn string_array(g: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let arr = v.as_array().ok_or_else(|| field_err(key, "is not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_str()
                .map(String::from)
                .ok_or_else(|| field_err(key, format!("element {i} is not a string")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn number_array<T>(g: &GgufFile, key: &str, conv: impl Fn(&Value) -> Option<T>) -> Result<Option<Vec<T>>> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let arr = v.as_array().ok_or_else(|| field_err(key, "is not an array"))?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| conv(x).ok_or_else(|| field_err(key, format!("element {i} is not a number"))))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn token_type(v: &Value) -> Option<i32> {
    match *v {
        Value::I32(t) => Some(t),
        _ => v.as_u64().and_then(|t| i32::try_from(t).ok()),
    }
}

fn optional_bool(g: &GgufFile, key: &str) -> Result<Option<bool>> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| field_err(key, "is not a boolean")),
    }
}

impl GgufVocab {
    /// Read and validate the `tokenizer.ggml.*` keys.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = match g.get("tokenizer.ggml.model") {
            None => return Err(field_err("tokenizer.ggml.model", "missing: this GGUF has no tokenizer")),
            Some(v) => v
                .as_str()
                .ok_or_else(|| field_err("tokenizer.ggml.model", "is not a string"))?,
        };
        let tokens = string_array(g, "tokenizer.ggml.tokens")?
            .ok_or_else(|| field_err("tokenizer.ggml.tokens", "missing: the GGUF has no vocabulary"))?;
        let id = |key: &str| -> Result<Option<u32>> {
            match g.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .map(Some)
                    .ok_or_else(|| field_err(key, "is not a token id")),
            }
        };
        let v = GgufVocab {
            model: model.to_string(),
            pre: g.get_str("tokenizer.ggml.pre").map(String::from),
            scores: number_array(g, "tokenizer.ggml.scores", |x| x.as_f64().map(|s| s as f32))?.unwrap_or_default(),
            token_types: number_array(g, "tokenizer.ggml.token_type", token_type)?.unwrap_or_default(),
            merges: match string_array(g, "tokenizer.ggml.merges")? {
                Some(m) => m,
                // A present but empty list is a valid byte-level vocabulary without merges.
                None if model == "gpt2" => {
                    return Err(field_err("tokenizer.ggml.merges", "missing (required for gpt2)"))
                }
                None => vec![],
            },
            tokens,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: optional_bool(g, "tokenizer.ggml.add_bos_token")?,
            add_eos: optional_bool(g, "tokenizer.ggml.add_eos_token")?,
            add_space_prefix: optional_bool(g, "tokenizer.ggml.add_space_prefix")?,
        };
        v.validate()?;
        Ok(v)
    }

    fn validate(&self) -> Result<()> {
        let n = self.tokens.len();
        if n == 0 {
            return Err(field_err("tokenizer.ggml.tokens", "is empty"));
        }
        for (key, len) in [
            ("tokenizer.ggml.scores", self.scores.len()),
            ("tokenizer.ggml.token_type", self.token_types.len()),
        ] {
            if len != 0 && len != n {
                return Err(field_err(
                    key,
                    format!("has {len} entries but tokenizer.ggml.tokens has {n}"),
                ));
            }
        }
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos_id),
            ("tokenizer.ggml.eos_token_id", self.eos_id),
            ("tokenizer.ggml.unknown_token_id", self.unk_id),
            ("tokenizer.ggml.padding_token_id", self.pad_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(field_err(
                    key,
                    format!("id {id} is outside the vocabulary of {n} tokens"),
                ));
            }
        }
        match self.model.as_str() {
            "llama" if self.scores.is_empty() => {
                Err(field_err("tokenizer.ggml.scores", "missing (required for llama)"))
            }
            "gpt2" | "llama" => Ok(()),
            other => Err(field_err(
                "tokenizer.ggml.model",
                format!("'{other}' is not supported (supported: gpt2, llama)"),
            )),
        }
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types.get(id).copied().unwrap_or(TOKEN_NORMAL)
    }

    /// llama.cpp's default when `add_bos_token` is absent: SentencePiece and Llama-3 vocabularies
    /// add BOS, other byte-level ones do not.
    pub fn adds_bos(&self) -> bool {
        self.add_bos.unwrap_or(
            self.model == "llama" || matches!(self.pre.as_deref(), Some("llama-bpe" | "llama3" | "llama-v3")),
        )
    }

    fn token_text(&self, id: Option<u32>) -> Option<String> {
        id.and_then(|i| self.tokens.get(i as usize)).cloned()
    }

    /// Build the `tokenizers` pipeline and wrap it.
    pub fn build(&self) -> Result<Tokenizer> {
        self.validate()?;
        let mut inner = match self.model.as_str() {
            "gpt2" => self.build_gpt2()?,
            _ => self.build_spm()?,
        };
        inner.with_post_processor(self.post_processor()?);
        // Control/unknown tokens are special (skipped by `decode(.., true)`); user-defined ones
        // are ordinary text that must still be matched whole, as llama.cpp does.
        let added: Vec<AddedToken> = (0..self.tokens.len())
            .filter_map(|i| {
                let special = match self.token_type(i) {
                    TOKEN_CONTROL | TOKEN_UNKNOWN => true,
                    TOKEN_USER_DEFINED => false,
                    _ => return None,
                };
                Some(AddedToken::from(self.tokens[i].clone(), special).normalized(false))
            })
            .collect();
        let (special, user): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
        inner.add_special_tokens(&special);
        inner.add_tokens(&user);
        let bos = self.token_text(self.bos_id);
        let eos = self.token_text(self.eos_id);
        Ok(Tokenizer::new(inner, bos, eos))
    }

    fn vocab_map(&self) -> Vocab {
        let mut vocab = Vocab::default();
        for (i, t) in self.tokens.iter().enumerate() {
            // A duplicated piece keeps its first id, as llama.cpp's text-to-token map does.
            vocab.entry(t.clone()).or_insert(i as u32);
        }
        vocab
    }

    fn build_gpt2(&self) -> Result<tokenizers::Tokenizer> {
        let key = "tokenizer.ggml.merges";
        let merges = self
            .merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                // Byte-level tokens never contain a real space, so the first space after the
                // first character separates the pair.
                let cut = m
                    .char_indices()
                    .skip(1)
                    .find(|&(_, c)| c == ' ')
                    .map(|(p, _)| p)
                    .ok_or_else(|| {
                        field_err(key, format!("entry {i} ('{m}') is not two tokens separated by a space"))
                    })?;
                Ok((m[..cut].to_string(), m[cut + 1..].to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let (pre, ignore_merges) = self.byte_level_pre_tokenizer()?;
        let bpe = BPE::builder()
            .vocab_and_merges(self.vocab_map(), merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| field_err(key, e.to_string()))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(pre));
        tok.with_decoder(Some(ByteLevel::default()));
        Ok(tok)
    }

    /// The pre-tokenizer named by `tokenizer.ggml.pre`, and whether whole words found in the
    /// vocabulary skip the merges (Llama-3's `ignore_merges`).
    fn byte_level_pre_tokenizer(&self) -> Result<(PreTokenizerWrapper, bool)> {
        let key = "tokenizer.ggml.pre";
        let split_err = |e: Box<dyn std::error::Error + Send + Sync>| field_err(key, e.to_string());
        match self.pre.as_deref().unwrap_or("default") {
            "llama-bpe" | "llama3" | "llama-v3" => {
                let split = Split::new(
                    tokenizers::pre_tokenizers::split::SplitPattern::Regex(LLAMA3_REGEX.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(split_err)?;
                let seq = PreSeq::new(vec![split.into(), ByteLevel::new(false, true, false).into()]);
                Ok((seq.into(), true))
            }
            // SmolLM / StarCoder: every digit is its own word, then GPT-2's split.
            "smollm" | "starcoder" | "refact" => {
                let seq = PreSeq::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]);
                Ok((seq.into(), false))
            }
            "gpt2" | "default" => Ok((ByteLevel::new(false, true, true).into(), false)),
            other => Err(field_err(
                key,
                format!("pre-tokenizer '{other}' is not supported (supported: llama-bpe, smollm, starcoder, refact, gpt2, default)"),
            )),
        }
    }

    fn build_spm(&self) -> Result<tokenizers::Tokenizer> {
        let unk = self
            .unk_id
            .or_else(|| self.tokens.iter().position(|t| t == "<unk>").map(|i| i as u32))
            .and_then(|id| self.token_text(Some(id)));
        let byte_fallback = self.token_types.contains(&TOKEN_BYTE) || self.tokens.iter().any(|t| t == "<0x00>");
        let mut builder = BPE::builder()
            .vocab_and_merges(self.vocab_map(), self.spm_merges())
            .byte_fallback(byte_fallback)
            .fuse_unk(true);
        if let Some(unk) = unk {
            builder = builder.unk_token(unk);
        }
        let bpe = builder
            .build()
            .map_err(|e| field_err("tokenizer.ggml.scores", e.to_string()))?;
        let space_prefix = self.add_space_prefix.unwrap_or(true);
        let mut norm = Vec::new();
        if space_prefix {
            norm.push(Prepend::new("\u{2581}".into()).into());
        }
        let replace = Replace::new(" ", "\u{2581}").map_err(|e| Error::Tokenizer(e.to_string()))?;
        norm.push(replace.into());
        let mut dec: Vec<DecoderWrapper> = vec![
            Replace::new("\u{2581}", " ")
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .into(),
            tokenizers::decoders::byte_fallback::ByteFallback::new().into(),
            tokenizers::decoders::fuse::Fuse::new().into(),
        ];
        if space_prefix {
            // Undo the dummy prefix: the first decoded space is ours, not the text's.
            dec.push(tokenizers::decoders::strip::Strip::new(' ', 1, 0).into());
        }
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_normalizer(Some(NormSeq::new(norm)));
        tok.with_decoder(Some(tokenizers::decoders::sequence::Sequence::new(dec)));
        Ok(tok)
    }

    /// Merges equivalent to SentencePiece's score-driven BPE: every way to write a vocabulary
    /// piece as two vocabulary pieces is a merge, ranked by the score of the resulting piece
    /// (highest first). Only normal and user-defined pieces take part; control, byte and unused
    /// pieces never result from a merge in SentencePiece.
    fn spm_merges(&self) -> Vec<(String, String)> {
        let mergeable = |id: usize| matches!(self.token_type(id), TOKEN_NORMAL | TOKEN_USER_DEFINED);
        let index: HashMap<&str, usize> = self
            .tokens
            .iter()
            .enumerate()
            .rev() // first id wins for duplicated pieces
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let mut found: Vec<(f32, usize, usize, usize)> = Vec::new();
        for (id, piece) in self.tokens.iter().enumerate() {
            if !mergeable(id) || index.get(piece.as_str()) != Some(&id) {
                continue;
            }
            for (cut, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(cut);
                if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                    found.push((self.scores[id], id, li, ri));
                }
            }
        }
        // Ties (equal scores) fall back to vocabulary order, as the HF converter does.
        found.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        found
            .into_iter()
            .map(|(_, _, l, r)| (self.tokens[l].clone(), self.tokens[r].clone()))
            .collect()
    }

    /// BOS/EOS insertion when `encode(.., add_special_tokens=true)`; `None` when nothing is added.
    fn post_processor(&self) -> Result<Option<PostProcessorWrapper>> {
        let bos = self
            .token_text(self.bos_id)
            .filter(|_| self.adds_bos())
            .zip(self.bos_id);
        let eos = self
            .token_text(self.eos_id)
            .filter(|_| self.add_eos == Some(true))
            .zip(self.eos_id);
        if bos.is_none() && eos.is_none() {
            // Byte-level tokenizer.json files carry a ByteLevel post-processor; it only fixes offsets.
            return Ok((self.model == "gpt2").then(|| ByteLevel::new(true, false, true).into()));
        }
        // single: `[BOS] $A [EOS]`; pair: `[BOS] $A [EOS] [BOS]:1 $B:1 [EOS]:1` (HF Llama's layout).
        // Built from its JSON form because the string form cannot hold tokens containing ':'.
        let seq = |name: &str, type_id: u32| {
            let special = |t: &String| json!({"SpecialToken": {"id": t, "type_id": type_id}});
            let mut v: Vec<serde_json::Value> = bos.iter().map(|(t, _)| special(t)).collect();
            v.push(json!({"Sequence": {"id": name, "type_id": type_id}}));
            v.extend(eos.iter().map(|(t, _)| special(t)));
            v
        };
        let specials: serde_json::Map<String, serde_json::Value> = bos
            .iter()
            .chain(eos.iter())
            .map(|(t, id)| (t.clone(), json!({"id": t, "ids": [id], "tokens": [t]})))
            .collect();
        let pair = [seq("A", 0), seq("B", 1)].concat();
        let template = json!({
            "type": "TemplateProcessing",
            "single": seq("A", 0),
            "pair": pair,
            "special_tokens": specials,
        });
        let tp: TemplateProcessing =
            serde_json::from_value(template).map_err(|e| field_err("tokenizer.ggml.bos_token_id", e.to_string()))?;
        Ok(Some(tp.into()))
    }
}
