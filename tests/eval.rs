//! Benchmark harness against transformers' reference (MMLU medical_genetics, 100 items × 3 shot sets):
//! prompt bytes, shot rule, scoring, metrics, calibration, ensembles, reports and resume.
mod common;

use biomistral::eval::report::{self, read_samples, samples_path};
use biomistral::eval::run::{item_prompt, load_pools, sha256_hex};
use biomistral::eval::{metrics, run_eval, Backend, EvalConfig, Sample, TaskId};
use biomistral::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(name)
}

/// The benchmark data, when its medical_genetics CSV is there.
fn data_dir() -> Option<PathBuf> {
    let dir = common::data_dir()?;
    if dir.join(TaskId::MmluMedicalGenetics.raw_path()).is_file() {
        Some(dir)
    } else {
        println!("skipping: benchmark data not found at {}", dir.display());
        None
    }
}

/// The reference records, keyed by prompt sha256.
fn reference() -> Vec<Sample> {
    let text = std::fs::read_to_string(fixture("hf_medical_genetics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v["task"] = "mmlu_medical_genetics".into();
            serde_json::from_value(v).unwrap()
        })
        .collect()
}

fn summary() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("hf_medical_genetics_summary.json")).unwrap()).unwrap()
}

const VOCAB: usize = 100;
const LETTER0: u32 = 49; // the reference tokenizer's id of "A"

/// Serves the reference's letter probabilities. `encode` of a prompt returns its sha256 as 8 words padded
/// to the reference token count, so `last_logits` can find the record again without shared state.
struct Replay {
    by_sha: HashMap<String, Sample>,
    calls: usize,
    name: String,
}

impl Replay {
    fn new(name: &str) -> Self {
        Replay {
            by_sha: reference().into_iter().map(|s| (s.prompt_sha256.clone(), s)).collect(),
            calls: 0,
            name: name.into(),
        }
    }
}

impl Backend for Replay {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match text {
            "" => return Ok(vec![]),
            "(" => return Ok(vec![24]),
            _ => {}
        }
        if let Some(l) = text.strip_prefix('(').filter(|l| l.len() == 1) {
            return Ok(vec![24, LETTER0 + (l.as_bytes()[0] - b'A') as u32]);
        }
        let sha = sha256_hex(text);
        let rec = self
            .by_sha
            .get(&sha)
            .ok_or_else(|| Error::msg(format!("prompt not in the reference: {sha}")))?;
        let mut ids: Vec<u32> = (0..8)
            .map(|w| u32::from_str_radix(&sha[w * 8..w * 8 + 8], 16).unwrap())
            .collect();
        ids.resize(rec.n_prompt_tokens, 0);
        Ok(ids)
    }
    fn decode_token(&self, id: u32) -> Result<String> {
        Ok(match id {
            49..=52 => ((b'A' + (id - LETTER0) as u8) as char).to_string(),
            _ => format!("<{id}>"),
        })
    }
    fn last_logits(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.calls += prompts.len();
        prompts
            .iter()
            .map(|ids| {
                let sha: String = ids[..8].iter().map(|w| format!("{w:08x}")).collect();
                let rec = &self.by_sha[&sha];
                // The letters get their reference probabilities; the remaining mass is spread evenly.
                let rest = 1.0 - rec.letter_probs.values().sum::<f64>();
                let mut logits = vec![(rest / (VOCAB - 4) as f64).ln() as f32; VOCAB];
                for (l, p) in &rec.letter_probs {
                    logits[(LETTER0 + (l.as_bytes()[0] - b'A') as u32) as usize] = p.ln() as f32;
                }
                Ok(logits)
            })
            .collect()
    }
    fn continuation_logprobs(&mut self, _context: &[u32], _continuation: &[u32]) -> Result<Vec<f32>> {
        Err(Error::msg("replay backend has no continuations"))
    }
}

fn config(data: &Path, out: &Path) -> EvalConfig {
    let mut cfg = EvalConfig::new(vec![TaskId::MmluMedicalGenetics], data.to_path_buf(), out.to_path_buf());
    cfg.progress = false;
    cfg.batch_size = 16;
    cfg
}

#[test]
fn prompts_match_transformers_byte_for_byte() {
    let Some(data) = data_dir() else { return };
    let cfg = config(&data, Path::new("unused"));
    let pools = load_pools(TaskId::MmluMedicalGenetics, &cfg).unwrap();
    assert_eq!(pools.items.len(), 100);
    let refs = reference();
    assert_eq!(refs.len(), 300);
    for r in &refs {
        let (prompt, shots) = item_prompt(&pools, &cfg, r.item, r.shot_set);
        assert_eq!(shots, r.shot_items, "shot rule, item {} set {}", r.item, r.shot_set);
        assert_eq!(
            sha256_hex(&prompt),
            r.prompt_sha256,
            "prompt bytes, item {} set {}",
            r.item,
            r.shot_set
        );
        assert!(prompt.ends_with("**Answer:**("));
        assert_eq!(pools.items[r.item].gold_letter().to_string(), r.gold);
    }
}

#[test]
fn replayed_scores_reproduce_reference_accuracy_and_resume() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&data, dir.path());
    let mut backend = Replay::new("smollm2-replay");
    let run = run_eval(&mut backend, &cfg).unwrap();
    assert_eq!(backend.calls, 300);
    let sum = summary();
    let t = &run.tasks[0];
    let want: Vec<f64> = serde_json::from_value(sum["accuracy_per_shot_set"].clone()).unwrap();
    assert_eq!(t.acc_per_shot_set, want);
    assert!((t.acc_mean - sum["accuracy_mean"].as_f64().unwrap()).abs() < 1e-12);
    assert!((t.acc_std - sum["accuracy_std_population"].as_f64().unwrap()).abs() < 1e-12);
    assert_eq!(t.n, 100);

    // Per-record agreement with transformers.
    let ours = read_samples(&samples_path(dir.path(), "mmlu_medical_genetics")).unwrap();
    let refs: HashMap<(usize, usize), Sample> = reference().into_iter().map(|s| ((s.item, s.shot_set), s)).collect();
    assert_eq!(ours.len(), 300);
    for s in &ours {
        let r = &refs[&(s.item, s.shot_set)];
        assert_eq!(
            (s.top1_id, &s.top1_str, s.correct),
            (r.top1_id, &r.top1_str, r.correct),
            "item {}",
            s.item
        );
        assert!((s.top1_prob - r.top1_prob).abs() < 1e-6);
        for (l, p) in &r.letter_probs {
            assert!((s.letter_probs[l] - p).abs() < 1e-6, "item {} letter {l}", s.item);
        }
        assert_eq!(
            (s.n_prompt_tokens, &s.prompt_sha256),
            (r.n_prompt_tokens, &r.prompt_sha256)
        );
    }

    // ECE recomputed here from the reference probabilities, independently of the library's binning code
    // (to 1e-6: the replay passes probabilities through f32 logits).
    for k in 0..3 {
        let mut bins = [(0usize, 0.0f64, 0usize); 5];
        for r in refs.values().filter(|r| r.shot_set == k) {
            let total: f64 = r.letter_probs.values().sum();
            let (l, p) = r.letter_probs.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
            let c = p / total;
            let b = ((c * 5.0).floor() as usize).min(4);
            bins[b] = (bins[b].0 + 1, bins[b].1 + c, bins[b].2 + (*l == r.gold) as usize);
        }
        let ece: f64 = bins
            .iter()
            .filter(|b| b.0 > 0)
            .map(|b| b.0 as f64 / 100.0 * (b.2 as f64 / b.0 as f64 - b.1 / b.0 as f64).abs())
            .sum();
        assert!(
            (t.ece_per_shot_set[k] - ece).abs() < 1e-6,
            "shot set {k}: {} vs {ece}",
            t.ece_per_shot_set[k]
        );
    }

    // Reports.
    for f in ["results.json", "report.md", "accuracy.svg", "reliability.svg"] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let back = report::read_results(dir.path()).unwrap();
    assert_eq!(back.tasks, run.tasks);
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| smollm2-replay | 20.0 ± 0.8 | 20.0 ± 0.8 |"), "{md}");

    // Resume: keep 150 lines plus half a line, as if killed mid-write; only the rest is scored again.
    let path = samples_path(dir.path(), "mmlu_medical_genetics");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().take(151).collect();
    let half = &lines[150][..40];
    lines.truncate(150);
    std::fs::write(&path, format!("{}\n{half}", lines.join("\n"))).unwrap();
    let mut backend = Replay::new("smollm2-replay");
    let again = run_eval(&mut backend, &cfg).unwrap();
    assert_eq!(backend.calls, 150);
    assert_eq!(again.tasks, run.tasks);
    assert_eq!(read_samples(&path).unwrap().len(), 300);

    // The folder refuses a resume under another protocol.
    let mut other = config(&data, dir.path());
    other.protocol = biomistral::eval::Protocol::Loglik;
    let e = run_eval(&mut Replay::new("smollm2-replay"), &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("other settings"), "{e}");

    // An ensemble of a run with itself is the letter arg-max of that run.
    let ens_dir = dir.path().join("ens");
    let ens = report::ensemble_runs(&[back.clone(), back], &ens_dir).unwrap();
    let letter: Vec<f64> =
        serde_json::from_value(sum["secondary_letter_argmax_accuracy_per_shot_set"].clone()).unwrap();
    assert_eq!(ens.tasks[0].acc_per_shot_set, letter);
    assert_eq!(ens.meta.model, "ensemble(smollm2-replay+smollm2-replay)");
}

#[test]
fn changed_prompts_are_not_resumed_silently() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&data, dir.path());
    cfg.limit = Some(20);
    // With 20 items the pool (and so the shots) differ from the reference's; the replay backend cannot
    // score them, so write a forged sample with a wrong sha and check the driver refuses it.
    let s = Sample {
        prompt_sha256: "00".repeat(32),
        ..reference()[0].clone()
    };
    std::fs::write(
        samples_path(dir.path(), "mmlu_medical_genetics"),
        serde_json::to_string(&s).unwrap() + "\n",
    )
    .unwrap();
    let e = run_eval(&mut Replay::new("x"), &cfg).unwrap_err().to_string();
    assert!(
        e.contains("different prompt") && e.contains("samples_mmlu_medical_genetics.jsonl"),
        "{e}"
    );
}

#[test]
fn real_task_files_load_with_expected_sizes() {
    let Some(data) = data_dir() else { return };
    let want = [265, 100, 135, 272, 144, 173, 1273, 1273, 500, 4183];
    for (task, n) in TaskId::ALL.into_iter().zip(want) {
        let l = biomistral::eval::tasks::load_task(task, &data, "en", biomistral::eval::OnBadRow::Fail).unwrap();
        assert_eq!((task.name(), l.items.len()), (task.name(), n));
        let opts = l.items[0].options.len();
        let expect = match task {
            TaskId::MedQa5 => 5,
            TaskId::PubMedQa => 3,
            _ => 4,
        };
        assert_eq!(opts, expect, "{}", task.name());
    }
    // PubMedQA gold agrees with the official ground-truth file.
    let l =
        biomistral::eval::tasks::load_task(TaskId::PubMedQa, &data, "en", biomistral::eval::OnBadRow::Fail).unwrap();
    let gt: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(data.join("pubmedqa/test_ground_truth.json")).unwrap()).unwrap();
    for it in &l.items {
        let want = ["yes", "no", "maybe"][it.gold];
        assert_eq!(gt[&it.id], want, "PMID {}", it.id);
    }
    assert_eq!(l.items[0].id, "7482275");
    let _ = metrics::ECE_BINS;
}

/// Byte-level tokenizer with a deterministic "model": the next token after a prompt of length L is letter
/// `L mod 5`, and every continuation token costs −(id mod 7)/10 nats.
struct Bytes;

impl Backend for Bytes {
    fn name(&self) -> String {
        "bytes".into()
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }
    fn decode_token(&self, id: u32) -> Result<String> {
        Ok(char::from(id as u8).to_string())
    }
    fn last_logits(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        Ok(prompts
            .iter()
            .map(|p| {
                let mut l = vec![0.0f32; 256];
                l[b'A' as usize + p.len() % 5] = 3.0;
                l
            })
            .collect())
    }
    fn continuation_logprobs(&mut self, context: &[u32], continuation: &[u32]) -> Result<Vec<f32>> {
        assert!(!context.is_empty());
        Ok(continuation.iter().map(|&id| -((id % 7) as f32) / 10.0).collect())
    }
}

#[test]
fn every_task_runs_through_both_protocols() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EvalConfig::new(TaskId::ALL.to_vec(), data.clone(), dir.path().join("bm"));
    cfg.progress = false;
    cfg.limit = Some(20);
    let run = run_eval(&mut Bytes, &cfg).unwrap();
    assert_eq!(run.tasks.len(), 10);
    for t in &run.tasks {
        let samples = read_samples(&samples_path(&cfg.out, &t.task)).unwrap();
        assert_eq!((t.n, samples.len()), (20, 60), "{}", t.task);
        for s in &samples {
            let want = char::from(b'A' + (s.n_prompt_tokens % 5) as u8).to_string();
            assert_eq!(
                (&s.top1_str, s.correct),
                (&want, want == s.gold),
                "{} item {}",
                t.task,
                s.item
            );
            let n_opts = match t.task.as_str() {
                "medqa_5" => 5,
                "pubmedqa" => 3,
                _ => 4,
            };
            assert_eq!(s.letter_probs.len(), n_opts);
        }
        let acc: f64 = samples.iter().filter(|s| s.correct).count() as f64 / 60.0;
        assert!((t.acc_mean - acc).abs() < 1e-12);
    }

    let mut ll = cfg.clone();
    ll.out = dir.path().join("ll");
    ll.protocol = biomistral::eval::Protocol::Loglik;
    ll.tasks = vec![TaskId::PubMedQa, TaskId::MedQa5];
    ll.limit = Some(5);
    let run = run_eval(&mut Bytes, &ll).unwrap();
    for t in &run.tasks {
        for s in read_samples(&samples_path(&ll.out, &t.task)).unwrap() {
            // Recompute each option's score from the byte "model": "L) text" costs Σ −(byte mod 7)/10.
            let pools = load_pools(TaskId::parse(&t.task).unwrap(), &ll).unwrap();
            let item = &pools.items[s.item];
            let want: Vec<f64> = (0..item.options.len())
                .map(|i| {
                    let cont = format!("{}) {}", (b'A' + i as u8) as char, item.options[i]);
                    cont.bytes().map(|b| -((b % 7) as f64) / 10.0).sum()
                })
                .collect();
            let got = s.option_loglik.clone().unwrap();
            assert!(
                got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4),
                "{got:?} vs {want:?}"
            );
        }
        assert!(t.acc_norm_per_shot_set.is_some());
    }
}
