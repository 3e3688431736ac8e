//! Element types a merge reads and writes, and the rounding that emulates torch arithmetic in them.
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    /// Parse a mergekit/torch dtype name (`bfloat16`, `float16`, `float32`, and their short forms).
    pub fn parse(field: &str, s: &str) -> Result<Dtype> {
        match s.trim().trim_start_matches("torch.") {
            "float32" | "fp32" | "f32" | "float" => Ok(Dtype::F32),
            "float16" | "fp16" | "f16" | "half" => Ok(Dtype::F16),
            "bfloat16" | "bf16" => Ok(Dtype::BF16),
            other => Err(Error::config(
                field,
                format!("unsupported dtype '{other}' (use bfloat16, float16 or float32)"),
            )),
        }
    }

    /// The safetensors header spelling.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<Dtype> {
        match d {
            safetensors::Dtype::F32 => Some(Dtype::F32),
            safetensors::Dtype::F16 => Some(Dtype::F16),
            safetensors::Dtype::BF16 => Some(Dtype::BF16),
            _ => None,
        }
    }

    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }

    /// The name transformers writes as `torch_dtype` in config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    /// Round an f32 to the nearest value of this dtype (round-to-nearest-even), returned as f32.
    /// Applying it after every f32 operation reproduces torch's CPU arithmetic on half types,
    /// which computes each elementwise op in f32 and rounds the result.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dtype::F32 => x,
            Dtype::F16 => half::f16::from_f32(x).to_f32(),
            Dtype::BF16 => half::bf16::from_f32(x).to_f32(),
        }
    }

    /// Decode little-endian raw tensor bytes into f32 (exact for every supported dtype).
    pub fn decode(self, name: &str, bytes: &[u8]) -> Result<Vec<f32>> {
        if !bytes.len().is_multiple_of(self.size()) {
            return Err(Error::tensor(
                name,
                format!("byte length {} is not a multiple of {}", bytes.len(), self.size()),
            ));
        }
        Ok(match self {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    /// Encode f32 values (rounding to nearest-even) as little-endian bytes of this dtype.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        match self {
            Dtype::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            Dtype::F16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            Dtype::BF16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rounding() {
        let v = [1.0f32, -0.5, 3.140625];
        for d in [Dtype::F32, Dtype::F16, Dtype::BF16] {
            assert_eq!(d.decode("x", &d.encode(&v)).unwrap(), v.to_vec());
        }
        // 1 + 2^-9 is not representable in bf16 and rounds to even (1.0).
        assert_eq!(Dtype::BF16.round(1.0 + 1.0 / 512.0), 1.0);
        assert!(Dtype::BF16.decode("x", &[0u8; 3]).is_err());
        assert!(Dtype::parse("dtype", "int8").is_err());
        assert_eq!(Dtype::parse("dtype", "torch.bfloat16").unwrap(), Dtype::BF16);
    }
}
