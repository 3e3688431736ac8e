//! `biomistral serve`: an OpenAI-compatible HTTP server with continuous batching, a chat page,
//! Prometheus metrics and an OpenAPI description.
//!
//! Layout: `openai` (request validation, response shapes), `routes` (HTTP handlers), `scheduler`
//! (the engine thread), `auth`, `metrics`, `openapi`, `page` (the embedded chat page).
//!
//! ```text
//! biomistral serve --model BioMistral/BioMistral-7B [--host 127.0.0.1 --port 8080 --api-key KEY
//!                  --max-batch 8 --max-queue 64 --ctx N --model-id ID --shutdown-timeout 10]
//! ```
//!
//! Tests (`cargo test --test serve`) use the fixture model; two optional ones need outside tools:
//! `openai_python_client` runs when `BIOMISTRAL_PYTHON` names a python with `openai` installed
//! (`scripts/setup-test-venv.sh` makes one and prints its path); `chat_page_in_chromium` runs
//! when `BIOMISTRAL_CHROMIUM_TEST=1`, with `apt-get install -y chromium` and
//! `BIOMISTRAL_PLAYWRIGHT_DIR` set to a folder where `npm i playwright-core` ran.
pub mod auth;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod page;
pub mod routes;
pub mod scheduler;

use crate::error::{Error, Result};
use crate::source::LoadedModel;
use metrics::Metrics;
use scheduler::{EngineConfig, Queue};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port (see `Server::addr`).
    pub port: u16,
    /// When set, every /v1 route needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Sequences decoded together in one forward.
    pub max_batch: usize,
    /// Requests waiting for a batch slot before new ones get 429.
    pub max_queue: usize,
    /// Context limit (prompt + generation); default the model's.
    pub ctx: Option<usize>,
    /// After SIGINT/SIGTERM, how long in-flight requests may run before they are cancelled.
    pub shutdown_timeout: Duration,
    /// The id clients send as `model`; default derived from the model's path or hub id.
    pub model_id: Option<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_batch: 8,
            max_queue: 64,
            ctx: None,
            shutdown_timeout: Duration::from_secs(10),
            model_id: None,
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    pub model: Arc<LoadedModel>,
    pub model_id: String,
    pub aliases: Vec<String>,
    pub ctx: usize,
    pub api_key: Option<String>,
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub created: u64,
}

/// `BioMistral/BioMistral-7B` stays as is; paths become their file or folder name.
pub fn default_model_id(spec: &str) -> String {
    let p = std::path::Path::new(spec);
    if p.exists() {
        let name = if p.is_file() { p.file_stem() } else { p.file_name() };
        if let Some(n) = name.and_then(|n| n.to_str()) {
            return n.to_string();
        }
    }
    spec.trim_end_matches('/').to_string()
}

fn validate(cfg: &ServeConfig, model: &LoadedModel) -> Result<usize> {
    if cfg.max_batch == 0 {
        return Err(Error::invalid("--max-batch", "0 (must be >= 1)"));
    }
    if cfg.max_queue == 0 {
        return Err(Error::invalid("--max-queue", "0 (must be >= 1)"));
    }
    let model_ctx = model.model.cfg.max_position_embeddings;
    match cfg.ctx {
        Some(0) => Err(Error::invalid("--ctx", "0 (must be >= 1)")),
        Some(c) if c > model_ctx => Err(Error::invalid(
            "--ctx",
            format!("{c} is more than the model's context of {model_ctx}"),
        )),
        Some(c) => Ok(c),
        None => Ok(model_ctx),
    }
}

fn bind(cfg: &ServeConfig) -> Result<std::net::TcpListener> {
    let addrs: Vec<SocketAddr> = (cfg.host.as_str(), cfg.port)
        .to_socket_addrs()
        .map_err(|e| Error::invalid("--host", format!("{}: {e}", cfg.host)))?
        .collect();
    let l = std::net::TcpListener::bind(addrs.as_slice())
        .map_err(|e| Error::Msg(format!("cannot listen on {}:{}: {e}", cfg.host, cfg.port)))?;
    l.set_nonblocking(true)
        .map_err(|e| Error::Msg(format!("socket setup: {e}")))?;
    Ok(l)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Msg(format!("starting the async runtime: {e}")))
}

/// Serve until `signal` resolves, then drain: stop accepting, give in-flight requests
/// `shutdown_timeout`, cancel what is left, and return.
async fn serve_on(
    listener: std::net::TcpListener,
    model: LoadedModel,
    cfg: ServeConfig,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let ctx = validate(&cfg, &model)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| Error::Msg(format!("listener: {e}")))?;
    let model = Arc::new(model);
    let metrics = Arc::new(Metrics::default());
    let cancel_all = Arc::new(AtomicBool::new(false));
    let engine_cfg = EngineConfig {
        max_batch: cfg.max_batch,
        max_queue: cfg.max_queue,
        ctx,
    };
    let (queue, engine) = scheduler::start(model.clone(), engine_cfg, metrics.clone(), cancel_all.clone())?;
    let state = Arc::new(AppState {
        model_id: cfg.model_id.clone().unwrap_or_else(|| default_model_id(&model.spec)),
        aliases: vec![model.spec.clone()],
        model,
        ctx,
        api_key: cfg.api_key.clone().filter(|k| !k.is_empty()),
        queue,
        metrics,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    let app = routes::router(state);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signal.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grace = cfg.shutdown_timeout;
    let c = cancel_all.clone();
    let rx = stop_rx.clone();
    tokio::spawn(async move {
        stopped(rx).await;
        tracing::info!("shutting down: waiting up to {grace:?} for in-flight requests");
        tokio::time::sleep(grace).await;
        c.store(true, Ordering::Relaxed);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
    // Connections that outlive the cancellation (a client that never reads) do not hold us.
    let hard_stop = async {
        stopped(stop_rx).await;
        tokio::time::sleep(grace + Duration::from_secs(3)).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| Error::Msg(format!("server: {e}")))?,
        _ = hard_stop => tracing::warn!("shutdown: dropping connections still open"),
    }
    cancel_all.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
    Ok(())
}

/// A server running on a background thread (tests, embedding).
pub struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Server {
    /// Bind (port 0 picks a free one) and serve on a background thread.
    pub fn start(model: LoadedModel, cfg: ServeConfig) -> Result<Server> {
        validate(&cfg, &model)?;
        let listener = bind(&cfg)?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Msg(format!("socket address: {e}")))?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("biomistral-http".into())
            .spawn(move || {
                let rt = runtime()?;
                let r = rt.block_on(serve_on(listener, model, cfg, async {
                    let _ = stop_rx.await;
                }));
                rt.shutdown_timeout(Duration::from_secs(1));
                r
            })
            .map_err(|e| Error::Msg(format!("spawning the server thread: {e}")))?;
        Ok(Server {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful shutdown, as on SIGTERM; returns once the server has stopped.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Msg("the server thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Serve in the foreground until SIGINT or SIGTERM (the `serve` command).
pub fn run(model: LoadedModel, cfg: ServeConfig) -> Result<()> {
    validate(&cfg, &model)?;
    let listener = bind(&cfg)?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Msg(format!("socket address: {e}")))?;
    let rt = runtime()?;
    eprintln!("{}", crate::generate::ADVISORY);
    eprintln!("serving {} on http://{addr} (chat page at /, API at /v1)", model.spec);
    let r = rt.block_on(async move {
        serve_on(listener, model, cfg, async {
            shutdown_signal().await;
            eprintln!("shutting down");
        })
        .await
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    r
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
