//! The event stream over HTTP: a 202 names it in a `Link` header; a `POST` with the ids and
//! tokens of many requests gets every request's state first, then its changes, then `finished`;
//! every kind of bad credential gets the same `not_found`; a bad body is a problem document; the
//! stream ends after its lifetime (the client reconnects) and sends heartbeats meanwhile.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{Scripted, assert_problem, builder, router, send, start};

const LONG: Duration = Duration::from_secs(20);

/// An open stream, read event by event.
struct Events {
    body: Body,
    buffer: String,
}

impl Events {
    async fn open(app: &Router, requests: Value) -> Events {
        let request = Request::post("/async-endpoint/stream")
            .header("content-type", "application/json")
            .body(Body::from(json!({ "requests": requests }).to_string()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "an event stream"
        );
        assert_eq!(response.headers()["cache-control"], "no-store");
        Events {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next block (event or comment), or `None` when the stream ended.
    async fn block(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block = self.buffer[..end].to_owned();
                self.buffer.drain(..end + 2);
                return Some(block);
            }
            let frame = tokio::time::timeout(LONG, self.body.frame())
                .await
                .expect("the stream stalled")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next event (comments and `retry:` skipped): its name and data.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            let block = self.block().await?;
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                }
                if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(d).unwrap());
                }
            }
            if let (Some(name), Some(data)) = (name, data) {
                return Some((name, data));
            }
        }
    }
}

fn entry(id: &str, token: &str) -> Value {
    json!({ "async_request_id": id, "async_request_token": token })
}

#[tokio::test]
async fn a_202_names_the_stream_in_a_link_header() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let started = start(&app, "hold=true").await;
    assert_eq!(
        started.header("link"),
        Some(r#"</async-endpoint/stream>; rel="async-endpoint-stream""#)
    );
}

#[tokio::test]
async fn one_stream_follows_many_requests_state_first_then_changes_then_finished() {
    let task = Scripted::default();
    let endpoint = builder(task.clone()).build().unwrap();
    let app = router(&endpoint);
    let held = start(&app, "hold=true&text=a").await;
    let quick = start(&app, "sleep_ms=50&text=b").await;
    let mut events = Events::open(
        &app,
        json!([
            entry(&held.id(), &held.token()),
            entry(&quick.id(), &quick.token())
        ]),
    )
    .await;
    let mut finished = Vec::new();
    let mut held_states = Vec::new();
    let mut released = false;
    while finished.len() < 2 {
        let (name, data) = events.next().await.expect("the stream ended early");
        let id = data["async_request_id"].as_str().unwrap().to_owned();
        match name.as_str() {
            "state" => {
                assert!(!finished.contains(&id), "no state after finished");
                if id == held.id() {
                    // Once the held task reported its progress, let it go (a stored permit,
                    // should it not wait yet).
                    if data["progress"]["at"] == 1 && !released {
                        task.release.notify_one();
                        released = true;
                    }
                    held_states.push(data.clone());
                }
            }
            "finished" => {
                assert_eq!(data["status"], "done");
                finished.push(id);
            }
            other => panic!("unexpected event {other}: {data}"),
        }
    }
    assert!(!held_states.is_empty(), "its state came first");
    assert_eq!(held_states[0]["async_request_id"], held.id());
    // Every request finished: the stream ends.
    assert_eq!(events.next().await, None);
}

#[tokio::test]
async fn every_kind_of_bad_credential_gets_the_same_not_found() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let other_endpoint = builder(Scripted::default())
        .secret(b"another-secret-of-at-least-32-bytes!!")
        .build()
        .unwrap();
    let app = router(&endpoint);
    let good = start(&app, "hold=true").await;
    let foreign = start(&router(&other_endpoint), "hold=true").await;
    let cases = [
        entry("not-an-id", &good.token()),
        entry(&good.id(), "not-a-token"),
        entry(&foreign.id(), &foreign.token()),
        entry(&foreign.id(), &good.token()),
    ];
    let mut events = Events::open(&app, Value::Array(cases.to_vec())).await;
    let mut seen = Vec::new();
    while let Some((name, data)) = events.next().await {
        assert_eq!(name, "not_found");
        assert_eq!(
            data.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["async_request_id"],
            "nothing but the id"
        );
        seen.push(data["async_request_id"].as_str().unwrap().to_owned());
    }
    seen.sort();
    let mut expected: Vec<String> = cases
        .iter()
        .map(|c| c["async_request_id"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_bad_stream_request_is_a_problem() {
    let endpoint = builder(Scripted::default())
        .stream_max_requests(2)
        .build()
        .unwrap();
    let app = router(&endpoint);
    let post = |body: String| {
        Request::post("/async-endpoint/stream")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let answer = send(&app, post("not json".into())).await;
    assert_problem(&answer, StatusCode::BAD_REQUEST);
    let answer = send(&app, post(json!({"requests": 3}).to_string())).await;
    assert_problem(&answer, StatusCode::BAD_REQUEST);
    let three = json!({"requests": [entry("a", "b"), entry("c", "d"), entry("e", "f")]});
    let answer = send(&app, post(three.to_string())).await;
    assert_problem(&answer, StatusCode::PAYLOAD_TOO_LARGE);
    let huge = "x".repeat(1 << 20);
    let answer = send(&app, post(huge)).await;
    assert_problem(&answer, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_stream_sends_heartbeats_and_ends_after_its_lifetime() {
    let endpoint = builder(Scripted::default())
        .stream_heartbeat(Duration::from_millis(100))
        .stream_lifetime(Duration::from_secs(1))
        .build()
        .unwrap();
    let app = router(&endpoint);
    let held = start(&app, "hold=true").await;
    let mut events = Events::open(&app, json!([entry(&held.id(), &held.token())])).await;
    let mut blocks = Vec::new();
    while let Some(block) = events.block().await {
        blocks.push(block);
    }
    assert!(blocks[0].starts_with("retry: "), "{blocks:?}");
    assert!(blocks.iter().any(|b| b == ": heartbeat"), "{blocks:?}");
    assert!(
        blocks.last().unwrap().starts_with("event: reconnect"),
        "{blocks:?}"
    );
}
