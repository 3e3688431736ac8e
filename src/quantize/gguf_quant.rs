//! Quantize f32 weights into GGUF block types and lay a HF-named Mistral checkpoint out as a
//! llama.cpp-loadable GGUF (architecture "llama", which is how llama.cpp runs Mistral).
//!
//! Block encoding is candle's (`QTensor::quantize`); tests/quantize.rs decodes hand-built and
//! candle-encoded blocks with an independent decoder written from the GGUF spec, so a layout
//! change in candle would be caught.
use crate::error::{Error, Result};
use crate::source::gguf::{dtype_name, GgufWriter, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};

/// The block types we produce (the others candle knows are either activations-only or rarely
/// used for weights).
pub const SUPPORTED: [GgmlDType; 9] = [
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q8_0,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5K,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

/// Parse a user-facing type name ("q4_k", "Q8_0", "f16", also "q4_k_m"-style file types map to
/// their main block type).
pub fn parse_dtype(s: &str) -> Result<GgmlDType> {
    let l = s.to_ascii_lowercase();
    let l = l.strip_suffix("_m").or_else(|| l.strip_suffix("_s")).unwrap_or(&l);
    Ok(match l {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "bf16" => GgmlDType::BF16,
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_k" => GgmlDType::Q5K,
        "q4_k" => GgmlDType::Q4K,
        "q6_k" => GgmlDType::Q6K,
        _ => {
            return Err(Error::invalid(
                "GGUF type",
                format!("'{s}'; supported: f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k"),
            ))
        }
    })
}

fn float_bytes(t: &Tensor, dtype: GgmlDType) -> candle_core::Result<Vec<u8>> {
    let flat = t.flatten_all()?;
    Ok(match dtype {
        GgmlDType::F16 => flat
            .to_dtype(DType::F16)?
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        GgmlDType::BF16 => flat
            .to_dtype(DType::BF16)?
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        _ => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    })
}

/// Encode one tensor for a GGUF file as `dtype`, returning the type actually used and the
/// bytes. 1-D tensors (norms, biases) and matrices whose rows are not a whole number of blocks
/// stay F32, as llama.cpp's converter does.
pub fn quantize_for_gguf(name: &str, t: &Tensor, dtype: GgmlDType) -> Result<(GgmlDType, Vec<u8>)> {
    if !SUPPORTED.contains(&dtype) {
        return Err(Error::invalid(
            "GGUF type",
            format!("{} is not supported", dtype_name(dtype)),
        ));
    }
    let dims = t.dims();
    let row = dims.last().copied().unwrap_or(1);
    let keep_f32 = dims.len() < 2 || !row.is_multiple_of(dtype.block_size());
    let dtype = if keep_f32 { GgmlDType::F32 } else { dtype };
    let err = |e: candle_core::Error| Error::tensor(name, format!("quantizing to {}: {e}", dtype_name(dtype)));
    let f32t = t.to_dtype(DType::F32).map_err(err)?;
    let values = f32t.flatten_all().map_err(err)?.to_vec1::<f32>().map_err(err)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(name, format!("non-finite value at flat index {i}")));
    }
    match dtype {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Ok((dtype, float_bytes(&f32t, dtype).map_err(err)?)),
        _ => {
            let q = QTensor::quantize(&f32t, dtype).map_err(err)?;
            Ok((dtype, q.data().map_err(err)?.into_owned()))
        }
    }
}

/// llama.cpp's tensor name for a HF Mistral/Llama tensor, or None for tensors it does not load
/// (e.g. `rotary_emb.inv_freq`).
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = module.rsplit_once('.')?;
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// HF stores q/k rows for rotate-half RoPE; llama.cpp's "llama" architecture expects each
/// head's rows interleaved (pairs (2i, 2i+1)), so its converter permutes them. Row
/// `h*d + 2i + j` of the output is row `h*d + j*d/2 + i` of the input.
pub fn permute_qk(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inf) = t.dims2()?;
    if n_head == 0 || !out.is_multiple_of(2 * n_head) {
        return Err(Error::invalid(
            "head count",
            format!("{out} rows are not 2 x {n_head} heads"),
        ));
    }
    let d = out / n_head;
    Ok(t.reshape((n_head, 2, d / 2, inf))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inf))?)
}

/// Model hyper-parameters llama.cpp needs in the GGUF metadata.
#[derive(Debug, Clone)]
pub struct LlamaGgufParams {
    pub name: String,
    pub context_length: u32,
    pub embedding_length: u32,
    pub block_count: u32,
    pub feed_forward_length: u32,
    pub head_count: u32,
    pub head_count_kv: u32,
    pub head_dim: u32,
    pub rms_norm_eps: f32,
    pub rope_freq_base: f32,
}

/// llama.cpp's `general.file_type` for a main block type.
fn file_type(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q8_0 => 7,
        GgmlDType::Q4K => 15, // Q4_K_M
        GgmlDType::Q5K => 17, // Q5_K_M
        GgmlDType::Q6K => 18,
        GgmlDType::BF16 => 32,
        _ => 0,
    }
}

/// Fill `w` with llama metadata and every HF-named tensor (f32 or any float dtype), renamed,
/// q/k permuted and encoded as `dtype`. Token embeddings and the output head use Q6_K (the
/// *_K_M recipe keeps them there) when a k-quant is requested. Tokenizer metadata is the
/// caller's (`tokenizer.ggml.*`).
pub fn add_llama_tensors(
    w: &mut GgufWriter,
    p: &LlamaGgufParams,
    tensors: &[(String, Tensor)],
    dtype: GgmlDType,
) -> Result<()> {
    w.set("general.architecture", Value::String("llama".into()));
    w.set("general.name", Value::String(p.name.clone()));
    w.set("general.file_type", Value::U32(file_type(dtype)));
    w.set("general.quantization_version", Value::U32(2));
    for (k, v) in [
        ("context_length", p.context_length),
        ("embedding_length", p.embedding_length),
        ("block_count", p.block_count),
        ("feed_forward_length", p.feed_forward_length),
        ("attention.head_count", p.head_count),
        ("attention.head_count_kv", p.head_count_kv),
        ("rope.dimension_count", p.head_dim),
    ] {
        w.set(&format!("llama.{k}"), Value::U32(v));
    }
    w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(p.rms_norm_eps));
    w.set("llama.rope.freq_base", Value::F32(p.rope_freq_base));
    let k_quant = matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K);
    for (hf, t) in tensors {
        let Some(name) = hf_to_gguf_name(hf) else { continue };
        let t = if name.ends_with("attn_q.weight") {
            permute_qk(t, p.head_count as usize)?
        } else if name.ends_with("attn_k.weight") {
            permute_qk(t, p.head_count_kv as usize)?
        } else {
            t.clone()
        };
        let want = if k_quant && (name == "token_embd.weight" || name == "output.weight") {
            GgmlDType::Q6K
        } else {
            dtype
        };
        let (used, bytes) = quantize_for_gguf(hf, &t, want)?;
        w.add_tensor(&name, t.dims(), used, bytes)?;
    }
    Ok(())
}
