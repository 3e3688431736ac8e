//! `AwqLinear`: a 4-bit group-quantized linear layer that stays packed in memory and computes
//! `y = x W^T (+ b)` for f32 `x` [n, in].
//!
//! Speed idea. Codes stay packed (4 bits/weight: 1/4 of f16's memory traffic, which is what
//! bounds single-token decoding). Where groups are whole 32-blocks (AutoAWQ's 128, the
//! fixture's 64) the codes are held as Q4_1 values (`c * s + f16(-z * s)`) and use the integer
//! kernels of [`crate::kernels`]: with groups of 128 (or multiples) as `Q4_1G`, one scale and
//! minimum per 128 weights (4.25 bits a weight, less than Q4_0's 4.5), otherwise as per-block
//! Q4_1 (5 bits a weight). The decode kernels run below
//! `INT8_GEMM_MIN_ROWS` rows, the int8 GEMM (exact `(c - z) * s`) from there on (measured on
//! the 4-layer 7B shape: tg 11.4 -> 21.7 t/s, pp128 48 -> 159). Other layers keep two
//! kernels of their own:
//! * small batches (decode, n < `GEMM_MIN_ROWS`): never materialise weights. Per (row, group),
//!   `sum_i w_i x_i = s * (sum_i q_i x_i - z * sum_i x_i)`; the per-group sums of x are computed
//!   once and shared by all output rows, so the inner loop is just code -> f32 times x.
//!   When `in % 64 == 0` each 64-input block is stored nibble-transposed (word k, nibble j =
//!   input 8j + k), so extracting 8 consecutive codes is one *uniform* shift + mask over 8
//!   words, which the compiler turns into SIMD (shift, convert, multiply-add), with no tables
//!   and no gathers. Other widths use the natural order. Rows are split over rayon threads.
//! * larger batches: dequantize tiles of `GEMM_TILE` output rows exactly (a 16-entry table per
//!   group, `lut[c] = f16((c - z) * s)`, so values match AutoAWQ's fp16 dequantization bit for
//!   bit) and hand them to candle's blocked, SIMD, multithreaded GEMM; dequantization is then
//!   amortised over the n input rows.
//!
//! Measure in release builds: the dev profile's overflow checks keep LLVM from vectorising the
//! block loop. A standalone release build of that loop (AVX2) ran a 4096x4096 matvec in ~2.5 ms
//! on one core against ~5 ms for a dense f32 dot loop.
//!
//! The decode kernel sums in f32 without rounding each weight to f16, so it differs from the
//! exact fp16 dequantization by at most ~2^-11 relative per product (tests bound it).
use super::rtn::GroupQuant;
use super::QuantLinear;
use crate::error::{Error, Result};
use half::f16;
use rayon::prelude::*;

use super::gguf_linear::INT8_GEMM_MIN_ROWS;
use super::GEMM_MIN_ROWS;
use crate::kernels::gemm::{self, BlockRows};
use crate::kernels::pack::GROUP;
use crate::kernels::{matvec, BlockFormat, Kernel, PackedMatrix, QuantActs, QK};
/// Input rows processed together by the decode kernel.
const X_BATCH: usize = 8;

#[derive(Clone)]
pub struct AwqLinear {
    in_features: usize,
    out_features: usize,
    group_size: usize,
    /// [out, in/8] codes. Blocked (in % 64 == 0): within each 64-input block, word k nibble j
    /// holds input 8j + k. Otherwise natural: word c nibble j holds input 8c + j.
    /// Empty when `blocks` holds the codes.
    packed: Vec<u32>,
    blocked: bool,
    /// Where groups are whole 32-blocks: the codes as Q4_1 / Q4_1G values (`c * s + f16(-z * s)`)
    /// for the integer decode kernels of [`crate::kernels`] and the int8 GEMM; `packed` is then
    /// left empty, so memory stays at 4.25 (Q4_1G) or 5 bits a weight.
    blocks: Option<PackedMatrix>,
    /// [out, n_groups]
    zeros: Vec<u8>,
    /// [out, n_groups]
    scales: Vec<f16>,
    bias: Option<Vec<f32>>,
}

impl std::fmt::Debug for AwqLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AwqLinear {{ out: {}, in: {}, group_size: {}, bias: {} }}",
            self.out_features,
            self.in_features,
            self.group_size,
            self.bias.is_some()
        )
    }
}

impl AwqLinear {
    pub fn new(gq: &GroupQuant, bias: Option<Vec<f32>>) -> Result<Self> {
        gq.validate("AwqLinear")?;
        check_shape(gq.out_features, gq.in_features, gq.group_size, bias.as_deref())?;
        let blocked = gq.in_features.is_multiple_of(64);
        let blocks = if gq.in_features.is_multiple_of(QK) && gq.group_size.is_multiple_of(QK) {
            Some(q4_1_blocks(gq).map_err(|m| Error::tensor("AwqLinear", m))?)
        } else {
            None
        };
        let mut packed = vec![0u32; if blocks.is_some() { 0 } else { gq.q.len() / 8 }];
        if blocks.is_none() {
            for (i, &q) in gq.q.iter().enumerate() {
                let (w, shift) = code_pos(blocked, i);
                packed[w] |= (q as u32) << shift;
            }
        }
        Ok(AwqLinear {
            blocks,
            blocked,
            in_features: gq.in_features,
            out_features: gq.out_features,
            group_size: gq.group_size,
            packed,
            zeros: gq.zeros.clone(),
            scales: gq.scales.clone(),
            bias,
        })
    }

    /// From codes already in Q4_1G form (`blocks`, built from these `zeros` and `scales`,
    /// `[out, groups]`, by [`q4_1g_scales`]).
    pub(super) fn from_q4_1g(
        blocks: PackedMatrix,
        group_size: usize,
        zeros: Vec<u8>,
        scales: Vec<f16>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        let (out_features, in_features) = (blocks.rows, blocks.cols);
        check_shape(out_features, in_features, group_size, bias.as_deref())?;
        let ng = in_features / group_size;
        if zeros.len() != out_features * ng || scales.len() != out_features * ng || blocks.format != BlockFormat::Q4_1G
        {
            return Err(Error::tensor(
                "AwqLinear",
                format!(
                    "{} zeros and {} scales for [{out_features}, {in_features}] group {group_size}",
                    zeros.len(),
                    scales.len()
                ),
            ));
        }
        Ok(AwqLinear {
            blocks: Some(blocks),
            blocked: in_features.is_multiple_of(64),
            in_features,
            out_features,
            group_size,
            packed: Vec::new(),
            zeros,
            scales,
            bias,
        })
    }

    /// The codes as Q4_1 / Q4_1G blocks, where groups are whole 32-blocks.
    pub fn q4_blocks(&self) -> Option<&PackedMatrix> {
        self.blocks.as_ref()
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }
    pub fn out_features(&self) -> usize {
        self.out_features
    }
    pub fn group_size(&self) -> usize {
        self.group_size
    }
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Bytes held by the quantized weight (codes + zeros + scales).
    pub fn weight_bytes(&self) -> usize {
        self.packed.len() * 4 + self.zeros.len() + self.scales.len() * 2 + self.blocks.as_ref().map_or(0, |b| b.bytes())
    }

    /// Code of input `i` in output row `o`.
    fn code(&self, o: usize, i: usize) -> u8 {
        match &self.blocks {
            Some(b) => b.code(o, i / QK, i % QK) as u8,
            None => {
                let (w, shift) = code_pos(self.blocked, i);
                ((self.packed[o * self.in_features / 8 + w] >> shift) & 0xF) as u8
            }
        }
    }

    /// Back to the plain codes/zeros/scales.
    pub fn to_group_quant(&self) -> GroupQuant {
        let q = (0..self.out_features * self.in_features)
            .map(|i| {
                let (o, c) = (i / self.in_features, i % self.in_features);
                self.code(o, c)
            })
            .collect();
        GroupQuant {
            out_features: self.out_features,
            in_features: self.in_features,
            group_size: self.group_size,
            q,
            zeros: self.zeros.clone(),
            scales: self.scales.clone(),
        }
    }

    fn row_words(&self, o: usize) -> &[u32] {
        let w = self.in_features / 8;
        &self.packed[o * w..(o + 1) * w]
    }

    /// Dequantize one output row into `dst` (len = in_features), exactly `f16((q - z) * s)`.
    fn dequant_row(&self, o: usize, dst: &mut [f32]) {
        let (ng, gs) = (self.in_features / self.group_size, self.group_size);
        let mut luts = Vec::with_capacity(ng);
        for g in 0..ng {
            let z = self.zeros[o * ng + g] as f32;
            let s = self.scales[o * ng + g].to_f32();
            let mut lut = [0f32; 16];
            for (c, l) in lut.iter_mut().enumerate() {
                *l = f16::from_f32((c as f32 - z) * s).to_f32();
            }
            luts.push(lut);
        }
        if self.blocks.is_some() {
            for (i, v) in dst[..self.in_features].iter_mut().enumerate() {
                *v = luts[i / gs][self.code(o, i) as usize];
            }
            return;
        }
        let row = self.row_words(o);
        // Chunk c = inputs 8c..8c+8; its codes sit in word c (natural) or at nibble c % 8 of
        // the 8 words of block c / 8 (blocked).
        for (c, d) in dst.chunks_exact_mut(8).enumerate() {
            let lut = &luts[8 * c / gs];
            if self.blocked {
                let (ws, shift) = (&row[(c / 8) * 8..(c / 8) * 8 + 8], 4 * (c % 8));
                for (v, w) in d.iter_mut().zip(ws) {
                    *v = lut[((w >> shift) & 0xF) as usize];
                }
            } else {
                let w = row[c];
                for (j, v) in d.iter_mut().enumerate() {
                    *v = lut[((w >> (4 * j)) & 0xF) as usize];
                }
            }
        }
    }

    /// The dequantized weight, f32 [out, in] (values are exactly the f16 dequantization).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out_features * self.in_features];
        w.par_chunks_mut(self.in_features)
            .enumerate()
            .for_each(|(o, row)| self.dequant_row(o, row));
        w
    }

    fn check_input(&self, x: &[f32], n: usize) -> Result<()> {
        if x.len() != n * self.in_features {
            return Err(Error::invalid(
                "AwqLinear input",
                format!("{} values do not form [{n}, {}]", x.len(), self.in_features),
            ));
        }
        Ok(())
    }

    /// `x` [n, in] row-major → y [n, out]; picks the kernel by batch size (see module docs).
    pub fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.check_input(x, n)?;
        let mut y = if n >= INT8_GEMM_MIN_ROWS && self.int8_gemm_fits() && gemm::available() {
            gemm::gemm(self, x, n)
        } else if n >= GEMM_MIN_ROWS {
            self.forward_gemm(x, n)?
        } else {
            self.forward_decode(x, n, true)
        };
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out_features) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        Ok(y)
    }

    /// Whether the int8 GEMM takes this layer: its 32-blocks must each sit in one group.
    fn int8_gemm_fits(&self) -> bool {
        self.in_features.is_multiple_of(QK) && self.group_size.is_multiple_of(QK)
    }

    /// Small-batch kernel: codes times x per group, scale and zero applied once per group.
    /// `simd` allows the AVX2+FMA build of the block loop where the CPU has it.
    fn forward_decode(&self, x: &[f32], n: usize, simd: bool) -> Vec<f32> {
        if n == 0 {
            return Vec::new();
        }
        if let Some(b) = &self.blocks {
            let k = if simd { Kernel::best() } else { Kernel::Scalar };
            let mut y = vec![0f32; n * self.out_features];
            matvec(b, &QuantActs::new(x, self.in_features), k, &mut y);
            return y;
        }
        #[cfg(target_arch = "x86_64")]
        let avx2 = simd && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        let (inf, outf, gs) = (self.in_features, self.out_features, self.group_size);
        let ng = inf / gs;
        let mut y = vec![0f32; n * outf];
        for r0 in (0..n).step_by(X_BATCH) {
            let nb = X_BATCH.min(n - r0);
            let xb = &x[r0 * inf..(r0 + nb) * inf];
            // Per (row, group) input sums, for the zero-point term.
            let xsum: Vec<f32> = xb.chunks_exact(gs).map(|c| c.iter().sum()).collect();
            let mut yt = vec![0f32; outf * nb];
            yt.par_chunks_mut(nb).enumerate().for_each(|(o, yo)| {
                let row = self.row_words(o);
                for g in 0..ng {
                    let mut lanes = [[0f32; 8]; X_BATCH];
                    if self.blocked && gs.is_multiple_of(64) {
                        // Whole 64-input blocks: fixed-size arrays, no bounds checks inside.
                        let blocks = g * gs / 64..(g + 1) * gs / 64;
                        #[cfg(target_arch = "x86_64")]
                        if avx2 {
                            // SAFETY: `avx2` is true only when the CPU reports AVX2 and FMA.
                            unsafe { blocks_dot_avx2(row, xb, inf, nb, blocks, &mut lanes) };
                            continue_group(&lanes, nb, o, g, ng, &self.scales, &self.zeros, &xsum, yo);
                            continue;
                        }
                        blocks_dot(row, xb, inf, nb, blocks, &mut lanes);
                    } else {
                        for c in g * gs / 8..(g + 1) * gs / 8 {
                            let mut q = [0f32; 8];
                            if self.blocked {
                                let (ws, shift) = (&row[(c / 8) * 8..(c / 8) * 8 + 8], 4 * (c % 8));
                                for (qv, w) in q.iter_mut().zip(ws) {
                                    *qv = ((w >> shift) & 0xF) as f32;
                                }
                            } else {
                                let w = row[c];
                                for (j, qv) in q.iter_mut().enumerate() {
                                    *qv = ((w >> (4 * j)) & 0xF) as f32;
                                }
                            }
                            for (r, lane) in lanes.iter_mut().enumerate().take(nb) {
                                let xc = &xb[r * inf + 8 * c..r * inf + 8 * c + 8];
                                for k in 0..8 {
                                    lane[k] += q[k] * xc[k];
                                }
                            }
                        }
                    }
                    continue_group(&lanes, nb, o, g, ng, &self.scales, &self.zeros, &xsum, yo);
                }
            });
            for o in 0..outf {
                for r in 0..nb {
                    y[(r0 + r) * outf + o] = yt[o * nb + r];
                }
            }
        }
        y
    }

    /// Large-batch kernel: exact dequantization of row tiles, candle GEMM per tile.
    fn forward_gemm(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        super::gemm_by_row_tiles(self.out_features, self.in_features, x, n, |o, dst| {
            self.dequant_row(o, dst)
        })
    }

    /// Scalar reference: dequantize everything, then a plain triple loop.
    pub fn forward_reference(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        self.check_input(x, n)?;
        let w = self.dequantize();
        let (inf, outf) = (self.in_features, self.out_features);
        let mut y = vec![0f32; n * outf];
        for r in 0..n {
            for o in 0..outf {
                let mut acc = 0f64;
                for i in 0..inf {
                    acc += x[r * inf + i] as f64 * w[o * inf + i] as f64;
                }
                y[r * outf + o] = acc as f32 + self.bias.as_ref().map_or(0.0, |b| b[o]);
            }
        }
        Ok(y)
    }
}

impl QuantLinear for AwqLinear {
    fn storage_bytes(&self) -> usize {
        self.weight_bytes() + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }
    fn dequantize_weight(&self) -> Vec<f32> {
        AwqLinear::dequantize(self)
    }
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        AwqLinear::forward_f32(self, x, n)
    }
}

/// Add `s * (sum_i q_i x_i - z * sum_i x_i)` of group g to each input row's output.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn continue_group(
    lanes: &[[f32; 8]; X_BATCH],
    nb: usize,
    o: usize,
    g: usize,
    ng: usize,
    scales: &[f16],
    zeros: &[u8],
    xsum: &[f32],
    yo: &mut [f32],
) {
    let s = scales[o * ng + g].to_f32();
    let z = zeros[o * ng + g] as f32;
    for (r, lane) in lanes.iter().enumerate().take(nb) {
        let d: f32 = lane.iter().sum();
        yo[r] += s * (d - z * xsum[r * ng + g]);
    }
}

/// Lane sums of codes times x over whole nibble-transposed 64-input blocks `blocks` of a row,
/// for `nb` input rows of `xb` (row stride `inf`).
#[inline(always)]
fn blocks_dot(
    row: &[u32],
    xb: &[f32],
    inf: usize,
    nb: usize,
    blocks: std::ops::Range<usize>,
    lanes: &mut [[f32; 8]; X_BATCH],
) {
    for b in blocks {
        let ws: &[u32; 8] = row[8 * b..8 * b + 8].try_into().expect("8 words");
        let q = decode_block(ws);
        for (r, lane) in lanes.iter_mut().enumerate().take(nb) {
            let xs: &[f32; 64] = xb[r * inf + 64 * b..r * inf + 64 * b + 64]
                .try_into()
                .expect("64 inputs");
            for j in 0..8 {
                for k in 0..8 {
                    lane[k] += q[8 * j + k] * xs[8 * j + k];
                }
            }
        }
    }
}

/// The same loop compiled for AVX2 (+FMA): 8-wide shifts, converts, multiplies and adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn blocks_dot_avx2(
    row: &[u32],
    xb: &[f32],
    inf: usize,
    nb: usize,
    blocks: std::ops::Range<usize>,
    lanes: &mut [[f32; 8]; X_BATCH],
) {
    blocks_dot(row, xb, inf, nb, blocks, lanes)
}

/// Codes of one nibble-transposed 64-input block as f32, in input order: input 8j + k is
/// nibble j of word k, so each group of 8 is one uniform shift + mask + convert (SIMD).
#[inline(always)]
fn decode_block(ws: &[u32; 8]) -> [f32; 64] {
    let mut q = [0f32; 64];
    for j in 0..8 {
        for k in 0..8 {
            q[8 * j + k] = ((ws[k] >> (4 * j)) & 0xF) as i32 as f32;
        }
    }
    q
}

/// Word index (within a row) and bit shift of input `i`'s code (see `AwqLinear::packed`).
/// The int8 GEMM's view of an AutoAWQ layer: signed codes `c - z` (-15..=15) with the group's
/// scale, so `w = (c - z) * s` needs no minimum term. (AutoAWQ rounds each weight to f16; this
/// computes `(c - z) * s` unrounded, as the decode kernel does.)
impl BlockRows for AwqLinear {
    fn rows(&self) -> usize {
        self.out_features
    }

    fn cols(&self) -> usize {
        self.in_features
    }

    fn has_mins(&self) -> bool {
        false
    }

    fn unpack(&self, r: usize, b0: usize, codes: &mut [i8], scales: &mut [f32], mins: &mut [f32]) {
        let nb = scales.len();
        let (ng, per_group) = (self.in_features / self.group_size, self.group_size / QK);
        let (i0, i1) = (b0 * QK, (b0 + nb) * QK);
        if let Some(b) = &self.blocks {
            // Q4_1 codes come out as they are (0..=15); the zeros are taken off below.
            b.unpack(r, b0, codes, scales, mins);
        } else if self.blocked {
            let row = self.row_words(r);
            // Whole 64-input blocks: word k, nibble j holds input 8j + k. A chunk of blocks
            // may start or end half way through one.
            for blk in i0 / 64..i1.div_ceil(64) {
                let ws = &row[blk * 8..blk * 8 + 8];
                for j in 0..8 {
                    for (k, w) in ws.iter().enumerate() {
                        let i = blk * 64 + 8 * j + k;
                        if (i0..i1).contains(&i) {
                            codes[i - i0] = ((w >> (4 * j)) & 0xF) as i8;
                        }
                    }
                }
            }
        } else {
            let row = self.row_words(r);
            for (i, c) in (i0..i1).zip(codes.iter_mut()) {
                *c = ((row[i / 8] >> (4 * (i % 8))) & 0xF) as i8;
            }
        }
        for (bi, s) in scales.iter_mut().enumerate() {
            let g = (b0 + bi) / per_group;
            *s = self.scales[r * ng + g].to_f32();
            let z = self.zeros[r * ng + g] as i8;
            for c in &mut codes[bi * QK..(bi + 1) * QK] {
                *c -= z;
            }
        }
    }
}

fn check_shape(out: usize, inf: usize, group_size: usize, bias: Option<&[f32]>) -> Result<()> {
    if inf == 0 || out == 0 {
        return Err(Error::invalid(
            "AwqLinear shape",
            format!("[{out}, {inf}] has no weights"),
        ));
    }
    if !group_size.is_multiple_of(8) {
        return Err(Error::invalid(
            "group_size",
            format!("{group_size} is not a multiple of 8"),
        ));
    }
    if let Some(b) = bias {
        if b.len() != out {
            return Err(Error::tensor("bias", format!("{} values for {out} outputs", b.len())));
        }
    }
    Ok(())
}

/// Per row and 128 weights, the Q4_1G scale `s` and minimum `f16(-z * s)` of a matrix whose
/// groups (`zeros`, `scales` `[out, in / group_size]`) are whole multiples of 128.
pub(super) fn q4_1g_scales(
    out: usize,
    inf: usize,
    group_size: usize,
    zeros: &[u8],
    scales: &[f16],
) -> (Vec<f16>, Vec<f16>) {
    let (gw, ng) = (GROUP * QK, inf / group_size);
    let per_row = inf / gw;
    let group = |i: usize| (i / per_row) * ng + (i % per_row) * gw / group_size;
    let n = out * per_row;
    let mins = (0..n).map(|i| q4_1_min(zeros[group(i)], scales[group(i)]));
    ((0..n).map(|i| scales[group(i)]).collect(), mins.collect())
}

/// The Q4_1 minimum of an AutoAWQ group: `f16(-z * s)`.
fn q4_1_min(zero: u8, scale: f16) -> f16 {
    f16::from_f32(-(zero as f32) * scale.to_f32())
}

/// The codes of a group-quantized matrix whose groups are whole 32-blocks as Q4_1 values: scale
/// `s`, minimum `f16(-z * s)` (AutoAWQ rounds each weight `(c - z) * s` to f16 itself, an error
/// of the same size), codes as they are. Groups that are whole multiples of 128 weights become
/// one `Q4_1G` scale and minimum per 128; others one Q4_1 block per 32.
fn q4_1_blocks(gq: &GroupQuant) -> std::result::Result<PackedMatrix, String> {
    // In panels where the panel kernel runs (see `kernels::panel`).
    let panels = crate::kernels::panel::suits(Kernel::best());
    let (inf, gs) = (gq.in_features, gq.group_size);
    let ng = inf / gs;
    let min = |g: usize| q4_1_min(gq.zeros[g], gq.scales[g]);
    if gs.is_multiple_of(GROUP * QK) {
        let (scales, mins) = q4_1g_scales(gq.out_features, inf, gs, &gq.zeros, &gq.scales);
        return PackedMatrix::q4_1_grouped_in(gq.out_features, inf, &gq.q, scales, mins, panels);
    }
    let mut bytes = Vec::with_capacity(gq.out_features * inf / QK * 20);
    for o in 0..gq.out_features {
        for b in 0..inf / QK {
            let g = o * ng + b * QK / gs;
            bytes.extend_from_slice(&gq.scales[g].to_le_bytes());
            bytes.extend_from_slice(&min(g).to_le_bytes());
            let q = &gq.q[o * inf + b * QK..o * inf + (b + 1) * QK];
            bytes.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
        }
    }
    PackedMatrix::from_gguf_in(BlockFormat::Q4_1, gq.out_features, inf, &bytes, panels)
}

fn code_pos(blocked: bool, i: usize) -> (usize, usize) {
    if blocked {
        let (block, t) = (i / 64, i % 64);
        (block * 8 + t % 8, 4 * (t / 8))
    } else {
        (i / 8, 4 * (i % 8))
    }
}

/// Dot product with 8 independent accumulators so the loop vectorises (and rounds less).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Tensor};
    use rand::{Rng, SeedableRng};

    fn random_layer(rng: &mut rand::rngs::StdRng, out: usize, inf: usize, gs: usize, bias: bool) -> AwqLinear {
        let gq = GroupQuant::random(rng, out, inf, gs, 0.05);
        let b = bias.then(|| (0..out).map(|_| rng.gen_range(-1.0..1.0)).collect());
        AwqLinear::new(&gq, b).unwrap()
    }

    #[test]
    fn fast_path_matches_reference_on_random_shapes_with_tails() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Both layouts (in % 64 == 0 or not), all kernels (n < 12: decode, in X_BATCH chunks
        // with a tail; n >= 12 with 32-aligned groups: the int8 GEMM, incl. a second K chunk
        // and chunks ending inside a 64-input block; other n >= 16: GEMM over row tiles with a
        // tail), odd out, n = 0.
        for &(out, inf, gs, n, bias) in &[
            (1, 8, 8, 1, false),
            (13, 24, 8, 3, true),
            (17, 72, 24, 5, false),
            (64, 256, 128, 1, true),
            (9, 40, 40, 0, false),
            (33, 136, 8, 7, true),
            (21, 192, 32, 13, false),
            (40, 2112, 64, 12, true),
            (300, 128, 64, 17, true),
            (7, 64, 64, 40, false),
            (5, 320, 64, 0, true),
            // Groups of 128 and 256 held as Q4_1G: decode and the int8 GEMM.
            (20, 384, 128, 3, true),
            (24, 512, 256, 14, false),
        ] {
            let l = random_layer(&mut rng, out, inf, gs, bias);
            let x: Vec<f32> = (0..n * inf).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let fast = l.forward_f32(&x, n).unwrap();
            let slow = l.forward_reference(&x, n).unwrap();
            assert_eq!(fast.len(), n * out);
            let w = l.dequantize();
            // The portable decode loop too (forward_f32 picks AVX2 where available).
            let mut portable = l.forward_decode(&x, n, false);
            if let Some(b) = l.bias() {
                portable
                    .chunks_exact_mut(out)
                    .for_each(|row| row.iter_mut().zip(b).for_each(|(v, b)| *v += b));
            }
            for r in 0..n {
                for o in 0..out {
                    // The decode kernel skips the per-weight f16 rounding: <= 2^-11 relative.
                    let mag: f32 = (0..inf).map(|i| (x[r * inf + i] * w[o * inf + i]).abs()).sum();
                    // Where groups are whole 32-blocks, x is rounded to int8: by the decode
                    // kernels per 4 values, by the int8 GEMM per 32 (half a step per value).
                    let (xr, wr) = (&x[r * inf..(r + 1) * inf], &w[o * inf..(o + 1) * inf]);
                    let round = |lane: usize| crate::kernels::act::rounding_bound(xr, wr, lane) as f32;
                    let blocks = l.blocks.is_some();
                    let decode_round = if blocks { round(4) } else { 0.0 };
                    let fast_round = match n >= INT8_GEMM_MIN_ROWS && gemm::available() {
                        true if blocks => round(QK),
                        _ if n < GEMM_MIN_ROWS => decode_round,
                        _ => 0.0,
                    };
                    let p = portable[r * out + o];
                    let ptol = 1e-3 * mag + 1.001 * decode_round + 1e-5;
                    assert!((p - slow[r * out + o]).abs() <= ptol, "portable {p}");
                    let tol = 1e-3 * mag + 1.001 * fast_round + 1e-5;
                    let (a, b) = (fast[r * out + o], slow[r * out + o]);
                    assert!((a - b).abs() <= tol, "{out}x{inf} g{gs} n{n}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn round_trips_group_quant_and_rejects_bad_input() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let l = random_layer(&mut rng, 8, 32, 16, false);
        let gq = l.to_group_quant();
        let l2 = AwqLinear::new(&gq, None).unwrap();
        assert_eq!(l.dequantize(), l2.dequantize());
        assert!(l.forward_f32(&[0.0; 31], 1).is_err());
        let x = Tensor::zeros((2, 3, 31), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(l.forward(&x).is_err());
        let x = Tensor::ones((2, 3, 32), DType::F16, &candle_core::Device::Cpu).unwrap();
        let y = l.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 3, 8]);
        assert_eq!(y.dtype(), DType::F16);
        assert!(AwqLinear::new(&gq, Some(vec![0.0; 7])).is_err());
        // Debug prints the shape, not the codes (layers get logged).
        let d: std::sync::Arc<dyn QuantLinear> = std::sync::Arc::new(l);
        assert_eq!(
            format!("{d:?}"),
            "AwqLinear { out: 8, in: 32, group_size: 16, bias: false }"
        );
    }
}
