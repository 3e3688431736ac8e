//! Int8 GEMM for prompt processing: `y [n, out] = x [n, in] W^T` for a block-quantized `W`
//! (GGUF Q8_0 / Q4_0 / Q4_1, AutoAWQ int4) and many input rows.
//!
//! Why not the decode kernels ([`super::dot`]): they scale activations per 4 values, which
//! costs a convert, a multiply and an FMA per `vpdpbusd`. That is free when decoding is bound by
//! memory, but leaves prompt processing, which is bound by arithmetic, at about a quarter of the
//! VNNI peak. Here, as in ggml, activations get one scale per 32-block, and each i32 lane sums a
//! whole block for one (input row, output) pair, so the float work is per block.
//!
//! Layout (the classic VNNI GEMM). One panel of [`NR`] = 32 output rows and up to
//! [`KC_BLOCKS`] blocks at a time is unpacked into signed codes `[block][k / 4][32][4]`
//! (small enough to stay in L2 while every input row passes over it). Activation codes are
//! stored as `q + 128` (u8), so `vpdpbusd(acc, 4 broadcast activation bytes, 64 code bytes)`
//! adds 4 products to each of 16 outputs. The offset's extra `128 * sum(codes)` is removed by
//! starting each block's sum at `-128 * sum(codes)`, computed when packing. Per block then
//! `y += d_w * d_x * isum (+ m_w * s_x)`, with `s_x = d_x * sum(q)` for formats with a
//! minimum (Q4_1, AWQ's `-z * s`). Q4_0's `-8` offset is folded into its codes (`c - 8`).
use super::{abs_max, low_byte, SharedOut, QK};
use rayon::prelude::*;
use std::cell::RefCell;

/// Output rows per panel (two 16-lane vectors).
pub const NR: usize = 32;
/// Blocks per panel chunk: 64 x 32 inputs = 64 KiB of codes, plus 24 KiB of block data.
pub const KC_BLOCKS: usize = 64;
/// Input rows per micro-kernel call (4 rows x 2 vectors = 8 i32 and 8 f32 accumulators).
const MR: usize = 4;
/// Scales of a block whose scales cover 16 weights each.
pub const SUB_SCALES: usize = 2;

/// A weight matrix that can hand out its blocks as signed codes with per-block scales (and
/// minimums): weight = `code * scale (+ min)`.
pub trait BlockRows: Sync {
    fn rows(&self) -> usize;
    /// A multiple of 32.
    fn cols(&self) -> usize;
    fn has_mins(&self) -> bool;
    /// Scales per 32-block: 1, or [`SUB_SCALES`] for formats whose scales cover 16 weights
    /// (Q6_K); such formats have no minimums.
    fn scales_per_block(&self) -> usize {
        1
    }
    /// Row `r`, blocks `b0..b0 + codes.len() / 32`: 32 codes per block into `codes`, each
    /// block's [`Self::scales_per_block`] scales (in weight order) into `scales`, and its
    /// minimum, when [`Self::has_mins`], into `mins` (one per block).
    fn unpack(&self, r: usize, b0: usize, codes: &mut [i8], scales: &mut [f32], mins: &mut [f32]);
}

/// A block whose largest value is this many times its mean magnitude holds an outlier channel
/// (SmolLM2 and Mistral have a few channels hundreds of times larger than the rest): one
/// 8-bit step then flattens its other 31 values, so such blocks also get a second pass over
/// the rounding residual, which makes them exact to about 1e-4 of their largest value.
/// Ordinary blocks sit near 3 (the ratio for 32 Gaussian values). Measured on the fixture
/// (perplexity of the NCBI-disease test abstracts, 512-token windows; exact f32 10.1057):
/// without the residual pass 10.1384 at 898 pp512 t/s; with it at ratio 4, 10.1069 at 698.
pub const OUTLIER_RATIO: f32 = 4.0;

/// `n` activation rows quantized per 32-block: `x ~ d * q (+ d2 * q2)`, `q` in -127..=127
/// stored as `q + 128`; the residual pass `q2` is nonzero only in outlier blocks.
pub struct BlockActs {
    pub cols: usize,
    pub blocks: usize,
    /// `[n, cols]`, `q + 128`.
    pub q: Vec<u8>,
    /// `[n, blocks]` scales.
    pub d: Vec<f32>,
    /// `[n, cols]`, residual codes `q2 + 128` (128 outside outlier blocks).
    pub q2: Vec<u8>,
    /// `[n, blocks]` residual scales, 0 outside outlier blocks.
    pub d2: Vec<f32>,
    /// `[n, blocks]`: the block's sum of quantized x (`d * sum(q) + d2 * sum(q2)`), for formats
    /// with minimums. The quantized sum, not the exact one: then a Q4_1 weight's code and
    /// minimum parts see the same x, and the error follows `w`, not `code * scale`.
    pub s: Vec<f32>,
}

/// Quantize 32 values to `q + 128` with one scale (rounding half away from zero); returns the
/// scale. Written so that the compiler vectorises it ([`abs_max`], [`low_byte`]): with a
/// saturating `as` cast it ran one value at a time, and quantizing the projections' inputs took
/// 17% of an evaluation run (`perf`, fixture on medqa_4).
#[inline]
fn quantize32(x: &[f32; QK], q: &mut [u8; QK]) -> f32 {
    let amax = abs_max(x);
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (qi, &xi) in q.iter_mut().zip(x) {
        // `^ 0x80` adds the offset 128 and keeps NaN (0 * inf when amax is tiny) at code 128,
        // as the old `as i32` cast did.
        *qi = low_byte((xi * id).round().clamp(-127.0, 127.0)) ^ 0x80;
    }
    amax / 127.0
}

/// Sum of the codes of a `q + 128` block.
#[inline]
fn code_sum(q: &[u8; QK]) -> f32 {
    q.iter().map(|&c| c as i32).sum::<i32>() as f32 - (128 * QK) as f32
}

/// The outlier test on `d * 127 * 32 > OUTLIER_RATIO * sum|x|` with the sum taken in order.
/// Some blocks sit right at the threshold, and another rounding of the sum flips them (which
/// moved letter probabilities by 1e-2), but an in-order sum is a chain of 32 dependent adds. So
/// a lane-wise sum decides unless it is within its rounding error of the threshold.
#[inline]
fn is_outlier_block(xb: &[f32; QK], d: f32) -> bool {
    let lhs = d * 127.0 * QK as f32;
    let mut lanes = [0f32; 16];
    for c in xb.chunks_exact(16) {
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a += v.abs();
        }
    }
    let approx = OUTLIER_RATIO * lanes.iter().sum::<f32>();
    // Relative error: in order at most 31 * 2^-24, lane-wise 16 * 2^-24; the slack is 128 * 2^-24.
    let slack = approx * (64.0 * f32::EPSILON);
    if lhs > approx + slack {
        true
    } else if lhs <= approx - slack {
        false
    } else {
        lhs > OUTLIER_RATIO * xb.iter().map(|v| v.abs()).sum::<f32>()
    }
}

/// One 32-block: first pass, and the residual pass if it holds an outlier. Returns
/// `(d, d2, s)`.
#[inline]
fn quantize_block(xb: &[f32; QK], qb: &mut [u8; QK], q2b: &mut [u8; QK]) -> (f32, f32, f32) {
    let d = quantize32(xb, qb);
    let mut s = d * code_sum(qb);
    let mut d2 = 0.0;
    if is_outlier_block(xb, d) {
        let mut r = [0f32; QK];
        for ((r, &xi), &qi) in r.iter_mut().zip(xb).zip(qb.iter()) {
            *r = xi - d * (qi as i32 - 128) as f32;
        }
        d2 = quantize32(&r, q2b);
        s += d2 * code_sum(q2b);
    }
    (d, d2, s)
}

impl BlockActs {
    /// `x` is `[n, cols]` row-major, `cols` a multiple of 32.
    pub fn new(x: &[f32], cols: usize) -> Self {
        assert!(cols.is_multiple_of(QK) && cols > 0 && x.len().is_multiple_of(cols));
        let nb = x.len() / QK;
        let mut a = BlockActs {
            cols,
            blocks: cols / QK,
            q: vec![0; x.len()],
            d: vec![0.0; nb],
            q2: vec![128; x.len()],
            d2: vec![0.0; nb],
            s: vec![0.0; nb],
        };
        a.q.par_chunks_mut(QK * 64)
            .zip(a.q2.par_chunks_mut(QK * 64))
            .zip(a.d.par_chunks_mut(64))
            .zip(a.d2.par_chunks_mut(64))
            .zip(a.s.par_chunks_mut(64))
            .zip(x.par_chunks(QK * 64))
            .for_each(|(((((q, q2), d), d2), s), x)| {
                for (b, xb) in x.chunks_exact(QK).enumerate() {
                    let at = b * QK..(b + 1) * QK;
                    let (qb, q2b) = (&mut q[at.clone()], &mut q2[at]);
                    // The chunks are QK long by construction.
                    let (xb, qb, q2b) = (xb.try_into().unwrap(), qb.try_into().unwrap(), q2b.try_into().unwrap());
                    (d[b], d2[b], s[b]) = quantize_block(xb, qb, q2b);
                }
            });
        a
    }

    pub fn rows(&self) -> usize {
        self.d.len() / self.blocks
    }
}

/// One panel chunk: `NR` output rows, `kb` blocks.
#[derive(Default)]
struct Panel {
    kb: usize,
    /// Scales per block (1 or [`SUB_SCALES`]): each covers `32 / subs` weights.
    subs: usize,
    /// `[kb][8][NR][4]`.
    codes: Vec<i8>,
    /// `[kb][subs][NR]`: `-128 * sum(codes)` of each scale's weights.
    corr: Vec<i32>,
    /// `[kb][subs][NR]`.
    d: Vec<f32>,
    /// `[kb][NR]` (zeros without minimums).
    m: Vec<f32>,
    // Scratch for one unpacked row.
    row: Vec<i8>,
    row_d: Vec<f32>,
    row_m: Vec<f32>,
}

impl Panel {
    /// Unpack rows `o0..o0 + NR` (zeros past the last row), blocks `b0..b0 + kb`.
    fn pack<W: BlockRows + ?Sized>(&mut self, w: &W, o0: usize, b0: usize, kb: usize) {
        let subs = w.scales_per_block();
        debug_assert!(subs == 1 || (subs == SUB_SCALES && !w.has_mins()));
        (self.kb, self.subs) = (kb, subs);
        let len = kb * QK;
        self.codes.resize(len * NR, 0);
        self.row.clear();
        self.row.resize(len * NR, 0);
        self.d.clear();
        self.d.resize(kb * subs * NR, 0.0);
        self.m.clear();
        self.m.resize(kb * NR, 0.0);
        self.corr.clear();
        self.corr.resize(kb * subs * NR, 0);
        self.row_d.resize(kb * subs, 0.0);
        self.row_m.resize(kb, 0.0);
        for j in 0..NR.min(w.rows().saturating_sub(o0)) {
            let src = &mut self.row[j * len..(j + 1) * len];
            w.unpack(o0 + j, b0, src, &mut self.row_d, &mut self.row_m);
            for (k, sub) in src.chunks_exact(QK / subs).enumerate() {
                let sum: i32 = sub.iter().map(|&c| c as i32).sum();
                self.corr[k * NR + j] = -128 * sum;
                self.d[k * NR + j] = self.row_d[k];
            }
            for b in 0..kb {
                self.m[b * NR + j] = self.row_m[b];
            }
        }
        // The rows' 4-code groups, transposed: group q of row j goes to u32 `q * NR + j`.
        let groups = len / 4;
        let mut q0 = 0;
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: the CPU has AVX-512 F; both buffers hold NR x `groups` u32.
            unsafe { transpose16_avx512(&self.row, &mut self.codes, groups) };
            q0 = groups / 16 * 16;
        }
        let (src, dst) = (&self.row, &mut self.codes);
        for q in q0..groups {
            for j in 0..NR {
                let (s, d) = ((j * groups + q) * 4, (q * NR + j) * 4);
                dst[d..d + 4].copy_from_slice(&src[s..s + 4]);
            }
        }
    }
}

/// `dst[q][j] = src[j][q]` for u32 `q < groups / 16 * 16`, `j < NR`, as 16 x 16 register
/// transposes (the compiler's own version of the scalar loop used scatters, 3x slower).
///
/// # Safety
/// The CPU must have AVX-512 F; `src` and `dst` must hold `NR * groups` u32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16_avx512(src: &[i8], dst: &mut [i8], groups: usize) {
    use std::arch::x86_64::*;
    assert!(src.len() >= NR * groups * 4 && dst.len() >= NR * groups * 4);
    let (sp, dp) = (src.as_ptr() as *const i32, dst.as_mut_ptr() as *mut i32);
    for h in 0..NR / 16 {
        for q in (0..groups / 16 * 16).step_by(16) {
            // SAFETY: rows 16h..16h+16, groups q..q+16 are in bounds (asserted).
            unsafe {
                let r: [__m512i; 16] =
                    std::array::from_fn(|i| _mm512_loadu_si512(sp.add((16 * h + i) * groups + q) as *const __m512i));
                let t: [__m512i; 16] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1], r[i | 1]);
                    if i % 2 == 0 {
                        _mm512_unpacklo_epi32(a, b)
                    } else {
                        _mm512_unpackhi_epi32(a, b)
                    }
                });
                // u[4k + c], 128-bit lane L: rows 4k..4k+4 of column 4L + c.
                let u: [__m512i; 16] = std::array::from_fn(|i| {
                    let (k, c) = (i / 4, i % 4);
                    let (a, b) = (t[4 * k + c / 2], t[4 * k + c / 2 + 2]);
                    if c % 2 == 0 {
                        _mm512_unpacklo_epi64(a, b)
                    } else {
                        _mm512_unpackhi_epi64(a, b)
                    }
                });
                for c in 0..4 {
                    let x0 = _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]);
                    let x1 = _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]);
                    let y0 = _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]);
                    let y1 = _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]);
                    let cols = [
                        (c, _mm512_shuffle_i32x4::<0x88>(x0, y0)),
                        (8 + c, _mm512_shuffle_i32x4::<0xdd>(x0, y0)),
                        (4 + c, _mm512_shuffle_i32x4::<0x88>(x1, y1)),
                        (12 + c, _mm512_shuffle_i32x4::<0xdd>(x1, y1)),
                    ];
                    for (col, v) in cols {
                        _mm512_storeu_si512(dp.add((q + col) * NR + 16 * h) as *mut __m512i, v);
                    }
                }
            }
        }
    }
}

thread_local! {
    static PANEL: RefCell<Panel> = RefCell::new(Panel::default());
}

/// Whether this CPU runs the SIMD GEMM (AVX-512 VNNI); otherwise callers keep their own path.
pub fn available() -> bool {
    super::Kernel::Avx512Vnni.is_available()
}

/// Which micro-kernel computes a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// The portable reference (tests; same arithmetic as the SIMD kernel).
    Scalar,
    /// AVX-512 F/BW + VNNI.
    Avx512Vnni,
}

/// `y [n, rows] = x [n, cols] W^T` with the best kernel for this CPU.
pub fn gemm<W: BlockRows + ?Sized>(w: &W, x: &[f32], n: usize) -> Vec<f32> {
    let k = if available() {
        GemmKernel::Avx512Vnni
    } else {
        GemmKernel::Scalar
    };
    gemm_with(w, &BlockActs::new(x, w.cols()), n, k)
}

/// As [`gemm`] on already quantized activations with a chosen kernel.
///
/// # Panics
/// If `kernel` is [`GemmKernel::Avx512Vnni`] and this CPU lacks it, or shapes disagree.
pub fn gemm_with<W: BlockRows + ?Sized>(w: &W, a: &BlockActs, n: usize, kernel: GemmKernel) -> Vec<f32> {
    let (rows, cols) = (w.rows(), w.cols());
    assert!(a.cols == cols && a.rows() == n && cols.is_multiple_of(QK));
    assert!(
        kernel == GemmKernel::Scalar || available(),
        "no AVX-512 VNNI on this CPU"
    );
    let mut y = vec![0f32; n * rows];
    // Each panel task writes only its own columns of y.
    let out = SharedOut(y.as_mut_ptr());
    let mins = w.has_mins();
    (0..rows.div_ceil(NR)).into_par_iter().for_each(|pi| {
        PANEL.with(|cell| {
            let mut p = cell.borrow_mut();
            let o0 = pi * NR;
            let width = NR.min(rows - o0);
            for b0 in (0..a.blocks).step_by(KC_BLOCKS) {
                p.pack(w, o0, b0, KC_BLOCKS.min(a.blocks - b0));
                let mut r0 = 0;
                while r0 < n {
                    let mr = MR.min(n - r0);
                    // SAFETY: rows r0..r0+mr and columns o0..o0+width of y belong to this task
                    // alone; the SIMD kernel is only chosen when the CPU has it (asserted).
                    unsafe {
                        let t = Tile {
                            r0,
                            mr,
                            b0,
                            mins,
                            y0: out.at(r0 * rows + o0),
                            ld: rows,
                            width,
                        };
                        match kernel {
                            GemmKernel::Scalar => scalar(&p, a, t),
                            #[cfg(target_arch = "x86_64")]
                            GemmKernel::Avx512Vnni => avx512::chunk(&p, a, t),
                            #[cfg(not(target_arch = "x86_64"))]
                            GemmKernel::Avx512Vnni => unreachable!(),
                        }
                    }
                    r0 += mr;
                }
            }
        });
    });
    y
}

/// Where one micro-kernel call reads and writes: activation rows `r0..r0 + mr` from block `b0`
/// against the packed panel, added into `y0` (row stride `ld`, `width` valid columns).
#[derive(Clone, Copy)]
struct Tile {
    r0: usize,
    mr: usize,
    b0: usize,
    /// The weights have per-block minimums.
    mins: bool,
    y0: *mut f32,
    ld: usize,
    width: usize,
}

/// Reference micro-kernel.
///
/// # Safety
/// `t.y0` must point at `t.mr` rows of `t.width` writable values, `t.ld` apart.
unsafe fn scalar(p: &Panel, a: &BlockActs, t: Tile) {
    let Tile {
        r0,
        mr,
        b0,
        mins,
        y0,
        ld,
        width,
    } = t;
    for r in 0..mr {
        let row = r0 + r;
        let xq = &a.q[row * a.cols..(row + 1) * a.cols];
        for j in 0..width {
            let mut f = 0f32;
            let groups = 8 / p.subs;
            for b in 0..p.kb {
                let at = row * a.blocks + b0 + b;
                let (dx, d2x, sx) = (a.d[at], a.d2[at], a.s[at]);
                for h in 0..p.subs {
                    let k = b * p.subs + h;
                    let isum = |xq: &[u8]| {
                        let mut isum = p.corr[k * NR + j];
                        for g in h * groups..(h + 1) * groups {
                            let at = ((b * 8 + g) * NR + j) * 4;
                            for t in 0..4 {
                                isum += xq[(b0 + b) * QK + g * 4 + t] as i32 * p.codes[at + t] as i32;
                            }
                        }
                        isum
                    };
                    let dw = p.d[k * NR + j];
                    f = (isum(xq) as f32).mul_add(dw * dx, f);
                    if d2x != 0.0 {
                        f = (isum(&a.q2[row * a.cols..(row + 1) * a.cols]) as f32).mul_add(dw * d2x, f);
                    }
                }
                if mins {
                    f = p.m[b * NR + j].mul_add(sx, f);
                }
            }
            // SAFETY: within the caller's rows and columns.
            unsafe { *y0.add(r * ld + j) += f };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BlockActs, Panel, Tile, MR, NR, SUB_SCALES};
    use crate::kernels::QK;
    use std::arch::x86_64::*;

    /// # Safety
    /// As [`super::scalar`], and the CPU must have AVX-512 F/BW/VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn chunk(p: &Panel, a: &BlockActs, t: Tile) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match (t.mins, p.subs) {
                (false, 1) => by_rows::<false, 1>(p, a, t),
                (true, 1) => by_rows::<true, 1>(p, a, t),
                (false, SUB_SCALES) => by_rows::<false, SUB_SCALES>(p, a, t),
                _ => unreachable!("sub-block scales come without minimums"),
            }
        }
    }

    /// [`rows`] for the tile's row count.
    ///
    /// # Safety
    /// As [`chunk`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn by_rows<const MINS: bool, const S: usize>(p: &Panel, a: &BlockActs, t: Tile) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match t.mr {
                4 => rows::<4, MINS, S>(p, a, t),
                3 => rows::<3, MINS, S>(p, a, t),
                2 => rows::<2, MINS, S>(p, a, t),
                1 => rows::<1, MINS, S>(p, a, t),
                _ => unreachable!("at most {MR} rows"),
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn rows<const R: usize, const MINS: bool, const S: usize>(p: &Panel, a: &BlockActs, t: Tile) {
        let Tile {
            r0, b0, y0, ld, width, ..
        } = t;
        let cp = p.codes.as_ptr();
        let xq: [*const u8; R] = std::array::from_fn(|r| a.q[(r0 + r) * a.cols + b0 * QK..].as_ptr());
        let xq2: [*const u8; R] = std::array::from_fn(|r| a.q2[(r0 + r) * a.cols + b0 * QK..].as_ptr());
        let at = |r: usize| (r0 + r) * a.blocks + b0;
        let mut f = [[_mm512_setzero_ps(); 2]; R];
        for b in 0..p.kb {
            // SAFETY: block b of the panel has 8 x NR x 4 codes, S x NR scales and corrections
            // and NR minimums; each activation row has kb blocks from b0 (asserted shapes in
            // gemm_with).
            unsafe {
                let cb = cp.add(b * 8 * NR * 4);
                let d2x: [f32; R] = std::array::from_fn(|r| *a.d2.get_unchecked(at(r) + b));
                let outlier = d2x.iter().any(|&v| v != 0.0);
                // Each scale's weights (the whole block, or each half for Q6_K's 16-weight
                // scales) get their own integer sums and float step.
                for h in 0..S {
                    let k = (b * S + h) * NR;
                    let c = [
                        _mm512_loadu_si512(p.corr.as_ptr().add(k) as *const __m512i),
                        _mm512_loadu_si512(p.corr.as_ptr().add(k + 16) as *const __m512i),
                    ];
                    let acc = block_sums::<R, S>(c, cb, &xq, b, h);
                    let d = [
                        _mm512_loadu_ps(p.d.as_ptr().add(k)),
                        _mm512_loadu_ps(p.d.as_ptr().add(k + 16)),
                    ];
                    // Outlier blocks (rare): the residual pass, for all R rows (zero codes and
                    // scale in rows without one).
                    if outlier {
                        let acc2 = block_sums::<R, S>(c, cb, &xq2, b, h);
                        for r in 0..R {
                            let dx = _mm512_set1_ps(d2x[r]);
                            for v in 0..2 {
                                let s = _mm512_mul_ps(d[v], dx);
                                f[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc2[r][v]), s, f[r][v]);
                            }
                        }
                    }
                    for r in 0..R {
                        let dx = _mm512_set1_ps(*a.d.get_unchecked(at(r) + b));
                        for v in 0..2 {
                            let s = _mm512_mul_ps(d[v], dx);
                            f[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][v]), s, f[r][v]);
                        }
                    }
                }
                if MINS {
                    let m = [
                        _mm512_loadu_ps(p.m.as_ptr().add(b * NR)),
                        _mm512_loadu_ps(p.m.as_ptr().add(b * NR + 16)),
                    ];
                    for (r, fr) in f.iter_mut().enumerate() {
                        let sx = _mm512_set1_ps(*a.s.get_unchecked(at(r) + b));
                        for (fv, mv) in fr.iter_mut().zip(m) {
                            *fv = _mm512_fmadd_ps(mv, sx, *fv);
                        }
                    }
                }
            }
        }
        let mask = |v: usize| -> __mmask16 {
            let n = width.saturating_sub(16 * v).min(16);
            if n == 16 {
                0xFFFF
            } else {
                (1u16 << n) - 1
            }
        };
        for (r, fr) in f.iter().enumerate() {
            for (v, fv) in fr.iter().enumerate() {
                let k = mask(v);
                // SAFETY: the masked lanes are within the caller's `width` columns of row r.
                unsafe {
                    let yp = y0.add(r * ld + 16 * v);
                    let old = _mm512_maskz_loadu_ps(k, yp);
                    _mm512_mask_storeu_ps(yp, k, _mm512_add_ps(old, *fv));
                }
            }
        }
    }
    /// One block's integer sums over the 4-input groups of its scale `h` of `S` (all 8 groups,
    /// or a half) for R rows: `c + sum(x codes * weight codes)` per output. The group count is
    /// a constant so that the loop unrolls.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI; `cb` points at the block's 8 x NR x 4 codes, each `xq[r]` at the
    /// chunk's first activation code with block `b` in bounds; `h < S`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn block_sums<const R: usize, const S: usize>(
        c: [__m512i; 2],
        cb: *const i8,
        xq: &[*const u8; R],
        b: usize,
        h: usize,
    ) -> [[__m512i; 2]; R] {
        let mut acc = [c; R];
        if R == 4 {
            // SAFETY: forwarded; R == 4 rows.
            unsafe { block_sums4::<R, S>(&mut acc, cb, xq, b, h) };
            return acc;
        }
        for k in 0..8 / S {
            let g = h * (8 / S) + k;
            // SAFETY: within the block (caller).
            unsafe {
                let w0 = _mm512_loadu_si512(cb.add(g * NR * 4) as *const __m512i);
                let w1 = _mm512_loadu_si512(cb.add(g * NR * 4 + 64) as *const __m512i);
                for r in 0..R {
                    let x4 = (xq[r].add(b * QK + g * 4) as *const i32).read_unaligned();
                    let xv = _mm512_set1_epi32(x4);
                    acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], xv, w0);
                    acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], xv, w1);
                }
            }
        }
        acc
    }

    /// [`block_sums`] for 4 rows, one `asm!` block per 4-input group so that each group's two
    /// weight vectors are loaded just before their 8 `vpdpbusd`. Written with intrinsics, the
    /// compiler hoisted all 16 of a block's weight loads ahead of the products, which left too
    /// few registers for the 16 accumulators and spilled the float ones to the stack in every
    /// block (`perf annotate`, Q4_0 pp512).
    ///
    /// # Safety
    /// As [`block_sums`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn block_sums4<const R: usize, const S: usize>(
        acc: &mut [[__m512i; 2]; R],
        cb: *const i8,
        xq: &[*const u8; R],
        b: usize,
        h: usize,
    ) {
        let [a0, a1, a2, a3] = acc.as_mut_slice() else {
            unreachable!("4 rows")
        };
        // Typed scratch outputs: with `out(zmm_reg) _` LLVM named a non-vector register.
        let mut scratch = [_mm512_setzero_si512(); 3];
        for k in 0..8 / S {
            let g = h * (8 / S) + k;
            let off = b * QK + g * 4;
            // SAFETY: reads the block's group g (128 code bytes) and 4 activation bytes of each
            // row (caller); writes only the accumulators and scratch registers.
            unsafe {
                std::arch::asm!(
                    "vmovdqu64 {w0:z}, zmmword ptr [{wp}]",
                    "vmovdqu64 {w1:z}, zmmword ptr [{wp} + 64]",
                    "vpbroadcastd {x:z}, dword ptr [{x0}]",
                    "vpdpbusd {a00:z}, {x:z}, {w0:z}",
                    "vpdpbusd {a01:z}, {x:z}, {w1:z}",
                    "vpbroadcastd {x:z}, dword ptr [{x1}]",
                    "vpdpbusd {a10:z}, {x:z}, {w0:z}",
                    "vpdpbusd {a11:z}, {x:z}, {w1:z}",
                    "vpbroadcastd {x:z}, dword ptr [{x2}]",
                    "vpdpbusd {a20:z}, {x:z}, {w0:z}",
                    "vpdpbusd {a21:z}, {x:z}, {w1:z}",
                    "vpbroadcastd {x:z}, dword ptr [{x3}]",
                    "vpdpbusd {a30:z}, {x:z}, {w0:z}",
                    "vpdpbusd {a31:z}, {x:z}, {w1:z}",
                    wp = in(reg) cb.add(g * NR * 4),
                    x0 = in(reg) xq[0].add(off),
                    x1 = in(reg) xq[1].add(off),
                    x2 = in(reg) xq[2].add(off),
                    x3 = in(reg) xq[3].add(off),
                    w0 = out(zmm_reg) scratch[0],
                    w1 = out(zmm_reg) scratch[1],
                    x = out(zmm_reg) scratch[2],
                    a00 = inout(zmm_reg) a0[0],
                    a01 = inout(zmm_reg) a0[1],
                    a10 = inout(zmm_reg) a1[0],
                    a11 = inout(zmm_reg) a1[1],
                    a20 = inout(zmm_reg) a2[0],
                    a21 = inout(zmm_reg) a2[1],
                    a30 = inout(zmm_reg) a3[0],
                    a31 = inout(zmm_reg) a3[1],
                    options(nostack, readonly, preserves_flags),
                );
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A plain `[rows, cols]` matrix of random codes, `subs` scales a block and minimums.
    struct Dense {
        rows: usize,
        cols: usize,
        subs: usize,
        codes: Vec<i8>,
        d: Vec<f32>,
        m: Option<Vec<f32>>,
    }

    impl Dense {
        fn random(rows: usize, cols: usize, (lo, hi): (i8, i8), mins: bool, subs: usize, seed: u64) -> Self {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let nb = rows * cols / QK;
            Dense {
                rows,
                cols,
                subs,
                codes: (0..rows * cols).map(|_| rng.gen_range(lo..=hi)).collect(),
                d: (0..nb * subs).map(|_| rng.gen_range(0.001f32..0.05)).collect(),
                m: mins.then(|| (0..nb).map(|_| rng.gen_range(-0.2f32..0.0)).collect()),
            }
        }
        fn weight(&self, r: usize, i: usize) -> f64 {
            let at = r * self.cols + i;
            let min = self.m.as_ref().map_or(0.0, |m| m[at / QK] as f64);
            self.codes[at] as f64 * self.d[at / (QK / self.subs)] as f64 + min
        }
    }

    impl BlockRows for Dense {
        fn rows(&self) -> usize {
            self.rows
        }
        fn cols(&self) -> usize {
            self.cols
        }
        fn has_mins(&self) -> bool {
            self.m.is_some()
        }
        fn scales_per_block(&self) -> usize {
            self.subs
        }
        fn unpack(&self, r: usize, b0: usize, codes: &mut [i8], scales: &mut [f32], mins: &mut [f32]) {
            let nb = codes.len() / QK;
            let at = r * self.cols + b0 * QK;
            codes.copy_from_slice(&self.codes[at..at + nb * QK]);
            let bb = r * self.cols / QK + b0;
            scales.copy_from_slice(&self.d[bb * self.subs..(bb + nb) * self.subs]);
            if let Some(m) = &self.m {
                mins.copy_from_slice(&m[bb..bb + nb]);
            }
        }
    }

    /// Every GEMM kernel this CPU runs (test helper, shared with the k-quant tests).
    pub(crate) fn kernels() -> Vec<GemmKernel> {
        let mut k = vec![GemmKernel::Scalar];
        if available() {
            k.push(GemmKernel::Avx512Vnni);
        }
        k
    }

    /// Against f64 `x W^T`: the only error allowed beyond f32 summation is x's rounding to
    /// int8, at most half a step (`amax / 127 / 2`) per value of each 32-block.
    #[test]
    fn matches_dense_product_for_every_shape_and_kernel() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // Rows: under one panel, a partial panel, several; cols: one block, the fixture's 576,
        // more than one chunk (KC_BLOCKS) with a partial last chunk.
        for (rows, cols) in [(5, 32), (33, 576), (64, 96), (40, (KC_BLOCKS + 3) * QK)] {
            // Q8_0-, Q4_0-, Q4_1- and Q6_K-like blocks (the last with a scale per 16 weights).
            for ((lo, hi), mins, subs) in [
                ((-128i8, 127i8), false, 1),
                ((-8, 7), false, 1),
                ((0, 15), true, 1),
                ((-32, 31), false, SUB_SCALES),
            ] {
                let w = Dense::random(rows, cols, (lo, hi), mins, subs, rows as u64);
                for n in [1, 3, 4, 7] {
                    let x: Vec<f32> = (0..n * cols)
                        .map(|i| rng.gen_range(-1.0f32..1.0) * if i % 13 == 0 { 20.0 } else { 1.0 })
                        .collect();
                    let a = BlockActs::new(&x, cols);
                    let ys: Vec<Vec<f32>> = kernels().into_iter().map(|k| gemm_with(&w, &a, n, k)).collect();
                    for r in 0..n {
                        for o in 0..rows {
                            let xr = &x[r * cols..(r + 1) * cols];
                            let want: f64 = (0..cols).map(|i| xr[i] as f64 * w.weight(o, i)).sum();
                            let mag: f64 = (0..cols).map(|i| (xr[i] as f64 * w.weight(o, i)).abs()).sum();
                            let wr: Vec<f32> = (0..cols).map(|i| w.weight(o, i) as f32).collect();
                            let round = crate::kernels::act::rounding_bound(xr, &wr, QK);
                            for (k, y) in kernels().into_iter().zip(&ys) {
                                let got = y[r * rows + o] as f64;
                                assert!(
                                    (got - want).abs() <= 1.001 * round + 1e-5 * mag,
                                    "{k:?} [{rows},{cols}] codes {lo}..{hi} n {n} ({r},{o}): {got} vs {want}"
                                );
                            }
                            // The SIMD kernel does the scalar one's integer arithmetic exactly
                            // and only sums floats in another order.
                            let (s, v) = (ys[0][r * rows + o] as f64, ys[ys.len() - 1][r * rows + o] as f64);
                            assert!((s - v).abs() <= 1e-5 * mag + 1e-6, "scalar {s} vs simd {v}");
                        }
                    }
                }
            }
        }
    }

    /// The vectorised quantizer and outlier test give the bytes of the plain formulas.
    #[test]
    fn block_quantizer_matches_the_plain_formulas() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let plain = |x: &[f32; QK]| -> ([u8; QK], bool) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let q = std::array::from_fn(|i| ((x[i] * id).round().clamp(-127.0, 127.0) as i32 + 128) as u8);
            let sum: f32 = x.iter().map(|v| v.abs()).sum();
            (q, amax / 127.0 * 127.0 * QK as f32 > OUTLIER_RATIO * sum)
        };
        let mut blocks: Vec<[f32; QK]> = (0..2000)
            .map(|k| {
                let scale = 10f32.powi(k % 7 - 3);
                std::array::from_fn(|_| rng.gen_range(-1.0f32..1.0) * scale)
            })
            .collect();
        // Ties at .5 steps, a tiny block (127 / amax is inf, so 0 * inf is NaN), zeros.
        blocks.push(std::array::from_fn(|i| (i as f32 - 16.0) * 0.5));
        blocks.push(std::array::from_fn(|i| if i == 3 { 1e-38 } else { 0.0 }));
        blocks.push([0.0; QK]);
        // Blocks at the outlier threshold: one value r times the others, r swept finely.
        for k in 0..400 {
            let mut x = [1.0f32; QK];
            x[7] = 4.0 * 31.0 / 28.0 + (k as f32 - 200.0) * 1e-6;
            blocks.push(x);
        }
        for x in &blocks {
            let (want_q, want_outlier) = plain(x);
            let mut q = [0u8; QK];
            let d = quantize32(x, &mut q);
            assert_eq!(q, want_q, "{x:?}");
            assert_eq!(is_outlier_block(x, d), want_outlier, "{x:?}");
        }
    }

    #[test]
    fn activation_blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        let a = BlockActs::new(&x, 64);
        assert_eq!((a.rows(), a.blocks), (1, 2));
        for (i, &v) in x.iter().enumerate() {
            let d = a.d[i / QK];
            let q = a.q[i] as i32 - 128;
            assert!((v - q as f32 * d).abs() <= 0.5 * d * 1.0001, "{i}");
        }
        let s0: i32 = a.q[..32].iter().map(|&q| q as i32 - 128).sum();
        assert!((a.s[0] - a.d[0] * s0 as f32).abs() < 1e-5);
        // An evenly spread ramp has no outlier: no residual pass.
        assert!(a.d2.iter().all(|&d| d == 0.0) && a.q2.iter().all(|&q| q == 128));
        let z = BlockActs::new(&[0.0; 32], 32);
        assert!(z.q.iter().all(|&q| q == 128) && z.d == [0.0] && z.s == [0.0] && z.d2 == [0.0]);
    }

    /// One channel 1000x the others: the first pass rounds the others to 0; with the residual
    /// pass they come back to within half a residual step.
    #[test]
    fn outlier_blocks_get_a_residual_pass() {
        let mut x: Vec<f32> = (0..32).map(|i| 0.1 + 0.01 * i as f32).collect();
        x[5] = 300.0;
        let a = BlockActs::new(&x, 32);
        assert!(a.d2[0] > 0.0);
        for (i, &v) in x.iter().enumerate() {
            let (q, q2) = (a.q[i] as i32 - 128, a.q2[i] as i32 - 128);
            let back = a.d[0] * q as f32 + a.d2[0] * q2 as f32;
            assert!((v - back).abs() <= 0.5 * a.d2[0] * 1.001 + 1e-6, "{i}: {v} vs {back}");
            if i != 5 {
                assert_eq!(q, 0, "the first pass flattens value {i}");
            }
        }
        // And the product of such a block matches the dense one closely.
        let w = Dense::random(4, 32, (0, 15), true, 1, 2);
        let y = gemm_with(&w, &a, 1, GemmKernel::Scalar);
        for (o, &yo) in y.iter().enumerate() {
            let want: f64 = (0..32).map(|i| x[i] as f64 * w.weight(o, i)).sum();
            let small: f64 = (0..32)
                .filter(|&i| i != 5)
                .map(|i| (x[i] as f64 * w.weight(o, i)).abs())
                .sum();
            assert!((yo as f64 - want).abs() < 0.02 * small, "{o}: {yo} vs {want}");
            if available() {
                let v = gemm_with(&w, &a, 1, GemmKernel::Avx512Vnni)[o] as f64;
                assert!((v - yo as f64).abs() < 1e-4 * want.abs().max(1.0), "simd {v} vs {yo}");
            }
        }
    }
}
