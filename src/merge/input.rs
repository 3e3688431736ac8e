//! Input models: local Hugging Face folders with (sharded) safetensors, memory-mapped so a merge
//! streams tensor by tensor instead of loading whole checkpoints.
use super::tensor::Dtype;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a model spec lives on disk: an existing local folder is used as is.
///
/// This is the seam for Hugging Face Hub ids: resolving `org/name` through the Hub cache belongs
/// here (anything that is not a local folder currently fails with a clear error).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.is_dir() {
        return Ok(p);
    }
    if crate::source::hub::looks_like_hub_id(spec.split('@').next().unwrap_or(spec)) {
        return crate::source::hub::resolve(spec)
            .map_err(|e| Error::config("model", format!("model '{spec}' not found locally; hub: {e}")));
    }
    Err(Error::config(
        "model",
        format!("model '{spec}' not found: no such local folder or hub id"),
    ))
}

/// Like [`resolve_model`], but a relative path that does not exist from the working directory is
/// also tried relative to the config file's folder, so configs can sit next to their models.
pub fn locate_model(spec: &str, config_dir: Option<&Path>) -> Result<PathBuf> {
    let p = Path::new(spec);
    if !p.is_dir() && p.is_relative() {
        if let Some(q) = config_dir.map(|d| d.join(p)).filter(|q| q.is_dir()) {
            return Ok(q);
        }
    }
    resolve_model(spec)
}

/// Location of one tensor inside a memory-mapped shard.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub shard: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the shard file.
    pub start: usize,
    pub end: usize,
}

pub struct InputModel {
    /// The spec as written in the config (used in messages and the model card).
    pub spec: String,
    pub path: PathBuf,
    pub config: serde_json::Value,
    pub tensors: BTreeMap<String, TensorEntry>,
    shards: Vec<(PathBuf, memmap2::Mmap)>,
}

impl InputModel {
    pub fn open(spec: &str, config_dir: Option<&Path>) -> Result<InputModel> {
        let path = locate_model(spec, config_dir)?;
        let cfg_path = path.join("config.json");
        let config: serde_json::Value = serde_json::from_str(&crate::fsutil::read_to_string(&cfg_path)?)
            .map_err(|e| Error::format(&cfg_path, e.to_string()))?;
        let files = shard_files(&path)?;
        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        for file in files {
            let map = crate::fsutil::mmap(&file)?;
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&map).map_err(|e| Error::format(&file, e.to_string()))?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let dtype = Dtype::from_safetensors(info.dtype).ok_or_else(|| {
                    Error::tensor(
                        &name,
                        format!("{}: dtype {:?} is not bf16/f16/f32", file.display(), info.dtype),
                    )
                })?;
                let (s, e) = info.data_offsets;
                if data_start + e > map.len() {
                    return Err(Error::format(
                        &file,
                        format!("tensor '{name}' extends past the end of the file"),
                    ));
                }
                let entry = TensorEntry {
                    shard: shards.len(),
                    dtype,
                    shape: info.shape.clone(),
                    start: data_start + s,
                    end: data_start + e,
                };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(Error::tensor(
                        name,
                        format!("{}: appears in more than one shard", path.display()),
                    ));
                }
            }
            shards.push((file, map));
        }
        Ok(InputModel {
            spec: spec.to_string(),
            path,
            config,
            tensors,
            shards,
        })
    }

    pub fn num_layers(&self) -> Result<usize> {
        self.config
            .get("num_hidden_layers")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| {
                Error::config(
                    "num_hidden_layers",
                    format!("{}: missing from config.json", self.path.display()),
                )
            })
    }

    /// Read a tensor as f32 values (exact conversion from its stored dtype).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::tensor(name, format!("missing from model '{}'", self.spec)))?;
        let (_, map) = &self.shards[t.shard];
        let values = t.dtype.decode(name, &map[t.start..t.end])?;
        // Keep RSS near the working tensors rather than the size of every input checkpoint.
        crate::fsutil::release_pages(map, &map[t.start..t.end]);
        Ok(values)
    }
}

/// The safetensors files of a model folder: those named by the index, else `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v: serde_json::Value = serde_json::from_str(&crate::fsutil::read_to_string(&index)?)
            .map_err(|e| Error::format(&index, e.to_string()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "no weight_map object"))?;
        let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        files.sort();
        files.dedup();
        if files
            .iter()
            .any(|f| f.contains('/') || f.contains('\\') || f.contains(".."))
        {
            return Err(Error::format(
                &index,
                "weight_map names a file outside the model folder",
            ));
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::format(
        dir,
        "no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_local_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("m")).unwrap();
        assert_eq!(
            resolve_model(dir.path().join("m").to_str().unwrap()).unwrap(),
            dir.path().join("m")
        );
        assert_eq!(locate_model("m", Some(dir.path())).unwrap(), dir.path().join("m"));
        // (A hub-id-shaped spec would query the hub; a path that is not one stays local.)
        let e = resolve_model("./models/BioMistral-7B-surely-not-local")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("BioMistral-7B-surely-not-local") && e.contains("not found"),
            "{e}"
        );
        let e = InputModel::open(dir.path().join("m").to_str().unwrap(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
