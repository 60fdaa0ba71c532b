//! The event stream across web processes: a request started through one endpoint (one web
//! process, its own Redis connections and subscription) is followed over a stream opened on
//! another, which sees its state first and then its changes, announced through Redis pub/sub.

use std::sync::Arc;
use std::time::Duration;

use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt;

const SECRET: &[u8] = b"redis stream test secret, 32 bytes or more";
const LONG: Duration = Duration::from_secs(20);

/// Reports progress 1/2, then holds until released.
#[derive(Clone)]
struct Gated(Arc<Notify>);

impl AsyncTask for Gated {
    const NAME: &'static str = "gated";
    type Params = ();
    type Output = String;

    async fn execute_task(&self, (): (), ctx: TaskContext) -> Result<String, Failure> {
        ctx.progress(1, Some(2), "half way").await;
        self.0.notified().await;
        Ok("done".into())
    }
}

async fn gated(request: AsyncRequest<Gated>) -> Response {
    request
        .init(())
        .handle(Json, |f| Json(f.message().to_owned()))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_web_process_follows_a_request_started_on_another() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let release = Arc::new(Notify::new());
    let endpoint = |workers: bool| {
        AsyncEndpoint::builder()
            .secret(SECRET)
            .redis(server.url())
            .task(Gated(release.clone()))
            .in_process_workers(workers)
            .build()
            .unwrap()
    };
    // Web process A starts requests and runs the workers; web process B only serves the stream.
    let (a, b) = (endpoint(true), endpoint(false));
    let app = |e: &AsyncEndpoint| Router::new().route("/gated", get(gated)).layer(e.layer());
    let (app_a, app_b) = (app(&a), app(&b));

    let started = app_a
        .clone()
        .oneshot(Request::get("/gated").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let started: Value =
        serde_json::from_slice(&started.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let id = started["async_request_id"].as_str().unwrap().to_owned();
    let body = json!({ "requests": [{
        "async_request_id": id,
        "async_request_token": started["async_request_token"],
    }]});
    let response = app_b
        .oneshot(
            Request::post("/async-endpoint/stream")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = String::new();
    let mut released = false;
    loop {
        let frame = tokio::time::timeout(LONG, body.frame())
            .await
            .expect("the stream stalled")
            .expect("the stream ended before finished")
            .unwrap();
        text.push_str(std::str::from_utf8(&frame.into_data().unwrap()).unwrap());
        // Let the job finish only once B showed its progress: the finish is then a change B
        // learns from Redis.
        if !released && text.contains(r#""progress":{"at":1"#) {
            release.notify_one();
            released = true;
        }
        if text.contains("event: finished") {
            break;
        }
    }
    assert!(released, "B saw the progress before the finish: {text}");
    assert!(
        text.contains(&format!(
            r#"event: finished
data: {{"async_request_id":"{id}","status":"done""#
        )),
        "{text}"
    );
    a.shutdown().await;
    b.shutdown().await;
}
