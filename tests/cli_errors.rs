//! Bad input reaches the user as a clear error naming what is wrong, a non-zero exit and no panic.
mod common;

use biomistral::source::random::{preset, write_random_model};
use candle_core::DType;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tiny_model(tag: &str) -> PathBuf {
    let dir = common::scratch().join(format!("tiny-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_random_model(&preset("tiny", None).unwrap(), &dir, DType::F32, 1).unwrap();
    dir
}

/// Run the binary; assert failure, no panic, and that stderr mentions every `needles` item.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let out = Command::new(common::bin()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr for {args:?} lacks '{n}': {err}");
    }
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tiny_model_generates() {
    let dir = tiny_model("ok");
    let out = Command::new(common::bin())
        .args(["generate", "--model", s(&dir), "--prompt", "hello", "-n", "5", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["new_ids"].as_array().unwrap().len(), 5);
}

#[test]
fn missing_model() {
    fails_with(
        &["generate", "--model", "/nonexistent/model-dir", "--prompt", "x"],
        &["/nonexistent/model-dir"],
    );
    fails_with(&["inspect", "/nonexistent/file.gguf"], &["/nonexistent/file.gguf"]);
}

#[test]
fn truncated_or_corrupt_safetensors() {
    let dir = tiny_model("trunc");
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["generate", "--model", s(&dir), "--prompt", "x"],
        &["model.safetensors"],
    );
    // Header length larger than the file.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&st, &b).unwrap();
    fails_with(
        &["generate", "--model", s(&dir), "--prompt", "x"],
        &["model.safetensors"],
    );
    // Garbage header.
    let mut b = bytes;
    for x in b[8..40].iter_mut() {
        *x = b'#';
    }
    std::fs::write(&st, &b).unwrap();
    fails_with(&["inspect", s(&dir)], &["model.safetensors"]);
}

#[test]
fn wrong_tensor_shape_or_dtype() {
    use biomistral::source::safetensors_store::SafetensorsStore;
    use biomistral::source::safetensors_writer::write_tensors;
    let dir = tiny_model("shape");
    let store = SafetensorsStore::open_dir(&dir).unwrap();
    let mut all: Vec<(String, candle_core::Tensor)> = store.load_all().unwrap().into_iter().collect();
    drop(store);
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let name = "model.layers.1.mlp.up_proj.weight";
    let orig = all.clone();
    for (n, t) in all.iter_mut() {
        if n == name {
            *t = t.narrow(0, 0, 64).unwrap();
        }
    }
    write_tensors(&dir.join("model.safetensors"), &all).unwrap();
    fails_with(&["generate", "--model", s(&dir), "--prompt", "x"], &[name, "shape"]);
    let mut all = orig;
    for (n, t) in all.iter_mut() {
        if n == name {
            *t = t.to_dtype(DType::I64).unwrap();
        }
    }
    write_tensors(&dir.join("model.safetensors"), &all).unwrap();
    fails_with(&["generate", "--model", s(&dir), "--prompt", "x"], &[name, "I64"]);
}

#[test]
fn unknown_architecture_and_bad_config() {
    let dir = tiny_model("arch");
    let cfg = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    std::fs::write(&cfg, v.to_string()).unwrap();
    fails_with(
        &["generate", "--model", s(&dir), "--prompt", "x"],
        &["GPTNeoXForCausalLM", "architectures"],
    );
    std::fs::write(&cfg, "{not json").unwrap();
    fails_with(&["generate", "--model", s(&dir), "--prompt", "x"], &["config.json"]);
}

#[test]
fn corrupt_gguf() {
    let dir = tiny_model("gguf");
    let gguf = dir.with_extension("gguf");
    let out = Command::new(common::bin())
        .args(["convert", "--model", s(&dir), "--out", s(&gguf), "--type", "f32"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&gguf).unwrap();
    let bad = dir.with_extension("bad.gguf");
    // Truncated: tensor data past the end.
    std::fs::write(&bad, &bytes[..bytes.len() - 1000]).unwrap();
    fails_with(
        &["generate", "--model", s(&bad), "--prompt", "x"],
        &["bad.gguf", "past the end"],
    );
    // Bad metadata count.
    let mut b = bytes.clone();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&bad, &b).unwrap();
    fails_with(&["inspect", s(&bad)], &["bad.gguf"]);
    // Not a GGUF at all.
    std::fs::write(&bad, b"hello world, this is not a model").unwrap();
    fails_with(&["inspect", s(&bad)], &["bad.gguf", "magic"]);
    // Unknown tensor type id: patch the first tensor's type field (just before its offset).
    let g = biomistral::source::gguf::GgufFile::open(&gguf).unwrap();
    let name = g.tensors[0].name.clone();
    drop(g);
    let pos = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap();
    let type_at = pos + name.len() + 4 + 8 * 2; // rank u32 + two u64 dims
    let mut b = bytes.clone();
    b[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&bad, &b).unwrap();
    fails_with(&["inspect", s(&bad)], &["bad.gguf", "GGML type 99"]);
}

#[test]
fn prompt_and_sampling_errors() {
    let dir = tiny_model("prompt");
    fails_with(&["generate", "--model", s(&dir), "--prompt", ""], &["prompt", "empty"]);
    let long = "a ".repeat(2000);
    fails_with(
        &["generate", "--model", s(&dir), "--prompt", &long],
        &["prompt", "context"],
    );
    fails_with(
        &["generate", "--model", s(&dir), "--prompt", "x", "--temperature", "-1"],
        &["--temperature"],
    );
    fails_with(
        &["generate", "--model", s(&dir), "--prompt", "x", "--top-p", "1.5"],
        &["--top-p"],
    );
    fails_with(
        &["generate", "--model", s(&dir), "--prompt", "x", "--top-k", "0"],
        &["--top-k"],
    );
    fails_with(
        &["generate", "--model", s(&dir), "--prompt", "x", "--min-p", "2"],
        &["--min-p"],
    );
    fails_with(
        &[
            "generate",
            "--model",
            s(&dir),
            "--prompt",
            "x",
            "--repetition-penalty",
            "0",
        ],
        &["--repetition-penalty"],
    );
    fails_with(
        &["generate", "--model", s(&dir), "--prompt", "x", "--dtype", "f8"],
        &["--dtype"],
    );
    let msgs = dir.join("msgs.json");
    std::fs::write(&msgs, "[]").unwrap();
    fails_with(
        &["generate", "--model", s(&dir), "--messages", s(&msgs)],
        &["msgs.json", "empty"],
    );
    std::fs::write(&msgs, "{\"role\": 1}").unwrap();
    fails_with(
        &["generate", "--model", s(&dir), "--messages", s(&msgs)],
        &["msgs.json"],
    );
}

#[test]
fn quantize_commands_produce_loadable_models() {
    let dir = tiny_model("quant");
    let calib = dir.with_extension("calib.txt");
    std::fs::write(
        &calib,
        "Aspirin inhibits cyclooxygenase and reduces fever. ".repeat(200),
    )
    .unwrap();
    for method in ["rtn", "awq"] {
        let out = dir.with_extension(method);
        let _ = std::fs::remove_dir_all(&out);
        let o = Command::new(common::bin())
            .args([
                "quantize",
                "--model",
                s(&dir),
                "--method",
                method,
                "--out",
                s(&out),
                "--group-size",
                "64",
            ])
            .args(["--calib", s(&calib), "--samples", "4", "--seq-len", "32"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{method}: {}", String::from_utf8_lossy(&o.stderr));
        let o = Command::new(common::bin())
            .args(["generate", "--model", s(&out), "--prompt", "hi", "-n", "3"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{method}: {}", String::from_utf8_lossy(&o.stderr));
        // An AutoAWQ checkpoint's f16 head, quantized at load on its own: 8.5 bits a weight.
        let bench = |extra: &[&str]| -> serde_json::Value {
            let o = Command::new(common::bin())
                .args([
                    "bench",
                    "--model",
                    s(&out),
                    "--pp",
                    "8",
                    "--tg",
                    "2",
                    "--reps",
                    "1",
                    "--json",
                ])
                .args(extra)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{method} {extra:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            serde_json::from_slice(&o.stdout).unwrap()
        };
        let (plain, q8) = (bench(&[]), bench(&["--quant-head", "q8_0"]));
        let saved = plain["weight_bytes"].as_f64().unwrap() - q8["weight_bytes"].as_f64().unwrap();
        // tiny: a [512, 64] head, at least 2 bytes a weight unquantized.
        assert!(
            saved >= (512.0 * 64.0) * (2.0 - 34.0 / 32.0) * 0.99,
            "{method}: {saved} bytes saved"
        );
        assert_eq!(q8["quant_head"], "q8_0");
    }
    let gguf = dir.with_extension("q8.gguf");
    let o = Command::new(common::bin())
        .args([
            "quantize",
            "--model",
            s(&dir),
            "--method",
            "gguf",
            "--type",
            "q8_0",
            "--out",
            s(&gguf),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(common::bin())
        .args(["inspect", s(&gguf), "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["by_type"]["Q8_0"]["tensors"].as_u64().unwrap() > 0);
    // A head that is already quantized is not quantized twice.
    fails_with(
        &[
            "generate",
            "--model",
            s(&gguf),
            "--quant-head",
            "q4_0",
            "--prompt",
            "hi",
            "-n",
            "1",
        ],
        &["lm_head.weight", "already quantized", "--quant-head"],
    );
    fails_with(
        &[
            "quantize",
            "--model",
            s(&dir),
            "--method",
            "rtn",
            "--out",
            s(&dir.with_extension("x")),
            "--group-size",
            "48",
        ],
        &["--group-size"],
    );
    fails_with(
        &[
            "quantize",
            "--model",
            s(&dir),
            "--method",
            "zip",
            "--out",
            s(&dir.with_extension("y")),
        ],
        &["--method"],
    );
}

#[test]
fn bf16_compute_runs_on_cpu() {
    let dir = tiny_model("bf16");
    let out = Command::new(common::bin())
        .args([
            "generate",
            "--model",
            s(&dir),
            "--prompt",
            "hello",
            "-n",
            "3",
            "--dtype",
            "bf16",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
