//! Push-back over real HTTP, on the memory backend and (feature `redis`) a private redis-server:
//! a start over a pending limit answers 429 problem+json with `Retry-After` and enqueues nothing;
//! other owners are still accepted; the defaults accept dozens of pending requests per owner.

use std::time::Duration;

use async_endpoint::{AsyncEndpoint, AsyncEndpointBuilder};
use test_support::http::{Response, get};

use crate::support::{Scripted, builder, router};

#[derive(Clone, Copy, Debug)]
enum Which {
    Memory,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis,
}

struct Served {
    port: u16,
    endpoint: AsyncEndpoint,
    task: Scripted,
    _redis: Option<test_support::redis::RedisServer>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.release.notify_waiters();
    }
}

/// The support app with an owner from `x-user`, configured by `configure`, on `which` backend;
/// `None` when redis-server is missing (test_support printed SKIPPED, or failed under CI).
async fn serve(
    which: Which,
    configure: impl FnOnce(AsyncEndpointBuilder) -> AsyncEndpointBuilder,
) -> Option<Served> {
    let task = Scripted::default();
    let builder = builder(task.clone()).owner(|parts| {
        parts
            .headers
            .get("x-user")?
            .to_str()
            .ok()
            .map(str::to_owned)
    });
    let (builder, redis) = match which {
        Which::Memory => (builder, None),
        #[cfg(feature = "redis")]
        Which::Redis => {
            let server = test_support::redis::start()?;
            let url = server.url();
            (builder.redis(url), Some(server))
        }
        #[cfg(not(feature = "redis"))]
        Which::Redis => unreachable!("the Redis cases are compiled only with the redis feature"),
    };
    let endpoint = configure(builder).build().unwrap();
    let app = router(&endpoint);
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

async fn start(s: &Served, user: Option<&str>, query: &str) -> Response {
    let headers: Vec<(&str, &str)> = user.map(|u| ("x-user", u)).into_iter().collect();
    get(s.port, &format!("/job?{query}"), &headers)
        .await
        .unwrap()
}

fn assert_accepted(a: &Response) {
    assert_eq!(a.status, 202, "start: {}", a.body);
}

fn assert_too_many_pending(a: &Response) {
    assert_eq!(a.status, 429, "body: {}", a.body);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(a.header("retry-after"), Some("1"));
    let body = a.json();
    assert_eq!(body["status"], 429);
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(
        body["detail"],
        "Too many requests are pending; wait for some to finish, then start again."
    );
    assert!(body.get("async_request_id").is_none());
}

/// Waits (bounded) until the task has started `n` runs.
async fn until_runs(s: &Served, n: usize) {
    for _ in 0..500 {
        if s.task.runs().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the task ran {:?}, expected {n} runs", s.task.runs());
}

async fn owner_limit_answers_429_and_enqueues_nothing(which: Which) {
    let Some(s) = serve(which, |b| {
        b.max_pending_per_owner(3)
            .shutdown_grace(Duration::from_millis(200))
    })
    .await
    else {
        return;
    };
    for i in 0..3 {
        assert_accepted(&start(&s, Some("alice"), &format!("text=a{i}&hold=true")).await);
    }
    // All three are running (held): pending until they finish.
    until_runs(&s, 3).await;
    assert_too_many_pending(&start(&s, Some("alice"), "text=refused&hold=true").await);
    // Another owner, and an anonymous start (no owner, no per-owner limit), are accepted.
    assert_accepted(&start(&s, Some("bob"), "text=b0&hold=true").await);
    assert_accepted(&start(&s, None, "text=anonymous&hold=true").await);
    until_runs(&s, 5).await;
    // Finished requests free their slots (a held task may not be waiting yet: wake again).
    let freed = loop {
        s.task.release.notify_waiters();
        let a = start(&s, Some("alice"), "text=again").await;
        if a.status == 202 {
            break a;
        }
        assert_too_many_pending(&a);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_accepted(&freed);
    until_runs(&s, 6).await;
    let runs = s.task.runs();
    assert!(
        !runs.contains(&"refused".to_owned()),
        "the refused start never ran: {runs:?}"
    );
    assert_eq!(runs.len(), 6, "{runs:?}");
    s.endpoint.shutdown().await;
}

async fn task_limit_answers_429(which: Which) {
    let Some(s) = serve(which, |b| {
        b.max_pending_per_owner(None)
            .max_pending_per_task(2)
            .in_process_workers(false)
    })
    .await
    else {
        return;
    };
    assert_accepted(&start(&s, Some("alice"), "text=1").await);
    assert_accepted(&start(&s, None, "text=2").await);
    assert_too_many_pending(&start(&s, Some("bob"), "text=3").await);
    assert_too_many_pending(&start(&s, None, "text=4").await);
}

async fn defaults_accept_dozens_of_pending_requests_per_owner(which: Which) {
    // No workers: every request stays pending.
    let Some(s) = serve(which, |b| b.in_process_workers(false)).await else {
        return;
    };
    for i in 0..50 {
        assert_accepted(&start(&s, Some("alice"), &format!("text={i}")).await);
    }
    // The default limit (200) is there, far above that.
    for i in 50..200 {
        assert_accepted(&start(&s, Some("alice"), &format!("text={i}")).await);
    }
    assert_too_many_pending(&start(&s, Some("alice"), "text=201").await);
    assert_accepted(&start(&s, Some("bob"), "text=1").await);
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
    owner_limit_answers_429_and_enqueues_nothing,
    task_limit_answers_429,
    defaults_accept_dozens_of_pending_requests_per_owner,
);
