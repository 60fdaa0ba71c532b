//! Web and worker *processes* over one private PostgreSQL: requests started on one web process
//! are polled on another, a worker killed with SIGKILL mid-task has its job taken over by the
//! other once its lease runs out, a PostgreSQL stop/restart mid-run leaves every request with a
//! definite answer (503s, never 500s, while it is down), a `DELETE` on a web process drops the
//! task in the worker process running it, and no row is left once the TTL has passed.
//!
//! The processes are this test binary itself, re-executed with `AE_PG_NODE=web|worker` and the
//! filter `node` (an ignored test that runs the node), as in the Redis tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_endpoint::backend::PostgresBackend;
use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use test_support::http::{Response as HttpResponse, get as http_get};
use test_support::process::ChildOutput;

const SECRET: &[u8] = b"postgres-process-tests-secret-0123456789abcdef";
/// Generous bound for anything that should take a few seconds on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(45);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Params {
    ms: u64,
    text: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Out {
    text: String,
    pid: u32,
    attempt: u32,
}

/// Sleeps `ms` in 100 ms steps, reporting progress; says `RUN <id> <pid>` when it starts.
struct Sleepy;

impl AsyncTask for Sleepy {
    const NAME: &'static str = "sleepy";
    type Params = Params;
    type Output = Out;

    async fn execute_task(&self, p: Params, ctx: TaskContext) -> Result<Out, Failure> {
        let pid = std::process::id();
        say(&format!("RUN {} {pid}", ctx.request_id()));
        let mut guard = Unfinished(Some(format!("DROPPED {} {pid}", ctx.request_id())));
        let steps = p.ms.div_ceil(100);
        for step in 0..steps {
            ctx.progress(step, Some(steps), "sleeping").await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        guard.0 = None;
        Ok(Out {
            text: p.text,
            pid,
            attempt: ctx.attempt(),
        })
    }
}

/// Says its line when dropped before the task got to its end (a cancelled task is dropped).
struct Unfinished(Option<String>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            say(&line);
        }
    }
}

/// Writes a marker line for the parent test to read (on a line of its own: the harness may have
/// printed part of a line already).
fn say(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{text}");
    let _ = out.flush();
}

async fn job(Query(params): Query<Params>, request: AsyncRequest<Sleepy>) -> Response {
    request
        .init(params)
        .handle(Json, |f| {
            Json(serde_json::json!({ "error": f.message() })).into_response()
        })
        .await
}

/// The node: a web or worker process, configured by environment variables.
#[test]
#[ignore = "helper process for the multi-process tests, started by them"]
fn node() {
    let Ok(role) = std::env::var("AE_PG_NODE") else {
        return;
    };
    let url = std::env::var("AE_PG_URL").expect("AE_PG_URL");
    let claim_idle: u64 = std::env::var("AE_CLAIM_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        crate::node_log::init();
        let ttl_ms: u64 = std::env::var("AE_TTL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3_600_000);
        let backend = PostgresBackend::builder(url)
            .schema("e2e")
            .claim_idle(Duration::from_millis(claim_idle))
            .response_timeout(Duration::from_millis(500))
            .connection_timeout(Duration::from_millis(500))
            .sweep_interval(Duration::from_millis(200))
            .pool_size(8)
            .build()
            .expect("backend");
        let endpoint = AsyncEndpoint::builder()
            .secret(SECRET)
            .backend(backend)
            .ttl(Duration::from_millis(ttl_ms))
            .deadline(Duration::from_millis(ttl_ms.min(60_000) * 2 / 3))
            .task(Sleepy)
            .in_process_workers(false)
            .concurrency(4)
            .shutdown_grace(Duration::from_secs(5))
            .build()
            .expect("endpoint");
        match role.as_str() {
            "web" => {
                let app = Router::new()
                    .route("/job", get(job))
                    .layer(endpoint.layer());
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let port = listener.local_addr().expect("addr").port();
                say(&format!("LISTENING {port}"));
                axum::serve(listener, app).await.expect("serve");
            }
            _ => {
                say(&format!("READY {}", std::process::id()));
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("signal");
                endpoint
                    .run_worker(async move {
                        term.recv().await;
                    })
                    .await;
                say("STOPPED");
            }
        }
    });
}

/// A spawned node, killed (SIGKILL) on drop.
struct Node {
    child: Child,
    lines: ChildOutput,
    pid: u32,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn spawn(role: &str, url: &str, claim_idle_ms: u64) -> Node {
        Node::spawn_with(role, url, claim_idle_ms, 3_600_000)
    }

    fn spawn_with(role: &str, url: &str, claim_idle_ms: u64, ttl_ms: u64) -> Node {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                // This test's path in the binary (`postgres_processes::node`).
                format!(
                    "{}::node",
                    module_path!().split_once("::").expect("a module").1
                )
                .as_str(),
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("AE_PG_NODE", role)
            .env("AE_PG_URL", url)
            .env("AE_CLAIM_IDLE_MS", claim_idle_ms.to_string())
            .env("AE_TTL_MS", ttl_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node");
        let lines = ChildOutput::capture(&mut child);
        let pid = child.id();
        Node { child, lines, pid }
    }

    fn web(url: &str, claim_idle_ms: u64) -> (Node, u16) {
        let node = Node::spawn("web", url, claim_idle_ms);
        let line = node.lines.wait_line("LISTENING ", PATIENCE);
        let port = line["LISTENING ".len()..].parse().expect("port");
        (node, port)
    }

    fn worker(url: &str, claim_idle_ms: u64) -> Node {
        let node = Node::spawn("worker", url, claim_idle_ms);
        node.lines.wait_line("READY ", PATIENCE);
        node
    }

    fn ran(&self, id: &str) -> bool {
        let prefix = format!("RUN {id} ");
        self.lines.lines().iter().any(|l| l.contains(&prefix))
    }
}

struct Started {
    id: String,
    token: String,
    text: String,
}

async fn start(port: u16, ms: u64, text: &str) -> Started {
    let r = http_get(port, &format!("/job?ms={ms}&text={text}"), &[])
        .await
        .expect("start request");
    assert_eq!(r.status, 202, "start answered {r:?}");
    let body = r.json();
    Started {
        id: body["async_request_id"].as_str().expect("id").to_owned(),
        token: body["async_request_token"]
            .as_str()
            .expect("token")
            .to_owned(),
        text: text.to_owned(),
    }
}

async fn poll(port: u16, s: &Started, wait: u64) -> std::io::Result<HttpResponse> {
    let prefer = format!("wait={wait}");
    let mut headers = vec![
        ("Async-Request-Id", s.id.as_str()),
        ("Async-Request-Token", s.token.as_str()),
    ];
    if wait > 0 {
        headers.push(("Prefer", prefer.as_str()));
    }
    http_get(port, "/job", &headers).await
}

/// Polls (waiting polls) until the request is finished; never accepts a 500.
async fn until_finished(port: u16, s: &Started) -> HttpResponse {
    let until = Instant::now() + PATIENCE;
    loop {
        let r = poll(port, s, 5).await.expect("poll");
        assert_ne!(r.status, 500, "a poll answered 500: {r:?}");
        if r.status != 202 && r.status != 503 {
            return r;
        }
        assert!(Instant::now() < until, "request {} never finished", s.id);
        if r.status == 503 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn is_problem_503(r: &HttpResponse) -> bool {
    r.status == 503
        && r.header("content-type")
            .is_some_and(|c| c.starts_with("application/problem+json"))
        && r.header("retry-after").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_web_and_two_worker_processes_share_requests() {
    let Some(server) = test_support::postgres::start() else {
        return;
    };
    let url = server.url();
    let w1 = Node::worker(&url, 30_000);
    let w2 = Node::worker(&url, 30_000);
    let (_a, port_a) = Node::web(&url, 30_000);
    let (_b, port_b) = Node::web(&url, 30_000);

    let mut started = Vec::new();
    for i in 0..16 {
        let port = if i % 2 == 0 { port_a } else { port_b };
        started.push((i, start(port, 300, &format!("t{i}")).await));
    }
    let mut handles = Vec::new();
    for (i, s) in started {
        // Polled on the *other* web process.
        let port = if i % 2 == 0 { port_b } else { port_a };
        handles.push(tokio::spawn(async move {
            let r = until_finished(port, &s).await;
            (s, r)
        }));
    }
    let mut pids = std::collections::HashSet::new();
    for h in handles {
        let (s, r) = h.await.expect("poller");
        assert_eq!(r.status, 200, "request {} answered {r:?}", s.id);
        let out: Out = serde_json::from_str(&r.body).expect("output");
        assert_eq!(out.text, s.text);
        assert_eq!(out.attempt, 1);
        pids.insert(out.pid);
    }
    assert!(
        pids.iter().all(|p| *p == w1.pid || *p == w2.pid),
        "only the workers run tasks: {pids:?}"
    );
    // Both worker processes take jobs. On a starved machine one may have taken all 16 before
    // the other's first fetch: then keep starting jobs until the other takes one.
    let until = Instant::now() + PATIENCE;
    while pids.len() < 2 {
        assert!(
            Instant::now() < until,
            "only one worker process took jobs: {pids:?}"
        );
        let mut batch = Vec::new();
        for i in 0..8 {
            batch.push(start(port_a, 300, &format!("more{i}")).await);
        }
        for s in batch {
            let r = until_finished(port_b, &s).await;
            assert_eq!(r.status, 200, "request {} answered {r:?}", s.id);
            let out: Out = serde_json::from_str(&r.body).expect("output");
            assert_eq!(out.text, s.text);
            assert!(out.pid == w1.pid || out.pid == w2.pid);
            pids.insert(out.pid);
        }
    }

    // A token from one process is checked by the other, and a forged one is refused.
    let s = start(port_a, 0, "x").await;
    let forged = Started {
        token: format!("{}x", s.token),
        ..s
    };
    let r = poll(port_b, &forged, 0).await.expect("poll");
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_of_a_worker_killed_mid_task_is_finished_by_the_other() {
    let Some(server) = test_support::postgres::start() else {
        return;
    };
    let url = server.url();
    let claim_idle = 1_000;
    let w1 = Node::worker(&url, claim_idle);
    let w2 = Node::worker(&url, claim_idle);
    let (_web, port) = Node::web(&url, claim_idle);

    let s = start(port, 3_000, "survivor").await;
    let until = Instant::now() + PATIENCE;
    let (mut victim, survivor) = loop {
        if w1.ran(&s.id) {
            break (w1, w2);
        }
        if w2.ran(&s.id) {
            break (w2, w1);
        }
        assert!(Instant::now() < until, "no worker started the job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim.child.kill().expect("SIGKILL");
    let _ = victim.child.wait();

    let r = until_finished(port, &s).await;
    assert_eq!(r.status, 200, "answered {r:?}");
    let out: Out = serde_json::from_str(&r.body).expect("output");
    assert_eq!(out.pid, survivor.pid, "the surviving worker finished it");
    assert_eq!(out.attempt, 2, "the claimed job is a second attempt");
    assert!(survivor.ran(&s.id));
}

/// Sends SIGTERM and waits for a graceful exit (the worker prints `STOPPED` and exits 0).
fn terminate(node: &mut Node) {
    let sent = Command::new("kill")
        .args(["-TERM", &node.pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    let status = node.child.wait().expect("wait");
    assert!(status.success(), "worker exited with {status}");
    // The child has exited; its last lines may still be in the pipe: read to the end first.
    node.lines.join();
    assert!(
        node.lines.lines().iter().any(|l| l == "STOPPED"),
        "the worker did not shut down gracefully"
    );
}

/// Waits until one of the two workers has started `id`; returns (that one, the other).
async fn runner_of(a: Node, b: Node, id: &str) -> (Node, Node) {
    let until = Instant::now() + PATIENCE;
    loop {
        if a.ran(id) {
            return (a, b);
        }
        if b.ran(id) {
            return (b, a);
        }
        assert!(Instant::now() < until, "no worker started the job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_task_finishes_within_the_grace_period_or_hands_the_job_back() {
    let Some(server) = test_support::postgres::start() else {
        return;
    };
    let url = server.url();
    // claim_idle is long, so a job can only move to the other worker by being handed back.
    let w1 = Node::worker(&url, 60_000);
    let w2 = Node::worker(&url, 60_000);
    let (_web, port) = Node::web(&url, 60_000);

    // A task shorter than the 5 s grace period: the terminated worker finishes it, then exits.
    let short = start(port, 1_500, "short").await;
    let (mut victim, other) = runner_of(w1, w2, &short.id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    terminate(&mut victim);
    let r = until_finished(port, &short).await;
    assert_eq!(r.status, 200, "answered {r:?}");
    let out: Out = serde_json::from_str(&r.body).expect("output");
    assert_eq!(
        out.pid, victim.pid,
        "the terminated worker finished its task"
    );
    assert_eq!(out.attempt, 1);

    // A task longer than the grace period: handed back at once when the grace ends, and finished
    // by the other worker well before the 60 s claim timeout could have moved it.
    let w3 = Node::worker(&url, 60_000);
    let long = start(port, 8_000, "long").await;
    let (mut victim, survivor) = runner_of(other, w3, &long.id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let terminated_at = Instant::now();
    terminate(&mut victim);
    let r = until_finished(port, &long).await;
    assert_eq!(r.status, 200, "answered {r:?}");
    let out: Out = serde_json::from_str(&r.body).expect("output");
    assert_eq!(
        out.pid, survivor.pid,
        "the other worker finished the handed-back job"
    );
    assert_eq!(out.attempt, 2);
    assert!(
        terminated_at.elapsed() < Duration::from_secs(55),
        "the job was handed back, not left for the claim timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run_leaves_every_request_with_an_answer() {
    let Some(mut server) = test_support::postgres::start() else {
        return;
    };
    let url = server.url();
    let _worker = Node::worker(&url, 2_000);
    let (_web, port) = Node::web(&url, 2_000);

    let mut started = Vec::new();
    for i in 0..8 {
        started.push(start(port, 1_500, &format!("r{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop();

    // While PostgreSQL is down: 503 problem+json with Retry-After, for starts, polls and waiting
    // polls; never a 500.
    let down_until = Instant::now() + Duration::from_secs(3);
    let mut answers = 0;
    while Instant::now() < down_until {
        for s in &started {
            let r = poll(port, s, 0).await.expect("poll");
            assert!(
                is_problem_503(&r),
                "poll while PostgreSQL is down answered {r:?}"
            );
            answers += 1;
        }
        let r = http_get(port, "/job?ms=1&text=down", &[])
            .await
            .expect("start");
        assert!(
            is_problem_503(&r),
            "start while PostgreSQL is down answered {r:?}"
        );
        let r = poll(port, &started[0], 1).await.expect("waiting poll");
        assert!(
            is_problem_503(&r),
            "waiting poll while PostgreSQL is down answered {r:?}"
        );
    }
    assert!(answers > 0);

    server.restart();
    let mut done = 0;
    for s in &started {
        let r = until_finished(port, s).await;
        assert!(
            r.status == 200 || r.status == 422,
            "request {} has no definite answer: {r:?}",
            s.id
        );
        if r.status == 200 {
            let out: Out = serde_json::from_str(&r.body).expect("output");
            assert_eq!(out.text, s.text);
            done += 1;
        }
    }
    eprintln!(
        "after the PostgreSQL restart: {done} of {} requests done, the rest failed",
        started.len()
    );
    // New requests work again, end to end.
    let s = start(port, 0, "after").await;
    assert_eq!(until_finished(port, &s).await.status, 200);
}

/// A request started on the web process runs in a worker process; a `DELETE` on the web process
/// reaches the worker over PostgreSQL, which drops the task (it says `DROPPED` from its drop guard),
/// and a poll then gives the cancelled failure. The worker goes on with the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_the_web_process_drops_the_task_in_the_worker_process() {
    let Some(server) = test_support::postgres::start() else {
        return;
    };
    let url = server.url();
    let worker = Node::worker(&url, 30_000);
    let (_web, port) = Node::web(&url, 30_000);

    let s = start(port, 30_000, "long").await;
    worker
        .lines
        .wait_line(&format!("RUN {} {}", s.id, worker.pid), PATIENCE);
    let r = test_support::http::delete(
        port,
        "/job",
        &[
            ("Async-Request-Id", s.id.as_str()),
            ("Async-Request-Token", s.token.as_str()),
        ],
    )
    .await
    .expect("delete");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["status"], "failed");
    worker
        .lines
        .wait_line(&format!("DROPPED {} {}", s.id, worker.pid), PATIENCE);
    let r = poll(port, &s, 0).await.expect("poll");
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.json()["error"], "The request was cancelled.");
    // The worker is free for the next job.
    let next = start(port, 100, "next").await;
    let r = until_finished(port, &next).await;
    assert_eq!(r.status, 200, "{r:?}");
}

/// A waiting poll on one web process is woken by the worker process's finish: writes are
/// announced (`NOTIFY`) for requests a waiting poll has read, through PostgreSQL to the other
/// process's listener. A lost wake-up would hold the poll for the whole 25 s it asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_poll_on_another_web_process_is_woken_by_the_finish() {
    let Some(server) = test_support::postgres::start() else {
        return;
    };
    let url = server.url();
    let worker = Node::worker(&url, 30_000);
    let (_a, port_a) = Node::web(&url, 30_000);
    let (_b, port_b) = Node::web(&url, 30_000);
    for round in 0..3 {
        let s = start(port_a, 300, &format!("w{round}")).await;
        // Each waiting poll answers at the next change (start, progress, finish); none may be
        // held to its bound (25 s, the longest wait the endpoint grants).
        let r = loop {
            let asked = Instant::now();
            let r = poll(port_b, &s, 25).await.expect("poll");
            let held = asked.elapsed();
            assert!(
                held < Duration::from_secs(15),
                "a waiting poll was held {held:?}: not woken by a change ({r:?})"
            );
            if r.status != 202 {
                break r;
            }
        };
        assert_eq!(r.status, 200, "the request answered {r:?}");
        let out: Out = serde_json::from_str(&r.body).expect("output");
        assert_eq!((out.text.as_str(), out.pid), (s.text.as_str(), worker.pid));
    }
}

/// Requests live their TTL after their last write and then leave no row behind: the sweepers of
/// the processes delete them in bounded batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rows_are_left_after_the_ttl() {
    let Some(server) = test_support::postgres::start() else {
        return;
    };
    let url = server.url();
    let ttl_ms = 3_000;
    let _worker = Node::spawn_with("worker", &url, 30_000, ttl_ms);
    let web = Node::spawn_with("web", &url, 30_000, ttl_ms);
    let line = web.lines.wait_line("LISTENING ", PATIENCE);
    let port: u16 = line["LISTENING ".len()..].parse().expect("port");

    let mut started = Vec::new();
    for i in 0..20 {
        started.push(start(port, if i % 2 == 0 { 0 } else { 100 }, &format!("e{i}")).await);
    }
    for s in &started {
        assert_eq!(until_finished(port, s).await.status, 200);
    }
    let count = || {
        server
            .psql("SELECT count(*) FROM e2e.requests")
            .expect("psql")
    };
    assert_ne!(count(), "0", "the finished requests are still readable");
    let until = Instant::now() + PATIENCE;
    while count() != "0" {
        assert!(
            Instant::now() < until,
            "rows outlived their TTL: {}",
            count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Gone for clients too.
    let r = poll(port, &started[0], 0).await.expect("poll");
    assert!(r.status == 404 || r.status == 410, "{r:?}");
}
