//! `y = x W^T` for f16 / bf16 weights and f32 activations, the weights kept at 2 bytes each.
//!
//! Why: upcasting half weights to f32 at load doubles the bytes every generated token streams
//! (and the memory), and candle's CPU matmul on bf16 converts the whole weight on every call.
//! Decoding is bandwidth-bound, so the kernels here read 2 bytes a weight and widen in
//! registers (F16C `vcvtph2ps`; a bf16 is the top half of an f32). Arithmetic is f32, as with the
//! upcast weight: only the summation order differs.
use super::matvec::{by_weight_rows, rows_per_task};
use super::Kernel;

/// How the 16 bits of a weight are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfKind {
    F16,
    Bf16,
}

impl HalfKind {
    pub fn widen(self, b: u16) -> f32 {
        match self {
            HalfKind::F16 => half::f16::from_bits(b).to_f32(),
            HalfKind::Bf16 => f32::from_bits((b as u32) << 16),
        }
    }
}

/// A row-major `[rows, cols]` half-precision matrix.
pub struct HalfMatrix {
    pub kind: HalfKind,
    pub rows: usize,
    pub cols: usize,
    bits: Vec<u16>,
    kernel: Kernel,
}

impl std::fmt::Debug for HalfMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HalfMatrix {{ {:?} [{}, {}], {:?} }}",
            self.kind, self.rows, self.cols, self.kernel
        )
    }
}

impl HalfMatrix {
    /// Wrap `bits` (`rows * cols` values), using the best kernel for this CPU.
    pub fn new(kind: HalfKind, rows: usize, cols: usize, bits: Vec<u16>) -> Result<Self, String> {
        Self::with_kernel(kind, rows, cols, bits, Kernel::best())
    }

    /// As [`Self::new`] with a given kernel (an error if this CPU lacks it).
    pub fn with_kernel(
        kind: HalfKind,
        rows: usize,
        cols: usize,
        bits: Vec<u16>,
        kernel: Kernel,
    ) -> Result<Self, String> {
        if bits.len() != rows * cols {
            return Err(format!("{} values for a [{rows}, {cols}] matrix", bits.len()));
        }
        if !kernel.is_available() {
            return Err(format!("this CPU cannot run the {kernel:?} kernels"));
        }
        Ok(HalfMatrix {
            kind,
            rows,
            cols,
            bits,
            kernel,
        })
    }

    pub fn row(&self, r: usize) -> &[u16] {
        &self.bits[r * self.cols..(r + 1) * self.cols]
    }

    pub fn bytes(&self) -> usize {
        self.bits.len() * 2
    }

    /// Row `r` widened to f32 into `dst` (`cols` values). Vectorised: a prompt widens every
    /// weight once per call, and one value at a time that cost more than the GEMM.
    pub fn widen_row(&self, r: usize, dst: &mut [f32]) {
        let (w, dst) = (self.row(r), &mut dst[..self.cols]);
        #[cfg(target_arch = "x86_64")]
        if self.kernel == Kernel::Avx512Vnni {
            // SAFETY: AVX-512 F checked in `with_kernel`; both slices hold `cols` values.
            unsafe { avx512::widen(self.kind, w, dst) };
            return;
        }
        for (d, &b) in dst.iter_mut().zip(w) {
            *d = self.kind.widen(b);
        }
    }

    fn dot(&self, w: &[u16], x: &[f32]) -> f32 {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the kernel was checked against the CPU in `with_kernel`; lengths are equal.
            Kernel::Avx512Vnni => unsafe { avx512::dot(self.kind, w, x) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Kernel::Avx2 => unsafe { avx2::dot(self.kind, w, x) },
            _ => dot_scalar(self.kind, w, x),
        }
    }

    /// `y [n, rows] = x [n, cols] W^T`, output rows split over rayon threads. Each weight row
    /// is used for all `n` input rows while it is in cache. One row at a time, so one weight
    /// stream per thread: four rows sharing each `x` load (four streams) decoded 5-13% slower on
    /// Zen 4 (7B-shape F16, 1 and 2 threads).
    pub fn matvec(&self, x: &[f32], n: usize, y: &mut [f32]) {
        assert!(x.len() == n * self.cols && y.len() == n * self.rows);
        let chunk = rows_per_task(self.rows, self.bytes());
        let cols = self.cols;
        by_weight_rows(self.rows, n, chunk, y, |o, r| {
            self.dot(self.row(o), &x[r * cols..(r + 1) * cols])
        });
    }
}

/// The reference: 16 independent lanes (so the compiler can vectorise), then their sum.
pub fn dot_scalar(kind: HalfKind, w: &[u16], x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (wc, xc) = (w.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(&b, &v)| kind.widen(b) * v)
        .sum();
    for (wb, xb) in wc.zip(xc) {
        for l in 0..16 {
            acc[l] = kind.widen(wb[l]).mul_add(xb[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::HalfKind;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn widen16(kind: HalfKind, p: *const u16) -> __m512 {
        // SAFETY: the caller reads 16 values from `p`.
        let h = unsafe { _mm256_loadu_si256(p as *const __m256i) };
        match kind {
            HalfKind::F16 => _mm512_cvtph_ps(h),
            HalfKind::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)),
        }
    }

    /// `dst = widen(w)`.
    ///
    /// # Safety
    /// AVX-512 F; `w.len() == dst.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn widen(kind: HalfKind, w: &[u16], dst: &mut [f32]) {
        assert_eq!(w.len(), dst.len());
        let n = w.len() / 16 * 16;
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 <= n on both slices.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(i), widen16(kind, w.as_ptr().add(i))) };
        }
        for (d, &b) in dst[n..].iter_mut().zip(&w[n..]) {
            *d = kind.widen(b);
        }
    }

    /// # Safety
    /// AVX-512 F; `w.len() == x.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot(kind: HalfKind, w: &[u16], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        // Four accumulators cover the FMA latency; 64 weights (128 bytes) per step.
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads within [0, n) (bounds of each loop).
        unsafe {
            while i + 64 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    let o = i + 16 * k;
                    *a = _mm512_fmadd_ps(widen16(kind, wp.add(o)), _mm512_loadu_ps(xp.add(o)), *a);
                }
                i += 64;
            }
            while i + 16 <= n {
                acc[0] = _mm512_fmadd_ps(widen16(kind, wp.add(i)), _mm512_loadu_ps(xp.add(i)), acc[0]);
                i += 16;
            }
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let tail: f32 = w[i..].iter().zip(&x[i..]).map(|(&b, &v)| kind.widen(b) * v).sum();
        _mm512_reduce_add_ps(s) + tail
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::HalfKind;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn widen8(kind: HalfKind, p: *const u16) -> __m256 {
        // SAFETY: the caller reads 8 values from `p`.
        let h = unsafe { _mm_loadu_si128(p as *const __m128i) };
        match kind {
            HalfKind::F16 => _mm256_cvtph_ps(h),
            HalfKind::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)),
        }
    }

    /// # Safety
    /// AVX2 + FMA + F16C; `w.len() == x.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot(kind: HalfKind, w: &[u16], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads within [0, n).
        unsafe {
            while i + 32 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * k;
                    *a = _mm256_fmadd_ps(widen8(kind, wp.add(o)), _mm256_loadu_ps(xp.add(o)), *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(widen8(kind, wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
                i += 8;
            }
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let hi = _mm256_extractf128_ps(s, 1);
        let q = _mm_add_ps(_mm256_castps256_ps128(s), hi);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        let tail: f32 = w[i..].iter().zip(&x[i..]).map(|(&b, &v)| kind.widen(b) * v).sum();
        _mm_cvtss_f32(q) + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn bits(kind: HalfKind, v: &[f32]) -> Vec<u16> {
        v.iter()
            .map(|&x| match kind {
                HalfKind::F16 => half::f16::from_f32(x).to_bits(),
                HalfKind::Bf16 => half::bf16::from_f32(x).to_bits(),
            })
            .collect()
    }

    /// Every kernel this CPU has, on sizes with and without tails, against an f64 product of the
    /// widened weights: only f32 rounding may differ (a dropped or misread weight is far outside).
    #[test]
    fn kernels_match_f64_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for kind in [HalfKind::F16, HalfKind::Bf16] {
            for &(rows, cols, n) in &[
                (5, 1, 1),
                (7, 15, 2),
                (9, 64, 1),
                (33, 100, 3),
                (130, 576, 1),
                (64, 4099, 4),
            ] {
                let wv: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
                let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let b = bits(kind, &wv);
                for kernel in Kernel::available() {
                    let m = HalfMatrix::with_kernel(kind, rows, cols, b.clone(), kernel).unwrap();
                    let mut y = vec![0f32; n * rows];
                    m.matvec(&x, n, &mut y);
                    for r in 0..n {
                        for o in 0..rows {
                            let (mut exact, mut mag) = (0f64, 0f64);
                            for c in 0..cols {
                                let p = kind.widen(b[o * cols + c]) as f64 * x[r * cols + c] as f64;
                                exact += p;
                                mag += p.abs();
                            }
                            let got = y[r * rows + o] as f64;
                            // At most cols / 16 sequential adds per lane plus the lane sum.
                            let bound = mag * (cols / 16 + 16) as f64 * f32::EPSILON as f64 + 1e-30;
                            assert!(
                                (got - exact).abs() <= bound,
                                "{kind:?} {kernel:?} [{rows},{cols}] n={n} row {r} out {o}: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rows_widen_exactly_with_every_kernel() {
        let v: Vec<f32> = (0..37 * 3).map(|i| (i as f32 - 50.0) * 0.37).collect();
        for kind in [HalfKind::F16, HalfKind::Bf16] {
            let b = bits(kind, &v);
            for kernel in Kernel::available() {
                let m = HalfMatrix::with_kernel(kind, 3, 37, b.clone(), kernel).unwrap();
                let mut dst = vec![0f32; 37];
                m.widen_row(2, &mut dst);
                let want: Vec<f32> = b[74..].iter().map(|&x| kind.widen(x)).collect();
                assert_eq!(dst, want, "{kind:?} {kernel:?}");
            }
        }
    }

    #[test]
    fn widening_is_exact() {
        for &v in &[0.0f32, -1.5, 65504.0, 1e-7, -1234.567] {
            let h = half::f16::from_f32(v);
            assert_eq!(HalfKind::F16.widen(h.to_bits()), h.to_f32());
            let b = half::bf16::from_f32(v);
            assert_eq!(HalfKind::Bf16.widen(b.to_bits()), b.to_f32());
        }
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert!(HalfMatrix::new(HalfKind::F16, 2, 3, vec![0; 5]).is_err());
    }
}
