//! Engine correctness on the real fixture model against Hugging Face transformers' outputs.
mod common;

use biomistral::model::{ForwardOpts, Logits};
use biomistral::source::{load, LoadOptions};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn convert_gguf_to_hf_reproduces_reference_tensor_hashes() {
    let Some(dir) = common::hf_bf16_dir() else { return };
    let reference = common::read_json(&common::fixtures().join("smollm2-dequant-tensors.json"));
    let want = reference["tensors"].as_object().unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names().len(), want.len(), "tensor count");
    assert_eq!(want.len(), 272);
    let mut bad = vec![];
    for (name, w) in want {
        let t = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
        assert_eq!(format!("{:?}", t.dtype()), w["dtype"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        if hex(&Sha256::digest(t.data())) != w["sha256"].as_str().unwrap() {
            bad.push(name.clone());
        }
    }
    assert!(
        bad.is_empty(),
        "{} tensors differ: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}

fn reference_logits() -> safetensors::SafeTensors<'static> {
    let bytes = std::fs::read(common::fixtures().join("hf-reference/logits.safetensors")).unwrap();
    safetensors::SafeTensors::deserialize(Box::leak(bytes.into_boxed_slice())).unwrap()
}

fn f32s(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i64s(st: &safetensors::SafeTensors, name: &str) -> Vec<i64> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn hf_copy_in_f32_matches_transformers_logits() {
    let Some(dir) = common::hf_bf16_dir() else { return };
    let m = load(
        dir.to_str().unwrap(),
        &LoadOptions {
            dtype: Some(DType::F32),
            ..Default::default()
        },
    )
    .unwrap();
    let refs = reference_logits();
    let prompts = common::read_json(&common::fixtures().join("hf-reference/prompts.json"));
    for p in prompts["prompts"].as_array().unwrap() {
        let i = p["index"].as_u64().unwrap();
        let ids = m.tokenizer.encode(p["text"].as_str().unwrap(), true).unwrap();
        let want_ids: Vec<u32> = i64s(&refs, &format!("ids.{i}")).iter().map(|&x| x as u32).collect();
        assert_eq!(ids, want_ids, "prompt {i} tokenization");
        let t = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mut cache = m.model.new_cache();
        let logits = m
            .model
            .forward(&t, &mut cache, Logits::All, &ForwardOpts::default())
            .unwrap();
        let logits = logits.squeeze(0).unwrap();
        let last: Vec<f32> = logits.get(ids.len() - 1).unwrap().to_vec1().unwrap();
        let want_last = f32s(&refs, &format!("logits_last.{i}"));
        let max_abs = last
            .iter()
            .zip(&want_last)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max_abs < 1e-3, "prompt {i}: last-position max |diff| {max_abs}");
        // top-1 at every position
        let top_idx = i64s(&refs, &format!("logits_all_top_idx.{i}"));
        let argmax: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        for (pos, a) in argmax.iter().enumerate() {
            assert_eq!(*a as i64, top_idx[pos * 10], "prompt {i} position {pos} top-1");
        }
        eprintln!("prompt {i}: {} tokens, max |diff| {max_abs:.2e}", ids.len());
    }
}
