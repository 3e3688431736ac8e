//! Prompt bytes per raw format (MedQA 4/5 options, PubMedQA with context, MedMCQA) from small files in each
//! layout, and the `eval` / `eval-report` commands end to end against a stub OpenAI-compatible server on
//! 127.0.0.1 (with the test model's tokenizer from tests/fixtures). Needs nothing from ../shared.
use biomistral::eval::report::{read_results, read_samples, samples_path};
use biomistral::eval::run::{item_prompt, load_pools};
use biomistral::eval::{EvalConfig, TaskId};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

const HEAD: &str = "The following are multiple choice questions (with answers) about medical knowledge. \n ";

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A data folder with 4 items per task in each raw layout.
fn synthetic_data() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let csv: String = (0..4)
        .map(|i| {
            format!(
                "\"Q{i}, with comma\",a{i},b{i},\"c{i}\nline\",d{i},{}\r\n",
                ["A", "B", "C", "D"][i]
            )
        })
        .collect();
    for t in [
        "anatomy",
        "clinical_knowledge",
        "medical_genetics",
        "professional_medicine",
        "college_biology",
        "college_medicine",
    ] {
        write(d, &format!("mmlu/test/{t}_test.csv"), &csv);
    }
    let medqa = |n: usize| -> String {
        (0..4)
            .map(|i| {
                let opts: serde_json::Map<String, Value> =
                    (0..n).map(|j| (((b'A' + j as u8) as char).to_string(), json!(format!("o{i}{j}")))).collect();
                json!({"question": format!("M{i}?"), "options": opts, "answer_idx": ((b'A' + (i % n) as u8) as char).to_string(), "answer": "x"})
                    .to_string()
                    + "\n"
            })
            .collect()
    };
    write(d, "medqa/4_options/phrases_no_exclude_test.jsonl", &medqa(4));
    write(d, "medqa/5_options/test.jsonl", &medqa(5));
    let mcqa: String = (0..4)
        .map(|i| json!({"question": format!("C{i}"), "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": 4 - i, "id": format!("id{i}")}).to_string() + "\n")
        .collect();
    write(d, "medmcqa/dev.json", &mcqa);
    const DECISIONS: [&str; 4] = ["yes", "no", "maybe", "yes"];
    let pmids = ["10000000", "9000001", "9000000", "20000000"];
    let pq: serde_json::Map<String, Value> = pmids
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (p.to_string(), json!({"QUESTION": format!("P{p}?"), "CONTEXTS": [format!("c{i}a."), format!("c{i}b.")], "final_decision": DECISIONS[i]}))
        })
        .collect();
    write(d, "pubmedqa/test_set.json", &Value::Object(pq).to_string());
    dir
}

fn prompt(data: &Path, task: TaskId, i: usize, k: usize) -> (String, Vec<usize>) {
    let mut cfg = EvalConfig::new(vec![task], data.to_path_buf(), PathBuf::from("unused"));
    cfg.shots = 3;
    let pools = load_pools(task, &cfg).unwrap();
    item_prompt(&pools, &cfg, i, k)
}

#[test]
fn mmlu_csv_prompt_bytes() {
    let d = synthetic_data();
    let (p, shots) = prompt(d.path(), TaskId::MmluAnatomy, 3, 1);
    assert_eq!(shots, vec![3, 0, 1]);
    let ex = |i: usize, ans: &str| {
        format!(
            "**Question:** Q{i}, with comma \n (A) a{i} \n (B) b{i} \n (C) c{i}\nline \n (D) d{i} \n **Answer:**({ans}"
        )
    };
    assert_eq!(
        p,
        format!(
            "{HEAD}{} \n {} \n {} \n {}",
            ex(3, "D"),
            ex(0, "A"),
            ex(1, "B"),
            ex(3, "")
        )
    );
}

#[test]
fn medqa_4_and_5_prompt_bytes() {
    let d = synthetic_data();
    let (p, shots) = prompt(d.path(), TaskId::MedQa5, 0, 0);
    assert_eq!(shots, vec![1, 2, 3]);
    let ex = |i: usize, ans: &str| {
        format!(
            "**Question:** M{i}? \n (A) o{i}0 \n (B) o{i}1 \n (C) o{i}2 \n (D) o{i}3 \n (E) o{i}4 \n **Answer:**({ans}"
        )
    };
    assert_eq!(
        p,
        format!(
            "{HEAD}{} \n {} \n {} \n {}",
            ex(1, "B"),
            ex(2, "C"),
            ex(3, "D"),
            ex(0, "")
        )
    );
    let (p4, _) = prompt(d.path(), TaskId::MedQa4, 0, 0);
    assert!(
        p4.ends_with("**Question:** M0? \n (A) o00 \n (B) o01 \n (C) o02 \n (D) o03 \n **Answer:**("),
        "{p4}"
    );
}

#[test]
fn pubmedqa_prompt_bytes_with_context_numeric_order() {
    let d = synthetic_data();
    let (p, _) = prompt(d.path(), TaskId::PubMedQa, 0, 0);
    // Numeric PMID order: 9000000 (i=2, maybe), 9000001 (i=1, no), 10000000 (i=0, yes), 20000000 (i=3, yes).
    let ex = |pmid: &str, i: usize, ans: &str| {
        format!("c{i}a. c{i}b. \n **Question:** P{pmid}? \n (A) yes \n (B) no \n (C) maybe \n **Answer:**({ans}")
    };
    let want = format!(
        "{HEAD}{} \n {} \n {} \n {}",
        ex("9000001", 1, "B"),
        ex("10000000", 0, "A"),
        ex("20000000", 3, "A"),
        ex("9000000", 2, "")
    );
    assert_eq!(p, want);
}

#[test]
fn medmcqa_prompt_bytes() {
    let d = synthetic_data();
    let (p, _) = prompt(d.path(), TaskId::MedMcQa, 2, 2);
    // Set 2 of item 2 in a pool of 4: (2 + 1 + 6 + j) mod 4 = 1, 2, 3.
    let ex =
        |i: usize, ans: &str| format!("**Question:** C{i} \n (A) w \n (B) x \n (C) y \n (D) z \n **Answer:**({ans}");
    assert_eq!(
        p,
        format!(
            "{HEAD}{} \n {} \n {} \n {}",
            ex(1, "C"),
            ex(2, "B"),
            ex(3, "A"),
            ex(2, "")
        )
    );
}

/// The test model's tokenizer, committed under tests/fixtures.
fn tokenizer_json() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2-135m-instruct/tokenizer.json")
}

/// Answer `/v1/completions` like vLLM would, deterministically from the prompt length: the next token is
/// letter `len % 4` (ids 49..=52 are A..D in the test tokenizer), and echoed tokens get log-prob −(id % 7)/10.
fn serve(listener: std::net::TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut len = 0usize;
        let mut request_line = String::new();
        let _ = reader.read_line(&mut request_line);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            continue;
        }
        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let ids: Vec<u64> = req["prompt"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let resp = if request_line.contains("/chat/completions") {
            chat_reply(&req)
        } else if req["echo"] == json!(true) {
            let mut lps: Vec<Value> = vec![Value::Null];
            lps.extend(ids.iter().skip(1).map(|id| json!(-((id % 7) as f64) / 10.0)));
            lps.push(json!(-0.5));
            json!({"choices": [{"text": "x", "logprobs": {"token_logprobs": lps}}]})
        } else {
            let best = 49 + ids.len() % 4;
            let second = 49 + (ids.len() + 1) % 4;
            let top = json!({format!("token_id:{best}"): -0.3, format!("token_id:{second}"): -1.2, "Ġthe": -2.0});
            json!({"choices": [{"text": "A", "logprobs": {"top_logprobs": [top]}}]})
        };
        let text = resp.to_string();
        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
    }
}

static CHAT_REQUESTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// "Translate" by prefixing every string with `fr:`; the item whose question is `M2?` loses option B.
fn chat_reply(req: &Value) -> Value {
    CHAT_REQUESTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let src: Value = serde_json::from_str(req["messages"][1]["content"].as_str().unwrap_or("{}")).unwrap_or_default();
    fn tr(v: &Value) -> Value {
        match v {
            Value::String(s) => json!(format!("fr:{s}")),
            Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), tr(v))).collect()),
            other => other.clone(),
        }
    }
    let mut out = tr(&src);
    if src["question"] == "M2?" {
        out["options"].as_object_mut().unwrap().remove("B");
    }
    json!({"choices": [{"message": {"role": "assistant", "content": format!("```json\n{out}\n```")}}]})
}

fn biomistral(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_biomistral"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn eval_and_report_commands_against_stub_server() {
    let tok = tokenizer_json();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || serve(listener));
    let data = synthetic_data();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (data_s, out_s, tok_s) = (s(data.path()), s(&out), s(&tok));
    let base = [
        "eval",
        "--model",
        "stub",
        "--endpoint",
        &url,
        "--tokenizer",
        &tok_s,
        "--data-dir",
        &data_s,
        "--no-progress",
    ];
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--tasks", "mmlu_anatomy,pubmedqa", "--out", &out_s, "--batch-size", "3"]);
    let o = biomistral(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = read_results(&out).unwrap();
    assert_eq!(run.tasks.len(), 2);
    for t in ["mmlu_anatomy", "pubmedqa"] {
        let samples = read_samples(&samples_path(&out, t)).unwrap();
        assert_eq!(samples.len(), 12);
        for x in &samples {
            let want = ((b'A' + (x.n_prompt_tokens % 4) as u8) as char).to_string();
            assert_eq!(x.top1_str, want);
            assert_eq!(x.correct, want == x.gold);
            // Top-k renormalisation: e^-0.3 / (e^-0.3 + e^-1.2 + e^-2.0), "Ġthe" mapped through the vocabulary.
            let p = (-0.3f64).exp() / ((-0.3f64).exp() + (-1.2f64).exp() + (-2.0f64).exp());
            assert!((x.top1_prob - p).abs() < 1e-6, "{}", x.top1_prob);
            // The letter token found through the real tokenizer is the one the server ranked first.
            // (PubMedQA has no option D, so a "D" answer has no letter probability.)
            if let Some(q) = x.letter_probs.get(&x.top1_str) {
                assert!((q - p).abs() < 1e-6, "{:?}", x.letter_probs);
            } else {
                assert_eq!((t, x.top1_str.as_str()), ("pubmedqa", "D"));
            }
        }
        let acc = samples.iter().filter(|x| x.correct).count() as f64 / 12.0;
        let mean = run.task(t).unwrap().acc_mean;
        assert!((mean - acc).abs() < 1e-12);
    }

    // Log-likelihood protocol, zero-shot: one shot set, acc and acc_norm.
    let ll = work.path().join("ll");
    let ll_s = s(&ll);
    let mut args: Vec<&str> = base.to_vec();
    args.extend([
        "--tasks",
        "medqa_5",
        "--out",
        &ll_s,
        "--protocol",
        "loglik",
        "--shots",
        "0",
    ]);
    let o = biomistral(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = read_results(&ll).unwrap();
    assert_eq!(r.tasks[0].acc_per_shot_set.len(), 1);
    assert!(r.tasks[0].acc_norm_per_shot_set.is_some());
    for x in read_samples(&samples_path(&ll, "medqa_5")).unwrap() {
        let ll = x.option_loglik.clone().unwrap();
        assert_eq!(ll.len(), 5);
        let best = (0..5).fold(0, |b, i| if ll[i] > ll[b] { i } else { b });
        assert_eq!(x.top1_str, ((b'A' + best as u8) as char).to_string());
        assert!(!x.prompt_sha256.is_empty() && x.shot_items.is_empty());
    }

    // eval-report: combine and ensemble the first run with itself.
    let rep = work.path().join("rep");
    let o = biomistral(&["eval-report", "--ensemble", "--out", &s(&rep), &out_s, &out_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(
        md.contains("| ensemble(stub+stub) |") && md.contains("| Anatomy | PubMedQA | Avg. |"),
        "{md}"
    );
    assert!(std::fs::read_to_string(rep.join("reliability.svg"))
        .unwrap()
        .starts_with("<svg"));
    assert!(rep.join("ensemble/samples_pubmedqa.jsonl").is_file());

    // A local model that does not exist is named in the error.
    let o = biomistral(&[
        "eval",
        "--model",
        "./no/such/model",
        "--out",
        &s(&work.path().join("x")),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no/such/model"));
}

#[test]
fn translated_set_uses_english_shots_and_translated_item() {
    let d = synthetic_data();
    let rows: Vec<Value> = (0..4)
        .map(|i| {
            json!({"identifier": format!("q{i}"), "question": format!("E{i}?"), "options": {"A": "yes", "B": "no"},
                   "question_translated": format!("F{i} ?"), "options_translated": {"A": "oui", "B": "non"},
                   "correct_answer_letter": if i % 2 == 0 { "A" } else { "B" }})
        })
        .collect();
    write(d.path(), "fr/medqa_4.json", &Value::Array(rows).to_string());
    let mut cfg = EvalConfig::new(vec![TaskId::MedQa4], d.path().to_path_buf(), PathBuf::from("unused"));
    cfg.lang = "fr".into();
    cfg.shots = 1;
    let pools = load_pools(TaskId::MedQa4, &cfg).unwrap();
    let (p, _) = item_prompt(&pools, &cfg, 0, 0);
    assert_eq!(
        p,
        format!("{HEAD}**Question:** E1? \n (A) yes \n (B) no \n **Answer:**(B \n **Question:** F0 ? \n (A) oui \n (B) non \n **Answer:**(")
    );
}

#[test]
fn shots_from_training_file_are_seeded_draws() {
    let d = synthetic_data();
    let train: String = (0..10)
        .map(|i| json!({"question": format!("T{i}"), "options": ["x", "y"], "answer": "A"}).to_string() + "\n")
        .collect();
    write(d.path(), "train.jsonl", &train);
    let mut cfg = EvalConfig::new(vec![TaskId::MedQa4], d.path().to_path_buf(), PathBuf::from("unused"));
    cfg.shots_from = Some(d.path().join("train.jsonl"));
    cfg.seed = 3;
    let pools = load_pools(TaskId::MedQa4, &cfg).unwrap();
    let (p, idx) = item_prompt(&pools, &cfg, 0, 0);
    assert_eq!(idx.len(), 3);
    assert!(
        idx.iter()
            .all(|&j| j < 10 && p.contains(&format!("**Question:** T{j} \n"))),
        "{p}"
    );
    assert_eq!(item_prompt(&pools, &cfg, 0, 0).1, idx);
    cfg.seed = 4;
    let other: Vec<Vec<usize>> = (0..4).map(|i| item_prompt(&pools, &cfg, i, 0).1).collect();
    cfg.seed = 3;
    let same: Vec<Vec<usize>> = (0..4).map(|i| item_prompt(&pools, &cfg, i, 0).1).collect();
    assert_ne!(other, same);
}

#[test]
fn translate_benchmark_then_eval_in_french() {
    let tok = tokenizer_json();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || serve(listener));
    let data = synthetic_data();
    let d = data.path().to_str().unwrap().to_string();
    let tr = [
        "translate-benchmark",
        "--to",
        "fr",
        "--endpoint",
        &url,
        "--model",
        "stub",
        "--tasks",
        "medqa_4,pubmedqa",
        "--data-dir",
        &d,
    ];
    let o = biomistral(&tr);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(CHAT_REQUESTS.load(std::sync::atomic::Ordering::SeqCst), 8);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("medqa_4") && stdout.contains("1 flagged broken"),
        "{stdout}"
    );
    let rows: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(data.path().join("fr/medqa_4.json")).unwrap()).unwrap();
    assert_eq!(rows[0]["question_translated"], "fr:M0?");
    assert_eq!(rows[0]["options_translated"]["D"], "fr:o03");
    assert!(rows[2]["translation_error"].as_str().unwrap().contains("differ"));
    let pq: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(data.path().join("fr/pubmedqa.json")).unwrap()).unwrap();
    assert_eq!(pq[0]["context_translated"], "fr:c2a. c2b.");

    // Resumed from the cache: no new requests.
    let o = biomistral(&tr);
    assert!(o.status.success());
    assert_eq!(CHAT_REQUESTS.load(std::sync::atomic::Ordering::SeqCst), 8);
    assert!(String::from_utf8_lossy(&o.stdout).contains("4 from cache"));

    // eval --lang fr: the flagged item is a bad row (fatal by default, skipped on request).
    let out = data.path().join("run-fr");
    let out_s = out.to_str().unwrap().to_string();
    let tok_s = tok.to_str().unwrap().to_string();
    let ev = [
        "eval",
        "--model",
        "stub",
        "--endpoint",
        &url,
        "--tokenizer",
        &tok_s,
        "--data-dir",
        &d,
        "--no-progress",
        "--lang",
        "fr",
        "--tasks",
        "medqa_4",
        "--out",
        &out_s,
        "--shots",
        "1",
    ];
    let o = biomistral(&ev);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("medqa_4.json") && err.contains("line 3") && err.contains("translation flagged"),
        "{err}"
    );
    let mut ev = ev.to_vec();
    ev.extend(["--on-bad-row", "skip"]);
    let o = biomistral(&ev);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = read_results(&out).unwrap();
    assert_eq!((r.tasks[0].n, r.tasks[0].bad_rows, r.meta.lang.as_str()), (3, 1, "fr"));
}
