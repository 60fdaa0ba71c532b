//! The README's scale-out setup, for real: a private `redis-server`, two web-only demo processes
//! and two worker-only ones. A request started on one web process is polled to its end on the
//! other, and runs in a worker process; workers stop gracefully on SIGTERM.
//!
//! Skips loudly without `redis-server` (fails when `CI=true`).

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::Demo;

const LONG: Duration = Duration::from_secs(60);

/// A private `redis-server` on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis { child, port };
        let start = Instant::now();
        while !redis.pong() {
            assert!(start.elapsed() < LONG, "redis-server did not answer PING");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(redis)
    }

    fn pong(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut buf = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skip_or_fail(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(
        !ci,
        "two_web_processes_and_two_workers: {why} (CI=true: install redis-server)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "\nSKIPPED: two_web_processes_and_two_workers: {why}\n"
    );
}

#[test]
fn two_web_processes_and_two_workers() {
    let Some(redis) = Redis::start() else {
        skip_or_fail("redis-server not found");
        return;
    };
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let mut workers = [
        Demo::start(&["worker"], &env),
        Demo::start(&["worker"], &env),
    ];
    for worker in &workers {
        assert!(worker.banner.contains("worker"), "{}", worker.banner);
    }
    let webs = [
        Demo::start(&[], &[env[0], ("DEMO_ROLE", "web")]),
        Demo::start(&["web"], &env),
    ];
    let worker_pids: Vec<u32> = workers.iter().map(Demo::pid).collect();

    for (web, other) in [(&webs[0], &webs[1]), (&webs[1], &webs[0])] {
        let info = support::get(&web.addr(), "/api/info", &[]).json();
        assert_eq!(info["backend"], "redis");
        assert_eq!(info["role"], "web");

        // Start on one web process, poll on the other: the state is in Redis.
        let query = "q=scale&delay_ms=500&fail_rate=0";
        let started = support::get(&web.addr(), &format!("/api/lookup?{query}"), &[]);
        assert_eq!(started.status, 202, "{started:?}");
        let body = started.json();
        let id = body["async_request_id"].as_str().expect("id");
        let token = body["async_request_token"].as_str().expect("token");
        let begun = Instant::now();
        let done = loop {
            let answer = support::get(
                &other.addr(),
                &format!("/api/lookup?{query}"),
                &[
                    ("Async-Request-Id", id),
                    ("Async-Request-Token", token),
                    ("Prefer", "wait=5"),
                ],
            );
            if answer.status != 202 {
                break answer;
            }
            assert!(begun.elapsed() < LONG, "still 202 after {LONG:?}");
        };
        assert_eq!(done.status, 200, "{done:?}");
        let pid = done.json()["worker_pid"].as_u64().expect("worker pid");
        assert!(
            worker_pids.iter().any(|w| u64::from(*w) == pid),
            "ran in a worker process ({pid} not in {worker_pids:?}), not in a web process"
        );

        // A failure crosses processes the same way.
        let failed = support::lookup(&other.addr(), "q=f&delay_ms=200&fail_rate=100", LONG);
        assert_eq!(failed.status, 422, "{failed:?}");
    }

    for worker in &mut workers {
        let status = worker
            .terminate(LONG)
            .expect("the worker exits after SIGTERM");
        assert!(status.success(), "graceful exit: {status:?}");
    }
}
