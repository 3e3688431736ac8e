//! AVX2 kernels: `vpmaddubsw` (u8 x i8 -> pairs summed in i16) then `vpmaddwd` by ones (-> i32
//! lanes of 4 products, matching the activation lanes), one 256-bit vector per 32-weight
//! block, scaled by `d * xd_lane` and summed in f32 with FMA.
//!
//! `vpmaddubsw` saturates at 32767: Q4 codes (<= 15) x |q| <= 127 stay far below, and Q8_0
//! uses `|c|` against `sign(q, c)`, at most 2 x 128 x 127 = 32512.
use crate::kernels::act::{ActRow, LANE};
use crate::kernels::pack::{WRow, GROUP};
use crate::kernels::QK;
use std::arch::x86_64::*;

/// The sum of the 8 lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Lane scales of block `b` times the weight scale `d`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lane_scales(x: &ActRow<'_>, b: usize, d: f32) -> __m256 {
    let xd = &x.d[b * (QK / LANE)..(b + 1) * (QK / LANE)];
    // SAFETY: `xd` holds exactly 8 f32.
    _mm256_mul_ps(unsafe { _mm256_loadu_ps(xd.as_ptr()) }, _mm256_set1_ps(d))
}

/// `u8 c x i8 q` summed in i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8i8(c: __m256i, q: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(c, q), _mm256_set1_epi16(1))
}

/// Low and high nibbles of 16 bytes as one vector (GGUF order: weights 0..16, 16..32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles_128(c: __m128i) -> __m256i {
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(c, 4), m), _mm_and_si128(c, m))
}

/// Half `h` (0 or 1) of whole group `g`: bytes `64g + 32h ..` hold block `4g + h` in their low
/// nibbles and `4g + 2 + h` in their high ones. Returns the two blocks' `u8 x i8` i32 lanes.
///
/// # Safety
/// Group `g`'s 64 code bytes and 128 activations must be within `cp` and `qp`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_half(cp: *const u8, qp: *const i8, g: usize, h: usize) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0F);
    let (b_lo, b_hi) = (g * GROUP + h, g * GROUP + 2 + h);
    // SAFETY: in bounds (caller).
    let (c, q_lo, q_hi) = unsafe {
        (
            _mm256_loadu_si256(cp.add(g * 64 + h * 32) as *const __m256i),
            _mm256_loadu_si256(qp.add(b_lo * QK) as *const __m256i),
            _mm256_loadu_si256(qp.add(b_hi * QK) as *const __m256i),
        )
    };
    let lo = _mm256_and_si256(c, m4);
    let hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);
    (dot_u8i8(lo, q_lo), dot_u8i8(hi, q_hi))
}

/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` and `x` must have the same number of blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let nb = w.scales.len();
    assert!(w.codes.len() == nb * QK && x.q.len() == nb * QK && x.d.len() == nb * QK / LANE);
    let (cp, qp) = (w.codes.as_ptr(), x.q.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    for b in 0..nb {
        // SAFETY: block b is within both rows (asserted lengths).
        let (c, q) = unsafe {
            (
                _mm256_loadu_si256(cp.add(b * QK) as *const __m256i),
                _mm256_loadu_si256(qp.add(b * QK) as *const __m256i),
            )
        };
        let p = dot_u8i8(_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c));
        let ds = lane_scales(&x, b, w.scales[b].to_f32());
        acc[b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), ds, acc[b & 1]);
    }
    hsum_ps(_mm256_add_ps(acc[0], acc[1]))
}

/// Q4_0 (`MIN = false`) or Q4_1 (`MIN = true`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` and `x` must have the same number of blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4<const MIN: bool>(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let nb = w.scales.len();
    assert!(w.codes.len() == nb * 16 && x.q.len() == nb * QK && x.d.len() == nb * QK / LANE && x.s.len() == nb);
    assert!(!MIN || w.mins.len() == nb);
    let whole = nb / GROUP * GROUP;
    let (cp, qp) = (w.codes.as_ptr(), x.q.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut corr = 0f32;
    let mut add = |acc: &mut __m256, b: usize, p: __m256i| {
        let d = w.scales[b].to_f32();
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), lane_scales(&x, b, d), *acc);
        corr += if MIN { w.mins[b].to_f32() } else { -8.0 * d } * x.s[b];
    };
    for g in 0..whole / GROUP {
        for h in 0..2 {
            // SAFETY: blocks of whole groups are within both rows (asserted lengths).
            let (p_lo, p_hi) = unsafe { group_half(cp, qp, g, h) };
            add(&mut acc[0], g * GROUP + h, p_lo);
            add(&mut acc[1], g * GROUP + 2 + h, p_hi);
        }
    }
    for b in whole..nb {
        // SAFETY: tail block b is within both rows (asserted lengths).
        let (c, q) = unsafe {
            (
                _mm_loadu_si128(cp.add(b * 16) as *const __m128i),
                _mm256_loadu_si256(qp.add(b * QK) as *const __m256i),
            )
        };
        add(&mut acc[0], b, dot_u8i8(nibbles_128(c), q));
    }
    hsum_ps(_mm256_add_ps(acc[0], acc[1])) + corr
}

/// Q4_1G: Q4_1 values with one scale and minimum per group of [`GROUP`] blocks.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` and `x` must have the same number of blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1g(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let ng = w.scales.len();
    let nb = ng * GROUP;
    assert!(w.codes.len() == nb * 16 && x.q.len() == nb * QK && x.d.len() == nb * QK / LANE && x.s.len() == nb);
    assert!(w.mins.len() == ng);
    let (cp, qp) = (w.codes.as_ptr(), x.q.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut corr = 0f32;
    let xd = |b: usize| {
        // SAFETY: block b's 8 lane scales exist (asserted lengths; b < nb).
        unsafe { _mm256_loadu_ps(x.d.as_ptr().add(b * (QK / LANE))) }
    };
    for g in 0..ng {
        // Per group: the lane-scaled sums of its four blocks, then the group's scale once.
        let mut t = [_mm256_setzero_ps(); 2];
        for h in 0..2 {
            // SAFETY: the group's blocks are within both rows (asserted lengths).
            let (p_lo, p_hi) = unsafe { group_half(cp, qp, g, h) };
            t[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p_lo), xd(g * GROUP + h), t[0]);
            t[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p_hi), xd(g * GROUP + 2 + h), t[1]);
        }
        let d = _mm256_set1_ps(w.scales[g].to_f32());
        acc[g & 1] = _mm256_fmadd_ps(_mm256_add_ps(t[0], t[1]), d, acc[g & 1]);
        let xs = &x.s[g * GROUP..(g + 1) * GROUP];
        corr += w.mins[g].to_f32() * ((xs[0] + xs[1]) + (xs[2] + xs[3]));
    }
    hsum_ps(_mm256_add_ps(acc[0], acc[1])) + corr
}
