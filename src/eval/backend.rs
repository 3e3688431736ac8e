//! The seam between the benchmark harness and whatever computes logits: the local engine (wired by the
//! CLI) or any OpenAI-compatible server ([`RemoteBackend`]).
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::time::Duration;

pub trait Backend: Send {
    /// Model name for reports.
    fn name(&self) -> String;
    /// Tokenize like HF `tokenizer(text)` (default special-token handling).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Decode one token id (`tokenizer.decode([id])`).
    fn decode_token(&self, id: u32) -> Result<String>;
    /// Full-vocabulary logits at the last position of each prompt (f32). Backends may batch
    /// and reuse a shared prefix's KV cache (all prompts of one call often share the instruction + shots).
    fn last_logits(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>>;
    /// Log-probabilities (natural log) of each `continuation` token given `context` + the continuation tokens before it.
    fn continuation_logprobs(&mut self, context: &[u32], continuation: &[u32]) -> Result<Vec<f32>>;
}

/// Settings of a remote OpenAI-compatible `/v1/completions` server (vLLM, llama.cpp server, TGI, ...).
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Base URL (`http://host:8000`, `.../v1`) or the full `.../v1/completions` URL.
    pub endpoint: String,
    /// `model` field sent with each request.
    pub model: String,
    pub api_key: Option<String>,
    /// How many top log-probabilities to ask for (servers cap this, often at 20).
    pub top_logprobs: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Extra attempts after a transport error, HTTP 429 or 5xx (exponential back-off from 0.5 s).
    pub retries: usize,
    pub timeout: Duration,
}

impl RemoteConfig {
    pub fn new(endpoint: &str, model: &str) -> Self {
        RemoteConfig {
            endpoint: endpoint.to_string(),
            model: model.to_string(),
            api_key: std::env::var("OPENAI_API_KEY").ok().filter(|k| !k.is_empty()),
            top_logprobs: 20,
            concurrency: 4,
            retries: 3,
            timeout: Duration::from_secs(300),
        }
    }

    pub fn completions_url(&self) -> String {
        let e = self.endpoint.trim_end_matches('/');
        if e.ends_with("/completions") {
            e.to_string()
        } else if e.ends_with("/v1") {
            format!("{e}/completions")
        } else {
            format!("{e}/v1/completions")
        }
    }
}

/// POST a JSON body and parse the JSON answer, retrying transient failures.
pub fn post_json(agent: &ureq::Agent, url: &str, api_key: Option<&str>, body: &Value, retries: usize) -> Result<Value> {
    let body_text = body.to_string();
    let mut attempt = 0;
    loop {
        let mut req = agent.post(url).set("Content-Type", "application/json");
        if let Some(k) = api_key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let err = match req.send_string(&body_text) {
            Ok(resp) => {
                let text = resp
                    .into_string()
                    .map_err(|e| Error::msg(format!("{url}: reading response: {e}")))?;
                return serde_json::from_str(&text)
                    .map_err(|e| Error::msg(format!("{url}: response is not JSON ({e}): {}", truncate(&text, 200))));
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let msg = format!("{url}: HTTP {code}: {}", truncate(&text, 300));
                if code != 429 && code < 500 {
                    return Err(Error::msg(msg));
                }
                msg
            }
            Err(e) => format!("{url}: {e}"),
        };
        if attempt >= retries {
            return Err(Error::msg(format!("{err} (after {} attempts)", attempt + 1)));
        }
        tracing::warn!("{err}; retrying");
        std::thread::sleep(Duration::from_millis(500 << attempt.min(6)));
        attempt += 1;
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Benchmark backend over an OpenAI-compatible completions server, with a local tokenizer.json.
///
/// Approximation: servers return only the top-k log-probabilities, so [`Backend::last_logits`] gives a
/// vector whose entries are the server's top-k log-probs and `-inf` elsewhere. The harness's softmax then
/// renormalises over those k tokens: the top-1 and `correct` are exact, letter probabilities are exact up
/// to the (usually tiny) mass outside the top-k, and a letter outside the top-k gets probability 0.
/// Prompts are sent as token ids (so the server scores exactly our tokenization); top-log-prob keys are
/// mapped back to ids through `token_id:N` keys (vLLM's `return_tokens_as_token_ids`) or the vocabulary.
pub struct RemoteBackend {
    cfg: RemoteConfig,
    agent: ureq::Agent,
    tokenizer: tokenizers::Tokenizer,
    vocab_size: usize,
}

impl RemoteBackend {
    pub fn new(cfg: RemoteConfig, tokenizer_json: &std::path::Path) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_file(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_json.display())))?;
        let vocab_size = tokenizer.get_vocab_size(true);
        let agent = ureq::AgentBuilder::new().timeout(cfg.timeout).build();
        Ok(RemoteBackend {
            cfg,
            agent,
            tokenizer,
            vocab_size,
        })
    }

    fn post(&self, body: &Value) -> Result<Value> {
        post_json(
            &self.agent,
            &self.cfg.completions_url(),
            self.cfg.api_key.as_deref(),
            body,
            self.cfg.retries,
        )
    }

    fn token_key_to_id(&self, key: &str) -> Option<u32> {
        if let Some(n) = key.strip_prefix("token_id:") {
            return n.parse().ok();
        }
        if let Some(id) = self.tokenizer.token_to_id(key) {
            return Some(id);
        }
        let enc = self.tokenizer.encode(key, false).ok()?;
        match enc.get_ids() {
            [one] => Some(*one),
            _ => None,
        }
    }

    fn one_last_logits(&self, prompt: &[u32]) -> Result<Vec<f32>> {
        let body = json!({
            "model": self.cfg.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
            "logprobs": self.cfg.top_logprobs, "return_tokens_as_token_ids": true,
        });
        let v = self.post(&body)?;
        let top = v
            .pointer("/choices/0/logprobs/top_logprobs/0")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Error::msg(format!(
                    "{}: response has no choices[0].logprobs.top_logprobs[0]",
                    self.cfg.completions_url()
                ))
            })?;
        let mut logits = vec![f32::NEG_INFINITY; self.vocab_size];
        for (key, lp) in top {
            let lp = lp.as_f64().unwrap_or(f64::NEG_INFINITY) as f32;
            match self.token_key_to_id(key) {
                Some(id) if (id as usize) < logits.len() => logits[id as usize] = lp,
                _ => tracing::debug!("top-logprob token {key:?} not in the local vocabulary; ignored"),
            }
        }
        if logits.iter().all(|l| !l.is_finite()) {
            return Err(Error::msg("remote top_logprobs mapped to no known token id"));
        }
        Ok(logits)
    }
}

impl Backend for RemoteBackend {
    fn name(&self) -> String {
        self.cfg.model.clone()
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode_token(&self, id: u32) -> Result<String> {
        self.tokenizer
            .decode(&[id], false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    fn last_logits(&mut self, prompts: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let per = prompts.len().div_ceil(self.cfg.concurrency.max(1)).max(1);
        let this = &*self;
        std::thread::scope(|s| {
            let handles: Vec<_> = prompts
                .chunks(per)
                .map(|chunk| {
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|p| this.one_last_logits(p))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(prompts.len());
            for h in handles {
                out.extend(h.join().map_err(|_| Error::msg("remote request thread panicked"))??);
            }
            Ok(out)
        })
    }

    fn continuation_logprobs(&mut self, context: &[u32], continuation: &[u32]) -> Result<Vec<f32>> {
        let ids: Vec<u32> = context.iter().chain(continuation).copied().collect();
        let body = json!({
            "model": self.cfg.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
            "logprobs": 1, "echo": true,
        });
        let v = self.post(&body)?;
        let lps = v
            .pointer("/choices/0/logprobs/token_logprobs")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Error::msg("remote response has no choices[0].logprobs.token_logprobs (does the server support echo?)")
            })?;
        let end = context.len() + continuation.len();
        if lps.len() < end {
            return Err(Error::msg(format!(
                "remote echoed {} log-probs for {end} prompt tokens",
                lps.len()
            )));
        }
        lps[context.len()..end]
            .iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| Error::msg("null log-prob for a continuation token"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_url_forms() {
        let u = |e: &str| RemoteConfig::new(e, "m").completions_url();
        assert_eq!(u("http://h:8000"), "http://h:8000/v1/completions");
        assert_eq!(u("http://h:8000/v1/"), "http://h:8000/v1/completions");
        assert_eq!(u("http://h/v1/completions"), "http://h/v1/completions");
    }
}
