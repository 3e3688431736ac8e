//! Hugging Face bitsandbytes checkpoints (e.g. BioMistral-7B-BnB.4 / BnB.8), as transformers
//! serializes them:
//! * 4-bit: `<m>.weight` u8 [ceil(n/2), 1] (two codes per byte, first in the high nibble),
//!   `<m>.weight.absmax` f32 `[n_blocks]` (or u8 codes with double quantization:
//!   `absmax = nested_quant_map[code] * nested_absmax[block / nested_blocksize] + nested_offset`),
//!   `<m>.weight.quant_map` f32 `[16]`, and `<m>.weight.quant_state.bitsandbytes__{nf4,fp4}`: a u8
//!   tensor holding JSON (`quant_type`, `blocksize`, `shape`, `dtype`, nested fields).
//! * 8-bit: `<m>.weight` i8 `[out, in]` and `<m>.SCB` f32 `[out]` (row absmax; w = q * SCB / 127).
use super::awq::RawTensor;
use super::bnb::{Bnb4Kind, Bnb4Linear, Int8Linear};
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};

/// The `quantization_config` block for `quant_method: bitsandbytes`.
#[derive(Debug, Clone, PartialEq)]
pub struct BnbConfig {
    pub load_in_4bit: bool,
    pub quant_type: Bnb4Kind,
    pub threshold: f32,
    pub skip_modules: Vec<String>,
}

impl BnbConfig {
    /// From a whole config.json or the block itself.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let q = v.get("quantization_config").unwrap_or(v);
        let f = |k: &str| format!("quantization_config.{k}");
        let method = q.get("quant_method").and_then(|m| m.as_str()).unwrap_or("");
        if method != "bitsandbytes" {
            return Err(Error::config(
                f("quant_method"),
                format!("'{method}' is not 'bitsandbytes'"),
            ));
        }
        let flag = |k: &str| q.get(k).and_then(|b| b.as_bool()).unwrap_or(false);
        let (four, eight) = (flag("load_in_4bit"), flag("load_in_8bit"));
        if four == eight {
            return Err(Error::config(
                f("load_in_4bit"),
                "exactly one of load_in_4bit / load_in_8bit must be true",
            ));
        }
        let quant_type = match q.get("bnb_4bit_quant_type").and_then(|t| t.as_str()).unwrap_or("fp4") {
            "nf4" => Bnb4Kind::Nf4,
            "fp4" => Bnb4Kind::Fp4,
            t => {
                return Err(Error::config(
                    f("bnb_4bit_quant_type"),
                    format!("'{t}'; expected nf4 or fp4"),
                ))
            }
        };
        let threshold = q.get("llm_int8_threshold").and_then(|t| t.as_f64()).unwrap_or(6.0) as f32;
        let skip_modules = q
            .get("llm_int8_skip_modules")
            .and_then(|s| s.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Ok(BnbConfig {
            load_in_4bit: four,
            quant_type,
            threshold,
            skip_modules,
        })
    }
}

fn tensor<'a>(st: &'a SafeTensors, name: &str, dtype: Dtype) -> Result<safetensors::tensor::TensorView<'a>> {
    let t = st
        .tensor(name)
        .map_err(|_| Error::tensor(name, "missing from the checkpoint"))?;
    if t.dtype() != dtype {
        return Err(Error::tensor(
            name,
            format!("dtype {:?}, expected {dtype:?}", t.dtype()),
        ));
    }
    Ok(t)
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn usize_field(state: &serde_json::Value, key: &str, name: &str) -> Result<usize> {
    state
        .get(key)
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .ok_or_else(|| Error::tensor(name, format!("quant_state field '{key}' is missing or not an integer")))
}

/// Load a 4-bit module (`prefix` = e.g. `model.layers.0.mlp.down_proj`).
pub fn load_bnb4_linear(st: &SafeTensors, prefix: &str, bias: Option<Vec<f32>>) -> Result<Bnb4Linear> {
    let w_name = format!("{prefix}.weight");
    let (state_name, kind) = [("nf4", Bnb4Kind::Nf4), ("fp4", Bnb4Kind::Fp4)]
        .iter()
        .map(|(t, k)| (format!("{w_name}.quant_state.bitsandbytes__{t}"), *k))
        .find(|(n, _)| st.tensor(n).is_ok())
        .ok_or_else(|| Error::tensor(&w_name, "no quant_state.bitsandbytes__nf4/fp4 entry"))?;
    let state: serde_json::Value = serde_json::from_slice(tensor(st, &state_name, Dtype::U8)?.data())
        .map_err(|e| Error::tensor(&state_name, format!("quant state is not JSON: {e}")))?;
    let shape: Vec<usize> = state
        .get("shape")
        .and_then(|s| s.as_array())
        .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
        .ok_or_else(|| Error::tensor(&state_name, "quant_state field 'shape' is missing"))?;
    let &[out, inf] = shape.as_slice() else {
        return Err(Error::tensor(&state_name, format!("shape {shape:?} is not 2-D")));
    };
    let block = usize_field(&state, "blocksize", &state_name)?;
    let map_name = format!("{w_name}.quant_map");
    let map = f32s(tensor(st, &map_name, Dtype::F32)?.data());
    if map.len() != 16 || map.iter().zip(kind.table()).any(|(a, b)| (a - b).abs() > 1e-6) {
        return Err(Error::tensor(&map_name, "does not match bitsandbytes' code table"));
    }
    let packed = tensor(st, &w_name, Dtype::U8)?.data().to_vec();
    let n_blocks = (out * inf).div_ceil(block.max(1));
    let absmax_name = format!("{w_name}.absmax");
    let absmax = if state.get("nested_blocksize").is_some() || st.tensor(&format!("{w_name}.nested_absmax")).is_ok() {
        let codes = tensor(st, &absmax_name, Dtype::U8)?.data();
        let nested = f32s(tensor(st, &format!("{w_name}.nested_absmax"), Dtype::F32)?.data());
        let nmap = f32s(tensor(st, &format!("{w_name}.nested_quant_map"), Dtype::F32)?.data());
        let nblock = usize_field(&state, "nested_blocksize", &state_name)?;
        let offset = state
            .get("nested_offset")
            .and_then(|o| o.as_f64())
            .ok_or_else(|| Error::tensor(&state_name, "quant_state field 'nested_offset' is missing"))?
            as f32;
        if nmap.len() != 256 || nblock == 0 || nested.len() != codes.len().div_ceil(nblock) {
            return Err(Error::tensor(
                format!("{w_name}.nested_absmax"),
                format!(
                    "{} nested absmax / {} map entries for {} codes with block {nblock}",
                    nested.len(),
                    nmap.len(),
                    codes.len()
                ),
            ));
        }
        codes
            .iter()
            .enumerate()
            .map(|(i, &c)| nmap[c as usize] * nested[i / nblock] + offset)
            .collect()
    } else {
        f32s(tensor(st, &absmax_name, Dtype::F32)?.data())
    };
    if absmax.len() != n_blocks {
        return Err(Error::tensor(
            &absmax_name,
            format!("{} values for {n_blocks} blocks", absmax.len()),
        ));
    }
    Bnb4Linear::from_parts(kind, out, inf, block, packed, absmax, bias).map_err(|e| match e {
        Error::Tensor { msg, .. } => Error::tensor(&w_name, msg),
        e => e,
    })
}

/// Load an LLM.int8() module: `<prefix>.weight` i8 and `<prefix>.SCB`.
pub fn load_int8_linear(st: &SafeTensors, prefix: &str, threshold: f32, bias: Option<Vec<f32>>) -> Result<Int8Linear> {
    let w_name = format!("{prefix}.weight");
    let w = tensor(st, &w_name, Dtype::I8)?;
    let &[out, inf] = w.shape() else {
        return Err(Error::tensor(&w_name, format!("shape {:?} is not 2-D", w.shape())));
    };
    let scb_name = format!("{prefix}.SCB");
    let scb = f32s(tensor(st, &scb_name, Dtype::F32)?.data());
    if scb.len() != out {
        return Err(Error::tensor(&scb_name, format!("{} values for {out} rows", scb.len())));
    }
    let codes = w.data().iter().map(|&b| b as i8).collect();
    Int8Linear::from_rowwise(out, inf, codes, &scb, threshold, bias)
}

/// The tensors transformers would save for a 4-bit module (no double quantization).
pub fn bnb4_module_tensors(prefix: &str, l: &Bnb4Linear) -> Vec<(String, RawTensor)> {
    use super::QuantLinear;
    let w = format!("{prefix}.weight");
    let (out, inf) = (l.out_features(), l.in_features());
    let kind = match l.kind() {
        Bnb4Kind::Nf4 => "nf4",
        Bnb4Kind::Fp4 => "fp4",
    };
    let state = serde_json::json!({
        "quant_type": kind, "blocksize": l.block_size(), "dtype": "float16", "shape": [out, inf],
    });
    let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let raw = |dtype, shape: Vec<usize>, data| RawTensor { dtype, shape, data };
    let state_bytes = state.to_string().into_bytes();
    vec![
        (
            w.clone(),
            raw(Dtype::U8, vec![l.packed().len(), 1], l.packed().to_vec()),
        ),
        (
            format!("{w}.absmax"),
            raw(Dtype::F32, vec![l.absmax().len()], f32b(l.absmax())),
        ),
        (
            format!("{w}.quant_map"),
            raw(Dtype::F32, vec![16], f32b(l.kind().table())),
        ),
        (
            format!("{w}.quant_state.bitsandbytes__{kind}"),
            raw(Dtype::U8, vec![state_bytes.len()], state_bytes),
        ),
    ]
}
