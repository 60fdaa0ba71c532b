//! The storage and queue behind the engine.
//!
//! A [`Backend`] stores one record per request and queues its job. Every transition is atomic:
//! `queued → running → done | failed`, plus `retrying`; the first terminal state wins and nothing
//! overwrites it. Implementations: [`MemoryBackend`] (feature `memory`, the default) and
//! `RedisBackend` (feature `redis`) and `PostgresBackend` (feature `postgres`).
//!
//! The store never sees a client message it does not need: a failure is stored as its
//! [`FailureKind`] (plus the task's own message for [`Failure::new`]), and the engine renders the
//! generic messages (timeout, internal error) from the endpoint's settings when a client reads it.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::failure::{Failure, FailureKind};
use crate::protocol::{Progress, RequestId, Status};

#[cfg(feature = "memory")]
mod memory;
mod notify;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use memory::MemoryBackend;
pub use notify::{Notifier, Watch};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresBackend, PostgresBackendBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisBackend, RedisBackendBuilder};

/// A request to store and enqueue.
///
/// ```
/// use async_endpoint::{RequestId, backend::NewRequest};
/// use std::time::Duration;
///
/// let request = NewRequest::new(RequestId::random(), "my_task", r#"{"n":1}"#, 1_000, 61_000, Duration::from_secs(3600));
/// assert_eq!(request.deadline_ms, 61_000);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewRequest {
    /// Its id.
    pub id: RequestId,
    /// The task's `NAME`.
    pub task: &'static str,
    /// The params, as JSON.
    pub params: String,
    /// When it was created, unix milliseconds.
    pub created_ms: u64,
    /// When an unfinished request turns into a timeout failure, unix milliseconds.
    pub deadline_ms: u64,
    /// How long the record lives after its last write.
    pub ttl: Duration,
    /// Who started it (the endpoint's `owner` hook), if anyone; scopes per-owner limits.
    pub owner: Option<String>,
    /// The start's `Idempotency-Key`, scoped to task and owner; `None` without one.
    pub idempotency: Option<IdempotencyKey>,
    /// Limits on pending requests that this start must stay within.
    pub limits: PendingLimits,
    /// The W3C `traceparent` of the span that started it (the endpoint's `trace_context` hook),
    /// stored with the job and handed back on [`Begin::Run`]; `None` without one.
    pub traceparent: Option<String>,
}

impl NewRequest {
    /// A request of `task` with JSON `params`, created at `created_ms` with its deadline at
    /// `deadline_ms` (unix milliseconds), living `ttl` after its last write.
    pub fn new(
        id: RequestId,
        task: &'static str,
        params: impl Into<String>,
        created_ms: u64,
        deadline_ms: u64,
        ttl: Duration,
    ) -> Self {
        NewRequest {
            id,
            task,
            params: params.into(),
            created_ms,
            deadline_ms,
            ttl,
            owner: None,
            idempotency: None,
            limits: PendingLimits::default(),
            traceparent: None,
        }
    }
}

/// An `Idempotency-Key`, as a backend stores it: a digest of task, owner and the client's key
/// (so keys never collide across tasks or owners, and the store never holds the client's text),
/// and a digest of the params the first start carried.
///
/// ```
/// use async_endpoint::backend::IdempotencyKey;
///
/// let key = IdempotencyKey::new("3f1a…", "9c0e…");
/// assert_eq!(key.scoped, "3f1a…");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdempotencyKey {
    /// Hex digest of task, owner and key: what the backend indexes.
    pub scoped: String,
    /// Hex digest of the params JSON: a reuse with other params is refused.
    pub params_digest: String,
}

impl IdempotencyKey {
    /// A scoped key and its params' digest.
    pub fn new(scoped: impl Into<String>, params_digest: impl Into<String>) -> Self {
        IdempotencyKey {
            scoped: scoped.into(),
            params_digest: params_digest.into(),
        }
    }
}

/// Limits on pending (not yet finished) requests that a start must stay within; `None` is no
/// limit. Requests past their deadline do not count.
///
/// ```
/// use async_endpoint::backend::PendingLimits;
///
/// let limits = PendingLimits::default();
/// assert_eq!((limits.per_owner, limits.per_task), (None, None));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingLimits {
    /// Most pending requests of one owner (all tasks); applies only to starts with an owner.
    pub per_owner: Option<u32>,
    /// Most pending requests of this task (all owners).
    pub per_task: Option<u32>,
}

/// What [`Backend::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Created {
    /// Stored as `queued` and enqueued.
    New,
    /// The idempotency key was seen before (same task and owner, within the TTL): nothing was
    /// stored, and this is the earlier request.
    Existing {
        /// The earlier request's id.
        id: RequestId,
        /// When it was created, unix milliseconds (its token's expiry derives from it).
        created_ms: u64,
        /// Whether this start carried the same params as the first.
        same_params: bool,
    },
    /// A pending-request limit is reached: nothing was stored.
    OverLimit(Limit),
}

/// Which limit of [`PendingLimits`] refused a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// The owner's.
    Owner,
    /// The task's.
    Task,
}

/// What a poll sees.
///
/// ```
/// use async_endpoint::{Status, backend::{Snapshot, StoredFailure}};
///
/// let mut snapshot = Snapshot::new("my_task", Status::Failed, 1, 61_000);
/// snapshot.failure = Some(StoredFailure::timeout());
/// assert_eq!(snapshot.output, None);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The task's `NAME`.
    pub task: String,
    /// Where the request is.
    pub status: Status,
    /// Attempts started so far.
    pub attempt: u32,
    /// The latest progress, if any.
    pub progress: Option<Progress>,
    /// The output as JSON, when `status` is `Done`.
    pub output: Option<String>,
    /// The failure, when `status` is `Failed`.
    pub failure: Option<StoredFailure>,
    /// The deadline, unix milliseconds.
    pub deadline_ms: u64,
}

impl Snapshot {
    /// A snapshot without progress, output or failure; set those fields as the record has them.
    pub fn new(task: impl Into<String>, status: Status, attempt: u32, deadline_ms: u64) -> Self {
        Snapshot {
            task: task.into(),
            status,
            attempt,
            progress: None,
            output: None,
            failure: None,
            deadline_ms,
        }
    }
}

/// A failure as the store keeps it: its kind, and for [`FailureKind::Task`] the task's own
/// message. The generic messages of the other kinds are the endpoint's settings, rendered when a
/// client reads the request, so they are never stored (and a changed setting applies at once).
///
/// Serialized as `{"kind":"timeout"}` or `{"kind":"task","message":"…"}`.
///
/// ```
/// use async_endpoint::{Failure, FailureKind, backend::StoredFailure};
///
/// assert_eq!(StoredFailure::timeout().kind, FailureKind::Timeout);
/// assert_eq!(StoredFailure::timeout().message, None);
/// let stored = StoredFailure::from(Failure::new("The card was declined"));
/// assert_eq!(stored, StoredFailure::task("The card was declined"));
/// assert_eq!(serde_json::to_string(&StoredFailure::internal()).unwrap(), r#"{"kind":"internal"}"#);
/// assert_eq!(serde_json::to_string(&StoredFailure::cancelled()).unwrap(), r#"{"kind":"cancelled"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoredFailure {
    /// Why it failed.
    pub kind: FailureKind,
    /// The task's own message (kind [`FailureKind::Task`]); `None` for the generic kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl StoredFailure {
    /// A failure of `kind` without a message of its own (its message is the endpoint's).
    pub fn of_kind(kind: FailureKind) -> Self {
        StoredFailure {
            kind,
            message: None,
        }
    }

    /// The task's own failure with its message for the client.
    pub fn task(message: impl Into<String>) -> Self {
        StoredFailure {
            kind: FailureKind::Task,
            message: Some(message.into()),
        }
    }

    /// The deadline passed.
    pub fn timeout() -> Self {
        Self::of_kind(FailureKind::Timeout)
    }

    /// A panic, an undecodable value, or a job its workers kept dying on.
    pub fn internal() -> Self {
        Self::of_kind(FailureKind::Internal)
    }

    /// A client cancelled the request.
    pub fn cancelled() -> Self {
        Self::of_kind(FailureKind::Cancelled)
    }
}

impl From<Failure> for StoredFailure {
    /// Keeps the message only where it is the task's own.
    fn from(failure: Failure) -> Self {
        match failure.kind() {
            FailureKind::Task => StoredFailure::task(failure.message()),
            kind => StoredFailure::of_kind(kind),
        }
    }
}

/// A delivered job, as a worker receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Job {
    /// The request it belongs to.
    pub id: RequestId,
    /// The task's `NAME`.
    pub task: String,
    /// Backend-specific receipt (e.g. a stream entry id), used to acknowledge the delivery.
    pub receipt: String,
    /// How many times this job has been delivered, this delivery included.
    pub deliveries: u32,
}

impl Job {
    /// A delivery of the job of request `id`.
    ///
    /// ```
    /// use async_endpoint::{RequestId, backend::Job};
    ///
    /// let job = Job::new(RequestId::random(), "my_task", "1700000000000-0", 1);
    /// assert_eq!(job.deliveries, 1);
    /// ```
    pub fn new(
        id: RequestId,
        task: impl Into<String>,
        receipt: impl Into<String>,
        deliveries: u32,
    ) -> Self {
        Job {
            id,
            task: task.into(),
            receipt: receipt.into(),
            deliveries,
        }
    }
}

/// What a worker should do with a job it received.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Begin {
    /// Run the task: the record is now `running`.
    Run {
        /// The params, as JSON.
        params: String,
        /// The attempt number now starting, from 1.
        attempt: u32,
        /// The deadline, unix milliseconds.
        deadline_ms: u64,
        /// The `traceparent` stored with the request ([`NewRequest::traceparent`]), if any.
        traceparent: Option<String>,
    },
    /// Do not run it: the record is terminal, gone, or its deadline passed (and it was turned into
    /// a timeout failure). The delivery has been acknowledged.
    Skip,
}

/// A change to an unfinished request, written by [`Backend::update`]. Ignored once the request
/// is terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Update {
    /// New progress of a `running` or `retrying` request.
    Progress(Progress),
    /// A `running` request's attempt failed and another one is scheduled: it becomes `retrying`.
    Retrying,
}

/// How an attempt ended, as written by [`Backend::finish`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The output, as JSON.
    Done(String),
    /// The failure.
    Failed(StoredFailure),
}

/// Storage and queue for async requests. Implement it to add a backend; run the conformance suite
/// in `tests/conformance` against it.
///
/// Methods are `async fn`s that return `Send` futures: implement them with plain `async fn`.
/// Times are unix milliseconds passed in by the engine, so every process judges deadlines the
/// same way.
// The engine holds backends type-erased (no backend parameter on the endpoint, the extractor or
// the layer). `dynosaur` writes the object-safe form (`DynBackend`, boxing each future) from this
// one definition, so the signatures are written once.
// Its `pub` constructors are reported at the trait's span; the type itself is crate-private.
#[allow(unreachable_pub)]
#[dynosaur::dynosaur(pub(crate) DynBackend = dyn(box) Backend)]
pub trait Backend: Send + Sync {
    /// Stores `request` as `queued` (with its TTL) and enqueues its job, atomically; unless its
    /// idempotency key names an earlier request ([`Created::Existing`]) or a pending limit is
    /// reached ([`Created::OverLimit`]), in which case nothing is stored. The key check, the
    /// limit check and the write are one atomic step: N concurrent starts with one key create one
    /// request.
    fn create(&self, request: NewRequest) -> impl Future<Output = Result<Created, Error>> + Send;

    /// Chooses where a new request goes, before its token is made and [`create`](Self::create)
    /// stores it: a backend that places requests by their id may replace `request.id` with
    /// another random id that names the place (Redis Cluster: the first byte names the shard,
    /// chosen from the owner, the idempotency key or at random, so that every key the start
    /// touches is in one hash slot). The engine calls it once per start, and signs the token for
    /// the id it leaves. The default leaves the id as it is.
    ///
    /// ```
    /// use async_endpoint::backend::{Backend, MemoryBackend, NewRequest};
    /// use async_endpoint::RequestId;
    /// use std::time::Duration;
    ///
    /// let id = RequestId::random();
    /// let mut request = NewRequest::new(id, "task", "{}", 0, 60_000, Duration::from_secs(3600));
    /// MemoryBackend::new().place(&mut request);
    /// assert_eq!(request.id, id);
    /// ```
    fn place(&self, request: &mut NewRequest) {
        let _ = request;
    }

    /// Whether this backend can keep `limits` on every start, asked once when an endpoint is
    /// built, so that a combination it cannot keep is a typed error then rather than a failed
    /// start later (`limits.per_owner` is `None` when the endpoint has no `owner` hook). Redis
    /// Cluster refuses a per-owner and a per-task limit together with an [`Error::Config`]
    /// naming `max_pending_per_task`. The default accepts every combination.
    ///
    /// ```
    /// use async_endpoint::backend::{Backend, MemoryBackend, PendingLimits};
    ///
    /// let mut limits = PendingLimits::default();
    /// limits.per_owner = Some(20);
    /// limits.per_task = Some(1_000);
    /// assert!(MemoryBackend::new().check_limits(&limits).is_ok());
    /// ```
    fn check_limits(&self, limits: &PendingLimits) -> Result<(), Error> {
        let _ = limits;
        Ok(())
    }

    /// Reads a request in one round trip. If it is unfinished and `now_ms` is past its deadline,
    /// it is turned into a timeout failure first (atomically), and that is what is returned.
    /// `None` when unknown or expired.
    fn poll(
        &self,
        id: RequestId,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send;

    /// Registers interest in changes of `id`: the returned [`Watch`] fires after any later write
    /// to it (status or progress). Register before reading, so no change is missed.
    ///
    /// A networked backend may announce a write only when someone watches: it may count on a
    /// watcher [`poll`](Self::poll)ing the request after registering (the engine's waiting polls
    /// and event streams always do), and announce only writes to requests so polled. A
    /// [`cancel`](Self::cancel) is always announced, so a worker that watched a job before its
    /// [`begin`](Self::begin) hears of it without polling.
    fn watch(&self, id: RequestId) -> Watch;

    /// Waits up to `block` for jobs of the given tasks and returns at most `max` of them.
    fn fetch(
        &self,
        tasks: &[&'static str],
        max: usize,
        block: Duration,
    ) -> impl Future<Output = Result<Vec<Job>, Error>> + Send;

    /// Starts an attempt: a `queued`, `retrying` or (re-delivered) `running` record becomes
    /// `running` with its attempt count raised. Terminal or missing records, and those past their
    /// deadline (turned into `timeout` failures), give [`Begin::Skip`] and acknowledge the job.
    fn begin(&self, job: &Job, now_ms: u64) -> impl Future<Output = Result<Begin, Error>> + Send;

    /// Starts attempts of several fetched jobs at once: the same as calling
    /// [`begin`](Self::begin) for each job in order, in as few round trips as the backend can
    /// make it (one, for the networked backends). Returns one [`Begin`] per job, in the jobs'
    /// order. An `Err` means none is known to have begun: each job is redelivered as after a
    /// failed `begin`. Workers call this with every batch they fetch.
    ///
    /// The default calls `begin` once per job.
    fn begin_many(
        &self,
        jobs: &[Job],
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Begin>, Error>> + Send {
        async move {
            let mut begun = Vec::with_capacity(jobs.len());
            for job in jobs {
                begun.push(self.begin(job, now_ms).await?);
            }
            Ok(begun)
        }
    }

    /// Applies `update` to an unfinished request (see [`Update`]); ignored once terminal.
    fn update(
        &self,
        id: RequestId,
        update: Update,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Writes the outcome unless the request is already terminal (the first terminal state wins),
    /// then acknowledges the job. Past the deadline the outcome becomes `timeout` instead.
    /// Returns the status that stands.
    fn finish(
        &self,
        job: &Job,
        outcome: Outcome,
        now_ms: u64,
    ) -> impl Future<Output = Result<Status, Error>> + Send;

    /// Writes several outcomes at once: the same as calling [`finish`](Self::finish) for each
    /// `(job, outcome)` in order, in as few round trips as the backend can make it. Returns the
    /// status that stands for each, in order. An `Err` means none is known to be written; since
    /// `finish` is idempotent (the first terminal state wins), the worker writes them again.
    /// Workers gather the outcomes of jobs that end while a write is under way and write them
    /// with one call, so at idle a batch is a single job and adds no delay.
    ///
    /// The default calls `finish` once per job.
    fn finish_many(
        &self,
        finished: &[(Job, Outcome)],
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<Status>, Error>> + Send {
        async move {
            let mut statuses = Vec::with_capacity(finished.len());
            for (job, outcome) in finished {
                statuses.push(self.finish(job, outcome.clone(), now_ms).await?);
            }
            Ok(statuses)
        }
    }

    /// Hands an unfinished job back (graceful shutdown) so another worker can take it.
    fn release(&self, job: &Job) -> impl Future<Output = Result<(), Error>> + Send;

    /// Cancels a request, atomically: an unfinished one (queued, running, retrying) becomes
    /// `failed` with [`FailureKind::Cancelled`] at once, its params dropped, its TTL refreshed and
    /// its watchers notified (in every process, like any other write), and returns that. The
    /// first terminal state wins, so a later [`finish`](Self::finish) is ignored and a later
    /// [`begin`](Self::begin) of its job gives [`Begin::Skip`]. An unfinished request past its
    /// deadline becomes a timeout instead (as in [`poll`](Self::poll)); a terminal one is returned
    /// unchanged. `None` when unknown or expired.
    fn cancel(
        &self,
        id: RequestId,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send;

    /// How many jobs of `task` wait for a worker (enqueued or handed back, not yet taken), for
    /// the `async_endpoint_queue_depth` gauge; sampled by the workers about once a second.
    /// `None` (the default) when the backend cannot tell cheaply: the gauge is then not set.
    fn queue_depth(
        &self,
        task: &'static str,
    ) -> impl Future<Output = Result<Option<u64>, Error>> + Send {
        let _ = task;
        async { Ok(None) }
    }
}

/// Shared, type-erased handle to a backend.
/// The answer of a batch call made for one job: how a backend whose native transitions are
/// batches (`begin_many`, `finish_many`) answers `begin` and `finish`.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn only_answer<T>(mut answers: Vec<T>, call: &str) -> Result<T, Error> {
    answers
        .pop()
        .ok_or_else(|| Error::Corrupt(format!("{call}: no answer")))
}

pub(crate) type SharedBackend = std::sync::Arc<DynBackend<'static>>;
