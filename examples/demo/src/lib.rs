//! The async-endpoint demo, as a library so tests can build the app in process; `main.rs` runs
//! it (`cargo run -p demo`).
//!
//! One page compares three ways of calling a deliberately slow fake external API
//! ([`external`]): through async-endpoint (202, then polls with progress), a handler that awaits
//! the call, and a handler that calls a blocking client. Settings come from the environment
//! ([`Settings`]): `PORT`, `REDIS_URL`, `SECRET`, `DEMO_ROLE` (or the first argument: `web`,
//! `worker`) and `TOKIO_WORKER_THREADS`.

use std::sync::Arc;

use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub mod external;
mod settings;

pub use external::LookupParams;
pub use settings::{Role, Settings, SettingsError};

/// Where Debian's `libjs-jquery` puts jQuery 3; served at `/vendor/jquery.min.js` when present.
pub const JQUERY_PATH: &str = "/usr/share/javascript/jquery/jquery.min.js";

const INDEX_HTML: &str = include_str!("../assets/index.html");
const STYLE_CSS: &str = include_str!("../assets/style.css");
const APP_JS: &str = include_str!("../assets/app.js");
/// Where the page gets its `<script>` for jQuery, when jQuery is available.
const JQUERY_PLACEHOLDER: &str = "<!-- jquery -->";
/// Everything the page loads comes from this server: no CDN, no inline script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

/// The demo's task: one lookup on the slow fake API, reporting progress as it waits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lookup;

/// What a finished lookup returns to the page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookupOutput {
    /// What the API found.
    pub answer: String,
    /// How long the external call took, in milliseconds.
    pub took_ms: u64,
    /// Which process ran the task (with Redis and separate workers, it differs from the web's).
    pub worker_pid: u32,
}

impl AsyncTask for Lookup {
    const NAME: &'static str = "demo_lookup";
    type Params = LookupParams;
    type Output = LookupOutput;

    async fn execute_task(
        &self,
        params: LookupParams,
        ctx: TaskContext,
    ) -> Result<LookupOutput, Failure> {
        match external::lookup(&params, Some(&ctx)).await {
            Ok(answer) => Ok(LookupOutput {
                answer: answer.answer,
                took_ms: answer.took_ms,
                worker_pid: std::process::id(),
            }),
            Err(error) => Err(Failure::new(error.to_string())),
        }
    }
}

/// Builds the endpoint for `settings`: the in-memory backend, or Redis when `REDIS_URL` is set,
/// or PostgreSQL when `DATABASE_URL` is;
/// workers in this process only for [`Role::All`].
pub async fn endpoint(settings: &Settings) -> Result<AsyncEndpoint, async_endpoint::Error> {
    let builder = AsyncEndpoint::builder()
        .task(Lookup)
        .in_process_workers(settings.role == Role::All);
    // From `SECRET`; without it (in-memory only) the library makes a random key of this process.
    let builder = match &settings.secret {
        Some(secret) => builder.secret(secret.as_bytes()),
        None => builder,
    };
    let builder = match &settings.redis_url {
        // `connect` checks that Redis answers, so a wrong URL fails at start, not on first use.
        Some(url) => builder.backend(async_endpoint::backend::RedisBackend::connect(url).await?),
        None => builder,
    };
    let builder = match &settings.database_url {
        // `connect` also creates or migrates the schema, so a wrong URL fails at start.
        Some(url) => builder.backend(async_endpoint::backend::PostgresBackend::connect(url).await?),
        None => builder,
    };
    builder.build()
}

/// What the page shows about the server it talks to (`GET /api/info`).
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// `memory`, `redis` or `postgres`.
    pub backend: &'static str,
    /// `web + workers` or `web`.
    pub role: &'static str,
    /// This process's id.
    pub pid: u32,
    /// Worker threads of this process's Tokio runtime (what a blocking call takes away).
    pub runtime_threads: usize,
    /// Whether jQuery is served (and the jQuery example shown).
    pub jquery: bool,
}

struct AppState {
    info: Info,
    index_html: String,
    jquery: Option<Bytes>,
}

/// The demo's router. `jquery` is the jQuery source to serve at `/vendor/jquery.min.js` (see
/// [`load_jquery`]); without it the page hides its jQuery example.
pub fn router(
    endpoint: &AsyncEndpoint,
    settings: &Settings,
    runtime_threads: usize,
    jquery: Option<Bytes>,
) -> Router {
    let info = Info {
        backend: if settings.redis_url.is_some() {
            "redis"
        } else if settings.database_url.is_some() {
            "postgres"
        } else {
            "memory"
        },
        role: settings.role.label(),
        pid: std::process::id(),
        runtime_threads,
        jquery: jquery.is_some(),
    };
    let script = if jquery.is_some() {
        r#"<script src="/vendor/jquery.min.js"></script>"#
    } else {
        ""
    };
    prometheus();
    let state = Arc::new(AppState {
        info,
        index_html: INDEX_HTML.replace(JQUERY_PLACEHOLDER, script),
        jquery,
    });
    Router::new()
        .route("/", get(index))
        .route("/style.css", get(style))
        .route("/app.js", get(app_js))
        .route(async_endpoint::js::PATH, get(async_endpoint::js::serve))
        .route("/vendor/jquery.min.js", get(jquery_js))
        .route("/api/lookup", get(lookup))
        .route("/api/external", get(external_api))
        .route("/sync/await", get(sync_await))
        .route("/sync/blocking", get(sync_blocking))
        .route("/api/heartbeat", get(heartbeat))
        .route("/api/info", get(server_info))
        .route("/metrics", get(prometheus_metrics))
        .with_state(state)
        .layer(endpoint.layer())
}

/// Reads Debian's jQuery if it is installed; `None` (and a log line) otherwise.
pub fn load_jquery() -> Option<Bytes> {
    match std::fs::read(JQUERY_PATH) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(error) => {
            tracing::info!(
                path = JQUERY_PATH,
                %error,
                "jQuery not found (install libjs-jquery): the jQuery example is hidden"
            );
            None
        }
    }
}

/// The async endpoint: the original gem's `init(params)` + `handle(done, failed)`.
async fn lookup(Query(params): Query<LookupParams>, request: AsyncRequest<Lookup>) -> Response {
    request
        .init(params.clamped())
        .handle(
            |out| Json(json!({ "answer": out.answer, "took_ms": out.took_ms, "worker_pid": out.worker_pid })),
            |failure| Json(json!({ "error": failure.message() })),
        )
        .await
}

/// The fake external API itself, over HTTP (for curl): 200 with the answer, or 503.
async fn external_api(Query(params): Query<LookupParams>) -> Response {
    match external::lookup(&params, None).await {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error.to_string() })),
        )
            .into_response(),
    }
}

/// Synchronous, the usual way: the handler awaits the slow call. The connection is held for the
/// whole call and nobody sees progress, but the runtime thread is free meanwhile.
async fn sync_await(Query(params): Query<LookupParams>) -> Response {
    sync_response(external::lookup(&params, None).await)
}

/// Synchronous with a blocking client inside the async handler: the runtime worker thread
/// sleeps for the whole call, so every other task scheduled on it (other requests, polls,
/// in-process workers) waits too. This is the mistake the demo exists to show.
async fn sync_blocking(Query(params): Query<LookupParams>) -> Response {
    sync_response(external::lookup_blocking(&params))
}

fn sync_response(result: Result<external::Answer, external::ApiError>) -> Response {
    let mut response = match result {
        Ok(answer) => Json(json!({
            "answer": answer.answer,
            "took_ms": answer.took_ms,
            "worker_pid": std::process::id(),
        }))
        .into_response(),
        Err(error) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": error.to_string() })),
        )
            .into_response(),
    };
    no_store(&mut response);
    response
}

/// A fast endpoint the page calls every 200 ms: it stalls when the runtime is blocked.
async fn heartbeat() -> Response {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut response = Json(json!({ "now_ms": now_ms })).into_response();
    no_store(&mut response);
    response
}

/// The process's Prometheus recorder: installed as the global `metrics` recorder on first use
/// (the first router built); when another recorder was installed first, a private one whose text
/// stays empty.
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = metrics_exporter_prometheus::PrometheusBuilder::new;
        builder()
            .install_recorder()
            .unwrap_or_else(|_| builder().build_recorder().handle())
    })
}

/// `GET /metrics`: the library's metrics (README, "Metrics") in Prometheus text.
async fn prometheus_metrics() -> Response {
    let handle = prometheus();
    // Upkeep (histogram buckets) at each scrape: a scraper calls often enough.
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

async fn server_info(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let mut info = serde_json::to_value(&state.info).unwrap_or_default();
    // How many fake external calls were stopped midway (their task cancelled), in this process.
    info["external_calls_stopped"] = json!(external::calls_stopped());
    Json(info)
}

async fn index(State(state): State<Arc<AppState>>) -> Response {
    let mut response = asset("text/html; charset=utf-8", state.index_html.clone());
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn jquery_js(State(state): State<Arc<AppState>>) -> Response {
    match &state.jquery {
        Some(source) => asset("text/javascript; charset=utf-8", source.clone()),
        None => (
            StatusCode::NOT_FOUND,
            "jQuery is not installed (libjs-jquery)\n",
        )
            .into_response(),
    }
}

/// A static asset; `no-cache` so an edited demo is never shown stale.
fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}
