//! Token sampling: greedy, temperature, top-k, top-p, min-p and repetition penalty, in the
//! order transformers applies them, reproducible with a seed.
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::invalid(
                "temperature",
                format!("{} (must be >= 0)", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid("top-p", format!("{} (must be in (0, 1])", self.top_p)));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return Err(Error::invalid("min-p", format!("{} (must be in [0, 1))", self.min_p)));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("top-k", "0 (must be >= 1)"));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::invalid(
                "repetition-penalty",
                format!("{} (must be > 0)", self.repetition_penalty),
            ));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = rand::rngs::StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    /// Choose the next token from last-position logits; `history` feeds the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut l = logits.to_vec();
        if self.params.repetition_penalty != 1.0 {
            let p = self.params.repetition_penalty;
            let mut seen = std::collections::HashSet::new();
            for &t in history {
                if seen.insert(t) {
                    if let Some(x) = l.get_mut(t as usize) {
                        *x = if *x < 0.0 { *x * p } else { *x / p };
                    }
                }
            }
        }
        if self.params.is_greedy() {
            return argmax(&l);
        }
        let t = self.params.temperature;
        // Candidates sorted by logit, descending.
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_unstable_by(|&a, &b| l[b].total_cmp(&l[a]));
        if let Some(k) = self.params.top_k {
            idx.truncate(k.max(1));
        }
        let max = l[idx[0]] / t;
        let mut probs: Vec<f64> = idx.iter().map(|&i| ((l[i] / t - max) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (j, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.params.top_p as f64 {
                    keep = j + 1;
                    break;
                }
            }
            idx.truncate(keep);
            probs.truncate(keep);
        }
        if self.params.min_p > 0.0 {
            let cut = probs[0] * self.params.min_p as f64;
            let keep = probs.iter().take_while(|&&p| p >= cut).count().max(1);
            idx.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.gen::<f64>() * total;
        for (j, p) in probs.iter().enumerate() {
            r -= p;
            if r <= 0.0 {
                return idx[j] as u32;
            }
        }
        idx[idx.len() - 1] as u32
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_penalty() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, 1.0], &[]), 1);
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 4.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, 1.0], &[1]), 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(2),
            seed: 7,
            ..Default::default()
        };
        let logits = [1.0, 0.9, 0.8, 5.0];
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..50).map(|_| s.sample(&logits, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p).unwrap();
            (0..50).map(|_| s.sample(&logits, &[])).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().all(|&t| t == 3 || t == 0));
    }

    #[test]
    fn invalid_values_are_rejected_by_name() {
        for (p, name) in [
            (
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top-p",
            ),
            (
                SamplingParams {
                    min_p: 1.5,
                    ..Default::default()
                },
                "min-p",
            ),
            (
                SamplingParams {
                    top_k: Some(0),
                    ..Default::default()
                },
                "top-k",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..Default::default()
                },
                "repetition-penalty",
            ),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
