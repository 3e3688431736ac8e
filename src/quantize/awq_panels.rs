//! AutoAWQ `qweight` straight into the panels of the int8 kernels ([`crate::kernels::panel`]).
//!
//! Why: the general path ([`super::awq::unpack_gemm`], then the panel packer) goes through one
//! byte a weight. On a 7B checkpoint that is 7 GB to allocate (the kernel zeroes every page),
//! write and read back, after two copies of `qweight` itself; `perf` of an AWQ load put page
//! zeroing and those copies at most of its time. Here the codes are read from the mapped
//! checkpoint and each panel byte is written once.
//!
//! Taken where the CPU's kernels use panels and the groups are whole multiples of 128 weights
//! (the weights then become [`crate::kernels::BlockFormat::Q4_1G`]; every BioMistral AWQ release has group 128).
//! The result is the same matrix as the general path's (tested below).
use super::awq::{gemm_dims, gemm_zeros_scales, gemv_dims, gemv_zeros_scales, AwqBytes, AwqConfig, AwqVersion};
use super::awq_linear::{q4_1g_scales, AwqLinear};
use crate::error::{Error, Result};
use crate::kernels::pack::{PackedMatrix, GROUP};
use crate::kernels::panel::{byte_of, PANEL, PANEL_BLOCK_BYTES};
use crate::kernels::{Kernel, QK};

/// Panels per task: 128 outputs, which is 16 GEMM words, one 64-byte line of a `qweight` row.
const TASK_PANELS: usize = 8;

/// Whether modules with this group size load through here on this CPU.
pub fn applies(group_size: usize) -> bool {
    crate::kernels::panel::suits(Kernel::best()) && group_size > 0 && group_size.is_multiple_of(GROUP * QK)
}

/// One module as an [`AwqLinear`] in Q4_1G panels. Shapes are checked here; [`applies`] must
/// hold for `cfg.group_size`.
pub fn load(prefix: &str, v: &AwqBytes, cfg: &AwqConfig, bias: Option<Vec<f32>>) -> Result<AwqLinear> {
    let gs = cfg.group_size;
    let word = AwqBytes::word;
    let (o, i, zeros, scales) = match cfg.version {
        AwqVersion::Gemm => {
            let (i, o, ng) = gemm_dims(prefix, v.dims(), gs)?;
            let (z, s) = gemm_zeros_scales(o, ng, |k| word(v.qzeros, k), |k| v.scale(k));
            (o, i, z, s)
        }
        AwqVersion::Gemv => {
            let (o, i, ng, width) = gemv_dims(prefix, v.dims(), gs)?;
            let (z, s) = gemv_zeros_scales(o, ng, width, |k| word(v.qzeros, k), |k| v.scale(k));
            (o, i, z, s)
        }
    };
    let (s, m) = q4_1g_scales(o, i, gs, &zeros, &scales);
    let qweight = v.qweight;
    let built = match cfg.version {
        AwqVersion::Gemm => {
            PackedMatrix::q4_1_grouped_panels(o, i, s, m, TASK_PANELS, |t, dst| gemm_fill(qweight, i, o / 8, t, dst))
        }
        AwqVersion::Gemv => {
            PackedMatrix::q4_1_grouped_panels(o, i, s, m, TASK_PANELS, |t, dst| gemv_fill(qweight, i, o, t, dst))
        }
    };
    let blocks = built.map_err(|e| Error::tensor(format!("{prefix}.qweight"), e))?;
    AwqLinear::from_q4_1g(blocks, gs, zeros, scales, bias)
}

/// GGUF-order code bytes (`in[k] | in[k + 16] << 4`) of one 32-input block, from 8 nibbles of
/// each half: byte `q` of the first word holds nibbles `2q` of `lo` and `hi`, of the second
/// nibbles `2q + 1`.
#[inline]
fn pair_bytes(lo: u32, hi: u32) -> [u32; 2] {
    const LOW: u32 = 0x0F0F_0F0F;
    [(lo & LOW) | ((hi & LOW) << 4), ((lo >> 4) & LOW) | (hi & !LOW)]
}

/// Panels `t * TASK_PANELS..` of a GEMM `qweight` `[in, out / 8]` (`oc` words a row): nibble
/// `j` of word `c` is output `8c + GEMM_ORDER[j]`, so word `c` fills rows `8 (c % 2)..+ 8` of
/// panel `c / 2`. One block of all the task's panels is built in a 2 KiB tile, then copied out
/// 256 bytes at a time: written in place, each input would store into 8 panels whole panel
/// lengths apart (multiples of 4 KiB for Mistral's widths), the pattern that made the old
/// unpack slow (see [`super::awq::unpack_gemm`]).
fn gemm_fill(qweight: &[u8], inf: usize, oc: usize, t: usize, dst: &mut [u8]) {
    let blocks = inf / QK;
    let panel_bytes = blocks * PANEL_BLOCK_BYTES;
    let c0 = t * 2 * TASK_PANELS;
    let cw = (2 * TASK_PANELS).min(oc - c0);
    // Row m of a word's 8 outputs for bytes 0..4 of pair_bytes' first and second word
    // (GEMM_ORDER: nibbles 0, 2, 4, 6 are outputs 0, 4, 1, 5; nibbles 1, 3, 5, 7 are 2, 6, 3, 7).
    const ROWS: [[usize; 4]; 2] = [[0, 4, 1, 5], [2, 6, 3, 7]];
    let mut tile = [0u8; TASK_PANELS * PANEL_BLOCK_BYTES];
    for b in 0..blocks {
        for k in 0..16 {
            let lo = &qweight[((b * QK + k) * oc + c0) * 4..][..cw * 4];
            let hi = &qweight[((b * QK + k + 16) * oc + c0) * 4..][..cw * 4];
            let off = byte_of(0, k);
            for c in 0..cw {
                let halves = pair_bytes(AwqBytes::word(lo, c), AwqBytes::word(hi, c));
                let base = (c / 2) * PANEL_BLOCK_BYTES + 32 * (c % 2) + off;
                for (h, rows) in halves.iter().zip(ROWS) {
                    for (q, m) in rows.into_iter().enumerate() {
                        tile[base + 4 * m] = (h >> (8 * q)) as u8;
                    }
                }
            }
        }
        for (p, src) in tile
            .chunks_exact(PANEL_BLOCK_BYTES)
            .take(dst.len() / panel_bytes)
            .enumerate()
        {
            let at = p * panel_bytes + b * PANEL_BLOCK_BYTES;
            dst[at..at + PANEL_BLOCK_BYTES].copy_from_slice(src);
        }
        // Rows past the last output stay zero: a short last task leaves them untouched.
        tile.fill(0);
    }
}

/// Panels `t * TASK_PANELS..` of a GEMV `qweight` `[out, in / 8]`: word `c` of a row holds
/// inputs `8c..8c + 8` in nibble order, so a 32-block is 4 words, and input `k` pairs with
/// `k + 16` two words on.
fn gemv_fill(qweight: &[u8], inf: usize, out: usize, t: usize, dst: &mut [u8]) {
    let (blocks, words) = (inf / QK, inf / 8);
    let panel_bytes = blocks * PANEL_BLOCK_BYTES;
    for (p, panel) in dst.chunks_exact_mut(panel_bytes).enumerate() {
        let r0 = (t * TASK_PANELS + p) * PANEL;
        for k in 0..PANEL.min(out.saturating_sub(r0)) {
            let row = &qweight[(r0 + k) * words * 4..][..words * 4];
            for b in 0..blocks {
                let w = |j: usize| AwqBytes::word(row, 4 * b + j);
                let base = b * PANEL_BLOCK_BYTES + 4 * k;
                for (half, (lo, hi)) in [(w(0), w(2)), (w(1), w(3))].into_iter().enumerate() {
                    let [even, odd] = pair_bytes(lo, hi);
                    for q in 0..4 {
                        // Bytes 2q and 2q + 1 of this half (inputs 8 * half + 2q, + 1).
                        panel[byte_of(base, 8 * half + 2 * q)] = (even >> (8 * q)) as u8;
                        panel[byte_of(base, 8 * half + 2 * q + 1)] = (odd >> (8 * q)) as u8;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::awq::{pack_gemm, pack_gemv, unpack_gemm, unpack_gemv, AwqPacked};
    use crate::quantize::rtn::GroupQuant;
    use rand::SeedableRng;

    fn bytes(p: &AwqPacked) -> [Vec<u8>; 3] {
        let le = |v: &[i32]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
        [
            le(&p.qweight),
            le(&p.qzeros),
            p.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        ]
    }

    /// The direct path gives the general path's matrix, byte for byte, in both layouts, for
    /// outputs that fill the last task or panel only in part (8, 24, 136 rows).
    #[test]
    fn matches_the_general_path_in_both_layouts() {
        if !applies(128) {
            eprintln!("skipped: this CPU's kernels do not use panels");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (out, inf, gs) in [(8, 128, 128), (24, 256, 128), (136, 512, 256), (256, 384, 128)] {
            let gq = GroupQuant::random(&mut rng, out, inf, gs, 0.1);
            for version in [AwqVersion::Gemm, AwqVersion::Gemv] {
                let (packed, general) = match version {
                    AwqVersion::Gemm => {
                        let p = pack_gemm(&gq).unwrap();
                        let g = unpack_gemm("m", &p, gs).unwrap();
                        (p, g)
                    }
                    AwqVersion::Gemv => {
                        let p = pack_gemv(&gq).unwrap();
                        let g = unpack_gemv("m", &p, gs).unwrap();
                        (p, g)
                    }
                };
                let [qw, qz, sc] = bytes(&packed);
                let v = AwqBytes {
                    qweight: &qw,
                    qzeros: &qz,
                    scales: &sc,
                    shapes: [packed.qweight_shape, packed.qzeros_shape, packed.scales_shape],
                };
                let cfg = AwqConfig {
                    group_size: gs,
                    version,
                    ..AwqConfig::default()
                };
                let direct = load("m", &v, &cfg, None).unwrap();
                let want = AwqLinear::new(&general, None).unwrap();
                assert_eq!(direct.to_group_quant(), gq, "{version:?} [{out}, {inf}]");
                assert!(direct.q4_blocks() == want.q4_blocks(), "{version:?} [{out}, {inf}]");
            }
        }
    }

    #[test]
    fn bad_shapes_name_the_tensor() {
        if !applies(128) {
            eprintln!("skipped: this CPU's kernels do not use panels");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let p = pack_gemm(&GroupQuant::random(&mut rng, 16, 256, 128, 0.1)).unwrap();
        let [qw, qz, sc] = bytes(&p);
        let v = AwqBytes {
            qweight: &qw,
            qzeros: &qz,
            scales: &sc[..sc.len() - 2],
            shapes: [p.qweight_shape, p.qzeros_shape, [2, 15]],
        };
        let cfg = AwqConfig {
            group_size: 128,
            ..AwqConfig::default()
        };
        let e = load("m", &v, &cfg, None).unwrap_err().to_string();
        assert!(e.contains("m.scales"), "{e}");
    }
}
