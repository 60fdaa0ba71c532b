//! Web and worker *processes* over one private Redis: requests started on one web process are
//! polled on another, a worker killed with SIGKILL mid-task has its job finished by the other, a
//! worker stopped with SIGTERM mid-task finishes it within its grace period or hands it back,
//! a Redis stop/restart mid-run leaves every request with a definite answer (503s, never
//! 500s, while it is down), and a `DELETE` on a web process drops the task in the worker process
//! running it.
//!
//! The processes are this test binary itself, re-executed with `AE_REDIS_NODE=web|worker` and
//! the filter `node` (an ignored test that runs the node): real separate processes, with no
//! extra binary target in the published crate and no cargo invocation from inside a test.
#![cfg(feature = "redis")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_endpoint::backend::RedisBackend;
use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use test_support::http::{Response as HttpResponse, get as http_get};
use test_support::process::ChildOutput;

const SECRET: &[u8] = b"redis-process-tests-secret-0123456789abcdef";
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
    let Ok(role) = std::env::var("AE_REDIS_NODE") else {
        return;
    };
    let url = std::env::var("AE_REDIS_URL").expect("AE_REDIS_URL");
    let claim_idle: u64 = std::env::var("AE_CLAIM_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let takeover: u64 = std::env::var("AE_TAKEOVER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        crate::node_log::init();
        // A comma-separated list of seed nodes: a Redis Cluster.
        #[cfg(feature = "redis-cluster")]
        let builder = match std::env::var("AE_REDIS_CLUSTER") {
            Ok(_) => RedisBackend::cluster_builder(url.split(',')),
            Err(_) => RedisBackend::builder(url),
        };
        #[cfg(not(feature = "redis-cluster"))]
        let builder = RedisBackend::builder(url);
        let backend = builder
            .prefix("e2e")
            .claim_idle(Duration::from_millis(claim_idle))
            .takeover_after(Duration::from_millis(takeover))
            .response_timeout(Duration::from_millis(500))
            .connection_timeout(Duration::from_millis(500))
            .build()
            .expect("backend");
        let mut endpoint = AsyncEndpoint::builder();
        if let Some(ttl) = std::env::var("AE_TTL_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            // A short life, for tests that wait for every key to expire.
            endpoint = endpoint
                .ttl(Duration::from_millis(ttl))
                .deadline(Duration::from_millis(ttl / 2));
        }
        let endpoint = endpoint
            .secret(SECRET)
            .backend(backend)
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
        Node::spawn_with(role, url, claim_idle_ms, 5_000)
    }

    fn spawn_with(role: &str, url: &str, claim_idle_ms: u64, takeover_ms: u64) -> Node {
        Node::spawn_env(role, url, claim_idle_ms, takeover_ms, &[])
    }

    /// A node with more environment (`AE_REDIS_CLUSTER`, `AE_TTL_MS`).
    fn spawn_env(
        role: &str,
        url: &str,
        claim_idle_ms: u64,
        takeover_ms: u64,
        env: &[(&str, String)],
    ) -> Node {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                // This test's path in the binary (`redis_processes::node`).
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
            .env("AE_REDIS_NODE", role)
            .env("AE_REDIS_URL", url)
            .env("AE_CLAIM_IDLE_MS", claim_idle_ms.to_string())
            .env("AE_TAKEOVER_MS", takeover_ms.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
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

    /// A worker with its own takeover bound.
    fn worker_takeover(url: &str, claim_idle_ms: u64, takeover_ms: u64) -> Node {
        let node = Node::spawn_with("worker", url, claim_idle_ms, takeover_ms);
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
    let Some(server) = test_support::redis::start() else {
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
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let url = server.url();
    // claim_idle (60 s) is beyond the test's patience: only the heartbeat takeover (default
    // `takeover_after`, 5 s) can move the job to the other worker.
    let claim_idle = 60_000;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_workers_long_job_is_never_taken_over() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let url = server.url();
    // Takeover after 1 s; the task runs 4 s while the other worker, idle, looks for dead
    // workers' jobs every 50 ms. claim_idle is long, so only the heartbeat path is in play.
    let w1 = Node::worker_takeover(&url, 60_000, 1_000);
    let w2 = Node::worker_takeover(&url, 60_000, 1_000);
    let (_web, port) = Node::web(&url, 60_000);

    let s = start(port, 4_000, "long").await;
    let r = until_finished(port, &s).await;
    assert_eq!(r.status, 200, "answered {r:?}");
    let out: Out = serde_json::from_str(&r.body).expect("output");
    assert_eq!(out.attempt, 1, "the job ran once, never taken over");
    assert!(out.pid == w1.pid || out.pid == w2.pid);
    let runs = [&w1, &w2].iter().filter(|w| w.ran(&s.id)).count();
    assert_eq!(runs, 1, "exactly one worker ran the job");
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
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let url = server.url();
    // claim_idle and takeover_after are long, so a job can only move to the other worker by
    // being handed back.
    let w1 = Node::worker_takeover(&url, 60_000, 60_000);
    let w2 = Node::worker_takeover(&url, 60_000, 60_000);
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
    let w3 = Node::worker_takeover(&url, 60_000, 60_000);
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
async fn redis_restart_mid_run_leaves_every_request_with_an_answer() {
    let Some(mut server) = test_support::redis::start_persistent() else {
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

    // While Redis is down: 503 problem+json with Retry-After, for starts, polls and waiting
    // polls; never a 500.
    let down_until = Instant::now() + Duration::from_secs(3);
    let mut answers = 0;
    while Instant::now() < down_until {
        for s in &started {
            let r = poll(port, s, 0).await.expect("poll");
            assert!(
                is_problem_503(&r),
                "poll while Redis is down answered {r:?}"
            );
            answers += 1;
        }
        let r = http_get(port, "/job?ms=1&text=down", &[])
            .await
            .expect("start");
        assert!(
            is_problem_503(&r),
            "start while Redis is down answered {r:?}"
        );
        let r = poll(port, &started[0], 1).await.expect("waiting poll");
        assert!(
            is_problem_503(&r),
            "waiting poll while Redis is down answered {r:?}"
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
        "after the Redis restart: {done} of {} requests done, the rest failed",
        started.len()
    );
    // New requests work again, end to end.
    let s = start(port, 0, "after").await;
    assert_eq!(until_finished(port, &s).await.status, 200);
}

/// A request started on the web process runs in a worker process; a `DELETE` on the web process
/// reaches the worker over Redis, which drops the task (it says `DROPPED` from its drop guard),
/// and a poll then gives the cancelled failure. The worker goes on with the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_the_web_process_drops_the_task_in_the_worker_process() {
    let Some(server) = test_support::redis::start() else {
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

/// 2 web and 2 worker processes over a private Redis Cluster (3 masters, 3 replicas): requests
/// started on either web process are polled on the other; a master is killed (SIGKILL)
/// mid-run and its replica promoted, and every request still ends definite (done, or failed;
/// never a 500, never stuck: at worst a clean 503 while the cluster fails over, or 404 for a
/// start whose write the dead master had not replicated). Then, with every process stopped, no
/// key is left once the TTL has passed.
#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_two_web_two_workers_survive_a_master_failover_and_leave_no_key() {
    let Some(mut cluster) = test_support::redis_cluster::start() else {
        return;
    };
    let urls = cluster.urls().join(",");
    const TTL_MS: u64 = 8_000;
    let env = [
        ("AE_REDIS_CLUSTER", "1".to_owned()),
        ("AE_TTL_MS", TTL_MS.to_string()),
    ];
    let spawn = |role: &str| Node::spawn_env(role, &urls, 2_000, 2_000, &env);
    let workers = [spawn("worker"), spawn("worker")];
    for w in &workers {
        w.lines.wait_line("READY ", PATIENCE);
    }
    let mut webs = Vec::new();
    for _ in 0..2 {
        let node = spawn("web");
        let line = node.lines.wait_line("LISTENING ", PATIENCE);
        let port: u16 = line["LISTENING ".len()..].parse().expect("port");
        webs.push((node, port));
    }
    let ports = [webs[0].1, webs[1].1];

    // Before the failover: requests started on one web process, finished, read on the other.
    let mut before = Vec::new();
    for i in 0..12 {
        before.push(start(ports[i % 2], 200, &format!("b{i}")).await);
    }
    for (i, s) in before.iter().enumerate() {
        let r = until_finished(ports[(i + 1) % 2], s).await;
        assert_eq!(r.status, 200, "{r:?}");
        let out: Out = serde_json::from_str(&r.body).expect("output");
        assert_eq!(out.text, s.text);
    }
    let ran: usize = before.iter().filter(|s| workers[0].ran(&s.id)).count();
    eprintln!("before the failover: worker 1 ran {ran} of 12, worker 2 the rest");

    // Mid-run: jobs queued and running when a master dies.
    let mut during = Vec::new();
    for i in 0..16 {
        during.push(start(ports[i % 2], 1_000, &format!("d{i}")).await);
    }
    let victim = cluster.masters()[0];
    let promoted = tokio::task::block_in_place(|| cluster.kill_master(victim));
    eprintln!("master {victim} killed; replica {promoted} promoted");
    let (mut done, mut failed, mut gone) = (0, 0, 0);
    for (i, s) in during.iter().enumerate() {
        let r = until_finished(ports[(i + 1) % 2], s).await;
        match r.status {
            200 => {
                let out: Out = serde_json::from_str(&r.body).expect("output");
                assert_eq!(out.text, s.text);
                done += 1;
            }
            422 => failed += 1,
            // A start the dead master took and had not replicated.
            404 => gone += 1,
            _ => panic!("request {} has no definite answer: {r:?}", s.id),
        }
    }
    eprintln!("across the failover: {done} done, {failed} failed, {gone} lost with the master");
    assert!(done > 0, "no request survived the failover");

    // After it: new requests run end to end again, from both web processes.
    for (i, port) in ports.iter().enumerate() {
        let s = start(*port, 0, &format!("after{i}")).await;
        assert_eq!(until_finished(ports[(i + 1) % 2], &s).await.status, 200);
    }

    // Every key expires: records and idempotency keys with the TTL, queues with the TTL after
    // their last enqueue, heartbeats and sleep marks within seconds of their process stopping.
    drop(webs);
    drop(workers);
    let until = Instant::now() + Duration::from_millis(TTL_MS) + PATIENCE;
    loop {
        let left = tokio::task::block_in_place(|| cluster.key_names());
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "keys left after the TTL: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
