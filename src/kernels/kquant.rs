//! GGUF Q4_K, Q5_K and Q6_K rows as the int8 GEMM's blocks ([`super::gemm::BlockRows`]), read
//! straight from the file's bytes, so prompts on k-quant models (the popular `Q4_K_M`) run on
//! the integer GEMM instead of dequantize + f32 GEMM.
//!
//! Q4_K and Q5_K use super-blocks of 256 weights in 8 sub-blocks of 32, each with a 6-bit scale
//! `sc` and minimum `m` (packed in 12 bytes), and f16 `d`, `dmin` per super-block:
//! `w = d * sc * q - dmin * m`. That is exactly a 32-block with scale `d * sc` and minimum
//! `-dmin * m`. Layout (ggml `block_q4_K` / `block_q5_K`): `d`, `dmin`, `scales[12]`,
//! (Q5_K: `qh[32]`, bit `2i` / `2i + 1` of byte l = fifth bit of weight l of sub-block 2i /
//! 2i + 1), `qs[128]`: per 64 weights, 32 bytes whose low nibbles are sub-block 2i and high
//! nibbles sub-block 2i + 1.
//!
//! Q6_K (ggml `block_q6_K`, 210 bytes; layout in [`super::kquant_dot`]) has a signed 8-bit scale
//! per 16 weights and no minimum: `w = d * sc * (q - 32)`. Its 32-blocks therefore carry two
//! scales ([`BlockRows::scales_per_block`]), and the GEMM sums each half on its own. Before, a
//! Q4_K_M prompt dequantized its Q6_K tensors (`ffn_down`, `attn_v` in some layers, the head) to f32 for
//! candle's GEMM: 14% of the 4-layer 7B shape's weights took about 31% of pp512's time (`perf`).
use super::gemm::{BlockRows, SUB_SCALES};
use super::pack::f16_at;
use super::QK;

/// Weights per super-block.
pub const QK_K: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KFormat {
    Q4K,
    Q5K,
    Q6K,
}

impl KFormat {
    pub const fn block_bytes(self) -> usize {
        match self {
            KFormat::Q4K => 144,
            KFormat::Q5K => 176,
            KFormat::Q6K => 210,
        }
    }
}

/// A `[rows, cols]` Q4_K / Q5_K matrix borrowed from GGUF bytes.
pub struct KQuantRows<'a> {
    format: KFormat,
    rows: usize,
    cols: usize,
    data: &'a [u8],
}

impl<'a> KQuantRows<'a> {
    pub fn new(format: KFormat, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, String> {
        if cols == 0 || !cols.is_multiple_of(QK_K) {
            return Err(format!("[{rows}, {cols}]: rows must be a positive multiple of {QK_K}"));
        }
        let want = rows * cols / QK_K * format.block_bytes();
        if data.len() != want {
            return Err(format!(
                "{} bytes for [{rows}, {cols}] {format:?} (expected {want})",
                data.len()
            ));
        }
        Ok(KQuantRows {
            format,
            rows,
            cols,
            data,
        })
    }
}

/// A Q4_K / Q5_K super-block's 12 packed scale bytes as its 8 sub-block scales then 8
/// minimums (6 bits each), the whole super-block at once on 32-bit words.
#[inline(always)]
pub(crate) fn scales_and_mins(q: &[u8]) -> [u8; 16] {
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    // Scales 0-3: low 6 bits of bytes 0-3; 4-7: low nibbles of bytes 8-11 with the top 2 bits
    // of bytes 0-3. Minimums 0-3: low 6 bits of bytes 4-7; 4-7: high nibbles of bytes 8-11
    // with the top 2 bits of bytes 4-7.
    let words = [
        a & LOW6,
        (c & LOW4) | (((a >> 6) & LOW2) << 4),
        b & LOW6,
        ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

impl BlockRows for KQuantRows<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    fn has_mins(&self) -> bool {
        self.format != KFormat::Q6K
    }

    fn scales_per_block(&self) -> usize {
        if self.format == KFormat::Q6K {
            SUB_SCALES
        } else {
            1
        }
    }

    fn unpack(&self, r: usize, b0: usize, codes: &mut [i8], scales: &mut [f32], mins: &mut [f32]) {
        match self.format {
            KFormat::Q6K => self.unpack_q6k(r, b0, codes, scales),
            KFormat::Q4K | KFormat::Q5K => self.unpack_with_mins(r, b0, codes, scales, mins),
        }
    }
}

impl KQuantRows<'_> {
    /// The block of super-block `sb` of row `r`.
    fn super_block(&self, r: usize, sb: usize) -> &[u8] {
        let bb = self.format.block_bytes();
        let at = (r * (self.cols / QK_K) + sb) * bb;
        &self.data[at..at + bb]
    }

    /// Q4_K / Q5_K: one scale and minimum per block.
    fn unpack_with_mins(&self, r: usize, b0: usize, codes: &mut [i8], scales: &mut [f32], mins: &mut [f32]) {
        // The super-block's scales, decoded once for its 8 blocks.
        let (mut sm, mut sm_of) = ([0u8; 16], usize::MAX);
        for (bi, ((s, m), c)) in scales
            .iter_mut()
            .zip(mins.iter_mut())
            .zip(codes.chunks_exact_mut(QK))
            .enumerate()
        {
            let b = b0 + bi;
            let (sb, j) = (b / 8, b % 8);
            let blk = self.super_block(r, sb);
            let (d, dmin) = (f16_at(blk, 0).to_f32(), f16_at(blk, 2).to_f32());
            if sm_of != sb {
                (sm, sm_of) = (scales_and_mins(&blk[4..16]), sb);
            }
            let (sc, mn) = (sm[j], sm[8 + j]);
            *s = d * sc as f32;
            *m = -(dmin * mn as f32);
            let shift = 4 * (j % 2) as u32;
            match self.format {
                KFormat::Q4K => {
                    let qs = &blk[16 + (j / 2) * 32..16 + (j / 2) * 32 + 32];
                    for (c, &q) in c.iter_mut().zip(qs) {
                        *c = ((q >> shift) & 0xF) as i8;
                    }
                }
                KFormat::Q5K => {
                    let (qh, qs) = (&blk[16..48], &blk[48 + (j / 2) * 32..48 + (j / 2) * 32 + 32]);
                    for ((c, &q), &h) in c.iter_mut().zip(qs).zip(qh) {
                        *c = (((q >> shift) & 0xF) | (((h >> j) & 1) << 4)) as i8;
                    }
                }
                KFormat::Q6K => unreachable!("Q6_K has no minimums"),
            }
        }
    }

    /// Q6_K: two scales per block (one per 16 weights), codes `q - 32`.
    fn unpack_q6k(&self, r: usize, b0: usize, codes: &mut [i8], scales: &mut [f32]) {
        for (bi, (c, s)) in codes
            .chunks_exact_mut(QK)
            .zip(scales.chunks_exact_mut(SUB_SCALES))
            .enumerate()
        {
            let b = b0 + bi;
            let (sb, j) = (b / 8, b % 8);
            let blk = self.super_block(r, sb);
            // Block j is weights 32j.. of the super-block: half j / 4, quarter j % 4 of it.
            let (half, quarter) = (j / 4, j % 4);
            let ql = &blk[64 * half + 32 * (quarter % 2)..][..QK];
            let qh = &blk[128 + 32 * half..][..QK];
            let (sl, sh) = (4 * (quarter / 2) as u32, 2 * quarter as u32);
            for ((c, &l), &h) in c.iter_mut().zip(ql).zip(qh) {
                *c = (((l >> sl) & 0xF) | (((h >> sh) & 3) << 4)) as i8 - 32;
            }
            let d = f16_at(blk, 208).to_f32();
            s[0] = d * blk[192 + 2 * j] as i8 as f32;
            s[1] = d * blk[192 + 2 * j + 1] as i8 as f32;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernels::gemm::{gemm_with, BlockActs};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn random(ty: GgmlDType, rows: usize, cols: usize) -> (QTensor, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rows as u64);
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| rng.gen_range(-1.0f32..1.0) + (i % 5) as f32 * 0.1)
            .collect();
        quantized(ty, rows, cols, v)
    }

    /// Test helper: `v` as a `[rows, cols]` tensor of `ty`, and candle's dequantization of it.
    pub(crate) fn quantized(ty: GgmlDType, rows: usize, cols: usize, v: Vec<f32>) -> (QTensor, Vec<f32>) {
        let q = QTensor::quantize(&Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap(), ty).unwrap();
        let deq = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (q, deq)
    }

    const FORMATS: [(GgmlDType, KFormat); 3] = [
        (GgmlDType::Q4K, KFormat::Q4K),
        (GgmlDType::Q5K, KFormat::Q5K),
        (GgmlDType::Q6K, KFormat::Q6K),
    ];

    /// `code * scale + min` reproduces candle's (ggml's) dequantization.
    #[test]
    fn unpacked_blocks_are_candles_dequantization() {
        for (ty, f) in FORMATS {
            let (rows, cols) = (3, 512);
            let (q, deq) = random(ty, rows, cols);
            let data = q.data().unwrap();
            let k = KQuantRows::new(f, rows, cols, &data).unwrap();
            let (nb, subs) = (cols / QK, k.scales_per_block());
            for r in 0..rows {
                let (mut c, mut s, mut m) = (vec![0i8; cols], vec![0f32; nb * subs], vec![0f32; nb]);
                k.unpack(r, 0, &mut c, &mut s, &mut m);
                for i in 0..cols {
                    let got = c[i] as f32 * s[i / (QK / subs)] + m[i / QK];
                    let want = deq[r * cols + i];
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{f:?} ({r},{i}): {got} vs {want}"
                    );
                }
                // A chunk that starts inside a super-block.
                let (mut c2, mut s2, mut m2) = (vec![0i8; 3 * QK], vec![0f32; 3 * subs], vec![0f32; 3]);
                k.unpack(r, 5, &mut c2, &mut s2, &mut m2);
                assert_eq!(&c2[..], &c[5 * QK..8 * QK]);
                assert_eq!((&s2[..], &m2[..]), (&s[5 * subs..8 * subs], &m[5..8]));
            }
        }
    }

    /// Every kernel this CPU has, 7 input rows (a 4-row and a 3-row tile).
    #[test]
    fn gemm_on_k_quants_matches_dequantized_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for (ty, f) in FORMATS {
            let (rows, cols, n) = (35, 512, 7);
            let (q, deq) = random(ty, rows, cols);
            let data = q.data().unwrap();
            let k = KQuantRows::new(f, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let a = BlockActs::new(&x, cols);
            for kernel in crate::kernels::gemm::tests::kernels() {
                let y = gemm_with(&k, &a, n, kernel);
                for r in 0..n {
                    for o in 0..rows {
                        let (xr, wr) = (&x[r * cols..(r + 1) * cols], &deq[o * cols..(o + 1) * cols]);
                        let want: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let round = crate::kernels::act::rounding_bound(xr, wr, QK);
                        let got = y[r * rows + o] as f64;
                        assert!(
                            (got - want).abs() <= 1.001 * round + 1e-4,
                            "{f:?} {kernel:?} ({r},{o}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(KQuantRows::new(KFormat::Q4K, 2, 255, &[]).is_err());
        assert!(KQuantRows::new(KFormat::Q4K, 2, 256, &[0; 287]).is_err());
        assert!(KQuantRows::new(KFormat::Q5K, 1, 256, &[0; 176]).is_ok());
        assert!(KQuantRows::new(KFormat::Q6K, 1, 256, &[0; 209]).is_err());
    }
}
