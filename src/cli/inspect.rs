//! `biomistral inspect M`: architecture, parameters, tensor storage types and shapes, files,
//! tokenizer facts.
use super::common::ModelArgs;
use clap::Args;
use std::collections::BTreeMap;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model: Hugging Face folder, .gguf file or hub id.
    pub model: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// List every tensor (default: a summary per storage type).
    #[arg(long)]
    pub tensors: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let margs = ModelArgs {
        model: args.model.clone(),
        dtype: "auto".into(),
        device: "cpu".into(),
        threads: None,
        adapter: None,
        quant: None,
        quant_head: None,
    };
    let src = margs.open()?;
    let sums = src.weights.summaries();
    let files: Vec<serde_json::Value> = src
        .weights
        .files()
        .iter()
        .map(|p| serde_json::json!({"path": p.display().to_string(), "bytes": std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)}))
        .collect();
    let mut by_type: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    let mut n_params = 0u64;
    for t in &sums {
        let n: u64 = t.shape.iter().map(|&d| d as u64).product();
        n_params += n;
        let e = by_type.entry(t.dtype.clone()).or_default();
        e.0 += 1;
        e.1 += n;
        e.2 += t.bytes;
    }
    let tok = &src.tokenizer;
    let cfg = &src.config;
    let v = serde_json::json!({
        "model": args.model,
        "format": format!("{:?}", src.format),
        "architecture": cfg.architecture.hf_name(),
        "config": cfg,
        "parameters": n_params,
        "tensor_count": sums.len(),
        "by_type": by_type.iter().map(|(k, (c, n, b))| (k.clone(), serde_json::json!({"tensors": c, "parameters": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "files": files,
        "tokenizer": {
            "vocab_size": tok.vocab_size(),
            "bos_token": tok.bos_token, "bos_id": tok.bos_id(),
            "eos_token": tok.eos_token, "eos_id": tok.eos_id(),
            "adds_bos": tok.encode("a", true).ok().zip(tok.bos_id()).is_some_and(|(ids, b)| ids.first() == Some(&b)),
        },
        "eos_ids": src.eos_ids,
        "chat_template": src.chat_template.is_some(),
        "tensors": if args.tensors { serde_json::to_value(&sums)? } else { serde_json::Value::Null },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model         {}", args.model);
    println!("format        {:?}", src.format);
    println!("architecture  {}", cfg.architecture.hf_name());
    println!(
        "shape         {} layers, hidden {}, ffn {}, heads {} / {} kv, head_dim {}, vocab {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.vocab_size
    );
    println!(
        "rope          theta {}, context {}, sliding window {}",
        cfg.rope_theta,
        cfg.max_position_embeddings,
        cfg.sliding_window
            .map(|w| w.to_string())
            .unwrap_or_else(|| "none".into())
    );
    println!(
        "parameters    {} ({:.1}M), tied embeddings: {}",
        n_params,
        n_params as f64 / 1e6,
        cfg.tie_word_embeddings
    );
    println!("tensors       {}", sums.len());
    for (k, (c, n, b)) in &by_type {
        println!(
            "  {k:<6} {c:>5} tensors {n:>14} params {:>10.1} MiB",
            *b as f64 / (1 << 20) as f64
        );
    }
    for f in &files {
        println!(
            "file          {} ({:.1} MiB)",
            f["path"].as_str().unwrap_or(""),
            f["bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64
        );
    }
    println!(
        "tokenizer     vocab {}, bos {:?}, eos {:?}, chat template: {}",
        tok.vocab_size(),
        tok.bos_token,
        tok.eos_token,
        if src.chat_template.is_some() {
            "yes"
        } else {
            "no (Mistral [INST] fallback)"
        }
    );
    if args.tensors {
        for t in &sums {
            println!("  {:<48} {:<6} {:?}", t.name, t.dtype, t.shape);
        }
    }
    Ok(())
}
