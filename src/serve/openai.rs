//! OpenAI-shaped requests and responses: field-by-field validation of request bodies (so every
//! mistake names its `param`), the error JSON, and the logprobs layouts of both endpoints.
use super::scheduler::TokenInfo;
use crate::generate::{Message, SamplingParams};
use crate::source::tokenizer::Tokenizer;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn bad(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = param.map(String::from);
        e
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert("retry-after", HeaderValue::from(s));
        }
        r
    }
}

/// Limits a request is validated against.
pub struct Limits<'a> {
    pub model_id: &'a str,
    /// Other names the served model answers to (the spec it was loaded from).
    pub aliases: &'a [String],
    pub ctx: usize,
    pub vocab: usize,
}

/// Body bytes -> JSON object, with the distinct errors clients need to fix their request.
pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let s = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad(
            format!(
                "The request body is not valid UTF-8 (invalid byte at offset {}).",
                e.valid_up_to()
            ),
            None,
        )
    })?;
    if s.trim().is_empty() {
        return Err(ApiError::bad(
            "The request body is empty; expected a JSON object.",
            None,
        ));
    }
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::bad("The request body must be a JSON object.", None)),
        Err(e) => Err(ApiError::bad(format!("The request body is not valid JSON: {e}."), None)),
    }
}

fn type_err(param: &str, want: &str, got: &Value) -> ApiError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::bad(
        format!("Invalid type for '{param}': expected {want}, got {got}."),
        Some(param),
    )
}

/// A present, non-null field.
fn field<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn opt_bool(o: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(type_err(key, "a boolean", v)),
    }
}

fn opt_f32(o: &Map<String, Value>, key: &str) -> Result<Option<f32>, ApiError> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64().map(|x| x as f32)),
        Some(v) => Err(type_err(key, "a number", v)),
    }
}

fn opt_int(o: &Map<String, Value>, key: &str) -> Result<Option<i128>, ApiError> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i as i128))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(u as i128))
            } else {
                Err(ApiError::bad(
                    format!("Invalid type for '{key}': expected an integer, got {n}."),
                    Some(key),
                ))
            }
        }
        Some(v) => Err(type_err(key, "an integer", v)),
    }
}

fn int_in(o: &Map<String, Value>, key: &str, lo: i128, hi: i128) -> Result<Option<usize>, ApiError> {
    match opt_int(o, key)? {
        None => Ok(None),
        Some(i) if i < lo || i > hi => Err(ApiError::bad(
            format!("Invalid value for '{key}': {i} (must be between {lo} and {hi})."),
            Some(key),
        )),
        Some(i) => Ok(Some(i as usize)),
    }
}

/// Fields shared by both endpoints.
#[derive(Debug, Clone)]
pub struct Common {
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

pub const MAX_N: usize = 16;
pub const MAX_TOP_LOGPROBS: usize = 20;

fn check_model(o: &Map<String, Value>, lim: &Limits) -> Result<(), ApiError> {
    match field(o, "model") {
        None => Ok(()),
        Some(Value::String(m)) if m == lim.model_id || lim.aliases.iter().any(|a| a == m) => Ok(()),
        Some(Value::String(m)) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model '{m}' does not exist; this server serves '{}'.", lim.model_id),
        )
        .code("model_not_found")
        .param("model")),
        Some(v) => Err(type_err("model", "a string", v)),
    }
}

impl ApiError {
    fn param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }
}

fn parse_common(o: &Map<String, Value>, lim: &Limits, min_tokens: i128) -> Result<Common, ApiError> {
    check_model(o, lim)?;
    let ctx = lim.ctx as i128;
    let mut max_tokens = int_in(o, "max_tokens", min_tokens, ctx)?;
    if let Some(m) = int_in(o, "max_completion_tokens", min_tokens, ctx)? {
        max_tokens = Some(m);
    }
    let mut s = SamplingParams {
        temperature: 1.0,
        ..Default::default()
    };
    if let Some(t) = opt_f32(o, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad(
                format!("Invalid value for 'temperature': {t} (must be between 0 and 2)."),
                Some("temperature"),
            ));
        }
        s.temperature = t;
    }
    if let Some(p) = opt_f32(o, "top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad(
                format!("Invalid value for 'top_p': {p} (must be in (0, 1])."),
                Some("top_p"),
            ));
        }
        s.top_p = p;
    }
    // Extensions some OpenAI-compatible servers accept.
    s.top_k = int_in(o, "top_k", -1, 1 << 20)?.filter(|&k| k > 0);
    if let Some(p) = opt_f32(o, "min_p")? {
        if !(0.0..1.0).contains(&p) {
            return Err(ApiError::bad(format!("Invalid value for 'min_p': {p}."), Some("min_p")));
        }
        s.min_p = p;
    }
    if let Some(p) = opt_f32(o, "repetition_penalty")? {
        if !(p.is_finite() && p > 0.0 && p <= 10.0) {
            return Err(ApiError::bad(
                format!("Invalid value for 'repetition_penalty': {p}."),
                Some("repetition_penalty"),
            ));
        }
        s.repetition_penalty = p;
    }
    for key in ["presence_penalty", "frequency_penalty"] {
        if let Some(p) = opt_f32(o, key)? {
            if !(-2.0..=2.0).contains(&p) {
                return Err(ApiError::bad(
                    format!("Invalid value for '{key}': {p} (must be between -2 and 2)."),
                    Some(key),
                ));
            }
        }
    }
    s.seed = match opt_int(o, "seed")? {
        Some(i) => i as u64,
        // No seed: a different draw per request, as OpenAI does.
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    let stop = match field(o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > 16 {
                return Err(ApiError::bad("'stop' may hold at most 16 strings.", Some("stop")));
            }
            a.iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(type_err("stop", "strings", v)),
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => Err(type_err("stop", "a string or an array of strings", v))?,
    };
    if stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::bad("'stop' strings must not be empty.", Some("stop")));
    }
    let n = int_in(o, "n", 1, MAX_N as i128)?.unwrap_or(1);
    let stream = opt_bool(o, "stream")?.unwrap_or(false);
    let include_usage = match field(o, "stream_options") {
        None => false,
        Some(Value::Object(so)) => opt_bool(so, "include_usage")?.unwrap_or(false),
        Some(v) => return Err(type_err("stream_options", "an object", v)),
    };
    Ok(Common {
        ignore_eos: opt_bool(o, "ignore_eos")?.unwrap_or(false),
        max_tokens,
        sampling: s,
        stop,
        n,
        stream,
        include_usage,
    })
}

#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub common: Common,
    /// Top alternatives per generated token when `logprobs` is true.
    pub logprobs: Option<usize>,
}

impl ChatRequest {
    pub fn parse(o: &Map<String, Value>, lim: &Limits) -> Result<Self, ApiError> {
        let common = parse_common(o, lim, 1)?;
        let msgs = match field(o, "messages") {
            None => return Err(ApiError::bad("'messages' is required.", Some("messages"))),
            Some(Value::Array(a)) => a,
            Some(v) => return Err(type_err("messages", "an array", v)),
        };
        if msgs.is_empty() {
            return Err(ApiError::bad("'messages' must not be empty.", Some("messages")));
        }
        let messages = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| parse_message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let top = int_in(o, "top_logprobs", 0, MAX_TOP_LOGPROBS as i128)?;
        let logprobs = match (opt_bool(o, "logprobs")?.unwrap_or(false), top) {
            (true, t) => Some(t.unwrap_or(0)),
            (false, Some(_)) => {
                return Err(ApiError::bad(
                    "'top_logprobs' requires 'logprobs' to be true.",
                    Some("top_logprobs"),
                ))
            }
            (false, None) => None,
        };
        Ok(ChatRequest {
            messages,
            common,
            logprobs,
        })
    }
}

fn parse_message(i: usize, m: &Value) -> Result<Message, ApiError> {
    let p = format!("messages[{i}]");
    let Value::Object(o) = m else {
        return Err(type_err(&p, "an object", m));
    };
    let role = match field(o, "role") {
        Some(Value::String(r)) if !r.is_empty() => r.clone(),
        Some(Value::String(_)) | None => {
            return Err(ApiError::bad(
                format!("'{p}.role' is required."),
                Some(&format!("{p}.role")),
            ))
        }
        Some(v) => return Err(type_err(&format!("{p}.role"), "a string", v)),
    };
    let content = match field(o, "content") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{p}.content[{j}]");
                match part {
                    Value::Object(po) if po.get("type").and_then(Value::as_str) == Some("text") => {
                        match field(po, "text") {
                            Some(Value::String(t)) => text.push_str(t),
                            Some(v) => return Err(type_err(&format!("{pp}.text"), "a string", v)),
                            None => return Err(ApiError::bad(format!("'{pp}.text' is required."), Some(&pp))),
                        }
                    }
                    _ => {
                        return Err(ApiError::bad(
                            format!("'{pp}': only text content parts are supported."),
                            Some(&pp),
                        ))
                    }
                }
            }
            text
        }
        Some(v) => return Err(type_err(&format!("{p}.content"), "a string or an array", v)),
    };
    Ok(Message { role, content })
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub prompts: Vec<Prompt>,
    pub common: Common,
    pub echo: bool,
    pub logprobs: Option<usize>,
}

impl CompletionRequest {
    pub fn parse(o: &Map<String, Value>, lim: &Limits) -> Result<Self, ApiError> {
        let common = parse_common(o, lim, 0)?;
        let prompts = match field(o, "prompt") {
            None => return Err(ApiError::bad("'prompt' is required.", Some("prompt"))),
            Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(ApiError::bad("'prompt' must not be empty.", Some("prompt")))
            }
            Some(Value::Array(a)) => match &a[0] {
                Value::Number(_) => vec![Prompt::Tokens(token_list(a, lim.vocab)?)],
                _ => a
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(Prompt::Text(s.clone())),
                        Value::Array(t) => Ok(Prompt::Tokens(token_list(t, lim.vocab)?)),
                        v => Err(type_err("prompt", "strings or token arrays", v)),
                    })
                    .collect::<Result<_, _>>()?,
            },
            Some(v) => return Err(type_err("prompt", "a string or an array", v)),
        };
        if prompts.len() > 64 {
            return Err(ApiError::bad("At most 64 prompts per request.", Some("prompt")));
        }
        Ok(CompletionRequest {
            prompts,
            echo: opt_bool(o, "echo")?.unwrap_or(false),
            logprobs: int_in(o, "logprobs", 0, MAX_TOP_LOGPROBS as i128)?,
            common,
        })
    }
}

fn token_list(a: &[Value], vocab: usize) -> Result<Vec<u32>, ApiError> {
    if a.is_empty() {
        return Err(ApiError::bad("A token prompt must not be empty.", Some("prompt")));
    }
    a.iter()
        .map(|v| match v.as_u64() {
            Some(t) if (t as usize) < vocab => Ok(t as u32),
            Some(t) => Err(ApiError::bad(
                format!("Token id {t} is outside the vocabulary (size {vocab})."),
                Some("prompt"),
            )),
            None => Err(type_err("prompt", "token ids (non-negative integers)", v)),
        })
        .collect()
}

/// How a token is shown in logprobs: its decoded text, or its vocabulary entry when it is a
/// fragment of a UTF-8 character.
pub fn token_text(tok: &Tokenizer, id: u32) -> String {
    match tok.decode(&[id], false) {
        Ok(s) if !s.is_empty() && !s.contains('\u{FFFD}') => s,
        _ => tok.id_to_token(id).unwrap_or_else(|| format!("<{id}>")),
    }
}

/// `logprobs` of a chat choice: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs(tok: &Tokenizer, infos: &[TokenInfo]) -> Value {
    let entry = |id: u32, lp: f32| {
        let t = token_text(tok, id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = infos
        .iter()
        .map(|i| {
            let mut e = entry(i.id, i.logprob);
            e["top_logprobs"] = Value::Array(i.top.iter().map(|&(id, lp)| entry(id, lp)).collect());
            e
        })
        .collect();
    json!({ "content": content })
}

/// `logprobs` of a completion choice in the legacy layout lm-evaluation-harness reads.
/// `offset` is where the first token's text starts in the choice's text.
pub fn completion_logprobs(tok: &Tokenizer, infos: &[Option<TokenInfo>], ids: &[u32], offset: usize) -> Value {
    let mut tokens = Vec::new();
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    let mut at = offset;
    for (info, &id) in infos.iter().zip(ids) {
        let t = token_text(tok, id);
        offsets.push(at);
        at += t.chars().count();
        tokens.push(t);
        match info {
            None => {
                lps.push(Value::Null);
                tops.push(Value::Null);
            }
            Some(i) => {
                lps.push(json!(i.logprob));
                let mut m = Map::new();
                for &(tid, lp) in &i.top {
                    // Two ids can decode alike; keep the likelier (they come sorted).
                    m.entry(token_text(tok, tid)).or_insert(json!(lp));
                }
                tops.push(Value::Object(m));
            }
        }
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits<'static> {
        Limits {
            model_id: "m",
            aliases: &[],
            ctx: 100,
            vocab: 10,
        }
    }

    fn obj(s: &str) -> Map<String, Value> {
        parse_body(s.as_bytes()).unwrap()
    }

    #[test]
    fn body_errors() {
        assert!(parse_body(b"\xff\xfe").unwrap_err().message.contains("UTF-8"));
        assert!(parse_body(b"{").unwrap_err().message.contains("not valid JSON"));
        assert!(parse_body(b"[1]").unwrap_err().message.contains("object"));
    }

    #[test]
    fn chat_validation() {
        let e = ChatRequest::parse(&obj(r#"{"messages": []}"#), &lim()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = ChatRequest::parse(
            &obj(r#"{"model": "x", "messages": [{"role":"user","content":"hi"}]}"#),
            &lim(),
        )
        .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let e = ChatRequest::parse(
            &obj(r#"{"max_tokens": -1, "messages": [{"role":"user","content":"hi"}]}"#),
            &lim(),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e =
            ChatRequest::parse(&obj(r#"{"temperature": "hot", "messages": [{"role":"user"}]}"#), &lim()).unwrap_err();
        assert!(e.message.contains("expected a number, got a string"));
        let r = ChatRequest::parse(
            &obj(r#"{"model":"m","logprobs":true,"top_logprobs":3,"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#),
            &lim(),
        )
        .unwrap();
        assert_eq!(r.messages[0].content, "ab");
        assert_eq!(r.logprobs, Some(3));
    }

    #[test]
    fn prompt_forms() {
        let r = CompletionRequest::parse(&obj(r#"{"prompt": [1, 2], "max_tokens": 0, "echo": true}"#), &lim()).unwrap();
        assert_eq!(r.prompts, vec![Prompt::Tokens(vec![1, 2])]);
        let r = CompletionRequest::parse(&obj(r#"{"prompt": ["a", [3]]}"#), &lim()).unwrap();
        assert_eq!(r.prompts.len(), 2);
        assert!(CompletionRequest::parse(&obj(r#"{"prompt": [99]}"#), &lim()).is_err());
        assert!(CompletionRequest::parse(&obj(r#"{"prompt": [-1]}"#), &lim()).is_err());
    }
}
