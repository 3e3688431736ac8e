//! Memory-mapped safetensors checkpoints: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`.
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::linear::Weight;
use crate::model::mistral::{TensorSummary, WeightSource};
use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub struct SafetensorsStore {
    files: Vec<(PathBuf, memmap2::Mmap)>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
}

pub fn st_dtype(d: safetensors::Dtype) -> Option<DType> {
    Some(match d {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        safetensors::Dtype::I64 => DType::I64,
        safetensors::Dtype::U32 => DType::U32,
        safetensors::Dtype::U8 => DType::U8,
        _ => return None,
    })
}

impl SafetensorsStore {
    /// Open the checkpoint in folder `dir` (single file or sharded with an index).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index_path.exists() {
            let text = fsutil::read_to_string(&index_path)?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index_path, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(&index_path, "missing 'weight_map' object"))?;
            let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(String::from)).collect();
            shards.sort();
            shards.dedup();
            let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            let store = Self::open_files(&paths)?;
            for (name, shard) in map {
                if !store.index.contains_key(name) {
                    return Err(Error::format(
                        &index_path,
                        format!(
                            "tensor '{name}' is listed in {} but not found there",
                            shard.as_str().unwrap_or("?")
                        ),
                    ));
                }
            }
            Ok(store)
        } else if single.exists() {
            Self::open_files(&[single])
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::format(
                    dir,
                    "no model.safetensors, model.safetensors.index.json or *.safetensors here",
                ));
            }
            Self::open_files(&found)
        }
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (i, p) in paths.iter().enumerate() {
            let mmap = fsutil::mmap(p)?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| Error::format(p, format!("corrupt safetensors file: {e}")))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push((p.clone(), mmap));
        }
        Ok(SafetensorsStore { files, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// (dtype name, shape) of a tensor, without loading it.
    pub fn info(&self, name: &str) -> Result<(String, Vec<usize>)> {
        let view = self.view(name)?;
        Ok((format!("{:?}", view.dtype()), view.shape().to_vec()))
    }

    /// The parsed shard holding `name` (formats that combine several tensors per layer).
    pub fn shard_of(&self, name: &str) -> Result<SafeTensors<'_>> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| Error::tensor(name, "missing from the checkpoint"))?;
        let (path, mmap) = &self.files[i];
        SafeTensors::deserialize(mmap).map_err(|e| Error::format(path, e.to_string()))
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| Error::tensor(name, "missing from the checkpoint"))?;
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| Error::format(path, e.to_string()))?;
        st.tensor(name)
            .map_err(|e| Error::tensor(name, format!("{}: {e}", path.display())))
    }

    /// Load a tensor onto the CPU in its stored dtype.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let view = self.view(name)?;
        let dtype = st_dtype(view.dtype())
            .ok_or_else(|| Error::tensor(name, format!("unsupported dtype {:?}", view.dtype())))?;
        let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)?;
        // The tensor owns a copy now.
        self.release(view.data());
        Ok(t)
    }

    /// Drop the mapped pages of `bytes` (a tensor's data, from any of this store's files) from
    /// the resident set once it has been copied out (see [`crate::fsutil::release_pages`]).
    pub fn release(&self, bytes: &[u8]) {
        for (_, map) in &self.files {
            crate::fsutil::release_pages(map, bytes);
        }
    }

    /// Every tensor as a map (small checkpoints and tests).
    pub fn load_all(&self) -> Result<HashMap<String, Tensor>> {
        self.index.keys().map(|n| Ok((n.clone(), self.tensor(n)?))).collect()
    }
}

impl WeightSource for SafetensorsStore {
    fn get(&self, name: &str) -> Result<Weight> {
        let t = self.tensor(name)?;
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => Ok(Weight::Dense(t)),
            d => Err(Error::tensor(
                name,
                format!("dtype {d:?} is not a floating-point weight"),
            )),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    fn summaries(&self) -> Vec<TensorSummary> {
        self.index
            .keys()
            .filter_map(|n| {
                let v = self.view(n).ok()?;
                Some(TensorSummary {
                    name: n.clone(),
                    dtype: format!("{:?}", v.dtype()),
                    shape: v.shape().to_vec(),
                    bytes: v.data().len() as u64,
                })
            })
            .collect()
    }
    fn files(&self) -> Vec<PathBuf> {
        self.files.iter().map(|(p, _)| p.clone()).collect()
    }
}
