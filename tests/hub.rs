//! Hub ids resolve through the standard Hugging Face cache layout (the hub itself is
//! unreachable in CI, so the cache is laid out by hand as `huggingface_hub` would).
mod common;

use biomistral::source::random::{preset, write_random_model};
use candle_core::DType;
use std::process::Command;

#[test]
fn hub_id_resolves_from_cache_offline() {
    let home = common::scratch().join(format!("hf-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let repo = home.join("hub/models--BioMistral--BioMistral-Tiny");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(rev);
    write_random_model(&preset("tiny", None).unwrap(), &snap, DType::BF16, 3).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();

    let out = Command::new(common::bin())
        .args(["inspect", "BioMistral/BioMistral-Tiny", "--json"])
        .env("HF_HOME", &home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "MistralForCausalLM");
    assert_eq!(v["config"]["num_hidden_layers"], 2);

    let out = Command::new(common::bin())
        .args([
            "generate",
            "--model",
            "BioMistral/BioMistral-Tiny",
            "--prompt",
            "hi",
            "-n",
            "3",
            "--json",
        ])
        .env("HF_HOME", &home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A model that is not in the cache: a clear offline error, no network.
    let out = Command::new(common::bin())
        .args(["inspect", "BioMistral/Not-There"])
        .env("HF_HOME", &home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("BioMistral/Not-There") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    std::fs::remove_dir_all(&home).ok();
}
