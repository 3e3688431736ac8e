//! The merge configuration: mergekit's YAML schema (`mergekit-yaml` configs run unchanged).
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// Raw parameter values as written in YAML; [`crate::merge::params`] gives them meaning.
pub type RawParams = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeConfig {
    pub merge_method: String,
    #[serde(default)]
    pub models: Option<Vec<InputModelDef>>,
    #[serde(default)]
    pub slices: Option<Vec<SliceDef>>,
    #[serde(default)]
    pub base_model: Option<String>,
    #[serde(default)]
    pub parameters: Option<RawParams>,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub out_dtype: Option<String>,
    #[serde(default)]
    pub tokenizer_source: Option<String>,
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Accepted for compatibility (mergekit uses it to name MoE/multi-output merges); unused.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputModelDef {
    pub model: String,
    #[serde(default)]
    pub parameters: Option<RawParams>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceDef {
    pub sources: Vec<SourceDef>,
    #[serde(default)]
    pub parameters: Option<RawParams>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    pub model: String,
    #[serde(default)]
    pub layer_range: Option<[i64; 2]>,
    #[serde(default)]
    pub parameters: Option<RawParams>,
}

impl MergeConfig {
    pub fn from_yaml(text: &str, path: &Path) -> Result<MergeConfig> {
        let cfg: MergeConfig = serde_saphyr::from_str(text).map_err(|e| Error::format(path, e.to_string()))?;
        if cfg.models.is_none() && cfg.slices.is_none() {
            return Err(Error::config("models", "the config needs either `models` or `slices`"));
        }
        if cfg.models.is_some() && cfg.slices.is_some() {
            return Err(Error::config("slices", "give either `models` or `slices`, not both"));
        }
        if cfg.models.as_ref().is_some_and(|m| m.is_empty()) {
            return Err(Error::config("models", "the list is empty"));
        }
        if let Some(slices) = &cfg.slices {
            if slices.is_empty() {
                return Err(Error::config("slices", "the list is empty"));
            }
            for (i, s) in slices.iter().enumerate() {
                if s.sources.is_empty() {
                    return Err(Error::config(format!("slices[{i}].sources"), "the list is empty"));
                }
            }
        }
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<(MergeConfig, String)> {
        let text = crate::fsutil::read_to_string(path)?;
        Ok((Self::from_yaml(&text, path)?, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_slices_and_filters() {
        let y = "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 4]\n      - model: b\n        layer_range: [0, 4]\nmerge_method: slerp\nbase_model: a\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 1]\n    - value: 0.5\ndtype: bfloat16\n";
        let c = MergeConfig::from_yaml(y, Path::new("c.yml")).unwrap();
        assert_eq!(c.slices.as_ref().unwrap()[0].sources[1].layer_range, Some([0, 4]));
        assert!(c.parameters.unwrap().contains_key("t"));
    }

    #[test]
    fn rejects_unknown_keys_and_empty() {
        let e = MergeConfig::from_yaml("merge_method: linear\nmodelz: []\n", Path::new("c.yml")).unwrap_err();
        assert!(e.to_string().contains("modelz"), "{e}");
        assert!(MergeConfig::from_yaml("merge_method: linear\n", Path::new("c.yml")).is_err());
        assert!(MergeConfig::from_yaml("merge_method: linear\nmodels: []\n", Path::new("c.yml")).is_err());
    }
}
