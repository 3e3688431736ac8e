//! `--quant` at load time: a float checkpoint's projection weights are quantized as they are
//! read, so the full-precision copy of a layer never outlives its own loading. This is what
//! transformers' `load_in_8bit` / `load_in_4bit` (bitsandbytes) and llama.cpp's in-memory
//! requantization give their users.
//!
//! `--quant` quantizes only the seven projections of each decoder layer. Embeddings, norms and
//! the LM head stay in the compute dtype, as bitsandbytes does (`lm_head` is in its
//! `modules_to_not_convert` by default) and because the head's quality matters most.
//! `--quant-head` quantizes an `lm_head.weight` on its own, as llama.cpp's
//! `--output-tensor-type` does: AutoAWQ checkpoints keep a 7B head in f16 (262 MB, 7% of the
//! bytes a token reads; on a 4-layer model more than a third), which Q8_0 halves.
use super::bnb::{Bnb4Kind, Bnb4Linear, Int8Linear};
use crate::error::{Error, Result};
use crate::model::linear::Weight;
use crate::model::mistral::{TensorSummary, WeightSource};
use crate::source::gguf::dtype_name;
use candle_core::quantized::GgmlDType;
use candle_core::DType;
use std::path::PathBuf;
use std::sync::Arc;

/// bitsandbytes' default block size for NF4/FP4.
pub const BNB4_BLOCK: usize = 64;
/// LLM.int8()'s default outlier threshold.
pub const INT8_THRESHOLD: f32 = 6.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadQuant {
    /// LLM.int8(): row-wise absmax int8, outlier columns kept in f32.
    Int8 { threshold: f32 },
    /// NF4 or FP4, blockwise absmax.
    Bnb4 { kind: Bnb4Kind, block: usize },
    /// A GGUF block type, computed with the engine's GGUF kernels.
    Gguf(GgmlDType),
}

impl LoadQuant {
    /// `int8`, `nf4`, `fp4`, or a GGUF type: `q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k` (the
    /// llama.cpp file-type names `q4_k_m`, `q4_k_s`, `q5_k_m`, `q5_k_s` map to their main type).
    pub fn parse(s: &str) -> Result<Self> {
        Self::parse_flag(s, "--quant")
    }

    /// As [`Self::parse`], errors naming `flag`.
    pub fn parse_flag(s: &str, flag: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        Ok(match t.as_str() {
            "int8" | "llm.int8" | "8bit" => LoadQuant::Int8 {
                threshold: INT8_THRESHOLD,
            },
            "nf4" => LoadQuant::Bnb4 {
                kind: Bnb4Kind::Nf4,
                block: BNB4_BLOCK,
            },
            "fp4" => LoadQuant::Bnb4 {
                kind: Bnb4Kind::Fp4,
                block: BNB4_BLOCK,
            },
            "q8_0" => LoadQuant::Gguf(GgmlDType::Q8_0),
            "q4_0" => LoadQuant::Gguf(GgmlDType::Q4_0),
            "q4_1" => LoadQuant::Gguf(GgmlDType::Q4_1),
            "q5_0" => LoadQuant::Gguf(GgmlDType::Q5_0),
            "q5_1" => LoadQuant::Gguf(GgmlDType::Q5_1),
            "q4_k" | "q4_k_m" | "q4_k_s" => LoadQuant::Gguf(GgmlDType::Q4K),
            "q5_k" | "q5_k_m" | "q5_k_s" => LoadQuant::Gguf(GgmlDType::Q5K),
            "q6_k" => LoadQuant::Gguf(GgmlDType::Q6K),
            _ => {
                return Err(Error::invalid(
                    flag,
                    format!("'{s}' (expected int8, nf4, fp4, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k or q6_k)"),
                ))
            }
        })
    }

    pub fn name(&self) -> String {
        match self {
            LoadQuant::Int8 { .. } => "int8".into(),
            LoadQuant::Bnb4 {
                kind: Bnb4Kind::Nf4, ..
            } => "nf4".into(),
            LoadQuant::Bnb4 {
                kind: Bnb4Kind::Fp4, ..
            } => "fp4".into(),
            LoadQuant::Gguf(t) => dtype_name(*t).to_ascii_lowercase(),
        }
    }

    /// Quantize one `[out, in]` weight.
    pub fn quantize(&self, name: &str, w: &candle_core::Tensor) -> Result<Weight> {
        let (out, inf) = w
            .dims2()
            .map_err(|_| Error::tensor(name, format!("expected a matrix, got shape {:?}", w.dims())))?;
        let err = |e: candle_core::Error| Error::tensor(name, format!("quantizing to {}: {e}", self.name()));
        let floats = || w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        Ok(match *self {
            LoadQuant::Int8 { threshold } => {
                let v = floats().map_err(err)?;
                Weight::Custom(Arc::new(Int8Linear::quantize(name, &v, out, inf, threshold, None)?))
            }
            LoadQuant::Bnb4 { kind, block } => {
                let v = floats().map_err(err)?;
                Weight::Custom(Arc::new(Bnb4Linear::quantize(name, kind, &v, out, inf, block, None)?))
            }
            LoadQuant::Gguf(t) => {
                let t = gguf_type_for_row(t, inf);
                if t == GgmlDType::F32 {
                    return Ok(Weight::Dense(w.clone()));
                }
                let bytes = super::gguf_quant::quantize_rows(w, t).map_err(err)?;
                let q = crate::source::gguf::qtensor_from_bytes(t, &bytes, vec![out, inf], &candle_core::Device::Cpu)
                    .map_err(|e| Error::tensor(name, e.to_string()))?;
                Weight::Quant(Arc::new(q))
            }
        })
    }
}

/// The GGUF type a row of `inf` values gets: k-quants need rows of whole 256-value super-blocks;
/// where they do not fit, fall back as llama.cpp's quantizer does (Q4_K → Q5_0, Q5_K → Q5_1,
/// Q6_K → Q8_0), and where no 32-block fits either, keep f32.
pub fn gguf_type_for_row(t: GgmlDType, inf: usize) -> GgmlDType {
    if inf.is_multiple_of(t.block_size()) {
        return t;
    }
    let fallback = match t {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F32,
    };
    if inf.is_multiple_of(fallback.block_size()) {
        fallback
    } else {
        GgmlDType::F32
    }
}

/// Whether `name` is one of the decoder's projection weights.
pub fn is_projection(name: &str) -> bool {
    const SUFFIXES: [&str; 7] = [
        ".self_attn.q_proj.weight",
        ".self_attn.k_proj.weight",
        ".self_attn.v_proj.weight",
        ".self_attn.o_proj.weight",
        ".mlp.gate_proj.weight",
        ".mlp.up_proj.weight",
        ".mlp.down_proj.weight",
    ];
    name.starts_with("model.layers.") && SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The head's weight, the one `--quant-head` quantizes.
pub const HEAD: &str = "lm_head.weight";

/// A weight source whose projection weights (`quant`) and head (`head`) come out quantized.
pub struct QuantizingStore {
    pub inner: Box<dyn WeightSource + Send + Sync>,
    pub quant: Option<LoadQuant>,
    pub head: Option<LoadQuant>,
}

impl WeightSource for QuantizingStore {
    fn get(&self, name: &str) -> Result<Weight> {
        let w = self.inner.get(name)?;
        let (quant, flag) = match (&self.quant, &self.head) {
            (Some(q), _) if is_projection(name) => (q, "--quant"),
            (_, Some(q)) if name == HEAD => (q, "--quant-head"),
            _ => return Ok(w),
        };
        match w {
            Weight::Dense(t) => quant.quantize(name, &t),
            // Quantizing codes again would stack two rounding errors silently.
            Weight::Quant(q) => Err(Error::tensor(
                name,
                format!(
                    "is already quantized ({}); {flag} {} needs a float weight (convert the checkpoint to HF first, or drop {flag})",
                    dtype_name(q.dtype()),
                    quant.name()
                ),
            )),
            Weight::Custom(c) => Err(Error::tensor(
                name,
                format!("is already quantized ({c:?}); {flag} {} needs a float weight", quant.name()),
            )),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn summaries(&self) -> Vec<TensorSummary> {
        self.inner.summaries()
    }
    fn files(&self) -> Vec<PathBuf> {
        self.inner.files()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn parses_every_documented_name_and_rejects_others() {
        for s in [
            "int8", "nf4", "fp4", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q4_k_m", "q5_k", "q6_k",
        ] {
            assert!(LoadQuant::parse(s).is_ok(), "{s}");
        }
        let e = LoadQuant::parse("q3_xs").unwrap_err().to_string();
        assert!(e.contains("--quant") && e.contains("q3_xs"), "{e}");
        assert_eq!(LoadQuant::parse("Q4_K_M").unwrap().name(), "q4_k");
    }

    #[test]
    fn k_quant_rows_that_do_not_fit_fall_back_like_llama_cpp() {
        assert_eq!(gguf_type_for_row(GgmlDType::Q4K, 1536), GgmlDType::Q4K);
        assert_eq!(gguf_type_for_row(GgmlDType::Q4K, 576), GgmlDType::Q5_0);
        assert_eq!(gguf_type_for_row(GgmlDType::Q6K, 576), GgmlDType::Q8_0);
        assert_eq!(gguf_type_for_row(GgmlDType::Q8_0, 40), GgmlDType::F32);
    }

    #[test]
    fn only_decoder_projections_are_quantized() {
        assert!(is_projection("model.layers.3.mlp.down_proj.weight"));
        assert!(is_projection("model.layers.0.self_attn.k_proj.weight"));
        assert!(!is_projection("model.layers.0.input_layernorm.weight"));
        assert!(!is_projection("lm_head.weight"));
        assert!(!is_projection("model.embed_tokens.weight"));
        assert!(!is_projection("model.layers.0.self_attn.k_proj.bias"));
    }

    /// Dense random weights under the names asked for.
    struct Dense;
    impl WeightSource for Dense {
        fn get(&self, name: &str) -> Result<Weight> {
            Ok(Weight::Dense(
                Tensor::randn(0f32, 0.05, (64, 256), &Device::Cpu).map_err(|e| Error::tensor(name, e.to_string()))?,
            ))
        }
        fn contains(&self, _: &str) -> bool {
            true
        }
        fn summaries(&self) -> Vec<TensorSummary> {
            Vec::new()
        }
        fn files(&self) -> Vec<PathBuf> {
            Vec::new()
        }
    }

    fn store(quant: Option<&str>, head: Option<&str>) -> QuantizingStore {
        QuantizingStore {
            inner: Box::new(Dense),
            quant: quant.map(|q| LoadQuant::parse(q).unwrap()),
            head: head.map(|q| LoadQuant::parse(q).unwrap()),
        }
    }

    fn ggml_type(w: Weight) -> Option<GgmlDType> {
        match w {
            Weight::Quant(q) => Some(q.dtype()),
            _ => None,
        }
    }

    #[test]
    fn the_head_is_quantized_only_when_asked_and_on_its_own() {
        let proj = "model.layers.0.mlp.up_proj.weight";
        let head_only = store(None, Some("q8_0"));
        assert_eq!(ggml_type(head_only.get(HEAD).unwrap()), Some(GgmlDType::Q8_0));
        assert_eq!(ggml_type(head_only.get(proj).unwrap()), None);
        assert_eq!(ggml_type(head_only.get("model.embed_tokens.weight").unwrap()), None);
        let both = store(Some("q4_0"), Some("q6_k"));
        assert_eq!(ggml_type(both.get(HEAD).unwrap()), Some(GgmlDType::Q6K));
        assert_eq!(ggml_type(both.get(proj).unwrap()), Some(GgmlDType::Q4_0));
        assert_eq!(ggml_type(store(Some("q4_0"), None).get(HEAD).unwrap()), None);
        let e = LoadQuant::parse_flag("q9", "--quant-head").unwrap_err().to_string();
        assert!(e.contains("--quant-head") && e.contains("q9"), "{e}");
    }

    #[test]
    fn each_kind_quantizes_a_matrix_close_to_the_original() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (64, 256), &dev).unwrap();
        let dense = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (q, tol) in [
            ("int8", 0.01),
            ("nf4", 0.1),
            ("fp4", 0.15),
            ("q8_0", 0.01),
            ("q4_k", 0.1),
        ] {
            let lq = LoadQuant::parse(q).unwrap();
            let back = lq.quantize("w", &w).unwrap().to_dense(DType::F32).unwrap();
            let back = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let num: f32 = dense.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum();
            let den: f32 = dense.iter().map(|a| a * a).sum();
            let rel = (num / den).sqrt();
            assert!(rel < tol && rel > 0.0, "{q}: relative error {rel}");
        }
    }
}
