//! Metrics (feature `metrics`): a local recorder (metrics-util's debugging recorder) sees the
//! documented names and labels with the right values, as requests are driven through the router
//! by the `testing` helpers on a paused clock.

use std::time::Duration;

use async_endpoint::backend::{Backend, MemoryBackend};
use async_endpoint::{
    AsyncEndpoint, AsyncRequest, AsyncTask, Failure, RetryPolicy, TaskContext, testing,
};
use axum::body::Body;
use axum::{Json, Router, response::Response, routing::get};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

struct Echo;
impl AsyncTask for Echo {
    const NAME: &'static str = "echo";
    type Params = ();
    type Output = String;
    async fn execute_task(&self, (): (), _: TaskContext) -> Result<String, Failure> {
        Ok("echo".into())
    }
}

struct Refuse;
impl AsyncTask for Refuse {
    const NAME: &'static str = "refuse";
    type Params = ();
    type Output = String;
    async fn execute_task(&self, (): (), ctx: TaskContext) -> Result<String, Failure> {
        if ctx.attempt() == 1 {
            Err(Failure::new("not yet"))
        } else {
            Err(Failure::new("no"))
        }
    }
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::attempts(2)
    }
}

struct Late;
impl AsyncTask for Late {
    const NAME: &'static str = "late";
    type Params = ();
    type Output = String;
    async fn execute_task(&self, (): (), _: TaskContext) -> Result<String, Failure> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok("never".into())
    }
    fn deadline(&self) -> Option<Duration> {
        Some(Duration::from_secs(5))
    }
}

async fn route<T: AsyncTask<Params = ()>>(request: AsyncRequest<T>) -> Response {
    request
        .init(())
        .handle(Json, |failure| failure.message().to_owned())
        .await
}

/// What the recorder recorded since the last snapshot (taking one drains it).
type Snapshot = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn take(snapshotter: &Snapshotter) -> Snapshot {
    snapshotter.snapshot().into_vec()
}

fn value<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let matches = key.key().name() == name
            && key.key().labels().count() == labels.len()
            && labels.iter().all(|(k, v)| {
                key.key()
                    .labels()
                    .any(|label| label.key() == *k && label.value() == *v)
            });
        matches.then_some(value)
    })
}

fn counter(snapshotter: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshotter, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        other => panic!("{name} is not a counter: {other:?}"),
    }
}

fn samples(snapshotter: &Snapshot, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match value(snapshotter, name, labels) {
        Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
        other => panic!("{name} is not a histogram with samples: {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn metrics_follow_the_requests() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // This thread's recorder: the current-thread runtime polls everything here (tasks too, with
    // `task_threads(0)`), and other tests keep theirs.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let backend = MemoryBackend::new();
    let endpoint = AsyncEndpoint::builder()
        .task(Echo)
        .task(Refuse)
        .task(Late)
        .backend(backend.clone())
        .in_process_workers(false)
        .task_threads(0)
        .owner(|parts| {
            parts
                .headers
                .get("x-user")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .max_pending_per_owner(1)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/echo", get(route::<Echo>))
        .route("/refuse", get(route::<Refuse>))
        .route("/late", get(route::<Late>))
        .layer(endpoint.layer());

    assert_eq!(
        testing::run_to_end(&app, &endpoint, "/echo").await.status,
        200
    );
    assert_eq!(
        testing::run_to_end(&app, &endpoint, "/refuse").await.status,
        422
    );
    let late = testing::run_to_end(&app, &endpoint, "/late").await;
    assert_eq!(late.status, 422, "{}", late.text());

    let snapshot = take(&snapshotter);
    let started = "async_endpoint_requests_started_total";
    let finished = "async_endpoint_requests_finished_total";
    for task in ["echo", "refuse", "late"] {
        assert_eq!(counter(&snapshot, started, &[("task", task)]), 1, "{task}");
    }
    let done = [("task", "echo"), ("outcome", "done")];
    assert_eq!(counter(&snapshot, finished, &done), 1);
    let failed = [("task", "refuse"), ("outcome", "failed")];
    assert_eq!(counter(&snapshot, finished, &failed), 1);
    let timed_out = [("task", "late"), ("outcome", "timed_out")];
    assert_eq!(counter(&snapshot, finished, &timed_out), 1);
    assert_eq!(
        counter(
            &snapshot,
            "async_endpoint_retries_total",
            &[("task", "refuse")]
        ),
        1
    );
    // Two attempts of `refuse`, each failed; `late`'s one ran into its 5 s deadline (paused clock).
    let attempts = samples(
        &snapshot,
        "async_endpoint_attempt_duration_seconds",
        &[("task", "refuse"), ("outcome", "failed")],
    );
    assert_eq!(attempts.len(), 2);
    let late_ran = samples(
        &snapshot,
        "async_endpoint_attempt_duration_seconds",
        &[("task", "late"), ("outcome", "timed_out")],
    );
    assert_eq!(late_ran.len(), 1);
    assert!((4.9..=5.1).contains(&late_ran[0]), "{late_ran:?}");
    assert_eq!(
        samples(
            &snapshot,
            "async_endpoint_queue_wait_seconds",
            &[("task", "echo")]
        )
        .len(),
        1
    );

    // A job handed back (as at a shutdown) is not a claim of a dead worker's job.
    let call = |user: &'static str| {
        let app = app.clone();
        async move {
            let request = http::Request::get("/echo")
                .header("x-user", user)
                .body(Body::empty())
                .unwrap();
            testing::call(&app, request).await
        }
    };
    assert_eq!(call("ann").await.status, 202);
    let jobs = backend
        .fetch(&["echo"], 1, Duration::from_millis(1))
        .await
        .unwrap();
    backend.release(&jobs[0]).await.unwrap();
    // Ann's one pending request fills her limit: her next start is a 429.
    assert_eq!(call("ann").await.status, 429);
    let snapshot = take(&snapshotter);
    assert_eq!(
        counter(
            &snapshot,
            "async_endpoint_starts_refused_total",
            &[("task", "echo"), ("limit", "owner")]
        ),
        1
    );
    assert_eq!(endpoint.drain().await, 1);
    let snapshot = take(&snapshotter);
    assert_eq!(
        counter(
            &snapshot,
            "async_endpoint_jobs_redelivered_total",
            &[("task", "echo")]
        ),
        0
    );
    // A snapshot holds what was recorded since the last one: Ann's request is the one new `done`.
    assert_eq!(counter(&snapshot, finished, &done), 1);

    // Cancelled while queued: its delivery is skipped, and counted so.
    let started_echo = call("bob").await;
    let body: serde_json::Value = started_echo.json();
    let delete = http::Request::delete("/echo")
        .header("x-user", "bob")
        .header(
            "async-request-id",
            body["async_request_id"].as_str().unwrap(),
        )
        .header(
            "async-request-token",
            body["async_request_token"].as_str().unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    assert_eq!(testing::call(&app, delete).await.status, 202);
    assert_eq!(endpoint.drain().await, 1);
    let snapshot = take(&snapshotter);
    assert_eq!(
        counter(
            &snapshot,
            "async_endpoint_jobs_skipped_total",
            &[("task", "echo")]
        ),
        1
    );
    // Nothing runs now.
    match value(
        &snapshot,
        "async_endpoint_tasks_running",
        &[("task", "echo")],
    ) {
        Some(DebugValue::Gauge(n)) => assert_eq!(n.into_inner(), 0.0),
        other => panic!("tasks_running: {other:?}"),
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "current_thread")]
async fn backend_unavailable_is_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    // Nothing listens on port 1: every start answers 503.
    let endpoint = AsyncEndpoint::builder()
        .task(Echo)
        .redis("redis://127.0.0.1:1/")
        .secret(b"metrics test secret, thirty-two bytes or more".as_slice())
        .in_process_workers(false)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/echo", get(route::<Echo>))
        .layer(endpoint.layer());
    let answer = testing::call(
        &app,
        http::Request::get("/echo").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(
        counter(
            &take(&snapshotter),
            "async_endpoint_backend_unavailable_total",
            &[]
        ),
        1
    );
}

/// Runs until the test ends (its default 60 s deadline is never reached on the paused clock).
struct Slow;
impl AsyncTask for Slow {
    const NAME: &'static str = "slow";
    type Params = ();
    type Output = String;
    async fn execute_task(&self, (): (), _: TaskContext) -> Result<String, Failure> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok("late".into())
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn queue_depth_is_sampled_by_the_worker() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let endpoint = AsyncEndpoint::builder()
        .task(Slow)
        .in_process_workers(false)
        .task_threads(0)
        .concurrency(1)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/slow", get(route::<Slow>))
        .layer(endpoint.layer());
    for _ in 0..3 {
        let started = testing::call(
            &app,
            http::Request::get("/slow").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(started.status, 202, "{}", started.text());
    }
    // One worker with room for one task: it takes one job, two wait.
    let worker = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { endpoint.run_worker(std::future::pending()).await }
    });
    let depth = |snapshot: &Snapshot| match value(
        snapshot,
        "async_endpoint_queue_depth",
        &[("task", "slow")],
    ) {
        Some(DebugValue::Gauge(depth)) => Some(depth.into_inner()),
        None => None,
        other => panic!("queue_depth is not a gauge: {other:?}"),
    };
    // The paused clock runs ahead to each sample (about one a second); 30 s is a bound, not a wait.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while depth(&take(&snapshotter)) != Some(2.0) {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the gauge never showed the two waiting jobs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.abort();
}
