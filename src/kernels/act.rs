//! Activations quantized to int8 per 32-block, once per call, for all output rows.
//!
//! Block `b` of a row: `d = max|x| / 127`, `q_i = round(x_i / d)` (|q| <= 127), and
//! `s = d * sum(q)`, which carries the codes' offsets and Q4_1's minimums (see [`super::dot`]).
use super::QK;

/// `n` rows of `cols` activations as int8 blocks.
#[derive(Clone, Debug)]
pub struct QuantActs {
    pub cols: usize,
    pub blocks: usize,
    /// `[n, cols]`.
    pub q: Vec<i8>,
    /// `[n, blocks]` scales.
    pub d: Vec<f32>,
    /// `[n, blocks]`: `d * sum(q)`.
    pub s: Vec<f32>,
}

/// One quantized activation row.
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

impl QuantActs {
    /// Quantize `x` (`[n, cols]` row-major, `cols` a multiple of 32).
    pub fn new(x: &[f32], cols: usize) -> Self {
        assert!(cols.is_multiple_of(QK) && x.len().is_multiple_of(cols.max(1)));
        let nb = x.len() / QK;
        let mut a = QuantActs {
            cols,
            blocks: cols / QK,
            q: vec![0; x.len()],
            d: vec![0.0; nb],
            s: vec![0.0; nb],
        };
        for (((xb, qb), d), s) in x.chunks_exact(QK).zip(a.q.chunks_exact_mut(QK)).zip(&mut a.d).zip(&mut a.s) {
            let (qd, sum) = quantize_block(xb.try_into().unwrap(), qb.try_into().unwrap());
            *d = qd;
            *s = qd * sum as f32;
        }
        a
    }

    pub fn rows(&self) -> usize {
        self.d.len() / self.blocks.max(1)
    }

    pub fn row(&self, r: usize) -> ActRow<'_> {
        let nb = self.blocks;
        ActRow {
            q: &self.q[r * self.cols..(r + 1) * self.cols],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }
}

/// One block: writes the codes, returns (scale, sum of codes). Fixed-size arrays let the
/// compiler vectorise the max, scale and round loops.
fn quantize_block(x: &[f32; QK], q: &mut [i8; QK]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &xi) in q.iter_mut().zip(x) {
        let v = (xi * id).round().clamp(-127.0, 127.0) as i8;
        *qi = v;
        sum += v as i32;
    }
    (d, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let a = QuantActs::new(&x, 64);
        assert_eq!((a.rows(), a.blocks), (2, 2));
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            let d = a.d[b];
            let qs = &a.q[b * QK..(b + 1) * QK];
            for (v, q) in xb.iter().zip(qs) {
                assert!((v - *q as f32 * d).abs() <= 0.5 * d * 1.0001);
            }
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            assert_eq!(a.s[b], d * sum as f32);
            assert_eq!(qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
        }
    }

    #[test]
    fn zero_block_is_all_zero() {
        let a = QuantActs::new(&[0.0; 32], 32);
        assert!(a.q.iter().all(|&q| q == 0) && a.d == [0.0] && a.s == [0.0]);
    }
}
