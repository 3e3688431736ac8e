//! Sharded safetensors output. The whole layout (shard boundaries, headers, offsets) is fixed
//! before any tensor is merged, so worker threads write each finished tensor straight to its
//! place in its shard and nothing is buffered beyond the tensor in hand.
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the writer needs to know about one output tensor.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    /// safetensors dtype name (`BF16`, `F16`, `F32`).
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub nbytes: u64,
}

struct Shard {
    file_name: String,
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: Mutex<File>,
}

/// Where each tensor goes: shard index and absolute byte offset in that file.
struct Slot {
    shard: usize,
    offset: u64,
    nbytes: u64,
}

pub struct ShardWriter {
    shards: Vec<Shard>,
    slots: Vec<Slot>,
    names: Vec<String>,
    written: Mutex<Vec<bool>>,
    total: u64,
}

/// Group tensors, in order, into shards of at most `max_bytes` of data (a larger tensor gets a
/// shard of its own). Returns the tensor indices of each shard.
pub fn assign_shards(tensors: &[TensorSpec], max_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        match shards.last_mut() {
            Some(cur) if size + t.nbytes <= max_bytes || cur.is_empty() => {
                cur.push(i);
                size += t.nbytes;
            }
            _ => {
                shards.push(vec![i]);
                size = t.nbytes;
            }
        }
    }
    if shards.is_empty() {
        shards.push(Vec::new());
    }
    shards
}

/// HF's shard file names: `model.safetensors`, or `model-00001-of-00003.safetensors`.
pub fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

impl ShardWriter {
    /// Create the shard files (under temporary names) in `dir` with their headers written and
    /// their data regions allocated.
    pub fn create(dir: &Path, tensors: &[TensorSpec], max_bytes: u64) -> Result<ShardWriter> {
        let groups = assign_shards(tensors, max_bytes.max(1));
        let n = groups.len();
        let mut shards = Vec::with_capacity(n);
        let mut slots: Vec<Option<Slot>> = (0..tensors.len()).map(|_| None).collect();
        for (si, group) in groups.iter().enumerate() {
            let mut header = serde_json::Map::new();
            let mut meta = serde_json::Map::new();
            meta.insert("format".into(), "pt".into());
            header.insert("__metadata__".into(), serde_json::Value::Object(meta));
            let mut off = 0u64;
            for &ti in group {
                let t = &tensors[ti];
                header.insert(
                    t.name.clone(),
                    serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [off, off + t.nbytes]}),
                );
                off += t.nbytes;
            }
            let mut hbytes = serde_json::to_vec(&serde_json::Value::Object(header))
                .map_err(|e| Error::msg(format!("serializing safetensors header: {e}")))?;
            // Pad the header so the data section starts 8-byte aligned, as the reference writer does.
            while !hbytes.len().is_multiple_of(8) {
                hbytes.push(b' ');
            }
            let data_start = 8 + hbytes.len() as u64;
            let file_name = shard_name(si, n);
            let final_path = dir.join(&file_name);
            let tmp_path = crate::fsutil::temp_path(&final_path);
            let mut file = File::create(&tmp_path).map_err(|e| Error::io(&tmp_path, e))?;
            file.write_all(&(hbytes.len() as u64).to_le_bytes())
                .and_then(|_| file.write_all(&hbytes))
                .and_then(|_| file.set_len(data_start + off))
                .map_err(|e| Error::io(&tmp_path, e))?;
            let mut o = data_start;
            for &ti in group {
                slots[ti] = Some(Slot {
                    shard: si,
                    offset: o,
                    nbytes: tensors[ti].nbytes,
                });
                o += tensors[ti].nbytes;
            }
            shards.push(Shard {
                file_name,
                final_path,
                tmp_path,
                file: Mutex::new(file),
            });
        }
        let slots = slots
            .into_iter()
            .map(|s| s.ok_or_else(|| Error::msg("internal: tensor without a shard")))
            .collect::<Result<Vec<_>>>()?;
        Ok(ShardWriter {
            shards,
            slots,
            names: tensors.iter().map(|t| t.name.clone()).collect(),
            written: Mutex::new(vec![false; tensors.len()]),
            total: tensors.iter().map(|t| t.nbytes).sum(),
        })
    }

    /// Write tensor `index`'s bytes (safe to call from many threads).
    pub fn write(&self, index: usize, bytes: &[u8]) -> Result<()> {
        let slot = self
            .slots
            .get(index)
            .ok_or_else(|| Error::msg(format!("internal: no output tensor #{index}")))?;
        let name = &self.names[index];
        if bytes.len() as u64 != slot.nbytes {
            return Err(Error::tensor(
                name,
                format!("produced {} bytes, expected {}", bytes.len(), slot.nbytes),
            ));
        }
        let shard = &self.shards[slot.shard];
        {
            let mut f = shard
                .file
                .lock()
                .map_err(|_| Error::msg("output writer lock poisoned"))?;
            f.seek(SeekFrom::Start(slot.offset))
                .and_then(|_| f.write_all(bytes))
                .map_err(|e| Error::io(&shard.tmp_path, e))?;
        }
        let mut w = self
            .written
            .lock()
            .map_err(|_| Error::msg("output writer lock poisoned"))?;
        w[index] = true;
        Ok(())
    }

    /// Check every tensor was written, flush, rename shards into place and write the index when
    /// there is more than one shard. Returns the file names written.
    pub fn finish(self, dir: &Path) -> Result<Vec<String>> {
        let missing = {
            let written = self
                .written
                .lock()
                .map_err(|_| Error::msg("output writer lock poisoned"))?;
            written.iter().position(|w| !w)
        };
        if let Some(i) = missing {
            return Err(Error::tensor(&self.names[i], "was never written"));
        }
        let mut files = Vec::new();
        for s in &self.shards {
            let f = s.file.lock().map_err(|_| Error::msg("output writer lock poisoned"))?;
            f.sync_all().map_err(|e| Error::io(&s.tmp_path, e))?;
        }
        for s in &self.shards {
            std::fs::rename(&s.tmp_path, &s.final_path).map_err(|e| Error::io(&s.final_path, e))?;
            files.push(s.file_name.clone());
        }
        if self.shards.len() > 1 {
            let mut map = serde_json::Map::new();
            for (name, slot) in self.names.iter().zip(&self.slots) {
                map.insert(name.clone(), self.shards[slot.shard].file_name.clone().into());
            }
            let index = serde_json::json!({"metadata": {"total_size": self.total}, "weight_map": map});
            let path = dir.join("model.safetensors.index.json");
            let text = serde_json::to_string_pretty(&index).map_err(|e| Error::msg(e.to_string()))?;
            crate::fsutil::write_bytes_atomic(&path, text.as_bytes())?;
            files.push("model.safetensors.index.json".into());
        }
        Ok(files)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // After a successful finish the temp files have been renamed and this is a no-op.
        for s in &self.shards {
            let _ = std::fs::remove_file(&s.tmp_path);
        }
    }
}

/// Parse a size such as `5GB`, `500MB`, `2GiB`, `1e9` or `123456` into bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| Error::invalid("--shard-size", format!("'{s}' is not a size like 5GB or 500MB")))?;
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(Error::invalid(
                "--shard-size",
                format!("unknown unit '{other}' in '{s}'"),
            ))
        }
    };
    let bytes = v * mult;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(Error::invalid(
            "--shard-size",
            format!("'{s}' must be at least one byte"),
        ));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, n: usize) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: "F32",
            shape: vec![n],
            nbytes: 4 * n as u64,
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("5GB").unwrap(), 5_000_000_000);
        assert_eq!(parse_size("2MiB").unwrap(), 2 * 1024 * 1024);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("five").is_err() && parse_size("0").is_err() && parse_size("3XB").is_err());
    }

    #[test]
    fn shards_respect_the_limit() {
        let ts = vec![spec("a", 10), spec("b", 10), spec("c", 30), spec("d", 1)];
        assert_eq!(assign_shards(&ts, 80), vec![vec![0, 1], vec![2], vec![3]]);
        assert_eq!(assign_shards(&ts, 1000), vec![vec![0, 1, 2, 3]]);
        assert_eq!(shard_name(1, 3), "model-00002-of-00003.safetensors");
    }

    #[test]
    fn writes_readable_shards_and_index() {
        let dir = tempfile::tempdir().unwrap();
        let ts = vec![spec("a", 2), spec("b", 3)];
        let w = ShardWriter::create(dir.path(), &ts, 8).unwrap();
        // Out of order, as parallel workers would.
        w.write(
            1,
            &[1.0f32, 2.0, 3.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        w.write(
            0,
            &[5.0f32, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
        )
        .unwrap();
        let files = w.finish(dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        let bytes = std::fs::read(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().shape(), &[3]);
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("model.safetensors.index.json")).unwrap()).unwrap();
        assert_eq!(idx["weight_map"]["a"], "model-00001-of-00002.safetensors");
        assert_eq!(idx["metadata"]["total_size"], 20);
    }

    #[test]
    fn unfinished_writer_leaves_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = ShardWriter::create(dir.path(), &[spec("a", 2)], 100).unwrap();
        assert!(w.finish(dir.path()).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
