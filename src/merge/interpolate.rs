//! Methods that interpolate whole weights: linear, SLERP, model stock and passthrough.
//! Like mergekit 0.1.5 they compute in f32 from inputs already cast to the merge dtype; the caller
//! rounds the result back to the merge dtype.

/// Weighted sum `sum_i w_i x_i`, divided by `sum_i w_i` when `normalize` (mergekit's linear).
///
/// torch accumulates the weighted sum with fused multiply-adds (`acc = fma(w_i, x_i, acc)` after a
/// rounded first product); mergekit's f32 outputs match that, not a plain multiply-then-add. The
/// f64 form below is exact for the product and matched every reference element.
pub fn linear(inputs: &[&[f32]], weights: &[f64], normalize: bool) -> Vec<f32> {
    let n = inputs.first().map_or(0, |x| x.len());
    let w: Vec<f32> = weights.iter().map(|w| *w as f32).collect();
    let wsum: f32 = w.iter().sum();
    (0..n)
        .map(|e| {
            let mut s = 0f32;
            for (i, (x, w)) in inputs.iter().zip(&w).enumerate() {
                s = if i == 0 {
                    w * x[e]
                } else {
                    (s as f64 + *w as f64 * x[e] as f64) as f32
                };
            }
            if normalize {
                s / wsum
            } else {
                s
            }
        })
        .collect()
}

/// Above this |cos| the two tensors are treated as colinear and linearly interpolated, since
/// `sin(theta)` is then too small to divide by safely.
pub const SLERP_DOT_THRESHOLD: f64 = 0.9995;

/// Spherical interpolation from `a` (t = 0) to `b` (t = 1) over the whole tensor flattened to one
/// vector. The angle comes from the normalised vectors, but the result combines the raw ones.
pub fn slerp(t: f64, a: &[f32], b: &[f32]) -> Vec<f32> {
    let norm = |v: &[f32]| {
        let n = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
        if n > 1e-8 {
            n
        } else {
            1.0
        }
    };
    let (na, nb) = (norm(a), norm(b));
    let dot = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum::<f64>() / (na * nb);
    let dot = dot.clamp(-1.0, 1.0);
    let (s0, s1) = if dot.abs() > SLERP_DOT_THRESHOLD {
        (1.0 - t, t)
    } else {
        let theta = dot.acos();
        let sin = theta.sin();
        (((1.0 - t) * theta).sin() / sin, (t * theta).sin() / sin)
    };
    let (s0, s1) = (s0 as f32, s1 as f32);
    a.iter().zip(b).map(|(x, y)| s0 * x + s1 * y).collect()
}

/// Model stock (Jang et al. 2024): move from the base towards the average of the fine-tuned
/// models by `t = N cos / (1 + (N-1) cos)`, with `cos` the mean pairwise cosine of their deltas.
/// `row_len` = Some(last dim) computes one `t` per row ("filter_wise"), None one per tensor.
pub fn model_stock(base: &[f32], others: &[&[f32]], row_len: Option<usize>) -> Vec<f32> {
    let n = others.len() as f64;
    let row = row_len.filter(|r| *r > 0).unwrap_or(base.len().max(1));
    let mut out = Vec::with_capacity(base.len());
    for (r, w0) in base.chunks(row).enumerate() {
        let range = r * row..r * row + w0.len();
        let offs: Vec<Vec<f64>> = others
            .iter()
            .map(|w| w[range.clone()].iter().zip(w0).map(|(x, b)| (*x - *b) as f64).collect())
            .collect();
        let mut cos_sum = 0.0;
        let mut pairs = 0usize;
        for i in 0..offs.len() {
            for j in i + 1..offs.len() {
                let dot: f64 = offs[i].iter().zip(&offs[j]).map(|(a, b)| a * b).sum();
                let ni = offs[i].iter().map(|a| a * a).sum::<f64>().sqrt();
                let nj = offs[j].iter().map(|a| a * a).sum::<f64>().sqrt();
                cos_sum += (dot / (ni * nj).max(1e-6)).clamp(-1.0, 1.0);
                pairs += 1;
            }
        }
        let cos = if pairs > 0 { cos_sum / pairs as f64 } else { 1.0 };
        let t = (n * cos) / (1.0 + (n - 1.0) * cos);
        for (e, b) in w0.iter().enumerate() {
            let avg = others.iter().map(|w| w[range.start + e] as f64).sum::<f64>() / n;
            out.push((t * avg + (1.0 - t) * *b as f64) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_normalizes_weights() {
        let a = [1.0f32, 2.0];
        let b = [3.0f32, 6.0];
        assert_eq!(linear(&[&a, &b], &[1.0, 3.0], true), vec![2.5, 5.0]);
        assert_eq!(linear(&[&a, &b], &[1.0, 3.0], false), vec![10.0, 20.0]);
    }

    #[test]
    fn slerp_endpoints_and_orthogonal_midpoint() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        assert_eq!(slerp(0.0, &a, &b), a.to_vec());
        let end = slerp(1.0, &a, &b);
        assert!(end[0].abs() < 1e-7 && (end[1] - 1.0).abs() < 1e-7);
        let mid = slerp(0.5, &a, &b);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((mid[0] - h).abs() < 1e-6 && (mid[1] - h).abs() < 1e-6, "{mid:?}");
    }

    #[test]
    fn slerp_falls_back_to_lerp_when_colinear() {
        // Parallel vectors of different length: slerp would divide by sin(0); lerp gives the midpoint.
        let a = [1.0f32, 2.0, 3.0];
        let b = [2.0f32, 4.0, 6.0];
        assert_eq!(slerp(0.5, &a, &b), vec![1.5, 3.0, 4.5]);
        // Anti-parallel too.
        let c = [-1.0f32, -2.0, -3.0];
        assert_eq!(slerp(0.25, &a, &c), vec![0.5, 1.0, 1.5]);
    }

    #[test]
    fn model_stock_interpolates_towards_average() {
        let base = [0.0f32, 0.0];
        // Identical deltas: cos = 1, t = 1 -> the average.
        assert_eq!(model_stock(&base, &[&[1.0, 1.0], &[1.0, 1.0]], None), vec![1.0, 1.0]);
        // Orthogonal deltas: cos = 0, t = 0 -> the base.
        assert_eq!(model_stock(&base, &[&[1.0, 0.0], &[0.0, 1.0]], None), vec![0.0, 0.0]);
        // Row-wise: first row identical deltas, second orthogonal.
        let out = model_stock(&[0.0; 4], &[&[1.0, 1.0, 1.0, 0.0], &[1.0, 1.0, 0.0, 1.0]], Some(2));
        assert_eq!(out, vec![1.0, 1.0, 0.0, 0.0]);
    }
}
