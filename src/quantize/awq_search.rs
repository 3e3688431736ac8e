//! Activation-aware weight quantization (AWQ) search, model-agnostic.
//!
//! The engine captures, for each decoder layer, the input of every group of linears that share
//! one input (q/k/v after input_layernorm, o_proj after v_proj, gate/up after
//! post_attention_layernorm, down_proj after up_proj) and supplies a closure that runs the part
//! of the block those linears feed, on the captured calibration input, with candidate weights.
//! This module then does what AutoAWQ's `AwqQuantizer` does:
//! 1. [`search_best_scale`]: per input channel, `s = x_mean^r / w_mean^(1-r)` for r on a grid of
//!    `n_grid` steps (normalised so sqrt(max*min) = 1), pick the r whose fake-quantized weights
//!    `Q(W*s)/s` minimise the block output MSE;
//! 2. fold: `W *= s` (columns) and the preceding op's output channels `/= s`
//!    ([`scale_columns`], [`fold_into_norm`], [`fold_into_linear`]), which leaves the fp model
//!    unchanged;
//! 3. [`search_clip`] / [`apply_clip`]: per (output row, group) shrink the clipping range
//!    symmetric around 0, minimising that group's contribution error to the output;
//! 4. quantize with [`quantize_weight`] (exact AutoAWQ round-to-nearest).
//!
//! One deliberate difference: the identity scaling (plain RTN) is always a candidate, so the
//! search can never return scales that do worse than RTN on the calibration data.
use super::rtn::{check_group_size, pseudo_quantize, GroupQuant};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use half::f16;
use rayon::prelude::*;

#[derive(Debug, Clone)]
pub struct AwqSearchOptions {
    pub group_size: usize,
    /// Grid steps for the scaling exponent (AutoAWQ: 20).
    pub n_grid: usize,
    /// Divide by the weight statistic too (AutoAWQ's `duo_scaling`, default true).
    pub duo_scaling: bool,
    /// Grid steps for the clipping ratio (AutoAWQ: 20) and the largest shrink (0.5).
    pub clip_grid: usize,
    pub max_shrink: f32,
    /// Tokens sampled for the clip search (AutoAWQ: 512).
    pub clip_tokens: usize,
    /// Tokens per calibration sequence (0: unknown), so the clip search's sampling stride can
    /// avoid landing on the same few positions of every sequence.
    pub seq_len: usize,
    /// Calibration rows per forward of an inspected block (rounded to whole sequences). A 7B
    /// model's MLP on AutoAWQ's 128 x 512 tokens would otherwise hold several 65536 x 14336 f32
    /// intermediates (3.8 GB each) at once; in chunks the search's memory is the captures'.
    pub chunk_rows: usize,
}

impl Default for AwqSearchOptions {
    fn default() -> Self {
        AwqSearchOptions {
            group_size: 128,
            n_grid: 20,
            duo_scaling: true,
            clip_grid: 20,
            max_shrink: 0.5,
            clip_tokens: 512,
            seq_len: 0,
            chunk_rows: 4096,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScaleSearch {
    /// Per input channel; all ones when plain RTN won.
    pub scales: Vec<f32>,
    /// The winning exponent, None for the identity.
    pub ratio: Option<f32>,
    pub loss: f32,
    /// Block output MSE of plain RTN (identity scales), for reporting.
    pub rtn_loss: f32,
}

fn matrix(name: &str, t: &Tensor) -> Result<(usize, usize, Vec<f32>)> {
    let (r, c) = t
        .dims2()
        .map_err(|_| Error::tensor(name, format!("shape {:?} is not 2-D", t.dims())))?;
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((r, c, v))
}

/// The row ranges of `n` calibration rows that the inspected block runs on one at a time:
/// whole sequences of `opts.seq_len` rows, about `opts.chunk_rows` per range (all rows at once
/// when the sequence length is unknown).
pub fn row_chunks(n: usize, opts: &AwqSearchOptions) -> Vec<std::ops::Range<usize>> {
    if opts.seq_len == 0 || !n.is_multiple_of(opts.seq_len) {
        return std::iter::once(0..n).collect();
    }
    let per = (opts.chunk_rows / opts.seq_len).max(1) * opts.seq_len;
    (0..n).step_by(per).map(|a| a..(a + per).min(n)).collect()
}

/// Mean |x| per column of `x` [n, in], a chunk of rows at a time (no full copy of `x`).
fn column_abs_mean(x: &Tensor) -> Result<Vec<f32>> {
    let (n, inf) = x
        .dims2()
        .map_err(|_| Error::tensor("AWQ calibration input", format!("shape {:?} is not 2-D", x.dims())))?;
    let mut acc = vec![0f32; inf];
    let per = (1 << 24) / inf.max(1) + 1;
    for a in (0..n).step_by(per) {
        let part = x.narrow(0, a, per.min(n - a))?.to_dtype(DType::F32)?;
        for row in part.flatten_all()?.to_vec1::<f32>()?.chunks_exact(inf) {
            for (m, v) in acc.iter_mut().zip(row) {
                *m += v.abs();
            }
        }
    }
    acc.iter_mut().for_each(|m| *m /= n.max(1) as f32);
    Ok(acc)
}

/// Round-to-nearest as AutoAWQ does it (fp16), back to an f32 tensor of the same shape.
pub fn fake_quantize(name: &str, w: &Tensor, group_size: usize) -> Result<Tensor> {
    let gq = quantize_weight(name, w, group_size)?;
    let deq: Vec<f32> = gq.dequantize_f16().iter().map(|v| v.to_f32()).collect();
    Ok(Tensor::from_vec(deq, w.dims(), w.device())?)
}

/// Final AutoAWQ-exact quantization of an (already scaled and clipped) weight [out, in].
pub fn quantize_weight(name: &str, w: &Tensor, group_size: usize) -> Result<GroupQuant> {
    let (out, inf, v) = matrix(name, w)?;
    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
    pseudo_quantize(name, &h, out, inf, group_size)
}

/// Sum of squared differences and the element count.
fn sse(a: &Tensor, b: &Tensor) -> Result<(f64, usize)> {
    if a.dims() != b.dims() {
        return Err(Error::invalid(
            "AWQ block output",
            format!("shape {:?} differs from the reference {:?}", b.dims(), a.dims()),
        ));
    }
    let s = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok((s as f64, a.elem_count()))
}

/// Multiply column i of `w` [out, in] by `scales[i]`.
pub fn scale_columns(w: &Tensor, scales: &[f32]) -> Result<Tensor> {
    let s = Tensor::from_slice(scales, (1, scales.len()), w.device())?.to_dtype(w.dtype())?;
    Ok(w.broadcast_mul(&s)?)
}

/// The preceding RMSNorm's weight: channel i `/= scales[i]`.
pub fn fold_into_norm(norm: &Tensor, scales: &[f32]) -> Result<Tensor> {
    let s = Tensor::from_slice(scales, scales.len(), norm.device())?.to_dtype(norm.dtype())?;
    Ok(norm.broadcast_div(&s)?)
}

/// The preceding linear [out_prev = in, in_prev]: output row i `/= scales[i]`.
pub fn fold_into_linear(prev: &Tensor, scales: &[f32]) -> Result<Tensor> {
    let s = Tensor::from_slice(scales, (scales.len(), 1), prev.device())?.to_dtype(prev.dtype())?;
    Ok(prev.broadcast_div(&s)?)
}

/// The inspected module's output on some calibration rows, given candidate weights.
pub type InspectedBlock<'a> = dyn Fn(&[Tensor], std::ops::Range<usize>) -> Result<Tensor> + 'a;

/// Grid search of the scaling exponent for `linears` (each [out_i, in]) that read `x` [n, in].
/// `block(ws, rows)` must return the inspected module's output on calibration rows `rows` (whole
/// sequences, see [`row_chunks`]) when those linears have weights `ws` (same order); it is
/// called with the original weights first.
pub fn search_best_scale(
    linears: &[Tensor],
    x: &Tensor,
    opts: &AwqSearchOptions,
    block: &InspectedBlock,
) -> Result<ScaleSearch> {
    let gs = opts.group_size;
    if linears.is_empty() {
        return Err(Error::invalid("AWQ scale group", "no linear layers"));
    }
    let x_mean = column_abs_mean(x)?;
    let (n, inf) = (x.dim(0)?, x_mean.len());
    // w_mean: |w| normalised by its group's max, averaged over all output rows.
    let mut w_mean = vec![0f32; inf];
    let mut rows = 0usize;
    for (k, w) in linears.iter().enumerate() {
        let name = format!("AWQ scale group linear {k}");
        let (out, win, wv) = matrix(&name, w)?;
        if win != inf {
            return Err(Error::tensor(
                &name,
                format!("{win} inputs, the captured input has {inf}"),
            ));
        }
        check_group_size(&name, inf, gs)?;
        for row in wv.chunks_exact(inf) {
            for (g, grp) in row.chunks_exact(gs).enumerate() {
                let mx = grp.iter().fold(0f32, |m, v| m.max(v.abs())) + 1e-6;
                for (i, v) in grp.iter().enumerate() {
                    w_mean[g * gs + i] += v.abs() / mx;
                }
            }
        }
        rows += out;
    }
    w_mean.iter_mut().for_each(|m| *m /= rows as f32);

    let chunks = row_chunks(n, opts);
    let reference: Vec<Tensor> = chunks
        .iter()
        .map(|r| block(linears, r.clone()))
        .collect::<Result<_>>()?;
    let loss_for = |scales: &[f32]| -> Result<f32> {
        let ws = linears
            .iter()
            .enumerate()
            .map(|(k, w)| {
                let q = fake_quantize(&format!("AWQ scale group linear {k}"), &scale_columns(w, scales)?, gs)?;
                let inv: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
                scale_columns(&q, &inv)
            })
            .collect::<Result<Vec<_>>>()?;
        let (mut sum, mut count) = (0f64, 0usize);
        for (r, want) in chunks.iter().zip(&reference) {
            let (s, c) = sse(want, &block(&ws, r.clone())?)?;
            (sum, count) = (sum + s, count + c);
        }
        // As a mean over one chunk would round it (sum * (1/n) in f32).
        Ok(sum as f32 * (1.0 / count.max(1) as f64) as f32)
    };
    let ones = vec![1f32; inf];
    let rtn_loss = loss_for(&ones)?;
    let mut best = ScaleSearch {
        scales: ones,
        ratio: None,
        loss: rtn_loss,
        rtn_loss,
    };
    for step in 0..opts.n_grid {
        let r = step as f32 / opts.n_grid as f32;
        let mut s: Vec<f32> = (0..inf)
            .map(|i| {
                let a = x_mean[i].powf(r);
                let v = if opts.duo_scaling {
                    a / (w_mean[i].powf(1.0 - r) + 1e-4)
                } else {
                    a
                };
                v.max(1e-4)
            })
            .collect();
        let (mx, mn) = s.iter().fold((f32::MIN, f32::MAX), |(a, b), &v| (a.max(v), b.min(v)));
        let norm = (mx * mn).sqrt();
        // Like AutoAWQ: channels whose scale overflowed (x_mean^r of an extreme activation)
        // are left unscaled rather than poisoning the weights.
        s.iter_mut()
            .for_each(|v| *v = if (*v / norm).is_finite() { *v / norm } else { 1.0 });
        let loss = loss_for(&s)?;
        if loss < best.loss {
            best = ScaleSearch {
                scales: s,
                ratio: Some(r),
                loss,
                rtn_loss,
            };
        }
    }
    Ok(best)
}

/// Row stride for sampling about `tokens` of `n` captured rows: AutoAWQ's `n / tokens`, raised
/// to the next value coprime with the sequence length. With 128 x 512 tokens AutoAWQ's stride
/// (128) divides 512, so every sample would sit at position 0, 128, 256 or 384, a quarter of
/// them on the first token, whose activations are extreme (the attention sink) and would
/// dominate every group's clipping error. A coprime stride visits distinct positions. (AutoAWQ's
/// own data, pileval in blocks of 512, gives strides that rarely share factors with 512.)
pub fn clip_stride(n: usize, tokens: usize, seq_len: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mut step = (n / tokens.max(1)).max(1);
    while step > 1 && seq_len > 1 && gcd(step, seq_len) != 1 {
        step += 1;
    }
    step
}

/// Per (output row, group) clipping bound for `w` [out, in] given its input `x` [n, in]:
/// the shrink of the group's absmax (down to `1 - max_shrink`) whose fake-quantized group
/// minimises the mean squared error of that group's contribution to the output.
pub fn search_clip(name: &str, w: &Tensor, x: &Tensor, opts: &AwqSearchOptions) -> Result<Vec<f32>> {
    let gs = opts.group_size;
    let (out, inf, wv) = matrix(name, w)?;
    check_group_size(name, inf, gs)?;
    let (n, xin) = x
        .dims2()
        .map_err(|_| Error::tensor(name, format!("captured input shape {:?} is not 2-D", x.dims())))?;
    if xin != inf {
        return Err(Error::tensor(
            name,
            format!("{inf} inputs, the captured input has {xin}"),
        ));
    }
    // Sample tokens evenly like AutoAWQ (every k-th row), copying only those rows.
    let step = clip_stride(n, opts.clip_tokens, opts.seq_len);
    let picked: Vec<u32> = (0..n as u32).step_by(step).collect();
    let picked = Tensor::from_vec(picked, n.div_ceil(step), x.device())?;
    let (_, _, xv) = matrix("AWQ calibration input", &x.index_select(&picked, 0)?)?;
    let ns = n.div_ceil(step);
    let ng = inf / gs;
    // A group's output error over the samples, mean_x (x_g . diff)^2, is diff^T G_g diff with
    // G_g = mean_x x_g x_g^T. One gs x gs matrix per column group, shared by every output row,
    // costs gs^2 per (row, group, clip step) instead of gs * samples (8x fewer for AutoAWQ's
    // 512 samples in groups of 64, 4x in groups of 128); the clip search was most of a 7B
    // layer's quantization time.
    let grams: Vec<Vec<f32>> = (0..ng)
        .into_par_iter()
        .map(|g| {
            let mut m = vec![0f32; gs * gs];
            for x in xv.chunks_exact(inf) {
                let xg = &x[g * gs..(g + 1) * gs];
                for (row, &xi) in m.chunks_exact_mut(gs).zip(xg) {
                    row.iter_mut().zip(xg).for_each(|(r, &xj)| *r += xi * xj);
                }
            }
            m.iter_mut().for_each(|v| *v /= ns.max(1) as f32);
            m
        })
        .collect();
    let steps = ((opts.max_shrink * opts.clip_grid as f32) as usize).max(1);
    let best: Vec<f32> = (0..out * ng)
        .into_par_iter()
        .map(|k| {
            let (o, g) = (k / ng, k % ng);
            let grp = &wv[o * inf + g * gs..o * inf + (g + 1) * gs];
            let org_max = grp.iter().fold(0f32, |m, v| m.max(v.abs()));
            let mut best = (f32::INFINITY, org_max);
            for i in 0..steps {
                let max_val = org_max * (1.0 - i as f32 / opts.clip_grid as f32);
                let err = clip_error(grp, max_val, &grams[g]);
                if err < best.0 {
                    best = (err, max_val);
                }
            }
            best.1
        })
        .collect();
    Ok(best)
}

/// Output error of one group clamped to ±max_val then fake-quantized, through the group's
/// input Gram matrix `gram` (see [`search_clip`]).
fn clip_error(grp: &[f32], max_val: f32, gram: &[f32]) -> f32 {
    let clamped: Vec<f16> = grp.iter().map(|v| f16::from_f32(v.clamp(-max_val, max_val))).collect();
    let diff: Vec<f32> = match pseudo_quantize("clip", &clamped, 1, grp.len(), grp.len()) {
        Ok(q) => q
            .dequantize_f16()
            .iter()
            .zip(grp)
            .map(|(q, w)| w - q.to_f32())
            .collect(),
        Err(_) => return f32::INFINITY,
    };
    gram.chunks_exact(grp.len())
        .zip(&diff)
        .map(|(row, &d)| d * super::awq_linear::dot(row, &diff))
        .sum()
}

/// Clamp each (row, group) of `w` to ±max_val from [`search_clip`].
pub fn apply_clip(name: &str, w: &Tensor, max_val: &[f32], group_size: usize) -> Result<Tensor> {
    let (out, inf, mut wv) = matrix(name, w)?;
    check_group_size(name, inf, group_size)?;
    if max_val.len() != out * (inf / group_size) {
        return Err(Error::tensor(
            name,
            format!("{} clip bounds for {out} x {} groups", max_val.len(), inf / group_size),
        ));
    }
    for (k, grp) in wv.chunks_exact_mut(group_size).enumerate() {
        grp.iter_mut().for_each(|v| *v = v.clamp(-max_val[k], max_val[k]));
    }
    Ok(Tensor::from_vec(wv, (out, inf), w.device())?)
}

#[cfg(test)]
mod tests {
    use super::{clip_error, clip_stride};
    use rand::{Rng, SeedableRng};

    #[test]
    fn clip_error_through_the_gram_matrix_is_the_mean_squared_output_error() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let (gs, ns) = (64, 37);
        let grp: Vec<f32> = (0..gs).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
        let xs: Vec<Vec<f32>> = (0..ns)
            .map(|_| (0..gs).map(|_| rng.gen_range(-3.0f32..3.0)).collect())
            .collect();
        let mut gram = vec![0f32; gs * gs];
        for x in &xs {
            for i in 0..gs {
                for j in 0..gs {
                    gram[i * gs + j] += x[i] * x[j] / ns as f32;
                }
            }
        }
        for max_val in [0.1f32, 0.07, 0.05] {
            let clamped: Vec<half::f16> = grp
                .iter()
                .map(|v| half::f16::from_f32(v.clamp(-max_val, max_val)))
                .collect();
            let q = super::pseudo_quantize("t", &clamped, 1, gs, gs)
                .unwrap()
                .dequantize_f16();
            let want: f64 = xs
                .iter()
                .map(|x| {
                    let e: f64 = (0..gs).map(|i| x[i] as f64 * (grp[i] - q[i].to_f32()) as f64).sum();
                    e * e
                })
                .sum::<f64>()
                / ns as f64;
            let got = clip_error(&grp, max_val, &gram) as f64;
            assert!((got - want).abs() <= 1e-4 * want, "max {max_val}: {got} vs {want}");
        }
    }

    #[test]
    fn clip_stride_spreads_samples_over_positions() {
        // AutoAWQ's defaults on our data: 128 x 512 tokens, 512 samples -> 129, not 128.
        assert_eq!(clip_stride(128 * 512, 512, 512), 129);
        assert_eq!(clip_stride(32 * 256, 512, 256), 17);
        // Every sampled row (508 of them) sits at a position of its own.
        let (n, seq) = (128 * 512, 512);
        let step = clip_stride(n, 512, seq);
        let mut seen: Vec<usize> = (0..n).step_by(step).map(|r| r % seq).collect();
        let rows = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!((rows, seen.len()), (n.div_ceil(step), n.div_ceil(step)));
        // Few rows, unknown length, or already coprime: unchanged.
        assert_eq!(clip_stride(100, 512, 50), 1);
        assert_eq!(clip_stride(4096, 512, 0), 8);
        assert_eq!(clip_stride(3 * 512 * 7, 512, 512), 21);
    }
}
