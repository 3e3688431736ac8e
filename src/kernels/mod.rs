//! Quantized kernels for GGUF Q8_0, Q4_0 and Q4_1 weights: matrix-vector products for decoding
//! and an int8 GEMM for prompt processing.
//!
//! Decoding one token multiplies each weight matrix by one activation row, so the time goes
//! into streaming the weights from memory and turning their codes into products. Plan:
//! * [`pack`]: at load, a GGUF block matrix is split into codes, f16 scales (and Q4_1 minimums)
//!   so the kernels stream plain byte arrays; Q4 codes of four blocks are interleaved so that
//!   the low nibbles of 64 bytes are two whole blocks and the high nibbles the next two.
//! * [`act`]: each activation row is quantized once per call to int8 per 32-block (scale `d`
//!   and `s = d * sum(q)`), then reused by every output row.
//! * [`dot`]: per format, the block dot products as `u8 codes x i8 activations` in integers
//!   (AVX-512 VNNI `vpdpbusd`, AVX2 `vpmaddubsw`, or scalar), scaled per block in f32. The
//!   codes' offsets (Q4_0's 8, Q8_0's 128 after a sign flip) and Q4_1's minimums are applied
//!   once per row through the activation block sums `s`.
//! * [`gemm`]: many activation rows (prompt processing): an int8 GEMM with per-32-block
//!   activation scales over weight panels unpacked into VNNI order; [`kquant`] feeds it GGUF
//!   Q4_K / Q5_K rows; [`kquant_dot`] decodes Q4_K and Q6_K rows in place.
//! * [`half`]: f16 / bf16 weights against f32 activations (widened in registers);
//!   [`bf16_gemm`]: bf16 weights against bf16 activations for prompts (AVX-512 BF16).
//! * [`f32_matvec`]: f32 weights against a few activation rows (decoding an f32 model).
//! * [`matvec`]: picks the best kernel once (runtime CPU detection) and splits output rows
//!   over rayon threads.
pub mod act;
pub mod attention;
pub mod bf16_gemm;
pub mod dot;
pub mod f32_matvec;
pub mod gemm;
pub mod half;
pub mod kquant;
pub mod kquant_dot;
pub mod matvec;
pub mod pack;
pub mod panel;

pub use act::QuantActs;
pub use matvec::{matvec, Kernel};
pub use pack::{BlockFormat, PackedMatrix};

/// Weights per GGUF block of the formats handled here.
pub const QK: usize = 32;

/// An output buffer shared by parallel tasks that each write their own disjoint part (the
/// GEMMs' panels write their own columns of every row, which slices cannot express).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: users write disjoint elements from each task and keep the buffer alive across the tasks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Through a method, so closures capture the `Send` wrapper and not its raw field.
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// An integer-valued `v` (`|v| < 2^22`) as the low byte of its two's complement. Adding
/// 1.5 * 2^23 puts the integer in the mantissa's low bits, so this is a float add and a mask:
/// Rust's saturating `as` conversion is not vectorised by the compiler, and in the activation
/// quantizers it ran one element at a time (most of their cost). A NaN gives the low byte of
/// its payload (0 for the NaNs arithmetic makes).
#[inline(always)]
pub(crate) fn low_byte(v: f32) -> u8 {
    (v + 12_582_912.0).to_bits() as u8
}

/// The largest byte (0 for none), for code-range checks over whole checkpoints: a fold
/// vectorises, where `any(|c| c > 15)` or `find` ran a byte at a time (12% of an AWQ load).
pub(crate) fn max_byte(v: &[u8]) -> u8 {
    v.iter().fold(0u8, |m, &c| m.max(c))
}

/// `max(|x_i|)` (0 for none) in 16 independent lanes. The comparison form, unlike `f32::max`,
/// maps to `vmaxps`, so the loop vectorises; NaNs are skipped as `f32::max` skips them.
#[inline(always)]
pub(crate) fn abs_max(x: &[f32]) -> f32 {
    let mut m = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    for (m, &v) in m.iter_mut().zip(tail) {
        let a = v.abs();
        *m = if a > *m { a } else { *m };
    }
    m.into_iter().fold(0.0, |a, b| if b > a { b } else { a })
}

#[cfg(test)]
mod tests {
    /// Test helper: `y [n, rows]` against the f64 product of `x [n, cols]` and `W^T`, where `w(o, i)`
    /// is weight (o, i); only f32 summation order may differ.
    pub(crate) fn assert_f64_product(
        w: impl Fn(usize, usize) -> f64,
        x: &[f32],
        y: &[f32],
        rows: usize,
        cols: usize,
        what: &str,
    ) {
        let n = x.len() / cols.max(1);
        for r in 0..n {
            for o in 0..rows {
                let (mut want, mut mag) = (0f64, 0f64);
                for i in 0..cols {
                    let p = x[r * cols + i] as f64 * w(o, i);
                    want += p;
                    mag += p.abs();
                }
                let got = y[r * rows + o] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * mag + 1e-7,
                    "{what} [{rows},{cols}] n {n} ({r},{o}): {got} vs {want}"
                );
            }
        }
    }

    use super::*;

    #[test]
    fn low_byte_is_the_twos_complement_byte() {
        for v in -200..=300 {
            assert_eq!(low_byte(v as f32), v as u8, "{v}");
        }
        assert_eq!(low_byte(f32::NAN), 0);
    }

    #[test]
    fn abs_max_matches_a_plain_fold() {
        for n in [0, 1, 4, 15, 16, 17, 32, 33] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 61) as f32 - 30.0) * 0.1).collect();
            let want = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(abs_max(&x), want, "{n}");
        }
        assert_eq!(abs_max(&[f32::NAN, -2.0]), 2.0);
    }
}
