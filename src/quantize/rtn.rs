//! Round-to-nearest asymmetric group quantization, bit-for-bit as AutoAWQ's
//! `pseudo_quantize_tensor` (zero_point = true) on an fp16 weight.
//!
//! AutoAWQ runs every step on fp16 tensors, so every intermediate is rounded to fp16. We emulate
//! each torch op as "compute in f32, round to f16": for one +, -, *, / of two f16 values this is
//! the correctly rounded f16 result (f32 carries more than 2*11+2 bits), i.e. exactly what torch's
//! CPU half kernels produce.
use crate::error::{Error, Result};
use half::f16;

/// Codes, scales and zero points of a group-quantized [out, in] matrix, in the plain (unpacked)
/// layout every packer and kernel converts from.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupQuant {
    pub out_features: usize,
    pub in_features: usize,
    pub group_size: usize,
    /// q[o * in + i], 0..=15.
    pub q: Vec<u8>,
    /// z[o * n_groups + g], 0..=15.
    pub zeros: Vec<u8>,
    /// s[o * n_groups + g].
    pub scales: Vec<f16>,
}

impl GroupQuant {
    pub fn n_groups(&self) -> usize {
        self.in_features / self.group_size
    }

    /// Checks the invariants every consumer relies on (lengths, code range).
    pub fn validate(&self, what: &str) -> Result<()> {
        let (o, i, gs) = (self.out_features, self.in_features, self.group_size);
        check_group_size(what, i, gs)?;
        let ng = i / gs;
        if self.q.len() != o * i || self.zeros.len() != o * ng || self.scales.len() != o * ng {
            return Err(Error::tensor(
                what,
                format!(
                    "inconsistent lengths: q {} zeros {} scales {} for [{o}, {i}] group {gs}",
                    self.q.len(),
                    self.zeros.len(),
                    self.scales.len()
                ),
            ));
        }
        use crate::kernels::max_byte;
        if max_byte(&self.q).max(max_byte(&self.zeros)) > 15 {
            return Err(Error::tensor(what, "4-bit codes must be in 0..=15"));
        }
        Ok(())
    }

    /// `(q - z) * s` rounded to f16, as AutoAWQ's `dequantize_gemm` computes it; [out, in].
    pub fn dequantize_f16(&self) -> Vec<f16> {
        let ng = self.n_groups();
        let mut w = Vec::with_capacity(self.q.len());
        for o in 0..self.out_features {
            for i in 0..self.in_features {
                let g = o * ng + i / self.group_size;
                let q = self.q[o * self.in_features + i] as f32 - self.zeros[g] as f32;
                w.push(f16::from_f32(q * self.scales[g].to_f32()));
            }
        }
        w
    }
}

#[cfg(test)]
impl GroupQuant {
    /// Random codes and zero points, and scales in `0.001..max_scale` (tests).
    pub(crate) fn random(rng: &mut impl rand::Rng, out: usize, inf: usize, gs: usize, max_scale: f32) -> Self {
        let ng = inf / gs;
        GroupQuant {
            out_features: out,
            in_features: inf,
            group_size: gs,
            q: (0..out * inf).map(|_| rng.gen_range(0..16u8)).collect(),
            zeros: (0..out * ng).map(|_| rng.gen_range(0..16u8)).collect(),
            scales: (0..out * ng).map(|_| h(rng.gen_range(0.001..max_scale))).collect(),
        }
    }
}

/// A group size must be positive and divide the input width (AutoAWQ would silently reshape
/// wrong otherwise).
pub fn check_group_size(what: &str, in_features: usize, group_size: usize) -> Result<()> {
    if group_size == 0 || !in_features.is_multiple_of(group_size) {
        return Err(Error::tensor(
            what,
            format!("group_size {group_size} does not divide in_features {in_features}"),
        ));
    }
    Ok(())
}

fn h(x: f32) -> f16 {
    f16::from_f32(x)
}

/// Quantize an fp16 [out, in] weight to 4-bit codes per (row, group of `group_size` columns).
/// `name` is used in error messages.
pub fn pseudo_quantize(
    name: &str,
    w: &[f16],
    out_features: usize,
    in_features: usize,
    group_size: usize,
) -> Result<GroupQuant> {
    check_group_size(name, in_features, group_size)?;
    if w.len() != out_features * in_features {
        return Err(Error::tensor(
            name,
            format!("{} values do not form [{out_features}, {in_features}]", w.len()),
        ));
    }
    if let Some(bad) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(name, format!("non-finite weight at flat index {bad}")));
    }
    const MAX_INT: f32 = 15.0;
    let ng = in_features / group_size;
    let mut q = vec![0u8; w.len()];
    let mut zeros = vec![0u8; out_features * ng];
    let mut scales = vec![f16::ZERO; out_features * ng];
    // torch clamps an f16 tensor against the scalar cast to f16 (1e-5 is subnormal in f16).
    let min_range = h(1e-5).to_f32();
    for (gi, group) in w.chunks_exact(group_size).enumerate() {
        let (mut mx, mut mn) = (f32::NEG_INFINITY, f32::INFINITY);
        for v in group {
            let v = v.to_f32();
            mx = mx.max(v);
            mn = mn.min(v);
        }
        let range = h(mx - mn).to_f32().max(min_range);
        let s = h(range / MAX_INT).to_f32();
        let z = (-h(mn / s).to_f32().round_ties_even()).clamp(0.0, MAX_INT);
        scales[gi] = h(s);
        zeros[gi] = z as u8;
        let base = gi * group_size;
        for (k, v) in group.iter().enumerate() {
            // round(w / s) is an integer below 2048 in magnitude here, so "+ z" is exact in f16.
            let r = h(v.to_f32() / s).to_f32().round_ties_even();
            q[base + k] = (r + z).clamp(0.0, MAX_INT) as u8;
        }
    }
    Ok(GroupQuant {
        out_features,
        in_features,
        group_size,
        q,
        zeros,
        scales,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_group_gets_min_scale_and_exact_values() {
        let w = vec![f16::from_f32(0.5); 8];
        let gq = pseudo_quantize("w", &w, 1, 8, 8).unwrap();
        // range 0 -> clamped to 1e-5 (as f16), zero point clamps to 0, code saturates at 15.
        assert_eq!(gq.zeros, vec![0]);
        assert!(gq.q.iter().all(|&c| c == 15));
    }

    #[test]
    fn linear_ramp_round_trips_within_half_step() {
        // Every group spans zero; an all-negative group would saturate the zero point at 15.
        let w: Vec<f16> = (0..64).map(|i| f16::from_f32((i % 16) as f32 * 0.08 - 0.5)).collect();
        let gq = pseudo_quantize("w", &w, 2, 32, 16).unwrap();
        gq.validate("w").unwrap();
        let deq = gq.dequantize_f16();
        for (g, (a, b)) in w.iter().zip(&deq).enumerate() {
            let s = gq.scales[g / 16].to_f32();
            assert!((a.to_f32() - b.to_f32()).abs() <= 0.5 * s + 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn bad_group_size_is_an_error() {
        let w = vec![f16::ZERO; 30];
        let e = pseudo_quantize("layer.w", &w, 1, 30, 8).unwrap_err().to_string();
        assert!(e.contains("layer.w") && e.contains("group_size 8"), "{e}");
        assert!(pseudo_quantize("w", &w, 1, 30, 0).is_err());
        assert!(pseudo_quantize("w", &w, 2, 30, 15).is_err());
    }
}
