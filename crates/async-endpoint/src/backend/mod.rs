//! The storage and queue behind the engine.
//!
//! A [`Backend`] stores one record per request and queues its job. Every transition is atomic:
//! `queued → running → done | failed`, plus `retrying`; the first terminal state wins and nothing
//! overwrites it. Implementations: [`MemoryBackend`] (feature `memory`, the default) and
//! `RedisBackend` (feature `redis`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, Failure, Progress, RequestId, Status};

#[cfg(feature = "memory")]
mod memory;
mod notify;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "memory")]
pub use memory::MemoryBackend;
pub use notify::{Notifier, Watch};
#[cfg(feature = "redis")]
pub use redis::{RedisBackend, RedisBackendBuilder};

/// A request to store and enqueue.
#[derive(Debug, Clone)]
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
}

/// What a poll sees.
#[derive(Debug, Clone, PartialEq)]
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
    pub failure: Option<Failure>,
    /// The deadline, unix milliseconds.
    pub deadline_ms: u64,
}

/// A delivered job, as a worker receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    },
    /// Do not run it: the record is terminal, gone, or its deadline passed (and it was turned into
    /// a timeout failure). The delivery has been acknowledged.
    Skip,
}

/// How an attempt ended, as written by [`Backend::finish`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The output, as JSON.
    Done(String),
    /// The failure.
    Failed(Failure),
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Storage and queue for async requests. Implement it to add a backend; run the conformance suite
/// in `tests/conformance` against it.
///
/// Times are unix milliseconds passed in by the engine, so every process judges deadlines the
/// same way.
pub trait Backend: Send + Sync + 'static {
    /// Stores `request` as `queued` (with its TTL) and enqueues its job, atomically.
    fn create(&self, request: NewRequest) -> impl Future<Output = Result<(), Error>> + Send;

    /// Reads a request in one round trip. If it is unfinished and `now_ms` is past its deadline,
    /// it is turned into a timeout failure first (atomically), and that is what is returned.
    /// `None` when unknown or expired.
    fn poll(
        &self,
        id: RequestId,
        now_ms: u64,
        timeout: &Failure,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send;

    /// Registers interest in changes of `id`: the returned [`Watch`] fires after any later write
    /// to it (status or progress). Register before reading, so no change is missed.
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
    fn begin(
        &self,
        job: &Job,
        now_ms: u64,
        timeout: &Failure,
    ) -> impl Future<Output = Result<Begin, Error>> + Send;

    /// Saves progress of a `running` or `retrying` request; ignored once terminal.
    fn progress(
        &self,
        id: RequestId,
        progress: &Progress,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Marks a `running` request `retrying` (between attempts); ignored once terminal.
    fn retrying(&self, id: RequestId) -> impl Future<Output = Result<(), Error>> + Send;

    /// Writes the outcome unless the request is already terminal (the first terminal state wins),
    /// then acknowledges the job. Past the deadline the outcome becomes `timeout` instead.
    /// Returns the status that stands.
    fn finish(
        &self,
        job: &Job,
        outcome: Outcome,
        now_ms: u64,
        timeout: &Failure,
    ) -> impl Future<Output = Result<Status, Error>> + Send;

    /// Hands an unfinished job back (graceful shutdown) so another worker can take it.
    fn release(&self, job: &Job) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Object-safe mirror of [`Backend`], so the engine and extractor need no backend type parameter.
pub(crate) trait DynBackend: Send + Sync + 'static {
    fn create(&self, request: NewRequest) -> BoxFuture<'_, Result<(), Error>>;
    fn poll<'a>(
        &'a self,
        id: RequestId,
        now_ms: u64,
        timeout: &'a Failure,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, Error>>;
    fn watch(&self, id: RequestId) -> Watch;
    fn fetch<'a>(
        &'a self,
        tasks: &'a [&'static str],
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<Vec<Job>, Error>>;
    fn begin<'a>(
        &'a self,
        job: &'a Job,
        now_ms: u64,
        timeout: &'a Failure,
    ) -> BoxFuture<'a, Result<Begin, Error>>;
    fn progress<'a>(
        &'a self,
        id: RequestId,
        progress: &'a Progress,
    ) -> BoxFuture<'a, Result<(), Error>>;
    fn retrying(&self, id: RequestId) -> BoxFuture<'_, Result<(), Error>>;
    fn finish<'a>(
        &'a self,
        job: &'a Job,
        outcome: Outcome,
        now_ms: u64,
        timeout: &'a Failure,
    ) -> BoxFuture<'a, Result<Status, Error>>;
    fn release<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), Error>>;
}

impl<B: Backend> DynBackend for B {
    fn create(&self, request: NewRequest) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(Backend::create(self, request))
    }
    fn poll<'a>(
        &'a self,
        id: RequestId,
        now_ms: u64,
        timeout: &'a Failure,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, Error>> {
        Box::pin(Backend::poll(self, id, now_ms, timeout))
    }
    fn watch(&self, id: RequestId) -> Watch {
        Backend::watch(self, id)
    }
    fn fetch<'a>(
        &'a self,
        tasks: &'a [&'static str],
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<Vec<Job>, Error>> {
        Box::pin(Backend::fetch(self, tasks, max, block))
    }
    fn begin<'a>(
        &'a self,
        job: &'a Job,
        now_ms: u64,
        timeout: &'a Failure,
    ) -> BoxFuture<'a, Result<Begin, Error>> {
        Box::pin(Backend::begin(self, job, now_ms, timeout))
    }
    fn progress<'a>(
        &'a self,
        id: RequestId,
        progress: &'a Progress,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Backend::progress(self, id, progress))
    }
    fn retrying(&self, id: RequestId) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(Backend::retrying(self, id))
    }
    fn finish<'a>(
        &'a self,
        job: &'a Job,
        outcome: Outcome,
        now_ms: u64,
        timeout: &'a Failure,
    ) -> BoxFuture<'a, Result<Status, Error>> {
        Box::pin(Backend::finish(self, job, outcome, now_ms, timeout))
    }
    fn release<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(Backend::release(self, job))
    }
}

/// Shared, type-erased handle to a backend.
pub(crate) type SharedBackend = Arc<dyn DynBackend>;
