//! Portable kernels (any CPU; the reference the SIMD kernels are tested against).
use crate::kernels::act::ActRow;
use crate::kernels::pack::{WRow, GROUP};
use crate::kernels::QK;

/// # Safety
/// None needed (the signature matches [`super::DotFn`]).
pub unsafe fn dot_q8_0(w: WRow<'_>, x: ActRow<'_>) -> f32 {
    let mut acc = 0f32;
    for (b, (c, q)) in w.codes.chunks_exact(QK).zip(x.q.chunks_exact(QK)).enumerate() {
        let s: i32 = c.iter().zip(q).map(|(&c, &q)| c as i8 as i32 * q as i32).sum();
        acc += w.scales[b].to_f32() * x.d[b] * s as f32;
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
    let mut block = |b: usize, s: i32| {
        let d = w.scales[b].to_f32();
        acc += d * x.d[b] * s as f32;
        acc += if MIN { w.mins[b].to_f32() * x.s[b] } else { -8.0 * d * x.s[b] };
    };
    // Whole groups: byte j of the group holds weights j (low) and 64 + j (high).
    for g in 0..whole / GROUP {
        let (c, q) = (&w.codes[g * 64..g * 64 + 64], &x.q[g * 128..g * 128 + 128]);
        let mut s = [0i32; GROUP];
        for (j, &byte) in c.iter().enumerate() {
            s[j / QK] += (byte & 0xF) as i32 * q[j] as i32;
            s[2 + j / QK] += (byte >> 4) as i32 * q[64 + j] as i32;
        }
        for (k, &sk) in s.iter().enumerate() {
            block(g * GROUP + k, sk);
        }
    }
    // Tail blocks, GGUF order: byte j holds weights j (low) and 16 + j (high).
    for b in whole..nb {
        let (c, q) = (&w.codes[b * 16..b * 16 + 16], &x.q[b * QK..b * QK + QK]);
        let s: i32 = c
            .iter()
            .enumerate()
            .map(|(j, &byte)| (byte & 0xF) as i32 * q[j] as i32 + (byte >> 4) as i32 * q[16 + j] as i32)
            .sum();
        block(b, s);
    }
    acc
}
