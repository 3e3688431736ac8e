//! `AwqLinear`: a 4-bit group-quantized linear layer that stays packed in memory and computes
//! `y = x W^T (+ b)` for f32 `x` [n, in].
//!
//! Speed idea. The weight is stored as u32 words of 8 consecutive input codes per output row
//! (GEMV order: 4 bits/weight, one contiguous stream per row). The kernel walks output rows in
//! tiles of `ROW_TILE` rows, parallel over tiles with rayon. For each row and group it builds a
//! 16-entry table `lut[c] = f16((c - z) * s)`: one multiply per *code value* instead of per
//! weight, and the table gives bit-exact fp16 dequantization (what AutoAWQ's `dequantize_gemm`
//! produces) for free. Decoding a word is then 8 shifts + table loads into a per-thread f32
//! buffer of `ROW_TILE * in` floats (L1/L2 resident), which is reused for every input row: each
//! x row is loaded once per tile and dotted against `ROW_TILE` rows with 8-lane accumulators that
//! the compiler vectorises. Decode memory traffic is 1/4 (vs f16) or 1/8 (vs f32) of a dense
//! weight, which is what bounds single-token decoding.
use super::rtn::GroupQuant;
use super::QuantLinear;
use crate::error::{Error, Result};
use half::f16;
use rayon::prelude::*;

const ROW_TILE: usize = 8;

#[derive(Debug, Clone)]
pub struct AwqLinear {
    in_features: usize,
    out_features: usize,
    group_size: usize,
    /// [out, in/8]: word c of row o holds codes of inputs 8c..8c+8, nibble j = input 8c+j.
    packed: Vec<u32>,
    /// [out, n_groups]
    zeros: Vec<u8>,
    /// [out, n_groups]
    scales: Vec<f16>,
    bias: Option<Vec<f32>>,
}

impl AwqLinear {
    pub fn new(gq: &GroupQuant, bias: Option<Vec<f32>>) -> Result<Self> {
        gq.validate("AwqLinear")?;
        if !gq.group_size.is_multiple_of(8) {
            return Err(Error::invalid(
                "group_size",
                format!("{} is not a multiple of 8", gq.group_size),
            ));
        }
        if let Some(b) = &bias {
            if b.len() != gq.out_features {
                return Err(Error::tensor(
                    "bias",
                    format!("{} values for {} outputs", b.len(), gq.out_features),
                ));
            }
        }
        let packed =
            gq.q.chunks_exact(8)
                .map(|c| {
                    c.iter()
                        .enumerate()
                        .fold(0u32, |w, (j, &v)| w | ((v as u32) << (4 * j)))
                })
                .collect();
        Ok(AwqLinear {
            in_features: gq.in_features,
            out_features: gq.out_features,
            group_size: gq.group_size,
            packed,
            zeros: gq.zeros.clone(),
            scales: gq.scales.clone(),
            bias,
        })
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    pub fn group_size(&self) -> usize {
        self.group_size
    }
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Bytes held by the quantized weight (codes + zeros + scales).
    pub fn weight_bytes(&self) -> usize {
        self.packed.len() * 4 + self.zeros.len() + self.scales.len() * 2
    }

    /// Back to the plain codes/zeros/scales.
    pub fn to_group_quant(&self) -> GroupQuant {
        GroupQuant {
            out_features: self.out_features,
            in_features: self.in_features,
            group_size: self.group_size,
            q: self
                .packed
                .iter()
                .flat_map(|&w| (0..8).map(move |j| ((w >> (4 * j)) & 0xF) as u8))
                .collect(),
            zeros: self.zeros.clone(),
            scales: self.scales.clone(),
        }
    }

    /// Dequantize one output row into `dst` (len = in_features), exactly `f16((q - z) * s)`.
    fn dequant_row(&self, o: usize, dst: &mut [f32]) {
        let ng = self.in_features / self.group_size;
        let words_per_group = self.group_size / 8;
        let row = &self.packed[o * self.in_features / 8..(o + 1) * self.in_features / 8];
        for g in 0..ng {
            let z = self.zeros[o * ng + g] as f32;
            let s = self.scales[o * ng + g].to_f32();
            let mut lut = [0f32; 16];
            for (c, l) in lut.iter_mut().enumerate() {
                *l = f16::from_f32((c as f32 - z) * s).to_f32();
            }
            let words = &row[g * words_per_group..(g + 1) * words_per_group];
            let out = &mut dst[g * self.group_size..(g + 1) * self.group_size];
            for (w, d) in words.iter().zip(out.chunks_exact_mut(8)) {
                for (j, v) in d.iter_mut().enumerate() {
                    *v = lut[((w >> (4 * j)) & 0xF) as usize];
                }
            }
        }
    }

    /// The dequantized weight, f32 [out, in] (values are exactly the f16 dequantization).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out_features * self.in_features];
        for (o, row) in w.chunks_exact_mut(self.in_features).enumerate() {
            self.dequant_row(o, row);
        }
        w
    }

    fn check_input(&self, x: &[f32], n: usize) -> Result<()> {
        if x.len() != n * self.in_features {
            return Err(Error::invalid(
                "AwqLinear input",
                format!("{} values do not form [{n}, {}]", x.len(), self.in_features),
            ));
        }
        Ok(())
    }

    /// Fast path: `x` [n, in] row-major → y [n, out].
    pub fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.check_input(x, n)?;
        let (inf, outf) = (self.in_features, self.out_features);
        // yt[o * n + r]: each tile of output rows owns a contiguous slice, so rayon needs no locks.
        let mut yt = vec![0f32; outf * n];
        if n > 0 {
            yt.par_chunks_mut(ROW_TILE * n).enumerate().for_each_init(
                || vec![0f32; ROW_TILE * inf],
                |wbuf, (t, ychunk)| {
                    let rows = ychunk.len() / n;
                    for k in 0..rows {
                        self.dequant_row(t * ROW_TILE + k, &mut wbuf[k * inf..(k + 1) * inf]);
                    }
                    for r in 0..n {
                        let xr = &x[r * inf..(r + 1) * inf];
                        for k in 0..rows {
                            ychunk[k * n + r] = dot(xr, &wbuf[k * inf..(k + 1) * inf]);
                        }
                    }
                },
            );
        }
        let mut y = vec![0f32; n * outf];
        for o in 0..outf {
            let b = self.bias.as_ref().map_or(0.0, |b| b[o]);
            for r in 0..n {
                y[r * outf + o] = yt[o * n + r] + b;
            }
        }
        Ok(y)
    }

    /// Scalar reference: dequantize everything, then a plain triple loop.
    pub fn forward_reference(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.check_input(x, n)?;
        let w = self.dequantize();
        let (inf, outf) = (self.in_features, self.out_features);
        let mut y = vec![0f32; n * outf];
        for r in 0..n {
            for o in 0..outf {
                let mut acc = 0f64;
                for i in 0..inf {
                    acc += x[r * inf + i] as f64 * w[o * inf + i] as f64;
                }
                y[r * outf + o] = acc as f32 + self.bias.as_ref().map_or(0.0, |b| b[o]);
            }
        }
        Ok(y)
    }
}

impl QuantLinear for AwqLinear {
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        AwqLinear::forward_f32(self, x, n)
    }
}

/// Dot product with 8 independent accumulators so the loop vectorises (and rounds less).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Tensor};
    use rand::{Rng, SeedableRng};

    fn random_layer(rng: &mut rand::rngs::StdRng, out: usize, inf: usize, gs: usize, bias: bool) -> AwqLinear {
        let ng = inf / gs;
        let gq = GroupQuant {
            out_features: out,
            in_features: inf,
            group_size: gs,
            q: (0..out * inf).map(|_| rng.gen_range(0..16u8)).collect(),
            zeros: (0..out * ng).map(|_| rng.gen_range(0..16u8)).collect(),
            scales: (0..out * ng)
                .map(|_| f16::from_f32(rng.gen_range(0.001..0.05)))
                .collect(),
        };
        let b = bias.then(|| (0..out).map(|_| rng.gen_range(-1.0..1.0)).collect());
        AwqLinear::new(&gq, b).unwrap()
    }

    #[test]
    fn fast_path_matches_reference_on_random_shapes_with_tails() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // out not a multiple of ROW_TILE, in not a multiple of the 8-lane dot, n = 0/1/odd.
        for &(out, inf, gs, n, bias) in &[
            (1, 8, 8, 1, false),
            (13, 24, 8, 3, true),
            (17, 72, 24, 5, false),
            (64, 256, 128, 1, true),
            (9, 40, 40, 0, false),
            (33, 136, 8, 7, true),
        ] {
            let l = random_layer(&mut rng, out, inf, gs, bias);
            let x: Vec<f32> = (0..n * inf).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let fast = l.forward_f32(&x, n).unwrap();
            let slow = l.forward_reference(&x, n).unwrap();
            assert_eq!(fast.len(), n * out);
            for (a, b) in fast.iter().zip(&slow) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{out}x{inf} g{gs}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn round_trips_group_quant_and_rejects_bad_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let l = random_layer(&mut rng, 8, 32, 16, false);
        let gq = l.to_group_quant();
        let l2 = AwqLinear::new(&gq, None).unwrap();
        assert_eq!(l.dequantize(), l2.dequantize());
        assert!(l.forward_f32(&[0.0; 31], 1).is_err());
        let x = Tensor::zeros((2, 3, 31), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(l.forward(&x).is_err());
        let x = Tensor::ones((2, 3, 32), DType::F16, &candle_core::Device::Cpu).unwrap();
        let y = l.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 3, 8]);
        assert_eq!(y.dtype(), DType::F16);
        assert!(AwqLinear::new(&gq, Some(vec![0.0; 7])).is_err());
    }
}
