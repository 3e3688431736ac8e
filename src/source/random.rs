//! Random-weight models of real shapes (`biomistral init-random`), so that 7B-shaped layers can
//! be benchmarked and tested on a small machine without downloading 14 GB.
use super::convert::{f32_to_bytes, st_name, write_json};
use super::safetensors_writer::{self, PlannedTensor};
use crate::error::{Error, Result};
use crate::model::config::{Architecture, ModelConfig};
use candle_core::DType;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Named shapes.
pub fn preset(name: &str, layers: Option<usize>) -> Result<ModelConfig> {
    let mut cfg = match name {
        "mistral-7b" => ModelConfig {
            architecture: Architecture::Mistral,
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 32768,
            sliding_window: Some(4096),
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            torch_dtype: None,
        },
        "smollm2-135m" => ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            max_position_embeddings: 8192,
            sliding_window: None,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            torch_dtype: None,
        },
        "tiny" => ModelConfig {
            architecture: Architecture::Mistral,
            vocab_size: 512,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 512,
            sliding_window: Some(256),
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            torch_dtype: None,
        },
        other => {
            return Err(Error::invalid(
                "--shape",
                format!("'{other}' (known: mistral-7b, smollm2-135m, tiny)"),
            ))
        }
    };
    if let Some(l) = layers {
        if l == 0 {
            return Err(Error::invalid("--layers", "must be >= 1"));
        }
        cfg.num_hidden_layers = l;
    }
    Ok(cfg)
}

/// GPT-2's byte -> printable character table used by byte-level BPE vocabularies.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut map = vec!['\0'; 256];
    for &b in &printable {
        map[b as usize] = char::from_u32(b).unwrap_or('?');
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + n).unwrap_or('?');
            n += 1;
            printable.push(b);
        }
    }
    map
}

/// A byte-level tokenizer.json with `vocab_size` entries: specials, the 256 bytes, then fillers.
pub fn byte_level_tokenizer_json(vocab_size: usize) -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    let specials = ["<unk>", "<s>", "</s>"];
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), i.into());
    }
    for (b, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), (specials.len() + b).into());
    }
    for i in vocab.len()..vocab_size {
        vocab.insert(format!("<extra_{i}>"), i.into());
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

/// Write a random-weight Hugging Face folder: weights ~ U(-a, a) with std 0.02, norms 1.
pub fn write_random_model(cfg: &ModelConfig, out: &Path, dtype: DType, seed: u64) -> Result<()> {
    let (st_dtype, torch_dtype) = st_name(dtype)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (h, f, q, kv) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let mut planned = vec![PlannedTensor::new(
        "model.embed_tokens.weight",
        st_dtype,
        vec![cfg.vocab_size, h],
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![f, h]),
            ("mlp.up_proj.weight", vec![f, h]),
            ("mlp.down_proj.weight", vec![h, f]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            planned.push(PlannedTensor::new(format!("{p}.{n}"), st_dtype, s));
        }
    }
    planned.push(PlannedTensor::new("model.norm.weight", st_dtype, vec![h]));
    if !cfg.tie_word_embeddings {
        planned.push(PlannedTensor::new("lm_head.weight", st_dtype, vec![cfg.vocab_size, h]));
    }
    let path = out.join("model.safetensors");
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    safetensors_writer::write(&path, &planned, &meta, |i, w| {
        let t = &planned[i];
        let n: usize = t.shape.iter().product();
        let values: Vec<f32> = if t.shape.len() == 1 {
            vec![1.0; n]
        } else {
            let a = 0.02f32 * 3f32.sqrt();
            const CHUNK: usize = 1 << 16;
            let mut v = vec![0f32; n];
            v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ ((i as u64) << 32) ^ c as u64);
                chunk.iter_mut().for_each(|x| *x = rng.gen_range(-a..a));
            });
            v
        };
        w.write_all(&f32_to_bytes(&values, dtype))
            .map_err(|e| Error::io(&path, e))
    })?;
    write_json(&out.join("config.json"), &cfg.to_hf_json(torch_dtype))?;
    write_json(&out.join("tokenizer.json"), &byte_level_tokenizer_json(cfg.vocab_size))?;
    write_json(
        &out.join("tokenizer_config.json"),
        &serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
    )?;
    write_json(
        &out.join("generation_config.json"),
        &serde_json::json!({"bos_token_id": 1, "eos_token_id": 2}),
    )?;
    Ok(())
}
