//! Q4 weight rows interleaved in panels of [`PANEL`] for decoding on AVX-512 VNNI.
//!
//! Why: the row-at-a-time kernel ([`super::dot`]) gives each 64 codes of one row a float
//! convert, a lane-scale load and two multiplies. With Q4_0 that left single-token decoding
//! at 0.76x llama.cpp on the 7B shape (2 threads), whose AVX2 path also interleaves rows
//! (8 at a time). Here one i32 lane is one output row: `vpdpbusd` multiplies 16 rows' codes
//! of one 4-value activation lane by that lane's 4 broadcast activation codes, so the lane's
//! scale is one broadcast FMA shared by 16 rows and the weight scales are one 16-wide vector
//! per block. The numbers are those of the row kernels (same int8 activation lanes, exact i32
//! lane sums), summed in another order.
//!
//! Layout: panel p holds rows `16p..16p + 16` (rows past the matrix have zero codes, scales
//! and minimums). Per panel and 32-block, 256 bytes: quad j (0..4) is 64 bytes, 4 per row,
//! row k's bytes `4j..4j + 4` of its GGUF block (low nibbles weights `4j..4j + 4`, high
//! nibbles `16 + 4j..`). Scales and minimums: `[panel][scale index][16]`.
use super::act::{ActRow, LANE};
use super::pack::PackedMatrix;
use super::QK;
use half::f16;
use rayon::prelude::*;

/// Rows per panel (one 16-lane i32 vector).
pub const PANEL: usize = 16;
/// Code bytes per panel and block.
pub const PANEL_BLOCK_BYTES: usize = PANEL * QK / 2;

/// Panels covering `rows` rows.
pub fn panels(rows: usize) -> usize {
    rows.div_ceil(PANEL)
}

/// (byte, shift) of weight `i` of block `b` of row `r` in a matrix of `blocks` blocks a row.
#[inline]
pub fn code_pos(blocks: usize, r: usize, b: usize, i: usize) -> (usize, u32) {
    (byte_of(block_base(blocks, r, b), i % 16), 4 * (i / 16) as u32)
}

/// Where byte `k` (0..16) of a GGUF block's codes sits, from its [`block_base`].
#[inline]
pub fn byte_of(base: usize, k: usize) -> usize {
    base + (k / 4) * 64 + k % 4
}

/// Whether matrices decoded on `kernel` are laid out in panels (only its panel kernel has SIMD).
pub fn suits(kernel: super::dot::Kernel) -> bool {
    kernel == super::dot::Kernel::Avx512Vnni
}

/// Index of scale (or minimum) `s` of row `r`, with `per_row` of them a row.
#[inline]
pub fn scale_pos(per_row: usize, r: usize, s: usize) -> usize {
    ((r / PANEL) * per_row + s) * PANEL + r % PANEL
}

/// Where row `r`, block `b`'s 16 GGUF-order bytes go: 4 runs of 4 bytes, 64 apart.
#[inline]
pub fn block_base(blocks: usize, r: usize, b: usize) -> usize {
    ((r / PANEL) * blocks + b) * PANEL_BLOCK_BYTES + (r % PANEL) * 4
}

/// One panel as the kernels take it.
#[derive(Clone, Copy)]
struct Panel<'a> {
    /// `blocks * 256` bytes.
    codes: &'a [u8],
    /// `per_row * 16`.
    scales: &'a [f16],
    /// As `scales` with minimums, or empty.
    mins: &'a [f16],
}

fn panel(w: &PackedMatrix, p: usize) -> Panel<'_> {
    let ns = w.blocks / w.format.blocks_per_scale();
    let cb = w.blocks * PANEL_BLOCK_BYTES;
    Panel {
        codes: &w.codes[p * cb..(p + 1) * cb],
        scales: &w.scales[p * ns * PANEL..(p + 1) * ns * PANEL],
        mins: if w.mins.is_empty() {
            &[]
        } else {
            &w.mins[p * ns * PANEL..(p + 1) * ns * PANEL]
        },
    }
}

/// Panel kernel: 16 outputs of one activation row.
type PanelFn = fn(&PackedMatrix, Panel<'_>, ActRow<'_>, &mut [f32; PANEL]);

fn kernel_for(w: &PackedMatrix, simd: bool) -> PanelFn {
    use super::pack::BlockFormat::*;
    #[cfg(target_arch = "x86_64")]
    if simd && super::dot::Kernel::Avx512Vnni.is_available() {
        return match w.format {
            Q4_0 => avx512_panel::<false, 1>,
            Q4_1 => avx512_panel::<true, 1>,
            _ => avx512_panel::<true, 4>,
        };
    }
    let _ = simd;
    match w.format {
        Q4_0 => scalar_panel::<false>,
        _ => scalar_panel::<true>,
    }
}

/// `y [n, rows] = x W^T` for a panel-layout matrix; `simd` allows the AVX-512 VNNI kernel where
/// the CPU has it (else the portable one).
pub fn matvec_panels(w: &PackedMatrix, x: &super::QuantActs, simd: bool, y: &mut [f32]) {
    let n = x.rows();
    assert!(w.panels && x.cols == w.cols && y.len() == n * w.rows);
    let f = kernel_for(w, simd);
    let per_task = super::matvec::rows_per_task(w.rows, w.bytes()).div_ceil(PANEL);
    let rows = w.rows;
    if n == 1 {
        let xr = x.row(0);
        y.par_chunks_mut(per_task * PANEL).enumerate().for_each(|(t, yt)| {
            for (k, yp) in yt.chunks_mut(PANEL).enumerate() {
                let mut out = [0f32; PANEL];
                f(w, panel(w, t * per_task + k), xr, &mut out);
                yp.copy_from_slice(&out[..yp.len()]);
            }
        });
        return;
    }
    // Each panel is used for every activation row while it is in cache; results come out
    // [rows, n] and are transposed.
    let mut yt = vec![0f32; n * rows];
    yt.par_chunks_mut(per_task * PANEL * n).enumerate().for_each(|(t, yc)| {
        for (k, yp) in yc.chunks_mut(PANEL * n).enumerate() {
            let p = panel(w, t * per_task + k);
            let live = yp.len() / n;
            for r in 0..n {
                let mut out = [0f32; PANEL];
                f(w, p, x.row(r), &mut out);
                for (o, v) in out[..live].iter().enumerate() {
                    yp[o * n + r] = *v;
                }
            }
        }
    });
    super::matvec::transpose_into(&yt, n, rows, y);
}

/// Portable panel kernel (the formula of [`super::dot`] per row).
fn scalar_panel<const MIN: bool>(w: &PackedMatrix, p: Panel<'_>, x: ActRow<'_>, out: &mut [f32; PANEL]) {
    let per = w.format.blocks_per_scale();
    let lanes = QK / LANE;
    for (k, o) in out.iter_mut().enumerate() {
        let mut acc = 0f32;
        for b in 0..w.blocks {
            let base = b * PANEL_BLOCK_BYTES + k * 4;
            let mut isum = [0i32; QK / LANE];
            for i in 0..QK {
                let byte = p.codes[byte_of(base, i % 16)];
                let c = (byte >> (4 * (i / 16))) & 0xF;
                isum[i / LANE] += c as i32 * x.q[b * QK + i] as i32;
            }
            let s = (b / per) * PANEL + k;
            let d = p.scales[s].to_f32();
            let lane_sum: f32 = (0..lanes).map(|l| x.d[b * lanes + l] * isum[l] as f32).sum();
            acc += d * lane_sum;
            acc += if MIN {
                p.mins[s].to_f32() * x.s[b]
            } else {
                -8.0 * d * x.s[b]
            };
        }
        *o = acc;
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512_panel<const MIN: bool, const PER: usize>(
    w: &PackedMatrix,
    p: Panel<'_>,
    x: ActRow<'_>,
    out: &mut [f32; PANEL],
) {
    assert!(
        p.codes.len() == w.blocks * PANEL_BLOCK_BYTES
            && w.blocks.is_multiple_of(PER)
            && p.scales.len() == w.blocks / PER * PANEL
            && (!MIN || p.mins.len() == p.scales.len())
            && x.q.len() == w.blocks * QK
            && x.d.len() == w.blocks * QK / LANE
            && x.s.len() == w.blocks
    );
    // SAFETY: the CPU has the features (`kernel_for` checked) and the lengths are asserted.
    unsafe { avx512::panel_q4::<MIN, PER>(p.codes, p.scales, p.mins, x, out) }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ActRow, PANEL, PANEL_BLOCK_BYTES};
    use crate::kernels::act::LANE;
    use crate::kernels::QK;
    use half::f16;
    use std::arch::x86_64::*;

    /// How far ahead (bytes of codes) to prefetch, every line of a panel block: 32 blocks (8 KiB).
    /// Q4_0 7B shape, 1 thread: 2 blocks 26-31 t/s, 4: 29-36, 8: 31-44, 16: 36-48, 32: 47-52,
    /// 64: 41-53 (interleaved, a second process on the other core).
    const PREFETCH: usize = PREFETCH_BLOCKS * PANEL_BLOCK_BYTES;
    const PREFETCH_BLOCKS: usize = 32;

    /// # Safety
    /// AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C; lengths as asserted by the caller:
    /// `codes` `blocks * 256`, `scales` (and `mins` if `MIN`) `blocks / PER * 16`, `x` `blocks`
    /// blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn panel_q4<const MIN: bool, const PER: usize>(
        codes: &[u8],
        scales: &[f16],
        mins: &[f16],
        x: ActRow<'_>,
        out: &mut [f32; PANEL],
    ) {
        let nb = x.s.len();
        let (cp, qp, dp) = (codes.as_ptr(), x.q.as_ptr() as *const i32, x.d.as_ptr());
        let m4 = _mm512_set1_epi8(0x0F);
        let zero = _mm512_setzero_si512();
        let mut acc = _mm512_setzero_ps();
        let mut corr = _mm512_setzero_ps();
        for s in 0..nb / PER {
            let mut f = [_mm512_setzero_ps(); 2];
            let mut xs = 0f32;
            for b in s * PER..(s + 1) * PER {
                let c0 = b * PANEL_BLOCK_BYTES;
                for line in 0..PANEL_BLOCK_BYTES / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(c0 + PREFETCH + 64 * line) as *const i8);
                }
                let lanes = b * (QK / LANE);
                for j in 0..4 {
                    // SAFETY: block b's quad j, activation lanes j and 4 + j exist (caller).
                    unsafe {
                        let c = _mm512_loadu_si512(cp.add(c0 + 64 * j) as *const __m512i);
                        let lo = _mm512_and_si512(c, m4);
                        let hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), m4);
                        let qlo = _mm512_set1_epi32(qp.add(lanes + j).read_unaligned());
                        let qhi = _mm512_set1_epi32(qp.add(lanes + 4 + j).read_unaligned());
                        let plo = _mm512_dpbusd_epi32(zero, lo, qlo);
                        let phi = _mm512_dpbusd_epi32(zero, hi, qhi);
                        f[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(plo), _mm512_set1_ps(*dp.add(lanes + j)), f[0]);
                        f[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(phi), _mm512_set1_ps(*dp.add(lanes + 4 + j)), f[1]);
                    }
                }
                // SAFETY: block b exists.
                xs += unsafe { *x.s.get_unchecked(b) };
            }
            // SAFETY: scale group s's 16 scales (and minimums) exist (caller).
            let d = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(s * PANEL) as *const __m256i)) };
            acc = _mm512_fmadd_ps(_mm512_add_ps(f[0], f[1]), d, acc);
            let m = if MIN {
                // SAFETY: as above.
                unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(mins.as_ptr().add(s * PANEL) as *const __m256i)) }
            } else {
                d
            };
            corr = _mm512_fmadd_ps(m, _mm512_set1_ps(xs), corr);
        }
        let off = _mm512_set1_ps(if MIN { 1.0 } else { -8.0 });
        // SAFETY: `out` holds 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_fmadd_ps(off, corr, acc)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::BlockRows;
    use crate::kernels::pack::tests::{random_q4_1g, random_qtensor};
    use crate::kernels::pack::BlockFormat;
    use crate::kernels::{matvec, Kernel, QuantActs};
    use rand::{Rng, SeedableRng};

    /// The same matrix in both layouts.
    fn both(f: BlockFormat, rows: usize, cols: usize, seed: u64) -> (PackedMatrix, PackedMatrix) {
        if f == BlockFormat::Q4_1G {
            let r = random_q4_1g(rows, cols, seed);
            let mut codes = vec![0u8; rows * cols];
            for (i, c) in codes.iter_mut().enumerate() {
                *c = r.code(i / cols, (i % cols) / QK, i % QK) as u8;
            }
            let (s, m) = (r.scales.clone(), r.mins.clone());
            let p = PackedMatrix::q4_1_grouped_in(rows, cols, &codes, s, m, true).unwrap();
            return (r, p);
        }
        let q = random_qtensor(f, rows, cols, seed);
        let bytes = q.data().unwrap();
        (
            PackedMatrix::from_gguf_in(f, rows, cols, &bytes, false).unwrap(),
            PackedMatrix::from_gguf_in(f, rows, cols, &bytes, true).unwrap(),
        )
    }

    const FORMATS: [BlockFormat; 3] = [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q4_1G];

    /// Shapes: rows below, at and past one panel; 1, 5 and 18 blocks (Q4_1G: 4, 8, 36).
    fn shapes(f: BlockFormat) -> Vec<(usize, usize)> {
        let blocks: &[usize] = if f == BlockFormat::Q4_1G {
            &[4, 8, 36]
        } else {
            &[1, 5, 18]
        };
        [3usize, 16, 17, 40]
            .iter()
            .flat_map(|&r| blocks.iter().map(move |&b| (r, b * QK)))
            .collect()
    }

    #[test]
    fn every_code_has_its_own_nibble() {
        let (rows, blocks) = (19, 3);
        let mut seen = vec![0u8; panels(rows) * blocks * PANEL_BLOCK_BYTES];
        for r in 0..rows {
            for b in 0..blocks {
                for i in 0..QK {
                    let (at, shift) = code_pos(blocks, r, b, i);
                    assert_eq!(seen[at] & (0xF << shift), 0, "row {r} block {b} weight {i}");
                    seen[at] |= 0xF << shift;
                }
            }
        }
        // Rows 19..32 of the second panel are padding.
        assert!(seen[..blocks * PANEL_BLOCK_BYTES].iter().all(|&s| s == 0xFF));
    }

    #[test]
    fn panels_hold_the_same_matrix() {
        for f in FORMATS {
            for (rows, cols) in shapes(f) {
                let (r, p) = both(f, rows, cols, rows as u64 + cols as u64);
                assert!(p.panels && !r.panels);
                let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
                for o in 0..rows {
                    r.dequantize_row(o, &mut a);
                    p.dequantize_row(o, &mut b);
                    assert!(
                        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{f:?} [{rows}, {cols}] row {o}"
                    );
                }
                // The int8 GEMM's view, from a block that is not the first.
                let nb = cols / QK - 1;
                let mut u = [
                    (vec![0i8; nb * QK], vec![0f32; nb], vec![0f32; nb]),
                    (vec![0i8; nb * QK], vec![0f32; nb], vec![0f32; nb]),
                ];
                for o in [0, rows - 1] {
                    for (m, (c, s, mn)) in [&r, &p].into_iter().zip(u.iter_mut()) {
                        m.unpack(o, 1, c, s, mn);
                    }
                    assert!(u[0] == u[1], "{f:?} [{rows}, {cols}] unpack row {o}");
                }
            }
        }
    }

    #[test]
    fn panel_kernels_match_the_row_kernels() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for f in FORMATS {
            for (rows, cols) in shapes(f) {
                let (r, p) = both(f, rows, cols, 3 * rows as u64 + cols as u64);
                for n in [1, 3] {
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                    let xa = QuantActs::new(&x, cols);
                    let mut want = vec![0f32; n * rows];
                    matvec(&r, &xa, Kernel::Scalar, &mut want);
                    for k in Kernel::available() {
                        let mut got = vec![f32::NAN; n * rows];
                        matvec(&p, &xa, k, &mut got);
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            // Both sum the same exact lane products in f32, in another order.
                            let mut wf = vec![0f32; cols];
                            r.dequantize_row(i % rows, &mut wf);
                            let a = xa.row(i / rows);
                            let mag: f32 = (0..cols).map(|c| (wf[c] * a.q[c] as f32 * a.d[c / LANE]).abs()).sum();
                            assert!(
                                (g - w).abs() <= 1e-5 * mag + 1e-6,
                                "{f:?} {k:?} [{rows}, {cols}] n {n} out {i}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
