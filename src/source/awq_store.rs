//! AutoAWQ checkpoints as published (`quantization_config.quant_method = "awq"`): each linear's
//! `qweight`/`qzeros`/`scales` become one packed int4 layer, kept at 4 bits per weight in memory.
use super::safetensors_store::SafetensorsStore;
use crate::error::{Error, Result};
use crate::model::linear::Weight;
use crate::model::mistral::{TensorSummary, WeightSource};
use crate::quantize::awq::{load_awq_linear, AwqConfig};
use std::path::PathBuf;
use std::sync::Arc;

pub struct AwqStore {
    pub inner: SafetensorsStore,
    pub cfg: AwqConfig,
}

impl AwqStore {
    /// `config` is the whole config.json; errors name the field at fault.
    pub fn new(inner: SafetensorsStore, config: &serde_json::Value) -> Result<Self> {
        let q = config
            .get("quantization_config")
            .ok_or_else(|| Error::config("quantization_config", "missing"))?;
        let cfg = AwqConfig::from_json(q)?;
        let store = AwqStore { inner, cfg };
        if !store.inner.names().any(|n| n.ends_with(".qweight")) {
            return Err(Error::config(
                "quantization_config",
                "says awq, but the checkpoint has no '*.qweight' tensors",
            ));
        }
        Ok(store)
    }
}

/// Whether config.json declares an AWQ checkpoint.
pub fn is_awq(config: &serde_json::Value) -> bool {
    config
        .get("quantization_config")
        .and_then(|q| q.get("quant_method"))
        .and_then(|m| m.as_str())
        .is_some_and(|m| m.eq_ignore_ascii_case("awq"))
}

impl WeightSource for AwqStore {
    fn get(&self, name: &str) -> Result<Weight> {
        if let Some(prefix) = name.strip_suffix(".weight") {
            let qw = format!("{prefix}.qweight");
            if self.inner.contains(&qw) {
                let st = self.inner.shard_of(&qw)?;
                let lin = load_awq_linear(&st, prefix, &self.cfg)?;
                for part in ["qweight", "qzeros", "scales", "bias"] {
                    if let Ok(v) = st.tensor(&format!("{prefix}.{part}")) {
                        self.inner.release(v.data());
                    }
                }
                return Ok(Weight::Custom(Arc::new(lin)));
            }
        }
        self.inner.get(name)
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
            || name
                .strip_suffix(".weight")
                .is_some_and(|p| self.inner.contains(&format!("{p}.qweight")))
    }
    fn summaries(&self) -> Vec<TensorSummary> {
        self.inner.summaries()
    }
    fn files(&self) -> Vec<PathBuf> {
        WeightSource::files(&self.inner)
    }
}
