//! The PostgreSQL backend (feature `postgres`): many web and worker processes over the
//! PostgreSQL the app already runs.
//!
//! # Data layout
//!
//! Everything lives in one schema (default `async_endpoint`), created and migrated on first use
//! by embedded, versioned migrations (`migrations/*.sql`), applied in one transaction under an
//! advisory lock, so any number of processes may start at once:
//!
//! | object | what |
//! |---|---|
//! | `{schema}.requests` | one row per request **and** its job (status, attempt, params, progress, output, failure, deadline, expiry, lease, deliveries, limit marks, idempotency key) |
//! | `{schema}.migrations` | the versions applied |
//! | `{schema}.create_request`, `cancel`, `expire`, `settle` | the atomic transitions that take several steps, one round trip each; the worker's fetch-and-begin, begin and finish are single statements sent by the client (`sql.rs`, see below) |
//! | channel `{schema}_changes` | `r <id>` after a write of a request somebody watches (and after every cancel), `q <task>` after every new job |
//!
//! One table rather than a request table and a job table: a start is one `INSERT`, a poll one
//! read by primary key, begin and finish update one row under one row lock, and nothing has to be
//! kept in step. The queue is a partial index over the rows whose job is open, ordered by when
//! each becomes fetchable, so finished requests cost the queue nothing.
//!
//! # Round trips
//!
//! * start: one `INSERT` and its `NOTIFY` (one statement); a start with an idempotency key or a
//!   pending limit calls `create_request` instead (the key, the limits under advisory
//!   transaction locks, then the same `INSERT` and `NOTIFY`);
//! * poll: one `SELECT` by primary key; only an unfinished request found past its deadline takes
//!   a second round trip, `expire`, which writes the timeout atomically;
//! * worker: one `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)` fetches a batch,
//!   leases it **and begins it** (one row version per job, not two); the worker's `begin_many`
//!   is then answered from what the fetch returned, without a round trip, unless this process
//!   wrote or heard announced a change to one of those requests since the fetch was sent (a
//!   cancel is always announced): those are read again by one statement (see `prebegun.rs`).
//!   One statement writes every outcome the worker gathered (an `UPDATE` over arrays, at most
//!   256 jobs, no id twice; more are split and run in one transaction); one statement per
//!   progress update. These are prepared statements sent by the client rather than PL/pgSQL
//!   functions: a function call cost about as much again as its statement (measured with
//!   `pg_stat_statements`). A job this process did not fetch is begun by one statement over
//!   arrays with the same `SET` list as the fetch's. The functions `begin_jobs` and
//!   `finish_jobs` stay in the schema for processes of the previous version during a rolling
//!   deploy;
//! * wake-ups: one listener connection per process (`LISTEN`), feeding waiting polls, `watch`ers
//!   and blocked fetches; after it (re)connects it wakes everyone, so nothing is lost. `NOTIFY`
//!   makes each notifying commit take a database-wide lock, so writes announce a request only
//!   once a poll marked it `watched` (a poll does when its process watches the request, and the
//!   engine's waiting polls and event streams watch before they poll; the mark is one update
//!   of no indexed column, once per request); a cancel is always announced (workers watch their
//!   jobs without polling them);
//! * leases: a heartbeat every `claim_idle / 3` extends the leases of this process's running
//!   jobs in one statement; a killed worker's jobs become fetchable when theirs run out;
//! * expiry: rows are invisible once their TTL passed; a sweeper deletes them in bounded
//!   batches (`DELETE … WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`).

mod config;
mod listener;
mod prebegun;
mod sql;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

pub use config::PostgresBackendBuilder;

use prebegun::{Kept, Prebegun};
use sql::Sql;

use super::{
    Backend, Begin, Created, Job, Limit, NewRequest, Notifier, Outcome, Snapshot, StoredFailure,
    Update, Watch, only_answer,
};
use crate::clock::now_ms;
use crate::error::Error;
use crate::protocol::{Progress, RequestId, Status};

/// The embedded migrations, in order: (version, SQL with `{schema}` and `{lock}` to fill in).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_batches.sql")),
];

/// Most jobs one begin or finish statement takes; a longer slice is split, and its
/// statements run in one transaction (so a batch is still all or nothing).
const BATCH: usize = 256;

/// Storage and queue in PostgreSQL: one row per request and its job, a `FOR UPDATE SKIP LOCKED`
/// queue, wake-ups over `LISTEN/NOTIFY`. Use it for several web and worker processes when the
/// app runs PostgreSQL (11 or later) and no Redis.
///
/// Cheap to clone (clones share the pool). Connections are made on first use (which also
/// creates or migrates the schema) and re-made by themselves after PostgreSQL restarts; while it
/// is unreachable, starting and polling answer 503 and workers back off and retry.
///
/// Execution is at-least-once: a job whose worker dies is run again by another one after
/// [`claim_idle`](PostgresBackendBuilder::claim_idle), at most
/// [`max_deliveries`](PostgresBackendBuilder::max_deliveries) times, so tasks should be
/// idempotent.
///
/// ```no_run
/// use async_endpoint::{AsyncEndpoint, backend::PostgresBackend};
/// # use async_endpoint::{AsyncTask, Failure, TaskContext};
/// # struct Echo;
/// # impl AsyncTask for Echo {
/// #     const NAME: &'static str = "echo";
/// #     type Params = String;
/// #     type Output = String;
/// #     async fn execute_task(&self, p: String, _: TaskContext) -> Result<String, Failure> { Ok(p) }
/// # }
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Every process shares one key, from the environment (never from the code).
/// let secret = std::env::var("ASYNC_ENDPOINT_SECRET")?;
/// let url = std::env::var("DATABASE_URL")?;
/// // A web process whose jobs run in separate worker processes:
/// let web = AsyncEndpoint::builder()
///     .secret(&secret)
///     .backend(PostgresBackend::connect(&url).await?)
///     .task(Echo)
///     .in_process_workers(false)
///     .build()?;
///
/// // A worker process (same secret, tasks and schema):
/// let worker = AsyncEndpoint::builder()
///     .secret(&secret)
///     .backend(PostgresBackend::builder(&url).build()?)
///     .task(Echo)
///     .in_process_workers(false)
///     .build()?;
/// worker.run_worker(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("schema", &self.inner.settings.schema)
            .finish_non_exhaustive()
    }
}

struct Inner {
    pool: Pool,
    config: tokio_postgres::Config,
    settings: PostgresBackendBuilder,
    sql: Sql,
    /// Set once the migrations are applied (by this process or another).
    migrated: tokio::sync::OnceCell<()>,
    notifier: Notifier,
    /// Wakes blocked fetches: a job was enqueued (or the listener reconnected).
    queued: Arc<Notify>,
    background_started: AtomicBool,
    /// Jobs delivered to this process and not yet over: id → (delivery, lease vouched until,
    /// unix ms). The heartbeat extends their leases while they are vouched for.
    in_flight: Mutex<HashMap<RequestId, (i32, u64)>>,
    /// Jobs the fetch's statement began, until the worker asks for their begin.
    prebegun: Arc<Prebegun>,
    poison_json: String,
    timeout_json: String,
    cancelled_json: String,
    /// Dropped with the backend; the listener watches it and ends.
    closed: tokio::sync::watch::Sender<()>,
}

/// Status codes as stored.
fn status_of(code: i16) -> Result<Status, Error> {
    Ok(match code {
        0 => Status::Queued,
        1 => Status::Running,
        2 => Status::Retrying,
        3 => Status::Done,
        4 => Status::Failed,
        other => return Err(Error::Corrupt(format!("status code {other}"))),
    })
}

/// A request id as stored: its 32 lowercase hex digits (what `Display` writes), without the
/// formatting machinery (every poll formats one).
fn id_text(id: &RequestId) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(32);
    for byte in id.as_bytes() {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    text
}

/// Unix milliseconds as PostgreSQL's `bigint`.
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl PostgresBackend {
    /// Starts configuring a backend for the PostgreSQL at `url`
    /// (`postgres://user:password@host:port/database`). See [`PostgresBackendBuilder`] for the
    /// settings.
    ///
    /// ```
    /// use async_endpoint::backend::PostgresBackend;
    ///
    /// let built = PostgresBackend::builder("postgres://app@127.0.0.1/app").schema("Bad-Name").build();
    /// assert!(matches!(built, Err(async_endpoint::Error::Config { setting: "schema", .. })));
    /// ```
    pub fn builder(url: impl Into<String>) -> PostgresBackendBuilder {
        PostgresBackendBuilder::new(url)
    }

    /// A backend with the default settings, after connecting and applying the migrations (so a
    /// process fails fast on a wrong URL). Use [`builder`](Self::builder) to start while
    /// PostgreSQL is down.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), async_endpoint::Error> {
    /// let postgres = async_endpoint::backend::PostgresBackend::connect("postgres://app@127.0.0.1/app").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        let backend = Self::builder(url).build()?;
        backend.migrate().await?;
        Ok(backend)
    }

    /// Creates the schema or applies the migrations it lacks (once per backend; every other
    /// operation does this first too). Safe when several processes do it at once.
    ///
    /// ```no_run
    /// # async fn f(postgres: async_endpoint::backend::PostgresBackend) -> Result<(), async_endpoint::Error> {
    /// postgres.migrate().await?;
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<(), Error> {
        self.client().await.map(drop)
    }

    /// Checks that PostgreSQL answers (for health checks).
    ///
    /// ```no_run
    /// # async fn f(postgres: async_endpoint::backend::PostgresBackend) {
    /// if let Err(error) = postgres.ping().await {
    ///     eprintln!("PostgreSQL is not reachable: {error}");
    /// }
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<(), Error> {
        let client = self.client().await?;
        self.bounded(client.simple_query("SELECT 1"))
            .await
            .map(drop)
    }

    /// The pool this backend queries through (for health checks, or an app's own queries).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    pub(super) fn from_parts(
        config: tokio_postgres::Config,
        settings: PostgresBackendBuilder,
    ) -> Result<Self, Error> {
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                // A pooled connection is checked by whether its connection task still runs;
                // one that PostgreSQL dropped is replaced, not handed out.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.connection_timeout))
            .create_timeout(Some(settings.connection_timeout))
            .recycle_timeout(Some(settings.connection_timeout))
            .build()
            .map_err(|e| Error::Config {
                setting: "pool_size",
                reason: e.to_string(),
            })?;
        let json = |failure: StoredFailure, fallback: &str| {
            serde_json::to_string(&failure).unwrap_or_else(|_| fallback.to_owned())
        };
        Ok(PostgresBackend {
            inner: Arc::new(Inner {
                pool,
                config,
                sql: Sql::new(&settings.schema),
                settings,
                migrated: tokio::sync::OnceCell::new(),
                notifier: Notifier::default(),
                queued: Arc::new(Notify::new()),
                background_started: AtomicBool::new(false),
                in_flight: Mutex::new(HashMap::new()),
                prebegun: Arc::default(),
                poison_json: json(StoredFailure::internal(), r#"{"kind":"internal"}"#),
                timeout_json: json(StoredFailure::timeout(), r#"{"kind":"timeout"}"#),
                cancelled_json: json(StoredFailure::cancelled(), r#"{"kind":"cancelled"}"#),
                closed: tokio::sync::watch::channel(()).0,
            }),
        })
    }

    /// A pooled connection, after the migrations (applied on first use) and with this process's
    /// background tasks (listener, heartbeat, sweeper) started.
    async fn client(&self) -> Result<Object, Error> {
        let inner = &self.inner;
        let client = inner.pool.get().await.map_err(map_pool_err)?;
        if inner.migrated.initialized() {
            return Ok(client);
        }
        let mut client = client;
        inner
            .migrated
            .get_or_try_init(|| async {
                self.bounded_by(
                    inner.settings.response_timeout * 6,
                    migrate(&mut client, &inner.settings.schema),
                )
                .await
            })
            .await?;
        self.start_background();
        Ok(client)
    }

    /// Bounds a statement by the response timeout, so no call hangs on a silent server.
    async fn bounded<T>(
        &self,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Error> {
        self.bounded_by(self.inner.settings.response_timeout, statement)
            .await
    }

    async fn bounded_by<T>(
        &self,
        bound: Duration,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(bound, statement)
            .await
            .map_err(|elapsed| Error::Unavailable(Box::new(elapsed)))?
            .map_err(map_err)
    }

    /// Runs a prepared (and per-connection cached) statement and returns its rows.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let client = self.client().await?;
        self.bounded(async {
            let statement = client.prepare_cached(sql).await?;
            client.query(&statement, params).await
        })
        .await
    }

    /// Runs a prepared statement once per parameter set and returns all rows, in order: one
    /// set in one round trip, several in one transaction (all or nothing).
    async fn query_batches(&self, sql: &str, batches: Vec<Vec<Param>>) -> Result<Vec<Row>, Error> {
        let mut client = self.client().await?;
        let bound = self.inner.settings.response_timeout * batches.len().max(1) as u32;
        self.bounded_by(bound, async {
            let statement = client.prepare_cached(sql).await?;
            fn as_params(batch: &[Param]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
                batch.iter().map(|p| &**p as _).collect()
            }
            if let [batch] = batches.as_slice() {
                return client.query(&statement, &as_params(batch)).await;
            }
            let tx = client.transaction().await?;
            let mut rows = Vec::new();
            for batch in &batches {
                rows.extend(tx.query(&statement, &as_params(batch)).await?);
            }
            tx.commit().await?;
            Ok(rows)
        })
        .await
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        // Critical sections are single map operations; a poisoned lock still holds a valid map.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the listener, the heartbeat and the sweeper once (they need a runtime, which the
    /// first operation runs in). They end when the backend is dropped.
    fn start_background(&self) {
        let inner = &self.inner;
        if inner.background_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner.background_started.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(listener::run(
            listener::Listener {
                config: inner.config.clone(),
                channel: inner.sql.channel.clone(),
                notifier: inner.notifier.clone(),
                queued: inner.queued.clone(),
                prebegun: inner.prebegun.clone(),
            },
            inner.closed.subscribe(),
        ));
        let weak = Arc::downgrade(inner);
        runtime.spawn(heartbeat(weak.clone(), inner.settings.claim_idle / 3));
        runtime.spawn(sweeper(weak, inner.settings.sweep_interval));
    }

    /// Begins jobs the fetch did not (delivered to another call, or dropped from this process's
    /// bookkeeping): one statement per batch, no id twice in one (a repeat begins again, after).
    async fn begin_fresh(&self, jobs: &[Job], now_ms: u64) -> Result<Vec<Begin>, Error> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let max = i32::try_from(inner.settings.max_deliveries).unwrap_or(i32::MAX);
        let now = ms(now_ms);
        // Sent in id order, so that batches lock their rows in one order; answered in the jobs'.
        let order = id_order(jobs.iter().map(|job| &job.id));
        let sorted: Vec<Job> = order.iter().map(|&at| jobs[at].clone()).collect();
        let batches = distinct_chunks(&sorted, |job| &job.id)
            .map(|chunk| -> Vec<Param> {
                let ids: Vec<String> = chunk.iter().map(|job| id_text(&job.id)).collect();
                let deliveries: Vec<i32> = chunk
                    .iter()
                    .map(|job| i32::try_from(job.deliveries).unwrap_or(i32::MAX))
                    .collect();
                vec![
                    Box::new(ids),
                    Box::new(deliveries),
                    Box::new(now),
                    Box::new(max),
                    Box::new(inner.timeout_json.clone()),
                    Box::new(inner.poison_json.clone()),
                    Box::new(inner.sql.channel.clone()),
                ]
            })
            .collect();
        let begun = self
            .query_batches(&inner.sql.begin, batches)
            .await
            .and_then(|rows| decode_begun(jobs.len(), &rows))
            .map(|sorted| unsort(&order, sorted));
        let begun = match begun {
            Ok(begun) => begun,
            Err(error) => {
                // The worker hands the jobs back; stop vouching for them so their leases run out
                // if that fails too, and another worker takes them.
                for job in jobs {
                    self.forget(job);
                }
                return Err(error);
            }
        };
        for (job, (begin, code)) in jobs.iter().zip(&begun) {
            self.after_begin(job, begin, *code);
        }
        Ok(begun.into_iter().map(|(begin, _)| begin).collect())
    }

    /// Reads again jobs the fetch began whose requests may have changed since: per job, 0 when it
    /// still runs, else why not (1 skip, 2 now a timeout), as a begin answers.
    async fn recheck(&self, jobs: &[&Job], now_ms: u64) -> Result<Vec<i16>, Error> {
        let inner = &self.inner;
        let ids: Vec<String> = jobs.iter().map(|job| id_text(&job.id)).collect();
        let deliveries: Vec<i32> = jobs
            .iter()
            .map(|job| job.receipt.parse::<i32>().unwrap_or(-1))
            .collect();
        let rows = self
            .query(
                &inner.sql.recheck,
                &[
                    &ids,
                    &deliveries,
                    &ms(now_ms),
                    &inner.timeout_json,
                    &inner.sql.channel,
                ],
            )
            .await;
        let rows = match rows {
            Ok(rows) if rows.len() == jobs.len() => rows,
            Ok(rows) => {
                return Err(Error::Corrupt(format!(
                    "recheck answered {} of {} jobs",
                    rows.len(),
                    jobs.len()
                )));
            }
            Err(error) => {
                for job in jobs {
                    self.forget(job);
                }
                return Err(error);
            }
        };
        rows.iter()
            .map(|row| row.try_get(0).map_err(corrupt("recheck reply")))
            .collect()
    }

    /// Keeps or stops extending the lease of a job that a begin answered, and logs why a job
    /// will not run.
    fn after_begin(&self, job: &Job, begin: &Begin, code: i16) {
        match begin {
            Begin::Run { deadline_ms, .. } => {
                self.vouch_until(job, deadline_ms.saturating_add(1000));
            }
            Begin::Skip => self.forget(job),
        }
        match code {
            2 => {
                tracing::warn!(request_id = %job.id, "deadline passed before the job started: request failed with a timeout");
            }
            3 => {
                tracing::error!(request_id = %job.id, deliveries = job.deliveries, max_deliveries = self.inner.settings.max_deliveries, "job delivered too often (its workers keep dying): request failed");
            }
            _ => {}
        }
    }

    /// Keeps extending the lease of `job` until `until_ms` (unix ms).
    fn vouch_until(&self, job: &Job, until_ms: u64) {
        if let Ok(delivery) = job.receipt.parse::<i32>() {
            Self::lock(&self.inner.in_flight).insert(job.id, (delivery, until_ms));
        }
    }

    /// Stops extending the lease of `job` (it is over, or handed back).
    fn forget(&self, job: &Job) {
        let mut in_flight = Self::lock(&self.inner.in_flight);
        if in_flight
            .get(&job.id)
            .is_some_and(|(delivery, _)| job.receipt == delivery.to_string())
        {
            in_flight.remove(&job.id);
        }
    }

    /// One sweeping pass: deletes expired rows in bounded batches until a batch comes back
    /// short; returns how many it deleted.
    async fn sweep(&self) -> Result<u64, Error> {
        let batch = i64::from(self.inner.settings.sweep_batch);
        let mut deleted = 0;
        loop {
            let client = self.client().await?;
            let n = self
                .bounded(async {
                    let statement = client.prepare_cached(&self.inner.sql.sweep).await?;
                    client.execute(&statement, &[&ms(now_ms()), &batch]).await
                })
                .await?;
            deleted += n;
            if n < batch as u64 {
                return Ok(deleted);
            }
            // Let other work through between batches.
            tokio::task::yield_now().await;
        }
    }

    /// Deletes every expired row now (the sweeper does this every `sweep_interval`); returns how
    /// many. For maintenance and tests.
    ///
    /// ```no_run
    /// # async fn f(postgres: async_endpoint::backend::PostgresBackend) -> Result<(), async_endpoint::Error> {
    /// let removed = postgres.sweep_expired().await?;
    /// # Ok(()) }
    /// ```
    pub async fn sweep_expired(&self) -> Result<u64, Error> {
        self.sweep().await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wakes the listener so it ends (its receiver sees the sender gone).
        self.closed.send_replace(());
    }
}

/// Applies the migrations the schema lacks, in one transaction under an advisory lock (so
/// concurrent starts wait for each other, then find nothing left to do).
async fn migrate(client: &mut Object, schema: &str) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        &[&format!("async_endpoint:migrate:{schema}")],
    )
    .await?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {schema}.migrations \
         (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.migrations"),
            &[],
        )
        .await?;
    let applied: i32 = row.try_get(0)?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        tx.batch_execute(
            &sql.replace("{schema}", schema)
                .replace("{lock}", &format!("async_endpoint:{schema}")),
        )
        .await?;
        tx.execute(
            &format!("INSERT INTO {schema}.migrations (version) VALUES ($1)"),
            &[version],
        )
        .await?;
        tracing::info!(schema, version, "applied PostgreSQL migration");
    }
    if let Some((latest, _)) = MIGRATIONS.last() {
        if applied > *latest {
            tracing::warn!(
                schema,
                applied,
                latest,
                "the schema is newer than this version of async-endpoint knows"
            );
        }
    }
    tx.commit().await
}

/// Extends the leases of this process's running jobs every `every`, until the backend is gone.
async fn heartbeat(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let backend = PostgresBackend { inner };
        let now = now_ms();
        let (ids, deliveries): (Vec<String>, Vec<i32>) = {
            let mut in_flight = PostgresBackend::lock(&backend.inner.in_flight);
            in_flight.retain(|_, (_, until)| *until > now);
            in_flight
                .iter()
                .map(|(id, (delivery, _))| (id_text(id), *delivery))
                .unzip()
        };
        if ids.is_empty() {
            continue;
        }
        let lease = ms(backend.inner.settings.claim_idle.as_millis() as u64);
        if let Err(error) = backend
            .query(&backend.inner.sql.heartbeat, &[&ids, &deliveries, &lease])
            .await
        {
            tracing::warn!(%error, jobs = ids.len(), "could not extend the leases of running jobs");
        }
    }
}

/// Deletes expired rows every `every`, until the backend is gone.
async fn sweeper(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let backend = PostgresBackend { inner };
        match backend.sweep().await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "removed expired requests"),
            Err(error) => tracing::warn!(%error, "could not remove expired requests"),
        }
    }
}

/// Connection trouble, timeouts, a server shutting down or starting, too many connections and
/// serialization conflicts are [`Error::Unavailable`] (clients get 503 and workers back off);
/// anything else PostgreSQL refuses is [`Error::Backend`].
fn map_err(error: tokio_postgres::Error) -> Error {
    let transient = match error.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::QUERY_CANCELED,
                    SqlState::LOCK_NOT_AVAILABLE,
                    SqlState::READ_ONLY_SQL_TRANSACTION,
                ]
                .contains(code)
        }
        None => {
            error.is_closed() || {
                // The driver's error kinds are private; its messages name them.
                let text = error.to_string();
                [
                    "error communicating",
                    "error connecting",
                    "timeout",
                    "unexpected message",
                    "error parsing response",
                ]
                .iter()
                .any(|kind| text.starts_with(kind))
            }
        }
    };
    if transient {
        Error::Unavailable(Box::new(error))
    } else {
        Error::Backend(Box::new(error))
    }
}

fn map_pool_err(error: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    match error {
        PoolError::Backend(error) => map_err(error),
        PoolError::Timeout(_) | PoolError::Closed => Error::Unavailable(Box::new(error)),
        other => Error::Backend(Box::new(other)),
    }
}

/// A snapshot from a row of (task, status, attempt, progress, output, failure, deadline_ms)
/// starting at column `at`.
fn snapshot(row: &Row, at: usize) -> Result<Snapshot, Error> {
    let get = |e: tokio_postgres::Error| Error::Corrupt(format!("request row: {e}"));
    let task: String = row.try_get(at).map_err(get)?;
    let status = status_of(row.try_get(at + 1).map_err(get)?)?;
    let attempt: i32 = row.try_get(at + 2).map_err(get)?;
    let progress: Option<String> = row.try_get(at + 3).map_err(get)?;
    let output: Option<String> = row.try_get(at + 4).map_err(get)?;
    let failure: Option<String> = row.try_get(at + 5).map_err(get)?;
    let deadline_ms: i64 = row.try_get(at + 6).map_err(get)?;
    let progress: Option<Progress> = decode(&task, progress)?;
    let failure: Option<StoredFailure> = if status == Status::Failed {
        decode(&task, failure)?
    } else {
        None
    };
    let mut snapshot = Snapshot::new(
        task,
        status,
        attempt.max(0) as u32,
        deadline_ms.max(0) as u64,
    );
    snapshot.progress = progress;
    snapshot.output = output.filter(|_| status == Status::Done);
    snapshot.failure = failure;
    Ok(snapshot)
}

fn decode<T: serde::de::DeserializeOwned>(
    task: &str,
    json: Option<String>,
) -> Result<Option<T>, Error> {
    json.filter(|s| !s.is_empty())
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|source| Error::Decode {
            task: task.to_owned(),
            source,
        })
}

/// Progress as stored: `{at, total, message}` (the percent is derived when read).
#[derive(Serialize)]
struct StoredProgress<'a> {
    at: u64,
    total: Option<u64>,
    message: &'a str,
}

/// One statement parameter of a batch, owned (a batch's parameters are built before it runs).
type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// The positions of `ids` in ascending id order (stable: repeated ids keep their order).
fn id_order<'a>(ids: impl Iterator<Item = &'a RequestId>) -> Vec<usize> {
    let ids: Vec<&RequestId> = ids.collect();
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&at| ids[at].as_bytes());
    order
}

/// Puts answers given in `order` (see [`id_order`]) back in the original order.
fn unsort<T>(order: &[usize], sorted: Vec<T>) -> Vec<T> {
    let mut slots: Vec<Option<T>> = std::iter::repeat_with(|| None).take(order.len()).collect();
    for (&at, answer) in order.iter().zip(sorted) {
        slots[at] = Some(answer);
    }
    slots.into_iter().flatten().collect()
}

/// `sorted` (sorted by id) cut into statements' worth: at most [`BATCH`] each, and a repeated id
/// starts the next one (one statement writes a row once), so repeats are written in order.
fn distinct_chunks<T>(sorted: &[T], id: impl Fn(&T) -> &RequestId) -> impl Iterator<Item = &[T]> {
    let mut rest = sorted;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 1;
        while end < rest.len().min(BATCH) && id(&rest[end]) != id(&rest[end - 1]) {
            end += 1;
        }
        let (chunk, after) = rest.split_at(end);
        rest = after;
        Some(chunk)
    })
}

/// The rows of a begin for `jobs` jobs, in order: what to do with each, and its code.
fn decode_begun(jobs: usize, rows: &[Row]) -> Result<Vec<(Begin, i16)>, Error> {
    if rows.len() != jobs {
        return Err(Error::Corrupt(format!(
            "begin answered {} of {jobs} jobs",
            rows.len(),
        )));
    }
    rows.iter().map(|row| begun_from(row, 0)).collect()
}

/// What a begin answered, from the columns of `row` from `at` on: code, attempt, params,
/// deadline, traceparent.
fn begun_from(row: &Row, at: usize) -> Result<(Begin, i16), Error> {
    let code: i16 = row.try_get(at).map_err(corrupt("begin reply"))?;
    if code != 0 {
        return Ok((Begin::Skip, code));
    }
    let attempt: i32 = row.try_get(at + 1).map_err(corrupt("begin reply"))?;
    let params: String = row.try_get(at + 2).map_err(corrupt("begin reply"))?;
    let deadline_ms: i64 = row.try_get(at + 3).map_err(corrupt("begin reply"))?;
    let traceparent: Option<String> = row.try_get(at + 4).map_err(corrupt("begin reply"))?;
    let begin = Begin::Run {
        params,
        attempt: attempt.max(0) as u32,
        deadline_ms: deadline_ms.max(0) as u64,
        traceparent,
    };
    Ok((begin, 0))
}

fn corrupt(what: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Corrupt(format!("{what}: {e}"))
}

impl Backend for PostgresBackend {
    async fn create(&self, request: NewRequest) -> Result<Created, Error> {
        let inner = &self.inner;
        let limits = request.limits;
        // The owner's limit applies only to a start with an owner.
        let owner = request
            .owner
            .as_deref()
            .filter(|_| limits.per_owner.is_some())
            .map(owner_digest);
        let owner_limit = owner
            .as_ref()
            .and(limits.per_owner)
            .map(|n| n.min(i32::MAX as u32) as i32);
        let task_limit = limits.per_task.map(|n| n.min(i32::MAX as u32) as i32);
        let (key, digest) = match &request.idempotency {
            Some(key) => (Some(key.scoped.as_str()), Some(key.params_digest.as_str())),
            None => (None, None),
        };
        let (id, created, deadline) = (
            id_text(&request.id),
            ms(request.created_ms),
            ms(request.deadline_ms),
        );
        let ttl_ms = ms(request.ttl.as_millis().max(1) as u64);
        // Both statements take the request first, in this order.
        let request_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &id,
            &request.task,
            &request.params,
            &created,
            &deadline,
            &ttl_ms,
        ];
        if owner_limit.is_none() && task_limit.is_none() && key.is_none() {
            let rest: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&request.traceparent, &inner.sql.channel];
            self.query(&inner.sql.insert, &[&request_params[..], &rest].concat())
                .await?;
            return Ok(Created::New);
        }
        let rest: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &owner_limit,
            &owner,
            &task_limit,
            &key,
            &digest,
            &inner.sql.channel,
            &request.traceparent,
        ];
        let rows = self
            .query(&inner.sql.create, &[&request_params[..], &rest].concat())
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| Error::Corrupt("create_request returned no row".into()))?;
        let outcome: i16 = row.try_get(0).map_err(corrupt("create reply"))?;
        match outcome {
            0 => Ok(Created::New),
            1 => {
                let id: String = row.try_get(1).map_err(corrupt("create reply"))?;
                let created: i64 = row.try_get(2).map_err(corrupt("create reply"))?;
                let existing_digest: Option<String> =
                    row.try_get(3).map_err(corrupt("create reply"))?;
                Ok(Created::Existing {
                    id: id
                        .parse()
                        .map_err(|_| Error::Corrupt(format!("stored id {id:?}")))?,
                    created_ms: created.max(0) as u64,
                    same_params: existing_digest.as_deref() == digest,
                })
            }
            2 => Ok(Created::OverLimit(Limit::Owner)),
            3 => Ok(Created::OverLimit(Limit::Task)),
            other => Err(Error::Corrupt(format!("create outcome {other}"))),
        }
    }

    async fn poll(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        let inner = &self.inner;
        let key = id_text(&id);
        // The common case: one read by primary key. Only a request found unfinished past its
        // deadline takes a second round trip, which re-checks and writes the timeout atomically.
        let rows = self.query(&inner.sql.poll, &[&key, &ms(now_ms)]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let mut found = snapshot(row, 0)?;
        let marked: bool = row.try_get(7).map_err(corrupt("poll reply"))?;
        if !marked && inner.notifier.is_watched(id) {
            // Somebody here waits on it: mark it, so that later writes are announced. The mark
            // returns the row as it stands after any write that did not see the mark.
            let rows = self.query(&inner.sql.mark, &[&key, &ms(now_ms)]).await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            found = snapshot(row, 0)?;
        }
        if found.status.is_terminal() || now_ms <= found.deadline_ms {
            return Ok(Some(found));
        }
        inner.prebegun.touch(id);
        let rows = self
            .query(
                &inner.sql.expire,
                &[&key, &ms(now_ms), &inner.timeout_json, &inner.sql.channel],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        if row.try_get::<_, bool>(0).map_err(corrupt("expire reply"))? {
            tracing::warn!(request_id = %id, "deadline passed: request failed with a timeout");
        }
        snapshot(row, 1).map(Some)
    }

    fn watch(&self, id: RequestId) -> Watch {
        // The listener must run for wake-ups to come; it starts with the first operation, and
        // wakes every watcher once it listens (so one registered before then re-reads).
        if self.inner.migrated.initialized() {
            self.start_background();
        }
        self.inner.notifier.watch(id)
    }

    async fn fetch(
        &self,
        tasks: &[&'static str],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, Error> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + block;
        let tasks: Vec<&str> = tasks.to_vec();
        let max = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let lease = ms(inner.settings.claim_idle.as_millis() as u64);
        let max_deliveries = i32::try_from(inner.settings.max_deliveries).unwrap_or(i32::MAX);
        loop {
            let notified = inner.queued.notified();
            tokio::pin!(notified);
            // Register before looking, so a job enqueued between the look and the wait is seen.
            notified.as_mut().enable();
            let now = ms(now_ms());
            let mark = inner.prebegun.mark();
            let rows = self
                .query(
                    &inner.sql.fetch,
                    &[
                        &tasks,
                        &max,
                        &lease,
                        &now,
                        &max_deliveries,
                        &inner.timeout_json,
                        &inner.poison_json,
                        &inner.sql.channel,
                    ],
                )
                .await?;
            if !rows.is_empty() {
                let mut jobs = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: String = row.try_get(0).map_err(corrupt("fetch reply"))?;
                    let task: String = row.try_get(1).map_err(corrupt("fetch reply"))?;
                    let deliveries: i32 = row.try_get(2).map_err(corrupt("fetch reply"))?;
                    let Ok(id) = id.parse::<RequestId>() else {
                        tracing::error!(id, "a job with a malformed id was skipped");
                        continue;
                    };
                    let (begin, code) = begun_from(row, 3)?;
                    let was: i16 = row.try_get(9).map_err(corrupt("fetch reply"))?;
                    let job = Job::new(id, task, deliveries.to_string(), deliveries.max(0) as u32);
                    self.after_begin(&job, &begin, code);
                    let kept = Kept {
                        begin,
                        was,
                        touched: false,
                    };
                    inner
                        .prebegun
                        .keep(id, deliveries, mark, kept, inner.settings.claim_idle);
                    jobs.push(job);
                }
                return Ok(jobs);
            }
            // A lease that runs out is noticed by the next look: bound the wait by it.
            let wait_until = deadline.min(tokio::time::Instant::now() + inner.settings.claim_idle);
            if tokio::time::timeout_at(wait_until, notified).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Ok(Vec::new());
            }
        }
    }

    async fn begin(&self, job: &Job, now_ms: u64) -> Result<Begin, Error> {
        only_answer(
            self.begin_many(std::slice::from_ref(job), now_ms).await?,
            "begin",
        )
    }

    async fn begin_many(&self, jobs: &[Job], now_ms: u64) -> Result<Vec<Begin>, Error> {
        // Jobs this process fetched were begun by the fetch: their answers are here already,
        // unless their requests may have changed since (then they are read again).
        let kept = self.inner.prebegun.take(
            jobs.iter()
                .map(|job| (job.id, job.receipt.parse::<i32>().unwrap_or(-1))),
        );
        let mut answers: Vec<Option<Begin>> = vec![None; jobs.len()];
        let (mut fresh, mut again) = (Vec::new(), Vec::new());
        for (at, kept) in kept.into_iter().enumerate() {
            match kept {
                None => fresh.push(at),
                Some(kept) => match &kept.begin {
                    Begin::Run { deadline_ms, .. } if kept.touched || now_ms > *deadline_ms => {
                        again.push((at, kept.begin));
                    }
                    _ => answers[at] = Some(kept.begin),
                },
            }
        }
        if !again.is_empty() {
            let picked: Vec<&Job> = again.iter().map(|(at, _)| &jobs[*at]).collect();
            let codes = self.recheck(&picked, now_ms).await?;
            for ((at, begin), code) in again.into_iter().zip(codes) {
                let job = &jobs[at];
                if code == 0 {
                    answers[at] = Some(begin);
                } else {
                    self.after_begin(job, &Begin::Skip, code);
                    answers[at] = Some(Begin::Skip);
                }
            }
        }
        if !fresh.is_empty() {
            let rest: Vec<Job> = fresh.iter().map(|&at| jobs[at].clone()).collect();
            let begun = self.begin_fresh(&rest, now_ms).await?;
            for (at, begin) in fresh.into_iter().zip(begun) {
                answers[at] = Some(begin);
            }
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.ok_or_else(|| Error::Corrupt("a begin answered too few jobs".into()))
            })
            .collect()
    }

    async fn queue_depth(&self, task: &'static str) -> Result<Option<u64>, Error> {
        // Open jobs no worker holds a lease on: fetchable now.
        let rows = self
            .query(&self.inner.sql.queue_depth, &[&task, &ms(now_ms())])
            .await?;
        let depth: i64 = rows
            .first()
            .ok_or_else(|| Error::Corrupt("queue depth returned no row".into()))?
            .try_get(0)
            .map_err(corrupt("queue depth reply"))?;
        Ok(Some(depth.max(0) as u64))
    }

    async fn update(&self, id: RequestId, update: Update) -> Result<(), Error> {
        let inner = &self.inner;
        let now = ms(now_ms());
        match update {
            Update::Progress(progress) => {
                let json = serde_json::to_string(&StoredProgress {
                    at: progress.at,
                    total: progress.total,
                    message: &progress.message,
                })
                .map_err(|e| Error::Corrupt(format!("progress not encodable: {e}")))?;
                self.query(
                    &inner.sql.progress,
                    &[&id_text(&id), &json, &now, &inner.sql.channel],
                )
                .await
                .map(drop)
            }
            Update::Retrying => self
                .query(
                    &inner.sql.retrying,
                    &[&id_text(&id), &now, &inner.sql.channel],
                )
                .await
                .map(drop),
        }
    }

    async fn finish(&self, job: &Job, outcome: Outcome, now_ms: u64) -> Result<Status, Error> {
        only_answer(
            self.finish_many(&[(job.clone(), outcome)], now_ms).await?,
            "finish",
        )
    }

    async fn finish_many(
        &self,
        finished: &[(Job, Outcome)],
        now_ms: u64,
    ) -> Result<Vec<Status>, Error> {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let now = ms(now_ms);
        // Sent in id order, as in `begin_many`; answered in the outcomes' order.
        let order = id_order(finished.iter().map(|(job, _)| &job.id));
        let sorted: Vec<&(Job, Outcome)> = order.iter().map(|&at| &finished[at]).collect();
        let mut batches = Vec::with_capacity(finished.len().div_ceil(BATCH));
        for chunk in distinct_chunks(&sorted, |(job, _)| &job.id) {
            let ids: Vec<String> = chunk.iter().map(|(job, _)| id_text(&job.id)).collect();
            let mut codes: Vec<i16> = Vec::with_capacity(chunk.len());
            let mut values: Vec<String> = Vec::with_capacity(chunk.len());
            for (_, outcome) in chunk {
                let (code, value) = match outcome {
                    Outcome::Done(output) => (3, output.clone()),
                    Outcome::Failed(failure) => (
                        4,
                        serde_json::to_string(failure)
                            .map_err(|e| Error::Corrupt(format!("failure not encodable: {e}")))?,
                    ),
                };
                codes.push(code);
                values.push(value);
            }
            let params: Vec<Param> = vec![
                Box::new(ids),
                Box::new(codes),
                Box::new(values),
                Box::new(now),
                Box::new(inner.timeout_json.clone()),
                Box::new(inner.sql.channel.clone()),
            ];
            batches.push(params);
        }
        inner
            .prebegun
            .touch_many(finished.iter().map(|(job, _)| job.id));
        let rows = self.query_batches(&inner.sql.finish, batches).await?;
        for (job, _) in finished {
            self.forget(job);
        }
        if rows.len() != finished.len() {
            return Err(Error::Corrupt(format!(
                "finish_jobs answered {} of {} jobs",
                rows.len(),
                finished.len()
            )));
        }
        let sorted = rows
            .iter()
            .map(|row| status_of(row.try_get(0).map_err(corrupt("finish reply"))?))
            .collect::<Result<Vec<Status>, Error>>()?;
        Ok(unsort(&order, sorted))
    }

    async fn release(&self, job: &Job) -> Result<(), Error> {
        self.forget(job);
        let Ok(delivery) = job.receipt.parse::<i32>() else {
            return Ok(());
        };
        // A job its fetch began and nobody ran goes back as it was before the fetch.
        let (was, attempt) = match self.inner.prebegun.drop_one(job.id, delivery) {
            Some(Kept {
                begin: Begin::Run { attempt, .. },
                was,
                ..
            }) => (Some(was), i32::try_from(attempt).unwrap_or(i32::MAX)),
            _ => (None, 0),
        };
        self.query(
            &self.inner.sql.release,
            &[
                &id_text(&job.id),
                &delivery,
                &self.inner.sql.channel,
                &was,
                &attempt,
            ],
        )
        .await
        .map(drop)
    }

    async fn cancel(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        let inner = &self.inner;
        // (A job of it begun by a fetch here, and not yet by its worker, is read again.)
        inner.prebegun.touch(id);
        let rows = self
            .query(
                &inner.sql.cancel,
                &[
                    &id_text(&id),
                    &ms(now_ms),
                    &inner.timeout_json,
                    &inner.cancelled_json,
                    &inner.sql.channel,
                ],
            )
            .await?;
        rows.first().map(|row| snapshot(row, 1)).transpose()
    }
}

/// The owner as the limits see it: hex of the first 16 bytes of its SHA-256, so the owner's text
/// is never stored.
fn owner_digest(owner: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(owner.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_text_is_what_display_writes() {
        for _ in 0..100 {
            let id = RequestId::random();
            assert_eq!(id_text(&id), id.to_string());
        }
    }

    #[test]
    fn a_repeated_id_starts_the_next_statement() {
        let (a, b, c) = (
            RequestId::random(),
            RequestId::random(),
            RequestId::random(),
        );
        let mut sorted = vec![a, b, b, b, c];
        sorted.sort_by_key(id_text);
        let chunks: Vec<usize> = distinct_chunks(&sorted, |id| id).map(<[_]>::len).collect();
        assert_eq!(chunks.iter().sum::<usize>(), 5);
        for chunk in distinct_chunks(&sorted, |id| id) {
            let mut ids: Vec<_> = chunk.iter().map(id_text).collect();
            ids.dedup();
            assert_eq!(
                ids.len(),
                chunk.len(),
                "no id twice in one statement: {chunks:?}"
            );
        }
        assert_eq!(
            chunks.len(),
            3,
            "b, b and b in three statements: {chunks:?}"
        );
        let many: Vec<RequestId> = {
            let mut many: Vec<RequestId> = (0..600).map(|_| RequestId::random()).collect();
            many.sort_by_key(id_text);
            many
        };
        let lens: Vec<usize> = distinct_chunks(&many, |id| id).map(<[_]>::len).collect();
        assert_eq!(lens, vec![BATCH, BATCH, 600 - 2 * BATCH]);
    }

    #[test]
    fn answers_in_id_order_go_back_to_the_callers_order() {
        let ids: Vec<RequestId> = (0..50).map(|_| RequestId::random()).collect();
        let mut with_repeat = ids.clone();
        with_repeat.push(ids[3]);
        let order = id_order(with_repeat.iter());
        let sorted: Vec<(String, usize)> = order
            .iter()
            .map(|&at| (id_text(&with_repeat[at]), at))
            .collect();
        assert!(
            sorted.windows(2).all(|w| w[0].0 <= w[1].0),
            "sent in id order"
        );
        let repeated: Vec<usize> = sorted
            .iter()
            .filter(|(text, _)| *text == id_text(&ids[3]))
            .map(|(_, at)| *at)
            .collect();
        assert_eq!(repeated, vec![3, 50], "a repeated id keeps its order");
        let back = unsort(&order, sorted);
        for (at, (text, from)) in back.iter().enumerate() {
            assert_eq!(
                (text.as_str(), *from),
                (id_text(&with_repeat[at]).as_str(), at)
            );
        }
    }
}
