//! The README's scale-out setup, for real: a private `redis-server`, two web-only demo processes
//! and two worker-only ones. A request started on one web process is polled to its end on the
//! other, and runs in a worker process; workers stop gracefully on SIGTERM.
//!
//! Skips loudly without `redis-server` (fails when `CI=true`).

mod support;

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use support::Demo;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn two_web_processes_and_two_workers() {
    let Some(redis) = test_support::redis::start() else {
        return;
    };
    let url = redis.url();
    // The processes share one key, made by this test (as a deployment would from its secret store).
    let random = std::collections::hash_map::RandomState::new();
    let secret = format!(
        "demo-redis-test-{:016x}{:016x}",
        random.hash_one(1u8),
        random.hash_one(2u8)
    );
    let env = [("REDIS_URL", url.as_str()), ("SECRET", secret.as_str())];
    let mut workers = [
        Demo::start(&["worker"], &env),
        Demo::start(&["worker"], &env),
    ];
    for worker in &workers {
        assert!(worker.banner.contains("worker"), "{}", worker.banner);
    }
    let webs = [
        Demo::start(&[], &[env[0], env[1], ("DEMO_ROLE", "web")]),
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
