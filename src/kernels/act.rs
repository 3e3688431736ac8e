//! Activations quantized to int8, once per call, for all output rows.
//!
//! Every 4 consecutive values (one i32 lane of `vpdpbusd` / `vpmaddwd`) get a scale of their
//! own: `d = max|x| / 127`, `q_i = round(x_i / d)`. ggml scales per 32-block instead, so one
//! large value (models have a few channels hundreds of times larger than the rest) flattens
//! its 31 neighbours to 0 or +-1; per 4 values that damage stays local, at the cost of a
//! multiply per 16 lanes in the kernels. Per 32-block, `s = sum(d_lane * q)` (the block's
//! dequantized sum) carries the codes' offsets and Q4_1's minimums (see [`super::dot`]).
use super::{abs_max, low_byte, QK};

/// Values sharing one activation scale.
pub const LANE: usize = 4;

/// `n` rows of `cols` activations as int8 lanes.
#[derive(Clone, Debug)]
pub struct QuantActs {
    pub cols: usize,
    pub blocks: usize,
    /// `[n, cols]`.
    pub q: Vec<i8>,
    /// `[n, cols / 4]` lane scales.
    pub d: Vec<f32>,
    /// `[n, blocks]`: per 32-block, `sum(d * q)`.
    pub s: Vec<f32>,
}

/// One quantized activation row.
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub q: &'a [i8],
    /// Lane scales (`cols / 4`).
    pub d: &'a [f32],
    /// Block sums (`cols / 32`).
    pub s: &'a [f32],
}

impl QuantActs {
    /// Quantize `x` (`[n, cols]` row-major, `cols` a multiple of 32).
    pub fn new(x: &[f32], cols: usize) -> Self {
        assert!(cols.is_multiple_of(QK) && x.len().is_multiple_of(cols.max(1)));
        let mut a = QuantActs {
            cols,
            blocks: cols / QK,
            q: vec![0; x.len()],
            d: vec![0.0; x.len() / LANE],
            s: vec![0.0; x.len() / QK],
        };
        let lanes = QK / LANE;
        for (((xb, qb), db), s) in x
            .chunks_exact(QK)
            .zip(a.q.chunks_exact_mut(QK))
            .zip(a.d.chunks_exact_mut(lanes))
            .zip(&mut a.s)
        {
            *s = quantize_block(xb.try_into().unwrap(), qb.try_into().unwrap(), db.try_into().unwrap());
        }
        a
    }

    pub fn rows(&self) -> usize {
        self.s.len() / self.blocks.max(1)
    }

    pub fn row(&self, r: usize) -> ActRow<'_> {
        let (nb, nl) = (self.blocks, self.cols / LANE);
        ActRow {
            q: &self.q[r * self.cols..(r + 1) * self.cols],
            d: &self.d[r * nl..(r + 1) * nl],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }
}

/// The most that rounding activations `x` to int8 in lanes of `lane` values (one scale
/// `max|x| / 127` each) can move the dot product with weights `w`: half a step per value,
/// times its weight. Tests of every int8 path bound their error with it.
pub fn rounding_bound(x: &[f32], w: &[f32], lane: usize) -> f64 {
    x.chunks_exact(lane)
        .zip(w.chunks_exact(lane))
        .map(|(xs, ws)| {
            let step = xs.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
            0.5 * step * ws.iter().map(|w| w.abs() as f64).sum::<f64>()
        })
        .sum()
}

/// One 32-block: writes codes and lane scales, returns `sum(d * q)`. Fixed-size arrays let the
/// compiler vectorise.
fn quantize_block(x: &[f32; QK], q: &mut [i8; QK], d: &mut [f32; QK / LANE]) -> f32 {
    let mut s = 0f32;
    for ((xl, ql), dl) in x.chunks_exact(LANE).zip(q.chunks_exact_mut(LANE)).zip(d.iter_mut()) {
        let amax = abs_max(xl);
        *dl = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (qi, &xi) in ql.iter_mut().zip(xl) {
            let v = low_byte((xi * id).round().clamp(-127.0, 127.0)) as i8;
            *qi = v;
            sum += v as i32;
        }
        s += *dl * sum as f32;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let a = QuantActs::new(&x, 64);
        assert_eq!((a.rows(), a.blocks, a.d.len()), (2, 2, 32));
        for (l, xl) in x.chunks_exact(LANE).enumerate() {
            let d = a.d[l];
            let qs = &a.q[l * LANE..(l + 1) * LANE];
            for (v, q) in xl.iter().zip(qs) {
                assert!((v - *q as f32 * d).abs() <= 0.5 * d * 1.0001);
            }
            assert_eq!(qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
        }
        for (b, s) in a.s.iter().enumerate() {
            let want: f32 = (b * 8..b * 8 + 8)
                .map(|l| a.d[l] * a.q[l * 4..l * 4 + 4].iter().map(|&q| q as i32).sum::<i32>() as f32)
                .sum();
            assert!((s - want).abs() <= 1e-6 * want.abs().max(1.0));
        }
    }

    #[test]
    fn one_large_value_leaves_other_lanes_alone() {
        let mut x = vec![0.01f32; 32];
        x[5] = 1000.0;
        let a = QuantActs::new(&x, 32);
        assert!(a.q[8..].iter().all(|&q| q == 127));
        assert_eq!(a.q[5], 127);
    }

    #[test]
    fn zero_block_is_all_zero() {
        let a = QuantActs::new(&[0.0; 32], 32);
        assert!(a.q.iter().all(|&q| q == 0) && a.d.iter().all(|&d| d == 0.0) && a.s == [0.0]);
    }
}
