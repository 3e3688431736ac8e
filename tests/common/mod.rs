//! Shared helpers for integration tests on the real fixture model (SmolLM2-135M-Instruct).
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    crate_dir().join("tests/fixtures")
}

/// The Q4_1 GGUF fetched by scripts/fetch-fixture.sh. CI always fetches it; elsewhere tests
/// that need it say so and skip.
pub fn fixture_gguf() -> Option<PathBuf> {
    let p = std::env::var_os("BIOMISTRAL_FIXTURE_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join(".fixtures/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: fixture model not found at {} (run scripts/fetch-fixture.sh)",
            p.display()
        );
        None
    }
}

/// The benchmark data folder ($BIOMISTRAL_DATA, default ../shared/data).
pub fn data_dir() -> Option<PathBuf> {
    let p = std::env::var_os("BIOMISTRAL_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../shared/data"));
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: benchmark data not found at {} (set BIOMISTRAL_DATA)",
            p.display()
        );
        None
    }
}

/// A per-build scratch folder shared by the tests of one run.
pub fn scratch() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("biomistral-tests");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// The Hugging Face bf16 copy of the fixture, made once by our converter (GGUF -> HF).
pub fn hf_bf16_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let gguf = fixture_gguf()?;
        // One converted copy per build, shared by the test binaries (written under a temporary
        // name and renamed, so a concurrent process either sees it complete or converts its own).
        let out = scratch().join("smollm2-bf16");
        if out.join("tokenizer_config.json").exists() {
            return Some(out);
        }
        let tmp = scratch().join(format!("smollm2-bf16-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let opts = biomistral::source::convert::GgufToHfOptions {
            tokenizer: Some(fixtures().join("smollm2-135m-instruct/tokenizer.json")),
            ..Default::default()
        };
        biomistral::source::convert::gguf_to_hf(&gguf, &out, &opts).expect("convert GGUF -> HF");
        // The reference tokenizer_config (with its chat template) travels with the copy.
        std::fs::copy(
            fixtures().join("smollm2-135m-instruct/tokenizer_config.json"),
            out.join("tokenizer_config.json"),
        )
        .unwrap();
        Some(out)
    })
    .clone()
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_biomistral"))
}
