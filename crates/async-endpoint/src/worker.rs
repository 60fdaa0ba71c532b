//! The worker runtime: fetch jobs, run them with bounded concurrency, catch panics, enforce
//! deadlines, retry, record outcomes, and shut down gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument as _;

use crate::backend::{Backend, Begin, Job, Outcome, StoredFailure, Update, Watch};
use crate::clock::now_ms;
use crate::engine::{Engine, RunError, is_cancelled};
use crate::protocol::{RequestId, Status};
use crate::task::{Cancellation, TaskContext};

/// How long one fetch may block waiting for jobs.
const FETCH_BLOCK: Duration = Duration::from_secs(1);
/// Backoff after a backend error: from MIN doubling to MAX.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Times an outcome is written before giving up (then the job is redelivered or times out).
const FINISH_TRIES: u32 = 8;
/// Most outcomes written in one [`Backend::finish_many`] call (every write stays bounded).
const FINISH_BATCH: usize = 256;

/// A job's place among the `concurrency` running ones: held while an attempt runs (or waits to
/// retry), given up once its outcome is handed to the writer, so the next jobs are fetched and
/// begun while outcomes are written. `None` once given up, or where there is no bound.
type Slot = Option<OwnedSemaphorePermit>;

/// Jobs being run by this worker, so a shutdown can hand back the unfinished ones.
type InFlight = Arc<Mutex<HashMap<(RequestId, String), Job>>>;

/// Runs the worker loop until `shutdown` completes, then stops fetching, lets running tasks finish
/// within the grace period and hands the rest back to the backend.
pub(crate) async fn run(engine: Arc<Engine>, shutdown: impl Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    // `permits` bounds the tasks running at once (`concurrency`); `held` bounds the jobs this
    // process holds, running or with an outcome waiting for the writer (twice that), so a slow
    // backend cannot pile up outcomes without bound.
    let permits = Arc::new(Semaphore::new(engine.config.concurrency));
    let held = Arc::new(Semaphore::new(engine.config.concurrency.saturating_mul(2)));
    let in_flight: InFlight = Arc::default();
    let mut running = JoinSet::new();
    let mut backoff = BACKOFF_MIN;
    let (finisher, writer) = Finisher::spawn(engine.clone());
    tracing::info!(tasks = ?engine.task_names, concurrency = engine.config.concurrency, "worker started");
    let sampler = crate::metrics::sample_queue_depth(&engine);
    loop {
        while running.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let hold = tokio::select! {
            biased;
            () = &mut shutdown => break,
            hold = held.clone().acquire_owned() => match hold {
                Ok(hold) => hold,
                Err(_) => break,
            },
        };
        let max = permits.available_permits().min(held.available_permits()) + 1;
        let fetched = tokio::select! {
            biased;
            () = &mut shutdown => break,
            fetched = engine.backend.fetch(&engine.task_names, max, FETCH_BLOCK) => fetched,
        };
        let jobs = match fetched {
            Ok(jobs) => {
                backoff = BACKOFF_MIN;
                jobs
            }
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    retry_in_ms = backoff.as_millis() as u64,
                    "worker could not fetch jobs"
                );
                drop((permit, hold));
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut first = Some((permit, hold));
        let mut taken = Vec::with_capacity(jobs.len());
        for job in jobs {
            let permit = match first.take() {
                Some(p) => p,
                // `max` was the number of free permits, and only this loop takes them.
                None => match (
                    permits.clone().try_acquire_owned(),
                    held.clone().try_acquire_owned(),
                ) {
                    (Ok(permit), Ok(hold)) => (permit, hold),
                    _ => {
                        release(&engine, &job).await;
                        continue;
                    }
                },
            };
            lock(&in_flight).insert((job.id, job.receipt.clone()), job.clone());
            taken.push((job, permit));
        }
        // Watch each job before it begins, so a cancel from then on is heard without a poll.
        let watches: Vec<Watch> = taken
            .iter()
            .map(|(job, _)| engine.backend.watch(job.id))
            .collect();
        let jobs: Vec<Job> = taken.iter().map(|(job, _)| job.clone()).collect();
        let begun = match engine.backend.begin_many(&jobs, now_ms()).await {
            Ok(begun) if begun.len() == jobs.len() => begun,
            Ok(begun) => {
                tracing::error!(
                    jobs = jobs.len(),
                    answers = begun.len(),
                    "the backend answered begin_many with the wrong number of answers: handing the jobs back"
                );
                hand_back(&engine, &in_flight, &jobs).await;
                continue;
            }
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    jobs = jobs.len(),
                    "could not start the jobs: handing them back"
                );
                hand_back(&engine, &in_flight, &jobs).await;
                continue;
            }
        };
        for (((job, (permit, hold)), watch), begin) in taken.into_iter().zip(watches).zip(begun) {
            let key = (job.id, job.receipt.clone());
            let engine = engine.clone();
            let in_flight = in_flight.clone();
            let finisher = finisher.clone();
            running.spawn(async move {
                let mut slot = Some(permit);
                run_begun(&engine, &job, begin, watch, &finisher, &mut slot).await;
                lock(&in_flight).remove(&key);
                drop((slot, hold));
            });
        }
    }

    if let Some(sampler) = sampler {
        sampler.abort();
    }
    tracing::info!(running = running.len(), "worker stopping: no new jobs");
    let grace = engine.config.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        running.shutdown().await;
        let left: Vec<Job> = lock(&in_flight).drain().map(|(_, job)| job).collect();
        tracing::warn!(
            handed_back = left.len(),
            "grace period over: unfinished jobs handed back"
        );
        for job in &left {
            release(&engine, job).await;
        }
    }
    // Every job is over: the writer writes the outcomes still waiting and stops.
    drop(finisher);
    if writer.await.is_err() {
        tracing::error!("the outcome writer stopped abnormally");
    }
    tracing::info!("worker stopped");
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are single map operations; a poisoned lock still holds a valid map.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands back jobs that were taken but could not begin, so they are delivered again soon.
async fn hand_back(engine: &Engine, in_flight: &InFlight, jobs: &[Job]) {
    for job in jobs {
        lock(in_flight).remove(&(job.id, job.receipt.clone()));
        release(engine, job).await;
    }
}

async fn release(engine: &Engine, job: &Job) {
    if let Err(error) = engine.backend.release(job).await {
        tracing::warn!(request_id = %job.id, error = &error as &dyn std::error::Error, "could not hand the job back; it will be redelivered after the idle timeout");
    }
}

/// Aborts the spawned attempt when the job's future is dropped (shutdown), so no task runs on
/// detached from its job.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one job through its attempts and records the outcome (one job at a time: the test
/// helpers' `drain`).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) async fn run_job(engine: &Engine, job: &Job) {
    let watch = engine.backend.watch(job.id);
    let begin = match engine.backend.begin(job, now_ms()).await {
        Ok(begin) => begin,
        Err(error) => {
            tracing::warn!(request_id = %job.id, error = &error as &dyn std::error::Error, "could not start the job; it will be redelivered");
            return;
        }
    };
    run_begun(engine, job, begin, watch, &Finisher::Direct, &mut None).await;
}

/// Runs a job whose first attempt began (`begin`, after `watch` was registered) through its
/// attempts, and records the outcome through `finisher`.
async fn run_begun(
    engine: &Engine,
    job: &Job,
    begin: Begin,
    watch: Watch,
    finisher: &Finisher,
    slot: &mut Slot,
) {
    let span = tracing::info_span!("async_request", request_id = %job.id, task = %job.task, deliveries = job.deliveries, traceparent = tracing::field::Empty);
    run_attempts(engine, job, begin, watch, finisher, slot)
        .instrument(span)
        .await;
}

async fn run_attempts(
    engine: &Engine,
    job: &Job,
    begin: Begin,
    mut watch: Watch,
    finisher: &Finisher,
    slot: &mut Slot,
) {
    let config = &engine.config;
    let Some(task) = engine.tasks.get(job.task.as_str()).cloned() else {
        tracing::error!("no task of this name is registered in this process: failing the request");
        finish(
            engine,
            finisher,
            job,
            Outcome::Failed(StoredFailure::internal()),
            slot,
        )
        .await;
        return;
    };
    let policy = task.retry_policy();
    let mut linked = false;
    let mut redelivery_counted = false;
    let mut first = Some(begin);
    loop {
        let begin = match first.take() {
            Some(begin) => begin,
            None => match engine.backend.begin(job, now_ms()).await {
                Ok(begin) => begin,
                Err(error) => {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "could not start the job; it will be redelivered"
                    );
                    return;
                }
            },
        };
        let Begin::Run {
            params,
            attempt,
            deadline_ms,
            traceparent,
        } = begin
        else {
            crate::metrics::skipped(&job.task);
            tracing::debug!("job skipped: request finished, gone or past its deadline");
            return;
        };
        if let (Some(traceparent), false) = (&traceparent, linked) {
            // This future runs inside the job's span (`run_job`): make it the start's child.
            let span = tracing::Span::current();
            span.record("traceparent", traceparent.as_str());
            engine.trace.link(&span, traceparent);
            linked = true;
        }
        if attempt == 1 {
            // Created at its deadline less the task's deadline (the settings every process
            // shares), so no creation time needs to travel with the job.
            let deadline = task.deadline().unwrap_or(config.deadline);
            let created_ms = deadline_ms.saturating_sub(deadline.as_millis() as u64);
            let waited = now_ms().saturating_sub(created_ms);
            crate::metrics::queued(&job.task, Duration::from_millis(waited));
        }
        if job.deliveries > 1 && !redelivery_counted {
            crate::metrics::redelivered(&job.task);
            redelivery_counted = true;
        }
        tracing::info!(attempt, "task started");
        let cancellation = Cancellation::new();
        let ctx = TaskContext::new(
            job.id,
            attempt,
            deadline_ms,
            engine.progress.clone(),
            config.progress_interval,
            cancellation.clone(),
        );
        let remaining = Duration::from_millis(deadline_ms.saturating_sub(now_ms()));
        let deadline = tokio::time::Instant::now() + remaining;
        // On the task runtime: an attempt that blocks holds one of its threads, not the app's.
        let attempt_began = tokio::time::Instant::now();
        let _running = Running::new(&job.task);
        let mut attempt_handle =
            AbortOnDrop(engine.task_runtime.spawn(task.clone().run(params, ctx)));
        let ran = tokio::select! {
            ran = tokio::time::timeout_at(deadline, &mut attempt_handle.0) => ran,
            () = cancelled(engine, job.id, &mut watch) => {
                stop(attempt_handle, &cancellation, deadline).await;
                crate::metrics::ran(&job.task, attempt_began.elapsed(), "cancelled");
                // The request stands cancelled; this only hands the delivery back as done.
                finish(engine, finisher, job, Outcome::Failed(StoredFailure::cancelled()), slot).await;
                return;
            }
        };
        let ran_for = attempt_began.elapsed();
        let attempt_outcome = match &ran {
            Err(_) => "timed_out",
            Ok(Ok(Ok(_))) => "done",
            _ => "failed",
        };
        crate::metrics::ran(&job.task, ran_for, attempt_outcome);
        let (failure, permanent) = match ran {
            Err(_) => {
                tracing::warn!(attempt, "deadline passed while the task ran: cancelled");
                // Stopped before its slot is given up, so the slot bounds running attempts.
                attempt_handle.0.abort();
                finish(
                    engine,
                    finisher,
                    job,
                    Outcome::Failed(StoredFailure::timeout()),
                    slot,
                )
                .await;
                return;
            }
            Ok(Ok(Ok(output))) => {
                finish(engine, finisher, job, Outcome::Done(output), slot).await;
                return;
            }
            Ok(Ok(Err(RunError::Failed(failure)))) => {
                tracing::info!(attempt, message = failure.message(), "task failed");
                let permanent = failure.is_permanent();
                (StoredFailure::from(failure), permanent)
            }
            Ok(Ok(Err(RunError::Internal(detail)))) => {
                tracing::error!(attempt, detail, "task could not run");
                (StoredFailure::internal(), false)
            }
            Ok(Err(join_error)) => {
                let detail = if join_error.is_panic() {
                    panic_message(&*join_error.into_panic())
                } else {
                    "cancelled".to_owned()
                };
                tracing::error!(attempt, panic = %detail, "task panicked");
                (StoredFailure::internal(), false)
            }
        };
        let delay = policy.delay_after(attempt);
        let out_of_time = now_ms().saturating_add(delay.as_millis() as u64) >= deadline_ms;
        if permanent || attempt >= policy.max_attempts() || out_of_time {
            finish(engine, finisher, job, Outcome::Failed(failure), slot).await;
            return;
        }
        tracing::info!(attempt, delay_ms = delay.as_millis() as u64, "retrying");
        crate::metrics::retried(&job.task);
        if let Err(error) = engine.backend.update(job.id, Update::Retrying).await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "could not mark the request retrying"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // Cancelled between attempts: no point sleeping on (the next `begin` would skip).
            () = cancelled(engine, job.id, &mut watch) => {
                tracing::info!("request cancelled while waiting to retry");
                finish(engine, finisher, job, Outcome::Failed(StoredFailure::cancelled()), slot).await;
                return;
            }
        }
    }
}

/// Completes once request `id` stands cancelled, whichever process cancelled it: it reads the
/// record after every change the backend announces for it through `watch` (registered before
/// the job began, so nothing since is missed; a cancel is always announced, see
/// [`Backend::watch`]). Never completes otherwise.
async fn cancelled(engine: &Engine, id: RequestId, watch: &mut Watch) {
    let mut backoff = BACKOFF_MIN;
    watch.changed().await;
    loop {
        match engine.backend.poll(id, now_ms()).await {
            Ok(Some(snapshot)) if is_cancelled(&snapshot) => return,
            Ok(_) => {
                backoff = BACKOFF_MIN;
                watch.changed().await;
            }
            Err(error) => {
                // The backend is unreachable: look again after a change or a backoff.
                tracing::debug!(
                    error = &error as &dyn std::error::Error,
                    "could not check for a cancellation"
                );
                tokio::select! {
                    () = watch.changed() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Stops a cancelled attempt. A task that watches [`TaskContext::cancelled`] cleans up by itself:
/// it is told and runs to its end (bounded by the deadline), and its outcome is ignored. Any
/// other is aborted: its future is dropped at its next `.await`. Either way this returns once it
/// is gone, so its worker slot is free only then.
async fn stop<T>(
    mut attempt: AbortOnDrop<T>,
    cancellation: &Cancellation,
    deadline: tokio::time::Instant,
) {
    cancellation.fire();
    if cancellation.is_watched() {
        tracing::info!("request cancelled: the task is told and cleans up");
    } else {
        tracing::info!("request cancelled: the task is dropped");
        attempt.0.abort();
    }
    if tokio::time::timeout_at(deadline, &mut attempt.0)
        .await
        .is_err()
    {
        tracing::warn!("a cancelled task was still running at its deadline: dropped");
    }
}

/// Writes outcomes: at once (`Direct`), or through the worker's outcome writer (`Batched`),
/// which writes the outcomes of every job that ended while its last write was under way with one
/// [`Backend::finish_many`] call. At idle a batch is one job, so batching adds no delay; under
/// load it saves a round trip per job.
#[derive(Clone)]
enum Finisher {
    /// Only the test helpers' `drain` writes one job at a time.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Direct,
    Batched(mpsc::UnboundedSender<Finished>),
}

/// An outcome waiting for the writer, and where to say what stands (`None`: not recorded).
struct Finished {
    job: Job,
    outcome: Outcome,
    reply: oneshot::Sender<Option<Status>>,
}

impl Finisher {
    /// A batched finisher and its writer task, which ends once every clone is dropped and the
    /// outcomes sent before are written.
    fn spawn(engine: Arc<Engine>) -> (Finisher, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Finished>();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(FINISH_BATCH);
            while rx.recv_many(&mut batch, FINISH_BATCH).await > 0 {
                let (items, replies): (Vec<(Job, Outcome)>, Vec<_>) = batch
                    .drain(..)
                    .map(|f: Finished| ((f.job, f.outcome), f.reply))
                    .unzip();
                let stands = write_outcomes(&engine, &items).await;
                for (at, reply) in replies.into_iter().enumerate() {
                    // The job may be gone (aborted at shutdown): nobody to tell.
                    let _ = reply.send(stands.as_ref().map(|s| s[at]));
                }
            }
        });
        (Finisher::Batched(tx), writer)
    }

    /// Writes one outcome; the status that stands, or `None` if it could not be recorded. The
    /// job's `slot` is given up once the outcome is handed over (its attempt is over).
    async fn finish(
        &self,
        engine: &Engine,
        job: &Job,
        outcome: Outcome,
        slot: &mut Slot,
    ) -> Option<Status> {
        match self {
            Finisher::Direct => {
                slot.take();
                write_outcomes(engine, &[(job.clone(), outcome)])
                    .await
                    .map(|s| s[0])
            }
            Finisher::Batched(tx) => {
                let (reply, stands) = oneshot::channel();
                let finished = Finished {
                    job: job.clone(),
                    outcome,
                    reply,
                };
                let sent = tx.send(finished).is_ok();
                slot.take();
                if !sent {
                    return None;
                }
                stands.await.ok().flatten()
            }
        }
    }
}

/// Writes `items` with [`Backend::finish_many`], trying again with backoff; `None` when every
/// try failed (the jobs are then redelivered or fail at their deadline). The statuses that
/// stand, one per item.
async fn write_outcomes(engine: &Engine, items: &[(Job, Outcome)]) -> Option<Vec<Status>> {
    let mut backoff = BACKOFF_MIN;
    for _ in 0..FINISH_TRIES {
        match engine.backend.finish_many(items, now_ms()).await {
            Ok(stands) if stands.len() == items.len() => return Some(stands),
            Ok(stands) => {
                tracing::error!(
                    outcomes = items.len(),
                    answers = stands.len(),
                    "the backend answered finish_many with the wrong number of answers"
                );
                return None;
            }
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    outcomes = items.len(),
                    "could not record outcomes; trying again"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    None
}

async fn finish(
    engine: &Engine,
    finisher: &Finisher,
    job: &Job,
    outcome: Outcome,
    slot: &mut Slot,
) {
    let counted = cfg!(feature = "metrics").then(|| outcome.clone());
    match finisher.finish(engine, job, outcome, slot).await {
        Some(status) => {
            tracing::info!(status = status.as_str(), "request finished");
            if let Some(outcome) = counted {
                count_finished(engine, job, &outcome, status).await;
            }
        }
        None => tracing::error!(
            "outcome not recorded; the job will be redelivered or fail at its deadline"
        ),
    }
}

/// Counts how a request this worker finished ended: what stands, which is the outcome written
/// unless the request had already ended otherwise (then one read says how).
async fn count_finished(engine: &Engine, job: &Job, outcome: &Outcome, status: Status) {
    let kind = match (outcome, status) {
        (_, Status::Done) => None,
        (Outcome::Failed(failure), _) => Some(failure.kind),
        (_, _) => match engine.backend.poll(job.id, now_ms()).await {
            Ok(Some(snapshot)) => snapshot.failure.map(|failure| failure.kind),
            _ => Some(crate::failure::FailureKind::Internal),
        },
    };
    crate::metrics::finished(&job.task, crate::metrics::outcome(kind));
}

/// One running task in the `tasks_running` gauge, for as long as it lives.
struct Running<'a>(&'a str);

impl<'a> Running<'a> {
    fn new(task: &'a str) -> Self {
        crate::metrics::running(task, 1.0);
        Running(task)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        crate::metrics::running(self.0, -1.0);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
