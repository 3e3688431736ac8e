//! Training: gradients, one step against a PyTorch reference, resume, adapters, bad input, and
//! short real runs on the fixture model (continued pre-training and SFT).
mod common;

use biomistral::model::Model;
use biomistral::source::random::{preset, write_random_model};
use biomistral::source::{load, LoadOptions, LoadedModel};
use biomistral::train::data::{Example, Split};
use biomistral::train::optim::Param;
use biomistral::train::trainer::{batch_loss, prepare};
use biomistral::train::{lora, LoraConfig, Mode, TrainConfig, Trainer};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let p = common::scratch().join(format!("train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A 2-layer random Mistral (vocab 512, hidden 64, GQA 4/2) in Hugging Face layout.
fn tiny_model_dir(dir: &Path, seed: u64) -> PathBuf {
    let d = dir.join("model");
    write_random_model(&preset("tiny", Some(2)).unwrap(), &d, DType::F32, seed).unwrap();
    d
}

fn load_as(dir: &Path, dtype: DType) -> LoadedModel {
    let opts = LoadOptions {
        dtype: Some(dtype),
        ..Default::default()
    };
    load(dir.to_str().unwrap(), &opts).unwrap()
}

/// Two sequences of different lengths (so the batch is padded); the second has loss on its
/// last 8 tokens only, as an SFT answer would.
fn fixed_batch() -> Vec<Example> {
    let mk = |len: usize, k: u32, from: usize| Example {
        ids: (0..len as u32).map(|i| (i * 37 + 11 * k + 5) % 512).collect(),
        target: (0..len).map(|i| i >= from.max(1)).collect(),
    };
    vec![mk(24, 1, 0), mk(17, 2, 9)]
}

fn lora_cfg(r: usize, dropout: f64) -> LoraConfig {
    LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        dropout,
        ..Default::default()
    }
}

/// Give every adapter a random nonzero B so gradients reach A too.
fn randomize_b(model: &mut Model) {
    for p in lora::params(model) {
        if p.name.contains("lora_B") {
            let t = Tensor::randn(0f32, 0.05, p.var.dims(), &Device::Cpu).unwrap();
            p.var.set(&t.to_dtype(p.var.dtype()).unwrap()).unwrap();
        }
    }
}

fn loss_of(model: &Model, batch: &[Example]) -> f64 {
    let refs: Vec<&Example> = batch.iter().collect();
    let n: usize = batch.iter().map(|e| e.n_targets()).sum();
    batch_loss(model, &refs, n as f64, true)
        .unwrap()
        .0
        .to_scalar::<f64>()
        .unwrap()
}

/// Central differences on a few entries of each of `params` against backprop, in f64.
fn check_grads(model: &Model, params: &[Param], batch: &[Example]) {
    let refs: Vec<&Example> = batch.iter().collect();
    let n: usize = batch.iter().map(|e| e.n_targets()).sum();
    let (loss, _) = batch_loss(model, &refs, n as f64, true).unwrap();
    let grads = loss.backward().unwrap();
    let eps = 1e-5;
    let mut checked = 0;
    for p in params {
        let g: Vec<f64> = grads
            .get(p.var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let w0: Vec<f64> = p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let dims = p.var.dims().to_vec();
        // Spread the probes over the tensor; for the embedding, pick rows the batch uses.
        let probes: Vec<usize> = if p.name.contains("embed_tokens") {
            let h = dims[1];
            vec![5 * h, 5 * h + 3, (batch[0].ids[3] as usize) * h + 7]
        } else {
            (0..4).map(|k| (k * 7919 + 13) % w0.len()).collect()
        };
        for &i in &probes {
            let mut w = w0.clone();
            w[i] = w0[i] + eps;
            p.var
                .set(&Tensor::from_vec(w.clone(), dims.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
            let lp = loss_of(model, batch);
            w[i] = w0[i] - eps;
            p.var
                .set(&Tensor::from_vec(w, dims.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
            let lm = loss_of(model, batch);
            p.var
                .set(&Tensor::from_vec(w0.clone(), dims.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
            let fd = (lp - lm) / (2.0 * eps);
            let tol = 1e-7 + 1e-5 * fd.abs().max(g[i].abs());
            assert!(
                (fd - g[i]).abs() < tol,
                "{}[{i}]: backprop {} vs finite difference {fd}",
                p.name,
                g[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
}

#[test]
fn gradients_match_finite_differences_full_and_lora() {
    let dir = tmp("grad");
    let mdir = tiny_model_dir(&dir, 3);
    let batch = fixed_batch();

    let mut m = load_as(&mdir, DType::F64).model;
    let (params, _) = prepare(&mut m, &Mode::Full, 0).unwrap();
    let pick: Vec<Param> = params
        .into_iter()
        .filter(|p| {
            [
                "embed_tokens",
                "layers.0.self_attn.q_proj",
                "layers.1.self_attn.v_proj",
                "layers.0.mlp.down_proj",
                "input_layernorm",
                "model.norm",
                "lm_head",
            ]
            .iter()
            .any(|k| p.name.contains(k))
        })
        .collect();
    assert!(pick.len() >= 7, "{}", pick.len());
    check_grads(&m, &pick, &batch);

    let mut m = load_as(&mdir, DType::F64).model;
    let (params, _) = prepare(&mut m, &Mode::Lora(lora_cfg(4, 0.0)), 1).unwrap();
    randomize_b(&mut m);
    assert_eq!(params.len(), 2 * 7 * 2);
    let pick: Vec<Param> = params
        .into_iter()
        .filter(|p| p.name.contains("layers.0.") || p.name.contains("down_proj"))
        .collect();
    check_grads(&m, &pick, &batch);
}

/// LoRA on a quantized base (QLoRA): every adapter's gradient, layer 0's included (which needs
/// the gradient to flow back through the later quantized projections), equals the gradient of
/// the same adapters on a dense model holding the dequantized weights.
#[test]
fn lora_gradients_flow_through_quantized_bases() {
    let dir = tmp("qlora-grad");
    let mdir = tiny_model_dir(&dir, 5);
    let batch = fixed_batch();
    for quant in ["nf4", "q8_0", "int8"] {
        let opts = LoadOptions {
            dtype: Some(DType::F32),
            quant: Some(biomistral::quantize::LoadQuant::parse(quant).unwrap()),
            ..Default::default()
        };
        let mut q = load(mdir.to_str().unwrap(), &opts).unwrap().model;
        let mut d = load_as(&mdir, DType::F32).model;
        let dense: Vec<Tensor> = q
            .projections_mut()
            .into_iter()
            .map(|(_, l)| {
                assert!(
                    !matches!(l.kind, biomistral::model::linear::LinearKind::Dense(_)),
                    "{quant} left a projection dense"
                );
                l.base_dense(DType::F32).unwrap()
            })
            .collect();
        for ((_, l), w) in d.projections_mut().into_iter().zip(dense) {
            l.kind = biomistral::model::linear::LinearKind::Dense(w);
        }
        let (qp, _) = prepare(&mut q, &Mode::Lora(lora_cfg(4, 0.0)), 1).unwrap();
        randomize_b(&mut q);
        let (dp, _) = prepare(&mut d, &Mode::Lora(lora_cfg(4, 0.0)), 1).unwrap();
        for (a, b) in qp.iter().zip(&dp) {
            assert_eq!(a.name, b.name);
            b.var.set(a.var.as_tensor()).unwrap();
        }
        let grads = |m: &Model, ps: &[Param]| -> Vec<Vec<f32>> {
            let refs: Vec<&Example> = batch.iter().collect();
            let (loss, _) = batch_loss(m, &refs, 1.0, true).unwrap();
            let g = loss.backward().unwrap();
            ps.iter()
                .map(|p| {
                    g.get(p.var.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                })
                .collect()
        };
        let (gq, gd) = (grads(&q, &qp), grads(&d, &dp));
        for ((p, a), b) in qp.iter().zip(&gq).zip(&gd) {
            let norm = b.iter().map(|v| v * v).sum::<f32>().sqrt();
            let diff = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
            // int8 and q8_0 also quantize the activations in the forward pass.
            let tol = if quant == "nf4" { 1e-3 } else { 5e-2 };
            assert!(
                norm > 0.0 && diff <= tol * norm,
                "{quant} {}: |diff| {diff} vs |grad| {norm}",
                p.name
            );
        }
    }
}

// ---------- one step against the PyTorch reference ----------

const REF_LR: f64 = 1e-3;
/// Below both runs' gradient norms, so clipping is exercised.
const REF_CLIP: f64 = 0.25;

fn ref_train_config() -> TrainConfig {
    TrainConfig {
        max_steps: 1,
        batch_size: 1,
        grad_accum: 2,
        optim: biomistral::train::optim::AdamWConfig {
            lr: REF_LR,
            weight_decay: 0.01,
            ..Default::default()
        },
        clip: REF_CLIP,
        ..Default::default()
    }
}

/// The reference inputs: a tiny model, an adapter (r=4, alpha=8, no dropout, nonzero B), the
/// batch and hyper-parameters. Written to $BIOMISTRAL_TRAIN_REF_DIR when set, for
/// scripts/train_reference.py.
fn ref_inputs(mode: &str) -> PathBuf {
    let dir = match std::env::var_os("BIOMISTRAL_TRAIN_REF_DIR") {
        Some(d) => PathBuf::from(d).join(mode),
        None => tmp(&format!("ref-{mode}")),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mdir = tiny_model_dir(&dir, 1234);
    let mut m = load_as(&mdir, DType::F64).model;
    lora::attach(&mut m, &lora_cfg(4, 0.0), 99).unwrap();
    for p in lora::params(&mut m) {
        if p.name.contains("lora_B") {
            let n = p.var.elem_count();
            let v: Vec<f64> = (0..n)
                .map(|i| (((i * 7 + p.name.len()) % 23) as f64 - 11.0) * 0.004)
                .collect();
            p.var
                .set(&Tensor::from_vec(v, p.var.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    lora::save(&mut m, &lora_cfg(4, 0.0), &dir.join("adapter"), "tiny").unwrap();
    let batch: Vec<serde_json::Value> = fixed_batch()
        .iter()
        .map(|e| serde_json::json!({"ids": e.ids, "target": e.target}))
        .collect();
    std::fs::write(dir.join("batch.json"), serde_json::to_string(&batch).unwrap()).unwrap();
    let hp = serde_json::json!({"lr": REF_LR, "weight_decay": 0.01, "clip": REF_CLIP, "grad_accum": 2});
    std::fs::write(dir.join("hparams.json"), hp.to_string()).unwrap();
    dir
}

fn compare_with_reference(mode: &str) {
    let refdir = ref_inputs(mode);
    let want = common::read_json(&common::fixtures().join(format!("train/reference_{mode}.json")));
    let mut m = if mode == "lora" {
        let mut m = load_as(&refdir.join("model"), DType::F64);
        lora::apply_adapter(&mut m.model, &refdir.join("adapter")).unwrap();
        m.model
    } else {
        load_as(&refdir.join("model"), DType::F64).model
    };
    let split = Split {
        train: fixed_batch(),
        eval: vec![],
    };
    let out = tmp(&format!("ref-out-{mode}"));
    let tmode = if mode == "lora" {
        Mode::Lora(lora_cfg(4, 0.0))
    } else {
        Mode::Full
    };
    let mut t = Trainer::new(&mut m, &tmode, &ref_train_config(), &out).unwrap();
    let before: Vec<(String, Vec<f64>)> = t
        .params
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect();
    let s = t.run(&split).unwrap();
    assert!(
        (s.last_loss - want["loss"].as_f64().unwrap()).abs() < 1e-9,
        "loss {} vs reference {}",
        s.last_loss,
        want["loss"]
    );
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let gn = want["grad_norm"].as_f64().unwrap();
    assert!(
        (row["grad_norm"].as_f64().unwrap() - gn).abs() < 1e-9 * gn.max(1.0),
        "grad norm {row} vs {gn}"
    );
    assert!(gn > REF_CLIP, "the reference batch should exercise clipping");
    let wp = want["params"].as_object().unwrap();
    assert_eq!(wp.len(), t.params.len());
    for (p, (_, w0)) in t.params.iter().zip(&before) {
        let r = &wp[&p.name];
        let w1: Vec<f64> = p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let d: Vec<f64> = w1.iter().zip(w0).map(|(a, b)| a - b).collect();
        // Adam's first step is lr * g / (|g| + eps): for gradients far below eps it amplifies
        // f64 rounding, so updates are compared to 1e-4 of the step size (lr).
        let close = |a: f64, b: f64, what: &str| {
            assert!((a - b).abs() < 1e-7 + 1e-7 * b.abs(), "{} {what}: {a} vs {b}", p.name)
        };
        close(w1.iter().sum(), r["sum"].as_f64().unwrap(), "sum");
        close(d.iter().sum(), r["delta_sum"].as_f64().unwrap(), "delta_sum");
        close(
            d.iter().map(|x| x.abs()).sum(),
            r["delta_abs_sum"].as_f64().unwrap(),
            "delta_abs_sum",
        );
        for (i, x) in r["delta_head"].as_array().unwrap().iter().enumerate() {
            close(d[i], x.as_f64().unwrap(), &format!("delta[{i}]"));
        }
    }
}

#[test]
fn one_full_finetuning_step_matches_pytorch_reference() {
    compare_with_reference("full");
}

#[test]
fn one_lora_step_matches_pytorch_reference() {
    compare_with_reference("lora");
}

// ---------- resume ----------

fn toy_split() -> Split {
    let ex = |k: u32| Example {
        ids: (0..20u32).map(|i| (i * 13 + k * 31 + 7) % 512).collect(),
        target: (0..20).map(|i| i > 0).collect(),
    };
    Split {
        train: (0..5).map(ex).collect(),
        eval: vec![ex(9)],
    }
}

fn final_params(mdir: &Path, mode: &Mode, out: &Path, stop_then_resume: bool) -> Vec<Vec<f32>> {
    let cfg = TrainConfig {
        max_steps: 6,
        batch_size: 2,
        grad_accum: 2,
        save_every: 2,
        warmup_steps: 2,
        optim: biomistral::train::optim::AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
        seed: 5,
        ..Default::default()
    };
    let split = toy_split();
    let mut m = load_as(mdir, DType::F32).model;
    if stop_then_resume {
        let c = TrainConfig {
            stop_after: Some(3),
            ..cfg.clone()
        };
        Trainer::new(&mut m, mode, &c, out).unwrap().run(&split).unwrap();
        // A fresh process: reload the base model and resume from the step-2 checkpoint.
        m = load_as(mdir, DType::F32).model;
        let c = TrainConfig { resume: true, ..cfg };
        let mut t = Trainer::new(&mut m, mode, &c, out).unwrap();
        let s = t.run(&split).unwrap();
        assert_eq!(s.start_step, 2);
        return t
            .params
            .iter()
            .map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
    }
    let mut t = Trainer::new(&mut m, mode, &cfg, out).unwrap();
    t.run(&split).unwrap();
    t.params
        .iter()
        .map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn resumed_run_ends_with_the_same_weights() {
    let dir = tmp("resume");
    let mdir = tiny_model_dir(&dir, 8);
    for (name, mode) in [("lora", Mode::Lora(lora_cfg(4, 0.1))), ("full", Mode::Full)] {
        let a = final_params(&mdir, &mode, &dir.join(format!("{name}-straight")), false);
        let b = final_params(&mdir, &mode, &dir.join(format!("{name}-resumed")), true);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "{name}: resumed weights differ");
        }
        assert!(dir.join(format!("{name}-straight/loss.svg")).exists());
    }
}

// ---------- adapters ----------

fn logits(m: &Model, ids: &[u32]) -> Vec<f32> {
    use biomistral::model::{ForwardOpts, Logits};
    let t = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.forward(&t, &mut m.new_cache(), Logits::All, &ForwardOpts::default())
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn adapter_save_load_and_merge_give_the_same_logits() {
    let dir = tmp("adapter");
    let mdir = tiny_model_dir(&dir, 11);
    let ids: Vec<u32> = (0..12).map(|i| (i * 29 + 3) % 512).collect();
    let base = logits(&load_as(&mdir, DType::F32).model, &ids);

    let mut m = load_as(&mdir, DType::F32).model;
    lora::attach(&mut m, &lora_cfg(8, 0.05), 4).unwrap();
    randomize_b(&mut m);
    let with = logits(&m, &ids);
    assert!(max_diff(&base, &with) > 1e-3, "the adapter should change the logits");
    let adir = dir.join("adapter");
    lora::save(&mut m, &lora_cfg(8, 0.05), &adir, "tiny").unwrap();
    let cfgj = common::read_json(&adir.join("adapter_config.json"));
    assert_eq!(cfgj["r"], 8);
    assert_eq!(cfgj["peft_type"], "LORA");

    let mut m2 = load_as(&mdir, DType::F32).model;
    lora::apply_adapter(&mut m2, &adir).unwrap();
    assert!(max_diff(&with, &logits(&m2, &ids)) < 1e-5);
    let st = candle_core::safetensors::load(adir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(st.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(st.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));

    let merged = dir.join("merged");
    let out = Command::new(common::bin())
        .args(["merge-lora", "--model"])
        .arg(&mdir)
        .arg("--adapter")
        .arg(&adir)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mm = load_as(&merged, DType::F32).model;
    assert!(max_diff(&with, &logits(&mm, &ids)) < 1e-4);

    // An adapter whose config does not fit its tensors is refused, naming the problem.
    let mut wrong = load_as(&mdir, DType::F32).model;
    let mut bad_cfg = common::read_json(&adir.join("adapter_config.json"));
    bad_cfg["r"] = 4.into();
    let bdir = dir.join("bad-adapter");
    std::fs::create_dir_all(&bdir).unwrap();
    std::fs::copy(
        adir.join("adapter_model.safetensors"),
        bdir.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(bdir.join("adapter_config.json"), bad_cfg.to_string()).unwrap();
    let e = lora::apply_adapter(&mut wrong, &bdir).unwrap_err().to_string();
    assert!(e.contains("r=4"), "{e}");
}

// ---------- bad input ----------

fn run_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::bin()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn bad_inputs_fail_clearly_without_checkpoints() {
    let dir = tmp("bad");
    let mdir = tiny_model_dir(&dir, 2);
    let m = mdir.to_str().unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let bad_jsonl = dir.join("bad.jsonl");
    std::fs::write(&bad_jsonl, "{\"text\": \"ok\"}\n{not json\n").unwrap();
    let no_text = dir.join("notext.jsonl");
    std::fs::write(&no_text, "{\"body\": \"x\"}\n").unwrap();
    let good = dir.join("good.txt");
    std::fs::write(
        &good,
        "Aspirin inhibits cyclooxygenase.\n\nMetformin lowers glucose.\n\n".repeat(20),
    )
    .unwrap();
    let missing = dir.join("missing.txt");
    let bad_xml = dir.join("bad.xml");
    std::fs::write(&bad_xml, "<PubmedArticle><AbstractText>unterminated").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--data", empty.to_str().unwrap()], "no non-empty documents"),
        (vec!["--data", bad_jsonl.to_str().unwrap()], "line 2"),
        (vec!["--data", no_text.to_str().unwrap()], "'text'"),
        (vec!["--data", bad_xml.to_str().unwrap()], "never closed"),
        (
            vec!["--data", good.to_str().unwrap(), "--seq-len", "4096"],
            "longer than the model's context",
        ),
        (
            vec![
                "--data",
                good.to_str().unwrap(),
                "--lora",
                "--lora-targets",
                "q_proj,qkv_proj",
            ],
            "qkv_proj",
        ),
        (vec!["--data", missing.to_str().unwrap()], "missing.txt"),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let out = dir.join(format!("out{i}"));
        let mut args = vec![
            "pretrain",
            "--model",
            m,
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "2",
            "--save-every",
            "1",
        ];
        args.extend(extra.iter().copied());
        let (ok, err) = run_cli(&args);
        assert!(!ok, "case {i} should fail");
        assert!(err.contains(want), "case {i}: expected '{want}' in: {err}");
        assert!(!out.join("checkpoints").exists(), "case {i} left a checkpoint");
        assert!(!out.join("adapter_model.safetensors").exists());
    }
    let (ok, err) = run_cli(&[
        "merge-lora",
        "--model",
        m,
        "--adapter",
        dir.join("nope").to_str().unwrap(),
        "--out",
        dir.join("x").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("adapter_config.json"), "{err}");

    // The same command with good data trains and writes a PEFT adapter, logs and a curve.
    let out = dir.join("ok");
    let (ok, err) = run_cli(&[
        "pretrain",
        "--model",
        m,
        "--data",
        good.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora",
        "--max-steps",
        "3",
        "--seq-len",
        "32",
        "--save-every",
        "2",
        "--lr",
        "1e-3",
    ]);
    assert!(ok, "{err}");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "train_log.jsonl",
        "train_log.csv",
        "loss.svg",
        "train_summary.json",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(out.join("train_log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    // A second run into the same folder without --resume is refused.
    let (ok, err) = run_cli(&[
        "pretrain",
        "--model",
        m,
        "--data",
        good.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora",
        "--max-steps",
        "3",
        "--seq-len",
        "32",
    ]);
    assert!(!ok && err.contains("--resume"), "{err}");
}

// ---------- real runs on the fixture ----------

#[test]
fn lora_pretraining_on_pubmed_lowers_heldout_perplexity() {
    let (Some(gguf), Some(data)) = (common::fixture_gguf(), common::data_dir()) else {
        return;
    };
    let medline = data.join("pubmed_calib/medline_sample");
    let mut m = load(gguf.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let docs = biomistral::train::data::load_documents(&medline).unwrap();
    assert!(docs.len() > 500, "{}", docs.len());
    let eos = m.eos_ids[0];
    let mut split = biomistral::train::data::pretraining_split(&docs, &m.tokenizer, eos, 64, 0.02, 1).unwrap();
    split.eval.truncate(8);
    let cfg = TrainConfig {
        max_steps: 12,
        batch_size: 2,
        optim: biomistral::train::optim::AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
        warmup_steps: 2,
        ..Default::default()
    };
    let out = tmp("cpt");
    let mut t = Trainer::new(&mut m.model, &Mode::Lora(LoraConfig::default()), &cfg, &out).unwrap();
    let s = t.run(&split).unwrap();
    let (b, a) = (s.eval_loss_before.unwrap(), s.eval_loss_after.unwrap());
    eprintln!(
        "held-out PubMed ppl {:.3} -> {:.3}, {:.0} tokens/s",
        b.exp(),
        a.exp(),
        s.tokens_per_s
    );
    assert!(a < b, "held-out loss {b} -> {a}");
}

/// PubMedQA's answers are skewed (about 55% yes, 34% no, 11% maybe) while the base model
/// spreads its mass over the letters, so a short SFT run measurably raises the held-out gold
/// likelihood. Contexts are cut to 400 characters to keep the CPU run short.
#[test]
fn sft_on_pubmedqa_raises_heldout_gold_answer_likelihood() {
    let (Some(gguf), Some(data)) = (common::fixture_gguf(), common::data_dir()) else {
        return;
    };
    use biomistral::train::sft;
    let mut m = load(gguf.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let mut items = sft::load_task("pubmedqa", &data).unwrap();
    assert_eq!(items.len(), 1000);
    for it in &mut items {
        if let Some(c) = &mut it.context {
            let cut = c.char_indices().nth(400).map_or(c.len(), |(i, _)| i);
            c.truncate(cut);
        }
    }
    let (train_items, eval_items) = (&items[..16], &items[500..524]);
    let eos = m.eos_ids[0];
    let ex = |v: &[sft::McqItem]| -> Vec<Example> {
        v.iter()
            .map(|it| sft::mcq_example(it, &m.tokenizer, eos).unwrap())
            .collect()
    };
    let split = Split {
        train: ex(train_items),
        eval: vec![],
    };
    let before = sft::evaluate_mcq(&m.model, &m.tokenizer, eval_items).unwrap();
    let cfg = TrainConfig {
        max_steps: 8,
        batch_size: 2,
        optim: biomistral::train::optim::AdamWConfig {
            lr: 5e-4,
            ..Default::default()
        },
        ..Default::default()
    };
    let out = tmp("sft");
    let s = Trainer::new(&mut m.model, &Mode::Lora(LoraConfig::default()), &cfg, &out)
        .unwrap()
        .run(&split)
        .unwrap();
    let after = sft::evaluate_mcq(&m.model, &m.tokenizer, eval_items).unwrap();
    eprintln!(
        "pubmedqa held-out ({} items): accuracy {:.3} -> {:.3}, mean log p(gold) {:.3} -> {:.3}, {:.0} tokens/s",
        after.n, before.accuracy, after.accuracy, before.mean_gold_logprob, after.mean_gold_logprob, s.tokens_per_s
    );
    assert!(after.mean_gold_logprob > before.mean_gold_logprob);
}

#[test]
fn pubmed_corpora_parse_into_documents() {
    let Some(data) = common::data_dir() else { return };
    let calib = data.join("pubmed_calib");
    let medline = biomistral::train::data::load_documents(&calib.join("medline_sample")).unwrap();
    // PROVENANCE.md: 604 citations, 526 with abstracts.
    assert_eq!(medline.len(), 526);
    let pmc = biomistral::train::data::load_documents(&calib.join("pmc_oa_nxml")).unwrap();
    assert_eq!(pmc.len(), 6);
    assert!(
        pmc.iter()
            .all(|d| d.len() > 10_000 && !d.contains("<p>") && !d.contains("&amp;")),
        "{}",
        &pmc[0][..300]
    );
    let ncbi = biomistral::train::data::load_documents(&calib.join("ncbi_disease")).unwrap();
    // 793 PubTator title + abstract documents across train/dev/test.
    assert_eq!(ncbi.len(), 793);
    assert!(ncbi.iter().all(|d| !d.contains("|t|") && d.contains('\n')));
}

#[test]
fn sft_cli_trains_on_chat_jsonl_and_on_a_task() {
    let dir = tmp("sft-cli");
    let mdir = tiny_model_dir(&dir, 6);
    let m = mdir.to_str().unwrap();
    let chat = dir.join("chat.jsonl");
    let line = r#"{"messages": [{"role": "user", "content": "What lowers glucose?"}, {"role": "assistant", "content": "Metformin."}, {"role": "user", "content": "And pain?"}, {"role": "assistant", "content": "Aspirin."}]}"#;
    std::fs::write(&chat, format!("{line}\n").repeat(6)).unwrap();
    let out = dir.join("chat-out");
    let (ok, err) = run_cli(&[
        "sft",
        "--model",
        m,
        "--data",
        chat.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora",
        "--max-steps",
        "2",
        "--lr",
        "1e-3",
    ]);
    assert!(ok, "{err}");
    assert!(out.join("adapter_model.safetensors").exists());

    // A chat example's loss covers only the assistant turns.
    let tok = biomistral::source::tokenizer::Tokenizer::from_file(&mdir.join("tokenizer.json")).unwrap();
    let tmpl = biomistral::generate::chat_template::ChatTemplate::new(None, Some("<s>"), Some("</s>"));
    let ex = biomistral::train::sft::chat_examples(&chat, &tok, &tmpl).unwrap();
    let learned: Vec<u32> = ex[0]
        .ids
        .iter()
        .zip(&ex[0].target)
        .filter(|(_, &t)| t)
        .map(|(&i, _)| i)
        .collect();
    assert_eq!(tok.decode(&learned, false).unwrap(), "Metformin.</s>Aspirin.</s>");

    // --task with a benchmark folder in the shared/data layout; full fine-tuning writes a model.
    let data = dir.join("data/medqa/4_options");
    std::fs::create_dir_all(&data).unwrap();
    let rec = |i: usize| {
        let ans = ["A", "B", "C", "D"][i % 4];
        serde_json::json!({"question": format!("Question {i}?"), "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": ans, "answer": "x"})
            .to_string()
    };
    let lines: Vec<String> = (0..10).map(rec).collect();
    std::fs::write(data.join("phrases_no_exclude_test.jsonl"), lines.join("\n")).unwrap();
    let out = dir.join("task-out");
    let (ok, err) = run_cli(&[
        "sft",
        "--model",
        m,
        "--task",
        "medqa4",
        "--data-dir",
        dir.join("data").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "2",
        "--eval-frac",
        "0.3",
    ]);
    assert!(ok, "{err}");
    assert!(out.join("model.safetensors").exists() && out.join("mcq_eval.json").exists());
    assert!(load_as(&out, DType::F32).model.cfg.num_hidden_layers == 2);
    let (ok, err) = run_cli(&[
        "sft",
        "--model",
        m,
        "--task",
        "medqa9",
        "--out",
        dir.join("x").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("medqa9"), "{err}");
}
