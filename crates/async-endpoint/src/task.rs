//! The task side: what users implement ([`AsyncTask`]) and what it reports with ([`TaskContext`],
//! [`Failure`](crate::Failure), [`RetryPolicy`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Serialize, de::DeserializeOwned};

use crate::error::Error;
use crate::failure::Failure;
use crate::protocol::{Progress, RequestId};

/// A kind of slow work, run in the background: the `execute_task` of the original gem.
///
/// `Ok(output)` is the original `done`, `Err(Failure::new("message"))` is `failed 'message'`.
/// Params and output travel as JSON, so both are serde types.
///
/// ```
/// use async_endpoint::{AsyncTask, Failure, RetryPolicy, TaskContext};
/// use serde::{Deserialize, Serialize};
/// use std::time::Duration;
///
/// #[derive(Serialize, Deserialize)]
/// struct Params { city: String }
///
/// #[derive(Serialize, Deserialize)]
/// struct Weather { celsius: f32 }
///
/// struct FetchWeather;
///
/// impl AsyncTask for FetchWeather {
///     const NAME: &'static str = "fetch_weather";
///     type Params = Params;
///     type Output = Weather;
///
///     async fn execute_task(&self, params: Params, ctx: TaskContext) -> Result<Weather, Failure> {
///         ctx.progress(0, Some(1), format!("asking about {}", params.city)).await;
///         if params.city.is_empty() {
///             return Err(Failure::new("Please name a city").permanent());
///         }
///         Ok(Weather { celsius: 21.5 })
///     }
///
///     // Optional: a deadline of its own and retries.
///     fn deadline(&self) -> Option<Duration> { Some(Duration::from_secs(30)) }
///     fn retry_policy(&self) -> RetryPolicy { RetryPolicy::attempts(3) }
/// }
/// ```
pub trait AsyncTask: Send + Sync + 'static {
    /// A stable name for the task: it is stored with each request, bound into its token and, with
    /// the Redis backend, names the queue. 1–64 characters from `A-Z a-z 0-9 _ - . :`.
    const NAME: &'static str;
    /// What the endpoint passes to `init(params)`.
    type Params: Serialize + DeserializeOwned + Send + 'static;
    /// What the `done` closure receives.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Does the slow work. A panic here is caught and becomes a failure with a generic message.
    fn execute_task(
        &self,
        params: Self::Params,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Self::Output, Failure>> + Send;

    /// This task's deadline, counted from the start request; `None` uses the endpoint's
    /// (default 60 s). An unfinished request fails with a timeout once it passes.
    fn deadline(&self) -> Option<Duration> {
        None
    }

    /// Retries for this task; off unless overridden.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::none()
    }
}

/// How often a failed task is tried again, and how long to wait in between (exponential backoff).
///
/// Between attempts the request shows `"retrying"`; it fails only when the attempts are used up
/// (or the deadline passes first).
///
/// ```
/// use async_endpoint::RetryPolicy;
/// use std::time::Duration;
///
/// let p = RetryPolicy::attempts(4).backoff(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(p.max_attempts(), 4);
/// assert_eq!(p.delay_after(1), Duration::from_millis(100));
/// assert_eq!(p.delay_after(2), Duration::from_millis(200));
/// assert_eq!(p.delay_after(9), Duration::from_secs(1));
/// assert_eq!(RetryPolicy::none().max_attempts(), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial: Duration,
    max: Duration,
}

impl RetryPolicy {
    /// One attempt, no retries (the default).
    pub const fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }

    /// Up to `n` attempts in all (`n` of 0 counts as 1); backoff 1 s doubling to 30 s.
    pub const fn attempts(n: u32) -> Self {
        RetryPolicy {
            max_attempts: if n == 0 { 1 } else { n },
            ..Self::none()
        }
    }

    /// Sets the first delay and the cap of the doubling backoff.
    #[must_use]
    pub const fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max;
        self
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait after attempt number `attempt` (1-based) failed.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::none()
    }
}

/// Where a task's progress goes (the engine saves it in its backend).
pub(crate) trait ProgressSink: Send + Sync {
    /// Saves `progress` of request `id`.
    fn save(
        &self,
        id: RequestId,
        progress: Progress,
    ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>>;
}

/// One attempt's cancellation, shared by the worker (which fires it when the request is
/// cancelled) and the task's [`TaskContext`] (which waits for it).
#[derive(Clone, Debug)]
pub(crate) struct Cancellation(Arc<CancelState>);

#[derive(Debug)]
struct CancelState {
    fired: tokio::sync::watch::Sender<bool>,
    /// The task called [`TaskContext::cancelled`]: it cleans up by itself, so the worker lets it
    /// run to its end instead of dropping it.
    watched: AtomicBool,
}

impl Cancellation {
    pub(crate) fn new() -> Self {
        Cancellation(Arc::new(CancelState {
            fired: tokio::sync::watch::Sender::new(false),
            watched: AtomicBool::new(false),
        }))
    }

    /// Tells the task its request was cancelled.
    pub(crate) fn fire(&self) {
        self.0.fired.send_replace(true);
    }

    /// Whether the task asked to hear of a cancellation (so it cleans up and returns by itself).
    pub(crate) fn is_watched(&self) -> bool {
        self.0.watched.load(Ordering::Acquire)
    }

    fn is_fired(&self) -> bool {
        *self.0.fired.borrow()
    }
}

/// Handed to [`AsyncTask::execute_task`]: who this request is, a way to report progress, and
/// whether the request was cancelled.
pub struct TaskContext {
    id: RequestId,
    attempt: u32,
    deadline_ms: u64,
    sink: Arc<dyn ProgressSink>,
    throttle: Duration,
    last_write: Mutex<Option<Instant>>,
    cancellation: Cancellation,
}

impl TaskContext {
    pub(crate) fn new(
        id: RequestId,
        attempt: u32,
        deadline_ms: u64,
        sink: Arc<dyn ProgressSink>,
        throttle: Duration,
        cancellation: Cancellation,
    ) -> Self {
        TaskContext {
            id,
            attempt,
            deadline_ms,
            sink,
            throttle,
            last_write: Mutex::new(None),
            cancellation,
        }
    }

    /// Completes once a client has cancelled this request (a `DELETE` with its id and token,
    /// seen by whichever worker process runs it); never completes otherwise.
    ///
    /// By default a cancelled task's future is dropped at its next `.await`, which suits work
    /// that needs no cleanup. A task that calls `cancelled()` says it cleans up by itself: from
    /// then on the worker does not drop it, but lets it run to its end (still bounded by the
    /// deadline) and ignores what it returns, since the request already stands cancelled.
    ///
    /// ```
    /// use async_endpoint::{AsyncTask, Failure, TaskContext};
    /// use std::time::Duration;
    ///
    /// struct Export;
    ///
    /// impl AsyncTask for Export {
    ///     const NAME: &'static str = "export";
    ///     type Params = u32;
    ///     type Output = String;
    ///
    ///     async fn execute_task(&self, rows: u32, ctx: TaskContext) -> Result<String, Failure> {
    ///         let work = async {
    ///             for row in 0..rows {
    ///                 ctx.progress(u64::from(row), Some(u64::from(rows)), "exporting").await;
    ///                 tokio::time::sleep(Duration::from_millis(10)).await;
    ///             }
    ///         };
    ///         tokio::select! {
    ///             () = work => Ok("export.csv".to_owned()),
    ///             () = ctx.cancelled() => {
    ///                 // Remove the half-written file, release locks, …
    ///                 Err(Failure::new("cancelled"))
    ///             }
    ///         }
    ///     }
    /// }
    /// ```
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.cancellation.0.watched.store(true, Ordering::Release);
        let mut fired = self.cancellation.0.fired.subscribe();
        async move {
            // The sender lives as long as the attempt; should it go, the attempt is over anyway.
            let _ = fired.wait_for(|fired| *fired).await;
        }
    }

    /// Whether a client has cancelled this request (see [`cancelled`](Self::cancelled)); for
    /// loops that check between steps. Checking does not keep the task from being dropped.
    ///
    /// ```
    /// # async fn step(_: u32) {}
    /// # async fn f(ctx: async_endpoint::TaskContext) {
    /// for chunk in 0..100 {
    ///     if ctx.is_cancelled() {
    ///         break;
    ///     }
    ///     step(chunk).await;
    /// }
    /// # }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_fired()
    }

    /// The request's id.
    pub fn request_id(&self) -> RequestId {
        self.id
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The request's deadline, as milliseconds since the Unix epoch.
    pub fn deadline_unix_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Reports progress: shown in the 202 body as `{at, total, percent, message}` and pushed to
    /// waiting polls.
    ///
    /// Writes are throttled (`progress_interval`, default 250 ms): an update arriving sooner than
    /// that after the previous write is dropped, except the final one (`at >= total`). Progress
    /// never fails the task: a backend error is logged and ignored.
    pub async fn progress(&self, at: u64, total: Option<u64>, message: impl Into<String>) {
        let last_step = total.is_some_and(|t| at >= t);
        {
            // A poisoned lock only means another progress call panicked; the value is still fine.
            let mut last = self.last_write.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if !last_step && last.is_some_and(|t| now.duration_since(t) < self.throttle) {
                return;
            }
            *last = Some(now);
        }
        let progress = Progress::new(at, total, message);
        if let Err(error) = self.sink.save(self.id, progress).await {
            tracing::warn!(request_id = %self.id, error = &error as &dyn std::error::Error, "progress not saved");
        } else {
            tracing::debug!(request_id = %self.id, at, total, "progress");
        }
    }
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
