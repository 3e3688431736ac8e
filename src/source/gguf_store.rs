//! Serves a GGUF file's tensors under Hugging Face names, undoing llama.cpp's q/k row
//! permutation so that the decoder uses one RoPE convention (rotate-half) for every source.
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::linear::Weight;
use crate::model::mistral::{TensorSummary, WeightSource};
use crate::source::gguf::{qtensor_from_bytes, GgufFile, TensorInfo};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

pub struct GgufStore {
    pub file: GgufFile,
    n_heads: usize,
    n_kv_heads: usize,
}

/// Hugging Face tensor name -> llama.cpp tensor name.
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    Some(match name {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        _ => {
            let rest = name.strip_prefix("model.layers.")?;
            let (i, suffix) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
            let s = match suffix {
                "input_layernorm.weight" => "attn_norm.weight",
                "post_attention_layernorm.weight" => "ffn_norm.weight",
                "self_attn.q_proj.weight" => "attn_q.weight",
                "self_attn.k_proj.weight" => "attn_k.weight",
                "self_attn.v_proj.weight" => "attn_v.weight",
                "self_attn.o_proj.weight" => "attn_output.weight",
                "mlp.gate_proj.weight" => "ffn_gate.weight",
                "mlp.up_proj.weight" => "ffn_up.weight",
                "mlp.down_proj.weight" => "ffn_down.weight",
                _ => return None,
            };
            format!("blk.{i}.{s}")
        }
    })
}

/// llama.cpp's name -> Hugging Face name (inverse of `hf_to_gguf_name`).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    Some(match name {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = name.strip_prefix("blk.")?;
            let (i, suffix) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
            let s = match suffix {
                "attn_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                _ => return None,
            };
            format!("model.layers.{i}.{s}")
        }
    })
}

/// Row order mapping for llama.cpp's q/k permutation. llama.cpp stores, within each head, the
/// rotary pairs interleaved (row 2i+j holds HF row j*half+i). `hf_row_source(r)` is the GGUF
/// row that holds HF row `r`; applying the inverse permutes HF rows into GGUF order.
pub fn permuted_row(hf_row: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (h, r) = (hf_row / head_dim, hf_row % head_dim);
    let (j, i) = (r / half, r % half);
    h * head_dim + 2 * i + j
}

/// Reorder the rows of a row-major matrix stored as raw bytes (`row_bytes` per row):
/// output row `r` is input row `src(r)`. Works for block-quantized data too, because blocks
/// never cross rows.
pub fn reorder_rows(data: &[u8], rows: usize, row_bytes: usize, src: impl Fn(usize) -> usize) -> Vec<u8> {
    let mut out = vec![0u8; rows * row_bytes];
    for r in 0..rows {
        let s = src(r);
        out[r * row_bytes..(r + 1) * row_bytes].copy_from_slice(&data[s * row_bytes..(s + 1) * row_bytes]);
    }
    out
}

impl GgufStore {
    pub fn new(file: GgufFile, cfg: &ModelConfig) -> Self {
        GgufStore {
            file,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
        }
    }

    fn info(&self, hf_name: &str) -> Result<&TensorInfo> {
        let g = hf_to_gguf_name(hf_name).ok_or_else(|| Error::tensor(hf_name, "has no llama.cpp equivalent"))?;
        self.file
            .tensor_info(&g)
            .ok_or_else(|| Error::format(&self.file.path, format!("tensor '{g}' (for {hf_name}) is missing")))
    }

    /// Raw block bytes of `hf_name` in Hugging Face row order, with its type and shape.
    pub fn raw_hf(&self, hf_name: &str) -> Result<(GgmlDType, Vec<usize>, Vec<u8>)> {
        let info = self.info(hf_name)?;
        let shape = info.shape();
        let bytes = self.file.tensor_bytes(info);
        let heads = if hf_name.ends_with("q_proj.weight") {
            Some(self.n_heads)
        } else if hf_name.ends_with("k_proj.weight") {
            Some(self.n_kv_heads)
        } else {
            None
        };
        let data = match heads {
            Some(nh) if shape.len() == 2 => {
                let rows = shape[0];
                if rows % nh != 0 {
                    return Err(Error::tensor(
                        hf_name,
                        format!("{rows} rows do not split into {nh} heads"),
                    ));
                }
                let hd = rows / nh;
                reorder_rows(bytes, rows, bytes.len() / rows, |r| permuted_row(r, hd))
            }
            _ => bytes.to_vec(),
        };
        self.file.release(info);
        Ok((info.dtype, shape, data))
    }
}

impl WeightSource for GgufStore {
    fn get(&self, name: &str) -> Result<Weight> {
        let (dtype, shape, data) = self.raw_hf(name)?;
        let dev = Device::Cpu;
        let err = |e: candle_core::Error| Error::tensor(name, format!("{}: {e}", self.file.path.display()));
        Ok(match dtype {
            GgmlDType::F32 => Weight::Dense(Tensor::from_raw_buffer(&data, DType::F32, &shape, &dev).map_err(err)?),
            GgmlDType::F16 => Weight::Dense(Tensor::from_raw_buffer(&data, DType::F16, &shape, &dev).map_err(err)?),
            GgmlDType::BF16 => Weight::Dense(Tensor::from_raw_buffer(&data, DType::BF16, &shape, &dev).map_err(err)?),
            q => Weight::Quant(Arc::new(
                qtensor_from_bytes(q, &data, shape, &dev).map_err(|e| Error::tensor(name, e.to_string()))?,
            )),
        })
    }
    fn contains(&self, name: &str) -> bool {
        hf_to_gguf_name(name).is_some_and(|g| self.file.tensor_info(&g).is_some())
    }
    fn summaries(&self) -> Vec<TensorSummary> {
        self.file
            .tensors
            .iter()
            .map(|t| TensorSummary {
                name: t.name.clone(),
                dtype: crate::source::gguf::dtype_name(t.dtype).to_string(),
                shape: t.shape(),
                bytes: t.n_bytes(),
            })
            .collect()
    }
    fn files(&self) -> Vec<std::path::PathBuf> {
        vec![self.file.path.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for n in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.layers.7.mlp.down_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
        ] {
            assert_eq!(gguf_to_hf_name(&hf_to_gguf_name(n).unwrap()).unwrap(), n);
        }
    }

    #[test]
    fn permutation_matches_llama_cpp_convention() {
        // head_dim 4: HF rows [a0 a1 b0 b1] (first half, second half) are stored [a0 b0 a1 b1].
        let hd = 4;
        let gguf_rows: Vec<usize> = (0..4).map(|r| permuted_row(r, hd)).collect();
        assert_eq!(gguf_rows, vec![0, 2, 1, 3]);
        let hd = 8;
        assert_eq!(
            (0..8).map(|r| permuted_row(r, hd)).collect::<Vec<_>>(),
            vec![0, 2, 4, 6, 1, 3, 5, 7]
        );
    }
}
