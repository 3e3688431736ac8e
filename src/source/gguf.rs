//! GGUF (llama.cpp's model file) reader and writer.
//!
//! We parse the container ourselves rather than through candle's `gguf_file` so that every
//! malformed file (bad magic, lengths or offsets past the end, unknown types, shapes that do not
//! match the block size) becomes an error naming the file and tensor instead of a panic or an
//! out-of-bounds read. Block formats themselves are candle's `GgmlDType`.
use crate::error::{Error, Result};
use crate::fsutil;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::Device;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::U16(v) => v as u64,
            Value::U32(v) => v as u64,
            Value::U64(v) => v,
            Value::I8(v) if v >= 0 => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::I64(v) if v >= 0 => v as u64,
            _ => return None,
        })
    }
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Value::F32(v) => v as f64,
            Value::F64(v) => v,
            _ => return self.as_u64().map(|v| v as f64),
        })
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Describes one tensor: `dims` in GGML order (dims[0] is the fastest-varying, i.e. the row length).
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlDType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    pub fn n_bytes(&self) -> u64 {
        self.n_elements() / self.dtype.block_size() as u64 * self.dtype.type_size() as u64
    }
    /// Shape in row-major (PyTorch / candle) order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

pub fn dtype_from_u32(u: u32) -> Option<GgmlDType> {
    Some(match u {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

pub fn dtype_to_u32(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// llama.cpp's name for a block type.
pub fn dtype_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// An opened, memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
    mmap: memmap2::Mmap,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> Error {
        Error::format(
            self.path,
            format!(
                "truncated or corrupt GGUF: {what} at byte {} runs past the end of the file ({} bytes)",
                self.pos,
                self.buf.len()
            ),
        )
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.buf.len().saturating_sub(self.pos) {
            return Err(self.err(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap_or_default()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.buf.len() as u64 {
            return Err(Error::format(
                self.path,
                format!("{what}: string length {n} is larger than the file"),
            ));
        }
        let b = self.take(n as usize, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::format(self.path, format!("{what}: string is not valid UTF-8")))
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.take(1, what)?[0]),
            1 => Value::I8(self.take(1, what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap_or_default())),
            3 => Value::I16(i16::from_le_bytes(self.take(2, what)?.try_into().unwrap_or_default())),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => Value::Bool(self.take(1, what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 4 {
                    return Err(Error::format(self.path, format!("{what}: arrays nested too deeply")));
                }
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                // Every element takes at least one byte: a larger count is a corrupt header.
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(Error::format(
                        self.path,
                        format!("{what}: array length {n} is larger than the file"),
                    ));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => {
                return Err(Error::format(
                    self.path,
                    format!("{what}: unknown metadata value type {t}"),
                ))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mmap = fsutil::mmap(path)?;
        let (version, metadata, tensors, data_offset) = Self::parse(path, &mmap)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_offset,
            mmap,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse(path: &Path, buf: &[u8]) -> Result<(u32, Vec<(String, Value)>, Vec<TensorInfo>, u64)> {
        let mut c = Cursor { buf, pos: 0, path };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(Error::format(path, "not a GGUF file (bad magic; expected 'GGUF')"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(
                path,
                format!("unsupported GGUF version {version} (2 and 3 are supported)"),
            ));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_tensors > buf.len() as u64 || n_kv > buf.len() as u64 {
            return Err(Error::format(
                path,
                format!(
                    "corrupt header: {n_tensors} tensors / {n_kv} metadata entries cannot fit in {} bytes",
                    buf.len()
                ),
            ));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&format!("metadata '{key}' type"))?;
            let v = c.value(ty, &format!("metadata '{key}'"), 0)?;
            metadata.push((key, v));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor #{i} name"))?;
            let n_dims = c.u32(&format!("tensor '{name}' rank"))?;
            if n_dims == 0 || n_dims > 4 {
                return Err(Error::format(
                    path,
                    format!("tensor '{name}': rank {n_dims} is not between 1 and 4"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&format!("tensor '{name}' dims"))?);
            }
            let ty = c.u32(&format!("tensor '{name}' type"))?;
            let dtype = dtype_from_u32(ty).ok_or_else(|| {
                Error::format(path, format!("tensor '{name}': unknown or unsupported GGML type {ty}"))
            })?;
            let offset = c.u64(&format!("tensor '{name}' offset"))?;
            let n: u64 = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
            if n == u64::MAX || n == 0 {
                return Err(Error::format(path, format!("tensor '{name}': invalid shape {dims:?}")));
            }
            if dims[0] % dtype.block_size() as u64 != 0 {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor '{name}': row length {} is not a multiple of the {} block size {}",
                        dims[0],
                        dtype_name(dtype),
                        dtype.block_size()
                    ),
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
            });
        }
        let alignment = metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(Error::format(
                path,
                format!("general.alignment {alignment} is not a power of two"),
            ));
        }
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes()));
            match end {
                Some(end) if end <= buf.len() as u64 => {}
                _ => {
                    return Err(Error::format(
                        path,
                        format!(
                            "tensor '{}': data at offset {} (+{} bytes) runs past the end of the file ({} bytes): truncated file?",
                            t.name,
                            data_offset + t.offset,
                            t.n_bytes(),
                            buf.len()
                        ),
                    ))
                }
            }
        }
        Ok((version, metadata, tensors, data_offset))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| v.as_str())
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.as_u64())
    }
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(|v| v.as_f64())
    }
    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)
            .ok_or_else(|| Error::format(&self.path, format!("metadata '{key}' is missing or not an integer")))
    }
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
            .ok_or_else(|| Error::format(&self.path, "metadata 'general.architecture' is missing"))
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.mmap[start..start + t.n_bytes() as usize]
    }

    /// Load a tensor as a candle `QTensor` (candle order: shape reversed from GGML dims).
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let t = self
            .tensor_info(name)
            .ok_or_else(|| Error::format(&self.path, format!("tensor '{name}' is missing")))?;
        let q = qtensor_from_bytes(t.dtype, self.tensor_bytes(t), t.shape(), device)
            .map_err(|e| Error::tensor(name, format!("{}: {e}", self.path.display())))?;
        // The QTensor owns a copy now.
        self.release(t);
        Ok(q)
    }

    /// Drop a tensor's mapped pages from the resident set once it has been copied out (see
    /// [`fsutil::release_pages`]).
    pub fn release(&self, t: &TensorInfo) {
        fsutil::release_pages(&self.mmap, self.tensor_bytes(t));
    }

    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }
}

/// Build a QTensor from raw block bytes, copying to an aligned buffer first (candle reinterprets
/// the bytes as block structs, which needs their alignment).
pub fn qtensor_from_bytes(dtype: GgmlDType, bytes: &[u8], shape: Vec<usize>, device: &Device) -> Result<QTensor> {
    let n: usize = shape.iter().product();
    let need = n / dtype.block_size() * dtype.type_size();
    if bytes.len() < need || !n.is_multiple_of(dtype.block_size()) {
        return Err(Error::msg(format!(
            "{} bytes do not hold a {} tensor of shape {shape:?} ({need} bytes needed)",
            bytes.len(),
            dtype_name(dtype)
        )));
    }
    let bytes = &bytes[..need];
    if (bytes.as_ptr() as usize).is_multiple_of(8) {
        return Ok(qtensor_from_ggml(dtype, bytes, shape, device)?);
    }
    let mut aligned = vec![0u64; need.div_ceil(8)];
    // SAFETY: `aligned` holds at least `need` bytes; u8 has no alignment requirement.
    let dst = unsafe { std::slice::from_raw_parts_mut(aligned.as_mut_ptr() as *mut u8, need) };
    dst.copy_from_slice(bytes);
    Ok(qtensor_from_ggml(dtype, dst, shape, device)?)
}

/// A tensor to be written: GGML dims order and raw block bytes.
pub struct WriteTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlDType,
    pub data: Vec<u8>,
}

/// Builds a GGUF file in memory order and writes it atomically.
#[derive(Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<WriteTensor>,
}

impl GgufWriter {
    pub fn set(&mut self, key: &str, v: Value) {
        if let Some(slot) = self.metadata.iter_mut().find(|(k, _)| k == key) {
            slot.1 = v;
        } else {
            self.metadata.push((key.to_string(), v));
        }
    }

    pub fn add_tensor(&mut self, name: &str, shape: &[usize], dtype: GgmlDType, data: Vec<u8>) -> Result<()> {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let t = WriteTensor {
            name: name.to_string(),
            dims,
            dtype,
            data,
        };
        let n: u64 = t.dims.iter().product();
        let need = n / dtype.block_size() as u64 * dtype.type_size() as u64;
        if t.data.len() as u64 != need || !t.dims[0].is_multiple_of(dtype.block_size() as u64) {
            return Err(Error::tensor(
                name,
                format!(
                    "{} bytes do not fit {} shape {shape:?}",
                    t.data.len(),
                    dtype_name(dtype)
                ),
            ));
        }
        self.tensors.push(t);
        Ok(())
    }

    fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
        match v {
            Value::U8(x) => w.write_all(&[*x]),
            Value::I8(x) => w.write_all(&[*x as u8]),
            Value::U16(x) => w.write_all(&x.to_le_bytes()),
            Value::I16(x) => w.write_all(&x.to_le_bytes()),
            Value::U32(x) => w.write_all(&x.to_le_bytes()),
            Value::I32(x) => w.write_all(&x.to_le_bytes()),
            Value::F32(x) => w.write_all(&x.to_le_bytes()),
            Value::Bool(x) => w.write_all(&[*x as u8]),
            Value::String(s) => {
                w.write_all(&(s.len() as u64).to_le_bytes())?;
                w.write_all(s.as_bytes())
            }
            Value::Array(a) => {
                // An empty list has no element to take the type from; the lists llama.cpp
                // allows to be empty (`tokenizer.ggml.merges`) are string lists.
                let ty = a.first().map(|v| v.type_id()).unwrap_or(8);
                w.write_all(&ty.to_le_bytes())?;
                w.write_all(&(a.len() as u64).to_le_bytes())?;
                for x in a {
                    Self::write_value(w, x)?;
                }
                Ok(())
            }
            Value::U64(x) => w.write_all(&x.to_le_bytes()),
            Value::I64(x) => w.write_all(&x.to_le_bytes()),
            Value::F64(x) => w.write_all(&x.to_le_bytes()),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        for (k, v) in &self.metadata {
            if let Value::Array(a) = v {
                if a.iter().any(|x| x.type_id() != a[0].type_id()) {
                    return Err(Error::config(k, "GGUF arrays must hold one element type"));
                }
            }
        }
        let align = DEFAULT_ALIGNMENT;
        fsutil::write_atomic(path, |w| {
            let io = |e| Error::io(path, e);
            let mut header: Vec<u8> = Vec::new();
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&3u32.to_le_bytes());
            header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
            header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
            for (k, v) in &self.metadata {
                Self::write_value(&mut header, &Value::String(k.clone())).map_err(io)?;
                header.extend_from_slice(&v.type_id().to_le_bytes());
                Self::write_value(&mut header, v).map_err(io)?;
            }
            let mut offset = 0u64;
            for t in &self.tensors {
                Self::write_value(&mut header, &Value::String(t.name.clone())).map_err(io)?;
                header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
                for d in &t.dims {
                    header.extend_from_slice(&d.to_le_bytes());
                }
                header.extend_from_slice(&dtype_to_u32(t.dtype).to_le_bytes());
                header.extend_from_slice(&offset.to_le_bytes());
                offset = (offset + t.data.len() as u64).div_ceil(align) * align;
            }
            let pad = (header.len() as u64).div_ceil(align) * align - header.len() as u64;
            header.resize(header.len() + pad as usize, 0);
            w.write_all(&header).map_err(io)?;
            for t in &self.tensors {
                w.write_all(&t.data).map_err(io)?;
                let len = t.data.len() as u64;
                let pad = len.div_ceil(align) * align - len;
                w.write_all(&vec![0u8; pad as usize]).map_err(io)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let mut w = GgufWriter::default();
        w.set("general.architecture", Value::String("llama".into()));
        w.set("llama.block_count", Value::U32(2));
        w.set(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        );
        let data: Vec<u8> = (0..64u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.add_tensor("t", &[2, 32], GgmlDType::F32, data).unwrap();
        let p = dir.join("x.gguf");
        w.write(&p).unwrap();
        p
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = sample(d.path());
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.get_str("general.architecture"), Some("llama"));
        assert_eq!(g.get_u64("llama.block_count"), Some(2));
        let t = g.qtensor("t", &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 32]);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v[63], 63.0);
    }

    #[test]
    fn corrupt_files_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = sample(d.path());
        let bytes = std::fs::read(&p).unwrap();
        // Truncated data section.
        let q = d.path().join("trunc.gguf");
        std::fs::write(&q, &bytes[..bytes.len() - 100]).unwrap();
        let e = GgufFile::open(&q).err().unwrap().to_string();
        assert!(e.contains("trunc.gguf") && e.contains("tensor 't'"), "{e}");
        // Every prefix of the header fails cleanly.
        for n in [0, 3, 4, 8, 20, 30, 60] {
            std::fs::write(&q, &bytes[..n]).unwrap();
            assert!(GgufFile::open(&q).is_err());
        }
        // Bad magic.
        let mut b = bytes.clone();
        b[0] = b'X';
        std::fs::write(&q, &b).unwrap();
        assert!(GgufFile::open(&q).err().unwrap().to_string().contains("magic"));
        // Absurd string length in the first key.
        let mut b = bytes.clone();
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&q, &b).unwrap();
        assert!(GgufFile::open(&q).is_err());
    }
}
