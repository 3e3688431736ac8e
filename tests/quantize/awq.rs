//! AutoAWQ format against reference vectors (tests/fixtures/awq, produced by AutoAWQ 0.2.9;
//! recipe in shared/reference/awq/README.md): unpack, pack, RTN, kernel, checkpoints, bad input.
use biomistral::quantize::awq::{
    self, awq_modules, load_awq_quant, pack_gemm, pack_gemv, unpack_gemm, unpack_gemv, AwqPacked, RawTensor,
};
use biomistral::quantize::{
    load_awq_linear, pseudo_quantize, write_awq_checkpoint, AwqConfig, AwqVersion, GroupQuant, QuantLinear,
};
use half::f16;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/awq")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(fixture(rel)).unwrap()
}

fn i32s(st: &SafeTensors, n: &str) -> Vec<i32> {
    let t = st.tensor(n).unwrap();
    assert_eq!(t.dtype(), Dtype::I32, "{n}");
    t.data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f16s(st: &SafeTensors, n: &str) -> Vec<f16> {
    let t = st.tensor(n).unwrap();
    assert_eq!(t.dtype(), Dtype::F16, "{n}");
    t.data()
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn f32s(st: &SafeTensors, n: &str) -> Vec<f32> {
    let t = st.tensor(n).unwrap();
    assert_eq!(t.dtype(), Dtype::F32, "{n}");
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn shape2(st: &SafeTensors, n: &str) -> [usize; 2] {
    let s = st.tensor(n).unwrap().shape().to_vec();
    [s[0], s[1]]
}

fn packed(st: &SafeTensors, prefix: &str) -> AwqPacked {
    AwqPacked {
        qweight: i32s(st, &format!("{prefix}.qweight")),
        qweight_shape: shape2(st, &format!("{prefix}.qweight")),
        qzeros: i32s(st, &format!("{prefix}.qzeros")),
        qzeros_shape: shape2(st, &format!("{prefix}.qzeros")),
        scales: f16s(st, &format!("{prefix}.scales")),
        scales_shape: shape2(st, &format!("{prefix}.scales")),
    }
}

/// The reference codes / zeros / scales of the 512x256 g128 layer.
fn reference_quant(st: &SafeTensors) -> GroupQuant {
    GroupQuant {
        out_features: 256,
        in_features: 512,
        group_size: 128,
        q: i32s(st, "intweight").iter().map(|&v| v as u8).collect(),
        zeros: i32s(st, "zeros_raw").iter().map(|&v| v as u8).collect(),
        scales: f16s(st, "scales_raw"),
    }
}

fn assert_bits_eq(a: &[f16], b: &[f16], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.to_bits(), y.to_bits(), "{what}[{k}]: {x} vs {y}");
    }
}

#[test]
fn awq_gemm_and_gemv_unpack_reproduce_reference() {
    let bytes = read("linear_512x256_g128.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let want = reference_quant(&st);
    let deq = f16s(&st, "weight_deq");
    for (prefix, gq) in [
        ("gemm", unpack_gemm("gemm", &packed(&st, "gemm"), 128).unwrap()),
        ("gemv", unpack_gemv("gemv", &packed(&st, "gemv"), 128).unwrap()),
    ] {
        assert!(gq.q == want.q, "{prefix}: codes differ from intweight");
        assert_eq!(gq.zeros, want.zeros, "{prefix}: zeros differ from zeros_raw");
        assert_bits_eq(&gq.scales, &want.scales, prefix);
        assert_bits_eq(&gq.dequantize_f16(), &deq, prefix);
    }
}

#[test]
fn awq_packers_are_byte_identical_to_autoawq() {
    let bytes = read("linear_512x256_g128.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let gq = reference_quant(&st);
    assert_eq!(pack_gemm(&gq).unwrap(), packed(&st, "gemm"));
    assert_eq!(pack_gemv(&gq).unwrap(), packed(&st, "gemv"));
}

#[test]
fn rtn_reproduces_autoawq_pseudo_quantize() {
    let bytes = read("linear_512x256_g128.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let gq = pseudo_quantize("weight", &f16s(&st, "weight"), 256, 512, 128).unwrap();
    let want = reference_quant(&st);
    assert_bits_eq(&gq.scales, &want.scales, "scales_raw");
    assert_eq!(gq.zeros, want.zeros, "zeros_raw");
    assert!(gq.q == want.q, "intweight");
    assert_bits_eq(&gq.dequantize_f16(), &f16s(&st, "weight_deq"), "weight_deq");
}

#[test]
fn awq_linear_reproduces_reference_output() {
    let bytes = read("linear_512x256_g128.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let gq = unpack_gemm("gemm", &packed(&st, "gemm"), 128).unwrap();
    let lin = biomistral::quantize::AwqLinear::new(&gq, None).unwrap();
    let deq: Vec<f32> = f16s(&st, "weight_deq").iter().map(|v| v.to_f32()).collect();
    assert_eq!(lin.dequantize(), deq);
    let x: Vec<f32> = f16s(&st, "x").iter().map(|v| v.to_f32()).collect();
    let y = f32s(&st, "y");
    // The unpacked weight times x: within 1e-3 of AutoAWQ's output.
    let exact = lin.forward_reference(&x, 3).unwrap();
    let norm = y.iter().map(|v| v * v).sum::<f32>().sqrt() / (y.len() as f32).sqrt();
    for (a, b) in exact.iter().zip(&y) {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(norm), "{a} vs {b}");
    }
    // The decode kernels also round x to int8 (one scale per 4 values): within half a step of
    // each value times its weights.
    let got = lin.forward_f32(&x, 3).unwrap();
    for r in 0..3 {
        for o in 0..256 {
            let xr = &x[r * 512..(r + 1) * 512];
            let wr = &deq[o * 512..(o + 1) * 512];
            let round = biomistral::kernels::act::rounding_bound(xr, wr, 4) as f32;
            let (a, b) = (got[r * 256 + o], y[r * 256 + o]);
            assert!(
                (a - b).abs() <= round + 1e-3 * b.abs().max(norm),
                "({r},{o}): {a} vs {b}"
            );
        }
    }
    // The candle entry point agrees with the slice one.
    let xt = candle_core::Tensor::from_vec(x, (1, 3, 512), &candle_core::Device::Cpu).unwrap();
    let yt = lin
        .forward(&xt)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(yt, got);
}

fn tiny_config(name: &str) -> AwqConfig {
    let cfg: serde_json::Value = serde_json::from_slice(&read(&format!("{name}/config.json"))).unwrap();
    AwqConfig::from_json(&cfg).unwrap()
}

#[test]
fn tiny_checkpoints_dequantize_to_reference() {
    for name in ["tiny_rtn_gemm", "tiny_awq_gemm"] {
        let cfg = tiny_config(name);
        assert_eq!((cfg.bits, cfg.group_size, cfg.version), (4, 64, AwqVersion::Gemm));
        let model = read(&format!("{name}/model.safetensors"));
        let st = SafeTensors::deserialize(&model).unwrap();
        let rbytes = read(&format!("{name}.reference.safetensors"));
        let reference = SafeTensors::deserialize(&rbytes).unwrap();
        let modules = awq_modules(&st);
        assert_eq!(modules.len(), 28, "{name}");
        for m in &modules {
            let want = f16s(&reference, &format!("dequant.{m}.weight"));
            let gq = load_awq_quant(&st, m, &cfg).unwrap();
            assert_bits_eq(&gq.dequantize_f16(), &want, m);
            let lin = load_awq_linear(&st, m, &cfg).unwrap();
            let deq: Vec<f32> = want.iter().map(|v| v.to_f32()).collect();
            assert_eq!(lin.dequantize(), deq, "{name} {m}");
        }
    }
}

#[test]
fn checkpoint_writer_round_trips() {
    let model = read("tiny_rtn_gemm/model.safetensors");
    let st = SafeTensors::deserialize(&model).unwrap();
    let cfg = tiny_config("tiny_rtn_gemm");
    let modules: Vec<(String, GroupQuant)> = awq_modules(&st)
        .into_iter()
        .map(|m| {
            let gq = load_awq_quant(&st, &m, &cfg).unwrap();
            (m, gq)
        })
        .collect();
    let others: Vec<(String, RawTensor)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".qweight") && !n.ends_with(".qzeros") && !n.ends_with(".scales"))
        .map(|(n, t)| {
            let raw = RawTensor {
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                data: t.data().to_vec(),
            };
            (n, raw)
        })
        .collect();
    let base: serde_json::Value = serde_json::from_slice(&read("tiny_rtn_gemm/config.json")).unwrap();
    for version in [AwqVersion::Gemm, AwqVersion::Gemv] {
        let dir = tempfile::tempdir().unwrap();
        let wcfg = AwqConfig { version, ..cfg.clone() };
        write_awq_checkpoint(dir.path(), &wcfg, &modules, &others, &base).unwrap();
        let cj: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(AwqConfig::from_json(&cj).unwrap(), wcfg);
        assert_eq!(cj["hidden_size"], 64);
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let back = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(back.len(), st.len());
        for (m, gq) in &modules {
            let got = load_awq_quant(&back, m, &wcfg).unwrap();
            assert_eq!(&got, gq, "{m}");
        }
        // GEMM output is byte-identical to AutoAWQ's own file.
        if version == AwqVersion::Gemm {
            for (n, t) in st.tensors() {
                assert_eq!(back.tensor(&n).unwrap().data(), t.data(), "{n}");
            }
        }
    }
}

// ---- bad input: clear errors that name the tensor or field, never a panic ----

fn one_module_checkpoint(edit: impl Fn(&mut Vec<(String, RawTensor)>)) -> Vec<u8> {
    let model = read("tiny_rtn_gemm/model.safetensors");
    let st = SafeTensors::deserialize(&model).unwrap();
    let p = "model.layers.0.mlp.down_proj";
    let mut ts: Vec<(String, RawTensor)> = ["qweight", "qzeros", "scales"]
        .iter()
        .map(|s| {
            let n = format!("{p}.{s}");
            let t = st.tensor(&n).unwrap();
            let raw = RawTensor {
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                data: t.data().to_vec(),
            };
            (n, raw)
        })
        .collect();
    edit(&mut ts);
    let views: Vec<_> = ts
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn load_err(bytes: &[u8], cfg: &AwqConfig) -> String {
    let st = SafeTensors::deserialize(bytes).unwrap();
    load_awq_linear(&st, "model.layers.0.mlp.down_proj", cfg)
        .unwrap_err()
        .to_string()
}

#[test]
fn config_errors_name_the_field() {
    let bad = |j: serde_json::Value| AwqConfig::from_json(&j).unwrap_err().to_string();
    let e = bad(serde_json::json!({"quantization_config": {"quant_method": "awq", "bits": 8, "group_size": 128}}));
    assert!(e.contains("quantization_config.bits") && e.contains('8'), "{e}");
    let e = bad(serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 12}));
    assert!(e.contains("group_size") && e.contains("12"), "{e}");
    let e = bad(serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 0}));
    assert!(e.contains("group_size"), "{e}");
    let e = bad(serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 128}));
    assert!(e.contains("quant_method"), "{e}");
    let e = bad(serde_json::json!({"bits": 4, "group_size": 128, "version": "exllama"}));
    assert!(e.contains("version"), "{e}");
    let e = bad(serde_json::json!({"group_size": 128}));
    assert!(e.contains("bits") && e.contains("missing"), "{e}");
    let e = bad(serde_json::json!({"bits": 4, "group_size": 128, "zero_point": false}));
    assert!(e.contains("zero_point"), "{e}");
    let c = AwqConfig::from_json(&serde_json::json!({"bits": 4, "group_size": 128,
        "modules_to_not_convert": ["lm_head", "mlp.gate"]}))
    .unwrap();
    assert!(c.skips("model.layers.3.mlp.gate_proj") && !c.skips("model.layers.3.mlp.up_proj"));
    let e = bad(serde_json::json!({"bits": 4, "group_size": 128, "modules_to_not_convert": [1]}));
    assert!(e.contains("modules_to_not_convert"), "{e}");
    // AutoAWQ's own key names are accepted too.
    let c = AwqConfig::from_json(&serde_json::json!({"w_bit": 4, "q_group_size": 64, "version": "GEMV"})).unwrap();
    assert_eq!((c.group_size, c.version), (64, AwqVersion::Gemv));
}

#[test]
fn tensors_disagreeing_with_config_are_errors() {
    let cfg = tiny_config("tiny_rtn_gemm");
    // Group size that does not divide in_features (down_proj has 128 inputs).
    let e = load_err(
        &one_module_checkpoint(|_| {}),
        &AwqConfig {
            group_size: 48,
            ..cfg.clone()
        },
    );
    assert!(e.contains("down_proj.qweight") && e.contains("group_size 48"), "{e}");
    // Group size that divides but disagrees with qzeros / scales rows.
    let e = load_err(
        &one_module_checkpoint(|_| {}),
        &AwqConfig {
            group_size: 128,
            ..cfg.clone()
        },
    );
    assert!(e.contains("down_proj.qzeros") && e.contains("shape"), "{e}");
    // qweight shape mismatch against the scales.
    let e = load_err(
        &one_module_checkpoint(|ts| {
            ts[0].1.shape = vec![64, 16];
        }),
        &cfg,
    );
    assert!(e.contains("down_proj."), "{e}");
    // Missing scales / qzeros.
    for (k, what) in [(2, "scales"), (1, "qzeros")] {
        let e = load_err(
            &one_module_checkpoint(|ts| {
                ts.remove(k);
            }),
            &cfg,
        );
        assert!(e.contains(&format!("down_proj.{what}")) && e.contains("missing"), "{e}");
    }
    // Wrong dtype.
    let e = load_err(
        &one_module_checkpoint(|ts| {
            ts[2].1.dtype = Dtype::BF16;
        }),
        &cfg,
    );
    assert!(e.contains("down_proj.scales") && e.contains("dtype"), "{e}");
    // 1-D qweight.
    let e = load_err(
        &one_module_checkpoint(|ts| {
            ts[0].1.shape = vec![128 * 8];
        }),
        &cfg,
    );
    assert!(e.contains("down_proj.qweight") && e.contains("2-D"), "{e}");
    // GEMV config on GEMM tensors: shapes cannot agree.
    let e = load_err(
        &one_module_checkpoint(|_| {}),
        &AwqConfig {
            version: AwqVersion::Gemv,
            ..cfg.clone()
        },
    );
    assert!(e.contains("down_proj."), "{e}");
    // Writer refuses a module whose group size disagrees with the config.
    let gq = GroupQuant {
        out_features: 8,
        in_features: 16,
        group_size: 8,
        q: vec![0; 128],
        zeros: vec![0; 16],
        scales: vec![f16::ONE; 16],
    };
    assert!(awq::awq_module_tensors("m", &gq, &cfg).is_err());
    // Packers: GEMV only knows group sizes 32, 64 and >= 128; GEMM needs out % 8 == 0.
    let gq48 = GroupQuant {
        out_features: 8,
        in_features: 96,
        group_size: 48,
        q: vec![0; 8 * 96],
        zeros: vec![0; 16],
        scales: vec![f16::ONE; 16],
    };
    let e = pack_gemv(&gq48).unwrap_err().to_string();
    assert!(e.contains("group_size") && e.contains("48"), "{e}");
    pack_gemm(&gq48).unwrap();
    let gq_odd = GroupQuant {
        out_features: 12,
        q: vec![0; 12 * 96],
        zeros: vec![0; 24],
        scales: vec![f16::ONE; 24],
        ..gq48.clone()
    };
    assert!(pack_gemm(&gq_odd).unwrap_err().to_string().contains("out_features"));
    // Codes outside 0..=15 and inconsistent lengths are caught before packing.
    let mut bad_codes = gq48.clone();
    bad_codes.q[5] = 16;
    assert!(pack_gemm(&bad_codes).is_err());
    let mut short = gq48;
    short.scales.pop();
    assert!(pack_gemm(&short).unwrap_err().to_string().contains("inconsistent"));
}
