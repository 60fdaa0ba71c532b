//! The backend conformance suite: every behaviour the engine relies on, run against any
//! [`Backend`]. A test binary declares it at its root (the macro names `$crate::conformance`) and
//! adds a backend with one line:
//!
//! ```ignore
//! #[path = "../conformance/suite.rs"]
//! mod conformance;
//! conformance::suite!(async { Some(MyBackend::new()) });
//! ```
//!
//! The factory expression is awaited once per test and must give `Some` fresh, empty backend (or
//! one under a unique key prefix), or `None` to skip (say why on stderr; fail instead under
//! `CI=true`). Times are passed to the backend explicitly, so deadlines are tested
//! without sleeping; only the TTL tests wait (about 1.5 s).

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use async_endpoint::backend::{
    Backend, Begin, Created, Job, Limit, NewRequest, Outcome, PendingLimits, StoredFailure, Update,
};
use async_endpoint::{FailureKind, Progress, RequestId, Status};

#[path = "idempotency.rs"]
mod idempotency;
pub use idempotency::*;
#[path = "batch.rs"]
mod batch;
pub use batch::*;

/// Generates one `#[tokio::test]` per behaviour for the backend made by `$make` (an expression
/// whose value is awaited to give the backend).
#[macro_export]
macro_rules! suite {
    ($make:expr) => {
        $crate::for_each_case!($crate::suite; @cases $make);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(backend) = $make.await else { return };
                $crate::conformance::$case(std::sync::Arc::new(backend)).await;
            }
        )*
    };
}
pub use suite;

/// Calls the macro `$callback` with `$args`, `;` and the name of every case of the suite, so a
/// runner that does not make one test per case (one cluster for all cases) runs the same list.
#[macro_export]
macro_rules! for_each_case {
    ($callback:path; $($args:tt)*) => {
        $callback! {$($args)*;
            create_then_poll_is_queued,
            unknown_id_polls_none,
            full_lifecycle,
            first_terminal_state_wins,
            concurrent_finishes_agree,
            delivery_after_terminal_is_skipped,
            poll_past_deadline_times_out,
            begin_past_deadline_skips_and_times_out,
            finish_past_deadline_is_timeout,
            progress_after_terminal_is_ignored,
            retrying_then_next_attempt,
            watch_wakes_on_every_change,
            many_watches_each_wake_on_their_own_finish,
            fetch_honours_max_and_tasks,
            fetch_blocks_until_a_job_arrives,
            released_job_is_delivered_again,
            records_expire_after_ttl,
            duplicate_delivery_first_outcome_wins,
            finish_exactly_at_the_deadline_stands,
            finish_racing_a_deadline_poll_agree,
            progress_racing_finish_changes_nothing_after,
            polls_racing_finish_agree,
            cancel_queued_fails_it_and_its_job_never_runs,
            cancel_running_stands_and_a_later_finish_is_ignored,
            cancel_retrying_stands,
            cancel_of_a_finished_request_changes_nothing,
            cancel_twice_gives_the_same_answer,
            cancel_of_an_unknown_request_is_none,
            cancel_past_the_deadline_is_a_timeout,
            cancel_wakes_watchers,
            cancel_racing_finish_agree,
            cancel_racing_a_deadline_poll_agree,
            cancel_racing_a_redelivery_agree,
            // Idempotency keys (`idempotency.rs`).
            idempotency_key_returns_the_first_request,
            idempotency_keys_are_scoped,
            concurrent_creates_with_one_key_make_one_request,
            idempotency_key_expires_with_the_ttl,
            owner_limit_refuses_and_stores_nothing,
            task_limit_refuses_and_stores_nothing,
            no_owner_means_no_owner_limit,
            finished_request_frees_its_slot,
            timed_out_request_frees_its_slot,
            request_past_its_deadline_stops_counting_untouched,
            concurrent_creates_at_one_free_slot_admit_one,
            // Where the three meet.
            cancelled_request_frees_its_slot,
            repeat_with_a_key_is_not_refused_by_a_limit,
            // Trace context (`traceparent`) travels with the job.
            traceparent_travels_with_the_job,
            // Queue depth (the `async_endpoint_queue_depth` gauge).
            queue_depth_counts_the_jobs_waiting,
            // Batched transitions (`batch.rs`).
            begin_many_is_one_begin_per_job_in_order,
            finish_many_is_one_finish_per_job_in_order,
            cancel_wakes_a_watch_taken_before_begin,
        }
    };
}
#[allow(unused_imports)] // used by the cluster's runner only
pub use for_each_case;

/// A backend with what must outlive it (its private server): the cases hold the backend, so the
/// server runs as long as they do. Every call goes to the backend.
pub struct Served<B, G> {
    /// The backend under test.
    pub backend: B,
    /// Dropped after the backend (fields drop in order).
    pub guard: G,
}

impl<B: Backend, G: Send + Sync> Backend for Served<B, G> {
    async fn create(&self, request: NewRequest) -> Result<Created, async_endpoint::Error> {
        self.backend.create(request).await
    }
    fn place(&self, request: &mut NewRequest) {
        self.backend.place(request);
    }
    fn check_limits(&self, limits: &PendingLimits) -> Result<(), async_endpoint::Error> {
        self.backend.check_limits(limits)
    }
    async fn poll(
        &self,
        id: RequestId,
        now_ms: u64,
    ) -> Result<Option<async_endpoint::backend::Snapshot>, async_endpoint::Error> {
        self.backend.poll(id, now_ms).await
    }
    fn watch(&self, id: RequestId) -> async_endpoint::backend::Watch {
        self.backend.watch(id)
    }
    async fn fetch(
        &self,
        tasks: &[&'static str],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, async_endpoint::Error> {
        self.backend.fetch(tasks, max, block).await
    }
    async fn begin(&self, job: &Job, now_ms: u64) -> Result<Begin, async_endpoint::Error> {
        self.backend.begin(job, now_ms).await
    }
    async fn begin_many(
        &self,
        jobs: &[Job],
        now_ms: u64,
    ) -> Result<Vec<Begin>, async_endpoint::Error> {
        self.backend.begin_many(jobs, now_ms).await
    }
    async fn update(&self, id: RequestId, update: Update) -> Result<(), async_endpoint::Error> {
        self.backend.update(id, update).await
    }
    async fn finish(
        &self,
        job: &Job,
        outcome: Outcome,
        now_ms: u64,
    ) -> Result<Status, async_endpoint::Error> {
        self.backend.finish(job, outcome, now_ms).await
    }
    async fn finish_many(
        &self,
        finished: &[(Job, Outcome)],
        now_ms: u64,
    ) -> Result<Vec<Status>, async_endpoint::Error> {
        self.backend.finish_many(finished, now_ms).await
    }
    async fn release(&self, job: &Job) -> Result<(), async_endpoint::Error> {
        self.backend.release(job).await
    }
    async fn cancel(
        &self,
        id: RequestId,
        now_ms: u64,
    ) -> Result<Option<async_endpoint::backend::Snapshot>, async_endpoint::Error> {
        self.backend.cancel(id, now_ms).await
    }
    async fn queue_depth(&self, task: &'static str) -> Result<Option<u64>, async_endpoint::Error> {
        self.backend.queue_depth(task).await
    }
}

const TASK: &str = "conformance_task";
const OTHER_TASK: &str = "conformance_other";
const LONG: Duration = Duration::from_secs(10);

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn timeout_failure() -> StoredFailure {
    StoredFailure::timeout()
}

fn message(s: &async_endpoint::backend::Snapshot) -> Option<&str> {
    s.failure.as_ref().and_then(|f| f.message.as_deref())
}

fn request(task: &'static str, deadline_in_ms: i64, ttl: Duration) -> NewRequest {
    let created = now();
    NewRequest::new(
        RequestId::random(),
        task,
        r#"{"n":1}"#,
        created,
        (created as i64 + deadline_in_ms) as u64,
        ttl,
    )
}

async fn create<B: Backend>(b: &B, deadline_in_ms: i64) -> NewRequest {
    let r = request(TASK, deadline_in_ms, Duration::from_secs(300));
    b.create(r.clone()).await.expect("create");
    r
}

async fn fetch_one<B: Backend>(b: &B, id: RequestId) -> Job {
    for _ in 0..20 {
        let jobs = b
            .fetch(&[TASK], 100, Duration::from_millis(500))
            .await
            .expect("fetch");
        if let Some(job) = jobs.into_iter().find(|j| j.id == id) {
            return job;
        }
    }
    panic!("job {id} was never delivered");
}

async fn run<B: Backend>(b: &B, job: &Job) -> (String, u32) {
    match b.begin(job, now()).await.expect("begin") {
        Begin::Run {
            params, attempt, ..
        } => (params, attempt),
        other => panic!("expected Run, got {other:?}"),
    }
}

async fn status<B: Backend>(b: &B, id: RequestId) -> Status {
    b.poll(id, now())
        .await
        .expect("poll")
        .expect("record exists")
        .status
}

pub async fn create_then_poll_is_queued<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let s = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s.status, Status::Queued);
    assert_eq!(s.task, TASK);
    assert_eq!(s.attempt, 0);
    assert_eq!(s.progress, None);
    assert_eq!(s.output, None);
    assert_eq!(s.failure, None);
    assert_eq!(s.deadline_ms, r.deadline_ms);
}

pub async fn unknown_id_polls_none<B: Backend + 'static>(b: Arc<B>) {
    let got = b.poll(RequestId::random(), now()).await.unwrap();
    assert_eq!(got, None);
}

pub async fn full_lifecycle<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    assert_eq!(job.task, TASK);
    assert!(job.deliveries >= 1);
    let (params, attempt) = run(&*b, &job).await;
    assert_eq!(params, r.params);
    assert_eq!(attempt, 1);
    assert_eq!(status(&*b, r.id).await, Status::Running);
    let p = Progress::new(2, Some(4), "half way");
    b.update(r.id, Update::Progress(p.clone())).await.unwrap();
    let s = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s.progress, Some(p));
    let stands = b
        .finish(&job, Outcome::Done(r#"{"ok":true}"#.into()), now())
        .await
        .unwrap();
    assert_eq!(stands, Status::Done);
    let s = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s.status, Status::Done);
    assert_eq!(s.output.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(s.failure, None);
}

pub async fn first_terminal_state_wins<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    let first = b
        .finish(&job, Outcome::Failed(StoredFailure::task("first")), now())
        .await
        .unwrap();
    assert_eq!(first, Status::Failed);
    let second = b
        .finish(&job, Outcome::Done("1".into()), now())
        .await
        .unwrap();
    assert_eq!(
        second,
        Status::Failed,
        "a later outcome must not overwrite the first"
    );
    let s = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s.status, Status::Failed);
    assert_eq!(message(&s), Some("first"));
    assert_eq!(s.output, None);
}

pub async fn concurrent_finishes_agree<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    let mut handles = Vec::new();
    for i in 0..20 {
        let b = b.clone();
        let job = job.clone();
        handles.push(tokio::spawn(async move {
            let outcome = if i % 2 == 0 {
                Outcome::Done(format!("{i}"))
            } else {
                Outcome::Failed(StoredFailure::task(format!("f{i}")))
            };
            b.finish(&job, outcome, now()).await.unwrap()
        }));
    }
    let mut stands = Vec::new();
    for h in handles {
        stands.push(h.await.unwrap());
    }
    assert!(
        stands.windows(2).all(|w| w[0] == w[1]),
        "every finisher sees one outcome: {stands:?}"
    );
    let s = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s.status, stands[0]);
    match s.status {
        Status::Done => assert!(s.output.is_some() && s.failure.is_none()),
        Status::Failed => assert!(s.failure.is_some() && s.output.is_none()),
        other => panic!("not terminal: {other:?}"),
    }
}

pub async fn delivery_after_terminal_is_skipped<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    b.finish(&job, Outcome::Done("1".into()), now())
        .await
        .unwrap();
    let again = b.begin(&job, now()).await.unwrap();
    assert_eq!(
        again,
        Begin::Skip,
        "a duplicate or late delivery must not run"
    );
    assert_eq!(status(&*b, r.id).await, Status::Done);
}

pub async fn poll_past_deadline_times_out<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 1_000).await;
    let later = r.deadline_ms + 1;
    let s = b.poll(r.id, later).await.unwrap().unwrap();
    assert_eq!(s.status, Status::Failed);
    assert_eq!(s.failure, Some(timeout_failure()));
    // The timeout is stored: a worker finishing late changes nothing.
    let job = fetch_one(&*b, r.id).await;
    assert_eq!(b.begin(&job, now()).await.unwrap(), Begin::Skip);
    let stands = b
        .finish(&job, Outcome::Done("1".into()), now())
        .await
        .unwrap();
    assert_eq!(stands, Status::Failed);
    assert_eq!(status(&*b, r.id).await, Status::Failed);
}

pub async fn begin_past_deadline_skips_and_times_out<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, -1).await;
    let job = fetch_one(&*b, r.id).await;
    let begin = b.begin(&job, now()).await.unwrap();
    assert_eq!(
        begin,
        Begin::Skip,
        "a job picked up after its deadline must not run"
    );
    let s = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s.status, Status::Failed);
    assert_eq!(s.failure, Some(timeout_failure()));
    assert_eq!(s.attempt, 0);
}

pub async fn finish_past_deadline_is_timeout<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    let stands = b
        .finish(&job, Outcome::Done("1".into()), r.deadline_ms + 1)
        .await
        .unwrap();
    assert_eq!(stands, Status::Failed);
    let s = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(
        s.failure.as_ref().map(|f| f.kind),
        Some(FailureKind::Timeout)
    );
    assert_eq!(s.failure, Some(timeout_failure()));
}

pub async fn progress_after_terminal_is_ignored<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    let p = Progress::new(1, Some(2), "one");
    b.update(r.id, Update::Progress(p.clone())).await.unwrap();
    b.finish(&job, Outcome::Done("1".into()), now())
        .await
        .unwrap();
    b.update(r.id, Update::Progress(Progress::new(2, Some(2), "late")))
        .await
        .unwrap();
    b.update(r.id, Update::Retrying).await.unwrap();
    let s = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s.status, Status::Done);
    assert_eq!(s.progress, Some(p));
}

pub async fn retrying_then_next_attempt<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    assert_eq!(run(&*b, &job).await.1, 1);
    b.update(r.id, Update::Retrying).await.unwrap();
    assert_eq!(status(&*b, r.id).await, Status::Retrying);
    assert_eq!(run(&*b, &job).await.1, 2);
    assert_eq!(status(&*b, r.id).await, Status::Running);
}

/// A watcher registers its watch, then polls (as waiting polls and event streams do): from then
/// on every write wakes it. (Writes to a request nobody watches may go unannounced, see
/// [`Backend::watch`].)
pub async fn watch_wakes_on_every_change<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let mut watch = b.watch(r.id);
    // A watcher reads after registering (see `Backend::watch`): a backend may announce only
    // writes to requests read so.
    assert_eq!(status(&*b, r.id).await, Status::Queued);
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    tokio::time::timeout(LONG, watch.changed())
        .await
        .expect("woken by begin");
    b.update(r.id, Update::Progress(Progress::new(1, None, "p")))
        .await
        .unwrap();
    tokio::time::timeout(LONG, watch.changed())
        .await
        .expect("woken by progress");
    b.finish(&job, Outcome::Done("1".into()), now())
        .await
        .unwrap();
    tokio::time::timeout(LONG, watch.changed())
        .await
        .expect("woken by finish");
    // A networked backend may wake every watcher once more (its listener wakes everyone when it
    // starts listening, and that may come late on a busy machine): let pending wakes pass.
    for _ in 0..5 {
        if tokio::time::timeout(Duration::from_millis(300), watch.changed())
            .await
            .is_err()
        {
            break;
        }
    }
    // Another request's change does not wake this watch.
    let other = create(&*b, 60_000).await;
    let other_job = fetch_one(&*b, other.id).await;
    run(&*b, &other_job).await;
    let woken = tokio::time::timeout(Duration::from_millis(300), watch.changed()).await;
    assert!(woken.is_err(), "woken by another request's change");
}

/// What an event stream relies on: watches of many requests at once (one stream follows them all),
/// each woken by its own request's finish, and a poll after the wake sees it.
pub async fn many_watches_each_wake_on_their_own_finish<B: Backend + 'static>(b: Arc<B>) {
    let mut followed = Vec::new();
    for _ in 0..10 {
        let r = create(&*b, 60_000).await;
        followed.push((r.id, b.watch(r.id)));
        // Read after watching, as an event stream does (see `Backend::watch`).
        assert_eq!(status(&*b, r.id).await, Status::Queued);
    }
    // Every job, delivered once each (a fetch may bring several).
    let mut jobs = Vec::new();
    for _ in 0..20 {
        if jobs.len() == followed.len() {
            break;
        }
        let fetched = b
            .fetch(&[TASK], 100, Duration::from_millis(500))
            .await
            .expect("fetch");
        jobs.extend(
            fetched
                .into_iter()
                .filter(|j| followed.iter().any(|(id, _)| *id == j.id)),
        );
    }
    assert_eq!(jobs.len(), followed.len(), "every job delivered");
    for (id, watch) in &mut followed {
        let job = jobs.iter().find(|j| j.id == *id).unwrap().clone();
        run(&*b, &job).await;
        b.finish(&job, Outcome::Done("1".into()), now())
            .await
            .unwrap();
        // Woken by begin or finish; after as many wakes as it takes, the poll sees `done`.
        for _ in 0..3 {
            tokio::time::timeout(LONG, watch.changed())
                .await
                .expect("woken by its request's changes");
            if status(&*b, *id).await == Status::Done {
                break;
            }
        }
        assert_eq!(status(&*b, *id).await, Status::Done);
    }
}

pub async fn fetch_honours_max_and_tasks<B: Backend + 'static>(b: Arc<B>) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create(&*b, 60_000).await.id);
    }
    let other = request(OTHER_TASK, 60_000, Duration::from_secs(60));
    b.create(other.clone()).await.unwrap();
    let first = b.fetch(&[TASK], 2, LONG).await.unwrap();
    assert!(!first.is_empty() && first.len() <= 2, "got {}", first.len());
    let mut got: Vec<RequestId> = first.iter().map(|j| j.id).collect();
    while got.len() < 3 {
        let more = b.fetch(&[TASK], 2, LONG).await.unwrap();
        assert!(more.len() <= 2);
        got.extend(more.iter().map(|j| j.id));
    }
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "each job of the task delivered once");
    assert!(
        b.fetch(&[TASK], 10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    let others = b.fetch(&[OTHER_TASK], 10, LONG).await.unwrap();
    assert_eq!(
        others.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![other.id]
    );
}

/// `queue_depth` counts the jobs of a task not yet taken by a worker (a backend that cannot tell
/// answers `None` throughout).
pub async fn queue_depth_counts_the_jobs_waiting<B: Backend + 'static>(b: Arc<B>) {
    let Some(empty) = b.queue_depth(TASK).await.unwrap() else {
        assert_eq!(b.queue_depth(OTHER_TASK).await.unwrap(), None);
        return;
    };
    assert_eq!(empty, 0, "nothing enqueued yet");
    create(&*b, 60_000).await;
    create(&*b, 60_000).await;
    b.create(request(OTHER_TASK, 60_000, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(b.queue_depth(TASK).await.unwrap(), Some(2));
    assert_eq!(b.queue_depth(OTHER_TASK).await.unwrap(), Some(1));
    let taken = b.fetch(&[TASK], 1, LONG).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        b.queue_depth(TASK).await.unwrap(),
        Some(1),
        "a taken job no longer waits"
    );
    b.release(&taken[0]).await.unwrap();
    assert_eq!(
        b.queue_depth(TASK).await.unwrap(),
        Some(2),
        "a job handed back waits again"
    );
}

pub async fn fetch_blocks_until_a_job_arrives<B: Backend + 'static>(b: Arc<B>) {
    // Make sure the queue exists and is empty.
    assert!(
        b.fetch(&[TASK], 10, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
    let fetcher = {
        let b = b.clone();
        tokio::spawn(async move { b.fetch(&[TASK], 10, LONG).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = create(&*b, 60_000).await;
    let jobs = fetcher.await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![r.id]);
}

pub async fn released_job_is_delivered_again<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    b.release(&job).await.unwrap();
    let again = fetch_one(&*b, r.id).await;
    assert_eq!(again.id, r.id);
    // A re-delivered running job may run again (at-least-once); the attempt count goes on.
    assert_eq!(run(&*b, &again).await.1, 2);
}

pub async fn records_expire_after_ttl<B: Backend + 'static>(b: Arc<B>) {
    let r = request(TASK, 500, Duration::from_secs(1));
    b.create(r.clone()).await.unwrap();
    assert!(b.poll(r.id, now()).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(b.poll(r.id, now()).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Races: the first terminal state wins and every observer agrees.

/// The same job delivered twice (a hand-back and a second delivery while the first still runs,
/// as when a worker is presumed dead): both runs may start, both finish at once with different
/// outcomes, and exactly one outcome stands for everybody.
pub async fn duplicate_delivery_first_outcome_wins<B: Backend + 'static>(b: Arc<B>) {
    for round in 0..5 {
        let r = create(&*b, 60_000).await;
        let first = fetch_one(&*b, r.id).await;
        run(&*b, &first).await;
        b.release(&first).await.unwrap();
        let second = fetch_one(&*b, r.id).await;
        assert_eq!(second.id, r.id);
        // The second delivery of a running job may run (at-least-once).
        run(&*b, &second).await;
        let finishers: Vec<_> = [(first, "first"), (second, "second")]
            .into_iter()
            .map(|(job, who)| {
                let b = b.clone();
                tokio::spawn(async move {
                    let outcome = if round % 2 == 0 {
                        Outcome::Done(format!("\"{who}\""))
                    } else {
                        Outcome::Failed(StoredFailure::task(who))
                    };
                    b.finish(&job, outcome, now()).await.unwrap()
                })
            })
            .collect();
        let mut stands = Vec::new();
        for f in finishers {
            stands.push(f.await.unwrap());
        }
        assert_eq!(
            stands[0], stands[1],
            "both finishers see the outcome that stands"
        );
        let s = b.poll(r.id, now()).await.unwrap().unwrap();
        assert_eq!(s.status, stands[0]);
        match s.status {
            Status::Done => {
                let out = s.output.as_deref().unwrap();
                assert!(out == "\"first\"" || out == "\"second\"", "{out}");
                assert_eq!(s.failure, None);
            }
            Status::Failed => {
                let m = message(&s).unwrap();
                assert!(m == "first" || m == "second", "{m}");
                assert_eq!(s.output, None);
            }
            other => panic!("not terminal: {other:?}"),
        }
        // A third delivery of the finished job does not run.
        let mut again = fetch_or_clone(&*b, r.id).await;
        again.deliveries = 3;
        assert_eq!(b.begin(&again, now()).await.unwrap(), Begin::Skip);
        assert_eq!(b.poll(r.id, now()).await.unwrap().unwrap(), s);
    }
}

/// A job delivered again if the backend still has it queued, else a clone of the delivery.
async fn fetch_or_clone<B: Backend>(b: &B, id: RequestId) -> Job {
    let jobs = b
        .fetch(&[TASK], 100, Duration::from_millis(100))
        .await
        .unwrap();
    jobs.into_iter()
        .find(|j| j.id == id)
        .unwrap_or(Job::new(id, TASK, "", 1))
}

/// The deadline is the last moment a request may still finish: a poll exactly at it does not
/// time the request out, and an outcome written exactly at it stands.
pub async fn finish_exactly_at_the_deadline_stands<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    let at = r.deadline_ms;
    let s = b.poll(r.id, at).await.unwrap().unwrap();
    assert_eq!(
        s.status,
        Status::Running,
        "a poll exactly at the deadline is not past it"
    );
    let stands = b.finish(&job, Outcome::Done("7".into()), at).await.unwrap();
    assert_eq!(stands, Status::Done);
    // Later polls, past the deadline, see the outcome that was written in time.
    let s = b.poll(r.id, at + 1).await.unwrap().unwrap();
    assert_eq!(s.status, Status::Done);
    assert_eq!(s.output.as_deref(), Some("7"));
}

/// A worker finishing exactly at the deadline while a poll arrives one millisecond after it:
/// either may win, but the finisher, the racing poll and every later poll agree.
pub async fn finish_racing_a_deadline_poll_agree<B: Backend + 'static>(b: Arc<B>) {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = create(&*b, 60_000).await;
        let job = fetch_one(&*b, r.id).await;
        run(&*b, &job).await;
        let finisher = {
            let (b, job) = (b.clone(), job.clone());
            tokio::spawn(async move {
                b.finish(&job, Outcome::Done("1".into()), r.deadline_ms)
                    .await
                    .unwrap()
            })
        };
        let poller = {
            let b = b.clone();
            tokio::spawn(async move { b.poll(r.id, r.deadline_ms + 1).await.unwrap().unwrap() })
        };
        let stands = finisher.await.unwrap();
        let polled = poller.await.unwrap();
        assert!(
            polled.status.is_terminal(),
            "past the deadline a poll sees a final state"
        );
        let last = b.poll(r.id, now()).await.unwrap().unwrap();
        assert_eq!(stands, polled.status, "finisher and racing poll agree");
        assert_eq!(last, polled, "later polls see what the racing poll saw");
        match last.status {
            Status::Done => assert_eq!(last.output.as_deref(), Some("1")),
            Status::Failed => assert_eq!(last.failure, Some(timeout_failure())),
            other => panic!("not terminal: {other:?}"),
        }
        seen.insert(last.status);
    }
    eprintln!("finish vs deadline poll: outcomes seen {seen:?}");
}

/// Progress written while and after the request finishes: the outcome is untouched and, once
/// it stands, nothing about the record changes any more.
pub async fn progress_racing_finish_changes_nothing_after<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    let writers: Vec<_> = (0..20u64)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                b.update(
                    r.id,
                    Update::Progress(Progress::new(i, Some(20), format!("step {i}"))),
                )
                .await
                .unwrap();
            })
        })
        .collect();
    let stands = b
        .finish(&job, Outcome::Done("\"ok\"".into()), now())
        .await
        .unwrap();
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(stands, Status::Done);
    let after = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(after.status, Status::Done);
    assert_eq!(after.output.as_deref(), Some("\"ok\""));
    if let Some(p) = &after.progress {
        assert!(p.message.starts_with("step "), "{p:?}");
    }
    for i in 0..10u64 {
        b.update(r.id, Update::Progress(Progress::new(100 + i, None, "late")))
            .await
            .unwrap();
        b.update(r.id, Update::Retrying).await.unwrap();
    }
    assert_eq!(
        b.poll(r.id, now()).await.unwrap().unwrap(),
        after,
        "nothing changes once terminal"
    );
}

/// 50 concurrent pollers while the request finishes: each sees the request under way until it
/// sees it final, never under way again after, and all see the same final snapshot.
pub async fn polls_racing_finish_agree<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    let seen_under_way = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pollers: Vec<_> = (0..50)
        .map(|_| {
            let b = b.clone();
            let seen_under_way = seen_under_way.clone();
            tokio::spawn(async move {
                let mut under_way = 0u32;
                let give_up = std::time::Instant::now() + Duration::from_secs(60);
                loop {
                    let s = b.poll(r.id, now()).await.unwrap().unwrap();
                    if s.status.is_terminal() {
                        // Once final, it stays final.
                        for _ in 0..3 {
                            let again = b.poll(r.id, now()).await.unwrap();
                            assert_eq!(again.as_ref(), Some(&s));
                        }
                        return (s, under_way);
                    }
                    if under_way == 0 {
                        seen_under_way.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    under_way += 1;
                    assert!(
                        std::time::Instant::now() < give_up,
                        "never saw the request finish"
                    );
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // Finish only once every poller has seen the request under way, so the polls really race
    // the finish (a fixed pause could pass before a starved poller ran at all).
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    while seen_under_way.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        assert!(
            std::time::Instant::now() < give_up,
            "the pollers never saw the request under way"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stands = b
        .finish(&job, Outcome::Done("\"final\"".into()), now())
        .await
        .unwrap();
    assert_eq!(stands, Status::Done);
    let mut finals = Vec::new();
    for p in pollers {
        finals.push(p.await.unwrap());
    }
    assert!(
        finals.iter().all(|(s, _)| s == &finals[0].0),
        "every poll agrees"
    );
    assert_eq!(finals[0].0.output.as_deref(), Some("\"final\""));
    assert!(
        finals.iter().all(|(_, n)| *n > 0),
        "every poller saw the request under way before it saw it final"
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation: an unfinished request becomes `failed` with kind `cancelled` at once, and the
// first terminal state wins against finishes, deadlines and redeliveries.

fn is_cancelled(s: &async_endpoint::backend::Snapshot) -> bool {
    s.status == Status::Failed && s.failure == Some(StoredFailure::cancelled())
}

pub async fn cancel_queued_fails_it_and_its_job_never_runs<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let s = b.cancel(r.id, now()).await.unwrap().expect("known");
    assert!(is_cancelled(&s), "{s:?}");
    assert_eq!(s.output, None);
    assert_eq!(b.poll(r.id, now()).await.unwrap().unwrap(), s);
    // Its job is still delivered (or not), but never runs.
    let job = fetch_or_clone(&*b, r.id).await;
    assert_eq!(b.begin(&job, now()).await.unwrap(), Begin::Skip);
    assert_eq!(b.poll(r.id, now()).await.unwrap().unwrap(), s);
}

pub async fn cancel_running_stands_and_a_later_finish_is_ignored<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    b.update(r.id, Update::Progress(Progress::new(1, Some(2), "half")))
        .await
        .unwrap();
    let s = b.cancel(r.id, now()).await.unwrap().unwrap();
    assert!(is_cancelled(&s), "{s:?}");
    assert_eq!(s.attempt, 1);
    let stands = b
        .finish(&job, Outcome::Done("1".into()), now())
        .await
        .unwrap();
    assert_eq!(stands, Status::Failed, "the cancellation stands");
    b.update(r.id, Update::Progress(Progress::new(2, Some(2), "late")))
        .await
        .unwrap();
    let polled = b.poll(r.id, now()).await.unwrap().unwrap();
    assert!(is_cancelled(&polled), "{polled:?}");
    assert_eq!(polled.output, None);
    assert_eq!(polled, s, "nothing changes after the cancellation");
    assert_eq!(b.begin(&job, now()).await.unwrap(), Begin::Skip);
}

pub async fn cancel_retrying_stands<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    b.update(r.id, Update::Retrying).await.unwrap();
    assert_eq!(status(&*b, r.id).await, Status::Retrying);
    let s = b.cancel(r.id, now()).await.unwrap().unwrap();
    assert!(is_cancelled(&s), "{s:?}");
    assert_eq!(
        b.begin(&job, now()).await.unwrap(),
        Begin::Skip,
        "no next attempt"
    );
    assert!(is_cancelled(&b.poll(r.id, now()).await.unwrap().unwrap()));
}

pub async fn cancel_of_a_finished_request_changes_nothing<B: Backend + 'static>(b: Arc<B>) {
    // Done: the output is kept.
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    b.finish(&job, Outcome::Done("42".into()), now())
        .await
        .unwrap();
    let before = b.poll(r.id, now()).await.unwrap().unwrap();
    let s = b.cancel(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s, before);
    assert_eq!(s.output.as_deref(), Some("42"));
    assert_eq!(b.poll(r.id, now()).await.unwrap().unwrap(), before);
    // Failed by the task: its message is kept.
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    b.finish(&job, Outcome::Failed(StoredFailure::task("no")), now())
        .await
        .unwrap();
    let s = b.cancel(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s.failure, Some(StoredFailure::task("no")));
    assert_eq!(b.poll(r.id, now()).await.unwrap().unwrap(), s);
}

pub async fn cancel_twice_gives_the_same_answer<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let first = b.cancel(r.id, now()).await.unwrap().unwrap();
    let second = b.cancel(r.id, now()).await.unwrap().unwrap();
    assert!(is_cancelled(&first));
    assert_eq!(first, second);
}

pub async fn cancel_of_an_unknown_request_is_none<B: Backend + 'static>(b: Arc<B>) {
    assert_eq!(b.cancel(RequestId::random(), now()).await.unwrap(), None);
}

pub async fn cancel_past_the_deadline_is_a_timeout<B: Backend + 'static>(b: Arc<B>) {
    for running in [false, true] {
        let r = create(&*b, 1_000).await;
        if running {
            let job = fetch_one(&*b, r.id).await;
            run(&*b, &job).await;
        }
        let s = b.cancel(r.id, r.deadline_ms + 1).await.unwrap().unwrap();
        assert_eq!(s.status, Status::Failed);
        assert_eq!(s.failure, Some(timeout_failure()), "running: {running}");
        assert_eq!(b.poll(r.id, now()).await.unwrap().unwrap(), s);
        // Exactly at the deadline it is still in time: cancelled.
        let r = create(&*b, 1_000).await;
        let s = b.cancel(r.id, r.deadline_ms).await.unwrap().unwrap();
        assert!(is_cancelled(&s), "{s:?}");
    }
}

pub async fn cancel_wakes_watchers<B: Backend + 'static>(b: Arc<B>) {
    let r = create(&*b, 60_000).await;
    let job = fetch_one(&*b, r.id).await;
    run(&*b, &job).await;
    let mut watch = b.watch(r.id);
    // Let any notification of the writes above arrive first, then look for the cancel's own.
    assert!(!is_cancelled(&b.poll(r.id, now()).await.unwrap().unwrap()));
    b.cancel(r.id, now()).await.unwrap();
    let until = tokio::time::Instant::now() + LONG;
    loop {
        tokio::time::timeout_at(until, watch.changed())
            .await
            .expect("a watcher is woken by the cancellation");
        if is_cancelled(&b.poll(r.id, now()).await.unwrap().unwrap()) {
            break;
        }
    }
}

/// A cancel and a finish at once, many times: exactly one of them stands, and the canceller, the
/// finisher and every later read agree on which.
pub async fn cancel_racing_finish_agree<B: Backend + 'static>(b: Arc<B>) {
    let mut seen = std::collections::HashSet::new();
    for round in 0..30 {
        let r = create(&*b, 60_000).await;
        let job = fetch_one(&*b, r.id).await;
        run(&*b, &job).await;
        let finisher = {
            let (b, job) = (b.clone(), job.clone());
            tokio::spawn(async move {
                let outcome = if round % 2 == 0 {
                    Outcome::Done("\"out\"".into())
                } else {
                    Outcome::Failed(StoredFailure::task("own"))
                };
                b.finish(&job, outcome, now()).await.unwrap()
            })
        };
        let canceller = {
            let b = b.clone();
            tokio::spawn(async move { b.cancel(r.id, now()).await.unwrap().unwrap() })
        };
        let stands = finisher.await.unwrap();
        let cancelled = canceller.await.unwrap();
        assert!(cancelled.status.is_terminal());
        assert_eq!(stands, cancelled.status, "finisher and canceller agree");
        let last = b.poll(r.id, now()).await.unwrap().unwrap();
        assert_eq!(last, cancelled, "later reads see what the canceller saw");
        match (&last.status, &last.failure) {
            (Status::Done, None) => assert_eq!(last.output.as_deref(), Some("\"out\"")),
            (Status::Failed, Some(f)) if *f == StoredFailure::cancelled() => {
                assert_eq!(last.output, None);
            }
            (Status::Failed, Some(f)) => assert_eq!(*f, StoredFailure::task("own")),
            other => panic!("unexpected {other:?}"),
        }
        seen.insert(is_cancelled(&last));
    }
    eprintln!("cancel vs finish: cancelled in {seen:?}");
}

/// A cancel exactly at the deadline and a poll just past it, at once: either may win (cancelled
/// or timeout), and both, and every later read, agree.
pub async fn cancel_racing_a_deadline_poll_agree<B: Backend + 'static>(b: Arc<B>) {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = create(&*b, 60_000).await;
        let job = fetch_one(&*b, r.id).await;
        run(&*b, &job).await;
        let canceller = {
            let b = b.clone();
            tokio::spawn(async move { b.cancel(r.id, r.deadline_ms).await.unwrap().unwrap() })
        };
        let poller = {
            let b = b.clone();
            tokio::spawn(async move { b.poll(r.id, r.deadline_ms + 1).await.unwrap().unwrap() })
        };
        let cancelled = canceller.await.unwrap();
        let polled = poller.await.unwrap();
        assert_eq!(cancelled, polled, "canceller and poll agree");
        assert_eq!(polled.status, Status::Failed);
        assert!(
            polled.failure == Some(timeout_failure()) || is_cancelled(&polled),
            "{polled:?}"
        );
        assert_eq!(b.poll(r.id, now()).await.unwrap().unwrap(), polled);
        let stands = b
            .finish(&job, Outcome::Done("1".into()), r.deadline_ms)
            .await
            .unwrap();
        assert_eq!(stands, Status::Failed, "a late finish changes nothing");
        seen.insert(is_cancelled(&polled));
    }
    eprintln!("cancel vs deadline: cancelled in {seen:?}");
}

/// A worker dies while running a job (its delivery is handed out again, as a queue does once it
/// presumes the worker dead), and a cancel arrives while another worker begins the redelivered
/// job: whichever comes first, the request ends cancelled, and a redelivery that began anyway
/// cannot overwrite it. A delivery begun after the cancel is skipped.
pub async fn cancel_racing_a_redelivery_agree<B: Backend + 'static>(b: Arc<B>) {
    for _ in 0..10 {
        let r = create(&*b, 60_000).await;
        let first = fetch_one(&*b, r.id).await;
        run(&*b, &first).await;
        // The first worker "dies": its delivery goes back to the queue.
        b.release(&first).await.unwrap();
        let second = fetch_one(&*b, r.id).await;
        let beginner = {
            let (b, second) = (b.clone(), second.clone());
            tokio::spawn(async move { b.begin(&second, now()).await.unwrap() })
        };
        let canceller = {
            let b = b.clone();
            tokio::spawn(async move { b.cancel(r.id, now()).await.unwrap().unwrap() })
        };
        let began = beginner.await.unwrap();
        let cancelled = canceller.await.unwrap();
        assert!(is_cancelled(&cancelled), "{cancelled:?}");
        if let Begin::Run { .. } = began {
            // It began before the cancel: its outcome is ignored.
            let stands = b
                .finish(&second, Outcome::Done("1".into()), now())
                .await
                .unwrap();
            assert_eq!(stands, Status::Failed);
        }
        assert!(is_cancelled(&b.poll(r.id, now()).await.unwrap().unwrap()));
        // Any further delivery is skipped.
        let mut again = fetch_or_clone(&*b, r.id).await;
        again.deliveries = 3;
        assert_eq!(b.begin(&again, now()).await.unwrap(), Begin::Skip);
        assert!(is_cancelled(&b.poll(r.id, now()).await.unwrap().unwrap()));
    }
}

// Pending limits: a start over a limit stores and enqueues nothing; terminal requests and those
// past their deadline stop counting.

/// A request of `task` by `owner` carrying the limits, created at `created_ms`.
fn limited(
    task: &'static str,
    owner: Option<&str>,
    per_owner: Option<u32>,
    per_task: Option<u32>,
    created_ms: u64,
    deadline_in_ms: u64,
) -> NewRequest {
    let mut r = NewRequest::new(
        RequestId::random(),
        task,
        r#"{"n":1}"#,
        created_ms,
        created_ms + deadline_in_ms,
        Duration::from_secs(300),
    );
    r.owner = owner.map(str::to_owned);
    let mut limits = PendingLimits::default();
    limits.per_owner = per_owner;
    limits.per_task = per_task;
    r.limits = limits;
    r
}

/// Creates `r` and returns what the backend did.
async fn try_create<B: Backend>(b: &B, r: &NewRequest) -> Created {
    b.create(r.clone()).await.expect("create")
}

/// The ids of every job of `tasks` waiting in the queue (drains it).
async fn queued_ids<B: Backend>(b: &B, tasks: &[&'static str]) -> Vec<RequestId> {
    let mut ids = Vec::new();
    loop {
        let jobs = b
            .fetch(tasks, 100, Duration::from_millis(200))
            .await
            .expect("fetch");
        if jobs.is_empty() {
            ids.sort();
            return ids;
        }
        ids.extend(jobs.into_iter().map(|j| j.id));
    }
}

pub async fn owner_limit_refuses_and_stores_nothing<B: Backend + 'static>(b: Arc<B>) {
    let t = now();
    let alice = |task| limited(task, Some("alice"), Some(2), None, t, 60_000);
    let (a1, a2, a3) = (alice(TASK), alice(OTHER_TASK), alice(TASK));
    assert_eq!(try_create(&*b, &a1).await, Created::New);
    // The owner's limit counts every task of the owner.
    assert_eq!(try_create(&*b, &a2).await, Created::New);
    assert_eq!(try_create(&*b, &a3).await, Created::OverLimit(Limit::Owner));
    assert_eq!(b.poll(a3.id, t).await.unwrap(), None, "nothing stored");
    // Another owner is unaffected (an owner text that would be a bad key name, too).
    let bob = limited(TASK, Some("bob {x}:* \n"), Some(2), None, t, 60_000);
    assert_eq!(try_create(&*b, &bob).await, Created::New);
    let mut expected = vec![a1.id, a2.id, bob.id];
    expected.sort();
    assert_eq!(
        queued_ids(&*b, &[TASK, OTHER_TASK]).await,
        expected,
        "nothing enqueued for the refused start"
    );
}

pub async fn task_limit_refuses_and_stores_nothing<B: Backend + 'static>(b: Arc<B>) {
    let t = now();
    let start = |task, owner| limited(task, Some(owner), None, Some(2), t, 60_000);
    let (r1, r2, r3) = (start(TASK, "a"), start(TASK, "b"), start(TASK, "c"));
    assert_eq!(try_create(&*b, &r1).await, Created::New);
    assert_eq!(try_create(&*b, &r2).await, Created::New);
    assert_eq!(try_create(&*b, &r3).await, Created::OverLimit(Limit::Task));
    assert_eq!(b.poll(r3.id, t).await.unwrap(), None, "nothing stored");
    // Anonymous starts count against the task's limit too.
    let anonymous = limited(TASK, None, None, Some(2), t, 60_000);
    assert_eq!(
        try_create(&*b, &anonymous).await,
        Created::OverLimit(Limit::Task)
    );
    // Another task has a set of its own.
    let other = start(OTHER_TASK, "c");
    assert_eq!(try_create(&*b, &other).await, Created::New);
    let mut expected = vec![r1.id, r2.id];
    expected.sort();
    assert_eq!(queued_ids(&*b, &[TASK]).await, expected);
}

pub async fn no_owner_means_no_owner_limit<B: Backend + 'static>(b: Arc<B>) {
    let t = now();
    for _ in 0..3 {
        let r = limited(TASK, None, Some(1), None, t, 60_000);
        assert_eq!(try_create(&*b, &r).await, Created::New);
    }
    // Starts without the limit do not count towards it either.
    let unlimited = limited(TASK, Some("alice"), None, None, t, 60_000);
    assert_eq!(try_create(&*b, &unlimited).await, Created::New);
    let first = limited(TASK, Some("alice"), Some(1), None, t, 60_000);
    assert_eq!(try_create(&*b, &first).await, Created::New);
}

pub async fn finished_request_frees_its_slot<B: Backend + 'static>(b: Arc<B>) {
    let start = || limited(TASK, Some("alice"), Some(1), Some(1), now(), 60_000);
    let first = start();
    assert_eq!(try_create(&*b, &first).await, Created::New);
    assert!(matches!(
        try_create(&*b, &start()).await,
        Created::OverLimit(_)
    ));
    // Running still counts.
    let job = fetch_one(&*b, first.id).await;
    run(&*b, &job).await;
    assert!(matches!(
        try_create(&*b, &start()).await,
        Created::OverLimit(_)
    ));
    b.update(first.id, Update::Retrying).await.unwrap();
    assert!(matches!(
        try_create(&*b, &start()).await,
        Created::OverLimit(_)
    ));
    assert_eq!(
        b.finish(&job, Outcome::Done("1".into()), now())
            .await
            .unwrap(),
        Status::Done
    );
    let second = start();
    assert_eq!(try_create(&*b, &second).await, Created::New);
    // A failure frees it too.
    let job = fetch_one(&*b, second.id).await;
    run(&*b, &job).await;
    let failed = Outcome::Failed(StoredFailure::task("no"));
    assert_eq!(b.finish(&job, failed, now()).await.unwrap(), Status::Failed);
    assert_eq!(try_create(&*b, &start()).await, Created::New);
}

pub async fn timed_out_request_frees_its_slot<B: Backend + 'static>(b: Arc<B>) {
    let t = now();
    // Times are explicit: `late` is past the first requests' deadlines, but the later starts
    // are created at `t`, when those requests would still count had nothing freed them.
    let late = t + 10_000;
    let start = |owner| limited(TASK, Some(owner), Some(1), None, t, 5_000);
    // Timed out by a poll.
    let polled = start("alice");
    assert_eq!(try_create(&*b, &polled).await, Created::New);
    assert_eq!(
        try_create(&*b, &start("alice")).await,
        Created::OverLimit(Limit::Owner)
    );
    let s = b.poll(polled.id, late).await.unwrap().unwrap();
    assert_eq!(s.status, Status::Failed);
    assert_eq!(try_create(&*b, &start("alice")).await, Created::New);
    // Timed out by a worker's begin.
    let begun = start("bob");
    assert_eq!(try_create(&*b, &begun).await, Created::New);
    let job = fetch_one(&*b, begun.id).await;
    assert_eq!(b.begin(&job, late).await.unwrap(), Begin::Skip);
    assert_eq!(try_create(&*b, &start("bob")).await, Created::New);
    // Timed out by a finish past the deadline.
    let finished = start("carol");
    assert_eq!(try_create(&*b, &finished).await, Created::New);
    let job = fetch_one(&*b, finished.id).await;
    run(&*b, &job).await;
    let done = Outcome::Done("1".into());
    assert_eq!(b.finish(&job, done, late).await.unwrap(), Status::Failed);
    assert_eq!(try_create(&*b, &start("carol")).await, Created::New);
}

pub async fn request_past_its_deadline_stops_counting_untouched<B: Backend + 'static>(b: Arc<B>) {
    let t = now();
    let first = limited(TASK, Some("alice"), Some(1), Some(1), t, 5_000);
    assert_eq!(try_create(&*b, &first).await, Created::New);
    let deadline = first.deadline_ms;
    // At its deadline it is still pending (it times out only past it).
    let at = limited(TASK, Some("alice"), Some(1), None, deadline, 5_000);
    assert_eq!(try_create(&*b, &at).await, Created::OverLimit(Limit::Owner));
    let at = limited(TASK, Some("bob"), None, Some(1), deadline, 5_000);
    assert_eq!(try_create(&*b, &at).await, Created::OverLimit(Limit::Task));
    // Past it, nobody polled or ran it, and it no longer counts for either limit.
    let past = limited(TASK, Some("alice"), Some(1), Some(1), deadline + 1, 5_000);
    assert_eq!(try_create(&*b, &past).await, Created::New);
}

pub async fn concurrent_creates_at_one_free_slot_admit_one<B: Backend + 'static>(b: Arc<B>) {
    const LIMIT: u32 = 5;
    const RACERS: usize = 16;
    let t = now();
    for _ in 1..LIMIT {
        let r = limited(TASK, Some("alice"), Some(LIMIT), None, t, 60_000);
        assert_eq!(try_create(&*b, &r).await, Created::New);
    }
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let b = b.clone();
            let r = limited(TASK, Some("alice"), Some(LIMIT), None, t, 60_000);
            tokio::spawn(async move { b.create(r).await.expect("create") })
        })
        .collect();
    let mut admitted = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Created::New => admitted += 1,
            other => assert_eq!(other, Created::OverLimit(Limit::Owner)),
        }
    }
    assert_eq!(admitted, 1, "exactly one start takes the last slot");
    assert_eq!(queued_ids(&*b, &[TASK]).await.len(), LIMIT as usize);
}

// Where cancellation, idempotency keys and pending limits meet.

pub async fn cancelled_request_frees_its_slot<B: Backend + 'static>(b: Arc<B>) {
    let t = now();
    let owner = format!("owner-{}", RequestId::random());
    let start = || limited(TASK, Some(&owner), Some(1), Some(1), t, 60_000);
    let (first, second) = (start(), start());
    assert_eq!(try_create(&*b, &first).await, Created::New);
    assert_eq!(
        try_create(&*b, &second).await,
        Created::OverLimit(Limit::Owner)
    );
    let cancelled = b.cancel(first.id, now()).await.unwrap().unwrap();
    assert!(is_cancelled(&cancelled), "{cancelled:?}");
    // Its slots (the owner's and the task's) are free again.
    assert_eq!(try_create(&*b, &second).await, Created::New);
}

pub async fn repeat_with_a_key_is_not_refused_by_a_limit<B: Backend + 'static>(b: Arc<B>) {
    let t = now();
    let owner = format!("owner-{}", RequestId::random());
    let scoped = format!("{}{}", RequestId::random(), RequestId::random());
    let keyed = || {
        let mut r = limited(TASK, Some(&owner), Some(1), None, t, 60_000);
        r.idempotency = Some(async_endpoint::backend::IdempotencyKey::new(
            scoped.clone(),
            "params",
        ));
        r
    };
    let first = keyed();
    assert_eq!(try_create(&*b, &first).await, Created::New);
    // The owner is at its limit, yet a retry of the same start answers with the first request
    // (a client retrying after a lost answer must learn its id, not be told to come back later).
    assert_eq!(
        try_create(&*b, &keyed()).await,
        Created::Existing {
            id: first.id,
            created_ms: first.created_ms,
            same_params: true,
        }
    );
    // A different start of that owner is refused.
    let other = limited(TASK, Some(&owner), Some(1), None, t, 60_000);
    assert_eq!(
        try_create(&*b, &other).await,
        Created::OverLimit(Limit::Owner)
    );
}

/// A start's `traceparent` is handed back with its job on every attempt; without one, none.
pub async fn traceparent_travels_with_the_job<B: Backend + 'static>(b: Arc<B>) {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for expected in [Some(TRACEPARENT), None] {
        let mut request = request(TASK, 60_000, Duration::from_secs(300));
        request.traceparent = expected.map(str::to_owned);
        b.create(request.clone()).await.expect("create");
        let job = fetch_one(&*b, request.id).await;
        match b.begin(&job, now()).await.expect("begin") {
            Begin::Run { traceparent, .. } => assert_eq!(traceparent.as_deref(), expected),
            other => panic!("expected Run, got {other:?}"),
        }
        // A second attempt (after a retry) carries it too.
        b.update(request.id, Update::Retrying)
            .await
            .expect("retrying");
        match b.begin(&job, now()).await.expect("begin again") {
            Begin::Run { traceparent, .. } => assert_eq!(traceparent.as_deref(), expected),
            other => panic!("expected Run, got {other:?}"),
        }
    }
}
