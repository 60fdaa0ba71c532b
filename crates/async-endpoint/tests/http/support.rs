//! Shared helpers for the HTTP tests: a scriptable task, an app, and a request helper.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_endpoint::{
    AsyncEndpoint, AsyncEndpointBuilder, AsyncRequest, AsyncTask, Failure, RetryPolicy, TaskContext,
};
use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt;

#[cfg(feature = "actix")]
pub use crate::support_actix::{ActixApp, actix_app};

pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

/// What the scripted task should do; every field has a default, so polls parse too.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Script {
    pub text: String,
    pub sleep_ms: u64,
    pub fail: Option<String>,
    pub panic: bool,
    /// Fail this many attempts before succeeding.
    pub fail_attempts: u32,
    /// Report progress 1/2 and then wait for `Scripted::release`.
    pub hold: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Echo {
    pub text: String,
    pub attempt: u32,
}

/// A task driven by its params; it records every run.
#[derive(Clone, Default)]
pub struct Scripted {
    pub runs: Arc<Mutex<Vec<String>>>,
    pub release: Arc<Notify>,
    pub retry: Option<RetryPolicy>,
    pub deadline: Option<Duration>,
}

impl Scripted {
    pub fn runs(&self) -> Vec<String> {
        self.runs.lock().unwrap().clone()
    }
}

impl AsyncTask for Scripted {
    const NAME: &'static str = "scripted";
    type Params = Script;
    type Output = Echo;

    async fn execute_task(&self, s: Script, ctx: TaskContext) -> Result<Echo, Failure> {
        self.runs.lock().unwrap().push(s.text.clone());
        if s.hold {
            ctx.progress(1, Some(2), "waiting for release").await;
            self.release.notified().await;
        }
        if s.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(s.sleep_ms)).await;
        }
        if s.panic {
            panic!("secret panic detail: db password hunter2");
        }
        if ctx.attempt() <= s.fail_attempts {
            return Err(Failure::new(format!("attempt {} failed", ctx.attempt())));
        }
        if let Some(message) = s.fail {
            return Err(Failure::new(message));
        }
        Ok(Echo {
            text: s.text,
            attempt: ctx.attempt(),
        })
    }

    fn retry_policy(&self) -> RetryPolicy {
        self.retry.unwrap_or_default()
    }

    fn deadline(&self) -> Option<Duration> {
        self.deadline
    }
}

/// A second task type, to check tokens are bound to their task.
pub struct Other;

impl AsyncTask for Other {
    const NAME: &'static str = "other";
    type Params = Script;
    type Output = Echo;

    async fn execute_task(&self, s: Script, _ctx: TaskContext) -> Result<Echo, Failure> {
        Ok(Echo {
            text: s.text,
            attempt: 1,
        })
    }
}

pub async fn scripted(request: AsyncRequest<Scripted>, Query(script): Query<Script>) -> Response {
    request
        .init(script)
        .handle(
            |echo| Json(json!({ "text": echo.text, "attempt": echo.attempt })),
            |failure| Json(json!({ "error": failure.message() })),
        )
        .await
}

pub async fn scripted_custom_status(
    request: AsyncRequest<Scripted>,
    Query(script): Query<Script>,
) -> Response {
    request
        .init(script)
        .handle(
            |echo| (StatusCode::CREATED, Json(json!({ "text": echo.text }))),
            |failure| {
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "error": failure.message() })),
                )
            },
        )
        .await
}

pub async fn other(request: AsyncRequest<Other>, Query(script): Query<Script>) -> Response {
    request
        .init(script)
        .handle(
            |echo| Json(json!({ "text": echo.text })),
            |f| Json(json!({ "error": f.message() })),
        )
        .await
}

/// An endpoint with fixed params, so only `AsyncRequest` looks at the query.
pub async fn plain(request: AsyncRequest<Scripted>) -> Response {
    request
        .init(Script {
            text: "plain".into(),
            ..Script::default()
        })
        .handle(
            |echo| Json(json!({ "text": echo.text })),
            |f| Json(json!({ "error": f.message() })),
        )
        .await
}

pub fn builder(task: Scripted) -> AsyncEndpointBuilder {
    AsyncEndpoint::builder()
        .secret(SECRET)
        .task(task)
        .task(Other)
}

pub fn router(endpoint: &AsyncEndpoint) -> Router {
    Router::new()
        .route("/job", get(scripted).post(scripted))
        .route("/custom", get(scripted_custom_status))
        .route("/other", get(other))
        .route("/plain", get(plain))
        .layer(endpoint.layer())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn id(&self) -> String {
        self.json()["async_request_id"].as_str().unwrap().to_owned()
    }

    pub fn token(&self) -> String {
        self.json()["async_request_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// Something the helpers can send a request to: an axum [`Router`] in-process (`oneshot`), or
/// an app served on a real TCP port ([`ActixApp`], feature `actix`).
pub trait Target: Clone + Send + Sync + 'static {
    fn send(&self, request: Request<Body>) -> impl std::future::Future<Output = Answer> + Send;
}

impl Target for Router {
    async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }
}

pub async fn send(app: &impl Target, request: Request<Body>) -> Answer {
    app.send(request).await
}

pub async fn get_uri(app: &impl Target, uri: &str) -> Answer {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// Starts a request on `/job` with a query string.
pub async fn start(app: &impl Target, query: &str) -> Answer {
    let answer = get_uri(app, &format!("/job?{query}")).await;
    assert_eq!(
        answer.status,
        StatusCode::ACCEPTED,
        "start: {}",
        String::from_utf8_lossy(&answer.body)
    );
    answer
}

/// Polls by headers, optionally asking to wait.
pub async fn poll(
    app: &impl Target,
    path: &str,
    id: &str,
    token: &str,
    wait: Option<u64>,
) -> Answer {
    let mut req = Request::get(path)
        .header("async-request-id", id)
        .header("async-request-token", token);
    if let Some(wait) = wait {
        req = req.header("prefer", format!("wait={wait}"));
    }
    send(app, req.body(Body::empty()).unwrap()).await
}

/// Polls with waiting polls until the answer is not 202 (bounded).
pub async fn until_final(app: &impl Target, path: &str, id: &str, token: &str) -> Answer {
    for _ in 0..60 {
        let answer = poll(app, path, id, token, Some(2)).await;
        if answer.status != StatusCode::ACCEPTED {
            return answer;
        }
    }
    panic!("request {id} never finished");
}

pub fn assert_problem(answer: &Answer, status: StatusCode) {
    assert_eq!(
        answer.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    let body = answer.json();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string());
}

pub fn into_response(r: impl IntoResponse) -> Response {
    r.into_response()
}
