//! Streaming safetensors writer: the header is computed from shapes up front, then each
//! tensor's bytes are produced one at a time, so a 7B conversion never holds the model in memory.
use crate::error::{Error, Result};
use crate::fsutil;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

pub struct PlannedTensor {
    pub name: String,
    /// safetensors dtype name: "F32", "F16", "BF16", "I64", ...
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub n_bytes: usize,
}

pub fn dtype_size(dtype: &str) -> usize {
    match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    }
}

impl PlannedTensor {
    pub fn new(name: impl Into<String>, dtype: &'static str, shape: Vec<usize>) -> Self {
        let n_bytes = shape.iter().product::<usize>() * dtype_size(dtype);
        PlannedTensor {
            name: name.into(),
            dtype,
            shape,
            n_bytes,
        }
    }
}

/// Write `tensors` to `path` atomically; `fill(i, out)` must write exactly tensor i's bytes.
pub fn write<F>(path: &Path, tensors: &[PlannedTensor], metadata: &BTreeMap<String, String>, mut fill: F) -> Result<()>
where
    F: FnMut(usize, &mut dyn Write) -> Result<()>,
{
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).map_err(|e| Error::msg(e.to_string()))?,
        );
    }
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.n_bytes]}),
        );
        offset += t.n_bytes;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| Error::msg(e.to_string()))?;
    // Pad the header with spaces to 8 bytes so tensor data stays aligned.
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    fsutil::write_atomic(path, |w| {
        w.write_all(&(h.len() as u64).to_le_bytes())
            .map_err(|e| Error::io(path, e))?;
        w.write_all(&h).map_err(|e| Error::io(path, e))?;
        for (i, t) in tensors.iter().enumerate() {
            let mut counter = CountingWriter { inner: &mut *w, n: 0 };
            fill(i, &mut counter)?;
            if counter.n != t.n_bytes {
                return Err(Error::tensor(
                    &t.name,
                    format!("wrote {} bytes, expected {}", counter.n, t.n_bytes),
                ));
            }
        }
        Ok(())
    })
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: usize,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write a whole in-memory map of candle tensors (small files, tests, score outputs).
pub fn write_tensors(path: &Path, tensors: &[(String, candle_core::Tensor)]) -> Result<()> {
    use candle_core::DType;
    let mut planned = Vec::new();
    for (name, t) in tensors {
        let dt = match t.dtype() {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::U32 => "U32",
            DType::U8 => "U8",
            DType::F64 => "F64",
            d => return Err(Error::tensor(name, format!("cannot write dtype {d:?}"))),
        };
        planned.push(PlannedTensor::new(name.clone(), dt, t.dims().to_vec()));
    }
    write(
        path,
        &planned,
        &BTreeMap::from([("format".to_string(), "pt".to_string())]),
        |i, w| {
            let bytes = tensor_bytes(&tensors[i].1)?;
            w.write_all(&bytes).map_err(|e| Error::io(path, e))
        },
    )
}

/// Little-endian raw bytes of a CPU tensor.
pub fn tensor_bytes(t: &candle_core::Tensor) -> Result<Vec<u8>> {
    use candle_core::DType;
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::I64 => t.to_vec1::<i64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::U32 => t.to_vec1::<u32>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::U8 => t.to_vec1::<u8>()?,
        DType::F64 => t.to_vec1::<f64>()?.iter().flat_map(|x| x.to_le_bytes()).collect(),
        d => return Err(Error::msg(format!("cannot serialize dtype {d:?}"))),
    })
}
