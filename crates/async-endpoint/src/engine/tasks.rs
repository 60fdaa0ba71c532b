//! The engine's side of tasks: [`AsyncTask`] with its types erased, and the runtime attempts
//! run on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::failure::Failure;
use crate::task::{AsyncTask, RetryPolicy, TaskContext};

/// Where task attempts run. By default a multi-thread runtime of their own, made on first use,
/// so a task that blocks (a blocking SDK, heavy CPU) holds one of *its* threads and never stalls
/// the app's runtime: its handlers, polls, the worker loop and the backend connections keep going.
/// With zero threads, attempts run on the app's runtime.
pub(crate) struct TaskRuntime {
    threads: usize,
    runtime: std::sync::OnceLock<Option<tokio::runtime::Runtime>>,
}

impl TaskRuntime {
    pub(crate) fn new(threads: usize) -> Self {
        TaskRuntime {
            threads,
            runtime: std::sync::OnceLock::new(),
        }
    }

    /// Spawns an attempt on the task runtime (or the current one with zero threads, or if the
    /// task runtime could not be made).
    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.threads == 0 {
            return tokio::spawn(future);
        }
        let runtime = self.runtime.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .thread_name("async-endpoint-task")
                .enable_all()
                .build()
                .map_err(|error| {
                    tracing::error!(%error, "task runtime not created: tasks run on the app's runtime");
                })
                .ok()
        });
        match runtime {
            Some(runtime) => runtime.spawn(future),
            None => tokio::spawn(future),
        }
    }
}

impl Drop for TaskRuntime {
    fn drop(&mut self) {
        // `shutdown_background` never blocks, so this is safe inside an async context.
        if let Some(Some(runtime)) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
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
