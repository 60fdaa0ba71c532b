//! Cancellation over HTTP: `DELETE` with a request's id and token (headers or query), answered by
//! the layer even where the app routes only `GET`. A running task is dropped at its next await,
//! or told through `ctx.cancelled()` and left to clean up; a queued one never runs; a finished
//! one answers 409 and keeps its result; bad credentials get the poll's 404.

use std::sync::Arc;
use std::time::Duration;

use async_endpoint::{
    AsyncEndpoint, AsyncEndpointBuilder, AsyncRequest, AsyncTask, Failure, RetryPolicy, TaskContext,
};
use axum::body::Body;
use axum::extract::Query;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use http::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::support::{Answer, Other, assert_problem, other, poll, send};

const LONG: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Plan {
    /// Names the run in the events.
    name: String,
    /// Wait forever (until dropped).
    hold: bool,
    /// Watch `ctx.cancelled()`, then clean up and return.
    cleanup: bool,
    /// Fail (to be retried).
    fail: bool,
}

/// A task whose runs report what happens to them: `name started`, `name cleaned up`,
/// `name dropped` (its future was dropped, whether aborted or ended).
#[derive(Clone)]
struct Stoppable {
    events: Arc<watch::Sender<Vec<String>>>,
}

impl Stoppable {
    fn new() -> Self {
        Stoppable {
            events: Arc::new(watch::Sender::new(Vec::new())),
        }
    }

    fn events(&self) -> Vec<String> {
        self.events.borrow().clone()
    }

    /// Waits (bounded) until `event` has happened.
    async fn happened(&self, event: &str) {
        let mut rx = self.events.subscribe();
        tokio::time::timeout(LONG, rx.wait_for(|e| e.iter().any(|x| x == event)))
            .await
            .unwrap_or_else(|_| panic!("{event:?} never happened: {:?}", self.events()))
            .unwrap();
    }
}

fn push(events: &watch::Sender<Vec<String>>, event: String) {
    events.send_modify(|e| e.push(event));
}

/// Records `name dropped` when the task's future is dropped.
struct DropGuard(Arc<watch::Sender<Vec<String>>>, String);

impl Drop for DropGuard {
    fn drop(&mut self) {
        push(&self.0, format!("{} dropped", self.1));
    }
}

impl AsyncTask for Stoppable {
    const NAME: &'static str = "stoppable";
    type Params = Plan;
    type Output = String;

    async fn execute_task(&self, plan: Plan, ctx: TaskContext) -> Result<String, Failure> {
        let _guard = DropGuard(self.events.clone(), plan.name.clone());
        push(&self.events, format!("{} started", plan.name));
        if plan.fail {
            return Err(Failure::new("try again"));
        }
        if plan.cleanup {
            ctx.cancelled().await;
            assert!(ctx.is_cancelled());
            push(&self.events, format!("{} cleaned up", plan.name));
            return Ok("ignored".into());
        }
        if plan.hold {
            std::future::pending::<()>().await;
        }
        Ok(plan.name)
    }

    fn retry_policy(&self) -> RetryPolicy {
        // A long wait between attempts: a test that gets past it quickly saw it end on cancel.
        RetryPolicy::attempts(2).backoff(Duration::from_secs(30), Duration::from_secs(30))
    }
}

async fn stoppable(request: AsyncRequest<Stoppable>, Query(plan): Query<Plan>) -> Response {
    request
        .init(plan)
        .handle(Json, |failure| {
            Json(json!({ "error": failure.message(), "kind": format!("{:?}", failure.kind()) }))
        })
        .await
}

fn builder(task: &Stoppable) -> AsyncEndpointBuilder {
    AsyncEndpoint::builder()
        .secret(crate::support::SECRET)
        .task(task.clone())
        .task(Other)
        .owner(|parts| {
            parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

/// The app: `GET` only, as in the README's quick start, plus a route with a `DELETE` of its own.
fn app(endpoint: &AsyncEndpoint) -> Router {
    Router::new()
        .route("/stop", get(stoppable))
        .route("/other", get(other))
        .route(
            "/own",
            get(stoppable).delete(|| async { "the app's own DELETE" }),
        )
        .layer(endpoint.layer())
}

async fn start(app: &Router, query: &str) -> Answer {
    let answer = send(
        app,
        Request::get(format!("/stop?{query}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    answer
}

async fn delete(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::delete(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    send(app, request.body(Body::empty()).unwrap()).await
}

async fn cancel(app: &Router, id: &str, token: &str) -> Answer {
    delete(
        app,
        "/stop",
        &[("async-request-id", id), ("async-request-token", token)],
    )
    .await
}

fn assert_cancel_accepted(answer: &Answer, id: &str) {
    assert_eq!(
        answer.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let body = answer.json();
    assert_eq!(body["async_request_id"], id);
    assert_eq!(body["status"], "failed");
    assert_eq!(answer.header("cache-control"), Some("no-store"));
}

/// Polls once more and expects the cancelled failure (422, kind `Cancelled`).
async fn assert_polls_cancelled(app: &Router, id: &str, token: &str) {
    let polled = poll(app, "/stop", id, token, None).await;
    assert_eq!(polled.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        polled.json(),
        json!({ "error": "The request was cancelled.", "kind": "Cancelled" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_on_a_get_only_route_drops_the_running_task() {
    let task = Stoppable::new();
    let endpoint = builder(&task).build().unwrap();
    let app = app(&endpoint);
    let started = start(&app, "name=a&hold=true").await;
    task.happened("a started").await;
    let answer = cancel(&app, &started.id(), &started.token()).await;
    assert_cancel_accepted(&answer, &started.id());
    // The task's future is dropped at its await, without cleaning up.
    task.happened("a dropped").await;
    assert_eq!(task.events(), ["a started", "a dropped"]);
    assert_polls_cancelled(&app, &started.id(), &started.token()).await;
    // A DELETE is idempotent: again, the same 202.
    let again = cancel(&app, &started.id(), &started.token()).await;
    assert_cancel_accepted(&again, &started.id());
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_watching_cancelled_cleans_up_before_it_ends() {
    let task = Stoppable::new();
    let endpoint = builder(&task).build().unwrap();
    let app = app(&endpoint);
    let started = start(&app, "name=b&cleanup=true").await;
    task.happened("b started").await;
    let answer = cancel(&app, &started.id(), &started.token()).await;
    assert_cancel_accepted(&answer, &started.id());
    task.happened("b dropped").await;
    assert_eq!(
        task.events(),
        ["b started", "b cleaned up", "b dropped"],
        "it ran to its end"
    );
    // What it returned after cleaning up is ignored: the request stands cancelled.
    assert_polls_cancelled(&app, &started.id(), &started.token()).await;
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_cancelled_at_once_and_never_runs() {
    let task = Stoppable::new();
    let endpoint = builder(&task).concurrency(1).build().unwrap();
    let app = app(&endpoint);
    // The only worker slot is taken, so the next request stays queued.
    let first = start(&app, "name=first&hold=true").await;
    task.happened("first started").await;
    let queued = start(&app, "name=queued").await;
    let answer = cancel(&app, &queued.id(), &queued.token()).await;
    assert_cancel_accepted(&answer, &queued.id());
    assert_polls_cancelled(&app, &queued.id(), &queued.token()).await;
    // Free the slot: the queue goes on in order, and the cancelled job is skipped.
    let last = start(&app, "name=last").await;
    cancel(&app, &first.id(), &first.token()).await;
    let done = crate::support::until_final(&app, "/stop", &last.id(), &last.token()).await;
    assert_eq!(done.status, StatusCode::OK);
    assert!(
        !task.events().iter().any(|e| e.starts_with("queued")),
        "the cancelled request never ran: {:?}",
        task.events()
    );
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_the_wait_between_attempts() {
    let task = Stoppable::new();
    let endpoint = builder(&task).concurrency(1).build().unwrap();
    let app = app(&endpoint);
    let retrying = start(&app, "name=r&fail=true").await;
    let until = tokio::time::Instant::now() + LONG;
    while poll(&app, "/stop", &retrying.id(), &retrying.token(), Some(1))
        .await
        .json()["status"]
        != "retrying"
    {
        assert!(tokio::time::Instant::now() < until, "never retrying");
    }
    let answer = cancel(&app, &retrying.id(), &retrying.token()).await;
    assert_cancel_accepted(&answer, &retrying.id());
    // The only worker slot was waiting out a 30 s backoff; the next job runs long before that.
    let next = start(&app, "name=next").await;
    let done = tokio::time::timeout(
        LONG,
        crate::support::until_final(&app, "/stop", &next.id(), &next.token()),
    )
    .await
    .expect("the slot was freed by the cancel");
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(
        task.events().iter().filter(|e| *e == "r started").count(),
        1
    );
    assert_polls_cancelled(&app, &retrying.id(), &retrying.token()).await;
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_request_answers_409_and_keeps_its_result() {
    let task = Stoppable::new();
    let endpoint = builder(&task).build().unwrap();
    let app = app(&endpoint);
    let started = start(&app, "name=done").await;
    let done = crate::support::until_final(&app, "/stop", &started.id(), &started.token()).await;
    assert_eq!(done.status, StatusCode::OK);
    let answer = cancel(&app, &started.id(), &started.token()).await;
    assert_problem(&answer, StatusCode::CONFLICT);
    let again = poll(&app, "/stop", &started.id(), &started.token(), None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, done.body, "the result stays readable");
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_get_the_same_404_as_a_poll_and_cancel_nothing() {
    let task = Stoppable::new();
    let endpoint = builder(&task).build().unwrap();
    let app = app(&endpoint);
    let started = start(&app, "name=kept&hold=true").await;
    task.happened("kept started").await;
    let (id, token) = (started.id(), started.token());
    let other_task = send(
        &app,
        Request::get("/other?text=x").body(Body::empty()).unwrap(),
    )
    .await;
    let other_token = other_task.token();
    let mut forged = token.clone().into_bytes();
    forged[20] = if forged[20] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let poll_404 = poll(&app, "/stop", &id, &forged, None).await;
    assert_problem(&poll_404, StatusCode::NOT_FOUND);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "forged token",
            vec![("async-request-id", &id), ("async-request-token", &forged)],
        ),
        (
            "unknown id",
            vec![
                ("async-request-id", "00000000000000000000000000000000"),
                ("async-request-token", &token),
            ],
        ),
        (
            "another task's token for this id",
            vec![
                ("async-request-id", &id),
                ("async-request-token", &other_token),
            ],
        ),
        (
            "another owner",
            vec![
                ("async-request-id", &id),
                ("async-request-token", &token),
                ("x-user", "mallory"),
            ],
        ),
        ("id without token", vec![("async-request-id", &id)]),
        (
            "garbage",
            vec![("async-request-id", "x"), ("async-request-token", "y")],
        ),
    ];
    for (case, headers) in cases {
        let answer = delete(&app, "/stop", &headers).await;
        assert_problem(&answer, StatusCode::NOT_FOUND);
        assert_eq!(answer.body, poll_404.body, "{case}: the poll's 404");
    }
    // Nothing was cancelled.
    let polled = poll(&app, "/stop", &id, &token, None).await;
    assert_eq!(polled.status, StatusCode::ACCEPTED);
    assert_eq!(polled.json()["status"], "running");
    assert!(!task.events().iter().any(|e| e == "kept dropped"));
    // Its own credentials still cancel it.
    assert_cancel_accepted(&cancel(&app, &id, &token).await, &id);
    task.happened("kept dropped").await;
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_query_cancel_too() {
    let task = Stoppable::new();
    let endpoint = builder(&task).build().unwrap();
    let app = app(&endpoint);
    let started = start(&app, "name=q&hold=true").await;
    task.happened("q started").await;
    let uri = format!(
        "/stop?async_request_id={}&async_request_token={}",
        started.id(),
        started.token()
    );
    let answer = delete(&app, &uri, &[]).await;
    assert_cancel_accepted(&answer, &started.id());
    task.happened("q dropped").await;
    assert_polls_cancelled(&app, &started.id(), &started.token()).await;
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_without_credentials_reaches_the_app() {
    let task = Stoppable::new();
    let endpoint = builder(&task).build().unwrap();
    let app = app(&endpoint);
    // A GET-only route: axum's own 405.
    let answer = delete(&app, "/stop", &[]).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    // A route with a DELETE of its own gets it.
    let answer = delete(&app, "/own", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "the app's own DELETE");
    endpoint.shutdown().await;
}
