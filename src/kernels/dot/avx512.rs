//! AVX-512 VNNI kernels: `vpdpbusd` multiplies 64 u8 codes by 64 i8 activations and sums each
//! 4 into an i32 lane (one activation lane, with its own scale), so one 512-bit vector covers
//! two blocks (lanes 0..8 and 8..16). Per 16 blocks the f16 weight scales are converted at
//! once (`vcvtph2ps`); each block pair's two are spread over its lanes with one `vpermps` and
//! multiplied by the 16 activation lane scales.
//!
//! Q8_0 codes are i8: flipping the sign bit gives `c + 128` as u8, and the extra
//! `128 * sum(q)` per block is taken off through `-128 * d * xs` (see [`super`]).
use crate::kernels::act::{ActRow, LANE};
use crate::kernels::pack::{WRow, GROUP};
use crate::kernels::QK;
use std::arch::x86_64::*;

/// Blocks whose scales are loaded together.
const CHUNK: usize = 16;
/// Activation lanes per block.
const LANES: usize = QK / LANE;
/// How far ahead (bytes of codes) the kernels prefetch. The hardware prefetcher alone left
/// Q4_0 decoding at about 45 t/s on the 7B shape (2 threads); 512 bytes ahead gave about 47.
/// For Q8_0, 4,096 bytes gave 22.4-23.0 t/s at 1 thread against 18.5-18.7 with 512, and
/// 39-42 against 28-31 at 2 threads; 8,192 was no better at 1 thread and worse at 2.
const PREFETCH: usize = 4096;

/// Lane indices spreading scales `2j` and `2j + 1` over lanes 0..8 and 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pair_idx(j: usize) -> __m512i {
    let base = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_add_epi32(base, _mm512_set1_epi32(2 * j as i32))
}

/// Mask of the first `n` (<= 16) lanes.
#[inline]
fn first(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        (1u16 << n) - 1
    }
}

/// f16 values `p[b..b+n]` (n <= 16) as f32, zero past n.
///
/// # Safety
/// `p[b..b+n]` must exist.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load_f16(p: &[half::f16], b: usize, n: usize) -> __m512 {
    // SAFETY: the masked load touches only p[b..b+n] (caller).
    _mm512_cvtph_ps(unsafe { _mm256_maskz_loadu_epi16(first(n), p.as_ptr().add(b) as *const i16) })
}

/// Block sums `x.s[b..b+n]` (n <= 16), zero past n.
///
/// # Safety
/// `x.s[b..b+n]` must exist.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn load_s(x: &ActRow<'_>, b: usize, n: usize) -> __m512 {
    // SAFETY: as above.
    unsafe { _mm512_maskz_loadu_ps(first(n), x.s.as_ptr().add(b)) }
}

/// Lane-scaled f32 sum of the i32 lanes `p` of blocks `b`, `b + 1` whose weight scales are
/// lanes `2j`, `2j + 1` of `d`, added to `acc`.
///
/// # Safety
/// Blocks `b` and `b + 1` must exist in `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn accumulate(acc: __m512, p: __m512i, d: __m512, j: usize, x: &ActRow<'_>, b: usize) -> __m512 {
    // SAFETY: the 16 lane scales of blocks b, b+1 exist (caller).
    let xd = unsafe { _mm512_loadu_ps(x.d.as_ptr().add(b * LANES)) };
    let s = _mm512_mul_ps(_mm512_permutexvar_ps(pair_idx(j), d), xd);
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc)
}

/// One block's i32 lanes `p` times its lane scales and weight scale `d`.
///
/// # Safety
/// Block `b` must exist in `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn single(p: __m256i, d: f32, x: &ActRow<'_>, b: usize) -> f32 {
    // SAFETY: the 8 lane scales of block b exist (caller).
    let xd = unsafe { _mm256_loadu_ps(x.d.as_ptr().add(b * LANES)) };
    d * super::avx2::hsum_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(p), xd))
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `w` and `x` must have the same
/// number of blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let nb = w.scales.len();
    assert!(w.codes.len() == nb * QK && x.q.len() == nb * QK && x.d.len() == nb * LANES && x.s.len() == nb);
    let (cp, qp) = (w.codes.as_ptr(), x.q.as_ptr());
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut corr = _mm512_setzero_ps();
    let mut tail = 0f32;
    for b in (0..nb).step_by(CHUNK) {
        let n = CHUNK.min(nb - b);
        // SAFETY: blocks b..b+n exist (asserted lengths).
        let d = unsafe { load_f16(w.scales, b, n) };
        corr = _mm512_fmadd_ps(d, unsafe { load_s(&x, b, n) }, corr);
        for j in 0..n / 2 {
            let at = (b + 2 * j) * QK;
            _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(at + PREFETCH) as *const i8);
            // SAFETY: blocks b+2j and b+2j+1 exist.
            let (c, q) = unsafe {
                (
                    _mm512_loadu_si512(cp.add(at) as *const __m512i),
                    _mm512_loadu_si512(qp.add(at) as *const __m512i),
                )
            };
            let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(c, flip), q);
            // SAFETY: as above.
            acc[j & 1] = unsafe { accumulate(acc[j & 1], p, d, j, &x, b + 2 * j) };
        }
        if n % 2 == 1 {
            let bl = b + n - 1;
            // SAFETY: block bl exists.
            let (c, q) = unsafe {
                (
                    _mm256_loadu_si256(cp.add(bl * QK) as *const __m256i),
                    _mm256_loadu_si256(qp.add(bl * QK) as *const __m256i),
                )
            };
            let c = _mm256_xor_si256(c, _mm256_set1_epi8(-128));
            let p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), c, q);
            // SAFETY: as above.
            tail += unsafe { single(p, w.scales[bl].to_f32(), &x, bl) };
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) - 128.0 * _mm512_reduce_add_ps(corr) + tail
}

/// Q4_0 (`MIN = false`) or Q4_1 (`MIN = true`).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `w` and `x` must have the same
/// number of blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q4<const MIN: bool>(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let nb = w.scales.len();
    assert!(w.codes.len() == nb * 16 && x.q.len() == nb * QK && x.d.len() == nb * LANES && x.s.len() == nb);
    assert!(!MIN || w.mins.len() == nb);
    let whole = nb / GROUP * GROUP;
    let (cp, qp) = (w.codes.as_ptr(), x.q.as_ptr());
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut corr = _mm512_setzero_ps();
    for b in (0..whole).step_by(CHUNK) {
        let n = CHUNK.min(whole - b);
        // SAFETY: blocks b..b+n exist (asserted lengths).
        let (d, xs) = unsafe { (load_f16(w.scales, b, n), load_s(&x, b, n)) };
        // SAFETY: as above.
        corr = _mm512_fmadd_ps(if MIN { unsafe { load_f16(w.mins, b, n) } } else { d }, xs, corr);
        for g in 0..n / GROUP {
            let bg = b + g * GROUP;
            // A software prefetch PREFETCH bytes ahead (rows are contiguous, so past a row's end
            // this is the next row's start; prefetches never fault).
            _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(bg * 16 + PREFETCH) as *const i8);
            // SAFETY: the group's 4 blocks exist.
            let (c, q_lo, q_hi) = unsafe {
                (
                    _mm512_loadu_si512(cp.add(bg * 16) as *const __m512i),
                    _mm512_loadu_si512(qp.add(bg * QK) as *const __m512i),
                    _mm512_loadu_si512(qp.add(bg * QK + 64) as *const __m512i),
                )
            };
            let lo = _mm512_and_si512(c, m4);
            let hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), m4);
            let p_lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, q_lo);
            let p_hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, q_hi);
            // SAFETY: as above.
            unsafe {
                acc[0] = accumulate(acc[0], p_lo, d, 2 * g, &x, bg);
                acc[1] = accumulate(acc[1], p_hi, d, 2 * g + 1, &x, bg + 2);
            }
        }
    }
    let off = if MIN { 1.0 } else { -8.0 };
    let mut total = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) + off * _mm512_reduce_add_ps(corr);
    let m4 = _mm_set1_epi8(0x0F);
    for b in whole..nb {
        // SAFETY: tail block b exists.
        let (c, q) = unsafe {
            (
                _mm_loadu_si128(cp.add(b * 16) as *const __m128i),
                _mm256_loadu_si256(qp.add(b * QK) as *const __m256i),
            )
        };
        let c = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(c, 4), m4), _mm_and_si128(c, m4));
        let d = w.scales[b].to_f32();
        // SAFETY: as above.
        total += unsafe { single(_mm256_dpbusd_epi32(_mm256_setzero_si256(), c, q), d, &x, b) };
        total += if MIN {
            w.mins[b].to_f32() * x.s[b]
        } else {
            -8.0 * d * x.s[b]
        };
    }
    total
}

/// Q4_1G: Q4_1 values with one scale and minimum per group of [`GROUP`] blocks; one 64-byte
/// load of codes is one group.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `w` and `x` must have the same
/// number of blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q4_1g(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let ng = w.scales.len();
    let nb = ng * GROUP;
    assert!(w.codes.len() == nb * 16 && x.q.len() == nb * QK && x.d.len() == nb * LANES && x.s.len() == nb);
    assert!(w.mins.len() == ng);
    let (cp, qp, dp) = (w.codes.as_ptr(), x.q.as_ptr(), x.d.as_ptr());
    let m4 = _mm512_set1_epi8(0x0F);
    // Lane l of a 16-block sum vector belongs to group l / 4 of the four loaded minimums.
    let quad = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut corr = _mm512_setzero_ps();
    for g0 in (0..ng).step_by(CHUNK) {
        let n = CHUNK.min(ng - g0);
        // SAFETY: groups g0..g0+n exist (asserted lengths).
        let d = unsafe { load_f16(w.scales, g0, n) };
        for q4 in (0..n).step_by(4) {
            let k = 4.min(n - q4);
            // SAFETY: groups g0+q4..g0+q4+k and their 4k blocks exist.
            let (m, xs) = unsafe { (load_f16(w.mins, g0 + q4, k), load_s(&x, (g0 + q4) * GROUP, k * GROUP)) };
            corr = _mm512_fmadd_ps(_mm512_permutexvar_ps(quad, m), xs, corr);
        }
        for j in 0..n {
            let g = g0 + j;
            _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(g * 64 + PREFETCH) as *const i8);
            // SAFETY: group g's 64 code bytes, 128 activations and 32 lane scales exist.
            let (c, q_lo, q_hi, xd_lo, xd_hi) = unsafe {
                (
                    _mm512_loadu_si512(cp.add(g * 64) as *const __m512i),
                    _mm512_loadu_si512(qp.add(g * 128) as *const __m512i),
                    _mm512_loadu_si512(qp.add(g * 128 + 64) as *const __m512i),
                    _mm512_loadu_ps(dp.add(g * GROUP * LANES)),
                    _mm512_loadu_ps(dp.add(g * GROUP * LANES + 16)),
                )
            };
            let lo = _mm512_and_si512(c, m4);
            let hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), m4);
            let p_lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, q_lo);
            let p_hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, q_hi);
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(p_lo), xd_lo);
            let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_hi), xd_hi, t);
            let dg = _mm512_permutexvar_ps(_mm512_set1_epi32(j as i32), d);
            acc[j & 1] = _mm512_fmadd_ps(t, dg, acc[j & 1]);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) + _mm512_reduce_add_ps(corr)
}
