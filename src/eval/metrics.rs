//! Accuracy, mean ± population std over shot sets, expected calibration error and ensembles.
use super::scorer::{argmax_letter, Sample};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Bins of the reliability diagram and ECE (equal width over [0, 1]).
pub const ECE_BINS: usize = 5;

/// Mean and population standard deviation (ddof = 0), as the paper reports over its 3 shot sets.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Confidence and correctness used for calibration: the largest letter probability after normalising the
/// letter probabilities to sum to 1 (so mass on non-letter tokens does not count as under-confidence), and
/// whether that letter is gold.
pub fn letter_confidence(s: &Sample) -> Option<(f64, bool)> {
    let total: f64 = s.letter_probs.values().sum();
    let (l, p) = argmax_letter(&s.letter_probs)?;
    if total <= 0.0 || !total.is_finite() {
        return None;
    }
    Some((p / total, l == s.gold))
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    pub count: usize,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

/// Equal-width reliability bins; confidence 1.0 falls into the last bin.
pub fn reliability(points: &[(f64, bool)], bins: usize) -> Vec<Bin> {
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for &(c, ok) in points {
        let b = ((c * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += c;
        sums[b].2 += ok as usize;
    }
    sums.into_iter()
        .map(|(n, c, ok)| Bin {
            count: n,
            mean_confidence: if n > 0 { c / n as f64 } else { 0.0 },
            accuracy: if n > 0 { ok as f64 / n as f64 } else { 0.0 },
        })
        .collect()
}

/// ECE = Σ_b (n_b / N) |acc_b − conf_b|.
pub fn ece(points: &[(f64, bool)], bins: usize) -> f64 {
    let n = points.len() as f64;
    if points.is_empty() {
        return f64::NAN;
    }
    reliability(points, bins)
        .iter()
        .map(|b| b.count as f64 / n * (b.accuracy - b.mean_confidence).abs())
        .sum()
}

/// Figures for one task of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    /// Items in the pool.
    pub n: usize,
    pub acc_per_shot_set: Vec<f64>,
    pub acc_mean: f64,
    pub acc_std: f64,
    pub ece_per_shot_set: Vec<f64>,
    pub ece_mean: f64,
    /// Accuracy of the arg-max over option letters only (secondary; not the protocol's metric).
    pub letter_argmax_acc_mean: f64,
    /// loglik protocol: length-normalised accuracy per shot set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc_norm_per_shot_set: Option<Vec<f64>>,
    /// Malformed source rows left out of the pool.
    #[serde(default)]
    pub bad_rows: usize,
}

/// Group samples by shot set (sorted) and compute a task's figures.
pub fn summarize(task: &str, samples: &[Sample], bad_rows: usize) -> TaskResult {
    let sets: BTreeSet<usize> = samples.iter().map(|s| s.shot_set).collect();
    let items: BTreeSet<usize> = samples.iter().map(|s| s.item).collect();
    let (mut acc, mut eces, mut letter_acc, mut norm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let has_norm = samples.iter().all(|s| s.correct_norm.is_some()) && !samples.is_empty();
    for &k in &sets {
        let set: Vec<&Sample> = samples.iter().filter(|s| s.shot_set == k).collect();
        let n = set.len() as f64;
        acc.push(set.iter().filter(|s| s.correct).count() as f64 / n);
        let points: Vec<(f64, bool)> = set.iter().filter_map(|s| letter_confidence(s)).collect();
        eces.push(ece(&points, ECE_BINS));
        letter_acc.push(points.iter().filter(|p| p.1).count() as f64 / n);
        if has_norm {
            norm.push(set.iter().filter(|s| s.correct_norm == Some(true)).count() as f64 / n);
        }
    }
    let (acc_mean, acc_std) = mean_std(&acc);
    TaskResult {
        task: task.to_string(),
        n: items.len(),
        ece_mean: mean_std(&eces).0,
        letter_argmax_acc_mean: mean_std(&letter_acc).0,
        acc_per_shot_set: acc,
        acc_mean,
        acc_std,
        ece_per_shot_set: eces,
        acc_norm_per_shot_set: has_norm.then_some(norm),
        bad_rows,
    }
}

/// Ensemble several models' samples of one task: per (item, shot set), sum the letter probabilities and
/// take the arg-max letter. Every member must hold the same (item, shot set) pairs and gold letters.
pub fn ensemble(task: &str, members: &[Vec<Sample>]) -> Result<Vec<Sample>> {
    let first = members
        .first()
        .ok_or_else(|| Error::invalid("ensemble", "no members"))?;
    let index: Vec<BTreeMap<(usize, usize), &Sample>> = members
        .iter()
        .map(|m| m.iter().map(|s| ((s.item, s.shot_set), s)).collect())
        .collect();
    let mut out = Vec::with_capacity(first.len());
    for s in first {
        let mut probs: BTreeMap<String, f64> = BTreeMap::new();
        for (m, idx) in index.iter().enumerate() {
            let o = idx.get(&(s.item, s.shot_set)).ok_or_else(|| {
                Error::invalid(
                    "ensemble",
                    format!("{task}: member {m} has no item {} shot set {}", s.item, s.shot_set),
                )
            })?;
            if o.gold != s.gold {
                return Err(Error::invalid(
                    "ensemble",
                    format!(
                        "{task}: item {} has gold {} in member 0 but {} in member {m}",
                        s.item, s.gold, o.gold
                    ),
                ));
            }
            for (l, p) in &o.letter_probs {
                *probs.entry(l.clone()).or_default() += p;
            }
        }
        let total: f64 = probs.values().sum();
        let (l, p) = argmax_letter(&probs)
            .map(|(l, p)| (l.to_string(), p))
            .unwrap_or_default();
        out.push(Sample {
            task: task.to_string(),
            top1_id: None,
            correct: l == s.gold,
            top1_prob: if total > 0.0 { p / total } else { 0.0 },
            top1_str: l,
            letter_probs: probs,
            option_loglik: None,
            correct_norm: None,
            ..s.clone()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(item: usize, set: usize, gold: &str, probs: &[f64], correct: bool) -> Sample {
        Sample {
            task: "t".into(),
            item,
            id: item.to_string(),
            shot_set: set,
            shot_items: vec![],
            gold: gold.into(),
            top1_id: Some(0),
            top1_str: String::new(),
            top1_prob: 0.0,
            correct,
            letter_probs: probs
                .iter()
                .enumerate()
                .map(|(i, &p)| (((b'A' + i as u8) as char).to_string(), p))
                .collect(),
            n_prompt_tokens: 0,
            prompt_sha256: String::new(),
            option_loglik: None,
            correct_norm: None,
        }
    }

    #[test]
    fn population_std() {
        let (m, s) = mean_std(&[0.21, 0.2, 0.19]);
        assert!((m - 0.2).abs() < 1e-12 && (s - 0.008164965809277256).abs() < 1e-12);
    }

    #[test]
    fn ece_by_hand() {
        // Bin [0.8,1.0]: confidences 0.9 and 1.0, one right → |0.5 − 0.95| = 0.45, weight 2/3.
        // Bin [0.4,0.6): confidence 0.5, right → |1 − 0.5| = 0.5, weight 1/3.
        let pts = [(0.9, true), (1.0, false), (0.5, true)];
        assert!((ece(&pts, 5) - (2.0 / 3.0 * 0.45 + 1.0 / 3.0 * 0.5)).abs() < 1e-12);
        let bins = reliability(&pts, 5);
        assert_eq!(bins[4].count, 2);
        assert_eq!(bins[2].count, 1);
    }

    #[test]
    fn confidence_is_normalised_letter_max() {
        let s = sample(0, 0, "B", &[0.1, 0.3, 0.1], false);
        let (c, ok) = letter_confidence(&s).unwrap();
        assert!((c - 0.6).abs() < 1e-12 && ok);
    }

    #[test]
    fn ensemble_sums_probabilities() {
        let a = vec![
            sample(0, 0, "A", &[0.6, 0.4], true),
            sample(1, 0, "B", &[0.9, 0.1], false),
        ];
        let b = vec![
            sample(0, 0, "A", &[0.1, 0.9], false),
            sample(1, 0, "B", &[0.0, 1.0], true),
        ];
        let e = ensemble("t", &[a.clone(), b]).unwrap();
        assert_eq!((e[0].top1_str.as_str(), e[0].correct), ("B", false));
        assert_eq!((e[1].top1_str.as_str(), e[1].correct), ("B", true));
        let r = summarize("t", &e, 0);
        assert_eq!(r.acc_per_shot_set, vec![0.5]);
        assert!(ensemble("t", &[a, vec![]]).is_err());
    }

    #[test]
    fn summarize_per_shot_set() {
        let s = vec![
            sample(0, 0, "A", &[0.9, 0.1], true),
            sample(0, 1, "A", &[0.2, 0.8], false),
        ];
        let r = summarize("t", &s, 2);
        assert_eq!((r.n, r.acc_per_shot_set.clone(), r.bad_rows), (1, vec![1.0, 0.0], 2));
        assert!((r.acc_std - 0.5).abs() < 1e-12);
    }
}
