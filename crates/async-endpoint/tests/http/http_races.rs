//! Races over HTTP, against a real server on 127.0.0.1 (real TCP), on every backend: the memory
//! backend always, and the Redis backend (feature `redis`) on a private redis-server.
//!
//! * the same job delivered twice (a backend wrapper hands every job out twice, so two runs of
//!   one request race to finish);
//! * 50 concurrent polls, waiting and not, on one request while it finishes;
//! * jobs finishing right at their deadline;
//! * progress written after the request finished.
//!
//! In each: the first terminal state wins, every poll agrees with every other, an answer never
//! goes back from final to 202, and nothing answers 5xx. The backend-level versions of these
//! races are in the conformance suite (`tests/conformance`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_endpoint::backend::{
    Backend, Begin, Created, Job, MemoryBackend, NewRequest, Outcome, Snapshot, Update, Watch,
};
use async_endpoint::{
    AsyncEndpoint, AsyncEndpointBuilder, AsyncRequest, AsyncTask, Error, Failure, RequestId,
    Status, TaskContext,
};
use axum::extract::Query;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use test_support::http::Response as HttpResponse;
use tokio::sync::Notify;

// ------------------------------------------------------------------------------------------
// The task and the app

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Plan {
    /// Wait for `Racer::release` before finishing.
    hold: bool,
    sleep_ms: u64,
    /// Wait (bounded) until a second run of the same request has started.
    pair: bool,
    /// Keep writing progress from a detached task after returning.
    late_progress: bool,
}

#[derive(Serialize, Deserialize)]
struct Output {
    run: u32,
}

#[derive(Clone, Default)]
struct Racer {
    runs: Arc<AtomicU32>,
    per_request: Arc<Mutex<HashMap<RequestId, Vec<u32>>>>,
    paired: Arc<Notify>,
    release: Arc<Notify>,
    deadline: Option<Duration>,
}

impl AsyncTask for Racer {
    const NAME: &'static str = "racer";
    type Params = Plan;
    type Output = Output;

    async fn execute_task(&self, plan: Plan, ctx: TaskContext) -> Result<Output, Failure> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let started = {
            let mut m = self.per_request.lock().unwrap();
            let runs = m.entry(ctx.request_id()).or_default();
            runs.push(run);
            runs.len()
        };
        if plan.pair {
            if started >= 2 {
                self.paired.notify_waiters();
            } else {
                let _ = tokio::time::timeout(Duration::from_secs(20), async {
                    loop {
                        let notified = self.paired.notified();
                        if self.per_request.lock().unwrap()[&ctx.request_id()].len() >= 2 {
                            return;
                        }
                        notified.await;
                    }
                })
                .await;
            }
        }
        if plan.hold {
            self.release.notified().await;
        }
        tokio::time::sleep(Duration::from_millis(plan.sleep_ms)).await;
        if plan.late_progress {
            let ctx = Arc::new(ctx);
            tokio::spawn(async move {
                for i in 1..=20u64 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // `at == total` is a last step: never throttled, so every write is tried.
                    ctx.progress(i, Some(i), "late").await;
                }
            });
        }
        Ok(Output { run })
    }

    fn deadline(&self) -> Option<Duration> {
        self.deadline
    }
}

async fn racer(request: AsyncRequest<Racer>, Query(plan): Query<Plan>) -> Response {
    request
        .init(plan)
        .handle(
            |o| Json(json!({ "run": o.run })),
            |f| Json(json!({ "error": f.message() })),
        )
        .await
}

/// Delivers every job twice, as a queue does when it presumes a slow worker dead and hands the
/// job to another: the two runs race to finish.
struct Twice<B>(B);

impl<B: Backend> Backend for Twice<B> {
    async fn create(&self, request: NewRequest) -> Result<Created, Error> {
        self.0.create(request).await
    }
    async fn poll(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        self.0.poll(id, now_ms).await
    }
    fn watch(&self, id: RequestId) -> Watch {
        self.0.watch(id)
    }
    async fn fetch(
        &self,
        tasks: &[&'static str],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, Error> {
        let jobs = self.0.fetch(tasks, max.div_ceil(2).max(1), block).await?;
        Ok(jobs
            .into_iter()
            .flat_map(|job| {
                let mut again = job.clone();
                again.deliveries += 1;
                [job, again]
            })
            .collect())
    }
    async fn begin(&self, job: &Job, now_ms: u64) -> Result<Begin, Error> {
        self.0.begin(job, now_ms).await
    }
    async fn update(&self, id: RequestId, update: Update) -> Result<(), Error> {
        self.0.update(id, update).await
    }
    async fn finish(&self, job: &Job, outcome: Outcome, now_ms: u64) -> Result<Status, Error> {
        self.0.finish(job, outcome, now_ms).await
    }
    async fn release(&self, job: &Job) -> Result<(), Error> {
        self.0.release(job).await
    }
    async fn cancel(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        self.0.cancel(id, now_ms).await
    }
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Memory,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis,
}

struct Served {
    port: u16,
    endpoint: AsyncEndpoint,
    task: Racer,
    _redis: Option<test_support::redis::RedisServer>,
}

impl Drop for Served {
    fn drop(&mut self) {
        // Held tasks would otherwise keep the worker busy past the test.
        self.task.release.notify_waiters();
    }
}

/// The app on `which` backend, with every job delivered twice when `twice`. `None` when the
/// backend's server is not installed (the support code printed SKIPPED, or failed under CI).
async fn serve(which: Which, task: Racer, twice: bool) -> Option<Served> {
    let builder = AsyncEndpoint::builder()
        .secret(b"http-races-secret-http-races-secret!")
        .task(task.clone());
    let (builder, redis) = with_backend(builder, which, twice)?;
    let endpoint = builder.build().unwrap();
    let app = Router::new()
        .route("/racer", get(racer))
        .layer(endpoint.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Some(Served {
        port,
        endpoint,
        task,
        _redis: redis,
    })
}

fn with_backend(
    builder: AsyncEndpointBuilder,
    which: Which,
    twice: bool,
) -> Option<(
    AsyncEndpointBuilder,
    Option<test_support::redis::RedisServer>,
)> {
    match which {
        Which::Memory => {
            let b = MemoryBackend::new();
            Some((
                if twice {
                    builder.backend(Twice(b))
                } else {
                    builder.backend(b)
                },
                None,
            ))
        }
        #[cfg(feature = "redis")]
        Which::Redis => {
            let server = test_support::redis::start()?;
            let b = async_endpoint::backend::RedisBackend::builder(server.url())
                .build()
                .unwrap();
            Some((
                if twice {
                    builder.backend(Twice(b))
                } else {
                    builder.backend(b)
                },
                Some(server),
            ))
        }
        #[cfg(not(feature = "redis"))]
        Which::Redis => unreachable!("the Redis cases are compiled only with the redis feature"),
    }
}

// ------------------------------------------------------------------------------------------
// HTTP helpers (test-support's HTTP client)

async fn start(s: &Served, query: &str) -> (String, String) {
    let a = test_support::http::get(s.port, &format!("/racer?{query}"), &[])
        .await
        .unwrap();
    assert_eq!(a.status, 202, "start: {}", a.body);
    let j = a.json();
    (
        j["async_request_id"].as_str().unwrap().to_owned(),
        j["async_request_token"].as_str().unwrap().to_owned(),
    )
}

async fn poll(port: u16, id: &str, token: &str, wait: Option<u64>) -> HttpResponse {
    let wait = wait.map(|w| format!("wait={w}"));
    let mut headers = vec![("async-request-id", id), ("async-request-token", token)];
    if let Some(w) = &wait {
        headers.push(("prefer", w.as_str()));
    }
    test_support::http::get(port, "/racer", &headers)
        .await
        .unwrap()
}

/// Polls until a final answer, checking that every answer along the way is 202 or final (never
/// 5xx) and that the final one repeats. Returns (status, body) of the final answer.
async fn poll_to_final(port: u16, id: String, token: String, wait: Option<u64>) -> (u16, String) {
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let a = poll(port, &id, &token, wait).await;
        assert!(a.status < 500, "{}: {}", a.status, a.body);
        if a.status != 202 {
            assert!(
                a.status == 200 || a.status == 422,
                "{}: {}",
                a.status,
                a.body
            );
            // Final means final: the next answers are the same.
            for _ in 0..2 {
                let again = poll(port, &id, &token, None).await;
                assert_eq!(
                    (again.status, &again.body),
                    (a.status, &a.body),
                    "a final answer changed"
                );
            }
            return (a.status, a.body);
        }
        assert!(
            std::time::Instant::now() < give_up,
            "request {id} never finished"
        );
        if wait.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ------------------------------------------------------------------------------------------
// The races

/// Every job is delivered twice and both runs are made to overlap; they finish with different
/// outputs at about the same time. One output stands, and every poller sees that one.
async fn duplicate_delivery(which: Which) {
    let Some(s) = serve(which, Racer::default(), true).await else {
        return;
    };
    let mut requests = Vec::new();
    for i in 0..8 {
        requests.push(start(&s, &format!("pair=true&sleep_ms={}", i % 4)).await);
    }
    for (id, token) in requests {
        let pollers: Vec<_> = (0..5)
            .map(|p| {
                let (id, token) = (id.clone(), token.clone());
                tokio::spawn(poll_to_final(s.port, id, token, (p % 2 == 0).then_some(2)))
            })
            .collect();
        let mut finals = Vec::new();
        for p in pollers {
            finals.push(p.await.unwrap());
        }
        assert!(
            finals.iter().all(|f| f == &finals[0]),
            "pollers disagree: {finals:?}"
        );
        assert_eq!(finals[0].0, 200);
        let run = serde_json::from_str::<serde_json::Value>(&finals[0].1).unwrap()["run"]
            .as_u64()
            .unwrap() as u32;
        let id: RequestId = id.parse().unwrap();
        let runs = s.task.per_request.lock().unwrap()[&id].clone();
        assert_eq!(runs.len(), 2, "both deliveries ran: {runs:?}");
        assert!(
            runs.contains(&run),
            "the result is one of the runs: {run} in {runs:?}"
        );
    }
}

/// 50 pollers, half of them waiting polls, on one request while it finishes.
async fn fifty_polls_while_it_finishes(which: Which) {
    let Some(s) = serve(which, Racer::default(), false).await else {
        return;
    };
    let (id, token) = start(&s, "hold=true").await;
    // Make sure it runs (and so waits for the release) before the pollers start.
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    while poll(s.port, &id, &token, None).await.json()["status"] != "running" {
        assert!(std::time::Instant::now() < give_up, "never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pollers: Vec<_> = (0..50)
        .map(|p| {
            tokio::spawn(poll_to_final(
                s.port,
                id.clone(),
                token.clone(),
                (p % 2 == 0).then_some(5),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.task.release.notify_one();
    let mut finals = Vec::new();
    for p in pollers {
        finals.push(p.await.unwrap());
    }
    assert!(finals.iter().all(|f| f == &finals[0]), "pollers disagree");
    assert_eq!(finals[0].0, 200);
    assert_eq!(
        s.task.runs.load(Ordering::SeqCst),
        1,
        "polls never start it again"
    );
}

/// Jobs that finish within a few milliseconds of their deadline: done or timed out, each
/// request has one final answer that all its pollers see, and it never changes.
async fn finishing_at_the_deadline(which: Which) {
    let deadline = Duration::from_millis(400);
    let task = Racer {
        deadline: Some(deadline),
        ..Racer::default()
    };
    let Some(s) = serve(which, task, false).await else {
        return;
    };
    let mut requests = Vec::new();
    for i in 0..12u64 {
        requests.push(start(&s, &format!("sleep_ms={}", 370 + i * 5)).await);
    }
    let mut outcomes = HashMap::new();
    for (id, token) in requests {
        let pollers: Vec<_> = (0..4)
            .map(|p| {
                tokio::spawn(poll_to_final(
                    s.port,
                    id.clone(),
                    token.clone(),
                    (p % 2 == 0).then_some(2),
                ))
            })
            .collect();
        let mut finals = Vec::new();
        for p in pollers {
            finals.push(p.await.unwrap());
        }
        assert!(
            finals.iter().all(|f| f == &finals[0]),
            "pollers disagree: {finals:?}"
        );
        match finals[0].0 {
            200 => {}
            422 => assert!(
                finals[0].1.contains("did not finish in time"),
                "{}",
                finals[0].1
            ),
            other => panic!("unexpected {other}"),
        }
        *outcomes.entry(finals[0].0).or_insert(0) += 1;
    }
    eprintln!("{which:?}: finishing at the deadline: outcomes by status {outcomes:?}");
}

/// The task returns while a detached task of its own keeps writing progress: once the request
/// is done, every answer is the same 200.
async fn late_progress_is_ignored(which: Which) {
    let Some(s) = serve(which, Racer::default(), false).await else {
        return;
    };
    let (id, token) = start(&s, "late_progress=true").await;
    let (status, body) = poll_to_final(s.port, id.clone(), token.clone(), Some(5)).await;
    assert_eq!(status, 200);
    // The late writes go on for about 400 ms; keep polling through them and after.
    for _ in 0..30 {
        let a = poll(s.port, &id, &token, None).await;
        assert_eq!((a.status, a.body.as_str()), (200, body.as_str()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.endpoint.shutdown().await;
}

/// A start that asks to wait (`Prefer: wait=N`) is woken by the request's finish through the
/// backend's notifications (Redis: pub/sub), and answers with the result; 50 such starts at once
/// each get their own.
async fn starts_that_wait_get_their_own_result(which: Which) {
    let Some(s) = serve(which, Racer::default(), false).await else {
        return;
    };
    let starts: Vec<_> = (0..50)
        .map(|i| {
            let port = s.port;
            tokio::spawn(async move {
                let path = format!("/racer?sleep_ms={}", i % 5 * 20);
                test_support::http::get(port, &path, &[("prefer", "wait=25")])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut runs = std::collections::HashSet::new();
    for start in starts {
        let a = start.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("preference-applied"), Some("wait=25"));
        runs.insert(a.json()["run"].as_u64().unwrap());
    }
    assert_eq!(runs.len(), 50, "each start answered with its own run");
    assert_eq!(s.task.runs.load(Ordering::SeqCst), 50);
    s.endpoint.shutdown().await;
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Which::Memory).await;
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Which::Redis).await;
                }
            )*
        }
    };
}

on_every_backend!(
    duplicate_delivery,
    fifty_polls_while_it_finishes,
    finishing_at_the_deadline,
    late_progress_is_ignored,
    starts_that_wait_get_their_own_result,
);
