//! [`AsyncEndpoint`] and its builder.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Backend, DynBackend, SharedBackend};
use crate::engine::{Config, Engine, ErasedTask, OwnerFn, bad};
use crate::error::Error;
use crate::keys::{Sharing, keyring};
use crate::task::AsyncTask;

/// The configured engine: tasks, backend, keys and settings. Cheap to clone.
///
/// Build it once at start-up, add [`layer()`](Self::layer) to the router, and use the
/// [`AsyncRequest`](crate::AsyncRequest) extractor in handlers.
///
/// ```
/// use async_endpoint::{AsyncEndpoint, AsyncTask, Failure, TaskContext};
/// use std::time::Duration;
///
/// struct Slow;
/// impl AsyncTask for Slow {
///     const NAME: &'static str = "slow";
///     type Params = u64;
///     type Output = u64;
///     async fn execute_task(&self, n: u64, _ctx: TaskContext) -> Result<u64, Failure> {
///         Ok(n * 2)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
/// // In-memory backend: no secret needed (a random key per process).
/// let endpoint = AsyncEndpoint::builder()
///     .task(Slow)
///     .deadline(Duration::from_secs(30))
///     .build()?;
/// let app: axum::Router = axum::Router::new().layer(endpoint.layer());
/// endpoint.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncEndpoint {
    pub(crate) engine: Arc<Engine>,
    workers: Arc<Workers>,
}

struct Workers {
    stop: watch::Sender<bool>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AsyncEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEndpoint")
            .field("tasks", &self.engine.task_names)
            .field("config", &self.engine.config)
            .finish_non_exhaustive()
    }
}

impl AsyncEndpoint {
    /// Starts configuring an endpoint. See [`AsyncEndpointBuilder`] for every setting.
    pub fn builder() -> AsyncEndpointBuilder {
        AsyncEndpointBuilder::default()
    }

    /// Runs a worker in the current task until `shutdown` completes, then shuts it down gracefully
    /// (stops fetching, lets running tasks finish within `shutdown_grace`, hands the rest back).
    ///
    /// Use it in worker-only processes, built with `.in_process_workers(false)`.
    ///
    /// ```no_run
    /// # use async_endpoint::AsyncEndpoint;
    /// # async fn f(endpoint: AsyncEndpoint) {
    /// endpoint.run_worker(async { let _ = tokio::signal::ctrl_c().await; }).await;
    /// # }
    /// ```
    pub async fn run_worker(&self, shutdown: impl Future<Output = ()> + Send) {
        crate::worker::run(self.engine.clone(), shutdown).await;
    }

    /// Stops the in-process workers gracefully and waits for them (at most `shutdown_grace` plus
    /// the time to hand unfinished jobs back). Polls keep working; new requests stay queued.
    pub async fn shutdown(&self) {
        let _ = self.workers.stop.send(true);
        let handle = self
            .workers
            .handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            if let Err(error) = handle.await {
                tracing::error!(%error, "worker task ended abnormally");
            }
        }
    }
}

/// Builds an [`AsyncEndpoint`]; `build()` checks every setting and names the bad one.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `secret` | random per process (in-memory backend); required otherwise | HMAC key for tokens, ≥ 32 bytes |
/// | `old_secret` | none | keys still accepted for verification (rotation) |
/// | `task` | at least one | a task type the endpoint runs |
/// | `backend` | in-memory | storage and queue |
/// | `redis` | none | shorthand for the Redis backend at a URL (feature `redis`) |
/// | `postgres` | none | shorthand for the PostgreSQL backend at a URL (feature `postgres`) |
/// | `deadline` | 60 s | time from start until an unfinished request fails (per-task override) |
/// | `ttl` | 1 h | how long a record (and its token) lives after its last write; > every deadline |
/// | `max_params_bytes` | 64 KiB | largest serialized params |
/// | `max_wait` | 25 s | cap on `Prefer: wait=N`; 0 disables waiting polls |
/// | `retry_after` | 1 s | `Retry-After` sent with 202 |
/// | `concurrency` | 64 | tasks run at once per worker process |
/// | `progress_interval` | 250 ms | minimum time between progress writes |
/// | `shutdown_grace` | 30 s | time running tasks get to finish on shutdown |
/// | `task_threads` | CPUs (≥ 2) | threads of the runtime tasks run on, apart from the app's; 0 = the app's |
/// | `in_process_workers` | true | run workers inside this process |
/// | `owner` | none | derives an owner from the request; tokens bind it |
/// | `trace_context` | off | carries the start's W3C `traceparent` to the worker's span of the task |
/// | `internal_error_message` | generic | client message for panics and internal errors |
/// | `timeout_message` | generic | client message for a passed deadline |
/// | `cancelled_message` | generic | client message for a cancelled request |
/// | `max_pending_per_owner` | 200 | most pending requests of one owner (needs `owner`); over it a start answers 429; `None` = no limit |
/// | `max_pending_per_task` | none | most pending requests of one task, all owners together; over it a start answers 429 |
/// | `stream_path` | `/async-endpoint/stream` | where the layer serves the event stream (`POST`); named in every 202's `Link` header |
/// | `stream_max_requests` | 100 | most requests one event stream follows (more: 413) |
/// | `stream_lifetime` | 55 s | how long one event stream stays open before the client reconnects |
/// | `stream_heartbeat` | 15 s | time between heartbeats (SSE comments) on an event stream |
#[must_use]
#[derive(Default)]
pub struct AsyncEndpointBuilder {
    secret: Option<Vec<u8>>,
    old_secrets: Vec<Vec<u8>>,
    tasks: Vec<(&'static str, Arc<dyn ErasedTask>)>,
    backend: Option<SharedBackend>,
    /// Whether `backend` is the in-memory one (its requests never leave this process).
    backend_is_local: bool,
    #[cfg(feature = "redis")]
    redis_url: Option<String>,
    #[cfg(feature = "postgres")]
    postgres_url: Option<String>,
    owner: Option<OwnerFn>,
    trace: crate::trace::TraceHooks,
    /// Every other setting, with its default.
    config: Config,
}

impl std::fmt::Debug for AsyncEndpointBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEndpointBuilder")
            .field("tasks", &self.tasks.iter().map(|t| t.0).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AsyncEndpointBuilder {
    /// The key that signs tokens (HMAC-SHA256): at least 32 bytes, the same in every process
    /// that shares the backend, kept out of the code (read it from the environment).
    ///
    /// Required with a backend other processes share (Redis, or one of the app's own). With the
    /// in-memory backend it may be left out: tokens are then signed with a random key made at
    /// start-up, which dies with the process just as its requests do. `build()` refuses keys
    /// shorter than 32 bytes and the example keys printed in this project's docs.
    ///
    /// ```no_run
    /// # use async_endpoint::AsyncEndpoint;
    /// let secret = std::env::var("ASYNC_ENDPOINT_SECRET").expect("ASYNC_ENDPOINT_SECRET is set");
    /// let builder = AsyncEndpoint::builder().secret(secret);
    /// ```
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }

    /// A previous key, still accepted when verifying tokens but never used to sign (key
    /// rotation). May be called several times.
    pub fn old_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.old_secrets.push(secret.as_ref().to_vec());
        self
    }

    /// Registers a task type. Call once per task.
    pub fn task<T: AsyncTask>(mut self, task: T) -> Self {
        self.tasks.push((T::NAME, Arc::new(task)));
        self
    }

    /// Uses `backend` for storage and queue instead of the in-memory default.
    pub fn backend<B: Backend + 'static>(mut self, backend: B) -> Self {
        self.backend_is_local = is_memory::<B>();
        self.backend = Some(DynBackend::new_arc(backend));
        self
    }

    /// Uses the Redis backend at `url` with its default settings (feature `redis`); shorthand
    /// for `.backend(RedisBackend::builder(url).build()?)`, whose builder has the other settings.
    /// Nothing connects until the first command, so a bad URL is reported by `build()` but an
    /// unreachable Redis is not (requests answer 503 until it is back).
    ///
    /// ```
    /// # use async_endpoint::AsyncEndpoint;
    /// let builder = AsyncEndpoint::builder().redis("redis://127.0.0.1:6379/");
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Uses the PostgreSQL backend at `url` with its default settings (feature `postgres`);
    /// shorthand for `.backend(PostgresBackend::builder(url).build()?)`, whose builder has the
    /// other settings (schema, lease, pool). Nothing connects until the first operation, which
    /// also creates or migrates the schema; an unreachable PostgreSQL answers 503 until it is
    /// back. Like Redis, a backend other processes share: `build()` requires `secret`.
    ///
    /// ```
    /// # use async_endpoint::AsyncEndpoint;
    /// let builder = AsyncEndpoint::builder().postgres("postgres://app@127.0.0.1:5432/app");
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.postgres_url = Some(url.into());
        self
    }

    /// Derives an owner string (e.g. the user id) from each request; tokens are bound to it, so a
    /// token leaked to another user is useless to them. Return `None` for anonymous requests.
    ///
    /// ```
    /// # use async_endpoint::AsyncEndpoint;
    /// let builder = AsyncEndpoint::builder().owner(|parts| {
    ///     parts.headers.get("x-user-id")?.to_str().ok().map(str::to_owned)
    /// });
    /// ```
    pub fn owner<F>(mut self, owner: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.owner = Some(Arc::new(owner));
        self
    }

    /// Carries trace context from each start to its job (off by default): `capture` returns the
    /// W3C `traceparent` of the current span when a handler starts a request (the HTTP
    /// request's span); it is stored with the job, and in the worker that runs it (any process)
    /// `link` gets the worker's span of the task (`async_request`) and that `traceparent`, to
    /// make the span its child. Values that are not a `traceparent` ([`is_traceparent`]) are
    /// not stored.
    ///
    /// The library carries the string and does not depend on OpenTelemetry: the app's own
    /// `opentelemetry` / `tracing-opentelemetry` versions fill the hooks (README, "Traces").
    ///
    /// ```
    /// # use async_endpoint::AsyncEndpoint;
    /// let builder = AsyncEndpoint::builder().trace_context(
    ///     || Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
    ///     |span, traceparent| {
    ///         span.record("parent", traceparent);
    ///     },
    /// );
    /// ```
    ///
    /// [`is_traceparent`]: crate::is_traceparent
    pub fn trace_context<C, L>(mut self, capture: C, link: L) -> Self
    where
        C: Fn() -> Option<String> + Send + Sync + 'static,
        L: Fn(&tracing::Span, &str) + Send + Sync + 'static,
    {
        self.trace = crate::trace::TraceHooks {
            capture: Some(Arc::new(capture)),
            link: Some(Arc::new(link)),
        };
        self
    }

    /// Whether this process runs workers (default `true`). Set `false` for web-only processes
    /// whose jobs are run by separate worker processes ([`AsyncEndpoint::run_worker`]).
    pub fn in_process_workers(mut self, enabled: bool) -> Self {
        self.config.in_process_workers = enabled;
        self
    }

    /// Default deadline, counted from the start request (default 60 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = deadline;
        self
    }

    /// Record and token lifetime after the last write (default 1 h). Must exceed every deadline.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// Largest serialized params in bytes (default 64 KiB). A start with larger params answers
    /// `413` problem+json and enqueues nothing.
    pub fn max_params_bytes(mut self, bytes: usize) -> Self {
        self.config.max_params_bytes = bytes;
        self
    }

    /// Cap on waiting polls (`Prefer: wait=N`), default 25 s: below common proxy timeouts.
    /// `Duration::ZERO` disables waiting polls.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.config.max_wait = max_wait;
        self
    }

    /// Where the layer serves the event stream (default `/async-endpoint/stream`): a `POST` with
    /// `{"requests": [{"async_request_id", "async_request_token"}]}` answered with server-sent
    /// events for every request named. Each 202 names it in a `Link` header (rel
    /// `async-endpoint-stream`), so the JS client needs no setting. Set it when the layer sits in a
    /// nested router or the default path is taken.
    pub fn stream_path(mut self, path: impl Into<String>) -> Self {
        self.config.stream_path = path.into();
        self
    }

    /// Most requests one event stream follows (default 100); a stream request naming more answers
    /// 413. The JS client short-polls the rest.
    pub fn stream_max_requests(mut self, max: usize) -> Self {
        self.config.stream_max_requests = max;
        self
    }

    /// How long one event stream stays open (default 55 s, below common proxy limits): it then
    /// ends with a `reconnect` event and the client opens a new one, getting every state first.
    pub fn stream_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.stream_lifetime = lifetime;
        self
    }

    /// Time between heartbeats on an idle event stream (default 15 s): SSE comments that keep
    /// proxies from closing it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use async_endpoint::AsyncEndpoint;
    ///
    /// let builder = AsyncEndpoint::builder()
    ///     .stream_path("/api/async-stream")
    ///     .stream_max_requests(50)
    ///     .stream_lifetime(Duration::from_secs(25))
    ///     .stream_heartbeat(Duration::from_secs(10));
    /// ```
    pub fn stream_heartbeat(mut self, every: Duration) -> Self {
        self.config.stream_heartbeat = every;
        self
    }

    /// The `Retry-After` hint sent with each 202, whole seconds (default 1 s).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.config.retry_after = retry_after;
        self
    }

    /// Tasks run at once by this process's workers (default 64).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency;
        self
    }

    /// Minimum time between two progress writes of one request (default 250 ms).
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.config.progress_interval = interval;
        self
    }

    /// Time running tasks get to finish on shutdown before they are handed back (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Threads of the runtime that task attempts run on (default: the number of CPUs, at least
    /// 2). Tasks run apart from the app's runtime so that one that blocks — a blocking SDK call,
    /// heavy computation — holds one of these threads and never stalls handlers, polls or the
    /// worker itself. Raise it when tasks block often (each blocked task holds a thread), or wrap
    /// such calls in `tokio::task::spawn_blocking`. `0` runs tasks on the app's own runtime.
    pub fn task_threads(mut self, threads: usize) -> Self {
        self.config.task_threads = threads;
        self
    }

    /// The client's message when a task panics or hits an internal error.
    pub fn internal_error_message(mut self, message: impl Into<String>) -> Self {
        self.config.internal_error_message = message.into();
        self
    }

    /// The client's message when a request's deadline passes.
    pub fn timeout_message(mut self, message: impl Into<String>) -> Self {
        self.config.timeout_message = message.into();
        self
    }

    /// The client's message when a request was cancelled (a `DELETE` with its id and token):
    /// what `failed` receives, with [`FailureKind::Cancelled`](crate::FailureKind::Cancelled).
    ///
    /// ```
    /// # use async_endpoint::{AsyncTask, Failure, TaskContext};
    /// # struct Export;
    /// # impl AsyncTask for Export {
    /// #     const NAME: &'static str = "export"; type Params = (); type Output = ();
    /// #     async fn execute_task(&self, _: (), _: TaskContext) -> Result<(), Failure> { Ok(()) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
    /// let endpoint = async_endpoint::AsyncEndpoint::builder()
    ///     .task(Export)
    ///     .cancelled_message("You stopped this export.")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn cancelled_message(mut self, message: impl Into<String>) -> Self {
        self.config.cancelled_message = message.into();
        self
    }

    /// Most pending requests one owner may have, all tasks together (default 200; `None` turns
    /// the limit off). A start over it answers `429 Too Many Requests` problem+json with
    /// `Retry-After` (the `retry_after` setting, at least 1 s) and enqueues nothing. A request
    /// is pending from its start until it finishes, fails or its deadline passes.
    ///
    /// It applies only where the [`owner`](Self::owner) hook names an owner: without the hook,
    /// or for starts it returns `None` for, there is no per-owner limit (use
    /// [`max_pending_per_task`](Self::max_pending_per_task) to bound everyone together).
    ///
    /// The default is far above what one page needs (dozens of pending requests) and keeps one
    /// owner flooding starts from queuing tens of thousands of jobs ahead of everyone else's.
    /// The limit is checked by the process that answers the start: give every web process the
    /// same setting.
    ///
    /// ```
    /// # use async_endpoint::AsyncEndpoint;
    /// let builder = AsyncEndpoint::builder()
    ///     .owner(|parts| parts.headers.get("x-user-id")?.to_str().ok().map(str::to_owned))
    ///     .max_pending_per_owner(20);
    /// let unlimited = AsyncEndpoint::builder().max_pending_per_owner(None);
    /// ```
    pub fn max_pending_per_owner(mut self, limit: impl Into<Option<u32>>) -> Self {
        self.config.max_pending_per_owner = limit.into();
        self
    }

    /// Most pending requests of one task, all owners together (default: no limit; `None` turns
    /// it off again). Over it a start of that task answers 429 like
    /// [`max_pending_per_owner`](Self::max_pending_per_owner). Use it to bound a task's backlog
    /// whoever starts it, e.g. anonymous starts, which no per-owner limit covers.
    ///
    /// ```
    /// # use async_endpoint::AsyncEndpoint;
    /// let builder = AsyncEndpoint::builder().max_pending_per_task(10_000);
    /// ```
    pub fn max_pending_per_task(mut self, limit: impl Into<Option<u32>>) -> Self {
        self.config.max_pending_per_task = limit.into();
        self
    }

    /// Checks the settings and starts the in-process workers (which needs a Tokio runtime).
    pub fn build(self) -> Result<AsyncEndpoint, Error> {
        #[cfg(feature = "redis")]
        let chose_redis = self.redis_url.is_some();
        #[cfg(not(feature = "redis"))]
        let chose_redis = false;
        #[cfg(feature = "postgres")]
        let chose_postgres = self.postgres_url.is_some();
        #[cfg(not(feature = "postgres"))]
        let chose_postgres = false;
        let sharing = match &self.backend {
            None if !chose_redis && !chose_postgres => Sharing::ProcessLocal,
            Some(_) if self.backend_is_local => Sharing::ProcessLocal,
            _ => Sharing::Shared,
        };
        let keys = keyring(self.secret.as_deref(), &self.old_secrets, sharing)?;
        let tasks = tasks(self.tasks, &self.config)?;
        self.config.validate()?;
        #[cfg(feature = "postgres")]
        let chosen = postgres_backend(self.backend, self.postgres_url)?;
        #[cfg(not(feature = "postgres"))]
        let chosen = self.backend;
        #[cfg(feature = "redis")]
        let backend = backend(chosen, self.redis_url)?;
        #[cfg(not(feature = "redis"))]
        let backend = backend(chosen)?;
        let mut limits = self.config.pending_limits();
        if self.owner.is_none() {
            limits.per_owner = None;
        }
        backend.check_limits(&limits)?;
        let in_process_workers = self.config.in_process_workers;
        let mut engine = Engine::new(backend, tasks, keys, self.config, self.owner);
        engine.trace = self.trace;
        let engine = Arc::new(engine);
        let (stop, mut stopped) = watch::channel(false);
        let handle = if in_process_workers {
            let runtime = tokio::runtime::Handle::try_current().map_err(Error::NoRuntime)?;
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            Some(runtime.spawn(crate::worker::run(engine.clone(), shutdown)))
        } else {
            None
        };
        Ok(AsyncEndpoint {
            engine,
            workers: Arc::new(Workers {
                stop,
                handle: Mutex::new(handle),
            }),
        })
    }
}

/// True for the in-memory backend, whose requests live and die with this process.
#[cfg_attr(not(feature = "memory"), allow(clippy::extra_unused_type_parameters))]
fn is_memory<B: 'static>() -> bool {
    #[cfg(feature = "memory")]
    {
        std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::backend::MemoryBackend>()
    }
    #[cfg(not(feature = "memory"))]
    {
        false
    }
}

/// The tasks by name: at least one, valid and distinct names, deadlines within the TTL.
fn tasks(
    registered: Vec<(&'static str, Arc<dyn ErasedTask>)>,
    config: &Config,
) -> Result<HashMap<&'static str, Arc<dyn ErasedTask>>, Error> {
    if registered.is_empty() {
        return Err(bad("task", "register at least one task"));
    }
    let mut tasks = HashMap::new();
    for (name, task) in registered {
        if !valid_task_name(name) {
            return Err(bad(
                "task",
                format!("task name {name:?} must be 1-64 characters of A-Z a-z 0-9 _ - . :"),
            ));
        }
        if let Some(deadline) = task.deadline() {
            config.check_task_deadline(name, deadline)?;
        }
        if tasks.insert(name, task).is_some() {
            return Err(bad("task", format!("two tasks are named {name:?}")));
        }
    }
    Ok(tasks)
}

/// The backend: `.backend(..)`, or `.redis(url)`, or the in-memory default; not two of them.
#[cfg(feature = "redis")]
fn backend(
    backend: Option<SharedBackend>,
    redis_url: Option<String>,
) -> Result<SharedBackend, Error> {
    match (backend, redis_url) {
        (Some(_), Some(_)) => Err(bad(
            "backend",
            "both `.backend(..)` and `.redis(..)` were set",
        )),
        (None, Some(url)) => Ok(DynBackend::new_arc(
            crate::backend::RedisBackend::builder(url).build()?,
        )),
        (Some(backend), None) => Ok(backend),
        (None, None) => default_backend(),
    }
}

/// `.postgres(url)` as a backend, unless `.backend(..)` was set too.
#[cfg(feature = "postgres")]
fn postgres_backend(
    backend: Option<SharedBackend>,
    postgres_url: Option<String>,
) -> Result<Option<SharedBackend>, Error> {
    match (backend, postgres_url) {
        (Some(_), Some(_)) => Err(bad(
            "backend",
            "both `.backend(..)` and `.postgres(..)` were set",
        )),
        (None, Some(url)) => Ok(Some(DynBackend::new_arc(
            crate::backend::PostgresBackend::builder(url).build()?,
        ))),
        (backend, None) => Ok(backend),
    }
}

/// The backend: `.backend(..)` or the in-memory default.
#[cfg(not(feature = "redis"))]
fn backend(backend: Option<SharedBackend>) -> Result<SharedBackend, Error> {
    match backend {
        Some(backend) => Ok(backend),
        None => default_backend(),
    }
}

#[cfg(feature = "memory")]
fn default_backend() -> Result<SharedBackend, Error> {
    Ok(DynBackend::new_arc(crate::backend::MemoryBackend::new()))
}

#[cfg(not(feature = "memory"))]
fn default_backend() -> Result<SharedBackend, Error> {
    Err(bad(
        "backend",
        "no backend chosen and the `memory` feature is off",
    ))
}

fn valid_task_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}
