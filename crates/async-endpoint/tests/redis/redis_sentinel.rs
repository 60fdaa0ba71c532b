//! `redis+sentinel://`: the backend behind a private Sentinel (one `redis-server --sentinel`
//! watching a private primary and its replica), with a `SENTINEL FAILOVER` while requests flow
//! through an endpoint. Every request ends definitely (done, or a clean 503, or — for a write the
//! old primary took but had not replicated yet — gone), none hangs, and afterwards requests run
//! against the new primary.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_endpoint::backend::RedisBackend;
use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use test_support::redis::RedisServer;

struct Slow;

impl AsyncTask for Slow {
    const NAME: &'static str = "slow";
    type Params = String;
    type Output = String;

    async fn execute_task(&self, text: String, _ctx: TaskContext) -> Result<String, Failure> {
        // Long enough that jobs are running when the primary changes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(text.to_uppercase())
    }
}

async fn slow(request: AsyncRequest<Slow>) -> Response {
    request
        .init("sentinel".to_owned())
        .handle(Json, |f| Json(f.message().to_owned()))
        .await
}

/// A private `redis-server --sentinel`, killed (and its directory removed) on drop.
struct Sentinel {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Sentinel {
    /// Starts a sentinel watching `primary` as `m`; `None` when it does not come up.
    fn start(primary: u16) -> Option<Sentinel> {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        for _ in 0..5 {
            let port = test_support::free_port();
            let dir = test_support::temp_dir("ae-sentinel");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor m 127.0.0.1 {primary} 1\n\
                     sentinel down-after-milliseconds m 1000\n\
                     sentinel failover-timeout m 5000\n",
                    dir.display()
                ),
            )
            .unwrap();
            let Ok(child) = Command::new(&binary)
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            else {
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            };
            let mut sentinel = Sentinel { child, port, dir };
            for _ in 0..500 {
                if matches!(sentinel.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if sentinel.command("PING").is_ok_and(|r| r == "+PONG") {
                    return Some(sentinel);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Exited (port taken) or never answered: try another port.
        }
        None
    }

    /// Sends one inline command and returns the first reply line.
    fn command(&self, line: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{line}\r\n").as_bytes())?;
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply)?;
        Ok(reply.trim_end().to_owned())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `role:` line of a server's `INFO replication`.
fn role(server: &RedisServer) -> String {
    server
        .bulk("INFO replication")
        .ok()
        .flatten()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("role:").map(|r| r.trim().to_owned()))
        })
        .unwrap_or_default()
}

/// Waits (polling the condition, bounded by the test's overall timeout) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    /// The start was refused with 503 (Redis unavailable during the switch).
    Refused,
    /// Polls found no record: the start's write reached the old primary but not its replica.
    Lost,
}

/// Starts one request and polls it to its end (a poll's 503 is retried: the request itself is
/// still definite). Panics on anything else (a 500, a stuck request).
async fn one_request(web: u16) -> End {
    let started = test_support::http::get(web, "/slow", &[]).await.unwrap();
    match started.status {
        202 => {}
        503 => return End::Refused,
        _ => panic!("start answered {started:?}"),
    }
    let body = started.json();
    let id = body["async_request_id"].as_str().unwrap().to_owned();
    let token = body["async_request_token"].as_str().unwrap().to_owned();
    for _ in 0..500 {
        let r = test_support::http::get(
            web,
            "/slow",
            &[
                ("Async-Request-Id", &id),
                ("Async-Request-Token", &token),
                ("Prefer", "wait=2"),
            ],
        )
        .await
        .unwrap();
        match r.status {
            200 => {
                assert_eq!(r.json(), "SENTINEL");
                return End::Done;
            }
            404 => return End::Lost,
            202 => {}
            503 => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => panic!("poll answered {r:?}"),
        }
    }
    panic!("request {id} never ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_follow_the_primary_through_a_sentinel_failover() {
    let Some(primary) = RedisServer::start_with(&[]) else {
        return;
    };
    let replica_args = [
        "--replicaof".to_owned(),
        "127.0.0.1".to_owned(),
        primary.port.to_string(),
    ];
    let Some(replica) = RedisServer::start_with(&replica_args) else {
        return;
    };
    let Some(sentinel) = Sentinel::start(primary.port) else {
        test_support::skip(
            "Sentinel test",
            "redis-server --sentinel did not start (is Sentinel built in?)",
        );
        return;
    };
    tokio::time::timeout(Duration::from_secs(180), async {
        until("the replica is in sync", || {
            replica
                .bulk("INFO replication")
                .ok()
                .flatten()
                .is_some_and(|info| info.contains("master_link_status:up"))
        })
        .await;

        let backend = RedisBackend::builder(format!(
            "redis+sentinel://127.0.0.1:{}/m",
            sentinel.port
        ))
        .prefix("sentinel")
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(1))
        .claim_idle(Duration::from_secs(1))
        .build()
        .unwrap();
        backend.ping().await.expect("PING through Sentinel");
        let endpoint = AsyncEndpoint::builder()
            .secret(b"redis-sentinel-tests-secret-0123456789abcdef")
            .backend(backend)
            .task(Slow)
            .build()
            .unwrap();
        let app = Router::new()
            .route("/slow", get(slow))
            .layer(endpoint.layer());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let web = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });

        // Before: requests run, on the primary.
        assert_eq!(one_request(web).await, End::Done);
        assert_ne!(primary.command("DBSIZE").unwrap(), ":0");

        // Requests flow from four clients while the primary changes.
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut ends = Vec::new();
                    while !stop.load(Ordering::Acquire) {
                        ends.push(one_request(web).await);
                    }
                    ends
                })
            })
            .collect();
        // Sentinel may not know the replica yet (it learns it from the primary's INFO).
        until("Sentinel accepts the failover", || {
            sentinel
                .command("SENTINEL FAILOVER m")
                .is_ok_and(|answer| answer == "+OK")
        })
        .await;
        until("the replica is the new primary", || role(&replica) == "master").await;
        until("the old primary follows it", || role(&primary) == "slave").await;

        // After: a request gets through (the first ones may meet a stale connection: 503)…
        let mut refused_after = 0;
        loop {
            match one_request(web).await {
                End::Done => break,
                End::Refused | End::Lost => refused_after += 1,
            }
            assert!(refused_after < 200, "no request succeeded after the failover");
        }
        stop.store(true, Ordering::Release);
        let mut ends = Vec::new();
        for client in clients {
            ends.extend(client.await.unwrap());
        }
        // …and from then on every one does, against the new primary.
        let before = replica.command("DBSIZE").unwrap();
        for _ in 0..5 {
            assert_eq!(one_request(web).await, End::Done);
        }
        assert_ne!(replica.command("DBSIZE").unwrap(), before);
        let count = |end| ends.iter().filter(|e| **e == end).count();
        eprintln!(
            "sentinel failover: {} requests during the switch: {} done, {} refused (503), {} lost; {refused_after} refused right after",
            ends.len(),
            count(End::Done),
            count(End::Refused),
            count(End::Lost),
        );
        assert!(count(End::Done) > 0);
    })
    .await
    .expect("the failover test did not finish");
}

#[test]
fn sentinel_urls_are_checked() {
    for (url, why) in [
        ("redis+sentinel://127.0.0.1:26379", "master"),
        ("redis+sentinel://127.0.0.1:26379/m/x", "database"),
        ("redis+sentinel://a,,b/m", "host"),
    ] {
        match RedisBackend::builder(url).build() {
            Err(async_endpoint::Error::Config {
                setting: "url",
                reason,
            }) => assert!(reason.contains(why), "{url}: {reason}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    assert!(
        RedisBackend::builder("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/2")
            .build()
            .is_ok()
    );
}
