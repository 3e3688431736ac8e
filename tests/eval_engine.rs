//! The harness on the real engine: SmolLM2-135M-Instruct (bf16 HF copy made from the fixture GGUF, run in
//! f32) against transformers' records for MMLU medical_genetics. Skips without the fixture or the data.
mod common;

use biomistral::eval::engine::EngineBackend;
use biomistral::eval::run::{item_prompt, load_pools};
use biomistral::eval::scorer::{letter_token_ids, score_biomistral};
use biomistral::eval::{Backend, EvalConfig, Sample, TaskId};
use biomistral::source::{load, LoadOptions};
use candle_core::{DType, Device};

#[test]
fn engine_backend_reproduces_transformers_predictions() {
    let Some(data) = common::data_dir() else { return };
    let Some(dir) = common::hf_bf16_dir() else { return };
    let opts = LoadOptions {
        dtype: Some(DType::F32),
        device: Device::Cpu,
        ..Default::default()
    };
    let mut be = EngineBackend::new(load(dir.to_str().unwrap(), &opts).unwrap(), "smollm2");
    // The letter after "(" is the reference's single-token letter: A=49 .. D=52.
    assert_eq!(letter_token_ids(&be, 4).unwrap(), vec![49, 50, 51, 52]);

    let cfg = EvalConfig::new(vec![TaskId::MmluMedicalGenetics], data, "unused".into());
    let pools = load_pools(TaskId::MmluMedicalGenetics, &cfg).unwrap();
    let text = std::fs::read_to_string(common::fixtures().join("eval/hf_medical_genetics.jsonl")).unwrap();
    // Items 0-3, all three shot sets: 12 forwards in one call.
    let refs: Vec<Sample> = text
        .lines()
        .take(12)
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["task"] = "mmlu_medical_genetics".into();
            serde_json::from_value(v).unwrap()
        })
        .collect();
    // Ordered by shots as the driver orders them: (item 0, set 1) and (item 3, set 0) share all three
    // shots, so the second reuses the first's KV cache up to its test question.
    let mut refs = refs;
    refs.sort_by(|a, b| (&a.shot_items, a.shot_set).cmp(&(&b.shot_items, b.shot_set)));
    assert!(refs.windows(2).any(|w| w[0].shot_items == w[1].shot_items));
    let mut encoded = Vec::new();
    for r in &refs {
        let ids = be.encode(&item_prompt(&pools, &cfg, r.item, r.shot_set).0).unwrap();
        assert_eq!(ids.len(), r.n_prompt_tokens, "item {} set {}", r.item, r.shot_set);
        encoded.push(ids);
    }
    let logits = be.last_logits(&encoded).unwrap();
    let letters = [49, 50, 51, 52];
    for (r, l) in refs.iter().zip(&logits) {
        let s = score_biomistral(&be, l, &letters, &pools.items[r.item]).unwrap();
        assert_eq!(
            (Some(s.top1_id), &s.top1_str, s.correct),
            (r.top1_id, &r.top1_str, r.correct)
        );
        for (letter, p) in &r.letter_probs {
            assert!(
                (s.letter_probs[letter] - p).abs() < 1e-3,
                "item {} {letter}: {} vs {p}",
                r.item,
                s.letter_probs[letter]
            );
        }
    }
    // Continuation scoring agrees with the last-position softmax: log p("A" | prompt).
    let lp = be.continuation_logprobs(&encoded[0], &[49]).unwrap();
    assert!((lp[0] as f64 - refs[0].letter_probs["A"].ln()).abs() < 1e-3, "{lp:?}");
}

/// `biomistral eval` end to end on the local engine: the first items of MMLU medical_genetics
/// agree with transformers' predictions for the same prompts (the pool is limited, so the shot
/// rule works inside it and prompts differ from the reference; we check the output contract).
#[test]
fn eval_command_on_the_local_engine_writes_results() {
    let Some(data) = common::data_dir() else { return };
    let Some(dir) = common::hf_bf16_dir() else { return };
    let out = common::scratch().join(format!("eval-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = std::process::Command::new(common::bin())
        .args([
            "eval",
            "--model",
            dir.to_str().unwrap(),
            "--dtype",
            "f32",
            "--tasks",
            "mmlu_medical_genetics",
        ])
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--limit",
            "4",
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let samples = std::fs::read_to_string(out.join("samples_mmlu_medical_genetics.jsonl")).unwrap();
    assert_eq!(samples.lines().count(), 12);
    for l in samples.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        for k in [
            "item",
            "shot_set",
            "shot_items",
            "gold",
            "top1_id",
            "top1_str",
            "top1_prob",
            "correct",
            "letter_probs",
            "n_prompt_tokens",
            "prompt_sha256",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {l}");
        }
    }
    assert!(out.join("results.json").is_file() && out.join("report.md").is_file());
    std::fs::remove_dir_all(&out).ok();
}

/// The backend's KV cache outlives calls: option log-probabilities computed on top of the
/// cached context, and prompts reusing part of the previous one, equal fresh computations.
#[test]
fn cache_reuse_across_calls_gives_fresh_results() {
    // Dense weights: a GGUF's quantized-activation kernels would differ with the chunk length.
    let Some(dir) = common::hf_bf16_dir() else { return };
    let opts = LoadOptions {
        dtype: Some(DType::F32),
        ..Default::default()
    };
    let fresh = || EngineBackend::new(load(dir.to_str().unwrap(), &opts).unwrap(), "smollm2");
    let mut warm = fresh();
    let ctx = warm.encode("Question: which organ makes insulin? Answer:").unwrap();
    let options: Vec<Vec<u32>> = [" the pancreas", " the liver", " the pancreas and the gut"]
        .iter()
        .map(|o| warm.encode(o).unwrap())
        .collect();
    for o in &options {
        let a = warm.continuation_logprobs(&ctx, o).unwrap();
        let b = fresh().continuation_logprobs(&ctx, o).unwrap();
        assert_eq!(a.len(), o.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }
    let p1: Vec<u32> = ctx.iter().chain(&options[0]).copied().collect();
    let p2: Vec<u32> = ctx.iter().chain(&options[1]).copied().collect();
    let got = warm.last_logits(std::slice::from_ref(&p1)).unwrap().remove(0);
    let got2 = warm.last_logits(&[p2.clone(), ctx.clone()]).unwrap();
    let want = fresh().last_logits(&[p1]).unwrap().remove(0);
    let want2 = fresh().last_logits(&[p2]).unwrap().remove(0);
    let want3 = fresh().last_logits(&[ctx]).unwrap().remove(0);
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3);
    assert!(close(&got, &want) && close(&got2[0], &want2) && close(&got2[1], &want3));
}
