//! A task that blocks its thread (as a blocking SDK call would) must not stall the app: tasks
//! run on a runtime of their own. The app here is a current-thread runtime, so if the task ran on
//! it, no poll could be answered until the task stopped blocking.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Bound for what takes milliseconds when the machine is idle; generous for a loaded one.
const LONG: Duration = Duration::from_secs(60);

/// Blocks its thread until released (or the test ends: the sender is then dropped).
#[derive(Clone)]
struct Blocking {
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl AsyncTask for Blocking {
    const NAME: &'static str = "blocking";
    type Params = ();
    type Output = String;

    async fn execute_task(&self, _: (), ctx: TaskContext) -> Result<String, Failure> {
        ctx.progress(0, Some(1), "blocking").await;
        let released = self.release.lock().unwrap().recv().is_ok();
        Ok(if released {
            "released"
        } else {
            "sender dropped"
        }
        .to_owned())
    }
}

async fn blocking(request: AsyncRequest<Blocking>) -> Response {
    request
        .init(())
        .handle(Json, |f| Json(f.message().to_owned()))
        .await
}

async fn call(app: &Router, id: Option<(&str, &str)>) -> (StatusCode, serde_json::Value) {
    let mut request = Request::get("/blocking");
    if let Some((id, token)) = id {
        request = request
            .header("async-request-id", id)
            .header("async-request-token", token);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn a_blocking_task_does_not_stall_the_app() {
    let (tx, rx) = mpsc::channel();
    let task = Blocking {
        release: Arc::new(Mutex::new(rx)),
    };
    let endpoint = AsyncEndpoint::builder()
        .secret([3u8; 32])
        .task(task)
        .task_threads(1)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/blocking", get(blocking))
        .layer(endpoint.layer());
    let (status, body) = call(&app, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = body["async_request_id"].as_str().unwrap().to_owned();
    let token = body["async_request_token"].as_str().unwrap().to_owned();
    // Poll until the task reports that it is blocking; every poll is answered meanwhile.
    let started = Instant::now();
    loop {
        let (status, body) = call(&app, Some((&id, &token))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        if body["progress"]["message"] == "blocking" {
            break;
        }
        assert!(started.elapsed() < LONG, "the task never started: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The task is now blocked in `recv_timeout`; the app still answers, and timers still fire.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (status, body) = call(&app, Some((&id, &token))).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["status"], "running");
    }
    tx.send(()).unwrap();
    let released = Instant::now();
    let last = loop {
        let last = call(&app, Some((&id, &token))).await;
        if last.0 != StatusCode::ACCEPTED || released.elapsed() > LONG {
            break last;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(last, (StatusCode::OK, serde_json::json!("released")));
}
