//! The commands a user meets first, run as the binary on the real fixture model.
mod common;

use std::process::Command;

fn run(args: &[&str]) -> (String, String) {
    let out = Command::new(common::bin()).args(args).output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{args:?} failed: {e}");
    (o, e)
}

/// The first `n` documents of the transformers perplexity reference, as `{"text": ...}` JSONL.
fn write_reference_docs(path: &std::path::Path, n: usize) {
    let ppl = common::read_json(&common::fixtures().join("hf-reference/ppl.json"));
    let lines: Vec<String> = ppl["docs"].as_array().unwrap()[..n]
        .iter()
        .map(|d| serde_json::json!({"text": d["text"]}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// `biomistral perplexity --json` on `jsonl` in f32.
fn ppl_of(model: &str, jsonl: &std::path::Path) -> f64 {
    let args = [
        "perplexity",
        "--model",
        model,
        "--dtype",
        "f32",
        "--jsonl",
        jsonl.to_str().unwrap(),
        "--json",
    ];
    let (o, _) = run(&args);
    serde_json::from_str::<serde_json::Value>(&o).unwrap()["ppl"]
        .as_f64()
        .unwrap()
}

#[test]
fn score_writes_the_reference_layout_with_matching_values() {
    let Some(dir) = common::hf_bf16_dir() else { return };
    let out = common::scratch().join(format!("score-{}.safetensors", std::process::id()));
    let prompts = common::fixtures().join("hf-reference/prompts.json");
    run(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--dtype",
        "f32",
        "--prompts",
        prompts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let ours = std::fs::read(&out).unwrap();
    let ours = safetensors::SafeTensors::deserialize(&ours).unwrap();
    let refs = std::fs::read(common::fixtures().join("hf-reference/logits.safetensors")).unwrap();
    let refs = safetensors::SafeTensors::deserialize(&refs).unwrap();
    let mut names: Vec<String> = refs.names().into_iter().map(String::from).collect();
    names.sort();
    for n in names {
        let (a, b) = (ours.tensor(&n).unwrap(), refs.tensor(&n).unwrap());
        assert_eq!(a.dtype(), b.dtype(), "{n}");
        assert_eq!(a.shape(), b.shape(), "{n}");
        if n.starts_with("ids.") {
            assert_eq!(a.data(), b.data(), "{n}");
        } else if n.starts_with("logits_last.") || n.starts_with("logits_all_top.") {
            let f = |d: &[u8]| {
                d.chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>()
            };
            let max = f(a.data())
                .iter()
                .zip(f(b.data()))
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(max < 1e-3, "{n}: max |diff| {max}");
        } else {
            // top-k indices: the top-1 column must agree at every position
            let f = |d: &[u8]| {
                d.chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<_>>()
            };
            let (x, y) = (f(a.data()), f(b.data()));
            for (p, (u, v)) in x.chunks(10).zip(y.chunks(10)).enumerate() {
                assert_eq!(u[0], v[0], "{n} position {p}");
            }
        }
    }
    std::fs::remove_file(out).ok();
}

#[test]
fn perplexity_jsonl_json_and_inspect() {
    let Some(dir) = common::hf_bf16_dir() else { return };
    let ppl = common::read_json(&common::fixtures().join("hf-reference/ppl.json"));
    let jsonl = common::scratch().join(format!("docs-{}.jsonl", std::process::id()));
    write_reference_docs(&jsonl, 5);
    let (o, _) = run(&[
        "perplexity",
        "--model",
        dir.to_str().unwrap(),
        "--dtype",
        "f32",
        "--jsonl",
        jsonl.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    for (k, d) in ppl["docs"].as_array().unwrap()[..5].iter().enumerate() {
        let (a, b) = (v["doc_nll_sums"][k].as_f64().unwrap(), d["nll_sum"].as_f64().unwrap());
        assert!((a - b).abs() / b < 1e-3, "doc {k}: {a} vs {b}");
    }
    assert!(v["ppl"].as_f64().unwrap() > 1.0);
    let (o, _) = run(&["inspect", dir.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["tensor_count"], 272);
    assert_eq!(v["by_type"]["BF16"]["tensors"], 272);
    std::fs::remove_file(jsonl).ok();
}

#[test]
fn chat_generation_shows_advisory_but_not_in_json() {
    let Some(gguf) = common::fixture_gguf() else { return };
    let g = gguf.to_str().unwrap();
    let (o, e) = run(&[
        "generate",
        "--model",
        g,
        "--prompt",
        "What is aspirin?",
        "--chat",
        "-n",
        "8",
    ]);
    assert!(e.contains("research tool"), "advisory missing: {e}");
    assert!(!o.is_empty());
    let (o, e) = run(&[
        "generate",
        "--model",
        g,
        "--prompt",
        "What is aspirin?",
        "--chat",
        "-n",
        "8",
        "--json",
    ]);
    assert!(!e.contains("research tool") && !o.contains("research tool"));
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert!(v["prompt_ids"].as_array().unwrap().len() > 10);
    let (_, e) = run(&[
        "generate",
        "--model",
        g,
        "--prompt",
        "What is aspirin?",
        "--chat",
        "-n",
        "4",
        "--no-advisory",
    ]);
    assert!(!e.contains("research tool"));
}

#[test]
fn chat_session_over_stdin_with_reset_and_exit() {
    use std::io::Write;
    let Some(gguf) = common::fixture_gguf() else { return };
    let mut child = Command::new(common::bin())
        .args(["chat", "--model", gguf.to_str().unwrap(), "-n", "6"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is insulin?\n/reset\nAnd glucagon?\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{e}");
    assert!(e.contains("research tool") && e.contains("conversation cleared"), "{e}");
    assert_eq!(o.matches("> ").count(), 4, "{o}");
}

/// AWQ's activation-aware search beats plain round-to-nearest at the same group size on the real
/// fixture (group 64: SmolLM2's 576-wide rows are not a multiple of 128), measured as held-out
/// PubMed perplexity. Small calibration keeps CI time down; BENCHMARKS.md has the full figures.
#[test]
fn awq_beats_rtn_on_fixture_perplexity() {
    let Some(dir) = common::hf_bf16_dir() else { return };
    let Some(data) = common::data_dir() else { return };
    let work = common::scratch().join(format!("awq-fixture-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let calib = data.join("pubmed_calib/ncbi_disease/NCBItrainset_corpus.txt");
    let d = dir.to_str().unwrap();
    let (rtn, awq) = (work.join("rtn"), work.join("awq"));
    run(&[
        "quantize",
        "--model",
        d,
        "--method",
        "rtn",
        "--out",
        rtn.to_str().unwrap(),
        "--group-size",
        "64",
    ]);
    run(&[
        "quantize",
        "--model",
        d,
        "--method",
        "awq",
        "--out",
        awq.to_str().unwrap(),
        "--group-size",
        "64",
        "--samples",
        "8",
        "--seq-len",
        "128",
        "--clip-tokens",
        "64",
        "--calib",
        calib.to_str().unwrap(),
    ]);
    let jsonl = work.join("docs.jsonl");
    write_reference_docs(&jsonl, 8);
    let p = |m: &str| ppl_of(m, &jsonl);
    let (base, r, a) = (p(d), p(rtn.to_str().unwrap()), p(awq.to_str().unwrap()));
    eprintln!("perplexity: bf16 {base:.3}, RTN-4bit-g64 {r:.3}, AWQ-4bit-g64 {a:.3}");
    assert!(a < r, "AWQ {a} is not below RTN {r}");
    assert!(a > base * 0.98, "AWQ {a} implausibly below the unquantized {base}");
    std::fs::remove_dir_all(&work).ok();
}

/// `--quant` at load and the quantization table: each format's weights shrink as its bits say,
/// and its perplexity stays near the unquantized model's in the order the formats' precision
/// predicts (8-bit formats within 1%, 4-bit ones further but bounded).
#[test]
fn quant_table_covers_load_time_formats_with_sizes_and_perplexity() {
    let Some(dir) = common::hf_bf16_dir() else { return };
    let work = common::scratch().join(format!("quant-table-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let jsonl = work.join("docs.jsonl");
    write_reference_docs(&jsonl, 4);
    let prefix = work.join("table");
    let (o, _) = run(&[
        "bench",
        "--quant-table",
        "--model",
        dir.to_str().unwrap(),
        "--dtype",
        "f32",
        "--formats",
        "base,int8,nf4,fp4,q8_0,q4_k",
        "--pp",
        "16",
        "--tg",
        "4",
        "--reps",
        "1",
        "--ppl-file",
        jsonl.to_str().unwrap(),
        "--ppl-docs",
        "4",
        "--json",
        "--table-out",
        prefix.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let get = |label: &str, k: &str| {
        rows.iter().find(|r| r["label"] == label).unwrap()[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{label}.{k} missing"))
    };
    // The same documents through the perplexity command give the base row's figure.
    let base_ppl = ppl_of(dir.to_str().unwrap(), &jsonl);
    assert!((get("base", "ppl") - base_ppl).abs() < 1e-6 * base_ppl);
    for (q, tol) in [
        ("int8", 0.01),
        ("q8_0", 0.01),
        ("q4_k", 0.15),
        ("nf4", 0.4),
        ("fp4", 0.6),
    ] {
        let p = get(q, "ppl");
        eprintln!(
            "{q}: perplexity {p:.3} (base {base_ppl:.3}), weights {} bytes",
            get(q, "weight_bytes")
        );
        assert!(
            p > base_ppl * 0.99 && p < base_ppl * (1.0 + tol),
            "{q}: {p} vs {base_ppl}"
        );
    }
    // Weights held: the bf16 base keeps its projections at 2 bytes (the tied embedding is f32
    // in every row); int8 halves the projections; 4-bit formats less again.
    let w = |q| get(q, "weight_bytes");
    assert!(w("int8") < w("base") * 0.75 && w("nf4") < w("int8") && w("q4_k") < w("q8_0"));
    let md = std::fs::read_to_string(prefix.with_extension("md")).unwrap();
    assert!(md.lines().count() == 2 + 6 && md.contains("| nf4 |"), "{md}");
    assert!(prefix.with_extension("json").is_file());
    std::fs::remove_dir_all(&work).ok();
}

#[test]
fn quant_at_load_refuses_an_already_quantized_checkpoint_by_tensor_name() {
    let Some(gguf) = common::fixture_gguf() else { return };
    let out = Command::new(common::bin())
        .args([
            "perplexity",
            "--model",
            gguf.to_str().unwrap(),
            "--quant",
            "int8",
            "--file",
        ])
        .arg(common::fixtures().join("hf-reference/prompts.json"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.weight")
            && e.contains("already quantized")
            && !e.contains("panicked"),
        "{e}"
    );
}
