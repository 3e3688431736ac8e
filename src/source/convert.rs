//! Conversions between GGUF files and Hugging Face folders.
//!
//! GGUF -> HF dequantizes every tensor to f32 (exactly as the `gguf` Python package does), undoes
//! llama.cpp's q/k row permutation and rounds to the output dtype (round-to-nearest-even), so the
//! result is byte-identical to what transformers produces from the same GGUF.
//! HF -> GGUF writes llama.cpp's `llama` architecture metadata, tokenizer metadata and tensors
//! in F32/F16/BF16 or a block-quantized type.
use super::gguf::{dtype_name, qtensor_from_bytes, GgufFile, GgufWriter, Value};
use super::gguf_store::{gguf_to_hf_name, hf_to_gguf_name, permuted_row, reorder_rows, GgufStore};
use super::safetensors_store::SafetensorsStore;
use super::safetensors_writer::{self, PlannedTensor};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::config::{Architecture, ModelConfig};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Output dtype of a Hugging Face folder.
pub fn st_name(dtype: DType) -> Result<(&'static str, &'static str)> {
    Ok(match dtype {
        DType::BF16 => ("BF16", "bfloat16"),
        DType::F16 => ("F16", "float16"),
        DType::F32 => ("F32", "float32"),
        d => return Err(Error::invalid("--dtype", format!("{d:?} is not an output dtype"))),
    })
}

/// Convert f32 values to little-endian bytes of `dtype` (RNE rounding for 16-bit types).
pub fn f32_to_bytes(v: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        DType::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn progress_bar(n: u64, what: &str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(n);
    b.set_style(
        indicatif::ProgressStyle::with_template(&format!("{what} {{bar:30}} {{pos}}/{{len}} {{msg}} [{{elapsed}}]"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

pub struct GgufToHfOptions {
    pub dtype: DType,
    /// Maximum bytes per safetensors shard.
    pub shard_size: u64,
    pub progress: bool,
    /// A tokenizer.json to use instead of the one beside the GGUF file or its metadata.
    pub tokenizer: Option<PathBuf>,
}

impl Default for GgufToHfOptions {
    fn default() -> Self {
        GgufToHfOptions {
            dtype: DType::BF16,
            shard_size: 5_000_000_000,
            progress: false,
            tokenizer: None,
        }
    }
}

/// Dequantize one GGUF tensor (already in HF row order) to f32 values.
fn dequantize(name: &str, dtype: GgmlDType, shape: &[usize], data: &[u8]) -> Result<Vec<f32>> {
    let q = qtensor_from_bytes(dtype, data, shape.to_vec(), &Device::Cpu)
        .map_err(|e| Error::tensor(name, e.to_string()))?;
    Ok(q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

pub fn gguf_to_hf(src: &Path, out: &Path, opts: &GgufToHfOptions) -> Result<()> {
    let file = GgufFile::open(src)?;
    let cfg = ModelConfig::from_gguf(&file)?;
    let (st_dtype, torch_dtype) = st_name(opts.dtype)?;
    let tokenizer = {
        let beside = opts
            .tokenizer
            .clone()
            .unwrap_or_else(|| src.with_file_name("tokenizer.json"));
        if beside.exists() {
            super::tokenizer::Tokenizer::from_file(&beside)?
        } else {
            super::tokenizer_from_gguf(&file)?
        }
    };
    let chat_template = file.get_str("tokenizer.chat_template").map(String::from);
    let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool());
    let store = GgufStore::new(file, &cfg);

    let mut planned = Vec::new();
    for t in &store.file.tensors {
        match gguf_to_hf_name(&t.name) {
            Some(hf) => planned.push(PlannedTensor::new(hf, st_dtype, t.shape())),
            // rope_freqs and similar are derived data that HF folders do not store.
            None => tracing::warn!("skipping GGUF tensor '{}' (no Hugging Face equivalent)", t.name),
        }
    }
    let staged = fsutil::StagedDir::new(out)?;
    let shards = split_shards(planned, opts.shard_size);
    let n_shards = shards.len();
    let bar = progress_bar(store.file.tensors.len() as u64, "converting", opts.progress);
    let mut weight_map = serde_json::Map::new();
    for (si, shard) in shards.iter().enumerate() {
        let fname = if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", si + 1, n_shards)
        };
        let path = staged.path.join(&fname);
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        safetensors_writer::write(&path, shard, &meta, |i, w| {
            let name = &shard[i].name;
            bar.set_message(name.clone());
            let (dt, shape, data) = store.raw_hf(name)?;
            let bytes = match (dt, opts.dtype) {
                (GgmlDType::BF16, DType::BF16) | (GgmlDType::F16, DType::F16) | (GgmlDType::F32, DType::F32) => data,
                _ => f32_to_bytes(&dequantize(name, dt, &shape, &data)?, opts.dtype),
            };
            bar.inc(1);
            w.write_all(&bytes).map_err(|e| Error::io(&path, e))
        })?;
        for t in shard {
            weight_map.insert(t.name.clone(), fname.clone().into());
        }
    }
    bar.finish_and_clear();
    if n_shards > 1 {
        let total: usize = shards.iter().flatten().map(|t| t.n_bytes).sum();
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&staged.path.join("model.safetensors.index.json"), &index)?;
    }
    write_json(&staged.path.join("config.json"), &cfg.to_hf_json(torch_dtype))?;
    let mut gen = serde_json::json!({"do_sample": false});
    if let Some(b) = cfg.bos_token_id {
        gen["bos_token_id"] = b.into();
    }
    if let Some(e) = cfg.eos_token_ids.first() {
        gen["eos_token_id"] = (*e).into();
    }
    write_json(&staged.path.join("generation_config.json"), &gen)?;
    fsutil::write_bytes_atomic(&staged.path.join("tokenizer.json"), tokenizer.to_json()?.as_bytes())?;
    let mut tc = serde_json::json!({
        "bos_token": tokenizer.bos_token.clone().or_else(|| cfg.bos_token_id.and_then(|i| tokenizer.id_to_token(i))),
        "eos_token": tokenizer.eos_token.clone().or_else(|| cfg.eos_token_ids.first().and_then(|&i| tokenizer.id_to_token(i))),
        "clean_up_tokenization_spaces": false,
    });
    if let Some(b) = add_bos {
        tc["add_bos_token"] = b.into();
    }
    if let Some(t) = chat_template {
        tc["chat_template"] = t.into();
    }
    write_json(&staged.path.join("tokenizer_config.json"), &tc)?;
    staged.commit()
}

fn split_shards(planned: Vec<PlannedTensor>, max: u64) -> Vec<Vec<PlannedTensor>> {
    let mut shards: Vec<Vec<PlannedTensor>> = vec![vec![]];
    let mut size = 0u64;
    for t in planned {
        if size > 0 && size + t.n_bytes as u64 > max {
            shards.push(vec![]);
            size = 0;
        }
        size += t.n_bytes as u64;
        if let Some(last) = shards.last_mut() {
            last.push(t);
        }
    }
    shards
}

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::msg(e.to_string()))?;
    s.push('\n');
    fsutil::write_bytes_atomic(path, s.as_bytes())
}

/// Parse a GGUF tensor type name as used on the command line.
pub fn parse_ggml_type(s: &str) -> Result<GgmlDType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "bf16" => GgmlDType::BF16,
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q4_k" | "q4_k_m" | "q4_k_s" => GgmlDType::Q4K,
        "q5_k" | "q5_k_m" | "q5_k_s" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        "q2_k" => GgmlDType::Q2K,
        "q3_k" | "q3_k_m" => GgmlDType::Q3K,
        other => {
            return Err(Error::invalid(
                "type",
                format!("'{other}' is not a GGUF tensor type we write"),
            ))
        }
    })
}

/// llama.cpp's `general.file_type` for a whole-model type.
fn file_type(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q5_0 => 8,
        GgmlDType::Q5_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 12,
        GgmlDType::Q4K => 15, // MOSTLY_Q4_K_M (14 would be _S)
        GgmlDType::Q5K => 17, // MOSTLY_Q5_K_M
        GgmlDType::Q6K => 18,
        GgmlDType::BF16 => 32,
        _ => 0,
    }
}

/// Encode an f32 matrix `[rows, cols]` as GGUF `target` bytes. 1-D tensors stay F32 (llama.cpp
/// requires it for norms); rows that the block size does not divide fall back as llama.cpp does (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0), or to F16.
pub fn encode_tensor(name: &str, t: &Tensor, target: GgmlDType) -> Result<(GgmlDType, Vec<u8>)> {
    let t = t.to_dtype(DType::F32)?;
    let dims = t.dims().to_vec();
    let cols = *dims.last().unwrap_or(&0);
    let mut ty = if dims.len() < 2 { GgmlDType::F32 } else { target };
    if cols % ty.block_size() != 0 {
        // llama.cpp's fallbacks (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0), F16 where no block fits.
        ty = match crate::quantize::at_load::gguf_type_for_row(ty, cols) {
            GgmlDType::F32 => GgmlDType::F16,
            fallback => fallback,
        };
        if matches!(target, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            ty = target;
        }
        tracing::warn!(
            "{name}: row length {cols} is not a multiple of the {} block; using {}",
            dtype_name(target),
            dtype_name(ty)
        );
    }
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    let bytes = match ty {
        GgmlDType::F32 => f32_to_bytes(&v, DType::F32),
        GgmlDType::F16 => f32_to_bytes(&v, DType::F16),
        GgmlDType::BF16 => f32_to_bytes(&v, DType::BF16),
        q => QTensor::quantize(&t, q)
            .map_err(|e| Error::tensor(name, e.to_string()))?
            .data()?
            .to_vec(),
    };
    Ok((ty, bytes))
}

pub struct HfToGgufOptions {
    pub ty: GgmlDType,
    pub progress: bool,
    /// llama.cpp's `_M` mixture for k-quants (`q4_k_m`, `q5_k_m`): the output head, and
    /// `attn_v`/`ffn_down` in the layers `more_bits` picks, get Q6_K.
    pub k_medium: bool,
}

/// Whether a type name asks for llama.cpp's `_M` k-quant mixture.
pub fn is_k_medium(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "q4_k_m" || n == "q5_k_m"
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third one
/// in between, keep more precision in `attn_v` and `ffn_down`.
fn more_bits(layer: usize, n_layers: usize) -> bool {
    let e = n_layers / 8;
    layer < e || layer >= 7 * n_layers / 8 || (layer - e) % 3 == 2
}

/// The tensor type of `gname` (a GGUF tensor name) under `opts`.
fn tensor_type(gname: &str, opts: &HfToGgufOptions, n_layers: usize) -> GgmlDType {
    if !(opts.k_medium && matches!(opts.ty, GgmlDType::Q4K | GgmlDType::Q5K)) {
        return opts.ty;
    }
    if gname == "output.weight" {
        return GgmlDType::Q6K;
    }
    let layer = gname
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok());
    match layer {
        Some(i)
            if (gname.ends_with("attn_v.weight") || gname.ends_with("ffn_down.weight")) && more_bits(i, n_layers) =>
        {
            GgmlDType::Q6K
        }
        _ => opts.ty,
    }
}

pub fn hf_to_gguf(src: &Path, out: &Path, opts: &HfToGgufOptions) -> Result<()> {
    let cfg = ModelConfig::from_json_file(&src.join("config.json"))?;
    let store = SafetensorsStore::open_dir(src)?;
    let mut w = GgufWriter::default();
    let s = |x: &str| Value::String(x.to_string());
    w.set("general.architecture", s("llama"));
    w.set(
        "general.name",
        s(src.file_name().and_then(|n| n.to_str()).unwrap_or("model")),
    );
    w.set("general.file_type", Value::U32(file_type(opts.ty)));
    w.set("general.quantization_version", Value::U32(2));
    w.set("llama.context_length", Value::U32(cfg.max_position_embeddings as u32));
    w.set("llama.embedding_length", Value::U32(cfg.hidden_size as u32));
    w.set("llama.block_count", Value::U32(cfg.num_hidden_layers as u32));
    w.set("llama.feed_forward_length", Value::U32(cfg.intermediate_size as u32));
    w.set("llama.rope.dimension_count", Value::U32(cfg.head_dim as u32));
    w.set("llama.attention.head_count", Value::U32(cfg.num_attention_heads as u32));
    w.set(
        "llama.attention.head_count_kv",
        Value::U32(cfg.num_key_value_heads as u32),
    );
    w.set(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(cfg.rms_norm_eps as f32),
    );
    w.set("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32));
    w.set("llama.vocab_size", Value::U32(cfg.vocab_size as u32));
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
        w.set("llama.attention.key_length", Value::U32(cfg.head_dim as u32));
        w.set("llama.attention.value_length", Value::U32(cfg.head_dim as u32));
    }
    if let (Architecture::Mistral, Some(sw)) = (cfg.architecture, cfg.sliding_window) {
        w.set("llama.attention.sliding_window", Value::U32(sw as u32));
    }
    super::gguf_vocab::write_tokenizer_metadata(src, &cfg, &mut w)?;

    let names: Vec<String> = store.names().cloned().collect();
    let bar = progress_bar(names.len() as u64, "converting", opts.progress);
    for name in &names {
        bar.set_message(name.clone());
        let Some(gname) = hf_to_gguf_name(name) else {
            tracing::warn!("skipping tensor '{name}' (not part of the llama architecture)");
            continue;
        };
        if name == "lm_head.weight" && cfg.tie_word_embeddings {
            continue;
        }
        let t = store.tensor(name)?;
        let heads = if name.ends_with("q_proj.weight") {
            Some(cfg.num_attention_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(cfg.num_key_value_heads)
        } else {
            None
        };
        let t = match heads {
            Some(nh) => permute_for_gguf(name, &t, nh)?,
            None => t,
        };
        let (ty, bytes) = encode_tensor(name, &t, tensor_type(&gname, opts, cfg.num_hidden_layers))?;
        w.add_tensor(&gname, t.dims(), ty, bytes)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(parent) = out.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
    }
    w.write(out)
}

/// Permute HF q/k rows into llama.cpp's interleaved order (inverse of what the loader undoes).
fn permute_for_gguf(name: &str, t: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if rows % n_heads != 0 {
        return Err(Error::tensor(
            name,
            format!("{rows} rows do not split into {n_heads} heads"),
        ));
    }
    let hd = rows / n_heads;
    let mut inv = vec![0usize; rows];
    for r in 0..rows {
        inv[permuted_row(r, hd)] = r;
    }
    let bytes = safetensors_writer::tensor_bytes(t)?;
    let esz = t.dtype().size_in_bytes();
    let out = reorder_rows(&bytes, rows, cols * esz, |p| inv[p]);
    Ok(Tensor::from_raw_buffer(&out, t.dtype(), &[rows, cols], &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_medium_mixture_follows_llama_cpp_layer_choice() {
        // 32 layers: 0..4, 28..32, and 4 + 3k + 2 in between.
        let picked: Vec<usize> = (0..32).filter(|&i| more_bits(i, 32)).collect();
        assert_eq!(picked, vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        let opts = HfToGgufOptions {
            ty: GgmlDType::Q4K,
            progress: false,
            k_medium: true,
        };
        assert_eq!(tensor_type("output.weight", &opts, 32), GgmlDType::Q6K);
        assert_eq!(tensor_type("blk.6.attn_v.weight", &opts, 32), GgmlDType::Q6K);
        assert_eq!(tensor_type("blk.6.ffn_down.weight", &opts, 32), GgmlDType::Q6K);
        assert_eq!(tensor_type("blk.7.attn_v.weight", &opts, 32), GgmlDType::Q4K);
        assert_eq!(tensor_type("blk.0.attn_q.weight", &opts, 32), GgmlDType::Q4K);
        let pure = HfToGgufOptions {
            k_medium: false,
            ..opts
        };
        assert_eq!(tensor_type("output.weight", &pure, 32), GgmlDType::Q4K);
        assert!(is_k_medium("Q4_K_M") && !is_k_medium("q4_k"));
    }
}
