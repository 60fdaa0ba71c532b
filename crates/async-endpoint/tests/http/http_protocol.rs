//! The wire protocol over HTTP (axum `oneshot`, and actix-web over TCP: see `on_actix`), on the
//! embedded default backend.

use super::support;

use std::time::{Duration, Instant};

use async_endpoint::RetryPolicy;
use axum::body::Body;
use http::{Request, StatusCode};
use support::*;

#[tokio::test]
async fn start_answers_202_with_the_protocol_body() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let a = get_uri(&app, "/job?text=hi&hold=true").await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    let body = a.json();
    let id = body["async_request_id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(body["async_request_token"].as_str().unwrap().len(), 55);
    assert_eq!(body["status"], "queued");
    assert!(body["progress"].is_null());
    assert_eq!(body.as_object().unwrap().len(), 4);
}

#[tokio::test]
async fn ids_are_random_and_distinct() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..50 {
        assert!(ids.insert(start(&app, "text=x").await.id()));
    }
}

#[tokio::test]
async fn poll_by_headers_reaches_done() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "text=hello").await;
    let done = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(
        done.json(),
        serde_json::json!({"text": "hello", "attempt": 1})
    );
    assert_eq!(done.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn poll_by_query_params_reaches_done() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "text=query").await;
    let uri = format!(
        "/job?async_request_id={}&async_request_token={}",
        a.id(),
        a.token()
    );
    let mut last = None;
    for _ in 0..200 {
        let p = get_uri(&app, &uri).await;
        if p.status != StatusCode::ACCEPTED {
            last = Some(p);
            break;
        }
        let body = p.json();
        assert_eq!(body["async_request_id"], a.id().as_str());
        assert!(["queued", "running"].contains(&body["status"].as_str().unwrap()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = last.expect("finished");
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(last.json()["text"], "query");
}

#[tokio::test]
async fn failure_is_422_with_the_tasks_message() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "fail=My+custom+error+message").await;
    let f = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(f.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        f.json(),
        serde_json::json!({"error": "My custom error message"})
    );
}

#[tokio::test]
async fn done_and_failed_may_set_their_own_status() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let ok = get_uri(&app, "/custom?text=c").await;
    let f = get_uri(&app, "/custom?fail=nope").await;
    let ok = until_final(&app, "/custom", &ok.id(), &ok.token()).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let f = until_final(&app, "/custom", &f.id(), &f.token()).await;
    assert_eq!(f.status, StatusCode::BAD_REQUEST);
    assert_eq!(f.json()["error"], "nope");
}

#[tokio::test]
async fn a_panic_becomes_a_generic_failure_without_details() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "panic=true").await;
    let f = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(f.status, StatusCode::UNPROCESSABLE_ENTITY);
    let text = String::from_utf8_lossy(&f.body);
    assert!(
        !text.contains("hunter2") && !text.contains("panic"),
        "leaked: {text}"
    );
    assert_eq!(
        f.json()["error"],
        "The request could not be completed because of an internal error."
    );
    // The worker survived the panic: the next request still completes.
    let b = start(&app, "text=after").await;
    assert_eq!(
        until_final(&app, "/job", &b.id(), &b.token()).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn generic_messages_are_configurable() {
    let endpoint = builder(Scripted::default())
        .internal_error_message("Oops, try again")
        .build()
        .unwrap();
    let app = router(&endpoint);
    let a = start(&app, "panic=true").await;
    let f = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(f.json()["error"], "Oops, try again");
}

#[tokio::test]
async fn progress_shows_in_the_202_body_and_wakes_waiting_polls() {
    let task = Scripted::default();
    let endpoint = builder(task.clone()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "hold=true&text=p").await;
    // A waiting poll returns as soon as something changes (running, then progress).
    let mut body = serde_json::Value::Null;
    for _ in 0..10 {
        let p = poll(&app, "/job", &a.id(), &a.token(), Some(5)).await;
        assert_eq!(p.status, StatusCode::ACCEPTED);
        body = p.json();
        if !body["progress"].is_null() {
            break;
        }
    }
    assert_eq!(
        body["progress"],
        serde_json::json!({"at": 1, "total": 2, "percent": 50, "message": "waiting for release"})
    );
    assert_eq!(body["status"], "running");
    task.release.notify_one();
    let done = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(done.status, StatusCode::OK);
}

#[tokio::test]
async fn waiting_poll_returns_when_the_request_finishes() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "sleep_ms=300&text=w").await;
    let started = Instant::now();
    let mut p = poll(&app, "/job", &a.id(), &a.token(), Some(20)).await;
    // It may first return for the queued→running change; the next one returns with the result.
    while p.status == StatusCode::ACCEPTED {
        assert_eq!(p.header("preference-applied"), Some("wait=20"));
        p = poll(&app, "/job", &a.id(), &a.token(), Some(20)).await;
    }
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(p.header("preference-applied"), Some("wait=20"));
    // Far below the 20 s bound: it was woken, not timed out (loose bound for slow machines).
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn waiting_poll_is_capped_by_max_wait() {
    let endpoint = builder(Scripted::default())
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let app = router(&endpoint);
    let a = start(&app, "hold=true").await;
    // Let it reach its steady state (running with progress) first.
    for _ in 0..100 {
        let p = poll(&app, "/job", &a.id(), &a.token(), Some(1)).await;
        if !p.json()["progress"].is_null() {
            break;
        }
    }
    let started = Instant::now();
    let p = poll(&app, "/job", &a.id(), &a.token(), Some(600)).await;
    assert_eq!(p.status, StatusCode::ACCEPTED);
    assert_eq!(p.header("preference-applied"), Some("wait=1"));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn waiting_polls_can_be_disabled() {
    let endpoint = builder(Scripted::default())
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let app = router(&endpoint);
    let a = start(&app, "hold=true").await;
    let p = poll(&app, "/job", &a.id(), &a.token(), Some(10)).await;
    assert_eq!(p.status, StatusCode::ACCEPTED);
    assert_eq!(p.header("preference-applied"), None);
}

/// A start with `Prefer: wait=N` on `/job`.
async fn start_waiting(app: &impl Target, query: &str, wait: u64) -> Answer {
    let request = Request::get(format!("/job?{query}"))
        .header("prefer", format!("wait={wait}"))
        .body(Body::empty())
        .unwrap();
    send(app, request).await
}

#[tokio::test]
async fn a_start_that_asks_to_wait_gets_a_fast_job_done_in_one_round_trip() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let a = start_waiting(&app, "sleep_ms=300&text=fast", 25).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["text"], "fast");
    assert_eq!(a.header("preference-applied"), Some("wait=25"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    // A failure is final too: the app's `failed` renders it, 422.
    let f = start_waiting(&app, "fail=nope", 25).await;
    assert_eq!(f.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(f.json()["error"], "nope");
    assert_eq!(f.header("preference-applied"), Some("wait=25"));
}

#[tokio::test]
async fn a_start_that_outlasts_its_wait_answers_202_with_its_credentials() {
    let task = Scripted::default();
    let endpoint = builder(task.clone())
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let app = router(&endpoint);
    // Asks for 600 s: held for max_wait (1 s), then the usual 202 with the latest status.
    let a = start_waiting(&app, "hold=true&text=slow", 600).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.header("preference-applied"), Some("wait=1"));
    assert_eq!(a.header("retry-after"), Some("1"));
    let body = a.json();
    assert!(
        ["queued", "running"].contains(&body["status"].as_str().unwrap()),
        "{body}"
    );
    // Its id and token are the request's: it runs once and is polled to its end.
    task.release.notify_one();
    let done = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(done.json()["text"], "slow");
    assert_eq!(task.runs(), vec!["slow".to_owned()]);
}

#[tokio::test]
async fn a_start_that_asks_to_wait_is_not_held_when_waiting_is_disabled() {
    let endpoint = builder(Scripted::default())
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let app = router(&endpoint);
    let a = start_waiting(&app, "hold=true", 10).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.header("preference-applied"), None);
}

#[tokio::test]
async fn deadline_turns_an_unfinished_request_into_a_timeout() {
    let task = Scripted {
        deadline: Some(Duration::from_millis(300)),
        ..Scripted::default()
    };
    let endpoint = builder(task).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "sleep_ms=60000").await;
    let f = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(f.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(f.json()["error"], "The request did not finish in time.");
}

#[tokio::test]
async fn a_job_picked_up_after_its_deadline_does_not_run() {
    let task = Scripted {
        deadline: Some(Duration::from_millis(300)),
        ..Scripted::default()
    };
    // No worker yet: the job waits in the queue past its deadline, unpolled.
    let endpoint = builder(task.clone())
        .in_process_workers(false)
        .concurrency(1)
        .build()
        .unwrap();
    let app = router(&endpoint);
    let late = start(&app, "text=late").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            endpoint
                .run_worker(async {
                    let _ = stopped.await;
                })
                .await;
        })
    };
    // With one slot, jobs run in queue order: once the later `other` job is done (its deadline is
    // the default 60 s), the late job was handled before it.
    let fresh = get_uri(&app, "/other?text=fresh").await;
    let fresh = until_final(&app, "/other", &fresh.id(), &fresh.token()).await;
    assert_eq!(
        fresh.status,
        StatusCode::OK,
        "the worker runs jobs within their deadline"
    );
    assert!(
        task.runs().is_empty(),
        "the late job ran: {:?}",
        task.runs()
    );
    let f = poll(&app, "/job", &late.id(), &late.token(), None).await;
    assert_eq!(f.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(f.json()["error"], "The request did not finish in time.");
    let _ = stop.send(());
    worker.await.unwrap();
}

#[tokio::test]
async fn retries_show_retrying_and_succeed() {
    let task = Scripted {
        retry: Some(
            RetryPolicy::attempts(3).backoff(Duration::from_millis(300), Duration::from_secs(1)),
        ),
        ..Scripted::default()
    };
    // What a poll reads the moment each retry is recorded: the window between attempts is only
    // the backoff, which a client's polls may miss on a busy machine, so the check is made where
    // it cannot be missed.
    let backend = SeesRetrying::default();
    let endpoint = builder(task.clone())
        .backend(backend.clone())
        .build()
        .unwrap();
    let app = router(&endpoint);
    let a = start(&app, "text=r&fail_attempts=2").await;
    let last = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(last.status, StatusCode::OK);
    assert_eq!(last.json()["attempt"], 3);
    assert_eq!(
        backend.seen(),
        ["retrying", "retrying"],
        "after each failed attempt a poll reads `retrying`"
    );
    assert_eq!(task.runs().len(), 3);
}

/// The memory backend, recording what a poll reads right after each `Update::Retrying`.
#[derive(Clone, Default)]
struct SeesRetrying {
    inner: async_endpoint::backend::MemoryBackend,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl SeesRetrying {
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

mod sees_retrying {
    use super::SeesRetrying;
    use async_endpoint::backend::{
        Backend, Begin, Created, Job, NewRequest, Outcome, Snapshot, Update, Watch,
    };
    use async_endpoint::{Error, RequestId, Status};
    use std::time::Duration;

    impl Backend for SeesRetrying {
        async fn create(&self, request: NewRequest) -> Result<Created, Error> {
            self.inner.create(request).await
        }
        async fn poll(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
            self.inner.poll(id, now_ms).await
        }
        fn watch(&self, id: RequestId) -> Watch {
            self.inner.watch(id)
        }
        async fn fetch(
            &self,
            tasks: &[&'static str],
            max: usize,
            block: Duration,
        ) -> Result<Vec<Job>, Error> {
            self.inner.fetch(tasks, max, block).await
        }
        async fn begin(&self, job: &Job, now_ms: u64) -> Result<Begin, Error> {
            self.inner.begin(job, now_ms).await
        }
        async fn update(&self, id: RequestId, update: Update) -> Result<(), Error> {
            let retrying = update == Update::Retrying;
            self.inner.update(id, update).await?;
            if retrying {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let status = self
                    .inner
                    .poll(id, now)
                    .await?
                    .map_or("gone", |s| s.status.as_str());
                self.seen.lock().unwrap().push(status.to_owned());
            }
            Ok(())
        }
        async fn finish(&self, job: &Job, outcome: Outcome, now_ms: u64) -> Result<Status, Error> {
            self.inner.finish(job, outcome, now_ms).await
        }
        async fn release(&self, job: &Job) -> Result<(), Error> {
            self.inner.release(job).await
        }
        async fn cancel(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
            self.inner.cancel(id, now_ms).await
        }
    }
}

#[tokio::test]
async fn retries_exhausted_fail_with_the_last_message() {
    let task = Scripted {
        retry: Some(
            RetryPolicy::attempts(2).backoff(Duration::from_millis(50), Duration::from_millis(50)),
        ),
        ..Scripted::default()
    };
    let endpoint = builder(task.clone()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "fail_attempts=5").await;
    let f = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(f.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(f.json()["error"], "attempt 2 failed");
    assert_eq!(task.runs().len(), 2);
}

#[tokio::test]
async fn no_retries_by_default() {
    let task = Scripted::default();
    let endpoint = builder(task.clone()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "fail_attempts=1").await;
    let f = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(f.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(task.runs().len(), 1);
}

#[tokio::test]
async fn fifty_concurrent_polls_agree_on_the_outcome() {
    let task = Scripted::default();
    let endpoint = builder(task.clone()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "hold=true&text=race").await;
    let (id, token) = (a.id(), a.token());
    let mut polls = Vec::new();
    for i in 0..50 {
        let (app, id, token) = (app.clone(), id.clone(), token.clone());
        polls.push(tokio::spawn(async move {
            let wait = if i % 2 == 0 { Some(5) } else { None };
            let mut answers = Vec::new();
            let give_up = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < give_up {
                let p = poll(&app, "/job", &id, &token, wait).await;
                let done = p.status != StatusCode::ACCEPTED;
                answers.push((p.status, p.body));
                if done {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    task.release.notify_one();
    let mut finals = Vec::new();
    for p in polls {
        let answers = p.await.unwrap();
        let (status, body) = answers.last().unwrap().clone();
        for (s, _) in &answers {
            assert!(
                *s == StatusCode::ACCEPTED || *s == StatusCode::OK,
                "unexpected {s}"
            );
        }
        finals.push((status, body));
    }
    assert!(finals.iter().all(|f| f == &finals[0]), "every poll agrees");
    assert_eq!(finals[0].0, StatusCode::OK);
    assert_eq!(task.runs().len(), 1, "polls never enqueue again");
}

#[tokio::test]
async fn post_endpoints_poll_the_same_way() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let a = send(
        &app,
        Request::post("/job?text=posted")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let req = Request::post("/job")
        .header("async-request-id", a.id())
        .header("async-request-token", a.token())
        .header("prefer", "wait=5")
        .body(Body::empty())
        .unwrap();
    let mut p = send(&app, req).await;
    while p.status == StatusCode::ACCEPTED {
        p = poll(&app, "/job", &a.id(), &a.token(), Some(5)).await;
    }
    assert_eq!(p.json()["text"], "posted");
}

#[tokio::test]
async fn graceful_shutdown_lets_running_tasks_finish() {
    let task = Scripted::default();
    let endpoint = builder(task.clone()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "sleep_ms=300&text=s").await;
    // Wait until it runs (the task records its run first), then shut down: the task must still
    // complete. (Not by a waiting poll: over TCP the job may already run when the poll arrives,
    // and then the poll waits for the next change.)
    while task.runs().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    endpoint.shutdown().await;
    let p = poll(&app, "/job", &a.id(), &a.token(), None).await;
    assert_eq!(p.status, StatusCode::OK);
    // After shutdown, new requests stay queued (no worker) but polling still answers.
    let b = start(&app, "text=later").await;
    let p = poll(&app, "/job", &b.id(), &b.token(), Some(1)).await;
    assert_eq!(p.status, StatusCode::ACCEPTED);
    assert_eq!(p.json()["status"], "queued");
}

#[tokio::test]
async fn the_js_client_is_served_with_an_etag() {
    let app = axum::Router::new().route(
        async_endpoint::js::PATH,
        axum::routing::get(async_endpoint::js::serve),
    );
    let a = get_uri(&app, "/async_endpoint.js").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(a.header("cache-control"), Some("no-cache"));
    assert_eq!(a.body, async_endpoint::js::SOURCE.as_bytes());
    let etag = a.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10);
    let again = send(
        &app,
        Request::get("/async_endpoint.js")
            .header("if-none-match", &etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    let stale = send(
        &app,
        Request::get("/async_endpoint.js")
            .header("if-none-match", "\"other\"")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(stale.status, StatusCode::OK);
}
