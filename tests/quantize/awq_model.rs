//! AWQ through the engine's decoder: AutoAWQ checkpoints reproduce transformers' logits, and our
//! own AWQ run on the tiny base model produces a loadable checkpoint with small logit error.
use biomistral::model::{ForwardOpts, Logits, Model, ModelConfig};
use biomistral::quantize::awq_model::{
    awq_quantize_model, dequantize_awq_checkpoint, rtn_quantize_model, TensorMap, LAYER_LINEARS,
};
use biomistral::quantize::awq_search::{fake_quantize, AwqSearchOptions};
use biomistral::quantize::AwqConfig;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/awq")
        .join(rel)
}

fn logits(cfg: &ModelConfig, w: HashMap<String, Tensor>, ids: &Tensor) -> Vec<f32> {
    let m = Model::new(cfg, &TensorMap(w), DType::F32, &Device::Cpu, |_| {}).unwrap();
    let y = m
        .forward(ids, &mut m.new_cache(), Logits::All, &ForwardOpts::default())
        .unwrap();
    y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn rel_l2(got: &[f32], want: &[f32]) -> f32 {
    let num: f32 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f32 = want.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

fn f32_map(bytes: &[u8]) -> HashMap<String, Tensor> {
    candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(DType::F32).unwrap()))
        .collect()
}

#[test]
fn autoawq_checkpoints_reproduce_transformers_logits() {
    for name in ["tiny_rtn_gemm", "tiny_awq_gemm"] {
        let dir = fixture(name);
        let cfg = ModelConfig::from_json_file(&dir.join("config.json")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let qcfg = AwqConfig::from_json(&json).unwrap();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let w = dequantize_awq_checkpoint(&SafeTensors::deserialize(&bytes).unwrap(), &qcfg).unwrap();
        let rbytes = std::fs::read(fixture(&format!("{name}.reference.safetensors"))).unwrap();
        let r = candle_core::safetensors::load_buffer(&rbytes, &Device::Cpu).unwrap();
        let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
        let want = r["logits"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = rel_l2(&logits(&cfg, w, &ids), &want);
        assert!(err < 1e-4, "{name}: relative L2 error {err}");
    }
}

#[test]
fn awq_on_the_tiny_base_model_writes_a_working_checkpoint() {
    let dir = fixture("tiny_base");
    let cfg = ModelConfig::from_json_file(&dir.join("config.json")).unwrap();
    let base = f32_map(&std::fs::read(dir.join("model.safetensors")).unwrap());
    // Calibration: 16 random sequences of 64 tokens (as the AutoAWQ reference run); evaluation
    // on other random tokens.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let calib: Vec<u32> = (0..16 * 64).map(|_| rng.gen_range(0..256)).collect();
    let calib = Tensor::from_vec(calib, (16, 64), &Device::Cpu).unwrap();
    let eval: Vec<u32> = (0..2 * 32).map(|_| rng.gen_range(0..256)).collect();
    let eval = Tensor::from_vec(eval, (2, 32), &Device::Cpu).unwrap();
    let opts = AwqSearchOptions {
        group_size: 64,
        ..Default::default()
    };
    let out = awq_quantize_model(&cfg, &base, &calib, &opts).unwrap();
    assert_eq!(out.modules.len(), 4 * 7);
    for r in &out.report {
        assert!(r.loss <= r.rtn_loss, "{r:?}");
    }
    // Forwards of 3 sequences at a time (6 chunks) choose the same scales and codes.
    let chunked = awq_quantize_model(
        &cfg,
        &base,
        &calib,
        &AwqSearchOptions {
            chunk_rows: 3 * 64,
            ..opts.clone()
        },
    )
    .unwrap();
    let ratios = |o: &biomistral::quantize::awq_model::AwqModelOutput| -> Vec<_> {
        o.report.iter().map(|r| (r.layer, r.group, r.ratio)).collect()
    };
    assert_eq!(ratios(&chunked), ratios(&out));
    for ((n, a), (_, b)) in out.modules.iter().zip(&chunked.modules) {
        assert!(
            a.q == b.q && a.zeros == b.zeros && a.scales == b.scales,
            "{n} differs when chunked"
        );
    }

    // Write an AutoAWQ checkpoint, load it back, compare with the fp model and with plain RTN.
    let qcfg = AwqConfig {
        group_size: 64,
        ..Default::default()
    };
    let base_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    out.write(tmp.path(), &qcfg, &base_json).unwrap();
    let bytes = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
    let loaded = dequantize_awq_checkpoint(&SafeTensors::deserialize(&bytes).unwrap(), &qcfg).unwrap();
    let fp = logits(&cfg, base.clone(), &eval);
    let awq_err = rel_l2(&logits(&cfg, loaded, &eval), &fp);

    let mut rtn = base.clone();
    for i in 0..4 {
        for l in LAYER_LINEARS {
            let n = format!("model.layers.{i}.{l}.weight");
            let q = fake_quantize(&n, &rtn[&n], 64).unwrap();
            rtn.insert(n, q);
        }
    }
    let rtn_err = rel_l2(&logits(&cfg, rtn, &eval), &fp);
    eprintln!("logits relative L2 error vs fp: AWQ {awq_err:.4}, RTN {rtn_err:.4}");
    assert!(awq_err < 0.02, "AWQ error {awq_err}");
    assert!(awq_err < 1.5 * rtn_err, "AWQ {awq_err} vs RTN {rtn_err}");
}

#[test]
fn rtn_model_checkpoint_is_byte_identical_to_autoawq() {
    // tiny_rtn_gemm is AutoAWQ's RTN (from_linear) of the same base weights cast to fp16.
    let dir = fixture("tiny_base");
    let cfg = ModelConfig::from_json_file(&dir.join("config.json")).unwrap();
    let base = f32_map(&std::fs::read(dir.join("model.safetensors")).unwrap());
    let out = rtn_quantize_model(&cfg, &base, 64).unwrap();
    let qcfg = AwqConfig {
        group_size: 64,
        ..Default::default()
    };
    let base_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    out.write(tmp.path(), &qcfg, &base_json).unwrap();
    let ours = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
    let ours = SafeTensors::deserialize(&ours).unwrap();
    let theirs = std::fs::read(fixture("tiny_rtn_gemm/model.safetensors")).unwrap();
    let theirs = SafeTensors::deserialize(&theirs).unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (name, t) in theirs.tensors() {
        let o = ours.tensor(&name).unwrap();
        assert_eq!((o.dtype(), o.shape()), (t.dtype(), t.shape()), "{name}");
        assert!(o.data() == t.data(), "{name} differs from AutoAWQ's bytes");
    }
    let cj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(AwqConfig::from_json(&cj).unwrap(), qcfg);
}

/// A published-layout AutoAWQ folder loads through the ordinary model loader with its int4
/// weights kept packed, and reproduces transformers' logits.
#[test]
fn autoawq_folder_loads_packed_through_the_engine() {
    use biomistral::model::linear::LinearKind;
    for name in ["tiny_rtn_gemm", "tiny_awq_gemm"] {
        let src = fixture(name);
        let dir = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let tok = biomistral::source::random::byte_level_tokenizer_json(256);
        std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
        let opts = biomistral::source::LoadOptions {
            dtype: Some(DType::F32),
            ..Default::default()
        };
        let m = biomistral::source::load(dir.path().to_str().unwrap(), &opts).unwrap();
        assert!(
            matches!(m.model.layers[0].self_attn.q_proj.kind, LinearKind::Custom(_)),
            "{name}: not packed"
        );
        let rbytes = std::fs::read(fixture(&format!("{name}.reference.safetensors"))).unwrap();
        let r = candle_core::safetensors::load_buffer(&rbytes, &Device::Cpu).unwrap();
        let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
        let y = m
            .model
            .forward(&ids, &mut m.model.new_cache(), Logits::All, &ForwardOpts::default())
            .unwrap();
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = r["logits"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = rel_l2(&got, &want);
        assert!(err < 1e-3, "{name}: relative L2 error {err}");
    }
}

#[test]
fn awq_config_disagreeing_with_tensors_is_an_error() {
    let src = fixture("tiny_rtn_gemm");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    cfg["quantization_config"]["group_size"] = 32.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        biomistral::source::random::byte_level_tokenizer_json(256).to_string(),
    )
    .unwrap();
    let e = biomistral::source::load(dir.path().to_str().unwrap(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.layers.0"), "{e}");
}

#[test]
fn attention_only_forward_is_the_layer_without_its_mlp() {
    // AWQ's q/k/v search runs the attention block alone; it must equal the whole layer with a
    // zero down_proj (MLP contribution 0), and differ from the whole layer (the tiny model's
    // random MLP weights are small, so the difference is too).
    let dir = fixture("tiny_base");
    let cfg = ModelConfig::from_json_file(&dir.join("config.json")).unwrap();
    let base = f32_map(&std::fs::read(dir.join("model.safetensors")).unwrap());
    let mut zero_mlp = base.clone();
    for i in 0..cfg.num_hidden_layers {
        let n = format!("model.layers.{i}.mlp.down_proj.weight");
        zero_mlp.insert(n.clone(), base[&n].zeros_like().unwrap());
    }
    let ids = Tensor::from_vec((0..24u32).map(|i| i * 7 % 256).collect(), (2, 12), &Device::Cpu).unwrap();
    let run = |w: &HashMap<String, Tensor>, attention_only: bool| -> Vec<f32> {
        let m = Model::new(&cfg, &TensorMap(w.clone()), DType::F32, &Device::Cpu, |_| {}).unwrap();
        let h = m.embed(&ids).unwrap();
        let opts = ForwardOpts {
            attention_only,
            ..Default::default()
        };
        let y = m
            .forward_layers(h, 0..cfg.num_hidden_layers, &mut m.new_cache(), &opts)
            .unwrap();
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let attn = run(&base, true);
    assert_eq!(attn, run(&zero_mlp, false));
    let err = rel_l2(&attn, &run(&base, false));
    eprintln!("attention only vs whole layer: relative L2 {err:.2e}");
    assert!(err > 1e-6, "the MLP must change the output (relative L2 {err})");
}
