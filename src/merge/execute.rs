//! Compute one output tensor of a plan.
use super::interpolate;
use super::methods::Method;
use super::plan::{Plan, TensorTask};
use super::task_arithmetic::{self, MixOptions, TaskInput};
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// The per-tensor RNG seed: derived from the run seed, the output tensor name and the input's
/// position, so DARE masks do not depend on which thread merges which tensor, or in what order.
pub fn tensor_seed(seed: u64, tensor: &str, input: usize) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(tensor.as_bytes());
    h.update((input as u64).to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Bernoulli(density) keep mask from `rand`'s StdRng (ChaCha12; stable within rand 0.8).
pub fn dare_mask(seed: u64, tensor: &str, input: usize, n: usize, density: f64) -> Vec<bool> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(tensor_seed(seed, tensor, input));
    (0..n).map(|_| rng.gen::<f64>() < density).collect()
}

/// Merge one tensor; values are returned rounded to the task's merge dtype.
pub fn compute(plan: &Plan, task: &TensorTask, seed: u64) -> Result<Vec<f32>> {
    let md = task.merge_dtype;
    let inputs: Vec<Vec<f32>> = task
        .sources
        .iter()
        .map(|s| {
            let mut v = plan.models[s.model].read_f32(&s.tensor)?;
            // `dtype:` casts every input before the merge math.
            v.iter_mut().for_each(|x| *x = md.round(*x));
            if v.len() != task.numel() {
                return Err(Error::tensor(&s.tensor, "element count does not match its shape"));
            }
            Ok(v)
        })
        .collect::<Result<_>>()?;
    let base_pos = task.base.unwrap_or(0);
    let param = |i: usize, name: &str| task.sources[i].params.get(name).copied().unwrap_or(1.0);
    let out = match plan.method {
        Method::Linear => {
            let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
            let w: Vec<f64> = (0..inputs.len()).map(|i| param(i, "weight")).collect();
            interpolate::linear(&refs, &w, task.global("normalize") != 0.0)
        }
        Method::Slerp => {
            let other = if base_pos == 0 { 1 } else { 0 };
            interpolate::slerp(task.global("t"), &inputs[base_pos], &inputs[other])
        }
        Method::ModelStock => {
            let others: Vec<&[f32]> = (0..inputs.len())
                .filter(|i| *i != base_pos)
                .map(|i| inputs[i].as_slice())
                .collect();
            let row = (task.global("filter_wise") != 0.0).then(|| task.shape.last().copied().unwrap_or(1));
            interpolate::model_stock(&inputs[base_pos], &others, row)
        }
        Method::Passthrough => {
            let scale = param(0, "scale") as f32;
            let mut v = inputs.into_iter().next().unwrap_or_default();
            if scale != 1.0 {
                v.iter_mut().for_each(|x| *x = md.round(*x * scale));
            }
            v
        }
        _ => {
            let tis: Vec<TaskInput> = (0..inputs.len())
                .filter(|i| *i != base_pos)
                .map(|i| TaskInput {
                    values: &inputs[i],
                    weight: param(i, "weight"),
                    density: param(i, "density"),
                    gamma: task.sources[i].params.get("gamma").copied().unwrap_or(0.01),
                })
                .collect();
            let opts = MixOptions {
                sparsify: plan.method.sparsification(),
                consensus: plan.method.consensus(),
                normalize: task.global("normalize") != 0.0,
                rescale: task.global("rescale") != 0.0,
                lambda: task.globals.get("lambda").copied().unwrap_or(1.0),
                dtype: md,
            };
            let name = task.name.as_str();
            let mut masks = |i: usize, n: usize, d: f64| dare_mask(seed, name, i, n, d);
            task_arithmetic::mix(name, &inputs[base_pos], &tis, &opts, &mut masks)?
        }
    };
    Ok(out.into_iter().map(|x| md.round(x)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dare_masks_are_reproducible_and_have_the_right_density() {
        let a = dare_mask(42, "w", 0, 10_000, 0.3);
        assert_eq!(a, dare_mask(42, "w", 0, 10_000, 0.3));
        assert_ne!(a, dare_mask(43, "w", 0, 10_000, 0.3));
        assert_ne!(a, dare_mask(42, "w2", 0, 10_000, 0.3));
        let kept = a.iter().filter(|k| **k).count() as f64 / 10_000.0;
        assert!((kept - 0.3).abs() < 0.02, "{kept}");
    }
}
