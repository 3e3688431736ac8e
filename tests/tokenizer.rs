//! Tokenizer tests: tokenizer.json loading, tokenizers built from GGUF metadata (byte-level BPE
//! and SentencePiece), streaming decode and malformed metadata.
//!
//! Fixtures live in `tests/fixtures/tokenizer/` (see its README.md). Two larger files are not
//! committed and their tests skip with a message when absent: llama.cpp's Llama-3 vocab GGUF
//! (from `$BIOMISTRAL_SHARED`, default `../shared`) and the SmolLM2 GGUF
//! (`$BIOMISTRAL_FIXTURE_GGUF` or `.fixtures/`, fetched by `scripts/fetch-fixture.sh`).
//! SmolLM2's tokenizer.json and the transformers reference are the engine tests' fixtures.
mod common;

use biomistral::model::config::ModelConfig;
use biomistral::source::gguf::{GgufFile, GgufWriter, Value};
use biomistral::source::gguf_tokenizer::{tokenizer_from_gguf, GgufVocab};
use biomistral::source::gguf_vocab::write_tokenizer_metadata;
use biomistral::source::spm_model::vocab_from_sentencepiece;
use biomistral::source::tokenizer::{StreamDecoder, Tokenizer};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    common::fixtures().join("tokenizer")
}

fn shared_dir() -> PathBuf {
    match std::env::var_os("BIOMISTRAL_SHARED") {
        Some(p) => PathBuf::from(p),
        None => common::crate_dir().join("../shared"),
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn from_gguf(path: &Path) -> Tokenizer {
    let g = GgufFile::open(path).expect("open gguf");
    tokenizer_from_gguf(&g).expect("tokenizer from gguf")
}

/// llama.cpp's `test-tokenizer-0` format: inputs separated by a marker line, one output line
/// of space-separated ids (no BOS) per input.
fn llama_cpp_cases(inp: &Path) -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(inp).expect("read .inp");
    let out = std::fs::read_to_string(inp.with_extension("out")).expect("read .out");
    let marker = "\n__ggml_vocab_test__\n";
    let inputs: Vec<&str> = text.strip_suffix(marker).unwrap_or(&text).split(marker).collect();
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|x| x.parse().expect("id")).collect())
        .collect();
    assert_eq!(inputs.len(), outputs.len(), "{}: input/output count", inp.display());
    inputs.into_iter().map(String::from).zip(outputs).collect()
}

fn check_llama_cpp_vectors(tok: &Tokenizer, inp: &Path) {
    let cases = llama_cpp_cases(inp);
    assert!(cases.len() > 30);
    for (text, want) in &cases {
        let got = tok.encode(text, false).expect("encode");
        assert_eq!(&got, want, "encode {text:?}");
        assert_eq!(&tok.decode(want, false).expect("decode"), text, "decode {want:?}");
    }
}

#[test]
fn llama_cpp_spm_vectors_from_gguf() {
    let path = fixtures().join("llama-cpp/ggml-vocab-llama-spm.gguf");
    let tok = from_gguf(&path);
    check_llama_cpp_vectors(&tok, &path.with_extension("gguf.inp"));
    // add_bos_token is true in this vocab: BOS (id 1) only with special tokens.
    assert_eq!(tok.encode("Hello world", true).unwrap(), vec![1, 15043, 3186]);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.decode(&[1, 15043, 3186, 2], true).unwrap(), "Hello world");
}

#[test]
fn llama_cpp_bpe_vectors_from_gguf() {
    let path = shared_dir().join("fixtures/llama-cpp-vocab/ggml-vocab-llama-bpe.gguf");
    if !path.is_file() {
        println!("SKIP: {} not found (set BIOMISTRAL_SHARED)", path.display());
        return;
    }
    let tok = from_gguf(&path);
    check_llama_cpp_vectors(&tok, &fixtures().join("llama-cpp/ggml-vocab-llama-bpe.gguf.inp"));
    // Llama-3 adds <|begin_of_text|> by default and matches its special tokens whole.
    let ids = tok.encode("<|start_header_id|>user<|end_header_id|>", true).unwrap();
    assert_eq!(ids, vec![128000, 128006, 882, 128007]);
}

fn mistral_cases() -> Vec<(String, Vec<u32>, String)> {
    let v = read_json(&fixtures().join("mistral-v1/vectors.json"));
    let cases = v["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 314);
    cases
        .iter()
        .map(|c| {
            let text = c["text"].as_str().expect("text").to_string();
            let decoded = c["decoded"].as_str().expect("decoded").to_string();
            (text, ids_of(&c["ids"]), decoded)
        })
        .collect()
}

fn check_mistral_vectors(tok: &Tokenizer) {
    for (text, ids, decoded) in mistral_cases() {
        assert_eq!(tok.encode(&text, false).unwrap(), ids, "encode {text:?}");
        let with_bos = [&[1u32][..], &ids].concat();
        assert_eq!(tok.encode(&text, true).unwrap(), with_bos, "encode with BOS {text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), decoded, "decode of {text:?}");
        assert_eq!(
            tok.decode(&with_bos, true).unwrap(),
            decoded,
            "decode skipping BOS of {text:?}"
        );
    }
}

#[test]
fn mistral_tokenizer_json_matches_sentencepiece() {
    let tok = Tokenizer::from_file(&fixtures().join("mistral-v1/tokenizer.json")).unwrap();
    assert_eq!(tok.bos_token.as_deref(), Some("<s>"));
    assert_eq!(tok.eos_token.as_deref(), Some("</s>"));
    check_mistral_vectors(&tok);
}

#[test]
fn mistral_sentencepiece_model_through_spm_path() {
    let bytes = std::fs::read(fixtures().join("mistral-v1/tokenizer.model")).unwrap();
    let vocab = vocab_from_sentencepiece(&bytes).unwrap();
    assert_eq!(vocab.tokens.len(), 32000);
    assert_eq!((vocab.unk_id, vocab.bos_id, vocab.eos_id), (Some(0), Some(1), Some(2)));
    let tok = vocab.build().unwrap();
    check_mistral_vectors(&tok);
}

#[test]
fn spm_tokenizer_json_export_reloads_identically() {
    let bytes = std::fs::read(fixtures().join("mistral-v1/tokenizer.model")).unwrap();
    let tok = vocab_from_sentencepiece(&bytes).unwrap().build().unwrap();
    let reloaded = reload_via_json(&tok);
    for (text, ids, _) in mistral_cases().iter().take(40) {
        assert_eq!(&reloaded.encode(text, false).unwrap(), ids, "{text:?}");
        assert_eq!(reloaded.encode(text, true).unwrap(), tok.encode(text, true).unwrap());
    }
}

fn reload_via_json(tok: &Tokenizer) -> Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tok.to_json().unwrap()).unwrap();
    let inner = Tokenizer::from_file(&path).unwrap();
    Tokenizer::new(inner.inner().clone(), tok.bos_token.clone(), tok.eos_token.clone())
}

const TRICKY: &[&str] = &[
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    " \n \t\t x",
    "Hello world",
    " Hello  world   !",
    "1234567890 3.14159 1,000,000 -42 1e-9",
    "x=12345+678;y=0x1F",
    "naïve café résumé Ærøskøbing Ünïcödé",
    "患者发热 39.5°C，咳嗽三天。",
    "Привет, мир! Γειά σου κόσμε",
    "emoji 🙂🚀👩‍⚕️ and 🇫🇷 flags",
    "tabs\tand\r\nCRLF\rlines",
    "I'm sure they'll say it's John's, we've seen 'em",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|>",
    "<|im_start |> not special <|im_",
    "```python\ndef f(x):\n    return x ** 2\n```",
    "  leading and trailing  ",
];

#[test]
fn smollm2_gguf_matches_hf_tokenizer() {
    let Some(path) = common::fixture_gguf() else { return };
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.get_str("tokenizer.ggml.pre"), Some("smollm"));
    let tok = tokenizer_from_gguf(&g).unwrap();
    let hf = Tokenizer::from_file(&common::fixtures().join("smollm2-135m-instruct/tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), hf.vocab_size());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));

    let hf_ref = common::fixtures().join("hf-reference");
    let mut texts: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
    let logits = std::fs::read(hf_ref.join("logits.safetensors")).unwrap();
    let logits = safetensors::SafeTensors::deserialize(&logits).unwrap();
    for p in read_json(&hf_ref.join("prompts.json"))["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let t = logits.tensor(&format!("ids.{}", p["index"])).unwrap();
        let want: Vec<u32> = t
            .data()
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        assert_eq!(want.len() as u64, p["n_tokens"].as_u64().unwrap());
        // The reference ran `tokenizer(text)`, which adds nothing for SmolLM2.
        assert_eq!(tok.encode(text, true).unwrap(), want, "prompt {text:?}");
        texts.push(text.into());
    }
    for d in read_json(&hf_ref.join("ppl.json"))["docs"].as_array().unwrap() {
        let text = d["text"].as_str().unwrap();
        let want = ids_of(&d["ids"]); // truncated to 512 by the reference
        let got = tok.encode(text, false).unwrap();
        assert_eq!(
            &got[..want.len().min(got.len())],
            &want[..],
            "ppl doc {:?}",
            &text[..40]
        );
        texts.push(text.into());
    }
    for gen in read_json(&hf_ref.join("generations.json"))["generations"]
        .as_array()
        .unwrap()
    {
        let prompt = gen
            .get("rendered")
            .or(gen.get("text_in"))
            .and_then(|t| t.as_str())
            .unwrap();
        assert_eq!(
            tok.encode(prompt, false).unwrap(),
            ids_of(&gen["prompt_ids"]),
            "{prompt:?}"
        );
        let new_ids = ids_of(&gen["new_ids"]);
        assert_eq!(tok.decode(&new_ids, false).unwrap(), gen["text"].as_str().unwrap());
        assert_eq!(
            tok.decode(&new_ids, true).unwrap(),
            gen["text_skip_special"].as_str().unwrap()
        );
        texts.push(prompt.into());
    }
    for text in &texts {
        for special in [false, true] {
            let ids = tok.encode(text, special).unwrap();
            assert_eq!(
                ids,
                hf.encode(text, special).unwrap(),
                "{text:?} (add_special={special})"
            );
            assert_eq!(&tok.decode(&ids, false).unwrap(), text, "round trip {text:?}");
            assert_eq!(tok.decode(&ids, true).unwrap(), hf.decode(&ids, true).unwrap());
        }
    }
    // Special tokens are matched whole and are skipped on request.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!((ids[0], ids[ids.len() - 1]), (1, 2));
    assert!(tok.is_special(1) && tok.is_special(0) && !tok.is_special(ids[1]));
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");

    let reloaded = reload_via_json(&tok);
    for text in &texts {
        assert_eq!(reloaded.encode(text, false).unwrap(), tok.encode(text, false).unwrap());
    }
}

/// BioMistral-7B's shape; only the vocabulary and special ids matter here.
const MISTRAL_CONFIG: &str = r#"{"architectures": ["MistralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
  "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 32768, "sliding_window": 4096,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}"#;

/// HF folder -> `tokenizer.ggml.*` (what our HF -> GGUF conversion writes) -> tokenizer.
fn through_gguf_metadata(hf_dir: &Path, cfg: &ModelConfig) -> Tokenizer {
    let mut w = GgufWriter {
        metadata: Vec::new(),
        tensors: Vec::new(),
    };
    write_tokenizer_metadata(hf_dir, cfg, &mut w).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    w.write(&path).unwrap();
    from_gguf(&path)
}

#[test]
fn hf_to_gguf_metadata_round_trip_keeps_tokenization() {
    let cfg = ModelConfig::from_json_str(MISTRAL_CONFIG).unwrap();
    let tok = through_gguf_metadata(&fixtures().join("mistral-v1"), &cfg);
    check_mistral_vectors(&tok);

    let smol = common::fixtures().join("smollm2-135m-instruct");
    let cfg = ModelConfig::from_json_file(&smol.join("config.json")).unwrap();
    let tok = through_gguf_metadata(&smol, &cfg);
    let hf = Tokenizer::from_file(&smol.join("tokenizer.json")).unwrap();
    for text in TRICKY {
        for special in [false, true] {
            assert_eq!(
                tok.encode(text, special).unwrap(),
                hf.encode(text, special).unwrap(),
                "{text:?}"
            );
        }
    }
}

#[test]
fn lone_gguf_model_source_gets_its_tokenizer_from_metadata() {
    let Some(path) = common::fixture_gguf() else { return };
    if path.with_file_name("tokenizer.json").exists() {
        println!(
            "SKIP: a tokenizer.json lies beside {}; the GGUF metadata path is not used",
            path.display()
        );
        return;
    }
    let src = biomistral::source::ModelSource::open(path.to_str().unwrap()).unwrap();
    let hf = Tokenizer::from_file(&common::fixtures().join("smollm2-135m-instruct/tokenizer.json")).unwrap();
    let chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        src.tokenizer.encode(chat, false).unwrap(),
        hf.encode(chat, false).unwrap()
    );
    assert!(
        src.eos_ids.contains(&2),
        "<|im_end|> stops generation: {:?}",
        src.eos_ids
    );
}

/// Feed ids one at a time; every piece must be free of replacement characters and the pieces
/// must add up to the one-shot decode.
fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut dec = StreamDecoder::new(false);
    let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(tok, id).unwrap()).collect();
    pieces.push(dec.flush(tok).unwrap());
    let full = tok.decode(ids, false).unwrap();
    assert_eq!(pieces.concat(), full, "streamed {ids:?}");
    for p in &pieces {
        assert!(
            !p.contains('\u{FFFD}'),
            "piece {p:?} of {ids:?} holds a broken character"
        );
    }
    pieces
}

#[test]
fn stream_decoder_waits_for_complete_byte_fallback_characters() {
    let tok = Tokenizer::from_file(&fixtures().join("mistral-v1/tokenizer.json")).unwrap();
    let byte = |b: u8| tok.token_to_id(&format!("<0x{b:02X}>")).expect("byte token");
    let word = |w: &str| tok.token_to_id(w).expect("token");
    // "it’s 🙂": ’ is E2 80 99 and 🙂 is F0 9F 99 82, each split over byte tokens.
    let mut ids = vec![word("▁it")];
    ids.extend("’".bytes().map(byte));
    ids.push(word("s"));
    ids.push(word("▁"));
    ids.extend("🙂".bytes().map(byte));
    let pieces = stream(&tok, &ids);
    assert_eq!(pieces.concat(), "it’s 🙂");
    // Nothing is emitted while a character is incomplete.
    assert_eq!(pieces[1..3], ["", ""]);
    assert_eq!(pieces[3], "’");

    for (_, ids, decoded) in mistral_cases() {
        assert_eq!(stream(&tok, &ids).concat(), decoded);
    }
}

#[test]
fn stream_decoder_on_byte_level_bpe() {
    let tok = Tokenizer::from_file(&common::fixtures().join("smollm2-135m-instruct/tokenizer.json")).unwrap();
    for text in TRICKY {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(stream(&tok, &ids).concat(), *text);
    }
}

// ---- malformed metadata ----

fn base_vocab() -> Vec<(&'static str, Value)> {
    let s = |x: &str| Value::String(x.into());
    vec![
        ("general.architecture", s("llama")),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("gpt2")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(["a", "b", "ab", "<s>"].map(s).to_vec()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(vec![Value::I32(1), Value::I32(1), Value::I32(1), Value::I32(3)]),
        ),
        ("tokenizer.ggml.merges", Value::Array(vec![s("a b")])),
        ("tokenizer.ggml.bos_token_id", Value::U32(3)),
    ]
}

fn build_with(edit: impl FnOnce(&mut Vec<(&'static str, Value)>)) -> biomistral::Result<Tokenizer> {
    let mut meta = base_vocab();
    edit(&mut meta);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.gguf");
    let mut w = GgufWriter {
        metadata: Vec::new(),
        tensors: Vec::new(),
    };
    for (k, v) in meta {
        w.set(k, v);
    }
    w.write(&path).unwrap();
    tokenizer_from_gguf(&GgufFile::open(&path).unwrap())
}

fn expect_err(edit: impl FnOnce(&mut Vec<(&'static str, Value)>), field: &str) {
    match build_with(edit) {
        Ok(_) => panic!("expected an error naming {field}"),
        Err(e) => assert!(e.to_string().contains(field), "error '{e}' does not name {field}"),
    }
}

fn set(meta: &mut Vec<(&'static str, Value)>, key: &'static str, v: Value) {
    meta.retain(|(k, _)| *k != key);
    meta.push((key, v));
}

#[test]
fn tiny_vocab_builds() {
    let tok = build_with(|_| {}).unwrap();
    assert_eq!(tok.encode("abba<s>", false).unwrap(), vec![2, 1, 0, 3]);
    assert_eq!(tok.encode("ab", true).unwrap(), vec![2], "gpt2 adds no BOS by default");
    let tok = build_with(|m| set(m, "tokenizer.ggml.add_bos_token", Value::Bool(true))).unwrap();
    assert_eq!(tok.encode("ab", true).unwrap(), vec![3, 2]);
    // EOS too, with a token text the template's string syntax could not hold.
    let tok = build_with(|m| {
        let s = |x: &str| Value::String(x.into());
        set(
            m,
            "tokenizer.ggml.tokens",
            Value::Array(["a", "b", "ab", "<s>", "<eos:0>"].map(s).to_vec()),
        );
        set(
            m,
            "tokenizer.ggml.token_type",
            Value::Array([1, 1, 1, 3, 3].map(Value::I32).to_vec()),
        );
        set(m, "tokenizer.ggml.eos_token_id", Value::U32(4));
        set(m, "tokenizer.ggml.add_eos_token", Value::Bool(true));
    })
    .unwrap();
    assert_eq!(tok.encode("ab", true).unwrap(), vec![2, 4]);
    assert_eq!(tok.encode("a<eos:0>", false).unwrap(), vec![0, 4]);
    assert_eq!(tok.decode(&[2, 4], true).unwrap(), "ab");
    assert_eq!(tok.eos_token.as_deref(), Some("<eos:0>"));
}

#[test]
fn malformed_metadata_is_a_clear_error() {
    expect_err(
        |m| m.retain(|(k, _)| *k != "tokenizer.ggml.tokens"),
        "tokenizer.ggml.tokens",
    );
    expect_err(
        |m| m.retain(|(k, _)| *k != "tokenizer.ggml.model"),
        "tokenizer.ggml.model",
    );
    expect_err(
        |m| set(m, "tokenizer.ggml.model", Value::String("bert".into())),
        "tokenizer.ggml.model",
    );
    expect_err(
        |m| set(m, "tokenizer.ggml.model", Value::U32(1)),
        "tokenizer.ggml.model",
    );
    expect_err(
        |m| set(m, "tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1)])),
        "tokenizer.ggml.token_type",
    );
    expect_err(
        |m| {
            set(
                m,
                "tokenizer.ggml.tokens",
                Value::Array(vec![Value::U32(1), Value::U32(2)]),
            )
        },
        "tokenizer.ggml.tokens",
    );
    expect_err(
        |m| set(m, "tokenizer.ggml.tokens", Value::Array(vec![])),
        "tokenizer.ggml.tokens",
    );
    expect_err(
        |m| m.retain(|(k, _)| *k != "tokenizer.ggml.merges"),
        "tokenizer.ggml.merges",
    );
    expect_err(
        |m| {
            set(
                m,
                "tokenizer.ggml.merges",
                Value::Array(vec![Value::String("ab".into())]),
            )
        },
        "tokenizer.ggml.merges",
    );
    expect_err(
        |m| {
            set(
                m,
                "tokenizer.ggml.merges",
                Value::Array(vec![Value::String("a zz".into())]),
            )
        },
        "tokenizer.ggml.merges",
    );
    expect_err(
        |m| set(m, "tokenizer.ggml.bos_token_id", Value::U32(99)),
        "tokenizer.ggml.bos_token_id",
    );
    expect_err(
        |m| set(m, "tokenizer.ggml.pre", Value::String("klingon".into())),
        "tokenizer.ggml.pre",
    );
    expect_err(
        |m| set(m, "tokenizer.ggml.model", Value::String("llama".into())),
        "tokenizer.ggml.scores",
    );
    expect_err(
        |m| {
            set(m, "tokenizer.ggml.model", Value::String("llama".into()));
            set(m, "tokenizer.ggml.scores", Value::Array(vec![Value::F32(0.0); 3]));
        },
        "tokenizer.ggml.scores",
    );
}

#[test]
fn malformed_sentencepiece_model_is_an_error() {
    let bytes = std::fs::read(fixtures().join("mistral-v1/tokenizer.model")).unwrap();
    for cut in [1, 7, 1000, bytes.len() / 2] {
        assert!(vocab_from_sentencepiece(&bytes[..cut]).is_err(), "truncated at {cut}");
    }
    assert!(vocab_from_sentencepiece(&[0xff; 16]).is_err());
    let empty = vocab_from_sentencepiece(&[]);
    assert!(empty.is_err() || empty.and_then(|v: GgufVocab| v.build()).is_err());
}
