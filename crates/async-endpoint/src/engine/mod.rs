//! The engine: the protocol's behaviour, whatever the web framework.
//!
//! [`Engine::answer`] takes what a framework adapter read from an HTTP request (a [`Call`], the
//! owner, a requested wait) and decides the answer: it starts requests (params checked, id and
//! token made, record stored), reads them (token verified, deadline applied, optionally waiting
//! for a change) and says how to render them ([`Answer`]). The adapter only writes the answer out.
//! [`Engine::cancel`] answers a `DELETE` with a request's id and token (`cancel.rs`). Workers
//! drive the other half (`worker.rs`) through the same engine.

mod cancel;
mod config;
mod stream;
mod tasks;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use cancel::is_cancelled;
pub(crate) use config::{Config, bad};
pub(crate) use stream::{DEFAULT_STREAM_PATH, STREAM_REL, max_body_bytes};
pub(crate) use tasks::{ErasedTask, RunError, TaskRuntime};

use crate::backend::{
    Backend, Created, IdempotencyKey, NewRequest, SharedBackend, Snapshot, StoredFailure, Update,
};
use crate::clock::now_ms;
use crate::error::Error;
use crate::failure::{Failure, FailureKind};
use crate::protocol::idempotency::{self, KeyHeader};
use crate::protocol::token::{Claims, Keyring, TokenError};
use crate::protocol::{Call, Problem, Progress, RequestId, Status, StatusBody};
use crate::task::{AsyncTask, ProgressSink};

/// Derives the owner of a request (e.g. the signed-in user's id) from its parts.
pub(crate) type OwnerFn = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;

/// Extra time a waiting poll gives a request past its deadline, so the poll sees the timeout.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// Tasks, backend, keys and settings, shared by the framework adapter and the workers.
pub(crate) struct Engine {
    pub(crate) backend: SharedBackend,
    pub(crate) task_runtime: TaskRuntime,
    pub(crate) tasks: HashMap<&'static str, Arc<dyn ErasedTask>>,
    pub(crate) task_names: Vec<&'static str>,
    pub(crate) keys: Keyring,
    pub(crate) config: Config,
    pub(crate) owner: Option<OwnerFn>,
    /// Where tasks' progress goes: the backend, behind the task side's own small trait.
    pub(crate) progress: Arc<dyn ProgressSink>,
    /// The app's trace hooks: a start's `traceparent` travels with its job.
    pub(crate) trace: crate::trace::TraceHooks,
    /// `Link: </stream path>; rel="async-endpoint-stream"`, the header every 202 carries, made
    /// once (none for a path that is no header value).
    pub(crate) stream_link: Option<http::HeaderValue>,
}

/// Saves progress in the backend.
struct BackendProgress(SharedBackend);

impl ProgressSink for BackendProgress {
    fn save(
        &self,
        id: RequestId,
        progress: Progress,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>> {
        Box::pin(self.0.update(id, Update::Progress(progress)))
    }
}

/// What the engine answers; a framework adapter writes it out.
#[derive(Debug)]
pub(crate) enum Answer<O> {
    /// Under way: 202 with the status body, `Retry-After` and `Cache-Control: no-store`.
    Accepted {
        /// The body.
        body: StatusBody,
        /// Whole seconds for `Retry-After`.
        retry_after: u64,
    },
    /// Done: the app's `done` renders the output (200 unless it sets a status), never cached.
    Done(O),
    /// Failed: the app's `failed` renders the failure (422 unless it sets a status), never cached.
    Failed(Failure),
    /// A problem document.
    Problem(Problem),
}

/// An [`Answer`] and the wait that was honoured to reach it (`Preference-Applied: wait=N`).
#[derive(Debug)]
pub(crate) struct Reply<O> {
    pub(crate) answer: Answer<O>,
    /// Whole seconds of an honoured `Prefer: wait`; only set on a rendered (non-problem) answer.
    pub(crate) wait_applied: Option<u64>,
}

impl<O> Reply<O> {
    /// `answer`, reached by honouring `wait` (none on a problem document).
    fn waited(answer: Answer<O>, wait: Option<Duration>) -> Self {
        let wait_applied = match answer {
            Answer::Problem(_) => None,
            _ => wait.map(|wait| wait.as_secs()),
        };
        Reply {
            answer,
            wait_applied,
        }
    }
}

impl<O> From<Answer<O>> for Reply<O> {
    fn from(answer: Answer<O>) -> Self {
        Reply {
            answer,
            wait_applied: None,
        }
    }
}

impl Engine {
    /// An engine over `backend` for `tasks` (sorted by name for the workers).
    pub(crate) fn new(
        backend: SharedBackend,
        tasks: HashMap<&'static str, Arc<dyn ErasedTask>>,
        keys: Keyring,
        config: Config,
        owner: Option<OwnerFn>,
    ) -> Self {
        let mut task_names: Vec<&'static str> = tasks.keys().copied().collect();
        task_names.sort_unstable();
        let stream_link =
            http::HeaderValue::from_str(&format!("<{}>; rel=\"{STREAM_REL}\"", config.stream_path))
                .ok();
        Engine {
            stream_link,
            progress: Arc::new(BackendProgress(backend.clone())),
            backend,
            task_runtime: TaskRuntime::new(config.task_threads),
            tasks,
            task_names,
            keys,
            config,
            owner,
            trace: crate::trace::TraceHooks::default(),
        }
    }

    /// Answers one call for task `T`: starts a request with `params`, or reads the one the
    /// credentials name (holding the read up to the requested wait, capped by `max_wait`).
    /// A start's `Idempotency-Key` (`key`) makes a repeated start a poll of the first one's
    /// request; a poll ignores it.
    pub(crate) async fn answer<T: AsyncTask>(
        &self,
        call: Call,
        params: &T::Params,
        owner: Option<&str>,
        requested_wait: Option<u64>,
        key: KeyHeader,
    ) -> Reply<T::Output> {
        if !self.tasks.contains_key(T::NAME) {
            return Answer::Problem(developer_error(&Error::UnknownTask(T::NAME.to_owned())))
                .into();
        }
        match call {
            Call::Malformed => Answer::Problem(Problem::NotFound).into(),
            Call::Start => {
                let key = match key {
                    KeyHeader::Absent => None,
                    KeyHeader::Key(key) => Some(key),
                    KeyHeader::Malformed => {
                        return Answer::Problem(Problem::BadIdempotencyKey).into();
                    }
                };
                let started = self.start::<T>(params, owner, key.as_deref()).await;
                match (self.wait_for(requested_wait), started) {
                    (Some(wait), Answer::Accepted { body, .. }) => {
                        self.until_finished::<T>(body, wait).await
                    }
                    // Only a repeated start (same idempotency key) can be final already: it
                    // answers as a waiting poll would.
                    (wait, answer) => Reply::waited(answer, wait),
                }
            }
            Call::Poll { id, token } => {
                let wait = self.wait_for(requested_wait);
                let answer = self.read::<T>(&id, &token, owner, wait).await;
                Reply::waited(answer, wait)
            }
        }
    }

    /// The wait a poll gets for `Prefer: wait=N`: N seconds capped by `max_wait`; none for 0.
    pub(crate) fn wait_for(&self, requested_secs: Option<u64>) -> Option<Duration> {
        requested_secs
            .map(|secs| Duration::from_secs(secs).min(self.config.max_wait))
            .filter(|wait| !wait.is_zero())
    }

    /// Starts a request of task `T`: checks the params, stores and enqueues it, and answers 202
    /// with its id and token. With an idempotency `key` seen before for `T` and `owner`, nothing
    /// is stored: the answer is a poll of the earlier request (or a 422 for other params).
    pub(crate) async fn start<T: AsyncTask>(
        &self,
        params: &T::Params,
        owner: Option<&str>,
        key: Option<&str>,
    ) -> Answer<T::Output> {
        let config = &self.config;
        let params = match serde_json::to_string(params) {
            Ok(params) => params,
            Err(source) => {
                let error = Error::SerializeParams {
                    task: T::NAME,
                    source,
                };
                return Answer::Problem(developer_error(&error));
            }
        };
        if params.len() > config.max_params_bytes {
            let error = Error::ParamsTooLarge {
                task: T::NAME,
                size: params.len(),
                limit: config.max_params_bytes,
            };
            // The client's doing (params carry what it sent): a warning, and a 413 it can act on.
            tracing::warn!(error = &error as &dyn std::error::Error, "start refused");
            return Answer::Problem(Problem::TooLarge);
        }
        let deadline = self
            .tasks
            .get(T::NAME)
            .and_then(|task| task.deadline())
            .unwrap_or(config.deadline);
        let now = now_ms();
        let idempotency = key.map(|key| {
            IdempotencyKey::new(
                idempotency::scoped(T::NAME, owner, key),
                idempotency::params_digest(&params),
            )
        });
        let mut request = NewRequest::new(
            RequestId::random(),
            T::NAME,
            params,
            now,
            now.saturating_add(deadline.as_millis() as u64),
            config.ttl,
        );
        request.owner = owner.map(str::to_owned);
        request.idempotency = idempotency;
        request.limits = config.pending_limits();
        request.traceparent = self.trace.capture();
        // The backend may choose another id that names where the request lives (Redis Cluster);
        // the token is signed for the id it keeps.
        self.backend.place(&mut request);
        let id = request.id;
        let token = self.token::<T>(id, owner, now);
        let created = self.backend.create(request).await;
        match created {
            Ok(Created::New) => {}
            Ok(Created::Existing {
                id,
                created_ms,
                same_params,
            }) => return self.repeated::<T>(id, created_ms, same_params, owner).await,
            Ok(Created::OverLimit(limit)) => {
                crate::metrics::refused(T::NAME, limit);
                // Info, not warning: a flood would repeat it for every refused start.
                tracing::info!(
                    task = T::NAME,
                    ?limit,
                    "start refused: pending limit reached"
                );
                return Answer::Problem(Problem::TooManyPending {
                    retry_after: config.retry_after.as_secs().max(1),
                });
            }
            Err(error) => return Answer::Problem(self.backend_error(&error)),
        }
        crate::metrics::started(T::NAME);
        tracing::info!(request_id = %id, task = T::NAME, "request enqueued");
        self.accepted(id, token, Status::Queued, None)
    }

    /// The token of request `id` of task `T` for `owner`, created at `created_ms`: it expires
    /// with the TTL. Deterministic, so a repeated start (same idempotency key) gets the very
    /// token the first one got.
    fn token<T: AsyncTask>(&self, id: RequestId, owner: Option<&str>, created_ms: u64) -> String {
        let expires_at = created_ms.saturating_add(self.config.ttl.as_millis() as u64) / 1000;
        let claims = Claims {
            id: &id,
            task: T::NAME,
            owner,
        };
        self.keys.sign(&claims, expires_at)
    }

    /// Answers a start whose idempotency key names the earlier request `id` (created at
    /// `created_ms`): a poll of it, with its id and token, when the params are the same; a 422
    /// otherwise; what a poll would (404) when it is gone.
    async fn repeated<T: AsyncTask>(
        &self,
        id: RequestId,
        created_ms: u64,
        same_params: bool,
        owner: Option<&str>,
    ) -> Answer<T::Output> {
        if !same_params {
            tracing::info!(request_id = %id, task = T::NAME, "idempotency key reused with other params");
            return Answer::Problem(Problem::IdempotencyKeyReused);
        }
        let token = self.token::<T>(id, owner, created_ms);
        let snapshot = match self.backend.poll(id, now_ms()).await {
            Ok(Some(snapshot)) if snapshot.task == T::NAME => snapshot,
            Ok(_) => return Answer::Problem(Problem::NotFound),
            Err(error) => return Answer::Problem(self.backend_error(&error)),
        };
        tracing::debug!(request_id = %id, task = T::NAME, status = snapshot.status.as_str(), "repeated start");
        self.render::<T>(id, &token, snapshot)
    }

    /// Reads the request that `id` and `token` name for task `T` and `owner`; with `wait`, holds
    /// until it changes, finishes, or the bound passes.
    pub(crate) async fn read<T: AsyncTask>(
        &self,
        id: &str,
        token: &str,
        owner: Option<&str>,
        wait: Option<Duration>,
    ) -> Answer<T::Output> {
        let Ok(id) = id.parse::<RequestId>() else {
            return Answer::Problem(Problem::NotFound);
        };
        let claims = Claims {
            id: &id,
            task: T::NAME,
            owner,
        };
        let now = now_ms();
        match self.keys.verify(token, &claims, now / 1000) {
            Ok(()) => {}
            Err(TokenError::Invalid) => return Answer::Problem(Problem::NotFound),
            Err(TokenError::Expired) => return Answer::Problem(Problem::Gone),
        }
        let snapshot = match self.snapshot(id, now, wait).await {
            Ok(Some(snapshot)) if snapshot.task == T::NAME => snapshot,
            Ok(_) => return Answer::Problem(Problem::NotFound),
            Err(error) => return Answer::Problem(self.backend_error(&error)),
        };
        tracing::debug!(request_id = %id, task = T::NAME, status = snapshot.status.as_str(), "poll");
        self.render::<T>(id, token, snapshot)
    }

    /// Holds a fresh start (`Prefer: wait=N` on a start) until its request finishes or `wait`
    /// passes, so a fast job costs one round trip: the final answer, or the usual 202 with the
    /// latest status. Should the backend fail while it waits, the start's own 202 goes out: the
    /// request exists, and the client must get its id and token (a retried start would run twice).
    async fn until_finished<T: AsyncTask>(
        &self,
        started: StatusBody,
        wait: Duration,
    ) -> Reply<T::Output> {
        let id = started.async_request_id;
        match self.hold(id, wait, |_, _| false).await {
            Ok(Some(snapshot)) => Reply::waited(
                self.render::<T>(id, &started.async_request_token, snapshot),
                Some(wait),
            ),
            Ok(None) | Err(_) => self
                .accepted(id, started.async_request_token, started.status, None)
                .into(),
        }
    }

    /// Reads a snapshot; with `wait`, holds until it changes, finishes, or the bound passes.
    /// `now` is the time the poll came in (a poll that does not wait reads at that time).
    async fn snapshot(
        &self,
        id: RequestId,
        now: u64,
        wait: Option<Duration>,
    ) -> Result<Option<Snapshot>, Error> {
        match wait {
            None => self.backend.poll(id, now).await,
            Some(wait) => self.hold(id, wait, |first, now| now != first).await,
        }
    }

    /// Reads a snapshot and holds it until the request finishes, `enough(first, now)` says a
    /// change is worth answering, or `wait` (bounded by the deadline) passes; then the latest.
    /// One watch for the whole hold, and one read per change.
    async fn hold(
        &self,
        id: RequestId,
        wait: Duration,
        enough: impl Fn(&Snapshot, &Snapshot) -> bool,
    ) -> Result<Option<Snapshot>, Error> {
        // Register before the first read so a change between the read and the wait is not missed.
        let mut watch = self.backend.watch(id);
        let Some(first) = self.backend.poll(id, now_ms()).await? else {
            return Ok(None);
        };
        if first.status.is_terminal() {
            return Ok(Some(first));
        }
        let until_deadline = Duration::from_millis(first.deadline_ms.saturating_sub(now_ms()));
        let bound = tokio::time::Instant::now() + wait.min(until_deadline + DEADLINE_SLACK);
        loop {
            if tokio::time::timeout_at(bound, watch.changed())
                .await
                .is_err()
            {
                // The bound passed: one last read (it also applies a passed deadline).
                return self.backend.poll(id, now_ms()).await;
            }
            match self.backend.poll(id, now_ms()).await? {
                Some(now) if !now.status.is_terminal() && !enough(&first, &now) => continue,
                other => return Ok(other),
            }
        }
    }

    /// What a snapshot of a request of task `T` answers.
    fn render<T: AsyncTask>(
        &self,
        id: RequestId,
        token: &str,
        snapshot: Snapshot,
    ) -> Answer<T::Output> {
        match snapshot.status {
            Status::Done => {
                let output = snapshot.output.as_deref().unwrap_or("null");
                match serde_json::from_str::<T::Output>(output) {
                    Ok(output) => Answer::Done(output),
                    Err(source) => {
                        let error = Error::Decode {
                            task: T::NAME.to_owned(),
                            source,
                        };
                        Answer::Problem(developer_error(&error))
                    }
                }
            }
            Status::Failed => Answer::Failed(
                self.failure(snapshot.failure.unwrap_or_else(StoredFailure::internal)),
            ),
            status => self.accepted(id, token.to_owned(), status, snapshot.progress),
        }
    }

    /// The failure a client sees: the task's own message, or the endpoint's message for the
    /// generic kinds (rendered here, at the edge, so the store never holds it).
    pub(crate) fn failure(&self, stored: StoredFailure) -> Failure {
        match stored.kind {
            FailureKind::Task => Failure::new(stored.message.unwrap_or_default()),
            FailureKind::Timeout => {
                Failure::with_kind(FailureKind::Timeout, self.config.timeout_message.clone())
            }
            FailureKind::Cancelled => Failure::with_kind(
                FailureKind::Cancelled,
                self.config.cancelled_message.clone(),
            ),
            kind => Failure::with_kind(kind, self.config.internal_error_message.clone()),
        }
    }

    fn accepted<O>(
        &self,
        id: RequestId,
        token: String,
        status: Status,
        progress: Option<Progress>,
    ) -> Answer<O> {
        Answer::Accepted {
            body: StatusBody {
                async_request_id: id,
                async_request_token: token,
                status,
                progress,
            },
            retry_after: self.config.retry_after.as_secs(),
        }
    }

    /// 503 for a backend that cannot be reached, 500 for one that refused; logged either way.
    fn backend_error(&self, error: &Error) -> Problem {
        if error.is_unavailable() {
            crate::metrics::unavailable();
            tracing::warn!(
                error = error as &dyn std::error::Error,
                "backend unavailable"
            );
            Problem::Unavailable {
                retry_after: self.config.retry_after.as_secs().max(1),
            }
        } else {
            tracing::error!(error = error as &dyn std::error::Error, "backend error");
            Problem::Internal
        }
    }
}

/// A mistake of the application's developer: logged with its cause; the client gets a 500.
fn developer_error(error: &Error) -> Problem {
    tracing::error!(
        error = error as &dyn std::error::Error,
        "async-endpoint misuse"
    );
    Problem::Internal
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::backend::{DynBackend, MemoryBackend};

    #[test]
    fn failures_are_rendered_from_their_kind_and_the_settings() {
        let config = Config {
            internal_error_message: "inside".into(),
            timeout_message: "late".into(),
            cancelled_message: "stopped".into(),
            ..Config::default()
        };
        let engine = Engine::new(
            DynBackend::new_arc(MemoryBackend::new()),
            HashMap::new(),
            Keyring::new(&[7; 32], &[]),
            config,
            None,
        );
        let seen = |stored: StoredFailure| {
            let failure = engine.failure(stored);
            (failure.kind(), failure.message().to_owned())
        };
        assert_eq!(
            seen(StoredFailure::timeout()),
            (FailureKind::Timeout, "late".into())
        );
        assert_eq!(
            seen(StoredFailure::internal()),
            (FailureKind::Internal, "inside".into())
        );
        assert_eq!(
            seen(StoredFailure::cancelled()),
            (FailureKind::Cancelled, "stopped".into())
        );
        assert_eq!(
            seen(StoredFailure::task("mine")),
            (FailureKind::Task, "mine".into())
        );
        // Records written before messages were rendered at the edge carry the old default text;
        // what a client sees is still the setting.
        let old: StoredFailure =
            serde_json::from_str(r#"{"kind":"internal","message":"an old default"}"#).unwrap();
        assert_eq!(seen(old), (FailureKind::Internal, "inside".into()));
    }
}
