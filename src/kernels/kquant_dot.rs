//! Decode dot products for GGUF Q4_K and Q6_K rows, read in place from the file's bytes.
//!
//! The activations are quantized as llama.cpp's `Q8_K`: one scale per 256 values and the sums of
//! each 16 codes ([`K8Acts`]). One scale per super-block keeps the whole super-block in integers
//! (`vpmaddubsw` pairs, then `vpdpwssd` with the 6- or 8-bit weight scales), and a single float
//! multiply-add per super-block. A first version on the 4-value activation lanes of
//! [`super::act`] needed a convert, a scale multiply and an FMA per 16 lanes: it decoded the 7B
//! shape's Q4_K_M at 0.8-0.9x candle's AVX2 kernels, from the extra instructions. candle's
//! kernels use the same `Q8_K` activations, so the numbers stay what they were.
//! Where the CPU lacks AVX-512 VNNI, callers keep candle's kernels.
//!
//! * Q4_K (144 bytes per 256 weights; layout in [`super::kquant`]): 64 bytes of `qs` hold 128
//!   weights: low nibbles weights 0..32 and 64..96, high nibbles 32..64 and 96..128. The
//!   activations of a Q4_K product are stored in that order ([`K8Acts::new`]), so masking and
//!   shifting one 64-byte load give two vectors of codes that meet their activations directly.
//!   Sub-block `j` (32 weights) has `w = d * sc_j * q - dmin * m_j`; the minimum term is
//!   `dmin * m_j * (sum of the sub-block's activations)` from the 16-sums.
//! * Q6_K (210 bytes per 256 weights; ggml `block_q6_K`): `ql[128]`, `qh[64]`, `scales[16]`
//!   (i8), f16 `d`; `w = d * sc[i / 16] * (q - 32)`. Per half of 128 weights, byte `l` of `ql`
//!   gives weights `l` (low nibble) and `l + 64` (high nibble); byte `l` of `qh` adds the
//!   codes' bits 4-5 for weights `l`, `l + 32`, `l + 64`, `l + 96` in its bit pairs. The `- 32`
//!   is taken off once per super-block through the 16-sums.
use super::kquant::{scales_and_mins, QK_K};
use super::matvec::{by_weight_rows, rows_per_task};
use super::{abs_max, low_byte};
use rayon::prelude::*;

/// Activations per 16-sum.
const SUM: usize = 16;

/// The k-quant formats with decode kernels here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KDecode {
    Q4K,
    Q6K,
}

impl KDecode {
    pub const fn block_bytes(self) -> usize {
        match self {
            KDecode::Q4K => 144,
            KDecode::Q6K => 210,
        }
    }

    /// The fastest dot product for this CPU, `None` without AVX-512 VNNI (or off x86-64).
    pub fn best(self) -> Option<KDotFn> {
        #[cfg(target_arch = "x86_64")]
        if super::Kernel::Avx512Vnni.is_available() {
            return Some(match self {
                KDecode::Q4K => avx512::dot_q4k,
                KDecode::Q6K => avx512::dot_q6k,
            });
        }
        None
    }

    /// The portable kernel (tests' reference, and the check of the SIMD one).
    pub fn scalar(self) -> KDotFn {
        match self {
            KDecode::Q4K => scalar_q4k,
            KDecode::Q6K => scalar_q6k,
        }
    }
}

/// Where natural position `i` (0..256) of a super-block's activations is stored for `format`.
#[inline]
fn stored_at(format: KDecode, i: usize) -> usize {
    match format {
        // Per 128: [0..32, 64..96, 32..64, 96..128] (see the module docs).
        KDecode::Q4K => {
            let (h, k) = (i / 128 * 128, i % 128);
            h + match k / 32 {
                0 => k,
                1 => k + 32,
                2 => k - 32,
                _ => k,
            }
        }
        KDecode::Q6K => i,
    }
}

/// Rows of activations quantized as `Q8_K` for products with `format` weights.
#[derive(Clone, Debug)]
pub struct K8Acts {
    pub format: KDecode,
    pub cols: usize,
    /// `[n, cols]` codes, each super-block in `format`'s order.
    pub q: Vec<i8>,
    /// `[n, cols / 256]` scales.
    pub d: Vec<f32>,
    /// `[n, cols / 16]` sums of each 16 codes, in natural order.
    pub sums: Vec<i16>,
}

/// One row of [`K8Acts`].
#[derive(Clone, Copy)]
pub struct K8Row<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [i16],
}

impl K8Acts {
    /// Quantize `x` (`[n, cols]`, `cols` a positive multiple of 256).
    pub fn new(x: &[f32], cols: usize, format: KDecode) -> Result<Self, String> {
        if cols == 0 || !cols.is_multiple_of(QK_K) || !x.len().is_multiple_of(cols) {
            return Err(format!("{} activations in rows of {cols}", x.len()));
        }
        let nsb = x.len() / QK_K;
        let mut a = K8Acts {
            format,
            cols,
            q: vec![0; x.len()],
            d: vec![0.0; nsb],
            sums: vec![0; x.len() / SUM],
        };
        let mut nat = [0i8; QK_K];
        for (sb, xs) in x.chunks_exact(QK_K).enumerate() {
            let amax = abs_max(xs);
            a.d[sb] = amax / 127.0;
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            for (q, &v) in nat.iter_mut().zip(xs) {
                *q = low_byte((v * id).round().clamp(-127.0, 127.0)) as i8;
            }
            for (g, s) in a.sums[sb * QK_K / SUM..(sb + 1) * QK_K / SUM].iter_mut().enumerate() {
                *s = nat[g * SUM..(g + 1) * SUM].iter().map(|&q| q as i16).sum();
            }
            let dst = &mut a.q[sb * QK_K..(sb + 1) * QK_K];
            for (i, &q) in nat.iter().enumerate() {
                dst[stored_at(format, i)] = q;
            }
        }
        Ok(a)
    }

    pub fn rows(&self) -> usize {
        self.q.len() / self.cols
    }

    pub fn row(&self, r: usize) -> K8Row<'_> {
        let (c, nsb) = (self.cols, self.cols / QK_K);
        K8Row {
            q: &self.q[r * c..(r + 1) * c],
            d: &self.d[r * nsb..(r + 1) * nsb],
            sums: &self.sums[r * c / SUM..(r + 1) * c / SUM],
        }
    }
}

/// A dot product of one k-quant row's bytes and one activation row. Unsafe because the SIMD
/// variant needs its CPU features: take it from [`KDecode::best`], which checks them.
pub type KDotFn = unsafe fn(&[u8], K8Row<'_>) -> f32;

/// `y [n, rows] = x [n, cols] W^T` for a `[rows, cols]` k-quant matrix in GGUF bytes `data`.
/// An error (not a panic) for bytes or inputs that do not fit the shape or format.
///
/// # Safety
/// `dot` must come from [`KDecode::best`] or [`KDecode::scalar`] for `x.format`.
pub unsafe fn matvec(data: &[u8], rows: usize, cols: usize, x: &K8Acts, dot: KDotFn) -> Result<Vec<f32>, String> {
    let format = x.format;
    if cols == 0 || !cols.is_multiple_of(QK_K) {
        return Err(format!("[{rows}, {cols}]: rows must be a positive multiple of {QK_K}"));
    }
    let row_bytes = cols / QK_K * format.block_bytes();
    if data.len() != rows * row_bytes {
        return Err(format!(
            "{} bytes for [{rows}, {cols}] {format:?} (expected {})",
            data.len(),
            rows * row_bytes
        ));
    }
    if x.cols != cols {
        return Err(format!("input rows of {} values for [{rows}, {cols}]", x.cols));
    }
    let n = x.rows();
    let mut y = vec![0f32; n * rows];
    let chunk = rows_per_task(rows, data.len());
    let row = |o: usize| &data[o * row_bytes..(o + 1) * row_bytes];
    if n == 1 {
        let xr = x.row(0);
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, yc)| {
            for (k, v) in yc.iter_mut().enumerate() {
                // SAFETY: the caller guarantees `dot` suits this CPU and format.
                *v = unsafe { dot(row(c * chunk + k), xr) };
            }
        });
    } else if n > 1 {
        // SAFETY: as above.
        by_weight_rows(rows, n, chunk, &mut y, |o, r| unsafe { dot(row(o), x.row(r)) });
    }
    Ok(y)
}

/// The little-endian f16 at byte `at`, as f32.
fn f16_at(b: &[u8], at: usize) -> f32 {
    super::pack::f16_at(b, at).to_f32()
}

/// Q4_K, one value at a time.
///
/// # Safety
/// None needed (safe code behind the [`KDotFn`] signature).
unsafe fn scalar_q4k(row: &[u8], x: K8Row<'_>) -> f32 {
    let nsb = row.len() / 144;
    assert!(row.len() == nsb * 144 && x.q.len() == nsb * QK_K && x.d.len() == nsb);
    let mut total = 0f32;
    for (sb, blk) in row.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        let sm = scales_and_mins(&blk[4..16]);
        let xq = &x.q[sb * QK_K..(sb + 1) * QK_K];
        let (mut main, mut mins) = (0i32, 0i32);
        for j in 0..8 {
            let qs = &blk[16 + (j / 2) * 32..16 + (j / 2) * 32 + 32];
            let shift = 4 * (j % 2);
            let dot: i32 = (0..32)
                .map(|l| ((qs[l] >> shift) & 0xF) as i32 * xq[stored_at(KDecode::Q4K, j * 32 + l)] as i32)
                .sum();
            main += sm[j] as i32 * dot;
            let s = x.sums[sb * 16 + 2 * j] as i32 + x.sums[sb * 16 + 2 * j + 1] as i32;
            mins += sm[8 + j] as i32 * s;
        }
        total += x.d[sb] * (d * main as f32 - dmin * mins as f32);
    }
    total
}

/// Q6_K code of weight `i` (0..256) of a super-block, 0..=63.
fn q6k_code(blk: &[u8], i: usize) -> i32 {
    let (half, k) = (i / 128, i % 128);
    let (ql, qh) = (
        &blk[64 * half..64 * half + 64],
        &blk[128 + 32 * half..128 + 32 * half + 32],
    );
    let low = if k < 64 { ql[k] & 0xF } else { ql[k - 64] >> 4 };
    let high = (qh[k % 32] >> (2 * (k / 32))) & 3;
    (low | (high << 4)) as i32
}

/// Q6_K, one value at a time.
///
/// # Safety
/// None needed (safe code behind the [`KDotFn`] signature).
unsafe fn scalar_q6k(row: &[u8], x: K8Row<'_>) -> f32 {
    let nsb = row.len() / 210;
    assert!(row.len() == nsb * 210 && x.q.len() == nsb * QK_K && x.d.len() == nsb);
    let mut total = 0f32;
    for (sb, blk) in row.chunks_exact(210).enumerate() {
        let mut sum = 0i32;
        for g in 0..16 {
            let dot: i32 = (g * 16..g * 16 + 16)
                .map(|i| (q6k_code(blk, i) - 32) * x.q[sb * QK_K + i] as i32)
                .sum();
            sum += blk[192 + g] as i8 as i32 * dot;
        }
        total += x.d[sb] * f16_at(blk, 208) * sum as f32;
    }
    total
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{f16_at, scales_and_mins, K8Row, QK_K};
    use crate::kernels::dot::avx2::hsum_ps;
    use std::arch::x86_64::*;

    /// Bytes ahead the kernels prefetch: 32 Q4_K super-blocks. On the 7B-shape Q4_K_M file,
    /// 4,608 bytes gave 44-48 t/s at 1 thread against 38 with 576, and 59-66 against 53-62 at
    /// 2 threads; 9,216 was no better.
    const PREFETCH: usize = 4608;

    /// Q4_K, per 64-byte load p (0, 1): low nibbles are sub-blocks 4p and 4p + 2, high nibbles
    /// 4p + 1 and 4p + 3, 16 i16 pair lanes each; indices into `[scales 0..8, minimums 0..8]`.
    #[rustfmt::skip]
    const Q4K_IDX: [[i16; 32]; 4] = [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3],
        [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6],
        [5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
    ];
    /// Q4_K minimums spread over the 16-sums: lane k takes minimum 8 + k / 2.
    const Q4K_MIN_IDX: [i16; 16] = [8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15];
    /// Q6_K, 64-weight chunk c: i16 pair lane l covers weights 64c + 2l.., scale 4c + l / 8.
    #[rustfmt::skip]
    const Q6K_IDX: [[i16; 32]; 4] = [
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3],
        [4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7],
        [8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11],
        [12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13, 14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15],
    ];

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    fn idx(v: &[i16; 32]) -> __m512i {
        // SAFETY: 64 bytes.
        unsafe { _mm512_loadu_si512(v.as_ptr() as *const __m512i) }
    }

    /// Q4_K.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL/VNNI, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub unsafe fn dot_q4k(row: &[u8], x: K8Row<'_>) -> f32 {
        let nsb = row.len() / 144;
        assert!(row.len() == nsb * 144 && x.q.len() == nsb * QK_K && x.d.len() == nsb && x.sums.len() == nsb * 16);
        let (rp, qp, sp) = (row.as_ptr(), x.q.as_ptr(), x.sums.as_ptr());
        let m4 = _mm512_set1_epi8(0x0F);
        let ix = [idx(&Q4K_IDX[0]), idx(&Q4K_IDX[1]), idx(&Q4K_IDX[2]), idx(&Q4K_IDX[3])];
        // SAFETY: 32 bytes.
        let min_ix = unsafe { _mm256_loadu_si256(Q4K_MIN_IDX.as_ptr() as *const __m256i) };
        let mut acc = _mm512_setzero_ps();
        let mut mins = _mm256_setzero_ps();
        for sb in 0..nsb {
            let at = sb * 144;
            // A block spans up to 3 cache lines; prefetch each (one per block left half the
            // lines to the hardware prefetcher).
            for line in [0, 64, 128] {
                _mm_prefetch::<_MM_HINT_T0>(rp.wrapping_add(at + PREFETCH + line) as *const i8);
            }
            let xd = x.d[sb];
            let (d, dmin) = (f16_at(row, at) * xd, f16_at(row, at + 2) * xd);
            let sm = scales_and_mins(&row[at + 4..at + 16]);
            // SAFETY: the super-block's 144 bytes, 256 codes and 16 sums exist (asserted
            // lengths); `sm` is 16 bytes.
            unsafe {
                let sm16 = _mm256_cvtepu8_epi16(_mm_loadu_si128(sm.as_ptr() as *const __m128i));
                let sums = _mm256_loadu_si256(sp.add(sb * 16) as *const __m256i);
                let m = _mm256_madd_epi16(sums, _mm256_permutexvar_epi16(min_ix, sm16));
                mins = _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(dmin), mins);
                let sm512 = _mm512_castsi256_si512(sm16);
                let mut isum = _mm512_setzero_si512();
                for p in 0..2 {
                    let c = _mm512_loadu_si512(rp.add(at + 16 + 64 * p) as *const __m512i);
                    let lo = _mm512_and_si512(c, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), m4);
                    let q_lo = _mm512_loadu_si512(qp.add(sb * QK_K + 128 * p) as *const __m512i);
                    let q_hi = _mm512_loadu_si512(qp.add(sb * QK_K + 128 * p + 64) as *const __m512i);
                    let s_lo = _mm512_permutexvar_epi16(ix[2 * p], sm512);
                    let s_hi = _mm512_permutexvar_epi16(ix[2 * p + 1], sm512);
                    isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(lo, q_lo), s_lo);
                    isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(hi, q_hi), s_hi);
                }
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d), acc);
            }
        }
        _mm512_reduce_add_ps(acc) - hsum_ps(mins)
    }

    /// Q6_K.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F/BW/VL/VNNI, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
    pub unsafe fn dot_q6k(row: &[u8], x: K8Row<'_>) -> f32 {
        let nsb = row.len() / 210;
        assert!(row.len() == nsb * 210 && x.q.len() == nsb * QK_K && x.d.len() == nsb && x.sums.len() == nsb * 16);
        let (rp, qp, sp) = (row.as_ptr(), x.q.as_ptr(), x.sums.as_ptr());
        let (m4, m2) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(3));
        let ix = [idx(&Q6K_IDX[0]), idx(&Q6K_IDX[1]), idx(&Q6K_IDX[2]), idx(&Q6K_IDX[3])];
        let mut acc = _mm512_setzero_ps();
        let mut offs = _mm256_setzero_ps();
        for sb in 0..nsb {
            let at = sb * 210;
            for line in [0, 64, 128, 192] {
                _mm_prefetch::<_MM_HINT_T0>(rp.wrapping_add(at + PREFETCH + line) as *const i8);
            }
            let d = f16_at(row, at + 208) * x.d[sb];
            // SAFETY: the super-block's 210 bytes, 256 codes and 16 sums exist (asserted
            // lengths).
            unsafe {
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(rp.add(at + 192) as *const __m128i));
                // The codes' offset: 32 * sum over the 16-groups of scale * sum of codes.
                let sums = _mm256_loadu_si256(sp.add(sb * 16) as *const __m256i);
                let off = _mm256_madd_epi16(sums, sc16);
                offs = _mm256_fmadd_ps(_mm256_cvtepi32_ps(off), _mm256_set1_ps(32.0 * d), offs);
                let sc512 = _mm512_castsi256_si512(sc16);
                let mut isum = _mm512_setzero_si512();
                for half in 0..2 {
                    let ql = _mm512_loadu_si512(rp.add(at + 64 * half) as *const __m512i);
                    let qh = _mm256_loadu_si256(rp.add(at + 128 + 32 * half) as *const __m256i);
                    // Bit pairs 0-1 for weights 0..32, 2-3 for 32..64 (and, shifted by 4, 4-5 and
                    // 6-7 for 64..128).
                    let qh = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
                    for part in 0..2 {
                        let (low, high) = if part == 0 {
                            (ql, qh)
                        } else {
                            (_mm512_srli_epi16(ql, 4), _mm512_srli_epi16(qh, 4))
                        };
                        let codes = _mm512_or_si512(
                            _mm512_and_si512(low, m4),
                            _mm512_slli_epi16(_mm512_and_si512(high, m2), 4),
                        );
                        let c = 2 * half + part;
                        let q = _mm512_loadu_si512(qp.add(sb * QK_K + 64 * c) as *const __m512i);
                        let s = _mm512_permutexvar_epi16(ix[c], sc512);
                        isum = _mm512_dpwssd_epi32(isum, _mm512_maddubs_epi16(codes, q), s);
                    }
                }
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d), acc);
            }
        }
        _mm512_reduce_add_ps(acc) - hsum_ps(offs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use rand::{Rng, SeedableRng};

    fn random(ty: GgmlDType, rows: usize, cols: usize, seed: u64) -> (QTensor, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Rows of different magnitudes and a few large values, so scales and minimums vary.
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let big = if i % 97 == 0 { 8.0 } else { 1.0 };
                big * rng.gen_range(-1.0f32..1.0) * (1 + i / cols) as f32 + (i % 5) as f32 * 0.05
            })
            .collect();
        crate::kernels::kquant::tests::quantized(ty, rows, cols, v)
    }

    /// Every kernel on this CPU against the f64 product of candle's dequantized weights and the
    /// dequantized activations (so only f32 summation order may differ).
    #[test]
    fn kernels_match_candles_dequantization() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (ty, f) in [(GgmlDType::Q4K, KDecode::Q4K), (GgmlDType::Q6K, KDecode::Q6K)] {
            // 1, 2, 3 and 16 super-blocks (4096 columns), 1-3 activation rows.
            for (sbs, rows, n) in [(1usize, 3usize, 1usize), (2, 5, 2), (3, 7, 3), (16, 4, 1)] {
                let cols = sbs * QK_K;
                let (q, deq) = random(ty, rows, cols, (sbs * 10 + rows) as u64);
                let data = q.data().unwrap();
                let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                let xa = K8Acts::new(&x, cols, f).unwrap();
                // The activations as the kernels see them, in natural order.
                let xq: Vec<f32> = (0..n * cols)
                    .map(|i| {
                        let (sb, k) = (i / QK_K, i % QK_K);
                        xa.q[sb * QK_K + stored_at(f, k)] as f32 * xa.d[sb]
                    })
                    .collect();
                let mut kernels = vec![("scalar", f.scalar())];
                if let Some(k) = f.best() {
                    kernels.push(("simd", k));
                }
                for (name, dot) in kernels {
                    // SAFETY: the kernels come from `best` (which checked the CPU) or `scalar`.
                    let y = unsafe { matvec(&data, rows, cols, &xa, dot) }.unwrap();
                    crate::kernels::tests::assert_f64_product(
                        |o, i| deq[o * cols + i] as f64,
                        &xq,
                        &y,
                        rows,
                        cols,
                        &format!("{f:?} {name}"),
                    );
                }
            }
        }
    }

    #[test]
    fn activations_round_trip_and_sum() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        for f in [KDecode::Q4K, KDecode::Q6K] {
            let a = K8Acts::new(&x, 256, f).unwrap();
            assert_eq!((a.rows(), a.d.len(), a.sums.len()), (2, 2, 32));
            for (i, v) in x.iter().enumerate() {
                let (sb, k) = (i / QK_K, i % QK_K);
                let q = a.q[sb * QK_K + stored_at(f, k)];
                assert!((v - q as f32 * a.d[sb]).abs() <= 0.5 * a.d[sb] * 1.0001, "{f:?} {i}");
            }
            for (g, s) in a.sums.iter().enumerate() {
                let (sb, k0) = (g * SUM / QK_K, g * SUM % QK_K);
                let want: i16 = (k0..k0 + SUM).map(|k| a.q[sb * QK_K + stored_at(f, k)] as i16).sum();
                assert_eq!(*s, want, "{f:?} sum {g}");
            }
        }
        // Q4_K's order is a permutation of each 128.
        let mut seen: Vec<usize> = (0..256).map(|i| stored_at(KDecode::Q4K, i)).collect();
        seen.sort();
        assert_eq!(seen, (0..256).collect::<Vec<_>>());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let xa = K8Acts::new(&[0.5; 256], 256, KDecode::Q4K).unwrap();
        let dot = KDecode::Q4K.scalar();
        // SAFETY: the scalar kernel needs no CPU features.
        unsafe {
            assert!(matvec(&[0; 144], 1, 256, &xa, dot).is_ok());
            assert!(matvec(&[0; 143], 1, 256, &xa, dot).is_err());
            assert!(matvec(&[0; 288], 1, 512, &xa, dot).is_err());
        }
        assert!(K8Acts::new(&[0.5; 128], 128, KDecode::Q6K).is_err());
        assert!(K8Acts::new(&[0.5; 300], 256, KDecode::Q6K).is_err());
    }
}
