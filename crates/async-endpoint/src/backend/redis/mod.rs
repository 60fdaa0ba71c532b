//! The Redis backend (feature `redis`): many web and worker processes over one Redis.
//!
//! # Data layout
//!
//! | key | type | what |
//! |---|---|---|
//! | `{prefix}:r:{<id>}` | hash | one record per request, TTL re-applied on every write but `begin` (the TTL from its creation outlives its deadline, and so any begin) |
//! | `{prefix}:r:{<id>}:<field>` | string | a record field (`p`, `g`, `o` or `f`) longer than 64 bytes (params: longer than 512 bytes), kept out of the hash with the record's TTL |
//! | `{prefix}:q:<task>` | stream + group `workers` | the task's queue: one entry `i=<id>` per job |
//! | `{prefix}:w:<consumer>` | string | a worker process's heartbeat, refreshed every `takeover_after / 5`, expiring after `takeover_after × 2/5` |
//! | `{prefix}:s:<consumer>` | string | set by a worker that found that heartbeat gone; the jobs are taken over if it is still gone a grace period later |
//! | `{prefix}:n` | pub/sub channel | the id of every request that changed and is watched (see below) |
//! | `{prefix}:k:<digest>` | string | an idempotency key (digest of task, owner and key): `<id> <created_ms> <params digest>`, for the TTL from creation |
//! | `{prefix}:po:<owner digest>` | sorted set | an owner's pending request ids, scored by deadline (pending limits) |
//! | `{prefix}:pt:<task>` | sorted set | a task's pending request ids, scored by deadline (pending limits) |
//!
//! Record fields are one letter (`t` task, `s` status, `a` attempts, `p` params, `g` progress,
//! `o` output, `f` failure, `d` deadline, `l` TTL; `w` owner digest and `k` while it is in a
//! pending set; `c` the start's W3C `traceparent`, when it has one; `n` once a watching process
//! polled it) and params are dropped once the request is terminal, so a record costs little
//! beyond its params and output. A value longer than 64 bytes (Redis's default
//! `hash-max-listpack-value`) would turn the whole hash from its compact listpack encoding into a
//! hashtable (~600 bytes more), so it is kept in a string key of its own instead, named after the
//! record's key (same hash tag) and listed in the record's `x` field; params up to 512 bytes stay
//! in the hash instead, cut into 64-byte pieces (`p`, `p2` … `p8`: written with the record, read
//! by `begin` only, dropped with one `HDEL`); the scripts write, read,
//! re-expire and delete those keys with the record. A poll of such a record takes a second round
//! trip (the `poll.lua` script, which reads the hash and those keys atomically).
//!
//! Pending sets are written only by starts that carry the limit (the web process's settings);
//! every terminal transition removes the request from the sets its record names, and ids past
//! their deadline are dropped when a start counts them, so a set holds only pending requests.
//! The owner's text never reaches a key: its digest (SHA-256, first 16 bytes, hex) does.
//!
//! # Redis Cluster (feature `redis-cluster`)
//!
//! A cluster runs a script only if every key it touches hashes to one slot, and the layout
//! above puts a record (`{<id>}`) and its queue (no tag) in different slots. So on a cluster
//! ([`RedisBackend::cluster_builder`]) keys are placed in **shards**: `shards` (16 by default,
//! at most 256) hash tags `T`, each chosen so that its slot lies in a window of its own and the
//! shards spread evenly over the masters (`layout.rs`). Everything one script touches is in one
//! shard:
//!
//! | key (cluster) | what |
//! |---|---|
//! | `{prefix}:r:{T}:<id>` (+ `:<field>`) | the record, in its shard; the **first byte of the id names the shard** |
//! | `{prefix}:q:{T}:<task>` | the task's queue in shard `T`: one stream (and group) per task and shard |
//! | `{prefix}:k:{T}:<digest>` | an idempotency key, in the shard of the request it names |
//! | `{prefix}:po:{T}:<owner digest>` | an owner's pending set, in the owner's shard |
//! | `{prefix}:pt:{T}:<task>` | a task's pending set, in the task's shard |
//! | `{prefix}:w:{T}:<consumer>`, `{prefix}:s:{T}:<consumer>` | a worker's heartbeat and suspicion, one per shard (`takeover.lua` reads them with the shard's queue) |
//! | `{prefix}:n:{T}` | sharded pub/sub channel (`SPUBLISH`): changes of the shard's requests |
//! | `{prefix}:j:{T}`, `{prefix}:z:{T}` | sharded channel and key: new jobs in the shard, announced only while a worker sleeps |
//!
//! * **Placement.** The shard is chosen when a request starts ([`Backend::place`], before its
//!   token is signed) and written into the id's first byte, so every process finds the record
//!   from the id alone and a poll stays one `HMGET`: from the owner's digest when the start
//!   carries a per-owner pending limit (the owner's pending set lives with all of the owner's
//!   requests, so the limit stays exact and atomic); else from the task name when it carries a
//!   per-task limit (the task lives in one shard: exact and atomic, and that task's throughput
//!   is one master's); else from the idempotency key's digest (a repeat, same task, owner and
//!   key, lands where the first start put the key); else at random. A start carrying both
//!   limits cannot be kept atomic on a cluster: an endpoint with an `owner` hook and a per-task
//!   limit on a cluster is refused when it is built ([`Backend::check_limits`]) with
//!   [`Error::Config`] naming `max_pending_per_task` (set one of the two to `None`). The id
//!   keeps 120 random bits besides the shard byte; on one server ids are untouched.
//! * **Scripts** touch keys of their first key's shard only: the keys they are given, and the
//!   names they build (pending sets, heartbeats, the sleep mark and job channel) from `PREFIX`
//!   and the hash tag of `KEYS[1]` (`shard_key` in the generated prelude). Pipelines go per
//!   shard, since a cluster pipeline is one slot.
//! * **Workers read every shard without blocking connections.** A fetch runs one small script
//!   per shard (concurrently over the one multiplexed cluster connection): it marks the shard
//!   "a worker sleeps" (`{prefix}:z:{T}`, expiring after the read slice) and reads the
//!   shard's streams of every task with one non-blocking `XREADGROUP`. A start that finds the
//!   mark announces its job on the shard's channel `{prefix}:j:{T}`; the process's one shared
//!   subscriber hears it and wakes the fetch, which reads that shard again. Marking and reading
//!   are one script, so a job is either read or announced, never missed; with busy workers
//!   there is no mark and no announcement. A worker process holds no blocking connection at
//!   all; a missed announcement (subscriber reconnecting) costs at most one read slice
//!   (`takeover_after / 20`).
//! * **Pub/sub** uses sharded channels (Redis 7 `SPUBLISH`/`SSUBSCRIBE`): a message travels only
//!   within its shard's master and replicas, where a plain `PUBLISH` on a cluster is copied to
//!   every node. The shared subscriber is one RESP3 cluster connection (one socket per master)
//!   subscribed to the shards' channels; redis-rs subscribes again after a failover or slot
//!   move, and the subscriber then wakes every waiter, who re-reads (messages sent meanwhile are
//!   lost, as on one server after a reconnect).
//! * **Failover and redirections** (`MOVED`, `ASK`, `TRYAGAIN`) are redis-rs's cluster
//!   client's, bounded by the timeouts: a command caught by a failover fails with
//!   [`Error::Unavailable`] (a 503 with `Retry-After`, or a worker backing off). A write that
//!   the dead master acknowledged but had not replicated is lost with it, as with Sentinel.
//! * **One server is unchanged**: same keys, same ids, `shards` refused. Nothing migrates in
//!   place (a cluster is a new key space): switch every process over at once, and requests
//!   pending at the switch answer 404.
//!
//! # Round trips
//!
//! * start: one `EVALSHA` (store the record, `XADD` the job, trim the stream, re-apply its TTL);
//! * cancel: one `EVALSHA` (the record only; the job's stream entry goes when a worker skips or
//!   finishes it);
//! * poll: one `HMGET`, no script; only an unfinished request found past its deadline takes a
//!   second round trip, the `EVALSHA` that turns it into a timeout atomically (and the first
//!   poll of a request by a process that watches it, which marks it: see Announcements);
//! * worker: `XREADGROUP BLOCK` on a connection of its own for a batch of jobs, then ONE round
//!   trip to begin the whole batch (`begin_many`: a pipeline of `begin.lua` calls, one per job),
//!   one `EVALSHA` per progress update (throttled by the endpoint's `progress_interval`), and one
//!   round trip per gathered set of outcomes (`finish_many`: a pipeline of `finish.lua` calls,
//!   which also `XACK` and `XDEL` the entries). Each script touches one record (and its task's
//!   stream), never several, so a batch is as bounded as its length and each call stays within
//!   one record's keys; a pipeline answered `NOSCRIPT` (Redis lost its scripts) loads the script
//!   and re-runs the calls it refused;
//! * waiting polls: one shared subscriber connection per process feeds a [`Notifier`].
//!
//! # Announcements
//!
//! Writes are `PUBLISH`ed only for requests somebody watches. A process that watches a request
//! (a waiting poll, an event stream, a worker watching its job for a cancel) registers the watch
//! and then polls; that poll, seeing the process watches it, has `poll.lua` mark the unfinished
//! record (`n`, once: later polls see the mark with their `HMGET`). From then on `begin`,
//! `progress`, `retrying`, `finish` and timeouts publish its id. A request nobody watches costs
//! no `PUBLISH` at all. A cancel always publishes, so a worker that watched its job before
//! beginning it (and never polled it) hears of the cancel.

mod config;
mod connector;
mod layout;
mod queue;
mod scripts;
mod subscriber;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{
    FromRedisValue, ParsingError, RedisError, Script, ScriptInvocation, ServerErrorKind, Value,
};
use serde::Serialize;

pub use config::RedisBackendBuilder;
use connector::{Conn, Connector};
use scripts::{Admission, Skipped, Stored, Write};

use super::{
    Backend, Begin, Created, Job, Limit, NewRequest, Notifier, Outcome, PendingLimits, Snapshot,
    StoredFailure, Update, Watch, only_answer,
};
use crate::error::Error;
use crate::protocol::{Progress, RequestId, Status};

/// The consumer group every worker of every process joins, one per task stream.
const GROUP: &str = "workers";

/// Shards on a Redis Cluster unless `shards` says otherwise.
const DEFAULT_SHARDS: u16 = 16;

/// Storage and queue in Redis: records in hashes, jobs in one stream per task with a consumer
/// group, wake-ups over pub/sub. Use it for several web and worker processes.
///
/// Cheap to clone (clones share connections). Connections are made on first use and
/// re-established by themselves after Redis restarts; while Redis is unreachable, starting and
/// polling answer 503 and workers back off and retry.
///
/// Execution is at-least-once: a job whose worker dies is run again by another one after
/// [`takeover_after`](RedisBackendBuilder::takeover_after) (5 s), so tasks should be idempotent. Records and
/// queues live in Redis, so use a Redis that persists (AOF) if requests must survive its restart.
/// One Redis, a Sentinel-managed primary, or (feature `redis-cluster`,
/// [`cluster_builder`](Self::cluster_builder)) a Redis Cluster or Valkey cluster.
///
/// ```no_run
/// use async_endpoint::{AsyncEndpoint, backend::RedisBackend};
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
/// // A web process whose jobs run in separate worker processes:
/// let web = AsyncEndpoint::builder()
///     .secret(&secret)
///     .backend(RedisBackend::connect("redis://127.0.0.1:6379/").await?)
///     .task(Echo)
///     .in_process_workers(false)
///     .build()?;
///
/// // A worker process (same secret, tasks and prefix):
/// let worker = AsyncEndpoint::builder()
///     .secret(&secret)
///     .backend(RedisBackend::builder("redis://127.0.0.1:6379/").build()?)
///     .task(Echo)
///     .in_process_workers(false)
///     .build()?;
/// worker.run_worker(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.inner.settings.prefix)
            .field("consumer", &self.inner.consumer)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Where connections go (the URL's server, or the primary Sentinel names).
    connector: Connector,
    settings: RedisBackendBuilder,
    keys: Keys,
    /// This process's consumer name: host, pid and random bits, so no two processes collide.
    consumer: String,
    /// Commands (scripts); multiplexed, reconnecting, made on first use.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    /// On a Redis Cluster, commands go over this connection instead (made on first use; it
    /// follows slots and failovers by itself).
    #[cfg(feature = "redis-cluster")]
    cluster: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
    /// With Sentinel, commands go over this connection to the current primary instead; it is
    /// dropped on any connection trouble or `READONLY` and re-made through Sentinel.
    primary: Mutex<Option<MultiplexedConnection>>,
    /// One (re)connection through Sentinel at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Blocking reads get a connection of their own, so they never hold up other commands.
    blocking: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    notifier: Notifier,
    subscriber_started: AtomicBool,
    /// Set by the subscriber once its first subscription is active.
    subscribed: Arc<tokio::sync::watch::Sender<bool>>,
    /// An operation stopped waiting for the first subscription: wake everyone once it is active.
    missed: Arc<AtomicBool>,
    heartbeat_started: AtomicBool,
    /// On a cluster: rung by the subscriber when a start announces a job while workers sleep.
    doorbell: Arc<tokio::sync::Notify>,
    queue: Mutex<queue::QueueState>,
    /// Entries delivered to this process and not yet terminal: (stream, entry id) → heartbeat
    /// until (unix ms). A heartbeat keeps them from being claimed by other workers.
    in_flight: Mutex<HashMap<(String, String), u64>>,
    /// The failure written when a job was delivered more than `max_deliveries` times: its kind
    /// only, so the client sees the endpoint's configured internal-error message.
    poison_json: String,
    /// The failure written when a deadline passes: its kind only.
    timeout_json: String,
    /// The failure written when a client cancels: its kind only.
    cancelled_json: String,
    scripts: scripts::Scripts,
    /// Dropped with the backend; background tasks watch it and end.
    closed: tokio::sync::watch::Sender<()>,
}

/// Key and channel names under the prefix.
struct Keys {
    prefix: String,
    channel: String,
    /// On a Redis Cluster, the shards keys are placed in (see `layout.rs`); `None` on one
    /// server, whose key names stay as they always were.
    shards: Option<layout::Shards>,
}

impl Keys {
    /// `{prefix}:<kind>:` on one server, `{prefix}:<kind>:{T}:` in shard `shard` of a cluster.
    fn base(&self, kind: &str, shard: u16) -> String {
        match &self.shards {
            None => format!("{}:{kind}:", self.prefix),
            Some(shards) => format!("{}:{kind}:{{{}}}:", self.prefix, shards.tag(shard)),
        }
    }

    fn record(&self, id: &RequestId) -> String {
        match &self.shards {
            // The id is the hash tag, so everything about one request maps to one slot.
            None => format!("{}:r:{{{id}}}", self.prefix),
            Some(_) => format!("{}{id}", self.base("r", layout::Shards::of(id))),
        }
    }

    /// The queue stream of `task` that request `id`'s job is in.
    fn queue(&self, task: &str, id: &RequestId) -> String {
        self.queue_in(task, layout::Shards::of(id))
    }

    /// The queue stream of `task` in `shard` (the only one on one server).
    fn queue_in(&self, task: &str, shard: u16) -> String {
        format!("{}{task}", self.base("q", shard))
    }

    /// Every queue stream of `task`: one per shard on a cluster, one on one server.
    fn queues(&self, task: &str) -> Vec<String> {
        self.shard_list()
            .map(|shard| self.queue_in(task, shard))
            .collect()
    }

    /// The shards workers read: `0..shards` on a cluster, just `0` on one server.
    fn shard_list(&self) -> std::ops::Range<u16> {
        0..self.shards.as_ref().map_or(1, layout::Shards::count)
    }

    /// The channel request `id`'s changes are announced on: `{prefix}:n`, or its shard's
    /// sharded channel `{prefix}:n:{T}` on a cluster.
    fn channel(&self, id: &RequestId) -> String {
        self.channel_in(layout::Shards::of(id))
    }

    fn channel_in(&self, shard: u16) -> String {
        match &self.shards {
            None => self.channel.clone(),
            Some(shards) => format!("{}:{{{}}}", self.channel, shards.tag(shard)),
        }
    }

    /// A worker process's heartbeat key (its consumer name) in `shard`, see `takeover.lua`.
    fn alive(&self, consumer: &str, shard: u16) -> String {
        format!("{}{consumer}", self.base("w", shard))
    }

    /// Set by a worker that found `alive` gone; the worker clears it when it beats.
    fn suspect(&self, consumer: &str, shard: u16) -> String {
        format!("{}{consumer}", self.base("s", shard))
    }

    /// The idempotency key `scoped`, in the shard of the request `id` it names.
    fn idempotency(&self, scoped: &str, id: &RequestId) -> String {
        format!("{}{scoped}", self.base("k", layout::Shards::of(id)))
    }

    /// The task a queue stream belongs to.
    fn task_of<'a>(&self, queue: &'a str) -> Option<&'a str> {
        let rest = queue
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(":q:"))?;
        match &self.shards {
            None => Some(rest),
            // `{T}:<task>`
            Some(_) => rest
                .strip_prefix('{')
                .and_then(|rest| rest.split_once("}:"))
                .map(|(_, task)| task),
        }
    }
}

impl RedisBackend {
    /// Starts configuring a backend for the Redis at `url` (`redis://[user:pass@]host:port/db`,
    /// `rediss://` for TLS with the `redis-tls` feature, `redis+sentinel://host:26379,…/<master>` for
    /// Sentinel). See [`RedisBackendBuilder`] for the settings.
    ///
    /// ```
    /// use async_endpoint::backend::RedisBackend;
    ///
    /// let built = RedisBackend::builder("redis://127.0.0.1/").prefix("").build();
    /// assert!(matches!(built, Err(async_endpoint::Error::Config { setting: "prefix", .. })));
    /// ```
    pub fn builder(url: impl Into<String>) -> RedisBackendBuilder {
        RedisBackendBuilder::new(url)
    }

    /// A backend with the default settings, after checking that Redis answers (so a worker
    /// process fails fast on a wrong URL). Use [`builder`](Self::builder) to start while Redis
    /// is down.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), async_endpoint::Error> {
    /// let redis = async_endpoint::backend::RedisBackend::connect("redis://127.0.0.1/").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: impl Into<String>) -> Result<Self, Error> {
        let backend = Self::builder(url).build()?;
        backend.ping().await?;
        Ok(backend)
    }

    /// Starts configuring a backend for the Redis Cluster (or Valkey cluster) whose seed nodes
    /// are `urls` (`redis://[user:pass@]host:port/` each, or all `rediss://` for TLS with the
    /// `redis-tls` feature and the same TLS settings as one server; a few masters are enough, the
    /// rest of the cluster is found from them). Feature `redis-cluster`. Requests are spread over
    /// [`shards`](RedisBackendBuilder::shards), each in a hash slot of its own, so every script
    /// touches one slot; `MOVED`/`ASK` redirections and failovers are followed by redis-rs's
    /// cluster client. See the module docs for the layout and the README ("Scaling out").
    ///
    /// ```
    /// use async_endpoint::backend::RedisBackend;
    ///
    /// // Nothing connects yet: the first command does.
    /// let redis = RedisBackend::cluster_builder([
    ///     "redis://10.0.0.1:6379/",
    ///     "redis://10.0.0.2:6379/",
    ///     "redis://10.0.0.3:6379/",
    /// ])
    /// .shards(32)
    /// .build()?;
    /// # Ok::<(), async_endpoint::Error>(())
    /// ```
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster_builder<I>(urls: I) -> RedisBackendBuilder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        RedisBackendBuilder::new_cluster(urls)
    }

    /// Checks that Redis answers (for health checks).
    ///
    /// ```no_run
    /// # async fn f(redis: async_endpoint::backend::RedisBackend) {
    /// if let Err(error) = redis.ping().await {
    ///     eprintln!("Redis is not reachable: {error}");
    /// }
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.conn().await?;
        self.bounded(redis::cmd("PING").query_async::<Value>(&mut conn))
            .await
            .map(drop)
    }

    /// The consumer name this process reads its task streams with (`host-pid-random`).
    pub fn consumer_name(&self) -> &str {
        &self.inner.consumer
    }

    fn from_parts(connector: Connector, settings: RedisBackendBuilder) -> Self {
        let keys = Keys {
            channel: format!("{}:n", settings.prefix),
            prefix: settings.prefix.clone(),
            shards: connector
                .is_cluster()
                .then(|| layout::Shards::new(settings.shards.unwrap_or(DEFAULT_SHARDS))),
        };
        let cluster = keys.shards.is_some();
        // A kind alone always serializes; the fallbacks are the same JSON by hand.
        let poison_json = failure_json(&StoredFailure::internal())
            .unwrap_or_else(|_| r#"{"kind":"internal"}"#.to_owned());
        let timeout_json = failure_json(&StoredFailure::timeout())
            .unwrap_or_else(|_| r#"{"kind":"timeout"}"#.to_owned());
        let cancelled_json = failure_json(&StoredFailure::cancelled())
            .unwrap_or_else(|_| r#"{"kind":"cancelled"}"#.to_owned());
        RedisBackend {
            inner: Arc::new(Inner {
                connector,
                keys,
                consumer: consumer_name(),
                conn: tokio::sync::OnceCell::new(),
                #[cfg(feature = "redis-cluster")]
                cluster: tokio::sync::OnceCell::new(),
                primary: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                blocking: tokio::sync::Mutex::new(None),
                notifier: Notifier::default(),
                subscriber_started: AtomicBool::new(false),
                subscribed: Arc::new(tokio::sync::watch::channel(false).0),
                missed: Arc::new(AtomicBool::new(false)),
                heartbeat_started: AtomicBool::new(false),
                doorbell: Arc::new(tokio::sync::Notify::new()),
                queue: Mutex::new(queue::QueueState::default()),
                in_flight: Mutex::new(HashMap::new()),
                poison_json,
                timeout_json,
                cancelled_json,
                scripts: scripts::Scripts::new(GROUP, &settings.prefix, cluster),
                closed: tokio::sync::watch::channel(()).0,
                settings,
            }),
        }
    }

    /// The shared command connection, made on first use (inside the runtime).
    async fn conn(&self) -> Result<Conn, Error> {
        let settings = &self.inner.settings;
        let client = match &self.inner.connector {
            Connector::Direct(client) => client,
            Connector::Sentinel(_) => return self.primary().await.map(Conn::Plain),
            #[cfg(feature = "redis-cluster")]
            Connector::Cluster(clients) => {
                return self
                    .inner
                    .cluster
                    .get_or_try_init(|| {
                        // Connects to the seeds and reads the slot map; a failure leaves the
                        // cell empty, so the next command tries again.
                        self.bounded(clients.commands.get_async_connection())
                    })
                    .await
                    .cloned()
                    .map(Conn::Cluster);
            }
        };
        self.inner
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.connection_timeout))
                    .set_response_timeout(Some(settings.response_timeout))
                    // Fail a command fast while Redis is down (the caller answers 503 or backs
                    // off); the next command starts a new reconnection attempt.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                client.get_connection_manager_lazy(config).map_err(map_err)
            })
            .await
            .cloned()
            .map(Conn::Managed)
    }

    /// With Sentinel: the connection to the current primary, made through Sentinel when there
    /// is none (first use, or dropped by [`forget_primary`](Self::forget_primary)).
    async fn primary(&self) -> Result<MultiplexedConnection, Error> {
        if let Some(conn) = Self::lock(&self.inner.primary).clone() {
            return Ok(conn);
        }
        let _one = self.inner.connecting.lock().await;
        if let Some(conn) = Self::lock(&self.inner.primary).clone() {
            return Ok(conn);
        }
        let settings = &self.inner.settings;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connection_timeout))
            .set_response_timeout(Some(settings.response_timeout));
        let connector = self.inner.connector.clone();
        let conn = self
            .bounded(async move {
                connector
                    .client()
                    .await?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            })
            .await?;
        *Self::lock(&self.inner.primary) = Some(conn.clone());
        Ok(conn)
    }

    /// With Sentinel: drops the command connection after `error`, when it means the connection
    /// is dead or no longer goes to the primary (`READONLY`: a failover made it a replica), so
    /// the next command asks Sentinel again.
    fn forget_primary(&self, error: Option<&RedisError>) {
        if !self.inner.connector.is_sentinel() {
            return;
        }
        let stale = error.is_none_or(|error| {
            use redis::{ErrorKind, RetryMethod, ServerErrorKind};
            error.is_io_error()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || matches!(
                    error.kind(),
                    ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
                )
                || matches!(
                    error.retry_method(),
                    RetryMethod::Reconnect | RetryMethod::ReconnectFromInitialConnections
                )
        });
        if stale {
            Self::lock(&self.inner.primary).take();
        }
    }

    /// Bounds a command by the connection and response timeouts together, so no call hangs.
    async fn bounded<T>(
        &self,
        command: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, Error> {
        self.bounded_raw(command).await?.map_err(map_err)
    }

    /// Like [`bounded`](Self::bounded), but hands Redis's own error back for inspection.
    async fn bounded_raw<T>(
        &self,
        command: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<Result<T, RedisError>, Error> {
        let settings = &self.inner.settings;
        let bound = settings.connection_timeout * 2 + settings.response_timeout;
        let answer = tokio::time::timeout(bound, command).await;
        match &answer {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => self.forget_primary(Some(error)),
            Err(_) => self.forget_primary(None),
        }
        answer.map_err(|elapsed| Error::Unavailable(Box::new(elapsed)))
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        // Critical sections are single map operations; a poisoned lock still holds a valid map.
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Right after the first `watch`, holds reads and writes until the shared subscription is
    /// active (bounded), so no change made meanwhile goes unnotified. This happens once per
    /// process; later reconnects wake every waiter instead (spurious wake-ups are harmless
    /// there, and a re-read tells them apart).
    async fn await_subscriber(&self) {
        let inner = &self.inner;
        if !inner.subscriber_started.load(Ordering::Acquire) || inner.missed.load(Ordering::Acquire)
        {
            return;
        }
        // The common case, once subscribed: one atomic read, no receiver made.
        if *inner.subscribed.borrow() {
            return;
        }
        let mut ready = inner.subscribed.subscribe();
        let bound = inner.settings.connection_timeout + inner.settings.response_timeout;
        if tokio::time::timeout(bound, ready.wait_for(|ready| *ready))
            .await
            .is_err()
        {
            // Stop holding anyone up; the subscriber wakes every waiter once it gets through.
            inner.missed.store(true, Ordering::Release);
        }
    }

    /// Starts the shared subscriber on first use (it needs a runtime, which `watch` runs in).
    fn ensure_subscriber(&self) {
        let inner = &self.inner;
        if inner.subscriber_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime: waiting polls still end at their bound and re-read.
            return;
        };
        if inner
            .subscriber_started
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            #[cfg(feature = "redis-cluster")]
            if let Connector::Cluster(clients) = &inner.connector {
                let keys = &inner.keys;
                runtime.spawn(subscriber::run_cluster(subscriber::ClusterSubscriber {
                    clients: (**clients).clone(),
                    changes: keys.shard_list().map(|s| keys.channel_in(s)).collect(),
                    jobs: keys
                        .shard_list()
                        .map(|s| format!("{}jobs", keys.base("j", s)))
                        .collect(),
                    notifier: inner.notifier.clone(),
                    doorbell: inner.doorbell.clone(),
                    closed: inner.closed.subscribe(),
                    subscribed: inner.subscribed.clone(),
                    missed: inner.missed.clone(),
                    connection_timeout: inner.settings.connection_timeout,
                    response_timeout: inner.settings.response_timeout,
                }));
                return;
            }
            runtime.spawn(subscriber::run(subscriber::Subscriber {
                connector: inner.connector.clone(),
                channel: inner.keys.channel.clone(),
                notifier: inner.notifier.clone(),
                closed: inner.closed.subscribe(),
                subscribed: inner.subscribed.clone(),
                missed: inner.missed.clone(),
                connection_timeout: inner.settings.connection_timeout,
                response_timeout: inner.settings.response_timeout,
            }));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wakes background tasks so they end (their receivers see the sender gone).
        self.closed.send_replace(());
    }
}

/// `host-pid-random`: unique per process, readable in `XINFO CONSUMERS`.
fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    let mut random = [0u8; 4];
    // Without OS randomness the pid still separates live processes; zeros are fine then.
    let _ = getrandom::fill(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{}-{random}", std::process::id())
}

/// Connection trouble, timeouts and "try again" answers are [`Error::Unavailable`] (clients get
/// 503 and workers back off); anything else Redis refuses is [`Error::Backend`].
fn map_err(error: RedisError) -> Error {
    use redis::{ErrorKind, RetryMethod, ServerErrorKind};
    let transient = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::Parse
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::TryAgain
                )
        )
        || matches!(
            error.retry_method(),
            RetryMethod::Reconnect
                | RetryMethod::ReconnectFromInitialConnections
                | RetryMethod::WaitAndRetry
                | RetryMethod::RetryImmediately
        )
        || has_code(&error, &[code::OOM, code::BUSY]);
    if transient {
        Error::Unavailable(Box::new(error))
    } else {
        Error::Backend(Box::new(error))
    }
}

/// Server error codes redis-rs 1.2 has no [`redis::ServerErrorKind`] for: it keeps them as
/// "extension" codes, the first word of the error as Redis sent it ([`RedisError::code`]).
mod code {
    /// The stream or its consumer group does not exist.
    pub(super) const NOGROUP: &str = "NOGROUP";
    /// A blocking read was ended because its stream was deleted (it expired).
    pub(super) const UNBLOCKED: &str = "UNBLOCKED";
    /// Redis is at `maxmemory` and refuses writes.
    pub(super) const OOM: &str = "OOM";
    /// A script or function runs too long and holds Redis.
    pub(super) const BUSY: &str = "BUSY";
}

/// Whether Redis refused with one of `codes`.
fn has_code(error: &RedisError, codes: &[&str]) -> bool {
    error.code().is_some_and(|code| codes.contains(&code))
}

/// The record fields a poll reads, in the order of [`Fields`], then `x` (the letters of the
/// fields kept out of line) and `n` (set once a watching process polled it), see `common.lua`.
const SNAPSHOT_FIELDS: [&str; 9] = ["t", "s", "a", "g", "o", "f", "d", "x", "n"];

/// A record's [`SNAPSHOT_FIELDS`] as `HMGET` (or `poll.lua`) returns them; `None` where a field
/// is missing (no task: no record).
struct Fields {
    task: Option<String>,
    status: Option<Stored>,
    attempts: Option<u64>,
    progress: Option<String>,
    output: Option<String>,
    failure: Option<String>,
    deadline_ms: Option<u64>,
}

impl FromRedisValue for Fields {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let (task, status, attempts, progress, output, failure, deadline_ms) =
            redis::from_redis_value(v)?;
        Ok(Fields {
            task,
            status,
            attempts,
            progress,
            output,
            failure,
            deadline_ms,
        })
    }
}

impl Fields {
    /// Unfinished past its deadline: the poll must turn it into a timeout.
    fn overdue(&self, now_ms: u64) -> bool {
        self.status.is_some_and(Stored::unfinished)
            && self.deadline_ms.is_some_and(|deadline| now_ms > deadline)
    }

    /// The snapshot, or `None` when there is no record.
    fn snapshot(self) -> Result<Option<Snapshot>, Error> {
        let Some(task) = self.task else {
            return Ok(None);
        };
        let status = self
            .status
            .ok_or_else(|| Error::Corrupt("record without a status".to_owned()))?
            .status();
        let deadline_ms = self
            .deadline_ms
            .ok_or_else(|| Error::Corrupt("record without a deadline".to_owned()))?;
        let progress: Option<Progress> = decode(&task, self.progress)?;
        let output = self.output.filter(|_| status == Status::Done);
        let failure: Option<StoredFailure> = if status == Status::Failed {
            decode(&task, self.failure)?
        } else {
            None
        };
        Ok(Some(Snapshot {
            attempt: self.attempts.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
            task,
            status,
            progress,
            output,
            failure,
            deadline_ms,
        }))
    }
}

/// What `begin.lua` answers: the attempt to run, or why not.
enum Began {
    Run {
        attempt: u64,
        params: String,
        deadline_ms: u64,
        traceparent: String,
    },
    Skipped(Skipped),
}

impl FromRedisValue for Began {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        if let Value::Array(_) = v {
            let (attempt, params, deadline_ms, traceparent) = redis::from_redis_value(v)?;
            Ok(Began::Run {
                attempt,
                params,
                deadline_ms,
                traceparent,
            })
        } else {
            redis::from_redis_value(v).map(Began::Skipped)
        }
    }
}

/// Decodes a reply read as a plain [`Value`]. Typed queries would report a reply of the wrong
/// shape as redis-rs's `Parse` error, which [`map_err`] must treat as a broken connection (the
/// protocol parser reports the same kind); decoding apart keeps it [`Error::Corrupt`].
/// The earlier request an idempotency entry (`<id> <created_ms> <params digest>`) names.
fn existing(entry: &[u8], params_digest: &str) -> Result<Created, Error> {
    let corrupt = || {
        Error::Corrupt(format!(
            "idempotency entry {:?}",
            String::from_utf8_lossy(entry)
        ))
    };
    let entry = std::str::from_utf8(entry).map_err(|_| corrupt())?;
    let mut fields = entry.split(' ');
    let (Some(id), Some(created_ms), Some(digest), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(corrupt());
    };
    Ok(Created::Existing {
        id: id.parse().map_err(|_| corrupt())?,
        created_ms: created_ms.parse().map_err(|_| corrupt())?,
        same_params: digest == params_digest,
    })
}

fn reply<T: FromRedisValue>(what: &str, value: Value) -> Result<T, Error> {
    redis::from_redis_value(value).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// A pending limit as `create.lua` takes it: the number, or `''` when off.
fn limit_arg(limit: Option<u32>) -> String {
    limit.map(|n| n.to_string()).unwrap_or_default()
}

/// The part of an owner's pending-set key that names it: hex of the first 16 bytes of its
/// SHA-256, so any owner text makes a short, safe key name.
fn owner_digest(owner: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(owner.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn failure_json(failure: &StoredFailure) -> Result<String, Error> {
    serde_json::to_string(failure)
        .map_err(|e| Error::Corrupt(format!("failure not encodable: {e}")))
}

/// Progress as stored: `{at, total, message}` (the percent is derived when read).
#[derive(Serialize)]
struct StoredProgress<'a> {
    at: u64,
    total: Option<u64>,
    message: &'a str,
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

/// A per-owner and a per-task limit together, which a cluster cannot keep atomic.
fn both_limits() -> Error {
    Error::Config {
        setting: "max_pending_per_task",
        reason: "on a Redis Cluster a per-task pending limit cannot be kept atomic together with \
                 a per-owner limit (the owner's requests live in the owner's shard, the task's in \
                 the task's): set one of max_pending_per_task and max_pending_per_owner to None"
            .into(),
    }
}

/// Where a start must live on a cluster so that its script touches one slot: the text its
/// shard is chosen from, or `None` when any shard will do.
fn anchor(request: &NewRequest) -> Result<Option<String>, Error> {
    let owner = request
        .owner
        .as_deref()
        .filter(|_| request.limits.per_owner.is_some());
    match (owner, request.limits.per_task) {
        (Some(_), Some(_)) => Err(both_limits()),
        // The owner's pending set lives in the owner's shard, with all of the owner's requests.
        (Some(owner), None) => Ok(Some(owner_digest(owner))),
        // The task's pending set lives in the task's shard, with all of the task's requests.
        (None, Some(_)) => Ok(Some(format!("task:{}", request.task))),
        // An idempotency key lives with the request it names; a repeat (same task, owner and
        // key) finds it in the same shard.
        (None, None) => Ok(request.idempotency.as_ref().map(|key| key.scoped.clone())),
    }
}

impl Backend for RedisBackend {
    fn check_limits(&self, limits: &PendingLimits) -> Result<(), Error> {
        if self.inner.keys.shards.is_some()
            && limits.per_owner.is_some()
            && limits.per_task.is_some()
        {
            return Err(both_limits());
        }
        Ok(())
    }

    fn place(&self, request: &mut NewRequest) {
        let Some(shards) = &self.inner.keys.shards else {
            return;
        };
        let shard = match anchor(request) {
            Ok(Some(anchor)) => shards.anchored(&anchor),
            Ok(None) => shards.spread(&request.id),
            // `create` refuses the start with the error; any id will do until then.
            Err(_) => return,
        };
        request.id = layout::Shards::placed(request.id, shard);
    }

    async fn create(&self, request: NewRequest) -> Result<Created, Error> {
        let keys = &self.inner.keys;
        if let Some(shards) = &keys.shards {
            // Everything the start touches must be in the id's shard (see `place`).
            let needed = anchor(&request)?.map(|anchor| shards.anchored(&anchor));
            let shard = layout::Shards::of(&request.id);
            if needed.is_some_and(|needed| needed != shard) || shard >= shards.count() {
                return Err(Error::Config {
                    setting: "shards",
                    reason: format!(
                        "request {} is not placed for this cluster layout (call Backend::place \
                         before create, as the engine does, and give every process the same \
                         `shards`)",
                        request.id
                    ),
                });
            }
        }
        let ttl_ms = request.ttl.as_millis().max(1) as u64;
        let mut conn = self.conn().await?;
        let id = request.id.to_string();
        let mut call = self.inner.scripts.create.prepare_invoke();
        call.key(keys.record(&request.id))
            .key(keys.queue(request.task, &request.id))
            .arg(request.task)
            .arg(&request.params)
            .arg(request.deadline_ms)
            .arg(ttl_ms)
            .arg(&id)
            .arg(request.created_ms);
        // Pending limits: the owner's applies only to a start with an owner.
        let limits = request.limits;
        let owner = request
            .owner
            .as_deref()
            .filter(|_| limits.per_owner.is_some());
        call.arg(limit_arg(owner.and(limits.per_owner)))
            .arg(owner.map(owner_digest).unwrap_or_default())
            .arg(limit_arg(limits.per_task));
        if let Some(key) = &request.idempotency {
            call.key(keys.idempotency(&key.scoped, &request.id));
        }
        // ARGV[10] is read only with an idempotency key; ARGV[11] is the traceparent or ''.
        call.arg(
            request
                .idempotency
                .as_ref()
                .map_or("", |key| &key.params_digest),
        )
        .arg(request.traceparent.as_deref().unwrap_or_default());
        let created: Value = self.bounded(call.invoke_async(&mut conn)).await?;
        match (created, &request.idempotency) {
            (Value::BulkString(entry), Some(key)) => existing(&entry, &key.params_digest),
            (created, _) => Ok(match reply::<Admission>("create reply", created)? {
                Admission::Admitted => Created::New,
                Admission::OverOwner => Created::OverLimit(Limit::Owner),
                Admission::OverTask => Created::OverLimit(Limit::Task),
            }),
        }
    }

    async fn poll(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        self.await_subscriber().await;
        let keys = &self.inner.keys;
        let key = keys.record(&id);
        let mut conn = self.conn().await?;
        // The common case is a plain HMGET: one round trip and no script, as cheap as reading a
        // hash can be. Only a request found unfinished past its deadline takes the script, which
        // re-checks and writes the timeout atomically (a second round trip, once per request).
        // A record with a value kept out of line (longer than 64 bytes, see `common.lua`) is read
        // by the script too, which reads those values atomically with the hash.
        //
        // A process that watches the request (a waiting poll, an event stream, a worker's cancel
        // watch: each registers its watch before it polls) has the script mark an unfinished
        // record (`n`) once, so that later writes to it are announced; writes to records nobody
        // watches are not (see `common.lua`).
        let watched = self.inner.notifier.is_watched(id);
        let read = redis::Cmd::hmget(&key, &SNAPSHOT_FIELDS);
        let (fields, outside, marked): (Fields, bool, bool) =
            match self.bounded(read.query_async(&mut conn)).await? {
                Value::Array(mut values) if values.len() == SNAPSHOT_FIELDS.len() => {
                    let marked = !matches!(values.pop(), Some(Value::Nil));
                    let outside = !matches!(values.pop(), Some(Value::Nil));
                    (reply("HMGET reply", Value::Array(values))?, outside, marked)
                }
                other => return Err(Error::Corrupt(format!("HMGET reply: {other:?}"))),
            };
        let mark = watched && !marked && fields.status.is_some_and(Stored::unfinished);
        if fields.task.is_none() || (!outside && !mark && !fields.overdue(now_ms)) {
            return fields.snapshot();
        }
        let mut call = self.inner.scripts.poll.prepare_invoke();
        call.key(&key)
            .arg(now_ms)
            .arg(&self.inner.timeout_json)
            .arg(keys.channel(&id))
            .arg(id.to_string())
            .arg(if mark { "1" } else { "" });
        let polled: Option<(Fields, Write)> = reply(
            "poll reply",
            self.bounded(call.invoke_async(&mut conn)).await?,
        )?;
        let Some((fields, write)) = polled else {
            return Ok(None);
        };
        if write == Write::Applied {
            tracing::warn!(request_id = %id, "deadline passed: request failed with a timeout");
        }
        fields.snapshot()
    }

    fn watch(&self, id: RequestId) -> Watch {
        self.ensure_subscriber();
        self.inner.notifier.watch(id)
    }

    async fn fetch(
        &self,
        tasks: &[&'static str],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, Error> {
        queue::fetch(self, tasks, max, block).await
    }

    async fn queue_depth(&self, task: &'static str) -> Result<Option<u64>, Error> {
        queue::depth(self, task).await.map(Some)
    }

    async fn begin(&self, job: &Job, now_ms: u64) -> Result<Begin, Error> {
        only_answer(
            self.begin_many(std::slice::from_ref(job), now_ms).await?,
            "begin",
        )
    }

    async fn begin_many(&self, jobs: &[Job], now_ms: u64) -> Result<Vec<Begin>, Error> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.await_subscriber().await;
        let inner = &self.inner;
        let script = &inner.scripts.begin;
        let calls: Vec<ScriptInvocation<'_>> = jobs
            .iter()
            .map(|job| {
                let mut call = self.transition(script, job, now_ms);
                call.arg(job.deliveries)
                    .arg(inner.settings.max_deliveries)
                    .arg(&inner.poison_json);
                call
            })
            .collect();
        let ids: Vec<RequestId> = jobs.iter().map(|job| job.id).collect();
        let began = self
            .invoke_all(script, &calls, &ids)
            .await
            .and_then(|replies| {
                replies
                    .into_iter()
                    .map(|began| reply::<Began>("begin reply", began))
                    .collect::<Result<Vec<_>, _>>()
            });
        let began = match began {
            Ok(began) => began,
            Err(error) => {
                // The worker hands the jobs back; stop vouching for them so one that is not
                // handed back is claimed after the idle bound instead of kept alive by our
                // heartbeat.
                for job in jobs {
                    queue::forget(self, job);
                }
                return Err(error);
            }
        };
        Ok(jobs
            .iter()
            .zip(began)
            .map(|(job, began)| self.began(job, began))
            .collect())
    }

    async fn update(&self, id: RequestId, update: Update) -> Result<(), Error> {
        match update {
            Update::Progress(progress) => self.save_progress(id, &progress).await,
            Update::Retrying => self.mark_retrying(id).await,
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
        self.await_subscriber().await;
        let script = &self.inner.scripts.finish;
        let mut calls: Vec<ScriptInvocation<'_>> = Vec::with_capacity(finished.len());
        for (job, outcome) in finished {
            let mut call = self.transition(script, job, now_ms);
            match outcome {
                Outcome::Done(output) => call.arg(Stored::Done.code()).arg(output),
                Outcome::Failed(failure) => {
                    call.arg(Stored::Failed.code()).arg(failure_json(failure)?)
                }
            };
            calls.push(call);
        }
        let ids: Vec<RequestId> = finished.iter().map(|(job, _)| job.id).collect();
        let stands = self.invoke_all(script, &calls, &ids).await?;
        for (job, _) in finished {
            queue::forget(self, job);
        }
        stands
            .into_iter()
            .map(|stands| reply::<Stored>("finish reply", stands).map(Stored::status))
            .collect()
    }

    async fn release(&self, job: &Job) -> Result<(), Error> {
        queue::release(self, job).await
    }

    async fn cancel(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        self.await_subscriber().await;
        let inner = &self.inner;
        let keys = &inner.keys;
        let mut conn = self.conn().await?;
        let mut call = inner.scripts.cancel.prepare_invoke();
        call.key(keys.record(&id))
            .arg(now_ms)
            .arg(&inner.timeout_json)
            .arg(&inner.cancelled_json)
            .arg(keys.channel(&id))
            .arg(id.to_string());
        let cancelled: Option<(Fields, Write)> = reply(
            "cancel reply",
            self.bounded(call.invoke_async(&mut conn)).await?,
        )?;
        let Some((fields, _)) = cancelled else {
            return Ok(None);
        };
        fields.snapshot()
    }
}

impl RedisBackend {
    /// A call of `begin.lua` or `finish.lua` for `job`, with what both take first: KEYS record
    /// and queue; ARGV now, timeout failure, channel, id, group, receipt.
    fn transition<'s>(&self, script: &'s Script, job: &Job, now_ms: u64) -> ScriptInvocation<'s> {
        let inner = &self.inner;
        let keys = &inner.keys;
        let mut call = script.prepare_invoke();
        call.key(keys.record(&job.id))
            .key(keys.queue(&job.task, &job.id))
            .arg(now_ms)
            .arg(&inner.timeout_json)
            .arg(keys.channel(&job.id))
            .arg(job.id.to_string())
            .arg(GROUP)
            .arg(&job.receipt);
        call
    }

    /// What a worker does with `job` after `begin.lua` answered `began`; keeps vouching for a
    /// job that runs until its deadline, stops for one that does not.
    fn began(&self, job: &Job, began: Began) -> Begin {
        match began {
            Began::Run {
                attempt,
                params,
                deadline_ms,
                traceparent,
            } => {
                queue::vouch_until(self, job, deadline_ms.saturating_add(1000));
                Begin::Run {
                    params,
                    attempt: attempt.min(u64::from(u32::MAX)) as u32,
                    deadline_ms,
                    traceparent: Some(traceparent).filter(|t| !t.is_empty()),
                }
            }
            Began::Skipped(why) => {
                queue::forget(self, job);
                match why {
                    Skipped::TimedOut => {
                        tracing::warn!(request_id = %job.id, "deadline passed before the job started: request failed with a timeout");
                    }
                    Skipped::Poisoned => {
                        tracing::error!(request_id = %job.id, deliveries = job.deliveries, max_deliveries = self.inner.settings.max_deliveries, "job delivered too often (its workers keep dying): request failed");
                    }
                    Skipped::Gone => {}
                }
                Begin::Skip
            }
        }
    }

    /// Runs `calls` of `script` in one pipeline (one round trip) and returns their replies in
    /// order. Each call touches one record (and its task's stream) only, so the batch stays
    /// bounded by its length and each script stays within one record's keys. Calls answered
    /// `NOSCRIPT` (Redis lost its script cache: a restart, `SCRIPT FLUSH`, a failover) are run
    /// again after loading the script, in a second pipeline; those did not run, so nothing runs
    /// twice. Any other error of any call is the error of the whole batch.
    ///
    /// On a cluster a pipeline must stay in one slot: `ids` names each call's request, and the
    /// calls go in one pipeline per shard, all at once.
    async fn invoke_all(
        &self,
        script: &Script,
        calls: &[ScriptInvocation<'_>],
        ids: &[RequestId],
    ) -> Result<Vec<Value>, Error> {
        if self.inner.keys.shards.is_none() || calls.len() < 2 {
            let calls: Vec<&ScriptInvocation<'_>> = calls.iter().collect();
            return self.invoke_in_slot(script, &calls).await;
        }
        let mut groups: HashMap<u16, Vec<usize>> = HashMap::new();
        for (at, id) in ids.iter().enumerate().take(calls.len()) {
            groups.entry(layout::Shards::of(id)).or_default().push(at);
        }
        let groups: Vec<Vec<usize>> = groups.into_values().collect();
        let runs = groups.iter().map(|group| {
            let calls: Vec<&ScriptInvocation<'_>> = group.iter().map(|&at| &calls[at]).collect();
            async move { self.invoke_in_slot(script, &calls).await }
        });
        let answered = futures_util::future::try_join_all(runs).await?;
        let mut replies = vec![Value::Nil; calls.len()];
        for (group, values) in groups.iter().zip(answered) {
            for (&at, value) in group.iter().zip(values) {
                replies[at] = value;
            }
        }
        Ok(replies)
    }

    /// [`invoke_all`](Self::invoke_all) for calls whose keys are all in one slot.
    async fn invoke_in_slot(
        &self,
        script: &Script,
        calls: &[&ScriptInvocation<'_>],
    ) -> Result<Vec<Value>, Error> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        // Replies per call, errors included, so NOSCRIPT can be told from other errors.
        pipe.ignore_errors();
        for call in calls {
            pipe.invoke_script(call);
        }
        let mut replies: Vec<Value> = self.bounded(pipe.query_async(&mut conn)).await?;
        let unknown: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, reply)| {
                matches!(reply, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
            })
            .map(|(at, _)| at)
            .collect();
        if !unknown.is_empty() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            // A failed load shows as NOSCRIPT again below.
            pipe.load_script(script).ignore();
            for &at in &unknown {
                pipe.invoke_script(calls[at]);
            }
            let again: Vec<Value> = self.bounded(pipe.query_async(&mut conn)).await?;
            if again.len() != unknown.len() {
                return Err(Error::Corrupt(format!(
                    "pipeline: {} replies to {} calls",
                    again.len(),
                    unknown.len()
                )));
            }
            for (at, reply) in unknown.into_iter().zip(again) {
                replies[at] = reply;
            }
        }
        if replies.len() != calls.len() {
            return Err(Error::Corrupt(format!(
                "pipeline: {} replies to {} calls",
                replies.len(),
                calls.len()
            )));
        }
        for reply in &replies {
            if let Value::ServerError(error) = reply {
                let error = RedisError::from(error.clone());
                self.forget_primary(Some(&error));
                return Err(map_err(error));
            }
        }
        Ok(replies)
    }

    /// Saves progress of a running or retrying request.
    async fn save_progress(&self, id: RequestId, progress: &Progress) -> Result<(), Error> {
        self.await_subscriber().await;
        let keys = &self.inner.keys;
        let json = serde_json::to_string(&StoredProgress {
            at: progress.at,
            total: progress.total,
            message: &progress.message,
        })
        .map_err(|e| Error::Corrupt(format!("progress not encodable: {e}")))?;
        let mut conn = self.conn().await?;
        let mut call = self.inner.scripts.progress.prepare_invoke();
        call.key(keys.record(&id))
            .arg(json)
            .arg(keys.channel(&id))
            .arg(id.to_string());
        self.bounded(call.invoke_async::<()>(&mut conn)).await
    }

    /// Marks a running request retrying.
    async fn mark_retrying(&self, id: RequestId) -> Result<(), Error> {
        self.await_subscriber().await;
        let keys = &self.inner.keys;
        let mut conn = self.conn().await?;
        let mut call = self.inner.scripts.retrying.prepare_invoke();
        call.key(keys.record(&id))
            .arg(keys.channel(&id))
            .arg(id.to_string());
        self.bounded(call.invoke_async::<()>(&mut conn)).await
    }
}
