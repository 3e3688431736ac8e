//! HTTP routes: handlers turn validated requests into engine jobs and engine events into
//! OpenAI responses, whole or as server-sent events.
use super::openai::{self, ApiError, ChatRequest, CompletionRequest, Limits, Prompt};
use super::scheduler::{Event, Finish, Job, JobParams, SubmitError, TokenInfo};
use super::AppState;
use crate::generate::encode_chat;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/", get(super::page::index))
        .route("/app.js", get(super::page::script))
        .route("/style.css", get(super::page::style))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(32 << 20))
        .with_state(state)
}

async fn require_key(State(st): St, req: Request, next: Next) -> Response {
    if let Some(key) = &st.api_key {
        let h = req.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if !super::auth::authorized(h, key) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Missing or incorrect API key: send 'Authorization: Bearer <key>'.",
            )
            .code("invalid_api_key")
            .into_response();
        }
    }
    next.run(req).await
}

async fn count(State(st): St, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let r = next.run(req).await;
    st.metrics.count_request(&route, r.status().as_u16());
    r
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "No such route.").code("not_found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "Method not allowed on this route.",
    )
}

async fn health(State(st): St) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": st.model_id,
        "queue_depth": st.metrics.queue_depth.load(Ordering::Relaxed).max(0),
        "in_flight": st.metrics.in_flight.load(Ordering::Relaxed).max(0),
    }))
}

async fn metrics(State(st): St) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

fn model_card(st: &AppState) -> Value {
    json!({"id": st.model_id, "object": "model", "created": st.created, "owned_by": "biomistral-rs",
           "max_model_len": st.ctx})
}

async fn models(State(st): St) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_card(&st)]}))
}

async fn model(State(st): St, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if id == st.model_id {
        Ok(Json(model_card(&st)))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model '{id}' does not exist."),
        )
        .code("model_not_found"))
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        ApiError::new(
            e.status(),
            "invalid_request_error",
            format!("Could not read the request body: {}", e.body_text()),
        )
    })
}

fn limits(st: &AppState) -> Limits<'_> {
    Limits {
        model_id: &st.model_id,
        aliases: &st.aliases,
        ctx: st.ctx,
        vocab: st.model.model.cfg.vocab_size,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{:x}{:06x}", now(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Tokens left for generation, or 400 when the prompt alone does not fit.
fn budget(st: &AppState, prompt_len: usize, max_tokens: Option<usize>, param: &str) -> Result<usize, ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::bad("The prompt is empty (0 tokens).", Some(param)));
    }
    if prompt_len > st.ctx {
        return Err(ApiError::bad(
            format!(
                "The prompt is {prompt_len} tokens, {} more than this server's context of {} tokens.",
                prompt_len - st.ctx,
                st.ctx
            ),
            Some(param),
        )
        .code("context_length_exceeded"));
    }
    // Generation also stops when the context fills up (finish_reason "length").
    Ok(max_tokens.unwrap_or(st.ctx - prompt_len))
}

/// Queue one job per (prompt, choice); all or nothing.
fn submit(st: &AppState, jobs: Vec<JobParams>) -> Result<Vec<mpsc::UnboundedReceiver<Event>>, ApiError> {
    let mut rxs = Vec::with_capacity(jobs.len());
    for params in jobs {
        let (tx, rx) = mpsc::unbounded_channel();
        let job = Job {
            params,
            events: tx,
            enqueued: Instant::now(),
        };
        match st.queue.submit(job) {
            Ok(()) => rxs.push(rx),
            // Dropping the receivers already queued cancels those jobs.
            Err(SubmitError::Full) => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "The server's request queue is full; retry later.",
                )
                .code("queue_full");
                e.retry_after = Some(1);
                return Err(e);
            }
            Err(SubmitError::Closed) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "The server is shutting down.",
                ))
            }
        }
    }
    Ok(rxs)
}

/// Everything one sequence produced.
#[derive(Default)]
struct Collected {
    text: String,
    tokens: Vec<TokenInfo>,
    prompt: Vec<Option<TokenInfo>>,
    finish: Option<Finish>,
    completion_tokens: usize,
}

async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Prompt(p) => c.prompt = p,
            Event::Delta { text, tokens } => {
                c.text.push_str(&text);
                c.tokens.extend(tokens);
            }
            Event::Done {
                finish,
                completion_tokens,
            } => {
                c.finish = Some(finish);
                c.completion_tokens = completion_tokens;
            }
            Event::Error(m) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", m)),
        }
    }
    match c.finish {
        Some(Finish::Stop) | Some(Finish::Length) => Ok(c),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "The request was cancelled: the server is shutting down.",
        )),
    }
}

fn finish_reason(f: Option<Finish>) -> Value {
    match f {
        Some(Finish::Stop) => json!("stop"),
        Some(Finish::Length) => json!("length"),
        _ => Value::Null,
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn job_params(
    prompt: Vec<u32>,
    common: &openai::Common,
    max_tokens: usize,
    choice: usize,
    logprobs: Option<usize>,
) -> JobParams {
    let mut sampling = common.sampling.clone();
    // Distinct draws per choice, still reproducible from one seed.
    sampling.seed = sampling.seed.wrapping_add(choice as u64);
    JobParams {
        prompt,
        max_tokens,
        sampling,
        stop: common.stop.clone(),
        logprobs,
        prompt_logprobs: None,
        ignore_eos: common.ignore_eos,
    }
}

async fn chat(State(st): St, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let o = openai::parse_body(&body_bytes(body)?)?;
    let req = ChatRequest::parse(&o, &limits(&st))?;
    let ids = encode_chat(&st.model, &req.messages)
        .map_err(|e| ApiError::bad(format!("Could not apply the chat template: {e}"), Some("messages")))?;
    let max_tokens = budget(&st, ids.len(), req.common.max_tokens, "messages")?;
    let n = req.common.n;
    let prompt_len = ids.len();
    let jobs = (0..n)
        .map(|j| job_params(ids.clone(), &req.common, max_tokens, j, req.logprobs))
        .collect();
    let rxs = submit(&st, jobs)?;
    st.metrics.prompt_tokens.fetch_add(prompt_len as u64, Ordering::Relaxed);
    let id = request_id("chatcmpl");
    let created = now();
    if req.common.stream {
        return Ok(sse(chat_stream(st.clone(), rxs, id, created, prompt_len, &req)));
    }
    let mut choices = Vec::new();
    let mut completion = 0;
    for (j, c) in futures_util::future::join_all(rxs.into_iter().map(collect))
        .await
        .into_iter()
        .enumerate()
    {
        let c = c?;
        completion += c.completion_tokens;
        let logprobs = match req.logprobs {
            Some(_) => openai::chat_logprobs(&st.model.tokenizer, &c.tokens),
            None => Value::Null,
        };
        choices.push(json!({"index": j, "message": {"role": "assistant", "content": c.text},
                            "logprobs": logprobs, "finish_reason": finish_reason(c.finish)}));
    }
    Ok(Json(
        json!({"id": id, "object": "chat.completion", "created": created, "model": st.model_id,
                   "system_fingerprint": Value::Null, "choices": choices,
                   "usage": usage(prompt_len, completion)}),
    )
    .into_response())
}

/// A server-sent-event response fed by a task that writes `data: ...` frames. When the client
/// goes away the body is dropped, the task's sends fail, and dropping the event receivers tells
/// the engine to stop those sequences.
fn sse(frames: mpsc::Receiver<String>) -> Response {
    let body = stream::unfold(frames, |mut rx| async move {
        rx.recv().await.map(|s| (Ok::<_, Infallible>(Bytes::from(s)), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn frame(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// Events of every choice, tagged with the choice's index, in arrival order.
fn merged(rxs: Vec<mpsc::UnboundedReceiver<Event>>) -> stream::SelectAll<stream::BoxStream<'static, (usize, Event)>> {
    stream::select_all(rxs.into_iter().enumerate().map(|(j, rx)| {
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .map(move |e| (j, e))
            .boxed()
    }))
}

fn stream_error(m: &str) -> String {
    frame(&json!({"error": {"message": m, "type": "server_error", "param": null, "code": null}}))
}

fn chat_stream(
    st: Arc<AppState>,
    rxs: Vec<mpsc::UnboundedReceiver<Event>>,
    id: String,
    created: u64,
    prompt_len: usize,
    req: &ChatRequest,
) -> mpsc::Receiver<String> {
    let (tx, out) = mpsc::channel(64);
    let (n, want_lp, include_usage) = (rxs.len(), req.logprobs.is_some(), req.common.include_usage);
    tokio::spawn(async move {
        let chunk = |choices: Value| {
            frame(&json!({"id": id, "object": "chat.completion.chunk", "created": created,
                          "model": st.model_id, "system_fingerprint": Value::Null, "choices": choices}))
        };
        for j in 0..n {
            let c = json!([{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": null,
                            "finish_reason": null}]);
            if tx.send(chunk(c)).await.is_err() {
                return;
            }
        }
        let mut events = merged(rxs);
        let mut completion = 0;
        while let Some((j, ev)) = events.next().await {
            let f = match ev {
                Event::Delta { text, tokens } => {
                    let lp = if want_lp {
                        openai::chat_logprobs(&st.model.tokenizer, &tokens)
                    } else {
                        Value::Null
                    };
                    chunk(json!([{"index": j, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]))
                }
                Event::Done {
                    finish: Finish::Cancelled,
                    ..
                } => stream_error("The request was cancelled: the server is shutting down."),
                Event::Done {
                    finish,
                    completion_tokens,
                } => {
                    completion += completion_tokens;
                    chunk(json!([{"index": j, "delta": {}, "logprobs": null,
                                  "finish_reason": finish_reason(Some(finish))}]))
                }
                Event::Error(m) => stream_error(&m),
                Event::Prompt(_) => continue,
            };
            if tx.send(f).await.is_err() {
                return;
            }
        }
        if include_usage {
            let u = frame(&json!({"id": id, "object": "chat.completion.chunk", "created": created,
                                  "model": st.model_id, "choices": [], "usage": usage(prompt_len, completion)}));
            if tx.send(u).await.is_err() {
                return;
            }
        }
        let _ = tx.send("data: [DONE]\n\n".to_string()).await;
    });
    out
}

async fn completions(State(st): St, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let o = openai::parse_body(&body_bytes(body)?)?;
    let req = CompletionRequest::parse(&o, &limits(&st))?;
    let tok = &st.model.tokenizer;
    // (prompt ids, prompt text) per prompt.
    let mut prompts = Vec::new();
    for p in &req.prompts {
        let (ids, text) = match p {
            Prompt::Text(s) => (
                tok.encode(s, true)
                    .map_err(|e| ApiError::bad(format!("Could not tokenize the prompt: {e}"), Some("prompt")))?,
                s.clone(),
            ),
            Prompt::Tokens(ids) => (ids.clone(), tok.decode(ids, false).unwrap_or_default()),
        };
        budget(&st, ids.len(), req.common.max_tokens, "prompt")?;
        prompts.push((ids, text));
    }
    let n = req.common.n;
    let mut jobs = Vec::new();
    for (ids, _) in &prompts {
        let max_tokens = budget(&st, ids.len(), req.common.max_tokens, "prompt")?;
        for j in 0..n {
            let mut p = job_params(ids.clone(), &req.common, max_tokens, j, req.logprobs);
            if req.echo {
                p.prompt_logprobs = req.logprobs;
            }
            jobs.push(p);
        }
    }
    let rxs = submit(&st, jobs)?;
    let prompt_tokens: usize = prompts.iter().map(|p| p.0.len()).sum();
    st.metrics
        .prompt_tokens
        .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
    let id = request_id("cmpl");
    let created = now();
    if req.common.stream {
        return Ok(sse(completion_stream(
            st.clone(),
            rxs,
            id,
            created,
            prompts,
            prompt_tokens,
            &req,
        )));
    }
    let mut choices = Vec::new();
    let mut completion = 0;
    let results = futures_util::future::join_all(rxs.into_iter().map(collect)).await;
    for (i, c) in results.into_iter().enumerate() {
        let c = c?;
        completion += c.completion_tokens;
        let (ids, ptext) = &prompts[i / n];
        let prefix = if req.echo { ptext.as_str() } else { "" };
        let logprobs = match req.logprobs {
            None => Value::Null,
            Some(_) => {
                let mut infos: Vec<Option<TokenInfo>> = Vec::new();
                let mut all_ids = Vec::new();
                if req.echo {
                    infos.extend(c.prompt.iter().cloned());
                    all_ids.extend(ids.iter().copied());
                }
                infos.extend(c.tokens.iter().cloned().map(Some));
                all_ids.extend(c.tokens.iter().map(|t| t.id));
                openai::completion_logprobs(tok, &infos, &all_ids, 0)
            }
        };
        choices.push(
            json!({"index": i, "text": format!("{prefix}{}", c.text), "logprobs": logprobs,
                            "finish_reason": finish_reason(c.finish)}),
        );
    }
    Ok(Json(
        json!({"id": id, "object": "text_completion", "created": created, "model": st.model_id,
                   "system_fingerprint": Value::Null, "choices": choices,
                   "usage": usage(prompt_tokens, completion)}),
    )
    .into_response())
}

fn completion_stream(
    st: Arc<AppState>,
    rxs: Vec<mpsc::UnboundedReceiver<Event>>,
    id: String,
    created: u64,
    prompts: Vec<(Vec<u32>, String)>,
    prompt_tokens: usize,
    req: &CompletionRequest,
) -> mpsc::Receiver<String> {
    let (tx, out) = mpsc::channel(64);
    let (n, echo, want_lp, include_usage) = (req.common.n, req.echo, req.logprobs.is_some(), req.common.include_usage);
    tokio::spawn(async move {
        let tok = &st.model.tokenizer;
        let chunk = |i: usize, text: &str, lp: Value, finish: Value| {
            frame(
                &json!({"id": id, "object": "text_completion", "created": created, "model": st.model_id,
                          "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": finish}]}),
            )
        };
        let mut events = merged(rxs);
        let mut completion = 0;
        let mut echoed = vec![false; prompts.len() * n];
        while let Some((i, ev)) = events.next().await {
            let (ids, ptext) = &prompts[i / n];
            let mut frames = Vec::new();
            // Echo the prompt ahead of a choice's first generated text.
            if echo && !echoed[i] && !matches!(ev, Event::Prompt(_) if want_lp) {
                echoed[i] = true;
                frames.push(chunk(i, ptext, Value::Null, Value::Null));
            }
            match ev {
                Event::Prompt(infos) => {
                    echoed[i] = true;
                    let lp = openai::completion_logprobs(tok, &infos, ids, 0);
                    frames.push(chunk(i, ptext, lp, Value::Null));
                }
                Event::Delta { text, tokens } => {
                    let lp = if want_lp {
                        let infos: Vec<Option<TokenInfo>> = tokens.iter().cloned().map(Some).collect();
                        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
                        openai::completion_logprobs(tok, &infos, &ids, 0)
                    } else {
                        Value::Null
                    };
                    frames.push(chunk(i, &text, lp, Value::Null));
                }
                Event::Done {
                    finish: Finish::Cancelled,
                    ..
                } => frames.push(stream_error("The request was cancelled: the server is shutting down.")),
                Event::Done {
                    finish,
                    completion_tokens,
                } => {
                    completion += completion_tokens;
                    frames.push(chunk(i, "", Value::Null, finish_reason(Some(finish))));
                }
                Event::Error(m) => frames.push(stream_error(&m)),
            }
            for f in frames {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
        }
        if include_usage {
            let u = frame(
                &json!({"id": id, "object": "text_completion", "created": created, "model": st.model_id,
                                  "choices": [], "usage": usage(prompt_tokens, completion)}),
            );
            if tx.send(u).await.is_err() {
                return;
            }
        }
        let _ = tx.send("data: [DONE]\n\n".to_string()).await;
    });
    out
}
