//! Model configuration: Hugging Face `config.json` for MistralForCausalLM / LlamaForCausalLM,
//! or the equivalent GGUF `llama.*` metadata.
use crate::error::{Error, Result};
use crate::source::gguf::GgufFile;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    #[serde(rename = "MistralForCausalLM")]
    Mistral,
    #[serde(rename = "LlamaForCausalLM")]
    Llama,
}

impl Architecture {
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Llama => "LlamaForCausalLM",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Mistral => "mistral",
            Architecture::Llama => "llama",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// Mistral attends to at most this many previous tokens (itself included).
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint was stored in ("bfloat16", ...), for information.
    pub torch_dtype: Option<String>,
}

/// The raw JSON shape; kept separate so validation can name the field at fault.
#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<serde_json::Value>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    sliding_window: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
}

fn ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

impl ModelConfig {
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_to_string(path)?;
        Self::from_json_str(&text).map_err(|e| match e {
            Error::Config { field, msg } => Error::format(path, format!("field '{field}': {msg}")),
            other => Error::format(path, other.to_string()),
        })
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| Error::config("config.json", format!("invalid JSON: {e}")))?;
        let need = |v: Option<usize>, f: &str| v.ok_or_else(|| Error::config(f, "missing"));
        let arch_name = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| {
                raw.model_type.as_deref().map(|t| match t {
                    "mistral" => "MistralForCausalLM".to_string(),
                    "llama" => "LlamaForCausalLM".to_string(),
                    other => other.to_string(),
                })
            })
            .ok_or_else(|| Error::config("architectures", "missing"))?;
        let architecture = match arch_name.as_str() {
            "MistralForCausalLM" => Architecture::Mistral,
            "LlamaForCausalLM" => Architecture::Llama,
            other => {
                return Err(Error::config(
                    "architectures",
                    format!("unknown architecture '{other}' (supported: MistralForCausalLM, LlamaForCausalLM)"),
                ))
            }
        };
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(Error::config(
                    "hidden_act",
                    format!("'{act}' is not supported (only silu)"),
                ));
            }
        }
        if raw.attention_bias == Some(true) {
            return Err(Error::config("attention_bias", "attention biases are not supported"));
        }
        if let Some(s) = &raw.rope_scaling {
            if !s.is_null() {
                return Err(Error::config("rope_scaling", "RoPE scaling is not supported"));
            }
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                raw.rope_parameters
                    .as_ref()
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10000.0);
        let sliding_window = match (&raw.sliding_window, architecture) {
            (Some(serde_json::Value::Number(n)), Architecture::Mistral) => n.as_u64().map(|x| x as usize),
            _ => None,
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim: raw
                .head_dim
                .unwrap_or(hidden_size.checked_div(num_attention_heads).unwrap_or(0)),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-5),
            rope_theta,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            sliding_window,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: ids(&raw.bos_token_id).first().copied(),
            eos_token_ids: ids(&raw.eos_token_id),
            torch_dtype: raw.torch_dtype.or(raw.dtype),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read the `llama.*` metadata llama.cpp writes for Llama and Mistral models alike.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.architecture()?;
        if arch != "llama" {
            return Err(Error::format(
                &g.path,
                format!("unknown architecture '{arch}' in general.architecture (supported: llama, which llama.cpp also writes for Mistral)"),
            ));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let u = |s: &str| g.require_u64(&k(s)).map(|v| v as usize);
        let hidden_size = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let kv_heads = g
            .get_u64(&k("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(heads);
        let head_dim = g
            .get_u64(&k("attention.key_length"))
            .or_else(|| g.get_u64(&k("rope.dimension_count")))
            .map(|v| v as usize)
            .unwrap_or(hidden_size.checked_div(heads).unwrap_or(0));
        let vocab_size = match g.get_u64(&k("vocab_size")) {
            Some(v) => v as usize,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .or_else(|| g.tensor_info("token_embd.weight").map(|t| t.dims[1] as usize))
                .ok_or_else(|| Error::format(&g.path, "cannot determine the vocabulary size"))?,
        };
        let sliding_window = g.get_u64(&k("attention.sliding_window")).map(|v| v as usize);
        let cfg = ModelConfig {
            architecture: if sliding_window.is_some() {
                Architecture::Mistral
            } else {
                Architecture::Llama
            },
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_theta: g.get_f64(&k("rope.freq_base")).unwrap_or(10000.0),
            max_position_embeddings: g.get_u64(&k("context_length")).map(|v| v as usize).unwrap_or(4096),
            sliding_window,
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            bos_token_id: g.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
            eos_token_ids: g
                .get_u64("tokenizer.ggml.eos_token_id")
                .map(|v| vec![v as u32])
                .unwrap_or_default(),
            torch_dtype: None,
        };
        cfg.validate().map_err(|e| Error::format(&g.path, e.to_string()))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let pos = |v: usize, f: &str| {
            if v == 0 {
                Err(Error::config(f, "must be positive"))
            } else {
                Ok(())
            }
        };
        pos(self.vocab_size, "vocab_size")?;
        pos(self.hidden_size, "hidden_size")?;
        pos(self.intermediate_size, "intermediate_size")?;
        pos(self.num_hidden_layers, "num_hidden_layers")?;
        pos(self.num_attention_heads, "num_attention_heads")?;
        pos(self.num_key_value_heads, "num_key_value_heads")?;
        pos(self.head_dim, "head_dim")?;
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::config(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config("head_dim", "must be even for rotary embeddings"));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return Err(Error::config("rope_theta", "must be positive"));
        }
        Ok(())
    }

    /// The Hugging Face config.json for this configuration.
    pub fn to_hf_json(&self, torch_dtype: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.architecture.hf_name()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": false,
            "torch_dtype": torch_dtype,
            "use_cache": true,
        });
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [e] => v["eos_token_id"] = (*e).into(),
            many => v["eos_token_id"] = many.to_vec().into(),
        }
        if self.architecture == Architecture::Mistral {
            v["sliding_window"] = self.sliding_window.into();
        }
        v
    }

    /// Parameter count implied by the shapes (embeddings counted once when tied).
    pub fn n_params(&self) -> u64 {
        let (h, f, l, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.num_hidden_layers as u64,
            self.vocab_size as u64,
        );
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let per_layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h;
        let emb = v * h * if self.tie_word_embeddings { 1 } else { 2 };
        l * per_layer + emb + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_architecture_is_named() {
        let e = ModelConfig::from_json_str(r#"{"architectures":["GPT2LMHeadModel"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPT2LMHeadModel") && e.contains("architectures"), "{e}");
    }

    #[test]
    fn missing_field_is_named() {
        let e = ModelConfig::from_json_str(r#"{"architectures":["MistralForCausalLM"],"vocab_size":10}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }

    #[test]
    fn mistral_7b_shape() {
        let cfg = ModelConfig::from_json_str(
            r#"{"architectures":["MistralForCausalLM"],"vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"sliding_window":4096,"rope_theta":10000.0}"#,
        )
        .unwrap();
        assert_eq!(cfg.head_dim, 128);
        assert_eq!(cfg.sliding_window, Some(4096));
        assert_eq!(cfg.n_params(), 7_241_732_096);
    }
}
