//! Redis-specific behaviour beyond the conformance suite: 503 while Redis is unreachable and
//! recovery when it appears, poison jobs stopped by `max_deliveries`, bounded streams, and the
//! memory a record costs. Each test runs its own private redis-server.
#![cfg(feature = "redis")]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_endpoint::backend::{Backend, Begin, Job, NewRequest, Outcome, RedisBackend, Update};
use async_endpoint::{
    AsyncEndpoint, AsyncRequest, AsyncTask, Failure, FailureKind, RequestId, Status, TaskContext,
};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};

const TASK: &str = "redis_task";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn request(params: &str) -> NewRequest {
    let created = now();
    NewRequest::new(
        RequestId::random(),
        TASK,
        params,
        created,
        created + 60_000,
        Duration::from_secs(3600),
    )
}

struct Upper;

impl AsyncTask for Upper {
    const NAME: &'static str = "upper";
    type Params = String;
    type Output = String;

    async fn execute_task(&self, text: String, _ctx: TaskContext) -> Result<String, Failure> {
        Ok(text.to_uppercase())
    }
}

async fn upper(request: AsyncRequest<Upper>) -> Response {
    request
        .init("hello".to_owned())
        .handle(Json, |f| Json(f.message().to_owned()))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_answers_503_then_recovers_by_itself() {
    // Nothing listens on this port yet: the process must start anyway (lazy connection).
    let port = test_support::free_port();
    let backend = RedisBackend::builder(format!("redis://127.0.0.1:{port}/"))
        .connection_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .build()
        .expect("builds without connecting");
    let endpoint = AsyncEndpoint::builder()
        .secret(b"redis-backend-tests-secret-0123456789abcdef")
        .backend(backend)
        .task(Upper)
        .build()
        .expect("endpoint");
    let app = Router::new()
        .route("/upper", get(upper))
        .layer(endpoint.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let r = test_support::http::get(web, "/upper", &[]).await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/problem+json")),
        "{r:?}"
    );
    assert!(r.header("retry-after").is_some(), "{r:?}");

    let Some(_server) = test_support::redis::RedisServer::start_at(port) else {
        return;
    };
    // Redis is up now: the same process starts and finishes requests without a restart.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let started = loop {
        let r = test_support::http::get(web, "/upper", &[]).await.unwrap();
        if r.status == 202 {
            break r.json();
        }
        assert_eq!(r.status, 503, "{r:?}");
        assert!(std::time::Instant::now() < until, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = started["async_request_id"].as_str().unwrap().to_owned();
    let token = started["async_request_token"].as_str().unwrap().to_owned();
    loop {
        let r = test_support::http::get(
            web,
            "/upper",
            &[
                ("Async-Request-Id", &id),
                ("Async-Request-Token", &token),
                ("Prefer", "wait=5"),
            ],
        )
        .await
        .unwrap();
        if r.status == 200 {
            assert_eq!(r.json(), "HELLO");
            break;
        }
        assert_eq!(r.status, 202, "{r:?}");
        assert!(std::time::Instant::now() < until, "never finished");
    }
    endpoint.shutdown().await;
}

/// The next delivery of request `id`'s job to `worker` (a first one, or one claimed after its
/// last worker went silent).
async fn delivery(worker: &RedisBackend, task: &'static str, id: RequestId) -> Job {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = worker
            .fetch(&[task], 10, Duration::from_millis(200))
            .await
            .unwrap();
        if let Some(job) = jobs.into_iter().find(|j| j.id == id) {
            return job;
        }
        assert!(std::time::Instant::now() < until, "never redelivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_too_often_fails_instead_of_looping() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let make = || {
        RedisBackend::builder(server.url())
            .claim_idle(Duration::from_millis(200))
            .max_deliveries(2)
            .build()
            .unwrap()
    };
    let r = request(r#""x""#);
    make().create(r.clone()).await.unwrap();
    // Each "worker" takes the job and dies (is dropped) without finishing it.
    let mut last = None;
    for expected in 1..=3u32 {
        let worker = make();
        let job = delivery(&worker, TASK, r.id).await;
        assert_eq!(job.deliveries, expected);
        last = Some(worker.begin(&job, now()).await.unwrap());
    }
    assert_eq!(last, Some(Begin::Skip), "the third delivery must not run");
    let s = make().poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(s.status, Status::Failed);
    assert_eq!(s.failure.map(|f| f.kind), Some(FailureKind::Internal));
}

/// A worker dies mid-task and its job is claimed by another after the idle bound; the request was
/// cancelled meanwhile (or is cancelled while the claim's `begin` runs): the claimed job never
/// runs again, or its outcome is ignored, and the request stands cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_claimed_after_its_worker_died_does_not_run() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let make = || {
        RedisBackend::builder(server.url())
            .claim_idle(Duration::from_millis(200))
            .build()
            .unwrap()
    };
    let cancelled = |s: &async_endpoint::backend::Snapshot| {
        s.status == Status::Failed
            && s.failure.as_ref().map(|f| f.kind) == Some(FailureKind::Cancelled)
    };
    for concurrent in [false, true] {
        let r = request(r#""x""#);
        make().create(r.clone()).await.unwrap();
        {
            // The first worker takes the job and dies (is dropped) without finishing it.
            let dead = make();
            let job = delivery(&dead, TASK, r.id).await;
            assert!(matches!(
                dead.begin(&job, now()).await.unwrap(),
                Begin::Run { .. }
            ));
        }
        let canceller = make();
        if !concurrent {
            assert!(cancelled(
                &canceller.cancel(r.id, now()).await.unwrap().unwrap()
            ));
        }
        let survivor = make();
        let claimed = delivery(&survivor, TASK, r.id).await;
        assert_eq!(
            claimed.deliveries, 2,
            "claimed after the first worker went silent"
        );
        let (began, cancel) = tokio::join!(
            survivor.begin(&claimed, now()),
            canceller.cancel(r.id, now())
        );
        assert!(cancelled(&cancel.unwrap().unwrap()));
        match began.unwrap() {
            Begin::Skip => {}
            Begin::Run { .. } => {
                assert!(concurrent, "a claim after the cancel must not run");
                let stands = survivor
                    .finish(&claimed, Outcome::Done(r#""late""#.into()), now())
                    .await
                    .unwrap();
                assert_eq!(stands, Status::Failed, "the cancellation stands");
            }
            other => panic!("{other:?}"),
        }
        assert!(cancelled(
            &survivor.poll(r.id, now()).await.unwrap().unwrap()
        ));
    }
}

/// The store keeps a poison job's failure as its kind only; the message a client sees is the
/// endpoint's configured `internal_error_message`, rendered when it polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_shows_the_configured_internal_message() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let make = || {
        RedisBackend::builder(server.url())
            .claim_idle(Duration::from_millis(200))
            .max_deliveries(1)
            .build()
            .unwrap()
    };
    // A web-only process with its own message; its jobs are run by the "workers" below.
    let endpoint = AsyncEndpoint::builder()
        .secret(b"redis-backend-tests-secret-0123456789abcdef")
        .backend(make())
        .task(Upper)
        .in_process_workers(false)
        .internal_error_message("Our own words for an internal error.")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/upper", get(upper))
        .layer(endpoint.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let started = test_support::http::get(web, "/upper", &[]).await.unwrap();
    assert_eq!(started.status, 202, "{started:?}");
    let started = started.json();
    let id = started["async_request_id"].as_str().unwrap().to_owned();
    let token = started["async_request_token"].as_str().unwrap().to_owned();
    let request_id: RequestId = id.parse().unwrap();
    // Each "worker" takes the job and dies (is dropped) without finishing it; the second
    // delivery is one too many.
    for expected in 1..=2u32 {
        let worker = make();
        let job = delivery(&worker, Upper::NAME, request_id).await;
        assert_eq!(job.deliveries, expected);
        let begun = worker.begin(&job, now()).await.unwrap();
        if expected == 2 {
            assert_eq!(begun, Begin::Skip, "a poison job must not run");
        }
    }
    let r = test_support::http::get(
        web,
        "/upper",
        &[("Async-Request-Id", &id), ("Async-Request-Token", &token)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.json(), "Our own words for an internal error.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_under_the_worker_is_looked_up_again() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    // A claim round every 50 ms, so fetches after a pause go through the claim script.
    let b = RedisBackend::builder(server.url())
        .claim_idle(Duration::from_millis(200))
        .build()
        .unwrap();
    let first = request(r#""a""#);
    b.create(first.clone()).await.unwrap();
    let jobs = b.fetch(&[TASK], 10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [first.id]);
    // The queue expires (or Redis loses it): both the claim script and the blocking read meet
    // NOGROUP, which must read as "no queue", not as an error.
    for pause in [Duration::from_millis(100), Duration::ZERO] {
        server.command("DEL ae:q:redis_task").unwrap();
        tokio::time::sleep(pause).await;
        let jobs = b.fetch(&[TASK], 10, Duration::from_millis(100)).await;
        assert!(matches!(jobs.as_deref(), Ok([])), "{jobs:?}");
    }
    let second = request(r#""b""#);
    b.create(second.clone()).await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = b
            .fetch(&[TASK], 10, Duration::from_millis(200))
            .await
            .unwrap();
        if jobs.iter().any(|j| j.id == second.id) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the new queue was never read"
        );
    }
}

/// Redis memory of a record and its out-of-line fields, and the record hash's encoding.
fn footprint(server: &test_support::redis::RedisServer, id: &RequestId) -> (usize, String) {
    let key = format!("ae:r:{{{id}}}");
    let mut bytes = 0;
    for k in [
        key.clone(),
        format!("{key}:p"),
        format!("{key}:g"),
        format!("{key}:o"),
        format!("{key}:f"),
    ] {
        if let Some(n) = server.bulk(&format!("MEMORY USAGE {k}")).unwrap() {
            bytes += n.trim_start_matches(':').parse::<usize>().unwrap();
        }
    }
    let encoding = server
        .bulk(&format!("OBJECT ENCODING {key}"))
        .unwrap()
        .unwrap_or_default();
    (bytes, encoding)
}

/// The memory Redis needs to hold `value` at all: a string key holding it less one holding
/// nothing (the allocator rounds a value up to its size class: a 16 KiB value takes 20 KiB).
fn payload(server: &test_support::redis::RedisServer, value: &str) -> usize {
    let usage = |v: &str| -> usize {
        server.command(&format!("SET probe {v}")).unwrap();
        let n = server.bulk("MEMORY USAGE probe").unwrap().unwrap();
        server.command("DEL probe").unwrap();
        n.trim_start_matches(':').parse().unwrap()
    };
    usage(value) - usage("''")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stay_compact_at_every_payload_size() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let b = RedisBackend::builder(server.url()).build().unwrap();
    for size in [2, 100, 1024, 16 * 1024] {
        // JSON strings of `size` bytes.
        let params = format!("\"{}\"", "p".repeat(size - 2));
        let output = format!("\"{}\"", "o".repeat(size - 2));
        // The same size: Redis needs as much to hold either.
        let size = payload(&server, &"p".repeat(params.len())).max(size);
        let r = request(&params);
        b.create(r.clone()).await.unwrap();
        let (queued, encoding) = footprint(&server, &r.id);
        eprintln!("{size} B: queued {queued} bytes, {encoding}");
        assert_eq!(encoding, "listpack", "{size} B queued");
        assert!(queued <= 512 + size, "{size} B queued: {queued} bytes");
        let job = loop {
            let jobs = b.fetch(&[TASK], 100, Duration::from_secs(1)).await.unwrap();
            if let Some(job) = jobs.into_iter().find(|j| j.id == r.id) {
                break job;
            }
        };
        match b.begin(&job, now()).await.unwrap() {
            Begin::Run { params: got, .. } => assert_eq!(got, params, "{size} B params"),
            other => panic!("{other:?}"),
        }
        // Progress as long as the payload, then a short one: both read back.
        for message in ["m".repeat(size.min(300)), "m".to_owned()] {
            b.update(
                r.id,
                Update::Progress(async_endpoint::Progress::new(1, Some(2), message.clone())),
            )
            .await
            .unwrap();
            let snapshot = b.poll(r.id, now()).await.unwrap().unwrap();
            assert_eq!(snapshot.status, Status::Running);
            assert_eq!(snapshot.progress.unwrap().message, message);
        }
        let (running, encoding) = footprint(&server, &r.id);
        assert_eq!(encoding, "listpack", "{size} B running");
        assert!(running <= 512 + size, "{size} B running: {running} bytes");
        let stands = b
            .finish(&job, Outcome::Done(output.clone()), now())
            .await
            .unwrap();
        assert_eq!(stands, Status::Done);
        let snapshot = b.poll(r.id, now()).await.unwrap().unwrap();
        assert_eq!(snapshot.output.as_deref(), Some(output.as_str()));
        let (done, encoding) = footprint(&server, &r.id);
        eprintln!("{size} B: running {running} bytes, done {done} bytes, {encoding}");
        assert_eq!(encoding, "listpack", "{size} B done");
        assert!(done <= 512 + size, "{size} B done: {done} bytes");
        // Params left with the queued state; every key left carries the record's TTL.
        let key = format!("ae:r:{{{}}}", r.id);
        assert_eq!(server.command(&format!("EXISTS {key}:p")).unwrap(), ":0");
        for k in [key.clone(), format!("{key}:o")] {
            if server.command(&format!("EXISTS {k}")).unwrap() == ":1" {
                let ttl = server.command(&format!("PTTL {k}")).unwrap();
                let ttl: i64 = ttl.trim_start_matches(':').parse().unwrap();
                assert!(ttl > 3_000_000, "{k}: TTL {ttl}");
            }
        }
        // A long failure reads back too (cancel of a finished request: unchanged).
        let snapshot = b.cancel(r.id, now()).await.unwrap().unwrap();
        assert_eq!(snapshot.output.as_deref(), Some(output.as_str()));
    }
    // A failure with a long message of the task's own: out of line, read back, compact.
    let r = request("1");
    b.create(r.clone()).await.unwrap();
    let job = loop {
        let jobs = b.fetch(&[TASK], 100, Duration::from_secs(1)).await.unwrap();
        if let Some(job) = jobs.into_iter().find(|j| j.id == r.id) {
            break job;
        }
    };
    assert!(matches!(
        b.begin(&job, now()).await.unwrap(),
        Begin::Run { .. }
    ));
    let message = "x".repeat(1000);
    let failure: async_endpoint::backend::StoredFailure = Failure::new(message.clone()).into();
    assert_eq!(
        b.finish(&job, Outcome::Failed(failure), now())
            .await
            .unwrap(),
        Status::Failed
    );
    let snapshot = b.poll(r.id, now()).await.unwrap().unwrap();
    assert_eq!(
        snapshot.failure.unwrap().message.as_deref(),
        Some(message.as_str())
    );
    let (failed, encoding) = footprint(&server, &r.id);
    assert_eq!(encoding, "listpack");
    let json = format!("{{\"kind\":\"task\",\"message\":\"{message}\"}}");
    assert!(
        failed <= 512 + payload(&server, &"x".repeat(json.len())),
        "failed: {failed} bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_hold_only_live_jobs_and_records_stay_small() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let b = RedisBackend::builder(server.url()).build().unwrap();
    let params = r#"{"city":"Lisbon"}"#;
    let output = r#"{"celsius":21.5}"#;
    let mut ids = Vec::new();
    for _ in 0..50 {
        let r = request(params);
        b.create(r.clone()).await.unwrap();
        ids.push(r.id);
    }
    let queued = server
        .command(&format!("MEMORY USAGE ae:r:{{{}}}", ids[0]))
        .unwrap();
    let mut done = 0;
    while done < ids.len() {
        for job in b.fetch(&[TASK], 20, Duration::from_secs(1)).await.unwrap() {
            assert!(matches!(
                b.begin(&job, now()).await.unwrap(),
                Begin::Run { .. }
            ));
            b.update(
                job.id,
                Update::Progress(async_endpoint::Progress::new(1, Some(2), "half way")),
            )
            .await
            .unwrap();
            let stands = b
                .finish(&job, Outcome::Done(output.to_owned()), now())
                .await
                .unwrap();
            assert_eq!(stands, Status::Done);
            done += 1;
        }
    }
    // Finished jobs leave the stream: nothing piles up.
    assert_eq!(server.command("XLEN ae:q:redis_task").unwrap(), ":0");
    assert_eq!(
        server
            .command("XPENDING ae:q:redis_task workers - + 10")
            .unwrap(),
        "*0"
    );
    let finished = server
        .command(&format!("MEMORY USAGE ae:r:{{{}}}", ids[0]))
        .unwrap();
    let bytes = |reply: &str| -> usize { reply.trim_start_matches(':').parse().unwrap() };
    let ttl = server
        .command(&format!("PTTL ae:r:{{{}}}", ids[0]))
        .unwrap();
    eprintln!(
        "record memory: queued {} bytes, done {} bytes (params {} + output {} bytes); PTTL {ttl}",
        bytes(&queued),
        bytes(&finished),
        params.len(),
        output.len()
    );
    assert!(bytes(&ttl) > 3_000_000, "TTL re-applied on write: {ttl}");
    assert!(
        bytes(&finished) <= 512 + params.len() + output.len(),
        "a finished record costs {} bytes",
        bytes(&finished)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_redis_shorthand_checks_the_url_and_runs_requests() {
    let setting = |r: Result<AsyncEndpoint, async_endpoint::Error>| match r {
        Err(async_endpoint::Error::Config { setting, .. }) => setting,
        other => panic!("expected a config error, got {other:?}"),
    };
    let base = || AsyncEndpoint::builder().secret([9u8; 32]).task(Upper);
    assert_eq!(setting(base().redis("not a url").build()), "url");
    let both = base()
        .backend(
            RedisBackend::builder("redis://127.0.0.1:1/")
                .build()
                .unwrap(),
        )
        .redis("redis://127.0.0.1:1/")
        .build();
    assert_eq!(setting(both), "backend");
    // Processes sharing Redis must share the key: no random per-process key, no default.
    let keyless = || AsyncEndpoint::builder().task(Upper);
    assert_eq!(
        setting(keyless().redis("redis://127.0.0.1:1/").build()),
        "secret"
    );
    let backend = RedisBackend::builder("redis://127.0.0.1:1/")
        .build()
        .unwrap();
    assert_eq!(setting(keyless().backend(backend).build()), "secret");

    let Some(server) = test_support::redis::start() else {
        return;
    };
    let endpoint = base().redis(server.url()).build().unwrap();
    let app = Router::new()
        .route("/upper", get(upper))
        .layer(endpoint.layer());
    let started = send(&app, "/upper", &[]).await;
    assert_eq!(started.0, 202);
    let body: serde_json::Value = serde_json::from_str(&started.1).unwrap();
    let (id, token) = (
        body["async_request_id"].as_str().unwrap().to_owned(),
        body["async_request_token"].as_str().unwrap().to_owned(),
    );
    let mut last = (0, String::new());
    for _ in 0..20 {
        last = send(
            &app,
            "/upper",
            &[
                ("async-request-id", &id),
                ("async-request-token", &token),
                ("prefer", "wait=5"),
            ],
        )
        .await;
        if last.0 != 202 {
            break;
        }
    }
    assert_eq!(last, (200, "\"HELLO\"".to_owned()));
    endpoint.shutdown().await;
}

async fn send(app: &Router, uri: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = http::Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_outlives_the_ttl() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let b = RedisBackend::builder(server.url()).build().unwrap();
    // A worker that starts before any enqueue creates no key.
    assert!(
        b.fetch(&["idle_task"], 1, Duration::from_millis(50))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(server.command("EXISTS ae:q:idle_task").unwrap(), ":0");

    // Requests with a 1 s TTL: some finished, some left queued or running.
    let short = |params: &str| {
        let mut r = request(params);
        r.ttl = Duration::from_secs(1);
        r.deadline_ms = now() + 500;
        r
    };
    for i in 0..6 {
        b.create(short(&format!("{i}"))).await.unwrap();
    }
    let jobs = b.fetch(&[TASK], 4, Duration::from_secs(1)).await.unwrap();
    assert!(!jobs.is_empty());
    for (n, job) in jobs.iter().enumerate() {
        assert!(matches!(
            b.begin(job, now()).await.unwrap(),
            Begin::Run { .. }
        ));
        if n % 2 == 0 {
            b.finish(job, Outcome::Done("1".into()), now())
                .await
                .unwrap();
        }
    }
    let live = server.command("DBSIZE").unwrap();
    assert_ne!(live, ":0");
    // Past the TTL (plus Redis's expiry cycle), nothing of the library is left, while the
    // worker side keeps looking for work.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Jobs past their deadline may still be delivered here; a worker begins them (they are
        // skipped, not run), which also ends its heartbeat for them.
        let stale = b
            .fetch(&[TASK, "idle_task"], 4, Duration::from_millis(300))
            .await
            .unwrap();
        for job in &stale {
            let _ = b.begin(job, now()).await;
        }
        let left = server.command("DBSIZE").unwrap();
        if left == ":0" {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{left} keys left after the TTL"
        );
    }
    // And the queue comes back with the next request.
    let r = request("{}");
    b.create(r.clone()).await.unwrap();
    let jobs = b
        .fetch(&[TASK, "idle_task"], 4, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![r.id]);
}

/// PUBLISH calls Redis has served so far (`INFO commandstats`).
fn publishes(server: &test_support::redis::RedisServer) -> u64 {
    let stats = server
        .bulk("INFO commandstats")
        .unwrap()
        .unwrap_or_default();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("calls=")))
        .map_or(0, |n| n.parse().unwrap())
}

/// Fetches the jobs of `ids`, however many fetches that takes.
async fn deliveries(b: &RedisBackend, ids: &[RequestId]) -> Vec<Job> {
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut jobs: Vec<Job> = Vec::new();
    while jobs.len() < ids.len() {
        assert!(std::time::Instant::now() < until, "not every job delivered");
        let fetched = b.fetch(&[TASK], 100, Duration::from_millis(200)).await;
        jobs.extend(fetched.unwrap().into_iter().filter(|j| ids.contains(&j.id)));
    }
    jobs
}

/// No PUBLISH for writes nobody watches: jobs begun, updated and finished in batches announce
/// nothing; a cancel is announced although nobody polled; once a process that watches a request
/// has polled it, its writes are announced (and wake the watch). The batches run as pipelines,
/// which survive Redis losing its script cache (`SCRIPT FLUSH`, as after a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_announced_only_to_watchers_and_cancels_always() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let b = RedisBackend::builder(server.url()).build().unwrap();
    let requests: Vec<NewRequest> = (0..4).map(|i| request(&format!("{i}"))).collect();
    for r in &requests {
        b.create(r.clone()).await.unwrap();
    }
    let ids: Vec<RequestId> = requests.iter().map(|r| r.id).collect();
    let jobs = deliveries(&b, &ids).await;
    let before = publishes(&server);
    assert_eq!(server.command("SCRIPT FLUSH").unwrap(), "+OK");
    let begun = b.begin_many(&jobs, now()).await.unwrap();
    assert!(
        begun.iter().all(|b| matches!(b, Begin::Run { .. })),
        "{begun:?}"
    );
    b.update(
        jobs[0].id,
        Update::Progress(async_endpoint::Progress::new(1, Some(2), "half")),
    )
    .await
    .unwrap();
    assert_eq!(server.command("SCRIPT FLUSH").unwrap(), "+OK");
    let outcomes: Vec<(Job, Outcome)> = jobs[..3]
        .iter()
        .map(|j| (j.clone(), Outcome::Done("1".into())))
        .collect();
    let stands = b.finish_many(&outcomes, now()).await.unwrap();
    assert_eq!(stands, vec![Status::Done; 3]);
    assert_eq!(
        publishes(&server),
        before,
        "nobody watched: nothing announced"
    );

    // A worker's watch, never polled: the cancel is announced all the same, and wakes it.
    let mut watch = b.watch(jobs[3].id);
    b.cancel(jobs[3].id, now()).await.unwrap();
    assert_eq!(
        publishes(&server),
        before + 1,
        "a cancel is always announced"
    );
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("the cancel wakes the watch");

    // Watched, then polled: every write is announced from then on.
    let r = request("5");
    b.create(r.clone()).await.unwrap();
    let mut watch = b.watch(r.id);
    assert_eq!(
        b.poll(r.id, now()).await.unwrap().unwrap().status,
        Status::Queued
    );
    let job = deliveries(&b, &[r.id]).await.remove(0);
    let before = publishes(&server);
    b.begin_many(std::slice::from_ref(&job), now())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch.changed())
        .await
        .expect("begin wakes the watcher");
    b.update(
        r.id,
        Update::Progress(async_endpoint::Progress::new(1, Some(2), "half")),
    )
    .await
    .unwrap();
    b.finish_many(&[(job, Outcome::Done("2".into()))], now())
        .await
        .unwrap();
    assert_eq!(publishes(&server), before + 3, "begin, progress, finish");
    // The mark costs the record a few bytes only: `n` is one of its short fields.
    assert_eq!(
        server
            .bulk(&format!("HGET ae:r:{{{}}} n", r.id))
            .unwrap()
            .as_deref(),
        Some("1")
    );
}

/// Params up to 512 bytes stay in the record's hash in 64-byte pieces, longer ones in a key of
/// their own: either way `begin` hands them back byte for byte (multi-byte characters cut across
/// pieces included), and a finished record keeps none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_of_every_length_read_back_whole_and_leave_with_the_finish() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let b = RedisBackend::builder(server.url()).build().unwrap();
    for len in [64, 65, 127, 128, 129, 300, 511, 512, 513, 2000] {
        // A JSON string of exactly `len` bytes, of 3-byte characters that pieces cut through.
        let inner = len - 2;
        let params = format!("\"{}{}\"", "€".repeat(inner / 3), "b".repeat(inner % 3));
        assert_eq!(params.len(), len);
        let r = request(&params);
        b.create(r.clone()).await.unwrap();
        let key = format!("ae:r:{{{}}}", r.id);
        let side = server.command(&format!("EXISTS {key}:p")).unwrap();
        assert_eq!(
            side,
            if params.len() > 512 { ":1" } else { ":0" },
            "{len} B"
        );
        assert_eq!(
            server
                .bulk(&format!("OBJECT ENCODING {key}"))
                .unwrap()
                .as_deref(),
            Some("listpack")
        );
        let job = deliveries(&b, &[r.id]).await.remove(0);
        match b.begin(&job, now()).await.unwrap() {
            Begin::Run { params: got, .. } => assert_eq!(got, params, "{len} B"),
            other => panic!("{other:?}"),
        }
        b.finish(&job, Outcome::Done("1".into()), now())
            .await
            .unwrap();
        let fields = server.bulk(&format!("HKEYS {key}")).unwrap();
        assert_eq!(server.command(&format!("EXISTS {key}:p")).unwrap(), ":0");
        let pieces: Vec<String> = ["p", "p2", "p8"]
            .iter()
            .map(|f| server.command(&format!("HEXISTS {key} {f}")).unwrap())
            .collect();
        assert_eq!(pieces, [":0", ":0", ":0"], "{len} B: {fields:?}");
    }
}

/// A start re-sent with the same id (a client library retrying a call whose reply it lost, as
/// redis-rs's cluster client may during a failover) is admitted again without a second job: the
/// queue holds one entry, and a pending limit counts the request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_sent_twice_is_enqueued_once() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let backend = RedisBackend::builder(server.url()).build().unwrap();
    let mut r = request(r#""once""#);
    let mut limits = async_endpoint::backend::PendingLimits::default();
    limits.per_task = Some(2);
    r.limits = limits;
    for _ in 0..2 {
        let created = backend.create(r.clone()).await.unwrap();
        assert_eq!(created, async_endpoint::backend::Created::New);
    }
    assert_eq!(backend.queue_depth(TASK).await.unwrap(), Some(1));
    // The task's limit of 2 still admits another request: the repeat was not counted.
    let mut other = request(r#""other""#);
    other.limits = limits;
    assert_eq!(
        backend.create(other).await.unwrap(),
        async_endpoint::backend::Created::New
    );
}
