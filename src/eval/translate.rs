//! `translate-benchmark`: machine-translate a task's questions, options and contexts through any
//! OpenAI-compatible chat endpoint into the BioInstructQA layout that `eval --lang` reads
//! (`<out>/<task>.json`). Answers are cached per item (`<out>/<task>.cache.jsonl`), so an interrupted run
//! resumes without paying twice; a reply that loses an option, renames a letter or is not JSON is kept as a
//! row flagged with `translation_error`, which `eval` reports as a bad row instead of scoring it.
use super::backend::post_json;
use super::tasks::{self, letter, Item, OnBadRow, TaskId};
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct TranslateConfig {
    /// Target language code (fr, zh, ...).
    pub to: String,
    /// Base URL (`http://host:8000/v1`) or the full `.../chat/completions` URL.
    pub endpoint: String,
    pub model: String,
    pub api_key: Option<String>,
    pub data_dir: PathBuf,
    /// Output folder (usually `<data-dir>/<lang>`).
    pub out: PathBuf,
    pub limit: Option<usize>,
    pub retries: usize,
}

/// Counts for one task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TranslateStats {
    pub items: usize,
    pub from_cache: usize,
    pub broken: Vec<(String, String)>,
}

pub fn language_name(code: &str) -> &str {
    match code {
        "fr" => "French",
        "zh" => "Chinese",
        "ar" => "Arabic",
        "de" => "German",
        "pt" => "Portuguese",
        "ru" => "Russian",
        "es" => "Spanish",
        "en" => "English",
        other => other,
    }
}

fn chat_url(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.ends_with("/chat/completions") {
        e.to_string()
    } else if e.ends_with("/v1") {
        format!("{e}/chat/completions")
    } else {
        format!("{e}/v1/chat/completions")
    }
}

/// The JSON object sent for translation: the fields to translate, options keyed by letter.
pub fn source_object(item: &Item) -> Value {
    let options: Map<String, Value> = item
        .options
        .iter()
        .enumerate()
        .map(|(i, o)| (letter(i).to_string(), json!(o)))
        .collect();
    let mut v = json!({"question": item.question, "options": options});
    if let Some(c) = &item.context {
        v["context"] = json!(c);
    }
    v
}

/// Check a model reply against its source: a JSON object (code fences tolerated) with a non-empty
/// question, exactly the same option letters, and a context iff the source has one.
pub fn parse_reply(reply: &str, item: &Item) -> std::result::Result<Value, String> {
    let t = reply.trim();
    let t = t.strip_prefix("```json").or_else(|| t.strip_prefix("```")).unwrap_or(t);
    let t = t.strip_suffix("```").unwrap_or(t).trim();
    let v: Value = serde_json::from_str(t).map_err(|e| format!("reply is not a JSON object: {e}"))?;
    let q = v.get("question").and_then(Value::as_str).unwrap_or("");
    if q.trim().is_empty() {
        return Err("reply has no question".into());
    }
    let opts = v
        .get("options")
        .and_then(Value::as_object)
        .ok_or("reply has no options object")?;
    let want: Vec<String> = item.letters().iter().map(|l| l.to_string()).collect();
    let mut got: Vec<String> = opts.keys().cloned().collect();
    got.sort();
    if got != want {
        return Err(format!("reply options {got:?} differ from {want:?}"));
    }
    if opts.values().any(|o| o.as_str().is_none_or(|s| s.trim().is_empty())) {
        return Err("reply has an empty or non-string option".into());
    }
    match (&item.context, v.get("context").and_then(Value::as_str)) {
        (Some(_), None) => return Err("reply lost the context".into()),
        (None, Some(_)) => return Err("reply added a context".into()),
        _ => {}
    }
    Ok(v)
}

/// A BioInstructQA row: the English side, the gold letter, and the translation or its error.
fn output_row(task: TaskId, lang: &str, item: &Item, translated: std::result::Result<&Value, &str>) -> Value {
    let src = source_object(item);
    let mut row = json!({
        "identifier": item.id, "corpus_name": task.name(), "lang": lang,
        "question": src["question"], "options": src["options"],
        "correct_answer_letter": item.gold_letter().to_string(),
    });
    if let Some(c) = &item.context {
        row["context"] = json!(c);
    }
    match translated {
        Ok(t) => {
            row["question_translated"] = t["question"].clone();
            row["options_translated"] = t["options"].clone();
            if item.context.is_some() {
                row["context_translated"] = t["context"].clone();
            }
        }
        Err(e) => row["translation_error"] = json!(e),
    }
    row
}

fn cache_key(cfg: &TranslateConfig, src: &Value) -> String {
    crate::eval::run::sha256_hex(&format!("{}\n{}\n{src}", cfg.model, cfg.to))
}

fn read_cache(path: &Path) -> Result<HashMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    // Like the samples files: an incomplete last line is an interrupted write and is ignored.
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            Some((
                v.get("key")?.as_str()?.to_string(),
                v.get("reply")?.as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Translate one task into `<out>/<task>.json`.
pub fn translate_task(cfg: &TranslateConfig, task: TaskId) -> Result<TranslateStats> {
    let mut loaded = tasks::load_task(task, &cfg.data_dir, "en", OnBadRow::Skip)?;
    if let Some(n) = cfg.limit {
        loaded.items.truncate(n);
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let cache_path = cfg.out.join(format!("{}.cache.jsonl", task.name()));
    let mut cache = read_cache(&cache_path)?;
    let mut cache_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cache_path)
        .map_err(|e| Error::io(&cache_path, e))?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(300)).build();
    let url = chat_url(&cfg.endpoint);
    let system = format!(
        "Translate the string values of the user's JSON object from English into {}. Keep every key and option \
         letter unchanged, translate faithfully without answering the question, and reply with the JSON object only.",
        language_name(&cfg.to)
    );
    let mut stats = TranslateStats::default();
    let mut rows = Vec::with_capacity(loaded.items.len());
    for item in &loaded.items {
        let src = source_object(item);
        let key = cache_key(cfg, &src);
        let reply = match cache.get(&key) {
            Some(r) => {
                stats.from_cache += 1;
                r.clone()
            }
            None => {
                let body = json!({
                    "model": cfg.model, "temperature": 0.0,
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": src.to_string()}],
                });
                let v = post_json(&agent, &url, cfg.api_key.as_deref(), &body, cfg.retries)?;
                let reply = v
                    .pointer("/choices/0/message/content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::msg(format!("{url}: response has no choices[0].message.content")))?
                    .to_string();
                let line = json!({"key": key, "id": item.id, "reply": reply}).to_string();
                writeln!(cache_file, "{line}").map_err(|e| Error::io(&cache_path, e))?;
                cache.insert(key, reply.clone());
                reply
            }
        };
        let parsed = parse_reply(&reply, item);
        if let Err(e) = &parsed {
            tracing::warn!("{} item {}: translation flagged: {e}", task.name(), item.id);
            stats.broken.push((item.id.clone(), e.clone()));
        }
        rows.push(output_row(task, &cfg.to, item, parsed.as_ref().map_err(String::as_str)));
        stats.items += 1;
    }
    let path = cfg.out.join(format!("{}.json", task.name()));
    let text = serde_json::to_string_pretty(&rows).map_err(|e| Error::msg(e.to_string()))?;
    crate::fsutil::write_bytes_atomic(&path, text.as_bytes())?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(ctx: Option<&str>) -> Item {
        Item {
            id: "1".into(),
            context: ctx.map(String::from),
            question: "Q?".into(),
            options: vec!["a".into(), "b".into(), "c".into()],
            gold: 2,
        }
    }

    #[test]
    fn replies_are_checked_against_the_source() {
        let ok = r#"```json
{"question": "Q ?", "options": {"A": "a", "B": "b", "C": "c"}}
```"#;
        assert!(parse_reply(ok, &item(None)).is_ok());
        let lost = r#"{"question": "Q ?", "options": {"A": "a", "B": "b"}}"#;
        assert!(parse_reply(lost, &item(None)).unwrap_err().contains("differ"));
        assert!(parse_reply(ok, &item(Some("ctx"))).unwrap_err().contains("context"));
        assert!(parse_reply("Sorry, I cannot", &item(None)).is_err());
    }

    #[test]
    fn broken_rows_carry_their_error() {
        let r = output_row(TaskId::MedQa4, "fr", &item(None), Err("reply lost the context"));
        assert_eq!(r["translation_error"], "reply lost the context");
        assert_eq!(r["correct_answer_letter"], "C");
        assert!(r.get("question_translated").is_none());
        assert_eq!(chat_url("http://h/v1"), "http://h/v1/chat/completions");
    }
}
