//! Helpers for an app's tests (feature `testing`; enable it in `[dev-dependencies]` only).
//!
//! * [`run_task`] runs a task inline, without endpoint or backend, and gives its output or
//!   failure and the progress it reported;
//! * [`AsyncEndpoint::drain`] is a worker on demand: it runs every queued job now, to its end;
//! * [`run_to_end`] drives an endpoint from start to result through the app's router, without
//!   sleeping (draining the queue, then waiting polls);
//! * time: with this feature the library reads "now" from Tokio's clock, so a test on a paused
//!   clock (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`) controls deadlines,
//!   token expiry and the in-memory backend's TTLs. Build the endpoint with `.task_threads(0)`
//!   so tasks run on the test's runtime, whose clock is the paused one. (Redis expires keys by
//!   its own clock; that is not under the test's control.)
//!
//! Without the feature none of this is compiled, and the library reads the system clock.
//!
//! ```
//! use async_endpoint::{AsyncTask, Failure, TaskContext, testing};
//!
//! struct Double;
//! impl AsyncTask for Double {
//!     const NAME: &'static str = "double";
//!     type Params = u32;
//!     type Output = u32;
//!     async fn execute_task(&self, n: u32, ctx: TaskContext) -> Result<u32, Failure> {
//!         ctx.progress(1, Some(1), "doubling").await;
//!         if n > 1000 { return Err(Failure::new("too big")) }
//!         Ok(n * 2)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let run = testing::run_task(&Double, 21).await;
//! assert_eq!(run.result.unwrap(), 42);
//! assert_eq!(run.progress[0].message, "doubling");
//! assert_eq!(testing::run_task(&Double, 5000).await.result.unwrap_err().message(), "too big");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http::{HeaderMap, Request, StatusCode};
use tower_service::Service as _;

use crate::backend::Backend as _;
use crate::endpoint::AsyncEndpoint;
use crate::error::Error;
use crate::failure::Failure;
use crate::protocol::{ID_HEADER, Progress, RequestId, TOKEN_HEADER};
use crate::task::{AsyncTask, Cancellation, ProgressSink, TaskContext};

/// What [`run_task`] saw: the task's result and every progress it reported, in order.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskRun<O> {
    /// The output, or the failure (a panic propagates, as in any test).
    pub result: Result<O, Failure>,
    /// The progress the task reported (none is throttled away).
    pub progress: Vec<Progress>,
}

/// Keeps every progress report.
#[derive(Default)]
struct Recorded(Mutex<Vec<Progress>>);

impl ProgressSink for Recorded {
    fn save(
        &self,
        _id: RequestId,
        progress: Progress,
    ) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + '_>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(progress);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Runs `task` with `params` inline, as a worker's first attempt would (params and output make
/// the same JSON round trip they make through a backend, so a serde mistake shows here too),
/// with a deadline an hour away. See the [module](self) example.
pub async fn run_task<T: AsyncTask>(task: &T, params: T::Params) -> TaskRun<T::Output> {
    let roundtrip = |what: &str, json: Result<String, serde_json::Error>| {
        json.unwrap_or_else(|e| panic!("the task's {what} do not serialize: {e}"))
    };
    let params = roundtrip("params", serde_json::to_string(&params));
    let params: T::Params = serde_json::from_str(&params)
        .unwrap_or_else(|e| panic!("the task's params do not deserialize: {e}"));
    let recorded = Arc::new(Recorded::default());
    let ctx = TaskContext::new(
        RequestId::random(),
        1,
        crate::clock::now_ms().saturating_add(3_600_000),
        recorded.clone(),
        Duration::ZERO,
        Cancellation::new(),
    );
    let result = match task.execute_task(params, ctx).await {
        Ok(output) => {
            let json = roundtrip("output", serde_json::to_string(&output));
            Ok(serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("the task's output does not deserialize: {e}")))
        }
        Err(failure) => Err(failure),
    };
    let progress = std::mem::take(&mut *recorded.0.lock().unwrap_or_else(|e| e.into_inner()));
    TaskRun { result, progress }
}

impl AsyncEndpoint {
    /// Runs every job queued for this endpoint's tasks now, each to its end (retries and
    /// backoff included), until none is left; returns how many ran. A worker on demand for
    /// tests: build the endpoint with `.in_process_workers(false)` so that nothing else takes
    /// the jobs. Feature `testing`.
    ///
    /// ```
    /// # use async_endpoint::{AsyncEndpoint, AsyncTask, Failure, TaskContext};
    /// # struct Double;
    /// # impl AsyncTask for Double {
    /// #     const NAME: &'static str = "double"; type Params = u32; type Output = u32;
    /// #     async fn execute_task(&self, n: u32, _: TaskContext) -> Result<u32, Failure> { Ok(n * 2) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
    /// let endpoint = AsyncEndpoint::builder()
    ///     .task(Double)
    ///     .in_process_workers(false)
    ///     .task_threads(0)
    ///     .build()?;
    /// assert_eq!(endpoint.drain().await, 0); // nothing queued yet
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn drain(&self) -> usize {
        let engine = &self.engine;
        let mut ran = 0;
        loop {
            let fetched = engine
                .backend
                .fetch(&engine.task_names, 64, Duration::from_millis(1))
                .await;
            let jobs = match fetched {
                Ok(jobs) if !jobs.is_empty() => jobs,
                Ok(_) => return ran,
                Err(error) => panic!("drain could not fetch jobs: {error}"),
            };
            for job in &jobs {
                crate::worker::run_job(engine, job).await;
                ran += 1;
            }
        }
    }
}

/// An answer of the app's router, body read whole.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TestResponse {
    /// The status code.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl TestResponse {
    /// The body as JSON (panics, with the body, if it is not).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not the JSON expected ({e}): {}", self.text()))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` to `app` (the router with the endpoint's layer) in-process, no socket.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let app = axum::Router::new().route("/", axum::routing::get(|| async { "hi" }));
/// let answer = async_endpoint::testing::call(&app, http::Request::new(axum::body::Body::empty())).await;
/// assert_eq!(answer.text(), "hi");
/// # }
/// ```
pub async fn call(app: &axum::Router, request: Request<Body>) -> TestResponse {
    let mut app = app.clone();
    let _ = std::future::poll_fn(|cx| {
        tower_service::Service::<Request<Body>>::poll_ready(&mut app, cx)
    })
    .await;
    let response = match app.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("the response body could not be read: {e}"));
    TestResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Starts a request with a `GET` of `uri` on `app` and drives it to its end: it runs the queue
/// with [`AsyncEndpoint::drain`], then polls (with `Prefer: wait`, so a request that in-process
/// workers run is waited for, not slept on) until the answer is no longer a 202. Returns the
/// final answer (or the start's, if that was not a 202). Never sleeps; on a paused clock,
/// deadlines and retry backoffs pass as the runtime idles.
///
/// ```
/// # use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext, testing};
/// # use axum::{Json, Router, routing::get};
/// # struct Double;
/// # impl AsyncTask for Double {
/// #     const NAME: &'static str = "double"; type Params = u32; type Output = u32;
/// #     async fn execute_task(&self, n: u32, _: TaskContext) -> Result<u32, Failure> { Ok(n * 2) }
/// # }
/// # async fn double(request: AsyncRequest<Double>) -> axum::response::Response {
/// #     request.init(21).handle(|n| Json(n), |f| f.message().to_owned()).await
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
/// let endpoint = AsyncEndpoint::builder().task(Double).in_process_workers(false).task_threads(0).build()?;
/// let app = Router::new().route("/double", get(double)).layer(endpoint.layer());
/// let answer = testing::run_to_end(&app, &endpoint, "/double").await;
/// assert_eq!(answer.status, 200);
/// assert_eq!(answer.json::<u32>(), 42);
/// # Ok(()) }
/// ```
pub async fn run_to_end(app: &axum::Router, endpoint: &AsyncEndpoint, uri: &str) -> TestResponse {
    let get = |headers: &[(&str, &str)]| {
        let mut request = Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("bad request for {uri}: {e}"))
    };
    let started = call(app, get(&[])).await;
    if started.status != StatusCode::ACCEPTED {
        return started;
    }
    let body: serde_json::Value = started.json();
    let field = |name: &str| {
        body[name]
            .as_str()
            .unwrap_or_else(|| panic!("the 202 has no {name}: {}", started.text()))
            .to_owned()
    };
    let (id, token) = (field("async_request_id"), field("async_request_token"));
    let wait = format!("wait={}", endpoint.engine.config.max_wait.as_secs());
    loop {
        endpoint.drain().await;
        let polled = call(
            app,
            get(&[
                (ID_HEADER.as_str(), &id),
                (TOKEN_HEADER.as_str(), &token),
                ("prefer", &wait),
            ]),
        )
        .await;
        if polled.status != StatusCode::ACCEPTED {
            return polled;
        }
        tokio::task::yield_now().await;
    }
}
