//! The servers under test, each run as its own process (`bench serve <kind> [--option value]…`):
//!
//! * `bare`: plain axum handlers: `/bare` (JSON), `/floor` (JSON of one Redis hash field read over
//!   a `ConnectionManager`, the connection kind the Redis backend uses), `/slow-await` (awaits the
//!   slow upstream), `/slow-blocking` (calls it with a blocking client, as a blocking SDK would);
//! * `ae`: async-endpoint on the memory or Redis backend with the bench tasks, plus `/bare`; the
//!   owner is the `X-Owner` header, if any (`--max-pending-per-owner N|off` sets its limit);
//! * `worker`: an async-endpoint worker-only process on Redis (stops on SIGTERM);
//! * `upstream`: the slow fake upstream (answers after `--delay-ms`, default 1000).
//!
//! Each prints `READY <port>` once it listens on 127.0.0.1.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_endpoint::backend::{MemoryBackend, RedisBackend};
use async_endpoint::{
    AsyncEndpoint, AsyncEndpointBuilder, AsyncRequest, AsyncTask, Failure, TaskContext,
};
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::client;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) const SECRET: &[u8] = b"benchmark secret: 32 bytes or more of key material";
/// The hash the floor handler reads.
pub(crate) const FLOOR_KEY: &str = "bench:floor";

/// `--key value` pairs.
pub(crate) struct Opts(HashMap<String, String>);

impl Opts {
    pub(crate) fn parse(args: &[String]) -> Opts {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            if let Some(k) = k.strip_prefix("--") {
                map.insert(k.to_owned(), it.next().cloned().unwrap_or_default());
            }
        }
        Opts(map)
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub(crate) fn num(&self, k: &str, default: u64) -> u64 {
        self.get(k).and_then(|v| v.parse().ok()).unwrap_or(default)
    }
}

pub(crate) fn main(args: &[String]) -> Result<(), BoxError> {
    let kind = args.first().map(String::as_str).unwrap_or("");
    let opts = Opts::parse(args.get(1..).unwrap_or(&[]));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match kind {
            "bare" => bare(&opts).await,
            "ae" => ae(&opts).await,
            "worker" => worker(&opts).await,
            "upstream" => upstream(&opts).await,
            other => Err(format!("unknown server kind {other:?}").into()),
        }
    })
}

async fn listen(app: Router) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {port}")?;
    out.flush()?;
    drop(out);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn bare_json() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn bare(opts: &Opts) -> Result<(), BoxError> {
    let upstream = Arc::new(opts.get("upstream").unwrap_or("127.0.0.1:9").to_owned());
    let mut app = Router::new()
        .route("/bare", get(bare_json))
        .route("/fast", get(bare_json))
        .route(
            "/hold",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(120)).await;
                Json(json!({ "status": "ok" }))
            }),
        );
    if let Some(url) = opts.get("redis") {
        let conn = redis::Client::open(url)?.get_connection_manager().await?;
        app = app.route(
            "/floor",
            get(move || {
                let mut conn = conn.clone();
                async move {
                    let value: redis::RedisResult<Option<String>> = redis::cmd("HGET")
                        .arg(FLOOR_KEY)
                        .arg("s")
                        .query_async(&mut conn)
                        .await;
                    match value {
                        Ok(v) => Json(json!({ "status": v })).into_response(),
                        Err(_) => axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    }
                }
            }),
        );
    }
    let up = upstream.clone();
    app = app
        .route(
            "/slow-await",
            get(move || {
                let up = up.clone();
                async move {
                    match client::async_get(&up, "/").await {
                        Ok(body) => Json(json!({ "bytes": body.len() })).into_response(),
                        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                    }
                }
            }),
        )
        .route(
            "/slow-blocking",
            get(move || {
                let up = upstream.clone();
                async move {
                    // Deliberately blocking inside the async handler, as a blocking SDK would.
                    match client::blocking_get(&up, "/") {
                        Ok(body) => Json(json!({ "bytes": body.len() })).into_response(),
                        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                    }
                }
            }),
        );
    listen(app).await
}

/// The trivial job: doubles its input.
struct Noop;
impl AsyncTask for Noop {
    const NAME: &'static str = "noop";
    type Params = u64;
    type Output = u64;
    async fn execute_task(&self, n: u64, _ctx: TaskContext) -> Result<u64, Failure> {
        Ok(n * 2)
    }
}

/// Never finishes before its deadline: a request that stays pending.
struct Park {
    deadline: Duration,
}
impl AsyncTask for Park {
    const NAME: &'static str = "park";
    type Params = u64;
    type Output = u64;
    async fn execute_task(&self, n: u64, _ctx: TaskContext) -> Result<u64, Failure> {
        tokio::time::sleep(Duration::from_secs(86_400)).await;
        Ok(n)
    }
    fn deadline(&self) -> Option<Duration> {
        Some(self.deadline)
    }
}

/// Answers its tag with the id of the process that ran it (load across processes: `--echo 1`).
struct Echo;
impl AsyncTask for Echo {
    const NAME: &'static str = "echo";
    type Params = String;
    type Output = (String, u32);
    async fn execute_task(&self, tag: String, _ctx: TaskContext) -> Result<(String, u32), Failure> {
        Ok((tag, std::process::id()))
    }
}

/// The params of [`Mark`]: a tag, and how long the task holds after its first line.
#[derive(serde::Serialize, serde::Deserialize, Default)]
#[serde(default)]
pub(crate) struct MarkParams {
    tag: String,
    hold_ms: u64,
}

/// Its first line prints `STARTED <tag> <wall µs> <pid>` to the process's stdout (for tags
/// starting with `m-`: the samples of enqueue-to-start latency and of takeover; a backlog's jobs
/// stay quiet), then it holds `hold_ms` and answers its tag (`--mark 1`).
struct Mark;
impl AsyncTask for Mark {
    const NAME: &'static str = "mark";
    type Params = MarkParams;
    type Output = String;
    async fn execute_task(&self, p: MarkParams, _ctx: TaskContext) -> Result<String, Failure> {
        if p.tag.starts_with("m-") {
            let line = format!("STARTED {} {} {}\n", p.tag, wall_us(), std::process::id());
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line.as_bytes());
            let _ = out.flush();
        }
        if p.hold_ms > 0 {
            tokio::time::sleep(Duration::from_millis(p.hold_ms)).await;
        }
        Ok(p.tag)
    }
}

/// Wall-clock time, µs since the Unix epoch (the same clock in every process of the machine).
pub(crate) fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sleeps the given milliseconds and answers the wall-clock time it finished (unix ms, fractional).
struct Timed;
impl AsyncTask for Timed {
    const NAME: &'static str = "timed";
    type Params = u64;
    type Output = f64;
    async fn execute_task(&self, ms: u64, _ctx: TaskContext) -> Result<f64, Failure> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(wall_ms())
    }
}

/// The drain item's task: ships an order (its params are a realistic ~100 bytes).
struct Ship;
impl AsyncTask for Ship {
    const NAME: &'static str = SHIP_TASK;
    type Params = Order;
    type Output = Shipped;
    async fn execute_task(&self, order: Order, _ctx: TaskContext) -> Result<Shipped, Failure> {
        Ok(shipped(&order))
    }
}

/// The name of [`Ship`].
pub(crate) const SHIP_TASK: &str = "ship";

/// [`Ship`]'s params.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Order {
    order: u64,
    customer: String,
    sku: String,
    quantity: u32,
    note: String,
}

/// [`Ship`]'s output.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct Shipped {
    order: u64,
    total_cents: u64,
}

fn order(i: u64) -> Order {
    Order {
        order: 1_000_000 + i,
        customer: format!("c{:07}@example.com", i % 9_999_991),
        sku: format!("SKU-{:06}", i % 100_003),
        quantity: (i % 5 + 1) as u32,
        note: "Leave at the door".to_owned(),
    }
}

fn shipped(order: &Order) -> Shipped {
    Shipped {
        order: order.order,
        total_cents: u64::from(order.quantity) * 1299,
    }
}

/// Request `i`'s params as JSON.
pub(crate) fn ship_params(i: u64) -> String {
    serde_json::to_string(&order(i)).unwrap_or_default()
}

/// The output [`Ship`] computes for request `i`, as JSON (as the worker stores it).
pub(crate) fn ship_output(i: u64) -> String {
    serde_json::to_string(&shipped(&order(i))).unwrap_or_default()
}

/// Calls the slow upstream, awaiting it.
struct Upstream {
    addr: String,
}
impl AsyncTask for Upstream {
    const NAME: &'static str = "upstream";
    type Params = u64;
    type Output = usize;
    async fn execute_task(&self, _n: u64, _ctx: TaskContext) -> Result<usize, Failure> {
        client::async_get(&self.addr, "/")
            .await
            .map(|b| b.len())
            .map_err(|_| Failure::new("upstream unreachable"))
    }
}

/// Calls the slow upstream with the blocking client right inside the task.
struct UpstreamBlocking {
    addr: String,
}
impl AsyncTask for UpstreamBlocking {
    const NAME: &'static str = "upstream_blocking";
    type Params = u64;
    type Output = usize;
    async fn execute_task(&self, _n: u64, _ctx: TaskContext) -> Result<usize, Failure> {
        client::blocking_get(&self.addr, "/")
            .map(|b| b.len())
            .map_err(|_| Failure::new("upstream unreachable"))
    }
}

pub(crate) fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `--max-pending-per-owner N|off`: the endpoint's per-owner limit (the library's default
/// when absent).
fn per_owner_limit(builder: AsyncEndpointBuilder, opts: &Opts) -> AsyncEndpointBuilder {
    match opts.get("max-pending-per-owner") {
        Some("off") => builder.max_pending_per_owner(None),
        Some(n) => match n.parse::<u32>() {
            Ok(n) => builder.max_pending_per_owner(n),
            Err(_) => builder,
        },
        None => builder,
    }
}

fn builder(opts: &Opts) -> AsyncEndpointBuilder {
    let ttl = Duration::from_millis(opts.num("ttl-ms", 3_600_000));
    let deadline = Duration::from_millis(opts.num("deadline-ms", 3_000_000));
    let upstream = opts.get("upstream").unwrap_or("127.0.0.1:9").to_owned();
    let builder = AsyncEndpoint::builder();
    // Only the processes of the load across processes know `echo`, so the other items' workers
    // read the same streams as before.
    let builder = if opts.get("echo").is_some() {
        builder.task(Echo)
    } else {
        builder
    };
    // Likewise only the drain item's worker knows `ship`.
    let builder = if opts.get("ship").is_some() {
        builder.task(Ship)
    } else {
        builder
    };
    let builder = if opts.get("mark").is_some() {
        builder.task(Mark)
    } else {
        builder
    };
    per_owner_limit(builder, opts)
        // Owners from a header: only requests that carry it have one (the flood item's do).
        .owner(|parts| {
            parts
                .headers
                .get("x-owner")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .secret(SECRET)
        .ttl(ttl)
        .deadline(deadline)
        .max_wait(Duration::from_secs(opts.num("max-wait-s", 25)))
        .concurrency(opts.num("concurrency", 64) as usize)
        .in_process_workers(opts.get("workers") != Some("off"))
        .task(Noop)
        .task(Park { deadline })
        .task(Timed)
        .task(Upstream {
            addr: upstream.clone(),
        })
        .task(UpstreamBlocking { addr: upstream })
}

fn with_backend(
    opts: &Opts,
    builder: AsyncEndpointBuilder,
) -> Result<AsyncEndpointBuilder, BoxError> {
    Ok(match (opts.get("backend"), opts.get("redis")) {
        (Some("redis"), Some(url)) => builder.backend(
            RedisBackend::builder(url)
                .prefix(opts.get("prefix").unwrap_or("ae"))
                .build()?,
        ),
        (Some("redis"), None) => return Err("--backend redis needs --redis URL".into()),
        _ => builder.backend(MemoryBackend::new()),
    })
}

async fn done_json<T: serde::Serialize>(
    r: AsyncRequest<impl AsyncTask<Params = u64, Output = T>>,
    p: u64,
) -> Response {
    r.init(p)
        .handle(|out| Json(out), |f| Json(f.message().to_owned()))
        .await
}

#[derive(serde::Deserialize)]
struct Tag {
    tag: Option<String>,
}

#[derive(serde::Deserialize)]
struct Ms {
    ms: Option<u64>,
}

async fn ae(opts: &Opts) -> Result<(), BoxError> {
    let endpoint = with_backend(opts, builder(opts))?.build()?;
    let tasks = Router::new()
        .route("/noop", get(|r: AsyncRequest<Noop>| done_json(r, 21)))
        .route("/park", get(|r: AsyncRequest<Park>| done_json(r, 0)))
        .route(
            "/timed",
            get(|r: AsyncRequest<Timed>, Query(q): Query<Ms>| done_json(r, q.ms.unwrap_or(0))),
        )
        .route("/slow", get(|r: AsyncRequest<Upstream>| done_json(r, 0)))
        .route(
            "/slow-blocking",
            get(|r: AsyncRequest<UpstreamBlocking>| done_json(r, 0)),
        );
    let tasks = if opts.get("mark").is_some() {
        tasks.route(
            "/mark",
            get(
                |r: AsyncRequest<Mark>, Query(q): Query<MarkParams>| async move {
                    r.init(q)
                        .handle(Json, |f| Json(f.message().to_owned()))
                        .await
                },
            ),
        )
    } else {
        tasks
    };
    let tasks = if opts.get("echo").is_some() {
        tasks.route(
            "/echo",
            get(|r: AsyncRequest<Echo>, Query(q): Query<Tag>| async move {
                r.init(q.tag.unwrap_or_default())
                    .handle(Json, |f| Json(f.message().to_owned()))
                    .await
            }),
        )
    } else {
        tasks
    }
    .layer(endpoint.layer());
    let app = Router::new()
        .route("/bare", get(bare_json))
        .route("/fast", get(bare_json))
        .merge(tasks);
    listen(app).await
}

async fn worker(opts: &Opts) -> Result<(), BoxError> {
    if opts.get("log") == Some("warn") {
        // Warnings and errors to stderr (the process's log file), where the runner counts them.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let endpoint = with_backend(opts, builder(opts).in_process_workers(false))?.build()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY 0")?;
    out.flush()?;
    drop(out);
    endpoint
        .run_worker(async move {
            term.recv().await;
        })
        .await;
    Ok(())
}

async fn upstream(opts: &Opts) -> Result<(), BoxError> {
    let delay = Duration::from_millis(opts.num("delay-ms", 1000));
    let app = Router::new().route(
        "/",
        get(move || async move {
            tokio::time::sleep(delay).await;
            "upstream answer"
        }),
    );
    listen(app).await
}
