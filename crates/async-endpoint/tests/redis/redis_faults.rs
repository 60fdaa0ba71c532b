//! Faults on the Redis backend, on a private redis-server, with web and worker in this process
//! and clients over real TCP: Redis paused (SIGSTOP) for longer than the client's response
//! timeout, and Redis stopped and restarted while requests are being started, run and polled.
//!
//! In both: every answer is a 202, a final answer or a 503 problem with `Retry-After` (never a
//! 500, never a hang), every accepted request reaches its final answer by its deadline, the
//! worker keeps going, and new requests work after recovery. (SIGKILL of a worker process and a
//! restart mid-run across processes are in `redis_processes.rs`.)
#![cfg(feature = "redis")]

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_endpoint::backend::RedisBackend;
use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::extract::Query;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use test_support::http::Response as HttpResponse;
use test_support::redis::RedisServer;

/// Generous bound for one HTTP answer on a busy machine; a hang is far beyond it.
const ANSWER_BOUND: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Nap {
    ms: u64,
    n: u32,
}

struct Napper(Arc<AtomicU32>);

impl AsyncTask for Napper {
    const NAME: &'static str = "napper";
    type Params = Nap;
    type Output = Nap;

    async fn execute_task(&self, nap: Nap, ctx: TaskContext) -> Result<Nap, Failure> {
        self.0.fetch_add(1, Ordering::SeqCst);
        for step in 0..nap.ms.div_ceil(100) {
            ctx.progress(step, None, "napping").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(nap)
    }

    fn deadline(&self) -> Option<Duration> {
        Some(DEADLINE)
    }
}

async fn napper(request: AsyncRequest<Napper>, Query(nap): Query<Nap>) -> Response {
    request
        .init(nap)
        .handle(
            |nap| Json(json!({ "n": nap.n })),
            |f| Json(json!({ "error": f.message() })),
        )
        .await
}

struct App {
    port: u16,
    runs: Arc<AtomicU32>,
    endpoint: AsyncEndpoint,
}

async fn app(url: String) -> App {
    let runs = Arc::new(AtomicU32::new(0));
    let backend = RedisBackend::builder(url)
        .response_timeout(Duration::from_millis(500))
        .connection_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let endpoint = AsyncEndpoint::builder()
        .secret(b"redis-faults-secret-redis-faults-secret!")
        .backend(backend)
        .task(Napper(runs.clone()))
        .build()
        .unwrap();
    let router = Router::new()
        .route("/nap", get(napper))
        .layer(endpoint.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    App {
        port,
        runs,
        endpoint,
    }
}

/// One HTTP exchange, bounded: a hang fails the test.
async fn http(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    tokio::time::timeout(ANSWER_BOUND, test_support::http::get(port, path, headers))
        .await
        .unwrap_or_else(|_| panic!("no answer within {ANSWER_BOUND:?}: GET {path}"))
        .unwrap()
}

fn assert_allowed(r: &HttpResponse, what: &str) {
    assert!(r.status != 500, "{what}: 500: {}", r.body);
    if r.status == 503 {
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(r.header("retry-after").is_some(), "503 without Retry-After");
    } else {
        assert!(
            matches!(r.status, 200 | 202),
            "{what}: unexpected {}: {}",
            r.status,
            r.body
        );
    }
}

#[derive(Clone)]
struct Started {
    n: u32,
    id: String,
    token: String,
    at: Instant,
}

/// Starts request `n`; `None` when the answer was a 503 (Redis unreachable).
async fn start(port: u16, n: u32, ms: u64) -> Option<Started> {
    let r = http(port, &format!("/nap?ms={ms}&n={n}"), &[]).await;
    assert_allowed(&r, "start");
    (r.status == 202).then(|| {
        let j = r.json();
        Started {
            n,
            id: j["async_request_id"].as_str().unwrap().to_owned(),
            token: j["async_request_token"].as_str().unwrap().to_owned(),
            at: Instant::now(),
        }
    })
}

async fn poll(port: u16, s: &Started, wait: Option<&str>) -> HttpResponse {
    let mut headers = vec![
        ("async-request-id", s.id.as_str()),
        ("async-request-token", s.token.as_str()),
    ];
    if let Some(w) = wait {
        headers.push(("prefer", w));
    }
    let r = http(port, "/nap", &headers).await;
    assert_allowed(&r, "poll");
    r
}

/// Polls until the final answer, which must come before the request's deadline (plus slack for
/// the poll that notices it). Returns it.
async fn until_final(port: u16, s: &Started) -> HttpResponse {
    loop {
        let r = poll(port, s, Some("wait=2")).await;
        if r.status == 200 {
            assert_eq!(r.json()["n"], s.n, "a request got another request's result");
            return r;
        }
        assert!(
            s.at.elapsed() < DEADLINE + Duration::from_secs(10),
            "request {} had no final answer by its deadline",
            s.n
        );
        if r.status == 503 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The redis-server's pid, from `INFO server`.
fn redis_pid(redis: &RedisServer) -> u32 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"INFO server\r\n").unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("process_id:") || !text[text.find("process_id:").unwrap()..].contains('\n')
    {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "INFO ended early");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let line = &text[text.find("process_id:").unwrap() + "process_id:".len()..];
    line[..line.find('\r').unwrap()].trim().parse().unwrap()
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid} failed");
}

/// Sends SIGCONT on drop, so a failing test never leaves a stopped server behind.
struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

/// Redis frozen (SIGSTOP) for 4 s, eight times the backend's response timeout, while requests
/// run and are polled (waiting and not) and new ones are started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_longer_than_the_response_timeout() {
    let Some(redis) = test_support::redis::start() else {
        return;
    };
    let app = app(redis.url()).await;
    let mut started = Vec::new();
    for n in 0..6 {
        started.push(start(app.port, n, 1500).await.expect("Redis is up"));
    }
    let pid = redis_pid(&redis);
    let paused = Paused(pid);
    signal(pid, "-STOP");
    let pause_began = Instant::now();
    // During the pause: polls of every kind and starts answer, quickly, with 503s.
    let mut during = Vec::new();
    for s in started.iter().take(3) {
        let (port, plain) = (app.port, s.clone());
        during.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = poll(port, &plain, None).await;
            (r.status, t.elapsed())
        }));
        let (port, s) = (app.port, s.clone());
        during.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = poll(port, &s, Some("wait=3")).await;
            (r.status, t.elapsed())
        }));
    }
    let port = app.port;
    during.push(tokio::spawn(async move {
        let t = Instant::now();
        let r = start(port, 100, 100).await;
        (if r.is_some() { 202 } else { 503 }, t.elapsed())
    }));
    let mut answers = Vec::new();
    for d in during {
        answers.push(d.await.unwrap());
    }
    let saw_503 = answers.iter().filter(|(s, _)| *s == 503).count();
    assert!(saw_503 > 0, "no 503 while Redis was frozen: {answers:?}");
    let remaining = Duration::from_secs(4).saturating_sub(pause_began.elapsed());
    tokio::time::sleep(remaining).await;
    drop(paused); // SIGCONT
    eprintln!(
        "paused Redis for {:.1?}: answers during the pause (status, time) {answers:?}",
        pause_began.elapsed()
    );
    // Every request started before the pause finishes, with its own result.
    for s in &started {
        until_final(app.port, s).await;
    }
    // The worker survived: a new request runs to the end.
    let fresh = start(app.port, 200, 100).await.expect("Redis is back");
    until_final(app.port, &fresh).await;
    assert!(app.runs.load(Ordering::SeqCst) >= 7);
    app.endpoint.shutdown().await;
}

/// Redis stopped for about 2 s and started again (same port, append-only file) while one client
/// keeps starting requests and others keep polling every accepted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_while_requests_start_run_and_poll() {
    let Some(redis) = test_support::redis::start_persistent() else {
        return;
    };
    let redis = Arc::new(Mutex::new(redis));
    let url = redis.lock().unwrap().url();
    let app = app(url).await;
    let accepted: Arc<Mutex<Vec<Started>>> = Arc::default();
    let unavailable = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Starter: a request every 50 ms.
    let starter = {
        let (accepted, unavailable, stop, port) = (
            accepted.clone(),
            unavailable.clone(),
            stop.clone(),
            app.port,
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                match start(port, n, 300).await {
                    Some(s) => accepted.lock().unwrap().push(s),
                    None => {
                        unavailable.fetch_add(1, Ordering::SeqCst);
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Pollers: walk the accepted requests again and again.
    let pollers: Vec<_> = (0..2)
        .map(|p| {
            let (accepted, unavailable, stop, port) = (
                accepted.clone(),
                unavailable.clone(),
                stop.clone(),
                app.port,
            );
            tokio::spawn(async move {
                let mut polls = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let list: Vec<Started> = accepted.lock().unwrap().clone();
                    for s in list.iter().skip(p).step_by(2) {
                        let r = poll(port, s, None).await;
                        polls += 1;
                        if r.status == 503 {
                            unavailable.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                polls
            })
        })
        .collect();
    // Redis goes down once the run is under way (requests accepted and polled), and comes back
    // for as long as it takes new requests to be accepted again: conditions, not fixed times.
    wait_for_accepted(&accepted, 10).await;
    let down = {
        let redis = redis.clone();
        tokio::task::spawn_blocking(move || {
            let mut r = redis.lock().unwrap();
            r.stop();
            std::thread::sleep(Duration::from_secs(2));
            r.restart();
        })
    };
    down.await.unwrap();
    let before_restart = accepted.lock().unwrap().len();
    wait_for_accepted(&accepted, before_restart + 10).await;
    stop.store(true, Ordering::SeqCst);
    starter.await.unwrap();
    let mut polls = 0;
    for p in pollers {
        polls += p.await.unwrap();
    }
    let list: Vec<Started> = accepted.lock().unwrap().clone();
    for s in &list {
        until_final(app.port, s).await;
    }
    let fresh = start(app.port, 9999, 100).await.expect("Redis is back");
    until_final(app.port, &fresh).await;
    let unavailable = unavailable.load(Ordering::SeqCst);
    eprintln!(
        "Redis restart: {} requests accepted, {polls} polls during the run, {unavailable} answers of 503 while it was down; all accepted requests finished",
        list.len()
    );
    assert!(unavailable > 0, "Redis was down but nothing answered 503");
    app.endpoint.shutdown().await;
}

/// Waits until at least `n` requests have been accepted.
async fn wait_for_accepted(accepted: &Mutex<Vec<Started>>, n: usize) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while accepted.lock().unwrap().len() < n {
        assert!(Instant::now() < give_up, "fewer than {n} requests accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
