//! GGUF Q8_0 / Q4_0 / Q4_1 blocks repacked into the layout the dot kernels stream.
//!
//! GGUF block bytes (little endian): Q8_0 = f16 d, 32 x i8; Q4_0 = f16 d, 16 bytes (byte j:
//! low nibble weight j, high nibble weight j + 16), value `(q - 8) * d`; Q4_1 = f16 d, f16 m,
//! 16 bytes as Q4_0, value `q * d + m`.
//!
//! Packed: per row, the codes of all blocks back to back (Q8_0: the 32 i8 as they are; Q4: 16
//! bytes per block), and the scales (and Q4_1 minimums) in arrays of their own. Q4 blocks go in
//! groups of [`GROUP`]: in a group's 64 bytes, byte j holds weight j of the group (128 weights)
//! in its low nibble and weight 64 + j in its high nibble, so masking 64 loaded bytes gives two
//! whole blocks of codes and shifting them the next two. Blocks after the last whole group keep
//! the GGUF nibble order.
//!
//! Q4 matrices can instead be laid out in panels of 16 interleaved rows ([`super::panel`]),
//! which the AVX-512 VNNI decode kernel streams; [`PackedMatrix::panels`] says which.
//!
//! [`BlockFormat::Q4_1G`] is not a GGUF format: Q4_1's codes and values with one scale and
//! minimum per group of four blocks (128 weights, AutoAWQ's default group), which keeps an
//! AWQ layer at 4.25 bits a weight where per-block Q4_1 takes 5. Its rows hold whole groups only.
use super::QK;
use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

/// Q4 blocks interleaved per group.
pub const GROUP: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockFormat {
    Q8_0,
    Q4_0,
    Q4_1,
    /// Q4_1 codes with one scale and minimum per [`GROUP`] blocks (see the module docs).
    Q4_1G,
}

impl BlockFormat {
    pub fn from_ggml(dt: GgmlDType) -> Option<Self> {
        match dt {
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            GgmlDType::Q4_0 => Some(BlockFormat::Q4_0),
            GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
            _ => None,
        }
    }

    /// The GGUF type (none for [`BlockFormat::Q4_1G`]).
    pub fn ggml(self) -> Option<GgmlDType> {
        match self {
            BlockFormat::Q8_0 => Some(GgmlDType::Q8_0),
            BlockFormat::Q4_0 => Some(GgmlDType::Q4_0),
            BlockFormat::Q4_1 => Some(GgmlDType::Q4_1),
            BlockFormat::Q4_1G => None,
        }
    }

    /// Bytes of one block in a GGUF file (none for [`BlockFormat::Q4_1G`]).
    pub const fn gguf_block_bytes(self) -> Option<usize> {
        match self {
            BlockFormat::Q8_0 => Some(34),
            BlockFormat::Q4_0 => Some(18),
            BlockFormat::Q4_1 => Some(20),
            BlockFormat::Q4_1G => None,
        }
    }

    /// Code bytes of one block in the packed layout.
    pub const fn code_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => QK,
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q4_1G => QK / 2,
        }
    }

    /// Blocks sharing one scale (and minimum).
    pub const fn blocks_per_scale(self) -> usize {
        match self {
            BlockFormat::Q4_1G => GROUP,
            _ => 1,
        }
    }

    /// Whether values carry a minimum (`c * d + m`).
    pub const fn has_mins(self) -> bool {
        matches!(self, BlockFormat::Q4_1 | BlockFormat::Q4_1G)
    }
}

/// A `[rows, cols]` block-quantized matrix in the packed layout (see the module docs).
#[derive(Clone, PartialEq)]
pub struct PackedMatrix {
    pub format: BlockFormat,
    pub rows: usize,
    pub cols: usize,
    /// Blocks per row (`cols / 32`).
    pub blocks: usize,
    /// `[rows, blocks * code_bytes]`.
    pub codes: Vec<u8>,
    /// `[rows, blocks / blocks_per_scale]`.
    pub scales: Vec<f16>,
    /// As `scales` for Q4_1 and Q4_1G, empty otherwise.
    pub mins: Vec<f16>,
    /// Q4 rows interleaved in panels ([`super::panel`]); codes, scales and minimums are then
    /// in panel order, padded to whole panels.
    pub panels: bool,
}

/// One packed row, as the dot kernels take it.
#[derive(Clone, Copy)]
pub struct WRow<'a> {
    pub codes: &'a [u8],
    pub scales: &'a [f16],
    /// Q4_1 and Q4_1G only (empty otherwise).
    pub mins: &'a [f16],
}

/// Where weight `i` of Q4 block `b` sits in a packed row of `blocks` blocks: (byte, shift).
#[inline]
pub fn q4_pos(blocks: usize, b: usize, i: usize) -> (usize, u32) {
    if b < blocks / GROUP * GROUP {
        let e = (b % GROUP) * QK + i;
        ((b / GROUP) * GROUP * 16 + e % 64, 4 * (e / 64) as u32)
    } else {
        (b * 16 + i % 16, 4 * (i / 16) as u32)
    }
}

/// The little-endian f16 at byte `at` (GGUF's scale fields).
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]])
}

impl PackedMatrix {
    /// Repack GGUF block bytes of a `[rows, cols]` matrix (`cols` a multiple of 32), row by row.
    pub fn from_gguf(format: BlockFormat, rows: usize, cols: usize, data: &[u8]) -> Result<Self, String> {
        Self::from_gguf_in(format, rows, cols, data, false)
    }

    /// As [`Self::from_gguf`]; with `panels`, Q4 formats go in the panel layout (Q8_0 ignores it).
    pub fn from_gguf_in(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
        panels: bool,
    ) -> Result<Self, String> {
        if !cols.is_multiple_of(QK) || cols == 0 || rows == 0 {
            return Err(format!(
                "[{rows}, {cols}]: the row length must be a positive multiple of {QK}"
            ));
        }
        let blocks = cols / QK;
        let Some(bb) = format.gguf_block_bytes() else {
            return Err(format!("{format:?} is not a GGUF block format"));
        };
        if data.len() != rows * blocks * bb {
            return Err(format!(
                "{} bytes for [{rows}, {cols}] {format:?} (expected {})",
                data.len(),
                rows * blocks * bb
            ));
        }
        let cb = format.code_bytes();
        if panels && format != BlockFormat::Q8_0 {
            return Ok(Self::gguf_panels(format, rows, cols, bb, data));
        }
        let mut m = PackedMatrix {
            format,
            rows,
            cols,
            blocks,
            codes: vec![0u8; rows * blocks * cb],
            scales: Vec::with_capacity(rows * blocks),
            mins: Vec::with_capacity(if format == BlockFormat::Q4_1 { rows * blocks } else { 0 }),
            panels: false,
        };
        for (r, row) in data.chunks_exact(blocks * bb).enumerate() {
            let codes = &mut m.codes[r * blocks * cb..(r + 1) * blocks * cb];
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                m.scales.push(f16_at(blk, 0));
                match format {
                    BlockFormat::Q8_0 => codes[b * QK..(b + 1) * QK].copy_from_slice(&blk[2..]),
                    BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q4_1G => {
                        let qs = if format == BlockFormat::Q4_1 {
                            m.mins.push(f16_at(blk, 2));
                            &blk[4..]
                        } else {
                            &blk[2..]
                        };
                        for i in 0..QK {
                            let q = (qs[i % 16] >> (4 * (i / 16))) & 0xF;
                            let (at, shift) = q4_pos(blocks, b, i);
                            codes[at] |= q << shift;
                        }
                    }
                }
            }
        }
        Ok(m)
    }

    /// Q4_0 / Q4_1 GGUF bytes (sizes checked, `bb` bytes a block) in the panel layout: each
    /// block's 16 code bytes are copied as 4 runs of 4.
    fn gguf_panels(format: BlockFormat, rows: usize, cols: usize, bb: usize, data: &[u8]) -> Self {
        let blocks = cols / QK;
        let mut m = Self::empty_panels(format, rows, cols);
        for (r, row) in data.chunks_exact(blocks * bb).enumerate() {
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                let at = super::panel::scale_pos(blocks, r, b);
                m.scales[at] = f16_at(blk, 0);
                let qs = if format.has_mins() {
                    m.mins[at] = f16_at(blk, 2);
                    &blk[4..]
                } else {
                    &blk[2..]
                };
                let base = super::panel::block_base(blocks, r, b);
                for j in 0..4 {
                    m.codes[base + 64 * j..base + 64 * j + 4].copy_from_slice(&qs[4 * j..4 * j + 4]);
                }
            }
        }
        m
    }

    /// A zero panel-layout matrix (padded to whole panels) for the constructors to fill.
    fn empty_panels(format: BlockFormat, rows: usize, cols: usize) -> Self {
        let (np, blocks) = (super::panel::panels(rows), cols / QK);
        let scales = np * super::panel::PANEL * blocks / format.blocks_per_scale();
        PackedMatrix {
            format,
            rows,
            cols,
            blocks,
            codes: vec![0u8; np * blocks * super::panel::PANEL_BLOCK_BYTES],
            scales: vec![f16::ZERO; scales],
            mins: vec![f16::ZERO; if format.has_mins() { scales } else { 0 }],
            panels: true,
        }
    }

    /// A panel-layout [`BlockFormat::Q4_1G`] matrix whose codes `fill(t, dst)` writes, for
    /// callers that hold them in some other packing (AutoAWQ's `qweight`): `dst` is the code
    /// bytes of panels `t * per_task..(t + 1) * per_task` (fewer in the last task), in the
    /// layout of [`super::panel`], zeroed. Scales and minimums as for [`Self::q4_1_grouped`].
    /// Tasks run on the thread pool.
    pub fn q4_1_grouped_panels(
        rows: usize,
        cols: usize,
        scales: Vec<f16>,
        mins: Vec<f16>,
        per_task: usize,
        fill: impl Fn(usize, &mut [u8]) + Sync,
    ) -> Result<Self, String> {
        use super::panel::{scale_pos, PANEL_BLOCK_BYTES};
        let gw = GROUP * QK;
        if !cols.is_multiple_of(gw) || cols == 0 || rows == 0 || per_task == 0 {
            return Err(format!(
                "[{rows}, {cols}]: the row length must be a positive multiple of {gw}"
            ));
        }
        let (per_row, blocks) = (cols / gw, cols / QK);
        if scales.len() != rows * per_row || mins.len() != rows * per_row {
            return Err(format!(
                "{} scales and {} minimums for [{rows}, {cols}] (expected {} of each)",
                scales.len(),
                mins.len(),
                rows * per_row
            ));
        }
        let mut m = Self::empty_panels(BlockFormat::Q4_1G, rows, cols);
        for r in 0..rows {
            for g in 0..per_row {
                let at = scale_pos(per_row, r, g);
                (m.scales[at], m.mins[at]) = (scales[r * per_row + g], mins[r * per_row + g]);
            }
        }
        m.codes
            .par_chunks_mut(per_task * blocks * PANEL_BLOCK_BYTES)
            .enumerate()
            .for_each(|(t, dst)| fill(t, dst));
        Ok(m)
    }

    /// A [`BlockFormat::Q4_1G`] matrix: `codes` `[rows, cols]` (0..=15, one per weight) and per
    /// row and group of 128 a scale and minimum (`[rows, cols / 128]`); `cols` a positive
    /// multiple of 128.
    pub fn q4_1_grouped(
        rows: usize,
        cols: usize,
        codes: &[u8],
        scales: Vec<f16>,
        mins: Vec<f16>,
    ) -> Result<Self, String> {
        Self::q4_1_grouped_in(rows, cols, codes, scales, mins, false)
    }

    /// As [`Self::q4_1_grouped`], in the panel layout if `panels`.
    pub fn q4_1_grouped_in(
        rows: usize,
        cols: usize,
        codes: &[u8],
        scales: Vec<f16>,
        mins: Vec<f16>,
        panels: bool,
    ) -> Result<Self, String> {
        let gw = GROUP * QK;
        if !cols.is_multiple_of(gw) || cols == 0 || rows == 0 {
            return Err(format!(
                "[{rows}, {cols}]: the row length must be a positive multiple of {gw}"
            ));
        }
        let groups = rows * cols / gw;
        if codes.len() != rows * cols || scales.len() != groups || mins.len() != groups {
            return Err(format!(
                "{} codes, {} scales and {} minimums for [{rows}, {cols}] (expected {}, {groups}, {groups})",
                codes.len(),
                scales.len(),
                mins.len(),
                rows * cols
            ));
        }
        let max = super::max_byte(codes);
        if max > 15 {
            return Err(format!("code {max} does not fit 4 bits"));
        }
        let blocks = cols / QK;
        if panels {
            use super::panel::{block_base, byte_of, PANEL};
            // One panel per task (a 7B checkpoint has 7e9 codes to place).
            return Self::q4_1_grouped_panels(rows, cols, scales, mins, 1, |p, dst| {
                for (k, src) in codes.chunks_exact(cols).skip(p * PANEL).take(PANEL).enumerate() {
                    for (b, blk) in src.chunks_exact(QK).enumerate() {
                        // Row k of a panel sits where row k of the first panel would.
                        let base = block_base(blocks, k, b);
                        for j in 0..16 {
                            dst[byte_of(base, j)] = blk[j] | (blk[j + 16] << 4);
                        }
                    }
                }
            });
        }
        let mut packed = vec![0u8; rows * blocks * 16];
        for (src, dst) in codes.chunks_exact(cols).zip(packed.chunks_exact_mut(blocks * 16)) {
            for (i, &c) in src.iter().enumerate() {
                let (at, shift) = q4_pos(blocks, i / QK, i % QK);
                dst[at] |= c << shift;
            }
        }
        Ok(PackedMatrix {
            format: BlockFormat::Q4_1G,
            rows,
            cols,
            blocks,
            codes: packed,
            scales,
            mins,
            panels: false,
        })
    }

    /// Row `r` of the row layout (the panel layout has no contiguous rows).
    pub fn row(&self, r: usize) -> WRow<'_> {
        assert!(!self.panels, "row() of a panel-layout matrix");
        let (nb, cb) = (self.blocks, self.format.code_bytes());
        let ns = nb / self.format.blocks_per_scale();
        WRow {
            codes: &self.codes[r * nb * cb..(r + 1) * nb * cb],
            scales: &self.scales[r * ns..(r + 1) * ns],
            mins: if self.mins.is_empty() {
                &[]
            } else {
                &self.mins[r * ns..(r + 1) * ns]
            },
        }
    }

    /// Bytes held (codes, scales, minimums).
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * (self.scales.len() + self.mins.len())
    }

    /// The signed integer code of weight `i` of block `b` in row `r` (Q4 codes without their
    /// offset, 0..=15).
    #[inline]
    pub fn code(&self, r: usize, b: usize, i: usize) -> i32 {
        let cb = self.format.code_bytes();
        match self.format {
            BlockFormat::Q8_0 => self.codes[(r * self.blocks + b) * cb + i] as i8 as i32,
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q4_1G => {
                let (at, shift) = if self.panels {
                    super::panel::code_pos(self.blocks, r, b, i)
                } else {
                    let (at, shift) = q4_pos(self.blocks, b, i);
                    (r * self.blocks * cb + at, shift)
                };
                ((self.codes[at] >> shift) & 0xF) as i32
            }
        }
    }

    /// Index of row `r`'s scale (and minimum) for block `b`.
    #[inline]
    fn scale_index(&self, r: usize, b: usize) -> usize {
        let per = self.format.blocks_per_scale();
        let per_row = self.blocks / per;
        if self.panels {
            super::panel::scale_pos(per_row, r, b / per)
        } else {
            r * per_row + b / per
        }
    }

    /// Row `r` as f32, computed exactly as candle's (and ggml's) dequantization.
    pub fn dequantize_row(&self, r: usize, dst: &mut [f32]) {
        let mut codes = [0i8; QK];
        for (b, out) in dst[..self.cols].chunks_exact_mut(QK).enumerate() {
            let at = self.scale_index(r, b);
            let d = self.scales[at].to_f32();
            self.block_codes(r, b, &mut codes);
            match self.format {
                BlockFormat::Q8_0 => {
                    for (v, &c) in out.iter_mut().zip(&codes) {
                        *v = c as f32 * d;
                    }
                }
                BlockFormat::Q4_0 => {
                    for (v, &c) in out.iter_mut().zip(&codes) {
                        *v = (c - 8) as f32 * d;
                    }
                }
                BlockFormat::Q4_1 | BlockFormat::Q4_1G => {
                    let m = self.mins[at].to_f32();
                    for (v, &c) in out.iter_mut().zip(&codes) {
                        *v = c as f32 * d + m;
                    }
                }
            }
        }
    }

    /// The 32 codes of row `r`, block `b` (Q8_0 signed, Q4 0..=15).
    fn block_codes(&self, r: usize, b: usize, dst: &mut [i8; QK]) {
        if self.panels {
            let base = super::panel::block_base(self.blocks, r, b);
            for k in 0..16 {
                let v = self.codes[super::panel::byte_of(base, k)];
                (dst[k], dst[k + 16]) = ((v & 0xF) as i8, (v >> 4) as i8);
            }
            return;
        }
        for (i, c) in dst.iter_mut().enumerate() {
            *c = self.code(r, b, i) as i8;
        }
    }
}

/// The int8 GEMM's view: signed codes (Q4_0's offset folded in) and per-block scales.
impl super::gemm::BlockRows for PackedMatrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn has_mins(&self) -> bool {
        self.format.has_mins()
    }

    fn unpack(&self, r: usize, b0: usize, codes: &mut [i8], scales: &mut [f32], mins: &mut [f32]) {
        let nb = scales.len();
        if self.panels {
            let off = if self.format == BlockFormat::Q4_0 { 8 } else { 0 };
            for k in 0..nb {
                let at = self.scale_index(r, b0 + k);
                scales[k] = self.scales[at].to_f32();
                if self.format.has_mins() {
                    mins[k] = self.mins[at].to_f32();
                }
                // The block's 4 runs of 4 code bytes, 64 apart (see `super::panel`), read here
                // rather than through `block_codes` and a second pass for the offset, which
                // measured 3-5% slower on Q4_0 pp512.
                let base = super::panel::block_base(self.blocks, r, b0 + k);
                let src = &self.codes[base..base + 3 * 64 + 4];
                let dst: &mut [i8; QK] = (&mut codes[k * QK..(k + 1) * QK]).try_into().unwrap();
                let (lo, hi) = dst.split_at_mut(16);
                for j in 0..4 {
                    let run: [u8; 4] = src[64 * j..64 * j + 4].try_into().unwrap();
                    for (t, &v) in run.iter().enumerate() {
                        lo[4 * j + t] = (v & 0xF) as i8 - off;
                        hi[4 * j + t] = (v >> 4) as i8 - off;
                    }
                }
            }
            return;
        }
        let w = self.row(r);
        let per = self.format.blocks_per_scale();
        for (k, s) in scales.iter_mut().enumerate() {
            *s = w.scales[(b0 + k) / per].to_f32();
        }
        if self.format.has_mins() {
            for (k, s) in mins.iter_mut().enumerate() {
                *s = w.mins[(b0 + k) / per].to_f32();
            }
        }
        let codes = &mut codes[..nb * QK];
        if self.format == BlockFormat::Q8_0 {
            for (c, &b) in codes.iter_mut().zip(&w.codes[b0 * QK..(b0 + nb) * QK]) {
                *c = b as i8;
            }
            return;
        }
        let off = if self.format == BlockFormat::Q4_0 { 8 } else { 0 };
        let whole = self.blocks / GROUP * GROUP;
        let mut b = b0;
        while b < b0 + nb {
            let dst = &mut codes[(b - b0) * QK..];
            if b.is_multiple_of(GROUP) && b + GROUP <= whole && b + GROUP <= b0 + nb {
                // A whole group: 64 bytes, low nibbles weights 0..64, high nibbles 64..128.
                let src: &[u8; 64] = w.codes[b * 16..b * 16 + 64].try_into().unwrap();
                let (lo, hi) = dst[..128].split_at_mut(64);
                for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(src) {
                    *l = (v & 0xF) as i8 - off;
                    *h = (v >> 4) as i8 - off;
                }
                b += GROUP;
            } else {
                for (i, c) in dst[..QK].iter_mut().enumerate() {
                    let (at, shift) = q4_pos(self.blocks, b, i);
                    *c = ((w.codes[at] >> shift) & 0xF) as i8 - off;
                }
                b += 1;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    /// A random `[rows, cols]` matrix quantized by candle, with its GGUF bytes.
    pub(crate) fn random_qtensor(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> QTensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| rng.gen_range(-1.0f32..1.0) * if i % 7 == 0 { 3.0 } else { 1.0 } + 0.1)
            .collect();
        let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&t, format.ggml().unwrap()).unwrap()
    }

    /// A random [`BlockFormat::Q4_1G`] matrix (codes over the whole range, mixed-sign minimums).
    pub(crate) fn random_q4_1g(rows: usize, cols: usize, seed: u64) -> PackedMatrix {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let codes: Vec<u8> = (0..rows * cols).map(|_| rng.gen_range(0..16u8)).collect();
        let groups = rows * cols / 128;
        let scales = (0..groups)
            .map(|_| f16::from_f32(rng.gen_range(0.001f32..0.05)))
            .collect();
        let mins = (0..groups)
            .map(|_| f16::from_f32(rng.gen_range(-0.4f32..0.1)))
            .collect();
        PackedMatrix::q4_1_grouped(rows, cols, &codes, scales, mins).unwrap()
    }

    pub(crate) fn pack(q: &QTensor) -> PackedMatrix {
        let (rows, cols) = q.shape().dims2().unwrap();
        let f = BlockFormat::from_ggml(q.dtype()).unwrap();
        PackedMatrix::from_gguf(f, rows, cols, &q.data().unwrap()).unwrap()
    }

    #[test]
    fn dequantize_matches_candle_bit_for_bit() {
        for f in [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1] {
            // 18 blocks: four whole groups and a tail of two; 1 block: tail only.
            for (rows, cols) in [(3, 576), (5, 32), (2, 256), (1, 160)] {
                let q = random_qtensor(f, rows, cols, 7);
                let want = q
                    .dequantize(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let p = pack(&q);
                let mut got = vec![0f32; rows * cols];
                for (r, dst) in got.chunks_exact_mut(cols).enumerate() {
                    p.dequantize_row(r, dst);
                }
                let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{f:?} [{rows}, {cols}]");
            }
        }
    }

    #[test]
    fn grouped_q4_1_keeps_codes_scales_and_minimums() {
        let (rows, cols) = (3, 384);
        let codes: Vec<u8> = (0..rows * cols).map(|i| ((i * 7 + i / 5) % 16) as u8).collect();
        let scales: Vec<f16> = (0..rows * 3).map(|g| f16::from_f32(0.01 * (g + 1) as f32)).collect();
        let mins: Vec<f16> = (0..rows * 3).map(|g| f16::from_f32(-0.05 * g as f32)).collect();
        let m = PackedMatrix::q4_1_grouped(rows, cols, &codes, scales.clone(), mins.clone()).unwrap();
        assert_eq!(m.bytes(), rows * cols / 2 + 4 * rows * 3);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut row);
            for (i, &v) in row.iter().enumerate() {
                let g = r * 3 + i / 128;
                let c = codes[r * cols + i];
                assert_eq!(m.code(r, i / QK, i % QK), c as i32);
                assert_eq!(v, c as f32 * scales[g].to_f32() + mins[g].to_f32(), "row {r} input {i}");
            }
        }
        // The int8 GEMM's view spreads each group's scale and minimum over its four blocks.
        use crate::kernels::gemm::BlockRows;
        let (mut c, mut s, mut mn) = (vec![0i8; 6 * QK], vec![0f32; 6], vec![0f32; 6]);
        m.unpack(1, 2, &mut c, &mut s, &mut mn);
        for k in 0..6 {
            let g = 3 + (2 + k) / 4;
            assert_eq!((s[k], mn[k]), (scales[g].to_f32(), mins[g].to_f32()), "block {k}");
        }
        assert!(c
            .iter()
            .zip(&codes[cols + 64..cols + 64 + 6 * QK])
            .all(|(&a, &b)| a as u8 == b));
        assert!(PackedMatrix::q4_1_grouped(1, 96, &[0; 96], vec![f16::ZERO], vec![f16::ZERO]).is_err());
        assert!(PackedMatrix::q4_1_grouped(1, 128, &[16; 128], vec![f16::ZERO], vec![f16::ZERO]).is_err());
        assert!(PackedMatrix::q4_1_grouped(1, 128, &[0; 128], vec![], vec![f16::ZERO]).is_err());
        assert!(PackedMatrix::from_gguf(BlockFormat::Q4_1G, 1, 128, &[0; 80]).is_err());
    }

    #[test]
    fn every_q4_code_has_its_own_nibble() {
        for blocks in [1, 3, 4, 5, 9, 18] {
            let mut seen = vec![0u8; blocks * 16];
            for b in 0..blocks {
                for i in 0..QK {
                    let (at, shift) = q4_pos(blocks, b, i);
                    assert_eq!(seen[at] & (0xF << shift), 0, "blocks {blocks} b {b} i {i}");
                    seen[at] |= 0xF << shift;
                }
            }
            assert!(seen.iter().all(|&s| s == 0xFF));
        }
    }

    #[test]
    fn rejects_bad_shapes_and_sizes() {
        assert!(PackedMatrix::from_gguf(BlockFormat::Q4_0, 2, 48, &[0; 36]).is_err());
        assert!(PackedMatrix::from_gguf(BlockFormat::Q4_0, 2, 32, &[0; 35]).is_err());
        assert!(PackedMatrix::from_gguf(BlockFormat::Q4_0, 2, 32, &[0; 36]).is_ok());
    }
}
