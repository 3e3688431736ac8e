//! Portable kernels (any CPU; the reference the SIMD kernels are tested against).
use crate::kernels::act::{ActRow, LANE};
use crate::kernels::pack::{WRow, GROUP};
use crate::kernels::QK;

/// Lanes (activation scales) per block.
const LANES: usize = QK / LANE;

/// `sum_l xd_l * isum_l` over one block's lanes.
fn scaled(xd: &[f32], isum: &[i32]) -> f32 {
    xd.iter().zip(isum).map(|(d, &s)| d * s as f32).sum()
}

/// # Safety
/// None needed (the signature matches [`super::DotFn`]).
pub unsafe fn dot_q8_0(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, (c, q)) in w.codes.chunks_exact(QK).zip(x.q.chunks_exact(QK)).enumerate() {
        let mut isum = [0i32; LANES];
        for (i, (&c, &q)) in c.iter().zip(q).enumerate() {
            isum[i / LANE] += c as i8 as i32 * q as i32;
        }
        acc += w.scales[b].to_f32() * scaled(&x.d[b * LANES..(b + 1) * LANES], &isum);
    }
    acc
}

/// Q4_0 (`MIN = false`) or Q4_1 (`MIN = true`).
///
/// # Safety
/// None needed (the signature matches [`super::DotFn`]).
pub unsafe fn dot_q4<const MIN: bool>(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let nb = w.scales.len();
    let whole = nb / GROUP * GROUP;
    let mut acc = 0f32;
    let mut block = |b: usize, isum: &[i32]| {
        let d = w.scales[b].to_f32();
        acc += d * scaled(&x.d[b * LANES..(b + 1) * LANES], isum);
        acc += if MIN {
            w.mins[b].to_f32() * x.s[b]
        } else {
            -8.0 * d * x.s[b]
        };
    };
    // Whole groups: byte j of the group holds weights j (low) and 64 + j (high).
    for g in 0..whole / GROUP {
        let (c, q) = (&w.codes[g * 64..g * 64 + 64], &x.q[g * 128..g * 128 + 128]);
        let mut isum = [0i32; GROUP * LANES];
        for (j, &byte) in c.iter().enumerate() {
            isum[j / LANE] += (byte & 0xF) as i32 * q[j] as i32;
            isum[(64 + j) / LANE] += (byte >> 4) as i32 * q[64 + j] as i32;
        }
        for (k, is) in isum.chunks_exact(LANES).enumerate() {
            block(g * GROUP + k, is);
        }
    }
    // Tail blocks, GGUF order: byte j holds weights j (low) and 16 + j (high).
    for b in whole..nb {
        let (c, q) = (&w.codes[b * 16..b * 16 + 16], &x.q[b * QK..b * QK + QK]);
        let mut isum = [0i32; LANES];
        for (j, &byte) in c.iter().enumerate() {
            isum[j / LANE] += (byte & 0xF) as i32 * q[j] as i32;
            isum[(16 + j) / LANE] += (byte >> 4) as i32 * q[16 + j] as i32;
        }
        block(b, &isum);
    }
    acc
}

/// Q4_1G: Q4_1 values with one scale and minimum per group of [`GROUP`] blocks.
///
/// # Safety
/// None needed (the signature matches [`super::DotFn`]).
pub unsafe fn dot_q4_1g(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (g, (c, q)) in w.codes.chunks_exact(64).zip(x.q.chunks_exact(GROUP * QK)).enumerate() {
        let mut isum = [0i32; GROUP * LANES];
        for (j, &byte) in c.iter().enumerate() {
            isum[j / LANE] += (byte & 0xF) as i32 * q[j] as i32;
            isum[(64 + j) / LANE] += (byte >> 4) as i32 * q[64 + j] as i32;
        }
        let lanes = &x.d[g * GROUP * LANES..(g + 1) * GROUP * LANES];
        let xs: f32 = x.s[g * GROUP..(g + 1) * GROUP].iter().sum();
        acc += w.scales[g].to_f32() * scaled(lanes, &isum) + w.mins[g].to_f32() * xs;
    }
    acc
}
