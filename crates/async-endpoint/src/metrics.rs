//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`): the app
//! installs a recorder (e.g. `metrics-exporter-prometheus`); without one they cost a check and
//! go nowhere, and without the feature these calls compile to nothing.
//!
//! Names and labels (Prometheus conventions: `snake_case`, base units, `_total` counters) are
//! listed in the README's "Metrics" table; keep the two in step. `task` is a task's `NAME`, so
//! the label's values are the registered tasks.

#![cfg_attr(not(feature = "metrics"), allow(unused_variables, dead_code))]

use std::time::Duration;

use crate::backend::Limit;
use crate::failure::FailureKind;

/// Starts stored and enqueued (a repeat with an idempotency key is not a new start).
pub(crate) const STARTED: &str = "async_endpoint_requests_started_total";
/// Requests a worker finished, by `outcome`.
pub(crate) const FINISHED: &str = "async_endpoint_requests_finished_total";
/// Jobs skipped at delivery: their request finished (cancelled, timed out) before a worker began.
pub(crate) const SKIPPED: &str = "async_endpoint_jobs_skipped_total";
/// Seconds from the start until a worker began the first attempt.
pub(crate) const QUEUED: &str = "async_endpoint_queue_wait_seconds";
/// Seconds one attempt ran, by `outcome` of the attempt.
pub(crate) const RUNNING: &str = "async_endpoint_attempt_duration_seconds";
/// Attempts that failed and were scheduled again.
pub(crate) const RETRIES: &str = "async_endpoint_retries_total";
/// Jobs claimed from a worker that died (a delivery after the first; a job handed back at a
/// graceful shutdown is not counted).
pub(crate) const REDELIVERED: &str = "async_endpoint_jobs_redelivered_total";
/// Tasks running now in this process.
pub(crate) const IN_FLIGHT: &str = "async_endpoint_tasks_running";
/// 503 answers: the backend could not be reached.
pub(crate) const UNAVAILABLE: &str = "async_endpoint_backend_unavailable_total";
/// 429 answers: a pending limit refused a start, by `limit` (`owner` or `task`).
pub(crate) const REFUSED: &str = "async_endpoint_starts_refused_total";

/// Jobs waiting for a worker, by `task`: sampled by each worker from its backend.
pub(crate) const QUEUE_DEPTH: &str = "async_endpoint_queue_depth";

/// How often a worker samples the queue depth.
#[cfg(feature = "metrics")]
const QUEUE_DEPTH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts sampling the queue depth of the engine's tasks (a task beside the worker loop, which
/// aborts it when the worker stops); `None` without the feature. A backend that cannot tell
/// (`Backend::queue_depth` is `None`) ends the sampling; a failed sample is skipped.
pub(crate) fn sample_queue_depth(
    engine: &std::sync::Arc<crate::engine::Engine>,
) -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(feature = "metrics")]
    {
        use crate::backend::Backend as _;
        let engine = engine.clone();
        Some(tokio::spawn(async move {
            loop {
                for &task in &engine.task_names {
                    match engine.backend.queue_depth(task).await {
                        Ok(Some(depth)) => {
                            metrics::gauge!(QUEUE_DEPTH, "task" => task).set(depth as f64);
                        }
                        Ok(None) => return,
                        Err(_) => {}
                    }
                }
                tokio::time::sleep(QUEUE_DEPTH_EVERY).await;
            }
        }))
    }
    #[cfg(not(feature = "metrics"))]
    None
}

/// A new request of `task` was stored and enqueued.
#[inline]
pub(crate) fn started(task: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(STARTED, "task" => task).increment(1);
}

/// How a request a worker ran ended, as a label value.
pub(crate) fn outcome(failure: Option<FailureKind>) -> &'static str {
    match failure {
        None => "done",
        Some(FailureKind::Timeout) => "timed_out",
        Some(FailureKind::Cancelled) => "cancelled",
        Some(_) => "failed",
    }
}

/// A worker recorded the end of a request of `task`.
#[inline]
pub(crate) fn finished(task: &str, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(FINISHED, "task" => task.to_owned(), "outcome" => outcome).increment(1);
}

/// A delivery of a job of `task` was skipped.
#[inline]
pub(crate) fn skipped(task: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(SKIPPED, "task" => task.to_owned()).increment(1);
}

/// The first attempt of a request of `task` began `waited` after its start.
#[inline]
pub(crate) fn queued(task: &str, waited: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(QUEUED, "task" => task.to_owned()).record(waited.as_secs_f64());
}

/// An attempt of `task` ran for `ran` and ended with `outcome`.
#[inline]
pub(crate) fn ran(task: &str, ran: Duration, outcome: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::histogram!(RUNNING, "task" => task.to_owned(), "outcome" => outcome)
        .record(ran.as_secs_f64());
}

/// An attempt of `task` failed and another is scheduled.
#[inline]
pub(crate) fn retried(task: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(RETRIES, "task" => task.to_owned()).increment(1);
}

/// A job of `task` came again (a delivery after the first).
#[inline]
pub(crate) fn redelivered(task: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(REDELIVERED, "task" => task.to_owned()).increment(1);
}

/// A task of `task` began (`+1`) or ended (`-1`) running in this process.
#[inline]
pub(crate) fn running(task: &str, delta: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(IN_FLIGHT, "task" => task.to_owned()).increment(delta);
}

/// A 503 went out: the backend could not be reached.
#[inline]
pub(crate) fn unavailable() {
    #[cfg(feature = "metrics")]
    metrics::counter!(UNAVAILABLE).increment(1);
}

/// A start of `task` was refused by a pending limit (429).
#[inline]
pub(crate) fn refused(task: &'static str, limit: Limit) {
    #[cfg(feature = "metrics")]
    {
        let limit = match limit {
            Limit::Owner => "owner",
            _ => "task",
        };
        metrics::counter!(REFUSED, "task" => task, "limit" => limit).increment(1);
    }
}
