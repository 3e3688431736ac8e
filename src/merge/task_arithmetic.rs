//! The task-arithmetic family (task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs,
//! breadcrumbs_ties): mix deltas from the base model, optionally thinned and sign-filtered.
//!
//! Every step is rounded to the merge dtype `p` exactly where torch would round it when mergekit
//! runs the same tensors in that dtype, so bf16 merges match mergekit bit for bit.
use super::methods::Sparsify;
use super::tensor::Dtype;
use crate::error::{Error, Result};

/// One fine-tuned input: its weights (already in the merge dtype) and per-model parameters.
pub struct TaskInput<'a> {
    pub values: &'a [f32],
    pub weight: f64,
    pub density: f64,
    pub gamma: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct MixOptions {
    pub sparsify: Option<Sparsify>,
    pub consensus: bool,
    pub normalize: bool,
    pub rescale: bool,
    pub lambda: f64,
    pub dtype: Dtype,
}

/// Draws DARE's keep mask: (input index, element count, density) -> one bool per element.
pub type MaskSource<'a> = dyn FnMut(usize, usize, f64) -> Vec<bool> + 'a;

/// Merge one tensor. `name` is only used in error messages.
pub fn mix(
    name: &str,
    base: &[f32],
    inputs: &[TaskInput],
    opts: &MixOptions,
    masks: &mut MaskSource,
) -> Result<Vec<f32>> {
    let p = opts.dtype;
    let n = base.len();
    if inputs.is_empty() {
        return Ok(base.to_vec());
    }
    let mut weighted: Vec<Vec<f32>> = Vec::with_capacity(inputs.len());
    let mut weights: Vec<f32> = Vec::with_capacity(inputs.len());
    for (i, inp) in inputs.iter().enumerate() {
        let mut delta: Vec<f32> = inp.values.iter().zip(base).map(|(x, b)| p.round(x - b)).collect();
        if let Some(method) = opts.sparsify {
            if inp.density < 1.0 {
                let keep = match method {
                    Sparsify::Magnitude => {
                        let k = ((inp.density * n as f64) as usize).max(1);
                        keep_sorted(name, &delta, true, 0, k)?
                    }
                    Sparsify::Random => {
                        let m = masks(i, n, inp.density);
                        if m.len() != n {
                            return Err(Error::tensor(name, "internal: DARE mask has the wrong length"));
                        }
                        m
                    }
                    Sparsify::MagnitudeOutliers => {
                        let target = (n as f64 * inp.density) as usize;
                        let mut top = (n as f64 * inp.gamma) as usize;
                        let bottom = match n.checked_sub(target + top) {
                            Some(b) => b,
                            None => {
                                top = n - target;
                                0
                            }
                        };
                        keep_sorted(name, &delta, false, bottom, n - top)?
                    }
                };
                delta = masked_rescaled(&delta, &keep, opts.rescale, p);
            }
        }
        // mergekit builds the weight tensor in the merge dtype, so the weight itself is rounded.
        let w = p.round(inp.weight as f32);
        delta.iter_mut().for_each(|d| *d = p.round(*d * w));
        weighted.push(delta);
        weights.push(w);
    }
    let lambda = opts.lambda as f32;
    let mut out = Vec::with_capacity(n);
    for e in 0..n {
        let (mut mixed, mut divisor) = (0f32, 0f32);
        if opts.consensus {
            // Majority sign of the summed weighted deltas (>= 0 counts as positive); exact zeros never vote.
            let total: f32 = weighted.iter().map(|d| d[e]).sum();
            let majority = if p.round(total) >= 0.0 { 1.0 } else { -1.0 };
            for (d, w) in weighted.iter().zip(&weights) {
                if d[e] != 0.0 && d[e].signum() == majority {
                    mixed += d[e];
                    divisor += w;
                }
            }
            if p.round(divisor) == 0.0 {
                divisor = 1.0;
            }
        } else {
            mixed = weighted.iter().map(|d| d[e]).sum();
            divisor = weights.iter().sum();
            if p.round(divisor).abs() < 1e-8 {
                divisor = 1.0;
            }
        }
        let mut m = p.round(mixed);
        if opts.normalize {
            m = p.round(m / p.round(divisor));
        }
        if opts.lambda != 1.0 {
            m = p.round(m * lambda);
        }
        out.push(p.round(base[e] + m));
    }
    Ok(out)
}

/// Keep the elements at positions `lo..hi` of torch's argsort of |x| (descending for TIES'
/// top-k, ascending for breadcrumbs), reproducing mergekit's choice among tied magnitudes.
pub fn keep_sorted(name: &str, x: &[f32], descending: bool, lo: usize, hi: usize) -> Result<Vec<bool>> {
    if x.len() > u32::MAX as usize {
        return Err(Error::tensor(name, "too many elements for magnitude ranking (> 2^32)"));
    }
    // Sort (|x|, index) pairs in place rather than materialising magnitudes and an index array:
    // 8 bytes per element is the largest transient buffer of a TIES merge.
    let mut pairs: Vec<(f32, u32)> = x.iter().enumerate().map(|(i, v)| (v.abs(), i as u32)).collect();
    if descending {
        super::torch_sort::std_sort(&mut pairs, &|a: &(f32, u32), b: &(f32, u32)| a.0 > b.0);
    } else {
        super::torch_sort::std_sort(&mut pairs, &|a: &(f32, u32), b: &(f32, u32)| a.0 < b.0);
    }
    let mut keep = vec![false; x.len()];
    for &(_, i) in pairs.get(lo..hi.min(pairs.len())).unwrap_or(&[]) {
        keep[i as usize] = true;
    }
    Ok(keep)
}

/// Zero the dropped elements; with `rescale`, scale the survivors so the L1 norm matches the
/// unmasked delta (mergekit 0.1.5; older releases divided by the density instead).
fn masked_rescaled(delta: &[f32], keep: &[bool], rescale: bool, p: Dtype) -> Vec<f32> {
    let masked: Vec<f32> = delta.iter().zip(keep).map(|(d, k)| if *k { *d } else { 0.0 }).collect();
    if !rescale {
        return masked;
    }
    let l1 = |v: &[f32]| p.round(v.iter().map(|x| x.abs() as f64).sum::<f64>() as f32);
    let (before, after) = (l1(delta), l1(&masked));
    const EPS: f32 = 1e-7;
    if before < EPS || after < EPS {
        return masked;
    }
    let ratio = p.round(before / after);
    masked.into_iter().map(|x| p.round(x * ratio)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(sparsify: Option<Sparsify>, consensus: bool, normalize: bool) -> MixOptions {
        MixOptions {
            sparsify,
            consensus,
            normalize,
            rescale: false,
            lambda: 1.0,
            dtype: Dtype::F32,
        }
    }

    fn no_masks() -> impl FnMut(usize, usize, f64) -> Vec<bool> {
        |_, n, _| vec![true; n]
    }

    fn input(values: &[f32], weight: f64, density: f64) -> TaskInput<'_> {
        TaskInput {
            values,
            weight,
            density,
            gamma: 0.0,
        }
    }

    #[test]
    fn task_arithmetic_adds_weighted_deltas() {
        let base = [1.0f32, 1.0];
        let a = [2.0f32, 0.0];
        let b = [1.5f32, 3.0];
        let out = mix(
            "t",
            &base,
            &[input(&a, 1.0, 1.0), input(&b, 2.0, 1.0)],
            &opts(None, false, false),
            &mut no_masks(),
        )
        .unwrap();
        assert_eq!(out, vec![1.0 + 1.0 + 1.0, 1.0 - 1.0 + 4.0]);
        let lam = MixOptions {
            lambda: 0.5,
            ..opts(None, false, true)
        };
        let out = mix(
            "t",
            &base,
            &[input(&a, 1.0, 1.0), input(&b, 1.0, 1.0)],
            &lam,
            &mut no_masks(),
        )
        .unwrap();
        assert_eq!(out, vec![1.0 + 0.5 * 0.75, 1.0 + 0.5 * 0.5]);
    }

    #[test]
    fn ties_trims_elects_sign_and_takes_disjoint_mean() {
        let base = [0.0f32; 4];
        let a = [3.0f32, -1.0, 0.5, 2.0];
        let b = [1.0f32, 2.0, -4.0, -1.0];
        // density 0.5: a keeps {3, 2}, b keeps {2, -4}.
        let out = mix(
            "t",
            &base,
            &[input(&a, 1.0, 0.5), input(&b, 1.0, 0.5)],
            &opts(Some(Sparsify::Magnitude), true, true),
            &mut no_masks(),
        )
        .unwrap();
        // e0: only a (3); e1: only b (2); e2: only b (-4); e3: a (2) alone.
        assert_eq!(out, vec![3.0, 2.0, -4.0, 2.0]);
        // Conflicting signs: the majority (by summed mass) wins, the minority is dropped.
        let c = [5.0f32];
        let d = [-2.0f32];
        let out = mix(
            "t",
            &[0.0],
            &[input(&c, 1.0, 1.0), input(&d, 1.0, 1.0)],
            &opts(Some(Sparsify::Magnitude), true, true),
            &mut no_masks(),
        )
        .unwrap();
        assert_eq!(out, vec![5.0]);
    }

    #[test]
    fn keep_sorted_selects_by_magnitude() {
        let x = [0.1f32, -0.7, 0.3, 0.5, 0.0];
        assert_eq!(
            keep_sorted("t", &x, true, 0, 2).unwrap(),
            vec![false, true, false, true, false]
        );
        assert_eq!(
            keep_sorted("t", &x, false, 1, 4).unwrap(),
            vec![true, false, true, true, false]
        );
        assert_eq!(keep_sorted("t", &x, false, 0, 9).unwrap(), vec![true; 5]);
    }

    #[test]
    fn dare_rescales_to_match_l1_norm() {
        let base = [0.0f32; 4];
        let a = [1.0f32, 1.0, 2.0, 4.0];
        let mut first_two = |_: usize, n: usize, _: f64| (0..n).map(|i| i < 2).collect::<Vec<_>>();
        let o = MixOptions {
            rescale: true,
            ..opts(Some(Sparsify::Random), false, false)
        };
        let out = mix("t", &base, &[input(&a, 1.0, 0.5)], &o, &mut first_two).unwrap();
        // L1 before 8, after 2 -> x4.
        assert_eq!(out, vec![4.0, 4.0, 0.0, 0.0]);
    }

    #[test]
    fn breadcrumbs_drops_outliers_and_small() {
        let base = [0.0f32; 10];
        let a: Vec<f32> = (1..=10).map(|v| v as f32).collect();
        let inp = TaskInput {
            values: &a,
            weight: 1.0,
            density: 0.5,
            gamma: 0.1,
        };
        let out = mix(
            "t",
            &base,
            &[inp],
            &opts(Some(Sparsify::MagnitudeOutliers), false, false),
            &mut no_masks(),
        )
        .unwrap();
        // Keep 5 of 10: drop the top 1 (10) and the 4 smallest (1..4).
        assert_eq!(out, vec![0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0]);
    }

    #[test]
    fn bf16_rounds_each_step() {
        let p = Dtype::BF16;
        let base = [p.round(0.0123)];
        let a = [p.round(0.0171)];
        let o = MixOptions {
            dtype: p,
            ..opts(None, false, false)
        };
        let out = mix("t", &base, &[input(&a, 0.3, 1.0)], &o, &mut no_masks()).unwrap();
        let delta = p.round(a[0] - base[0]);
        let expect = p.round(base[0] + p.round(delta * p.round(0.3)));
        assert_eq!(out, vec![expect]);
    }
}
