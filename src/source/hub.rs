//! Hugging Face Hub ids (`BioMistral/BioMistral-7B`) resolved through `hf-hub`'s standard cache
//! (`$HF_HOME/hub/models--org--name/snapshots/<rev>/`). `HF_HUB_OFFLINE=1` uses the cache only.
use crate::error::{Error, Result};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// Files a model folder needs, besides the weights.
const AUX: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

pub fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        && !Path::new(spec).exists()
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Resolve a hub id (optionally `id@revision`) to a local snapshot folder, downloading what is
/// missing unless offline.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let (id, rev) = spec.split_once('@').map(|(a, b)| (a, Some(b))).unwrap_or((spec, None));
    let repo = match rev {
        Some(r) => Repo::with_revision(id.to_string(), RepoType::Model, r.to_string()),
        None => Repo::new(id.to_string(), RepoType::Model),
    };
    let cache = Cache::from_env();
    let cached = cache.repo(repo.clone());
    if let Some(cfg) = cached.get("config.json") {
        let dir = cfg.parent().map(Path::to_path_buf).unwrap_or_default();
        let has_weights = dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists();
        if has_weights || offline() {
            return Ok(dir);
        }
    }
    if offline() {
        return Err(Error::msg(format!(
            "model '{id}' is not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
            cache.path().display()
        )));
    }
    download(id, repo)
}

fn download(id: &str, repo: Repo) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| Error::msg(format!("hub client: {e}")))?;
    let r = api.repo(repo);
    let hub_err = |f: &str, e: hf_hub::api::sync::ApiError| Error::msg(format!("downloading {f} of '{id}': {e}"));
    let cfg = r.get("config.json").map_err(|e| hub_err("config.json", e))?;
    for f in AUX.iter().skip(1) {
        let _ = r.get(f); // optional files
    }
    match r.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = crate::fsutil::read_to_string(&index)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("invalid JSON: {e}")))?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .map(|m| m.values().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                r.get(&s).map_err(|e| hub_err(&s, e))?;
            }
        }
        Err(_) => {
            r.get("model.safetensors")
                .map_err(|e| hub_err("model.safetensors", e))?;
        }
    }
    Ok(cfg.parent().map(Path::to_path_buf).unwrap_or_default())
}
