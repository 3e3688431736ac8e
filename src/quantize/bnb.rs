//! bitsandbytes-style weight formats, kept quantized in memory with their own matmuls:
//! * [`Int8Linear`]: LLM.int8() — row-wise absmax int8 weights; input feature columns whose
//!   magnitude exceeds `threshold` (default 6.0) go through an f32 path, the rest through
//!   int8 x int8 with i32 accumulation. Weight columns holding a value above the threshold are
//!   kept in f32 as well, so a few huge weights do not flatten the int8 scale of their row.
//! * [`Bnb4Linear`]: NF4 / FP4 blockwise (block 64 over the flattened weight) with one f32
//!   absmax per block and bitsandbytes' code tables; two codes per byte, first in the high nibble.
use super::awq_linear::dot;
use super::QuantLinear;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// bitsandbytes' NF4 table (quantiles of N(0,1), normalised to [-1, 1]), indexed by code.
/// The digits are bitsandbytes' published (f64) ones so the table can be checked against it.
#[allow(clippy::excessive_precision)]
pub const NF4_TABLE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// bitsandbytes' FP4 table (e2m1 with bias 3 and no inf/nan, values 0, 0.0625, 2, 3, 4, 6, 8, 12
/// normalised by 12), in the decimal literals of its dequantization kernel, indexed by code:
/// codes 0..7 are positive, bit 3 is the sign.
#[allow(clippy::excessive_precision)]
pub const FP4_TABLE: [f32; 16] = [
    0.0,
    5.208333333e-03,
    0.66666667,
    1.0,
    0.33333333,
    0.5,
    0.16666667,
    0.25,
    -0.0,
    -5.208333333e-03,
    -0.66666667,
    -1.0,
    -0.33333333,
    -0.5,
    -0.16666667,
    -0.25,
];

pub const DEFAULT_INT8_THRESHOLD: f32 = 6.0;
pub const DEFAULT_4BIT_BLOCK: usize = 64;

fn check_matrix(name: &str, w: &[f32], out: usize, inf: usize) -> Result<()> {
    if out == 0 || inf == 0 || w.len() != out * inf {
        return Err(Error::tensor(
            name,
            format!("{} values do not form [{out}, {inf}]", w.len()),
        ));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(name, format!("non-finite weight at flat index {i}")));
    }
    Ok(())
}

fn check_input(what: &str, x: &[f32], n: usize, inf: usize) -> Result<()> {
    if x.len() != n * inf {
        return Err(Error::invalid(
            what,
            format!("{} values do not form [{n}, {inf}]", x.len()),
        ));
    }
    Ok(())
}

fn check_bias(bias: &Option<Vec<f32>>, out: usize) -> Result<()> {
    match bias {
        Some(b) if b.len() != out => Err(Error::tensor("bias", format!("{} values for {out} outputs", b.len()))),
        _ => Ok(()),
    }
}

/// Row-wise absmax int8 weight with f32 outlier columns (LLM.int8()).
#[derive(Clone)]
pub struct Int8Linear {
    out_features: usize,
    in_features: usize,
    threshold: f32,
    /// [out, in]; zero in outlier columns.
    codes: Vec<i8>,
    /// absmax / 127 of each row over the non-outlier columns.
    row_scale: Vec<f32>,
    /// Sorted weight columns kept in f32.
    outlier_cols: Vec<usize>,
    /// [out, outlier_cols.len()]
    outlier_w: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl std::fmt::Debug for Int8Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Int8Linear {{ out: {}, in: {}, threshold: {}, outlier_cols: {}, bias: {} }}",
            self.out_features,
            self.in_features,
            self.threshold,
            self.outlier_cols.len(),
            self.bias.is_some()
        )
    }
}

impl Int8Linear {
    /// Quantize `w` [out, in]. `threshold` (LLM.int8() uses 6.0) selects outlier columns, both
    /// in the weight (here) and in the input (at matmul time).
    pub fn quantize(
        name: &str,
        w: &[f32],
        out: usize,
        inf: usize,
        threshold: f32,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        check_matrix(name, w, out, inf)?;
        check_bias(&bias, out)?;
        if threshold.is_nan() || threshold <= 0.0 {
            return Err(Error::invalid("int8 threshold", format!("{threshold} must be > 0")));
        }
        let is_outlier: Vec<bool> = (0..inf)
            .map(|c| (0..out).any(|r| w[r * inf + c].abs() > threshold))
            .collect();
        let outlier_cols: Vec<usize> = (0..inf).filter(|&c| is_outlier[c]).collect();
        let mut codes = vec![0i8; out * inf];
        let mut row_scale = vec![0f32; out];
        let mut outlier_w = Vec::with_capacity(out * outlier_cols.len());
        for r in 0..out {
            let row = &w[r * inf..(r + 1) * inf];
            let absmax = row
                .iter()
                .zip(&is_outlier)
                .filter(|(_, &o)| !o)
                .fold(0f32, |m, (v, _)| m.max(v.abs()));
            let s = absmax / 127.0;
            row_scale[r] = s;
            if s > 0.0 {
                for (c, v) in row.iter().enumerate() {
                    if !is_outlier[c] {
                        codes[r * inf + c] = (v / s).round().clamp(-127.0, 127.0) as i8;
                    }
                }
            }
            outlier_w.extend(outlier_cols.iter().map(|&c| row[c]));
        }
        Ok(Int8Linear {
            out_features: out,
            in_features: inf,
            threshold,
            codes,
            row_scale,
            outlier_cols,
            outlier_w,
            bias,
        })
    }

    /// From stored row-wise codes and per-row absmax (bitsandbytes' `SCB`); no weight outliers.
    pub fn from_rowwise(
        out: usize,
        inf: usize,
        codes: Vec<i8>,
        absmax: &[f32],
        threshold: f32,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        if out == 0 || inf == 0 || codes.len() != out * inf || absmax.len() != out {
            return Err(Error::tensor(
                "weight",
                format!(
                    "{} codes / {} row scales do not fit [{out}, {inf}]",
                    codes.len(),
                    absmax.len()
                ),
            ));
        }
        if let Some(r) = absmax.iter().position(|a| !a.is_finite() || *a < 0.0) {
            return Err(Error::tensor("SCB", format!("row {r} absmax {} is invalid", absmax[r])));
        }
        check_bias(&bias, out)?;
        Ok(Int8Linear {
            out_features: out,
            in_features: inf,
            threshold,
            codes,
            row_scale: absmax.iter().map(|a| a / 127.0).collect(),
            outlier_cols: Vec::new(),
            outlier_w: Vec::new(),
            bias,
        })
    }

    pub fn outlier_cols(&self) -> &[usize] {
        &self.outlier_cols
    }
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }
    pub fn row_scale(&self) -> &[f32] {
        &self.row_scale
    }

    /// Row o of the dequantized weight into `dst`.
    fn dequant_row(&self, o: usize, dst: &mut [f32]) {
        let inf = self.in_features;
        let s = self.row_scale[o];
        for (d, &c) in dst.iter_mut().zip(&self.codes[o * inf..(o + 1) * inf]) {
            *d = c as f32 * s;
        }
        let no = self.outlier_cols.len();
        for (j, &c) in self.outlier_cols.iter().enumerate() {
            dst[c] = self.outlier_w[o * no + j];
        }
    }

    /// `codes * row_scale`, with the outlier columns restored in f32; [out, in].
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out_features * self.in_features];
        for (o, row) in w.chunks_exact_mut(self.in_features).enumerate() {
            self.dequant_row(o, row);
        }
        w
    }
}

impl QuantLinear for Int8Linear {
    fn storage_bytes(&self) -> usize {
        self.codes.len()
            + self.row_scale.len() * 4
            + self.outlier_cols.len() * 8
            + self.outlier_w.len() * 4
            + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }
    fn dequantize_weight(&self) -> Vec<f32> {
        Int8Linear::dequantize(self)
    }
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }

    /// Small batches: LLM.int8()'s mixed-precision decomposition. Columns where the weight or
    /// any input row exceeds the threshold are multiplied in f32 (with the dequantized weight);
    /// every other column is int8 (row-wise absmax of x) times int8 weight, accumulated in i32
    /// and rescaled once. Batches of `GEMM_MIN_ROWS` or more use the dequantized weight.
    fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let (out, inf) = (self.out_features, self.in_features);
        check_input("Int8Linear input", x, n, inf)?;
        if n >= super::GEMM_MIN_ROWS {
            // Large batches: the dequantized weight through f32 GEMM is both faster on CPU than
            // scalar int8 dots and more accurate (no activation quantization).
            let w = self.dequantize();
            let mut y =
                super::gemm_by_row_tiles(out, inf, x, n, |o, dst| dst.copy_from_slice(&w[o * inf..(o + 1) * inf]))?;
            if let Some(b) = &self.bias {
                for row in y.chunks_exact_mut(out) {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
            }
            return Ok(y);
        }
        let mut fp_col = vec![false; inf];
        for &c in &self.outlier_cols {
            fp_col[c] = true;
        }
        for r in 0..n {
            for (c, v) in x[r * inf..(r + 1) * inf].iter().enumerate() {
                if v.abs() > self.threshold || !v.is_finite() {
                    fp_col[c] = true;
                }
            }
        }
        let fp_cols: Vec<usize> = (0..inf).filter(|&c| fp_col[c]).collect();
        // Quantize x row-wise over the int8 columns; the f32 columns are zeroed there.
        let mut xq = vec![0i8; n * inf];
        let mut xs = vec![0f32; n];
        for r in 0..n {
            let row = &x[r * inf..(r + 1) * inf];
            let absmax = row
                .iter()
                .zip(&fp_col)
                .filter(|(_, &f)| !f)
                .fold(0f32, |m, (v, _)| m.max(v.abs()));
            let s = absmax / 127.0;
            xs[r] = s;
            if s > 0.0 {
                for c in 0..inf {
                    if !fp_col[c] {
                        xq[r * inf + c] = (row[c] / s).round().clamp(-127.0, 127.0) as i8;
                    }
                }
            }
        }
        let w_outlier_pos: std::collections::HashMap<usize, usize> =
            self.outlier_cols.iter().enumerate().map(|(j, &c)| (c, j)).collect();
        let no = self.outlier_cols.len();
        let mut yt = vec![0f32; out * n];
        yt.par_chunks_mut(n.max(1)).take(out).enumerate().for_each(|(o, yo)| {
            let wrow = &self.codes[o * inf..(o + 1) * inf];
            // The f32 columns' weights of this row: outlier storage or dequantized int8.
            let wfp: Vec<f32> = fp_cols
                .iter()
                .map(|c| match w_outlier_pos.get(c) {
                    Some(&j) => self.outlier_w[o * no + j],
                    None => wrow[*c] as f32 * self.row_scale[o],
                })
                .collect();
            for (r, y) in yo.iter_mut().enumerate() {
                let xr = &xq[r * inf..(r + 1) * inf];
                let acc: i32 = xr.iter().zip(wrow).map(|(&a, &b)| a as i32 * b as i32).sum();
                let mut v = acc as f32 * xs[r] * self.row_scale[o];
                for (c, wv) in fp_cols.iter().zip(&wfp) {
                    v += x[r * inf + c] * wv;
                }
                *y = v + self.bias.as_ref().map_or(0.0, |b| b[o]);
            }
        });
        Ok(transpose(&yt, out, n))
    }
}

fn transpose(yt: &[f32], out: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * out];
    for o in 0..out {
        for r in 0..n {
            y[r * out + o] = yt[o * n + r];
        }
    }
    y
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bnb4Kind {
    Nf4,
    Fp4,
}

impl Bnb4Kind {
    pub fn table(self) -> &'static [f32; 16] {
        match self {
            Bnb4Kind::Nf4 => &NF4_TABLE,
            Bnb4Kind::Fp4 => &FP4_TABLE,
        }
    }

    /// Nearest code for a value already divided by the block absmax (in [-1, 1]).
    fn encode(self, v: f32) -> u8 {
        let (table, search, sign) = match self {
            Bnb4Kind::Nf4 => (&NF4_TABLE, 0..16u8, 0u8),
            // FP4 is sign-magnitude: encode |v| among the positive codes, then set the sign bit.
            Bnb4Kind::Fp4 => (&FP4_TABLE, 0..8u8, if v < 0.0 { 8 } else { 0 }),
        };
        let a = if self == Bnb4Kind::Fp4 { v.abs() } else { v };
        let best = search
            .min_by(|&p, &q| {
                let (dp, dq) = ((table[p as usize] - a).abs(), (table[q as usize] - a).abs());
                dp.total_cmp(&dq)
            })
            .unwrap_or(0);
        best | sign
    }
}

/// NF4 / FP4 blockwise weight.
#[derive(Clone)]
pub struct Bnb4Linear {
    kind: Bnb4Kind,
    out_features: usize,
    in_features: usize,
    block_size: usize,
    /// ceil(out*in / 2) bytes; element 2k in the high nibble of byte k.
    packed: Vec<u8>,
    /// One per block of the flattened weight.
    absmax: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl std::fmt::Debug for Bnb4Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bnb4Linear {{ {:?}, out: {}, in: {}, block: {}, bias: {} }}",
            self.kind,
            self.out_features,
            self.in_features,
            self.block_size,
            self.bias.is_some()
        )
    }
}

impl Bnb4Linear {
    pub fn quantize(
        name: &str,
        kind: Bnb4Kind,
        w: &[f32],
        out: usize,
        inf: usize,
        block_size: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        check_matrix(name, w, out, inf)?;
        check_bias(&bias, out)?;
        if block_size == 0 || !block_size.is_multiple_of(2) {
            return Err(Error::invalid(
                "4-bit block size",
                format!("{block_size} must be even and > 0"),
            ));
        }
        let absmax: Vec<f32> = w
            .chunks(block_size)
            .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        let codes: Vec<u8> = w
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let a = absmax[k / block_size];
                kind.encode(if a > 0.0 { v / a } else { 0.0 })
            })
            .collect();
        let packed = codes
            .chunks(2)
            .map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(0))
            .collect();
        Ok(Bnb4Linear {
            kind,
            out_features: out,
            in_features: inf,
            block_size,
            packed,
            absmax,
            bias,
        })
    }

    /// Build from stored bitsandbytes buffers (packed codes, per-block absmax).
    pub fn from_parts(
        kind: Bnb4Kind,
        out: usize,
        inf: usize,
        block_size: usize,
        packed: Vec<u8>,
        absmax: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        let n = out * inf;
        if block_size == 0 || packed.len() != n.div_ceil(2) || absmax.len() != n.div_ceil(block_size) {
            return Err(Error::tensor(
                "weight",
                format!(
                    "{} code bytes / {} absmax do not fit [{out}, {inf}] with block {block_size}",
                    packed.len(),
                    absmax.len()
                ),
            ));
        }
        check_bias(&bias, out)?;
        Ok(Bnb4Linear {
            kind,
            out_features: out,
            in_features: inf,
            block_size,
            packed,
            absmax,
            bias,
        })
    }

    pub fn packed(&self) -> &[u8] {
        &self.packed
    }
    pub fn kind(&self) -> Bnb4Kind {
        self.kind
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn absmax(&self) -> &[f32] {
        &self.absmax
    }

    fn code(&self, k: usize) -> u8 {
        let b = self.packed[k / 2];
        if k.is_multiple_of(2) {
            b >> 4
        } else {
            b & 0xF
        }
    }

    /// Dequantize flat elements [start, start + dst.len()) as `table[code] * absmax[block]`:
    /// block by block (absmax hoisted), two codes per byte.
    fn dequant_range(&self, start: usize, dst: &mut [f32]) {
        let table = self.kind.table();
        let (bs, end) = (self.block_size, start + dst.len());
        let (mut k, mut j) = (start, 0);
        while k < end {
            let blk = k / bs;
            let stop = ((blk + 1) * bs).min(end);
            let a = self.absmax[blk];
            if k % 2 == 1 {
                dst[j] = table[self.code(k) as usize] * a;
                (k, j) = (k + 1, j + 1);
            }
            while k + 1 < stop {
                let b = self.packed[k / 2];
                dst[j] = table[(b >> 4) as usize] * a;
                dst[j + 1] = table[(b & 0xF) as usize] * a;
                (k, j) = (k + 2, j + 2);
            }
            if k < stop {
                dst[j] = table[self.code(k) as usize] * a;
                (k, j) = (k + 1, j + 1);
            }
        }
    }

    /// [out, in] f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out_features * self.in_features];
        self.dequant_range(0, &mut w);
        w
    }
}

impl QuantLinear for Bnb4Linear {
    fn storage_bytes(&self) -> usize {
        self.packed.len() + self.absmax.len() * 4 + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }
    fn dequantize_weight(&self) -> Vec<f32> {
        Bnb4Linear::dequantize(self)
    }
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn out_features(&self) -> usize {
        self.out_features
    }

    /// Per output row: dequantize into a per-thread buffer, then dot with every input row
    /// (the same row-tiling idea as the AWQ kernel, one row per task).
    fn forward_f32(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let (out, inf) = (self.out_features, self.in_features);
        check_input("Bnb4Linear input", x, n, inf)?;
        if n >= super::GEMM_MIN_ROWS {
            let mut y = super::gemm_by_row_tiles(out, inf, x, n, |o, dst| self.dequant_range(o * inf, dst))?;
            if let Some(b) = &self.bias {
                for row in y.chunks_exact_mut(out) {
                    row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
            }
            return Ok(y);
        }
        let mut yt = vec![0f32; out * n];
        yt.par_chunks_mut(n.max(1)).take(out).enumerate().for_each_init(
            || vec![0f32; inf],
            |buf, (o, yo)| {
                self.dequant_range(o * inf, buf);
                for (r, y) in yo.iter_mut().enumerate() {
                    *y = dot(&x[r * inf..(r + 1) * inf], buf) + self.bias.as_ref().map_or(0.0, |b| b[o]);
                }
            },
        );
        Ok(transpose(&yt, out, n))
    }
}
