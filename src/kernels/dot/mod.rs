//! Block dot products `w . x` of one packed weight row and one quantized activation row.
//!
//! Per block b, with integer codes `c`, activation codes `q` (scale `xd` per lane of 4) and the
//! block's dequantized activation sum `xs = sum(xd * q)`:
//! * Q8_0 (`w = c * d`): `d * sum_lanes(xd * sum(c q))`;
//! * Q4_0 (`w = (c - 8) * d`): `d * sum_lanes(xd * sum(c q)) - 8 * d * xs`;
//! * Q4_1 (`w = c * d + m`): `d * sum_lanes(xd * sum(c q)) + m * xs`;
//! * Q4_1G: as Q4_1 with `d` and `m` per group of 4 blocks, so each is applied once per group.
//!
//! Each lane's `sum(c q)` is exact in i32; the scale terms are f32. The SIMD kernels multiply unsigned
//! codes by signed activations (`vpdpbusd` / `vpmaddubsw`): Q4 codes are already 0..=15, and
//! AVX-512 flips Q8_0's sign bit (`c + 128`) and subtracts `128 * d * xs` like Q4_0's offset.
//! The scale terms are summed in a different order per kernel, so results agree to f32
//! rounding, not bit for bit.
#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod scalar;

use super::act::ActRow;
use super::pack::{BlockFormat, WRow};

/// A dot kernel. Unsafe because SIMD variants need their CPU features: only call one obtained
/// from [`Kernel::dot_fn`], which checks them.
pub type DotFn = unsafe fn(WRow<'_>, ActRow<'_>) -> f32;

/// Instruction sets the kernels come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    /// AVX2 + FMA + F16C (`vpmaddubsw`).
    Avx2,
    /// AVX-512 F/BW/VL + VNNI (`vpdpbusd`).
    Avx512Vnni,
}

impl Kernel {
    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                Kernel::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every kernel this CPU can run, best last.
    pub fn available() -> Vec<Kernel> {
        [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni]
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// The fastest kernel for this CPU (detected once).
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *Kernel::available().last().unwrap_or(&Kernel::Scalar))
    }

    /// The dot product for `format`; `None` if this CPU cannot run the kernel.
    pub fn dot_fn(self, format: BlockFormat) -> Option<DotFn> {
        if !self.is_available() {
            return None;
        }
        Some(match (self, format) {
            (Kernel::Scalar, BlockFormat::Q8_0) => scalar::dot_q8_0,
            (Kernel::Scalar, BlockFormat::Q4_0) => scalar::dot_q4::<false>,
            (Kernel::Scalar, BlockFormat::Q4_1) => scalar::dot_q4::<true>,
            (Kernel::Scalar, BlockFormat::Q4_1G) => scalar::dot_q4_1g,
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, BlockFormat::Q8_0) => avx2::dot_q8_0,
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, BlockFormat::Q4_0) => avx2::dot_q4::<false>,
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, BlockFormat::Q4_1) => avx2::dot_q4::<true>,
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, BlockFormat::Q4_1G) => avx2::dot_q4_1g,
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Vnni, BlockFormat::Q8_0) => avx512::dot_q8_0,
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Vnni, BlockFormat::Q4_0) => avx512::dot_q4::<false>,
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Vnni, BlockFormat::Q4_1) => avx512::dot_q4::<true>,
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Vnni, BlockFormat::Q4_1G) => avx512::dot_q4_1g,
            #[cfg(not(target_arch = "x86_64"))]
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::act::LANE;
    use crate::kernels::pack::tests::{pack, random_q4_1g, random_qtensor};
    use crate::kernels::{QuantActs, QK};
    use rand::{Rng, SeedableRng};

    /// f64 dot of the exactly dequantized weight row and the dequantized activation row.
    fn reference(w: &crate::kernels::PackedMatrix, r: usize, x: &QuantActs, xr: usize) -> f64 {
        let mut wf = vec![0f32; w.cols];
        w.dequantize_row(r, &mut wf);
        let a = x.row(xr);
        (0..w.cols)
            .map(|i| wf[i] as f64 * a.q[i] as f64 * a.d[i / LANE] as f64)
            .sum()
    }

    #[test]
    fn every_kernel_matches_the_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for f in [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1] {
            // Block counts: 1 (tail only), 3, 4 (one group), 5, 17 (odd, > 16), 18 (fixture
            // hidden size 576), 36, 128 (4096).
            for blocks in [1usize, 3, 4, 5, 17, 18, 36, 128] {
                let (rows, cols, n) = (3, blocks * QK, 2);
                let q = random_qtensor(f, rows, cols, blocks as u64);
                let w = pack(&q);
                let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                let xa = QuantActs::new(&x, cols);
                for k in Kernel::available() {
                    let dot = k.dot_fn(f).unwrap();
                    for r in 0..rows {
                        for xr in 0..n {
                            let want = reference(&w, r, &xa, xr);
                            // SAFETY: `dot_fn` checked the CPU features.
                            let got = unsafe { dot(w.row(r), xa.row(xr)) } as f64;
                            let scale: f64 = {
                                let mut wf = vec![0f32; cols];
                                w.dequantize_row(r, &mut wf);
                                let a = xa.row(xr);
                                (0..cols)
                                    .map(|i| (wf[i] as f64 * a.q[i] as f64 * a.d[i / LANE] as f64).abs())
                                    .sum()
                            };
                            assert!(
                                (got - want).abs() <= 1e-5 * scale + 1e-6,
                                "{k:?} {f:?} blocks {blocks} row {r} x {xr}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn grouped_q4_1_kernels_match_the_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Groups: 1, 3, 15, 16, 17 (past one 16-group chunk), 32 (4096), 112 (14336).
        for groups in [1usize, 3, 15, 16, 17, 32, 112] {
            let (rows, cols, n) = (3, groups * 128, 2);
            let w = random_q4_1g(rows, cols, groups as u64);
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let xa = QuantActs::new(&x, cols);
            for k in Kernel::available() {
                let dot = k.dot_fn(BlockFormat::Q4_1G).unwrap();
                for r in 0..rows {
                    for xr in 0..n {
                        let want = reference(&w, r, &xa, xr);
                        // SAFETY: `dot_fn` checked the CPU features.
                        let got = unsafe { dot(w.row(r), xa.row(xr)) } as f64;
                        let mut wf = vec![0f32; cols];
                        w.dequantize_row(r, &mut wf);
                        let a = xa.row(xr);
                        let scale: f64 = (0..cols)
                            .map(|i| (wf[i] as f64 * a.q[i] as f64 * a.d[i / LANE] as f64).abs())
                            .sum();
                        assert!(
                            (got - want).abs() <= 1e-5 * scale + 1e-6,
                            "{k:?} groups {groups} row {r} x {xr}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_codes_do_not_saturate() {
        // Q8_0 codes of +-127 (and -128, which GGUF writers do not emit but the format allows)
        // against activations of +-127: pairwise sums near the i16 limit of `vpmaddubsw`.
        let cols = 64;
        let mut bytes = Vec::new();
        for b in 0..2 {
            bytes.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
            bytes.extend((0..QK).map(|i| if (i + b) % 3 == 0 { 0x80u8 } else { 127u8 }));
        }
        let w = crate::kernels::PackedMatrix::from_gguf(BlockFormat::Q8_0, 1, cols, &bytes).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let xa = QuantActs::new(&x, cols);
        let want = reference(&w, 0, &xa, 0);
        for k in Kernel::available() {
            // SAFETY: `dot_fn` checked the CPU features.
            let got = unsafe { k.dot_fn(BlockFormat::Q8_0).unwrap()(w.row(0), xa.row(0)) } as f64;
            assert!((got - want).abs() <= 1e-3, "{k:?}: {got} vs {want}");
        }
    }
}
