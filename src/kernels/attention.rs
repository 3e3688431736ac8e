//! Fused causal attention on the CPU (f32, inference only):
//! `softmax(q k^T * scale + causal/sliding-window mask) v` in tiles of a few query positions.
//!
//! Why: the tensor version materialises `[heads, T, S]` scores and an additive `[T, S]` mask,
//! adds them, and runs a softmax over all `S` keys, masked or not. For a 1,300-token prompt
//! that is 60 MB of scores per layer, half of them masked, and a libm `expf` per score; in
//! profiles of the evaluation harness it took more time than the quantized projections.
//! Here a tile of 8 positions of one head computes scores only for the keys it can see (keys are
//! transposed once per call, so a score tile is plain FMAs with the query broadcast), keeps them
//! in a small per-thread buffer, and the exponential is a polynomial the compiler vectorises.
use rayon::prelude::*;

/// The attention's shape: `q` is `[B, nkv, rep * t, d]` (query head `kvh * rep + r`, position
/// `offset + i % t` for row `i`), `k` and `v` are `[B, nkv, s, d]` with `s = offset + t`.
#[derive(Clone, Copy, Debug)]
pub struct CausalShape {
    pub batch: usize,
    pub kv_heads: usize,
    /// Query heads per key/value head.
    pub rep: usize,
    /// New positions (query rows per head).
    pub t: usize,
    /// Keys (cached + new).
    pub s: usize,
    pub head_dim: usize,
    /// Keys further back than this are masked (Mistral's sliding window); `usize::MAX` for none.
    pub window: usize,
    pub scale: f32,
}

/// Query rows (consecutive positions of one head) per tile.
const P: usize = 8;
/// Keys per score vector.
const KT: usize = 16;

/// `[B, nkv, rep * t, d]` attention output.
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], sh: CausalShape) -> Vec<f32> {
    let CausalShape { t, s, head_dim: d, .. } = sh;
    let rows = sh.rep * t;
    assert!(t <= s && d > 0);
    assert_eq!(q.len(), sh.batch * sh.kv_heads * rows * d);
    assert_eq!(k.len(), sh.batch * sh.kv_heads * s * d);
    assert_eq!(v.len(), k.len());
    let offset = s - t;
    // Keys transposed per head, `[d][s_pad]`, so a score tile is `P` rows x 16 keys of FMAs
    // with the query broadcast (no horizontal sums).
    let sp = s.div_ceil(KT) * KT;
    let heads = sh.batch * sh.kv_heads;
    let mut kt = vec![0f32; heads * d * sp];
    kt.par_chunks_mut(d * sp).enumerate().for_each(|(h, dst)| {
        for (j, kr) in k[h * s * d..(h + 1) * s * d].chunks_exact(d).enumerate() {
            for (c, &x) in kr.iter().enumerate() {
                dst[c * sp + j] = x;
            }
        }
    });
    let tiles_per_head = t.div_ceil(P);
    let mut out = vec![0f32; q.len()];
    // One task per (query head, tile of P positions); the output rows of a tile are contiguous.
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::new();
    let mut rest = out.as_mut_slice();
    for qh in 0..heads * sh.rep {
        for tile in 0..tiles_per_head {
            let n = P.min(t - tile * P);
            let (o, r) = rest.split_at_mut(n * d);
            tasks.push((qh, tile * P, o));
            rest = r;
        }
    }
    tasks.into_par_iter().for_each_init(Vec::new, |scores, (qh, p0, o)| {
        let h = qh / sh.rep;
        let qrows = &q[(qh * t + p0) * d..][..o.len()];
        let ktile = Keys {
            kt: &kt[h * d * sp..(h + 1) * d * sp],
            v: &v[h * s * d..(h + 1) * s * d],
            sp,
            d,
        };
        tile(qrows, &ktile, offset + p0, sh, scores, o);
    });
    out
}

/// One head's keys (transposed) and values.
struct Keys<'a> {
    kt: &'a [f32],
    v: &'a [f32],
    sp: usize,
    d: usize,
}

/// Rows `q` (`n <= P` consecutive positions from `pos0`) against their visible keys.
fn tile(q: &[f32], k: &Keys, pos0: usize, sh: CausalShape, scores: &mut Vec<f32>, out: &mut [f32]) {
    let d = k.d;
    let n = q.len() / d;
    let last = pos0 + n - 1;
    let lo = (pos0 + 1).saturating_sub(sh.window);
    let (j0, j1) = (lo / KT * KT, (last + 1).div_ceil(KT) * KT);
    let width = j1 - j0;
    scores.clear();
    scores.resize(P * width, 0.0);
    // Queries scaled and padded to P rows, `[d][P]`, so the score loop has no row bounds.
    let mut qt = vec![0f32; d * P];
    for r in 0..n {
        for c in 0..d {
            qt[c * P + r] = q[r * d + c] * sh.scale;
        }
    }
    // Scores: P x 16 accumulators per key tile.
    let simd = simd_ok(d);
    for jt in (j0..j1).step_by(KT) {
        let dst = &mut scores[jt - j0..];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX-512 F checked by `simd_ok`; `kt` has d rows of sp >= jt + 16 keys,
            // `qt` d x P values, and `dst` P rows of `width` from jt - j0 (+16 <= width).
            unsafe { avx512::score_tile(&qt, &k.kt[jt..], k.sp, d, dst, width) };
            continue;
        }
        let mut acc = [[0f32; KT]; P];
        for (c, qc) in qt.chunks_exact(P).enumerate() {
            let kv: &[f32; KT] = k.kt[c * k.sp + jt..c * k.sp + jt + KT].try_into().unwrap();
            for (a, &qv) in acc.iter_mut().zip(qc) {
                for l in 0..KT {
                    a[l] = qv.mul_add(kv[l], a[l]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            dst[r * width..r * width + KT].copy_from_slice(a);
        }
    }
    // Softmax over each row's visible keys [lo_r, pos_r], zero elsewhere.
    let mut inv = [0f32; P];
    for (r, inv) in inv.iter_mut().enumerate().take(n) {
        let pos = pos0 + r;
        let lo_r = (pos + 1).saturating_sub(sh.window);
        let row = &mut scores[r * width..(r + 1) * width];
        let vis = &mut row[lo_r - j0..pos + 1 - j0];
        let max = lanes(vis, f32::NEG_INFINITY, f32::max);
        for x in vis.iter_mut() {
            *x = exp(*x - max);
        }
        *inv = 1.0 / lanes(vis, 0.0, |a, b| a + b);
        row[..lo_r - j0].fill(0.0);
        row[pos + 1 - j0..].fill(0.0);
    }
    // Values: four rows at a time share each value row.
    for r0 in (0..n).step_by(4) {
        let rn = 4.min(n - r0);
        let (lo_j, hi_j) = ((pos0 + r0 + 1).saturating_sub(sh.window), pos0 + r0 + rn);
        // Rows past n reuse row r0's scores (finite values, never stored).
        let rows: [&[f32]; 4] = std::array::from_fn(|r| &scores[(r0 + r.min(rn - 1)) * width + lo_j - j0..]);
        let vs = &k.v[lo_j * d..hi_j * d];
        let o = &mut out[r0 * d..(r0 + rn) * d];
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX-512 F and d % 16 == 0 checked by `simd_ok`; each row has
            // hi_j - lo_j scores, `vs` that many value rows, `o` rn rows.
            unsafe { avx512::values(rows, vs, d, o, rn, &inv[r0..]) };
            continue;
        }
        for (r, orow) in o.chunks_exact_mut(d).enumerate() {
            orow.fill(0.0);
            for (vr, &p) in vs.chunks_exact(d).zip(rows[r]) {
                for (x, &vv) in orow.iter_mut().zip(vr) {
                    *x = p.mul_add(vv, *x);
                }
            }
            for x in orow.iter_mut() {
                *x *= inv[r0 + r];
            }
        }
    }
}

/// Whether the AVX-512 loops apply (the CPU has AVX-512 F and rows are whole vectors).
fn simd_ok(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        d.is_multiple_of(16) && *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
        false
    }
}

/// The two inner loops in AVX-512 (the compiler's own vectorisation of the portable loops
/// chose gathers and scatters, 2x slower than the tensor version).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{KT, P};
    use std::arch::x86_64::*;

    /// `dst[r * width + l] = sum_c qt[c * P + r] * kt[c * sp + l]` for r < P, l < 16.
    ///
    /// # Safety
    /// AVX-512 F; `kt` holds `(d - 1) * sp + 16` values, `qt` `d * P`, `dst` `(P - 1) * width + 16`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn score_tile(qt: &[f32], kt: &[f32], sp: usize, d: usize, dst: &mut [f32], width: usize) {
        assert!(qt.len() >= d * P && kt.len() >= (d - 1) * sp + KT && dst.len() >= (P - 1) * width + KT);
        let mut acc = [_mm512_setzero_ps(); P];
        // SAFETY: bounds asserted above.
        unsafe {
            for c in 0..d {
                let kv = _mm512_loadu_ps(kt.as_ptr().add(c * sp));
                let qc = qt.as_ptr().add(c * P);
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*qc.add(r)), kv, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(dst.as_mut_ptr().add(r * width), *a);
            }
        }
    }

    /// `o[r] = inv[r] * sum_j rows[r][j] * vs[j]` for r < rn, 16 columns at a time.
    ///
    /// # Safety
    /// AVX-512 F; `d % 16 == 0`; every row has `vs.len() / d` scores; `o` has `rn * d` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn values(rows: [&[f32]; 4], vs: &[f32], d: usize, o: &mut [f32], rn: usize, inv: &[f32]) {
        let n = vs.len() / d;
        assert!(d.is_multiple_of(16) && rows.iter().all(|r| r.len() >= n) && o.len() >= rn * d && inv.len() >= rn);
        // SAFETY: bounds asserted above.
        unsafe {
            for c0 in (0..d).step_by(16) {
                let mut acc = [_mm512_setzero_ps(); 4];
                for j in 0..n {
                    let vv = _mm512_loadu_ps(vs.as_ptr().add(j * d + c0));
                    for (a, row) in acc.iter_mut().zip(&rows) {
                        *a = _mm512_fmadd_ps(_mm512_set1_ps(*row.get_unchecked(j)), vv, *a);
                    }
                }
                for r in 0..rn {
                    _mm512_storeu_ps(
                        o.as_mut_ptr().add(r * d + c0),
                        _mm512_mul_ps(acc[r], _mm512_set1_ps(inv[r])),
                    );
                }
            }
        }
    }
}

/// A reduction over 16 independent lanes, so the compiler can vectorise it.
#[inline]
fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(init, |a, &b| f(a, b));
    for c in chunks {
        for l in 0..16 {
            acc[l] = f(acc[l], c[l]);
        }
    }
    acc.iter().fold(tail, |a, &b| f(a, b))
}

/// `e^x` for `x <= 0` (softmax arguments after subtracting the max), within 2 ulp of libm:
/// `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-7 Taylor polynomial for `e^r`, and `2^n` built in
/// the exponent bits. Branch-free, so loops over it vectorise.
#[inline]
pub fn exp(x: f32) -> f32 {
    // Below this e^x is under f32's smallest normal; clamp and flush to 0.
    const LO: f32 = -87.3;
    let xc = x.max(LO);
    let n = (xc * std::f32::consts::LOG2_E).round();
    // Cody-Waite split of ln 2 so that r is exact.
    let r = n.mul_add(-0.693_145_75, xc);
    let r = n.mul_add(-1.428_606_8e-6, r);
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let pow2 = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < LO {
        0.0
    } else {
        p * pow2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 4.0 * f32::EPSILON as f64, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    /// Against an f64 softmax over the explicitly masked scores.
    #[test]
    fn matches_masked_softmax_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        // (batch, kv heads, rep, t, s, d, window): prefill, prefill after a cached prefix,
        // one-token decode, a sliding window shorter than the prompt, a head size with a tail.
        for (b, nkv, rep, t, s, d, window) in [
            (1, 2, 3, 7, 7, 64, usize::MAX),
            (2, 1, 4, 5, 12, 32, usize::MAX),
            (1, 3, 3, 1, 40, 64, usize::MAX),
            (1, 1, 2, 20, 25, 16, 6),
            (1, 1, 1, 3, 3, 20, usize::MAX),
        ] {
            let sh = CausalShape {
                batch: b,
                kv_heads: nkv,
                rep,
                t,
                s,
                head_dim: d,
                window,
                scale: 1.0 / (d as f32).sqrt(),
            };
            let q: Vec<f32> = (0..b * nkv * rep * t * d).map(|_| rng.gen_range(-3.0..3.0)).collect();
            let k: Vec<f32> = (0..b * nkv * s * d).map(|_| rng.gen_range(-3.0..3.0)).collect();
            let v: Vec<f32> = (0..b * nkv * s * d).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let got = causal_attention(&q, &k, &v, sh);
            let offset = s - t;
            for head in 0..b * nkv {
                for i in 0..rep * t {
                    let pos = offset + i % t;
                    let qr = &q[(head * rep * t + i) * d..][..d];
                    let sc: Vec<f64> = (0..s)
                        .map(|j| {
                            if j > pos || pos - j >= window {
                                f64::NEG_INFINITY
                            } else {
                                let kr = &k[(head * s + j) * d..][..d];
                                qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * sh.scale as f64
                            }
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    for c in 0..d {
                        let want: f64 = (0..s)
                            .map(|j| (sc[j] - m).exp() / z * v[(head * s + j) * d + c] as f64)
                            .sum();
                        let g = got[(head * rep * t + i) * d + c] as f64;
                        assert!(
                            (g - want).abs() < 1e-5,
                            "{sh:?} head {head} row {i} col {c}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
