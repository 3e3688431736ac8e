//! Everything in the output folder besides the weights: config.json, generation config,
//! tokenizer files, the merge config and a model card.
use super::plan::Plan;
use crate::error::{Error, Result};
use crate::fsutil::write_bytes_atomic;
use std::path::Path;

/// Tokenizer files copied from the tokenizer source model when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
];

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn json_bytes(v: &serde_json::Value) -> Result<Vec<u8>> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::msg(e.to_string()))?;
    s.push('\n');
    Ok(s.into_bytes())
}

/// The reference model's config.json with the merged dtype and layer count.
pub fn write_config(plan: &Plan, dir: &Path) -> Result<()> {
    let mut cfg = plan.models[plan.reference].config.clone();
    let obj = cfg.as_object_mut().ok_or_else(|| {
        Error::format(
            plan.models[plan.reference].path.join("config.json"),
            "not a JSON object",
        )
    })?;
    let dtype = plan.out_dtype.torch_name();
    obj.insert("torch_dtype".into(), dtype.into());
    // transformers >= 4.56 writes `dtype`; keep both spellings consistent when the input has it.
    if obj.contains_key("dtype") {
        obj.insert("dtype".into(), dtype.into());
    }
    obj.insert("num_hidden_layers".into(), plan.num_layers.into());
    write_bytes_atomic(&dir.join("config.json"), &json_bytes(&cfg)?)
}

pub fn write_generation_config(plan: &Plan, dir: &Path) -> Result<()> {
    let src = plan.models[plan.reference].path.join("generation_config.json");
    if src.is_file() {
        let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
        write_bytes_atomic(&dir.join("generation_config.json"), &bytes)?;
    }
    Ok(())
}

/// Copy the tokenizer and apply `chat_template` (a template string, `chatml`, or `auto` = keep).
pub fn write_tokenizer(plan: &Plan, dir: &Path) -> Result<()> {
    let src_dir = &plan.models[plan.tokenizer_model].path;
    for f in TOKENIZER_FILES {
        let src = src_dir.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            write_bytes_atomic(&dir.join(f), &bytes)?;
        }
    }
    let template = match plan.config.chat_template.as_deref() {
        None | Some("auto") => return Ok(()),
        Some("chatml") => CHATML,
        Some(t) => t,
    };
    let path = dir.join("tokenizer_config.json");
    let mut cfg: serde_json::Value = if path.is_file() {
        serde_json::from_str(&crate::fsutil::read_to_string(&path)?).map_err(|e| Error::format(&path, e.to_string()))?
    } else {
        serde_json::json!({})
    };
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| Error::format(&path, "not a JSON object"))?;
    obj.insert("chat_template".into(), template.into());
    write_bytes_atomic(&path, &json_bytes(&cfg)?)
}

pub fn write_model_card(plan: &Plan, yaml: &str, title: &str, dir: &Path) -> Result<()> {
    write_bytes_atomic(&dir.join("mergekit_config.yml"), yaml.as_bytes())?;
    let base = plan.base.map(|b| plan.models[b].spec.clone());
    let mut card = String::from("---\n");
    match &base {
        Some(b) => card.push_str(&format!("base_model:\n- {b}\n")),
        None => card.push_str("base_model: []\n"),
    }
    card.push_str("library_name: transformers\ntags:\n- mergekit\n- merge\n- biomistral-rs\n---\n");
    card.push_str(&format!(
        "# {}\n\nThis model was merged with `biomistral merge` (biomistral-rs {}), following mergekit 0.1.5 semantics.\n\n",
        title,
        crate::version()
    ));
    card.push_str(&format!("## Merge method\n\n`{}`", plan.method.name()));
    if let Some(b) = &base {
        card.push_str(&format!(" with base model `{b}`"));
    }
    card.push_str(".\n\n## Models merged\n\n");
    for (i, m) in plan.models.iter().enumerate() {
        if Some(i) != plan.base {
            card.push_str(&format!("* {}\n", m.spec));
        }
    }
    card.push_str("\n## Configuration\n\n```yaml\n");
    card.push_str(yaml.trim_end());
    card.push_str("\n```\n");
    write_bytes_atomic(&dir.join("README.md"), card.as_bytes())
}
