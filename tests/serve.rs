//! The HTTP server on the real fixture model, driven over loopback with raw HTTP.
mod common;

use biomistral::generate::{encode_chat, generate, GenerateRequest, Message, SamplingParams};
use biomistral::model::{ForwardOpts, Logits};
use biomistral::serve::{ServeConfig, Server};
use biomistral::source::{load, LoadOptions, LoadedModel};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn model() -> Option<LoadedModel> {
    let p = common::fixture_gguf()?;
    Some(load(p.to_str().unwrap(), &LoadOptions::default()).expect("load fixture"))
}

fn start(cfg: ServeConfig) -> Option<Server> {
    let m = model()?;
    Some(Server::start(m, ServeConfig { port: 0, ..cfg }).expect("start server"))
}

/// One server shared by the tests that do not need their own settings.
fn shared() -> Option<SocketAddr> {
    static S: OnceLock<Option<Server>> = OnceLock::new();
    S.get_or_init(|| {
        start(ServeConfig {
            max_batch: 4,
            ctx: Some(512),
            ..Default::default()
        })
    })
    .as_ref()
    .map(|s| s.addr())
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(300)).build()
}

/// (status, body) of a request; `key` adds a bearer token.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>, key: Option<&str>) -> (u16, String) {
    let mut r = agent().request(method, &format!("http://{addr}{path}"));
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    let res = match body {
        Some(b) => r.set("Content-Type", "application/json").send_bytes(b),
        None => r.call(),
    };
    match res {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(c, resp)) => (c, resp.into_string().unwrap()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (s, b) = call(addr, "POST", path, Some(body.to_string().as_bytes()), None);
    (s, serde_json::from_str(&b).unwrap_or_else(|_| json!({ "raw": b })))
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (s, b) = call(addr, "GET", path, None, None);
    assert_eq!(s, 200, "{b}");
    serde_json::from_str(&b).unwrap()
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, text) = call(addr, "GET", "/metrics", None, None);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Poll until `name` reaches `want` (bounded).
fn wait_metric(addr: SocketAddr, name: &str, want: f64) {
    let t0 = Instant::now();
    while metric(addr, name) != want {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{name} stuck at {}",
            metric(addr, name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `data:` payloads of an SSE body; asserts the framing and the final `[DONE]`.
fn sse_events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("data: [DONE]\n\n"), "no [DONE] at the end: {body:?}");
    let frames: Vec<&str> = body.split("\n\n").filter(|f| !f.is_empty()).collect();
    frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f.strip_prefix("data: ").expect("data: prefix")).unwrap())
        .collect()
}

fn chat_body(q: &str, max_tokens: usize) -> Value {
    json!({"messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": max_tokens})
}

fn reference_greedy(m: &LoadedModel, q: &str, max_tokens: usize) -> String {
    let ids = encode_chat(m, &[Message::new("user", q)]).unwrap();
    let req = GenerateRequest {
        prompt_ids: ids,
        max_new_tokens: max_tokens,
        sampling: SamplingParams::default(),
        stop_strings: vec![],
        eos_ids: m.eos_ids.clone(),
    };
    generate(m, &req, None, |_| {}).unwrap().text
}

#[test]
fn chat_greedy_equals_generate_and_streams_the_same_text() {
    let Some(addr) = shared() else { return };
    let m = model().unwrap();
    let q = "What is the function of insulin?";
    let (s, r) = post(addr, "/v1/chat/completions", &chat_body(q, 24));
    assert_eq!(s, 200, "{r}");
    let text = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text, reference_greedy(&m, q, 24));
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert!(["stop", "length"].contains(&r["choices"][0]["finish_reason"].as_str().unwrap()));
    let u = &r["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    let mut body = chat_body(q, 24);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (s, raw) = call(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(body.to_string().as_bytes()),
        None,
    );
    assert_eq!(s, 200);
    let events = sse_events(&raw);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert!(events.iter().all(|e| e["object"] == "chat.completion.chunk"));
    let finish = events
        .iter()
        .filter(|e| !e["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finish, 1);
    assert_eq!(events.last().unwrap()["usage"], r["usage"]);
}

#[test]
fn completions_echo_logprobs_match_the_engine() {
    let Some(addr) = shared() else { return };
    let m = model().unwrap();
    let prompt = "The heart pumps blood through the";
    let ids = m.tokenizer.encode(prompt, true).unwrap();
    let body = json!({"prompt": ids, "echo": true, "logprobs": 3, "max_tokens": 2, "temperature": 0});
    let (s, r) = post(addr, "/v1/completions", &body);
    assert_eq!(s, 200, "{r}");
    let c = &r["choices"][0];
    let lp = &c["logprobs"];
    let tl = lp["token_logprobs"].as_array().unwrap();
    assert_eq!(tl.len(), ids.len() + 2);
    assert!(tl[0].is_null(), "the first prompt token has no logprob");
    assert!(lp["top_logprobs"][0].is_null());
    assert_eq!(lp["tokens"].as_array().unwrap().len(), tl.len());
    assert!(c["text"]
        .as_str()
        .unwrap()
        .starts_with(&m.tokenizer.decode(&ids, false).unwrap()));

    // The engine's own numbers: log-softmax of the forward's logits over the same prompt.
    let t = candle_core::Tensor::new(ids.as_slice(), &m.model.device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = m.model.new_cache();
    let logits = m
        .model
        .forward(&t, &mut cache, Logits::All, &ForwardOpts::default())
        .unwrap();
    let lsm: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits.squeeze(0).unwrap(), candle_core::D::Minus1)
        .unwrap()
        .to_vec2()
        .unwrap();
    for i in 1..ids.len() {
        let want = lsm[i - 1][ids[i] as usize];
        let got = tl[i].as_f64().unwrap() as f32;
        assert!((want - got).abs() < 1e-4, "token {i}: {got} vs {want}");
    }
    // The first generated token is greedy: its logprob is the best at the prompt's last position.
    let first_gen = tl[ids.len()].as_f64().unwrap() as f32;
    let best = lsm[ids.len() - 1].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert!((first_gen - best).abs() < 1e-4, "{first_gen} vs {best}");
    let top = lp["top_logprobs"][ids.len()].as_object().unwrap();
    assert!(!top.is_empty() && top.len() <= 3);

    // lm-evaluation-harness style: string prompt, echo, no generation.
    let (s, r) = post(
        addr,
        "/v1/completions",
        &json!({"prompt": prompt, "echo": true, "logprobs": 1, "max_tokens": 0}),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], prompt);
    let tl2 = r["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap();
    assert_eq!(tl2.len(), ids.len());
    for i in 1..ids.len() {
        assert!((tl2[i].as_f64().unwrap() - tl[i].as_f64().unwrap()).abs() < 1e-6);
    }
    assert_eq!(r["usage"]["completion_tokens"], 0);
}

#[test]
fn completions_stream_and_token_prompts() {
    let Some(addr) = shared() else { return };
    let body = json!({"prompt": "Aspirin is", "max_tokens": 6, "temperature": 0});
    let (s, whole) = post(addr, "/v1/completions", &body);
    assert_eq!(s, 200, "{whole}");
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let (s, raw) = call(addr, "POST", "/v1/completions", Some(sb.to_string().as_bytes()), None);
    assert_eq!(s, 200);
    let text: String = sse_events(&raw)
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    // Two prompts x n=2 give four choices, indexed prompt-major.
    let (s, r) = post(
        addr,
        "/v1/completions",
        &json!({"prompt": ["A", "B"], "n": 2, "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(s, 200, "{r}");
    let idx: Vec<u64> = r["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![0, 1, 2, 3]);
}

#[test]
fn models_health_openapi_page() {
    let Some(addr) = shared() else { return };
    let models = get_json(addr, "/v1/models");
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(get_json(addr, "/health")["status"], "ok");
    let doc = get_json(addr, "/openapi.json");
    for (method, path) in biomistral::serve::openapi::ROUTES {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
    let (s, page) = call(addr, "GET", "/", None, None);
    assert_eq!(s, 200);
    assert!(page.contains("research tool"), "advisory on the page");
    assert_eq!(call(addr, "GET", "/app.js", None, None).0, 200);
    // The model may be named, by id.
    let mut b = chat_body("Hi", 1);
    b["model"] = json!("SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(post(addr, "/v1/chat/completions", &b).0, 200);
}

fn assert_error(r: (u16, Value), status: u16, needle: &str) -> Value {
    let (s, v) = r;
    assert_eq!(s, status, "{v}");
    let e = &v["error"];
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error.{k} missing: {v}");
    }
    assert!(
        e["message"].as_str().unwrap().contains(needle),
        "{needle:?} not in {}",
        e["message"]
    );
    v
}

#[test]
fn errors_are_openai_shaped() {
    let Some(addr) = shared() else { return };
    let raw = |path: &str, body: &[u8]| {
        let (s, b) = call(addr, "POST", path, Some(body), None);
        (s, serde_json::from_str::<Value>(&b).unwrap())
    };
    let chat = "/v1/chat/completions";
    assert_error(raw(chat, b"{\"messages\": "), 400, "not valid JSON");
    assert_error(raw(chat, b"{\"messages\": \"\xff\"}"), 400, "UTF-8");
    assert_error(raw(chat, b""), 400, "empty");
    assert_error(raw(chat, b"[]"), 400, "JSON object");
    let v = assert_error(post(addr, chat, &json!({"messages": []})), 400, "must not be empty");
    assert_eq!(v["error"]["param"], "messages");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_error(post(addr, chat, &json!({})), 400, "'messages' is required");
    let mut b = chat_body("hi", 4);
    b["model"] = json!("gpt-4");
    let v = assert_error(post(addr, chat, &b), 404, "does not exist");
    assert_eq!(v["error"]["code"], "model_not_found");
    let mut b = chat_body("hi", 4);
    b["max_tokens"] = json!(-5);
    assert_eq!(
        assert_error(post(addr, chat, &b), 400, "-5")["error"]["param"],
        "max_tokens"
    );
    b["max_tokens"] = json!(1_000_000_000_000u64);
    assert_error(post(addr, chat, &b), 400, "max_tokens");
    b["max_tokens"] = json!(2.5);
    assert_error(post(addr, chat, &b), 400, "integer");
    let mut b = chat_body("hi", 4);
    b["temperature"] = json!("hot");
    assert_eq!(
        assert_error(post(addr, chat, &b), 400, "number")["error"]["param"],
        "temperature"
    );
    let mut b = chat_body("hi", 4);
    b["messages"] = json!([{"role": "user", "content": 7}]);
    assert_error(post(addr, chat, &b), 400, "messages[0].content");
    let mut b = chat_body("hi", 4);
    b["stream"] = json!("yes");
    assert_error(post(addr, chat, &b), 400, "boolean");
    // The server's context is 512 tokens: 600 is 88 too many.
    let long = json!({"prompt": vec![1u32; 600], "max_tokens": 1});
    let v = assert_error(post(addr, "/v1/completions", &long), 400, "88 more");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    assert_error(
        post(addr, "/v1/completions", &json!({"prompt": [999999]})),
        400,
        "vocabulary",
    );
    assert_error(post(addr, "/v1/nope", &json!({})), 404, "No such route");
    let (s, _) = call(addr, "GET", chat, None, None);
    assert_eq!(s, 405);
}

#[test]
fn api_key_guards_v1_but_not_health() {
    let Some(server) = start(ServeConfig {
        api_key: Some("sk-test-123".into()),
        ..Default::default()
    }) else {
        return;
    };
    let addr = server.addr();
    let parse = |(s, b): (u16, String)| (s, serde_json::from_str::<Value>(&b).unwrap());
    let v = assert_error(parse(call(addr, "GET", "/v1/models", None, None)), 401, "API key");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_error(
        parse(call(addr, "GET", "/v1/models", None, Some("sk-wrong"))),
        401,
        "API key",
    );
    let body = chat_body("hi", 1).to_string();
    assert_error(
        parse(call(addr, "POST", "/v1/chat/completions", Some(body.as_bytes()), None)),
        401,
        "API key",
    );
    assert_eq!(call(addr, "GET", "/v1/models", None, Some("sk-test-123")).0, 200);
    assert_eq!(
        call(
            addr,
            "POST",
            "/v1/chat/completions",
            Some(body.as_bytes()),
            Some("sk-test-123")
        )
        .0,
        200
    );
    assert_eq!(call(addr, "GET", "/health", None, None).0, 200);
    server.shutdown().unwrap();
}

/// Open a streaming request on a raw socket and read until the first generated text arrives.
fn open_stream(addr: SocketAddr, path: &str, body: &Value) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let b = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line.contains("\"text\"") || line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
            return r;
        }
    }
}

fn long_stream_body() -> Value {
    json!({"prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": true, "stream": true,
           "temperature": 0})
}

#[test]
fn client_disconnect_frees_the_row() {
    let Some(server) = start(ServeConfig {
        max_batch: 2,
        ..Default::default()
    }) else {
        return;
    };
    let addr = server.addr();
    let conn = open_stream(addr, "/v1/completions", &long_stream_body());
    assert_eq!(metric(addr, "biomistral_in_flight_sequences"), 1.0);
    drop(conn);
    wait_metric(addr, "biomistral_in_flight_sequences", 0.0);
    let done = metric(addr, "biomistral_completion_tokens_total");
    assert!(done < 4000.0, "{done} tokens: the generation ran to the end");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        metric(addr, "biomistral_completion_tokens_total"),
        done,
        "still generating"
    );

    // A client waiting for a whole (non-streamed) reply that hangs up is noticed too.
    let mut s = TcpStream::connect(addr).unwrap();
    let b = json!({"prompt": "Once upon a time", "max_tokens": 4000, "ignore_eos": true}).to_string();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    wait_metric(addr, "biomistral_in_flight_sequences", 1.0);
    drop(s);
    wait_metric(addr, "biomistral_in_flight_sequences", 0.0);
    let total = metric(addr, "biomistral_completion_tokens_total");
    assert!(total - done < 4000.0, "the hung-up request ran to the end");
    server.shutdown().unwrap();
}

#[test]
fn full_queue_answers_429_with_retry_after() {
    let Some(server) = start(ServeConfig {
        max_batch: 1,
        max_queue: 1,
        ..Default::default()
    }) else {
        return;
    };
    let addr = server.addr();
    let running = open_stream(addr, "/v1/completions", &long_stream_body());
    let waiting = std::thread::spawn(move || {
        post(
            addr,
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 1, "temperature": 0}),
        )
    });
    wait_metric(addr, "biomistral_queue_depth", 1.0);
    let resp = agent()
        .post(&format!("http://{addr}/v1/completions"))
        .send_string(&json!({"prompt": "Hi", "max_tokens": 1}).to_string());
    match resp {
        Err(ureq::Error::Status(429, r)) => {
            assert_eq!(r.header("retry-after"), Some("1"));
            let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            assert_eq!(v["error"]["code"], "queue_full");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    drop(running);
    let (s, _) = waiting.join().unwrap();
    assert_eq!(s, 200, "the queued request runs once a slot frees");
    wait_metric(addr, "biomistral_in_flight_sequences", 0.0);
    assert_eq!(metric(addr, "biomistral_queue_depth"), 0.0);
    server.shutdown().unwrap();
}

const QUESTIONS: [&str; 4] = [
    "What is hypertension?",
    "Name two symptoms of the flu and explain briefly why they happen.",
    "Define anemia.",
    "What does the liver do in the human body? Answer in one sentence.",
];

#[test]
fn batched_and_unbatched_greedy_are_identical() {
    let Some(batched) = start(ServeConfig {
        max_batch: 4,
        ..Default::default()
    }) else {
        return;
    };
    let single = start(ServeConfig {
        max_batch: 1,
        ..Default::default()
    })
    .unwrap();
    let ask = |addr: SocketAddr, q: &str| {
        let mut b = chat_body(q, 20);
        b["logprobs"] = json!(true);
        let (s, r) = post(addr, "/v1/chat/completions", &b);
        assert_eq!(s, 200, "{r}");
        let c = &r["choices"][0];
        let toks: Vec<String> = c["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["token"].as_str().unwrap().to_string())
            .collect();
        (c["message"]["content"].as_str().unwrap().to_string(), toks)
    };
    let one_at_a_time: Vec<_> = QUESTIONS.iter().map(|q| ask(single.addr(), q)).collect();
    let addr = batched.addr();
    let together: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = QUESTIONS
            .iter()
            .map(|q| {
                let ask = &ask;
                s.spawn(move || ask(addr, q))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(one_at_a_time, together);
    // And the batching did happen: some decode step ran several rows at once.
    let steps = metric(addr, "biomistral_decode_steps_total");
    let tokens: f64 = together.iter().map(|t| t.1.len() as f64).sum();
    assert!(steps < tokens, "{steps} steps for {tokens} tokens: never batched");
}

#[test]
fn load_64_requests_16_concurrent() {
    let Some(addr) = shared() else { return };
    let errors = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..16 {
            let errors = &errors;
            s.spawn(move || {
                for k in 0..4 {
                    let stream = (w + k) % 2 == 0;
                    // Half chat (a short system prompt replaces the template's long default one),
                    // half plain completions: short prefills keep the test quick on small CPUs.
                    let (path, mut body) = if k % 2 == 0 {
                        let msgs = json!([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": format!("A word about {w}-{k}?")}]);
                        ("/v1/chat/completions", json!({ "messages": msgs }))
                    } else {
                        ("/v1/completions", json!({ "prompt": format!("Item {w}-{k}:") }))
                    };
                    body["max_tokens"] = json!(5);
                    body["temperature"] = json!(0.8);
                    body["seed"] = json!(w * 4 + k);
                    body["stream"] = json!(stream);
                    let (s, raw) = call(addr, "POST", path, Some(body.to_string().as_bytes()), None);
                    let ok = s == 200 && (!stream || raw.ends_with("data: [DONE]\n\n"));
                    if !ok {
                        eprintln!("request {w}-{k}: {s} {raw}");
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(errors.into_inner(), 0);
    wait_metric(addr, "biomistral_in_flight_sequences", 0.0);
    assert_eq!(metric(addr, "biomistral_queue_depth"), 0.0);
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_4F49_1734_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_value(r: &mut Rng, depth: usize) -> Value {
    match r.below(if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(r.below(2) == 0),
        2 => json!(r.next() as i64),
        3 => [
            json!(-1),
            json!(0),
            json!(1),
            json!(2),
            json!(5),
            json!(3.5),
            json!(1e300),
            json!(-1e-9),
        ][r.below(8)]
        .clone(),
        4 => json!(["", "user", "hi", "\u{0}", "é", "[DONE]", "SmolLM2-135M-Instruct.Q4_1"][r.below(7)]),
        5 => json!(r.below(70000)),
        6 => Value::Array((0..r.below(4)).map(|_| random_value(r, depth + 1)).collect()),
        _ => {
            let keys = ["role", "content", "type", "text", "include_usage", "x"];
            Value::Object(
                (0..r.below(4))
                    .map(|_| (keys[r.below(keys.len())].to_string(), random_value(r, depth + 1)))
                    .collect(),
            )
        }
    }
}

#[test]
fn fuzzed_requests_never_get_a_5xx() {
    let Some(server) = start(ServeConfig {
        ctx: Some(64),
        max_batch: 4,
        ..Default::default()
    }) else {
        return;
    };
    let addr = server.addr();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let bases = [
        json!({"messages": [{"role": "system", "content": "."}, {"role": "user", "content": "hi"}], "max_tokens": 2,
               "temperature": 0.5, "stop": ["x"],
               "logprobs": true, "top_logprobs": 2, "seed": 1}),
        json!({"prompt": "hi", "max_tokens": 2, "echo": true, "logprobs": 2, "n": 2}),
    ];
    let keys = [
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
        "stream",
        "logprobs",
        "top_logprobs",
        "echo",
        "model",
        "stream_options",
        "min_p",
        "repetition_penalty",
        "presence_penalty",
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..160 {
        let path = if i % 2 == 0 {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let mut body = bases[i % 2].clone();
        for _ in 0..1 + rng.below(3) {
            let k = keys[rng.below(keys.len())];
            if rng.below(4) == 0 {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = random_value(&mut rng, 0);
            }
        }
        // Generation stays short whatever the mutation did to max_tokens.
        if body.get("max_tokens").and_then(Value::as_u64).is_none_or(|m| m > 4) {
            body["max_tokens"] = json!(rng.below(3));
        }
        let mut bytes = body.to_string().into_bytes();
        // Byte-level damage for a third of the bodies.
        if i % 3 == 0 && !bytes.is_empty() {
            match rng.below(3) {
                0 => bytes.truncate(rng.below(bytes.len())),
                1 => {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
                _ => {
                    let at = rng.below(bytes.len());
                    bytes.insert(at, [b'{', b'"', b'\\', 0xC3, b']'][rng.below(5)]);
                }
            }
        }
        let (s, text) = call(addr, "POST", path, Some(&bytes), None);
        assert!(s < 500, "{s} for {}: {text}", String::from_utf8_lossy(&bytes));
        if s != 200 {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON error body: {text}"));
            assert!(v["error"]["message"].is_string(), "{text}");
        }
        *statuses.entry(s).or_insert(0) += 1;
    }
    eprintln!("fuzz statuses: {statuses:?}");
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 10,
        "too few valid bodies: {statuses:?}"
    );
    assert!(
        statuses.get(&400).copied().unwrap_or(0) > 10,
        "too few invalid bodies: {statuses:?}"
    );
    wait_metric(addr, "biomistral_in_flight_sequences", 0.0);
    server.shutdown().unwrap();
}

#[test]
fn binary_serves_and_exits_0_on_sigterm() {
    let Some(gguf) = common::fixture_gguf() else { return };
    let mut child = std::process::Command::new(common::bin())
        .args([
            "serve",
            "--model",
            gguf.to_str().unwrap(),
            "--port",
            "0",
            "--shutdown-timeout",
            "20",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    for _ in 0..50 {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(a) = line.split("http://").nth(1) {
            addr = Some(a.split_whitespace().next().unwrap().parse::<SocketAddr>().unwrap());
            break;
        }
    }
    let addr = addr.expect("the server printed its address");
    assert_eq!(get_json(addr, "/health")["status"], "ok");
    // A request in flight when SIGTERM arrives still completes.
    let mut conn = open_stream(
        addr,
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 40, "ignore_eos": true, "stream": true}),
    );
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    conn.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
}

#[test]
fn openai_python_client() {
    let Some(py) = std::env::var_os("BIOMISTRAL_PYTHON") else {
        eprintln!("skipping openai_python_client: set BIOMISTRAL_PYTHON to a python with `openai` installed");
        return;
    };
    let Some(server) = start(ServeConfig {
        api_key: Some("sk-python".into()),
        ..Default::default()
    }) else {
        return;
    };
    let out = std::process::Command::new(py)
        .arg(common::crate_dir().join("tests/openai_client.py"))
        .args([
            "--base-url",
            &format!("http://{}/v1", server.addr()),
            "--api-key",
            "sk-python",
        ])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{log}");
    assert!(out.status.success(), "openai client test failed:\n{log}");
    assert!(log.contains("ALL OK"));
    server.shutdown().unwrap();
}

#[test]
fn chat_page_in_chromium() {
    if std::env::var("BIOMISTRAL_CHROMIUM_TEST").as_deref() != Ok("1") {
        eprintln!(
            "skipping chat_page_in_chromium: set BIOMISTRAL_CHROMIUM_TEST=1 (needs `apt-get install -y chromium` \
             and BIOMISTRAL_PLAYWRIGHT_DIR=<folder where `npm i playwright-core` ran>)"
        );
        return;
    }
    let Some(server) = start(ServeConfig {
        api_key: Some("sk-page".into()),
        ..Default::default()
    }) else {
        return;
    };
    let out = std::process::Command::new("node")
        .arg(common::crate_dir().join("tests/chat_page.mjs"))
        .args([format!("http://{}", server.addr()), "sk-page".into()])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{log}");
    assert!(
        out.status.success() && log.contains("ALL OK"),
        "chat page test failed:\n{log}"
    );
    server.shutdown().unwrap();
}
