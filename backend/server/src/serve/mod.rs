//! HTTP and WebSocket server: the only place (with `shared/`) that knows the wire format.
//!
//! [`app`] builds the router from an [`AppState`] (tests drive it with `tower::ServiceExt::oneshot`);
//! [`serve`] runs it on a listener until a shutdown future resolves.

mod adapt;
mod api;
pub mod auth;
mod corpus;
pub mod error;
mod live;
pub mod origin;
mod runs;
mod v1;
mod ws;

pub use ws::decode_client_message;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::trace::TraceLayer;

use crate::store::{Store, StoreError};

/// Everything `attune serve` needs to know.
#[derive(Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub models_dir: PathBuf,
    /// The built frontend (Trunk's `dist/`).
    pub dist_dir: PathBuf,
    /// Bearer token required on `/api` and `/ws`; mandatory off loopback.
    pub token: Option<String>,
    /// The device model math runs on (reported by `/api/v1/health`).
    pub device: attune_shared::ComputeDevice,
    /// The `--device` spec jobs load models with (`auto`, `cpu`, `cuda:N`).
    pub device_spec: String,
    /// Largest uploaded file, in bytes (413 beyond).
    pub max_upload_bytes: u64,
    /// The `Host` names (beyond loopback) and origins the server answers to.
    pub host_rules: origin::HostRules,
    /// Where uploaded documents are parsed (`attune serve`: PDFs in a limited child process).
    pub document_parser: crate::engine::ingest::DocumentParser,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("data_dir", &self.data_dir)
            .field("models_dir", &self.models_dir)
            .field("dist_dir", &self.dist_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("device", &self.device)
            .field("device_spec", &self.device_spec)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("host_rules", &self.host_rules)
            .field("document_parser", &self.document_parser)
            .finish()
    }
}

impl ServeConfig {
    /// A configuration for `data_dir` with the defaults of `attune serve`.
    pub fn new(data_dir: PathBuf, models_dir: PathBuf, dist_dir: PathBuf) -> Self {
        ServeConfig {
            data_dir,
            models_dir,
            dist_dir,
            token: None,
            device: attune_shared::ComputeDevice::Cpu,
            device_spec: "cpu".into(),
            max_upload_bytes: 50 * 1024 * 1024,
            host_rules: origin::HostRules::default(),
            document_parser: crate::engine::ingest::DocumentParser::InProcess,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {addr} without a token: anyone on the network could use this server; \
         pass --token (or set ATTUNE_TOKEN), or listen on 127.0.0.1"
    )]
    TokenRequired { addr: SocketAddr },
    #[error("the token must be at least 8 characters of A-Z, a-z, 0-9, '-', '_', '.' or '~'")]
    WeakToken,
    #[error(
        "another `attune serve` is using the data directory {} (it holds {}); stop it first, or pass \
         another --data-dir",
        dir.display(), LOCK_FILE
    )]
    DataDirInUse { dir: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ServeConfig {
    /// Checks that the configuration is safe for the address it will listen on.
    pub fn check_for(&self, addr: SocketAddr) -> Result<(), ServeError> {
        match &self.token {
            None if !addr.ip().is_loopback() => Err(ServeError::TokenRequired { addr }),
            Some(token)
                if token.len() < 8 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) =>
            {
                Err(ServeError::WeakToken)
            }
            _ => Ok(()),
        }
    }
}

/// The file in the data directory a running server holds an exclusive lock on.
pub const LOCK_FILE: &str = "attune.lock";

/// Takes the data directory's lock for as long as the returned file lives: a second server on the
/// same folder would mark the first one's jobs interrupted and run them twice.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ServeError> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServeError::DataDirInUse { dir: dir.to_owned() }),
        Err(std::fs::TryLockError::Error(error)) => Err(ServeError::Io(error)),
    }
}

/// Shared state of every handler; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    store: Store,
    config: ServeConfig,
    /// Cancelled when the server shuts down, so long-lived WebSockets close.
    shutdown: CancellationToken,
    /// Job events every WebSocket session forwards.
    events: tokio::sync::broadcast::Sender<attune_shared::ServerMessage>,
    /// Cancel flags of the synthesis runs in progress, by run id.
    jobs: std::sync::Mutex<std::collections::HashMap<i64, Arc<std::sync::atomic::AtomicBool>>>,
    /// The retriever's tokenizer, loaded on first use, for chunking uploads.
    tokenizer: std::sync::OnceLock<tokenizers::Tokenizer>,
    /// Job events to WebSockets, and the live state of unfinished jobs.
    publisher: Arc<live::Publisher>,
    /// The worker that runs training runs and evaluations.
    queue: crate::engine::worker::JobQueue,
    job_context: crate::engine::job::JobContext,
    /// The compute thread that answers chat questions.
    chat: crate::engine::chat::ChatEngine,
    /// Wrong-token attempts per peer.
    failed_attempts: auth::FailedAttempts,
    /// Panics caught in synthesis threads.
    synth_monitor: crate::engine::health::ThreadMonitor,
    /// Synthesis runs' turns per LLM.
    synth_lanes: crate::engine::synth::SynthLanes,
    /// Held (locked) while the state lives.
    _data_dir_lock: std::fs::File,
}

impl std::fmt::Debug for StateInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateInner").field("config", &self.config).finish_non_exhaustive()
    }
}

impl AppState {
    /// Opens the store in `config.data_dir` and assembles the state.
    pub async fn open(config: ServeConfig) -> Result<AppState, ServeError> {
        let data_dir_lock = lock_data_dir(&config.data_dir)?;
        let store = Store::open(&config.data_dir).await?;
        // Runs a stopped server left behind can be resumed; they are not running any more.
        let interrupted = store.interrupt_unfinished_synth_runs().await?;
        if interrupted > 0 {
            tracing::warn!(
                "{interrupted} synthesis run(s) were interrupted by a stop; resume them with POST /api/v1/synth/runs/ID/resume"
            );
        }
        let adapting = store.interrupt_unfinished_adapt_jobs().await?;
        if adapting > 0 {
            tracing::warn!(
                "{adapting} adapt job(s) were interrupted by a stop; resume them with POST /api/v1/adapt/ID/resume"
            );
        }
        let stopped = store.interrupt_unfinished_jobs().await?;
        if stopped > 0 {
            tracing::warn!(
                "{stopped} training run(s) or evaluation(s) were interrupted by a stop; resume runs with POST /api/v1/runs/ID/resume"
            );
        }
        let (events, _) = tokio::sync::broadcast::channel(256);
        let mut initial = live::LiveJobs::default();
        for run in store.runs().await?.into_iter().filter(|r| r.status == attune_shared::JobStatus::Queued) {
            initial.runs.insert(run.id, run);
        }
        for eval in store.evals().await?.into_iter().filter(|e| e.status == attune_shared::JobStatus::Queued) {
            initial.evals.insert(eval.id, eval);
        }
        let publisher = Arc::new(live::Publisher::new(events.clone(), initial));
        let runtime = tokio::runtime::Handle::current();
        let job_context = crate::engine::job::JobContext {
            store: store.clone(),
            runtime: runtime.clone(),
            data_dir: config.data_dir.clone(),
            models_dir: config.models_dir.clone(),
            device_spec: config.device_spec.clone(),
        };
        let sink_publisher = publisher.clone();
        let queue = crate::engine::worker::JobQueue::start(
            job_context.clone(),
            Arc::new(move |event| sink_publisher.publish(event)),
        )
        .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?;
        let chat = crate::engine::chat::ChatEngine::start(crate::engine::chat::ChatContext {
            store: store.clone(),
            runtime,
            index_dir: config.data_dir.join("indexes"),
            device_spec: config.device_spec.clone(),
        })
        .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?;
        Ok(AppState {
            inner: Arc::new(StateInner {
                store,
                config,
                shutdown: CancellationToken::new(),
                events,
                jobs: Default::default(),
                tokenizer: Default::default(),
                publisher,
                queue,
                job_context,
                chat,
                failed_attempts: Default::default(),
                synth_monitor: crate::engine::health::ThreadMonitor::new("synthesis"),
                synth_lanes: Default::default(),
                _data_dir_lock: data_dir_lock,
            }),
        })
    }

    fn publish(&self, event: crate::engine::job::JobEvent) {
        self.inner.publisher.publish(event);
    }

    fn publisher(&self) -> &live::Publisher {
        &self.inner.publisher
    }

    fn queue(&self) -> &crate::engine::worker::JobQueue {
        &self.inner.queue
    }

    fn job_context(&self) -> &crate::engine::job::JobContext {
        &self.inner.job_context
    }

    fn chat(&self) -> &crate::engine::chat::ChatEngine {
        &self.inner.chat
    }

    /// Stops the job worker at a resumable point (the running job is marked interrupted).
    pub async fn stop_jobs(&self) {
        let state = self.clone();
        let _ = tokio::task::spawn_blocking(move || state.inner.queue.shutdown()).await;
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &ServeConfig {
        &self.inner.config
    }

    pub fn events(&self) -> &tokio::sync::broadcast::Sender<attune_shared::ServerMessage> {
        &self.inner.events
    }

    fn jobs(&self) -> &std::sync::Mutex<std::collections::HashMap<i64, Arc<std::sync::atomic::AtomicBool>>> {
        &self.inner.jobs
    }

    /// The default retriever's tokenizer (chunking measures passages with it).
    fn chunking_tokenizer(&self) -> Result<tokenizers::Tokenizer, error::AppError> {
        if let Some(tokenizer) = self.inner.tokenizer.get() {
            return Ok(tokenizer.clone());
        }
        let path = self.config().models_dir.join(crate::model::catalog::DEFAULT_RETRIEVER_NAME).join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            error::AppError::ModelsMissing(format!(
                "cannot load the retriever's tokenizer {}: {e}; run `make models`",
                path.display()
            ))
        })?;
        Ok(self.inner.tokenizer.get_or_init(|| tokenizer).clone())
    }

    fn token(&self) -> Option<&str> {
        self.inner.config.token.as_deref()
    }

    /// One entry per synthesis run in progress, and the panics synthesis threads caught.
    fn synth_health(&self) -> Vec<attune_shared::ThreadHealth> {
        let running = self.jobs().lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect::<Vec<_>>();
        let mut health = self.inner.synth_monitor.health();
        health.state = match running.as_slice() {
            [] => "idle".into(),
            ids => format!("busy: synthesis run(s) {}", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")),
        };
        vec![health]
    }

    fn synth_monitor(&self) -> &crate::engine::health::ThreadMonitor {
        &self.inner.synth_monitor
    }

    fn synth_lanes(&self) -> &crate::engine::synth::SynthLanes {
        &self.inner.synth_lanes
    }

    fn failed_attempts(&self) -> &auth::FailedAttempts {
        &self.inner.failed_attempts
    }

    fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }
}

/// The whole application: `/api/v1/...`, the OpenAI-compatible `/v1/...`, `/ws`, and the
/// frontend from `dist/`.
pub fn app(state: AppState) -> Router {
    let require_token = || middleware::from_fn_with_state(state.clone(), auth::require_token);
    // `layer` (not `route_layer`) so the API's own 404/405 fallbacks are guarded too.
    let api = api::router(state.config().max_upload_bytes).layer(require_token());
    Router::new()
        .nest("/api", api)
        .nest("/v1", v1::router().layer(require_token()))
        .route(attune_shared::WS_PATH, get(ws::upgrade).layer(require_token()))
        .fallback_service(frontend_service(&state.config().dist_dir))
        .layer(middleware::from_fn_with_state(state.clone(), origin::check_host_and_origin))
        // Spans name the path only: the query may carry the WebSocket token.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &axum::extract::Request| {
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
        }))
        .with_state(state)
}

/// Serves the built frontend; unknown paths get `index.html` so client-side routes load.
fn frontend_service(dist_dir: &Path) -> Router {
    let index = dist_dir.join("index.html");
    if index.is_file() {
        Router::new().fallback_service(ServeDir::new(dist_dir).fallback(ServeFile::new(index)))
    } else {
        let message = format!(
            "<!doctype html><title>Attune</title><h1>Attune</h1><p>The web app is not built: \
             <code>{}</code> is missing. Run <code>make run</code>, which builds it; the API is up at \
             <a href=\"/api/v1/health\">/api/v1/health</a>.</p>",
            index.display()
        );
        Router::new().fallback(move || async move {
            (StatusCode::SERVICE_UNAVAILABLE, [(header::CACHE_CONTROL, "no-store")], Html(message)).into_response()
        })
    }
}

/// Runs the app on `listener` until `shutdown` resolves, then closes WebSockets, finishes
/// in-flight requests and closes the database.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    config.check_for(addr)?;
    let state = AppState::open(config).await?;
    let cancel = state.shutdown_token().clone();
    let store = state.store().clone();
    let jobs = state.clone();
    tracing::info!("listening on http://{addr}");
    axum::serve(listener, app(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            cancel.cancel();
        })
        .await?;
    jobs.stop_jobs().await;
    store.close().await;
    Ok(())
}
