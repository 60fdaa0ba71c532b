//! The engine shared by the layer, the extractor and the workers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::SharedBackend;
use crate::token::Keyring;
use crate::{AsyncTask, Failure, RetryPolicy, TaskContext};

/// Derives the owner of a request (e.g. the signed-in user's id) from its parts.
pub(crate) type OwnerFn = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;

/// Validated settings (see the builder for meanings and defaults).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) deadline: Duration,
    pub(crate) ttl: Duration,
    pub(crate) max_params_bytes: usize,
    pub(crate) max_wait: Duration,
    pub(crate) retry_after: Duration,
    pub(crate) concurrency: usize,
    pub(crate) progress_interval: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) internal_failure: Failure,
    pub(crate) timeout_failure: Failure,
}

pub(crate) struct Engine {
    pub(crate) backend: SharedBackend,
    pub(crate) tasks: HashMap<&'static str, Arc<dyn ErasedTask>>,
    pub(crate) task_names: Vec<&'static str>,
    pub(crate) keys: Keyring,
    pub(crate) config: Config,
    pub(crate) owner: Option<OwnerFn>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why an attempt did not produce an output.
pub(crate) enum RunError {
    /// The task's own failure.
    Failed(Failure),
    /// Params or output could not be decoded/encoded; the detail is for the logs only.
    Internal(String),
}

/// [`AsyncTask`] with its types erased: JSON in, JSON out.
pub(crate) trait ErasedTask: Send + Sync {
    fn deadline(&self) -> Option<Duration>;
    fn retry_policy(&self) -> RetryPolicy;
    fn run(
        self: Arc<Self>,
        params: String,
        ctx: TaskContext,
    ) -> BoxFuture<Result<String, RunError>>;
}

impl<T: AsyncTask> ErasedTask for T {
    fn deadline(&self) -> Option<Duration> {
        AsyncTask::deadline(self)
    }

    fn retry_policy(&self) -> RetryPolicy {
        AsyncTask::retry_policy(self)
    }

    fn run(
        self: Arc<Self>,
        params: String,
        ctx: TaskContext,
    ) -> BoxFuture<Result<String, RunError>> {
        Box::pin(async move {
            let params: T::Params = serde_json::from_str(&params)
                .map_err(|e| RunError::Internal(format!("params could not be decoded: {e}")))?;
            let output = self
                .execute_task(params, ctx)
                .await
                .map_err(RunError::Failed)?;
            serde_json::to_string(&output)
                .map_err(|e| RunError::Internal(format!("output could not be encoded: {e}")))
        })
    }
}
