//! `y [n, rows] = x [n, cols] W^T` for bf16 weights and activations that are bf16 values
//! (`--dtype bf16` compute), with AVX-512 BF16 `vdpbf16ps`.
//!
//! Why: prompts on bf16 weights widened tiles of weights to f32 for candle's f32 GEMM, which ran
//! at 0.39x llama.cpp on the 7B shape (whose BF16 prompts use this instruction). A product of
//! two bf16 values is exact in f32, so when the activations are already bf16 values this gives
//! the f32 GEMM's result up to summation order, at twice the multiply rate and half the bytes.
//! (`vdpbf16ps` treats subnormal inputs as zero; bf16 activations and weights of trained models
//! have none that matter.)
//!
//! Layout (as in [`super::gemm`]): panels of [`NR`] = 32 output rows and up to [`KC`] columns
//! are repacked into pairs `[k / 2][32][2]`, so one 64-byte load is the pairs of 16 rows and
//! `vdpbf16ps(acc, pairs, broadcast activation pair)` adds two products to each of 16 outputs.
use super::half::HalfMatrix;
use super::SharedOut;
use rayon::prelude::*;
use std::cell::RefCell;

/// Output rows per panel (two 16-lane vectors).
const NR: usize = 32;
/// Columns per panel chunk: 32 rows x 1,024 bf16 = 64 KiB, which stays in L2.
const KC: usize = 1024;
/// Activation rows per micro-kernel call (6 rows x 2 vectors = 12 accumulators).
const MR: usize = 6;

/// Whether this CPU has the instructions.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `x` as bf16 bits if every value is exactly a bf16 (its low 16 bits are zero) and the row
/// length is even; `None` otherwise (the caller then uses the f32 path).
pub fn exact_bf16(x: &[f32], cols: usize) -> Option<Vec<u16>> {
    if !cols.is_multiple_of(2) {
        return None;
    }
    // One pass that vectorises: the top halves, and an OR of the low halves.
    let mut out = vec![0u16; x.len()];
    let mut low = 0u32;
    for (o, v) in out.iter_mut().zip(x) {
        let b = v.to_bits();
        low |= b & 0xFFFF;
        *o = (b >> 16) as u16;
    }
    (low == 0).then_some(out)
}

thread_local! {
    /// Per-thread panel buffer `[KC / 2][NR]` of bf16 pairs (as u32).
    static PANEL: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Pairs of columns `k0..k0 + kc` of rows `o0..o0 + width` (zero past width) as `[kc / 2][NR]`.
fn pack(w: &HalfMatrix, o0: usize, width: usize, k0: usize, kc: usize, panel: &mut Vec<u32>) {
    panel.clear();
    panel.resize(kc / 2 * NR, 0);
    for j in 0..width {
        let row = &w.row(o0 + j)[k0..k0 + kc];
        for (p, pair) in row.chunks_exact(2).enumerate() {
            panel[p * NR + j] = pair[0] as u32 | (pair[1] as u32) << 16;
        }
    }
}

/// `y [n, w.rows] = x W^T` with `xb` the activations' bf16 bits (`[n, w.cols]`, cols even).
/// `simd` picks the AVX-512 BF16 kernel (the caller checks [`available`]) or the scalar one.
pub fn gemm(w: &HalfMatrix, xb: &[u16], n: usize, simd: bool) -> Vec<f32> {
    let (rows, cols) = (w.rows, w.cols);
    assert!(cols.is_multiple_of(2) && xb.len() == n * cols);
    assert!(!simd || available(), "no AVX-512 BF16 on this CPU");
    let mut y = vec![0f32; n * rows];
    // Each panel task writes only its own 32 columns of y.
    let out = SharedOut(y.as_mut_ptr());
    (0..rows.div_ceil(NR)).into_par_iter().for_each(|pi| {
        PANEL.with(|cell| {
            // Nothing below calls into rayon, so a task never re-enters this thread's buffer.
            let panel = &mut *cell.borrow_mut();
            let o0 = pi * NR;
            let width = NR.min(rows - o0);
            for k0 in (0..cols).step_by(KC) {
                let kc = KC.min(cols - k0);
                pack(w, o0, width, k0, kc, panel);
                for r0 in (0..n).step_by(MR) {
                    let t = Tile {
                        x: &xb[r0 * cols + k0..],
                        ldx: cols,
                        rows: MR.min(n - r0),
                        pairs: kc / 2,
                        y: out.at(r0 * rows + o0),
                        ldy: rows,
                        width,
                    };
                    #[cfg(target_arch = "x86_64")]
                    if simd {
                        // SAFETY: AVX-512 BF16 asserted above; the tile's rows and columns of y
                        // belong to this panel's task alone.
                        unsafe { avx512::tile(panel, t) };
                        continue;
                    }
                    // SAFETY: as above.
                    unsafe { scalar(panel, t) };
                }
            }
        });
    });
    y
}

/// One micro-kernel call: `rows` activation rows from `x` (stride `ldx`, `pairs` column pairs)
/// against the packed panel, added into `y` (stride `ldy`, `width` valid columns).
#[derive(Clone, Copy)]
struct Tile<'a> {
    x: &'a [u16],
    ldx: usize,
    rows: usize,
    pairs: usize,
    y: *mut f32,
    ldy: usize,
    width: usize,
}

fn bf(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Reference micro-kernel (same products, f32 sums).
///
/// # Safety
/// `t.y` must point at `t.rows` rows of `t.width` writable values, `t.ldy` apart.
unsafe fn scalar(panel: &[u32], t: Tile) {
    for r in 0..t.rows {
        let x = &t.x[r * t.ldx..];
        for j in 0..t.width {
            let mut f = 0f32;
            for p in 0..t.pairs {
                let w = panel[p * NR + j];
                f += bf(w as u16) * bf(x[2 * p]) + bf((w >> 16) as u16) * bf(x[2 * p + 1]);
            }
            // SAFETY: within the caller's rows and columns.
            unsafe { *t.y.add(r * t.ldy + j) += f };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// As [`super::scalar`], and the CPU must have AVX-512 F and BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(panel: &[u32], t: Tile) {
        // SAFETY: forwarded.
        unsafe {
            match t.rows {
                6 => rows::<6>(panel, t),
                5 => rows::<5>(panel, t),
                4 => rows::<4>(panel, t),
                3 => rows::<3>(panel, t),
                2 => rows::<2>(panel, t),
                1 => rows::<1>(panel, t),
                _ => unreachable!("at most {} rows", super::MR),
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows<const R: usize>(panel: &[u32], t: Tile) {
        assert!(panel.len() >= t.pairs * NR && t.x.len() >= (R - 1) * t.ldx + 2 * t.pairs);
        let pp = panel.as_ptr();
        let xp: [*const u16; R] = std::array::from_fn(|r| t.x[r * t.ldx..].as_ptr());
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..t.pairs {
            // SAFETY: pair p of the panel (NR u32) and of every row exist (asserted).
            unsafe {
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pp.add(p * NR) as *const __m512i));
                let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pp.add(p * NR + 16) as *const __m512i));
                for r in 0..R {
                    let xv: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32((xp[r].add(2 * p) as *const i32).read_unaligned()));
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], w0, xv);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], w1, xv);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (v, a) in ar.iter().enumerate() {
                let n = t.width.saturating_sub(16 * v).min(16);
                let k: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
                // SAFETY: the masked lanes are within the caller's `width` columns of row r.
                unsafe {
                    let yp = t.y.add(r * t.ldy + 16 * v);
                    _mm512_mask_storeu_ps(yp, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, yp), *a));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::half::HalfKind;
    use rand::{Rng, SeedableRng};

    fn to_bf16(v: f32) -> u16 {
        half::bf16::from_f32(v).to_bits()
    }

    /// Against the f64 product (exact products, so only f32 summation differs), scalar and
    /// SIMD, partial panels, several column chunks, row counts around MR.
    #[test]
    fn matches_f64_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for (rows, cols) in [(5, 2), (33, 576), (64, 96), (40, KC + 6)] {
            let wb: Vec<u16> = (0..rows * cols).map(|_| to_bf16(rng.gen_range(-1.0f32..1.0))).collect();
            let w = HalfMatrix::new(HalfKind::Bf16, rows, cols, wb.clone()).unwrap();
            for n in [1, 5, 6, 7, 13] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|_| bf(to_bf16(rng.gen_range(-2.0f32..2.0))))
                    .collect();
                let xb = exact_bf16(&x, cols).expect("bf16 values");
                let mut kinds = vec![false];
                if available() {
                    kinds.push(true);
                }
                for simd in kinds {
                    let y = gemm(&w, &xb, n, simd);
                    let what = format!("simd {simd}");
                    crate::kernels::tests::assert_f64_product(
                        |o, i| bf(wb[o * cols + i]) as f64,
                        &x,
                        &y,
                        rows,
                        cols,
                        &what,
                    );
                }
            }
        }
    }

    #[test]
    fn only_exact_bf16_rows_qualify() {
        assert_eq!(exact_bf16(&[1.0, -2.5], 2), Some(vec![0x3f80, 0xc020]));
        assert_eq!(exact_bf16(&[1.0, 1.0 + f32::EPSILON], 2), None);
        assert_eq!(exact_bf16(&[1.0, 1.0, 1.0], 3), None);
    }
}
