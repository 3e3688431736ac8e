//! `y = x W^T` for f32 weights and a few activation rows (decoding on an f32 model).
//!
//! Why: candle's CPU matmul (the `gemm` crate) streamed about 20 GB/s of weights for one-row
//! products on the 7B shape, where llama.cpp's F32 generation streams about 36 GB/s. Decoding is
//! bound by memory, so a row-parallel dot product (four weight rows share each activation load;
//! AVX-512 where the CPU has it, portable loops elsewhere) does better. The result is the same
//! product summed in a different order.
use super::matvec::{by_weight_rows, rows_per_task};
use rayon::prelude::*;

/// Activation rows up to which this beats the GEMM (each weight row is reused from cache for
/// every activation row).
pub const MAX_ROWS: usize = 4;

/// Lanes of independent partial sums (one 512-bit vector).
const LANES: usize = 16;

/// `w[r] . x` for four rows `w` at once.
fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let mut acc = [[0f32; LANES]; 4];
    let whole = x.len() / LANES * LANES;
    for (c, xs) in x[..whole].chunks_exact(LANES).enumerate() {
        for (a, wr) in acc.iter_mut().zip(&w) {
            let ws = &wr[c * LANES..(c + 1) * LANES];
            for l in 0..LANES {
                a[l] += ws[l] * xs[l];
            }
        }
    }
    std::array::from_fn(|r| {
        let tail: f32 = w[r][whole..].iter().zip(&x[whole..]).map(|(a, b)| a * b).sum();
        acc[r].iter().sum::<f32>() + tail
    })
}

fn dot(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let whole = x.len() / LANES * LANES;
    for (ws, xs) in w[..whole].chunks_exact(LANES).zip(x[..whole].chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += ws[l] * xs[l];
        }
    }
    let tail: f32 = w[whole..].iter().zip(&x[whole..]).map(|(a, b)| a * b).sum();
    acc.iter().sum::<f32>() + tail
}

/// `y [n, rows] = x [n, cols] W^T` for a row-major `w` of `rows * cols` values.
pub fn matvec(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize, y: &mut [f32]) {
    matvec_with(simd_available(), w, rows, cols, x, n, y)
}

/// Whether this CPU has the AVX-512 dot products below.
fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`matvec`] on the AVX-512 dot products (`simd`, which the caller checked) or the portable ones.
fn matvec_with(simd: bool, w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize, y: &mut [f32]) {
    assert!(w.len() == rows * cols && x.len() == n * cols && y.len() == n * rows);
    let row = |o: usize| &w[o * cols..(o + 1) * cols];
    let rows_dot4 = |w: [&[f32]; 4], x: &[f32]| -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX-512 F checked by the caller; every row has x.len() values.
            return unsafe { avx512::dot4(w, x) };
        }
        dot4(w, x)
    };
    let row_dot = |w: &[f32], x: &[f32]| -> f32 {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: as above.
            return unsafe { avx512::dot(w, x) };
        }
        dot(w, x)
    };
    let chunk = rows_per_task(rows, 4 * w.len());
    if n == 1 {
        y.par_chunks_mut(chunk).enumerate().for_each(|(c, yc)| {
            let r0 = c * chunk;
            let mut k = 0;
            while k + 4 <= yc.len() {
                let v = rows_dot4(std::array::from_fn(|j| row(r0 + k + j)), x);
                yc[k..k + 4].copy_from_slice(&v);
                k += 4;
            }
            for (j, v) in yc.iter_mut().enumerate().skip(k) {
                *v = row_dot(row(r0 + j), x);
            }
        });
        return;
    }
    by_weight_rows(rows, n, chunk, y, |o, r| row_dot(row(o), &x[r * cols..(r + 1) * cols]));
}

/// The portable loops above are written to vectorise, but rustc 1.95 compiles them to scalar
/// code (measured: F32 generation at 15 GB/s, half of llama.cpp's), so AVX-512 CPUs get these.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The tail past the last whole 16 values, as a lane mask.
    fn tail_mask(n: usize) -> __mmask16 {
        ((1u32 << (n % 16)) - 1) as __mmask16
    }

    /// # Safety
    /// AVX-512 F; every `w[r].len() == x.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
        assert!(w.iter().all(|r| r.len() == x.len()));
        let (n, whole) = (x.len(), x.len() / 16 * 16);
        let mut acc = [_mm512_setzero_ps(); 4];
        // SAFETY: every full load reads [i, i + 16) within n; the masked loads only the tail.
        unsafe {
            for i in (0..whole).step_by(16) {
                let xv = _mm512_loadu_ps(x.as_ptr().add(i));
                for (a, r) in acc.iter_mut().zip(&w) {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(r.as_ptr().add(i)), xv, *a);
                }
            }
            if whole < n {
                let m = tail_mask(n);
                let xv = _mm512_maskz_loadu_ps(m, x.as_ptr().add(whole));
                for (a, r) in acc.iter_mut().zip(&w) {
                    *a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r.as_ptr().add(whole)), xv, *a);
                }
            }
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }

    /// # Safety
    /// AVX-512 F; `w.len() == x.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot(w: &[f32], x: &[f32]) -> f32 {
        assert_eq!(w.len(), x.len());
        let (n, whole) = (x.len(), x.len() / 16 * 16);
        // Two sums, so that consecutive FMAs do not wait on each other.
        let mut acc = [_mm512_setzero_ps(); 2];
        // SAFETY: as in dot4.
        unsafe {
            for (c, i) in (0..whole).step_by(16).enumerate() {
                let p = _mm512_mul_ps(_mm512_loadu_ps(w.as_ptr().add(i)), _mm512_loadu_ps(x.as_ptr().add(i)));
                acc[c % 2] = _mm512_add_ps(acc[c % 2], p);
            }
            if whole < n {
                let m = tail_mask(n);
                let p = _mm512_mul_ps(
                    _mm512_maskz_loadu_ps(m, w.as_ptr().add(whole)),
                    _mm512_maskz_loadu_ps(m, x.as_ptr().add(whole)),
                );
                acc[0] = _mm512_add_ps(acc[0], p);
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_f64_reference_on_odd_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (rows, cols) in [(1, 1), (3, 15), (7, 16), (9, 33), (130, 576), (5, 1000)] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            for n in 1..=MAX_ROWS {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                for simd in [false, simd_available()] {
                    let mut y = vec![0f32; n * rows];
                    matvec_with(simd, &w, rows, cols, &x, n, &mut y);
                    let what = format!("f32, simd {simd}");
                    crate::kernels::tests::assert_f64_product(|o, i| w[o * cols + i] as f64, &x, &y, rows, cols, &what);
                }
            }
        }
    }
}
