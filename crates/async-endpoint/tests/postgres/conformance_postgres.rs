//! The backend conformance suite against the PostgreSQL backend: one private server shared by
//! the tests running at once, a fresh schema per test (skipped with a loud message when
//! PostgreSQL is not installed; failing under `CI=true`).

use crate::conformance;

use std::sync::Arc;
use std::time::Duration;

use async_endpoint::backend::{Backend, Begin, Job, NewRequest, Outcome, PostgresBackend};
use async_endpoint::{RequestId, Status};
use test_support::postgres::PostgresServer;

/// A backend that holds its server, so the server lives as long as the test.
type Served = conformance::Served<PostgresBackend, Arc<PostgresServer>>;

async fn served() -> Option<Served> {
    let server = crate::support::shared_server()?;
    let backend = PostgresBackend::builder(server.url())
        .schema(crate::support::fresh_schema("conf"))
        .claim_idle(Duration::from_secs(5))
        .pool_size(4)
        .build()
        .expect("valid settings");
    backend.migrate().await.expect("migrated");
    Some(Served {
        backend,
        guard: server,
    })
}

conformance::suite!(served());

/// A batch longer than one statement takes (256 jobs) is split into statements run in one
/// transaction, and answered in the jobs' order; a job repeated in a batch is begun twice, one
/// after the other, as two `begin` calls would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_one_statement_and_repeated_jobs() {
    let Some(served) = served().await else {
        return;
    };
    let b = &served.backend;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    };
    let mut requests = Vec::new();
    for n in 0..300 {
        let created = now();
        let r = NewRequest::new(
            RequestId::random(),
            "batch_task",
            format!("{{\"n\":{n}}}"),
            created,
            created + 60_000,
            Duration::from_secs(300),
        );
        b.create(r.clone()).await.expect("create");
        requests.push(r);
    }
    let mut jobs: Vec<Job> = Vec::new();
    for _ in 0..20 {
        if jobs.len() == requests.len() {
            break;
        }
        jobs.extend(
            b.fetch(&["batch_task"], 300, Duration::from_millis(500))
                .await
                .expect("fetch"),
        );
    }
    assert_eq!(jobs.len(), requests.len(), "every job delivered");
    // In the order the requests were made (not the order fetched), so answers must be put back.
    jobs.sort_by_key(|job| requests.iter().position(|r| r.id == job.id));
    let begun = b.begin_many(&jobs, now()).await.expect("begin_many");
    assert_eq!(begun.len(), jobs.len());
    for (r, begin) in requests.iter().zip(&begun) {
        match begin {
            Begin::Run {
                params, attempt, ..
            } => assert_eq!((params.as_str(), *attempt), (r.params.as_str(), 1)),
            other => panic!("expected Run for {}, got {other:?}", r.id),
        }
    }
    // The first job twice in one batch: two attempts begin, one after the other.
    let twice = [jobs[0].clone(), jobs[1].clone(), jobs[0].clone()];
    let again = b.begin_many(&twice, now()).await.expect("begin_many");
    let attempts: Vec<u32> = again
        .iter()
        .map(|begin| match begin {
            Begin::Run { attempt, .. } => *attempt,
            other => panic!("expected Run, got {other:?}"),
        })
        .collect();
    assert_eq!(attempts, vec![2, 2, 3]);
    let outcomes: Vec<(Job, Outcome)> = jobs
        .iter()
        .enumerate()
        .map(|(n, job)| (job.clone(), Outcome::Done(n.to_string())))
        .collect();
    let stands = b.finish_many(&outcomes, now()).await.expect("finish_many");
    assert!(stands.iter().all(|s| *s == Status::Done), "{stands:?}");
    for (n, r) in requests.iter().enumerate().step_by(37) {
        let s = b.poll(r.id, now()).await.expect("poll").expect("found");
        assert_eq!(s.output, Some(n.to_string()), "output of request {n}");
    }
    // One job's outcome twice in one call: written one after the other, the first stands.
    let r = one_request(b, "twice_task").await;
    let job = fetch_one(b, "twice_task").await;
    assert_eq!(job.id, r.id);
    b.begin(&job, now()).await.expect("begin");
    let twice = [
        (job.clone(), Outcome::Done("\"first\"".into())),
        (job.clone(), Outcome::Done("\"second\"".into())),
    ];
    let stands = b.finish_many(&twice, now()).await.expect("finish_many");
    assert_eq!(stands, vec![Status::Done, Status::Done]);
    let s = b.poll(r.id, now()).await.expect("poll").expect("found");
    assert_eq!(s.output.as_deref(), Some("\"first\""));
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// One request of `task`, due in a minute.
async fn one_request(b: &PostgresBackend, task: &'static str) -> NewRequest {
    let created = now_ms();
    let r = NewRequest::new(
        RequestId::random(),
        task,
        "{\"n\":1}".to_owned(),
        created,
        created + 60_000,
        Duration::from_secs(300),
    );
    b.create(r.clone()).await.expect("create");
    r
}

async fn fetch_one(b: &PostgresBackend, task: &'static str) -> Job {
    for _ in 0..20 {
        let mut jobs = b
            .fetch(&[task], 1, Duration::from_millis(500))
            .await
            .expect("fetch");
        if let Some(job) = jobs.pop() {
            return job;
        }
    }
    panic!("no job of {task} delivered");
}

/// A fetch begins its jobs in the same statement (the worker's begin is answered without a
/// round trip); a job handed back before it ran goes back as it was: queued, no attempt
/// counted, and its next delivery runs as attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_handed_back_before_it_ran_goes_back_as_it_was() {
    let Some(served) = served().await else {
        return;
    };
    let b = &served.backend;
    let r = one_request(b, "back_task").await;
    let first = fetch_one(b, "back_task").await;
    assert_eq!(first.id, r.id);
    b.release(&first).await.expect("release");
    let s = b.poll(r.id, now_ms()).await.expect("poll").expect("found");
    assert_eq!(
        (s.status, s.attempt),
        (Status::Queued, 0),
        "as before the fetch"
    );
    let second = fetch_one(b, "back_task").await;
    match b.begin(&second, now_ms()).await.expect("begin") {
        Begin::Run { attempt, .. } => assert_eq!(attempt, 1, "the hand-back counted no attempt"),
        other => panic!("expected Run, got {other:?}"),
    }
    let s = b.poll(r.id, now_ms()).await.expect("poll").expect("found");
    assert_eq!((s.status, s.attempt), (Status::Running, 1));
}

/// A cancel written by another process after a fetch began a job, and before its worker asked
/// for the begin, is heard through the listener: the job does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_another_process_before_the_begin_stops_the_job() {
    let Some(server) = crate::support::shared_server() else {
        return;
    };
    // A worker's process and another process, on one schema.
    let schema = crate::support::fresh_schema("conf");
    let backend = || {
        PostgresBackend::builder(server.url())
            .schema(schema.clone())
            .pool_size(2)
            .build()
            .expect("valid settings")
    };
    let (worker, other) = (&backend(), backend());
    worker.migrate().await.expect("migrated");
    // Once a watch in the worker's process has fired, its listener listens (its first listen
    // counts everything fetched before as changed; this test is about what comes after).
    let warm = one_request(worker, "warm_task").await;
    let mut warmed = worker.watch(warm.id);
    other.cancel(warm.id, now_ms()).await.expect("cancel");
    tokio::time::timeout(Duration::from_secs(30), warmed.changed())
        .await
        .expect("the worker's listener listens");
    let r = one_request(worker, "cancel_task").await;
    let job = fetch_one(worker, "cancel_task").await;
    assert_eq!(job.id, r.id);
    let mut watch = worker.watch(job.id);
    other.cancel(r.id, now_ms()).await.expect("cancel");
    tokio::time::timeout(Duration::from_secs(30), watch.changed())
        .await
        .expect("the cancel was announced to the worker's process");
    assert_eq!(
        worker.begin(&job, now_ms()).await.expect("begin"),
        Begin::Skip,
        "a cancelled request does not run"
    );
    let s = worker
        .poll(r.id, now_ms())
        .await
        .expect("poll")
        .expect("found");
    assert_eq!(s.status, Status::Failed);
}
