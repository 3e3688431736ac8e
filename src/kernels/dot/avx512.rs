//! AVX-512 VNNI kernels: `vpdpbusd` multiplies 64 u8 codes by 64 i8 activations and sums
//! each 4 into i32 lanes, so one 512-bit vector covers two blocks (lanes 0..8 and 8..16). Per 16
//! blocks the f16 scales are converted at once (`vcvtph2ps`), multiplied by the activation
//! scales, and each block pair's two scales are spread over its lanes with one `vpermps`.
//!
//! Q8_0 codes are i8: flipping the sign bit gives `c + 128` as u8, and the extra
//! `128 * sum(q)` per block is taken off through `-128 * d * xs` (see [`super::`]).
use crate::kernels::act::ActRow;
use crate::kernels::pack::{WRow, GROUP};
use crate::kernels::QK;
use std::arch::x86_64::*;

/// Blocks whose scales are loaded together.
const CHUNK: usize = 16;

/// Lane indices spreading scales `2j` and `2j + 1` over lanes 0..8 and 8..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pair_idx(j: usize) -> __m512i {
    let base = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_add_epi32(base, _mm512_set1_epi32(2 * j as i32))
}

/// `i32` sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn hsum_epi32_256(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
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

/// Scales of blocks `b..b+n` (n <= 16), zero past n: (d, d * xd, xs).
///
/// # Safety
/// Blocks `b..b+n` must exist in `w` and `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales(w: &WRow<'_>, x: &ActRow<'_>, b: usize, n: usize) -> (__m512, __m512, __m512) {
    let k = first(n);
    // SAFETY: masked loads touch only lanes < n, within the rows (caller).
    unsafe {
        let d = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, w.scales.as_ptr().add(b) as *const i16));
        let xd = _mm512_maskz_loadu_ps(k, x.d.as_ptr().add(b));
        let xs = _mm512_maskz_loadu_ps(k, x.s.as_ptr().add(b));
        (d, _mm512_mul_ps(d, xd), xs)
    }
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; `w` and `x` must have the same
/// number of blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let nb = w.scales.len();
    assert!(w.codes.len() == nb * QK && x.q.len() == nb * QK && x.d.len() == nb && x.s.len() == nb);
    let (cp, qp) = (w.codes.as_ptr(), x.q.as_ptr());
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut corr = _mm512_setzero_ps();
    let mut tail = 0f32;
    for b in (0..nb).step_by(CHUNK) {
        let n = CHUNK.min(nb - b);
        // SAFETY: blocks b..b+n exist.
        let (d, ds, xs) = unsafe { scales(&w, &x, b, n) };
        corr = _mm512_fmadd_ps(d, xs, corr);
        for j in 0..n / 2 {
            let at = (b + 2 * j) * QK;
            // SAFETY: blocks b+2j and b+2j+1 exist.
            let (c, q) = unsafe {
                (
                    _mm512_loadu_si512(cp.add(at) as *const __m512i),
                    _mm512_loadu_si512(qp.add(at) as *const __m512i),
                )
            };
            let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(c, flip), q);
            let s = _mm512_permutexvar_ps(pair_idx(j), ds);
            acc[j & 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), s, acc[j & 1]);
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
            let p = hsum_epi32_256(_mm256_dpbusd_epi32(_mm256_setzero_si256(), c, q));
            tail += w.scales[bl].to_f32() * x.d[bl] * p as f32;
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
    assert!(w.codes.len() == nb * 16 && x.q.len() == nb * QK && x.d.len() == nb && x.s.len() == nb);
    assert!(!MIN || w.mins.len() == nb);
    let whole = nb / GROUP * GROUP;
    let (cp, qp) = (w.codes.as_ptr(), x.q.as_ptr());
    let m4 = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut corr = _mm512_setzero_ps();
    for b in (0..whole).step_by(CHUNK) {
        let n = CHUNK.min(whole - b);
        // SAFETY: blocks b..b+n exist.
        let (d, ds, xs) = unsafe { scales(&w, &x, b, n) };
        corr = if MIN {
            // SAFETY: as for the scales.
            let m = unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first(n), w.mins.as_ptr().add(b) as *const i16)) };
            _mm512_fmadd_ps(m, xs, corr)
        } else {
            _mm512_fmadd_ps(d, xs, corr)
        };
        for g in 0..n / GROUP {
            let bg = b + g * GROUP;
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
            let s_lo = _mm512_permutexvar_ps(pair_idx(2 * g), ds);
            let s_hi = _mm512_permutexvar_ps(pair_idx(2 * g + 1), ds);
            acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_lo), s_lo, acc[0]);
            acc[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_hi), s_hi, acc[1]);
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
        let p = hsum_epi32_256(_mm256_dpbusd_epi32(_mm256_setzero_si256(), c, q));
        let d = w.scales[b].to_f32();
        total += d * x.d[b] * p as f32;
        total += if MIN { w.mins[b].to_f32() * x.s[b] } else { -8.0 * d * x.s[b] };
    }
    total
}
