//! The axum adapter: the [`AsyncRequest`] extractor and the layer that hands it the engine.
//!
//! It only translates: HTTP in (credentials, owner, `Prefer`) to an engine call, and the engine's
//! [`Answer`] back to an HTTP response. What to answer is decided by the engine.
//!
//! The layer also answers `DELETE`s that carry an id and a token (cancellation) before the app's
//! routing, so they work on routes the app declared with `get(...)` only.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use tower_layer::Layer;
use tower_service::Service;

use crate::endpoint::AsyncEndpoint;
use crate::engine::{Answer, Engine, Reply, max_body_bytes};
use crate::failure::Failure;
use crate::protocol::idempotency::KeyHeader;
use crate::protocol::prefer::{self, PREFER, PREFERENCE_APPLIED};
use crate::protocol::{
    ACCEPTED_STATUS, Call, FAILED_STATUS, ID_HEADER, NO_STORE, PROBLEM_JSON, Problem, TOKEN_HEADER,
};
use crate::task::AsyncTask;

/// The axum extractor for one async endpoint of task `T`: the original gem's `AsyncRequest`.
///
/// On a request without id and token it starts a new request; with them it polls. Requires
/// [`AsyncEndpoint::layer`](crate::AsyncEndpoint::layer) on the router (without it, the
/// extractor answers 500 and logs which layer is missing).
///
/// ```
/// use async_endpoint::{AsyncRequest, AsyncTask, Failure, TaskContext};
/// use axum::{Json, response::Response};
///
/// struct Double;
/// impl AsyncTask for Double {
///     const NAME: &'static str = "double";
///     type Params = u64;
///     type Output = u64;
///     async fn execute_task(&self, n: u64, _ctx: TaskContext) -> Result<u64, Failure> { Ok(n * 2) }
/// }
///
/// async fn endpoint(request: AsyncRequest<Double>) -> Response {
///     request
///         .init(21)
///         .handle(|n| Json(n), |failure| Json(failure.message().to_owned()))
///         .await
/// }
/// # let _: axum::Router = axum::Router::new().route("/double", axum::routing::get(endpoint));
/// ```
pub struct AsyncRequest<T> {
    engine: Arc<Engine>,
    call: Call,
    owner: Option<String>,
    /// `Prefer: wait=N` on a poll, in seconds (the engine caps it).
    wait: Option<u64>,
    /// A start's `Idempotency-Key` (not read on a poll).
    key: KeyHeader,
    task: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for AsyncRequest<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncRequest")
            .field("poll", &!matches!(self.call, Call::Start))
            .finish_non_exhaustive()
    }
}

/// Rejection of [`AsyncRequest`] when [`AsyncEndpoint::layer`](crate::AsyncEndpoint::layer) is
/// not on the router: a 500 problem response, with the cause in `tracing`.
#[derive(Debug)]
pub struct MissingLayer;

impl IntoResponse for MissingLayer {
    fn into_response(self) -> Response {
        tracing::error!(
            "AsyncRequest extractor used without the AsyncEndpoint layer: add `.layer(endpoint.layer())` to the router"
        );
        problem(Problem::Internal)
    }
}

impl<T: AsyncTask, S: Send + Sync> FromRequestParts<S> for AsyncRequest<T> {
    type Rejection = MissingLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let engine = parts
            .extensions
            .get::<EngineRef>()
            .ok_or(MissingLayer)?
            .0
            .clone();
        let call = call(parts);
        let wait = match call {
            Call::Poll { .. } | Call::Start => requested_wait(&parts.headers),
            Call::Malformed => None,
        };
        let key = match call {
            Call::Start => KeyHeader::from_headers(&parts.headers),
            Call::Poll { .. } | Call::Malformed => KeyHeader::Absent,
        };
        let owner = engine.owner.as_ref().and_then(|owner| owner(parts));
        Ok(AsyncRequest {
            engine,
            call,
            owner,
            wait,
            key,
            task: PhantomData,
        })
    }
}

impl<T: AsyncTask> AsyncRequest<T> {
    /// Supplies the params a new request would start with (ignored when polling): the gem's
    /// `init(params)`.
    pub fn init(self, params: T::Params) -> InitializedRequest<T> {
        InitializedRequest {
            request: self,
            params,
        }
    }

    /// True when the client sent an id or a token (this is a poll, not a start).
    pub fn is_poll(&self) -> bool {
        !matches!(self.call, Call::Start)
    }
}

/// An [`AsyncRequest`] with its params; call [`handle`](Self::handle).
pub struct InitializedRequest<T: AsyncTask> {
    request: AsyncRequest<T>,
    params: T::Params,
}

impl<T: AsyncTask> std::fmt::Debug for InitializedRequest<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitializedRequest")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl<T: AsyncTask> InitializedRequest<T> {
    /// Starts or polls, and answers: 202 while the request is under way, `done(output)` (200
    /// unless it sets a status) once done, `failed(failure)` (422 unless it sets a status) once
    /// failed, and problem documents for bad ids and tokens (404), expired tokens (410) and an
    /// unreachable backend (503). The gem's `handle(done_proc, failed_proc)`.
    pub async fn handle<D, F, RD, RF>(self, done: D, failed: F) -> Response
    where
        D: FnOnce(T::Output) -> RD,
        F: FnOnce(Failure) -> RF,
        RD: IntoResponse,
        RF: IntoResponse,
    {
        let InitializedRequest { request, params } = self;
        let reply = request
            .engine
            .answer::<T>(
                request.call,
                &params,
                request.owner.as_deref(),
                request.wait,
                request.key,
            )
            .await;
        let mut response = render(reply, done, failed);
        if response.status() == ACCEPTED_STATUS {
            stream_link(&request.engine, response.headers_mut());
        }
        response
    }
}

/// Names the event stream on a 202 (`Link: </path>; rel="async-endpoint-stream"`), so clients
/// find it without configuration. The value is made once, with the engine.
fn stream_link(engine: &Engine, headers: &mut HeaderMap) {
    if let Some(value) = &engine.stream_link {
        headers.append(header::LINK, value.clone());
    }
}

/// Answers an event stream request (`POST` on the stream path): reads the bounded body, and
/// writes the engine's [`EventStream`] out as `text/event-stream`.
async fn event_stream(engine: Arc<Engine>, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let owner = engine.owner.as_ref().and_then(|owner| owner(&parts));
    let limit = max_body_bytes(engine.config.stream_max_requests);
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return problem(Problem::TooLarge);
    };
    let stream = match engine.open_stream(&body, owner.as_deref()) {
        Ok(stream) => stream,
        Err(p) => return problem(p),
    };
    let chunks = futures_util::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), stream))
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    // nginx buffers responses unless told not to; a buffered stream delivers nothing in time.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Writes the engine's reply out as an axum response.
fn render<O, D, F, RD, RF>(reply: Reply<O>, done: D, failed: F) -> Response
where
    D: FnOnce(O) -> RD,
    F: FnOnce(Failure) -> RF,
    RD: IntoResponse,
    RF: IntoResponse,
{
    let mut response = match reply.answer {
        Answer::Accepted { body, retry_after } => {
            let mut response = Response::new(Body::from(body.to_json()));
            *response.status_mut() = ACCEPTED_STATUS;
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
            headers.insert(header::RETRY_AFTER, seconds(retry_after));
            response
        }
        Answer::Done(output) => private(done(output).into_response()),
        Answer::Failed(failure) => {
            let mut response = failed(failure).into_response();
            if response.status() == StatusCode::OK {
                *response.status_mut() = FAILED_STATUS;
            }
            private(response)
        }
        Answer::Problem(p) => return problem(p),
    };
    if let Some(secs) = reply.wait_applied {
        response.headers_mut().insert(
            PREFERENCE_APPLIED,
            HeaderValue::from_str(&prefer::applied(secs))
                .unwrap_or(HeaderValue::from_static("wait")),
        );
    }
    response
}

/// A `Retry-After` value: the usual few seconds without formatting a number (every 202 has one).
fn seconds(secs: u64) -> HeaderValue {
    match secs {
        0 => HeaderValue::from_static("0"),
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        5 => HeaderValue::from_static("5"),
        secs => HeaderValue::from(secs),
    }
}

/// Results are private to whoever holds the token: never let a cache keep them.
fn private(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static(NO_STORE));
    response
}

/// A problem document as a response.
fn problem(problem: Problem) -> Response {
    let mut response = Response::new(Body::from(problem.body()));
    *response.status_mut() = problem.status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    if let Some(secs) = problem.retry_after() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// `Prefer: wait=N` among the headers, in seconds.
pub(crate) fn requested_wait(headers: &HeaderMap) -> Option<u64> {
    prefer::requested_wait(
        headers
            .get_all(PREFER)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// Finds id and token in the headers or the query string.
pub(crate) fn call(parts: &Parts) -> Call {
    call_of(&parts.headers, &parts.uri)
}

/// [`call`] from a request's headers and URI.
fn call_of(headers: &HeaderMap, uri: &Uri) -> Call {
    let values = |name| headers.get_all(name).iter().map(|v| v.to_str().ok());
    Call::parse(
        values(ID_HEADER),
        values(TOKEN_HEADER),
        uri.query().unwrap_or(""),
    )
}

/// The engine as a request extension, found by the [`AsyncRequest`](crate::AsyncRequest)
/// extractor whatever the app's state type.
#[derive(Clone)]
pub(crate) struct EngineRef(pub(crate) Arc<Engine>);

/// Makes an [`AsyncEndpoint`](crate::AsyncEndpoint) available to handlers; from
/// [`AsyncEndpoint::layer`](crate::AsyncEndpoint::layer).
///
/// ```
/// # use async_endpoint::{AsyncEndpoint, AsyncTask, Failure, TaskContext};
/// # struct T;
/// # impl AsyncTask for T {
/// #     const NAME: &'static str = "t"; type Params = (); type Output = ();
/// #     async fn execute_task(&self, _: (), _: TaskContext) -> Result<(), Failure> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
/// let endpoint = AsyncEndpoint::builder().task(T).build()?;
/// let app: axum::Router = axum::Router::new().layer(endpoint.layer());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AsyncEndpointLayer {
    engine: Arc<Engine>,
}

impl AsyncEndpoint {
    /// The tower layer that makes this endpoint available to the [`AsyncRequest`] extractor.
    pub fn layer(&self) -> AsyncEndpointLayer {
        AsyncEndpointLayer {
            engine: self.engine.clone(),
        }
    }
}

impl std::fmt::Debug for AsyncEndpointLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEndpointLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AsyncEndpointLayer {
    type Service = AsyncEndpointService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AsyncEndpointService {
            inner,
            engine: self.engine.clone(),
        }
    }
}

/// The service made by [`AsyncEndpointLayer`].
#[derive(Clone)]
pub struct AsyncEndpointService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S> std::fmt::Debug for AsyncEndpointService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEndpointService")
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for AsyncEndpointService<S>
where
    S: Service<Request<B>, Response = Response>,
    S::Error: Send + 'static,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AsyncEndpointFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if request.method() == Method::POST
            && request.uri().path() == self.engine.config.stream_path
        {
            let engine = self.engine.clone();
            let request = request.map(Body::new);
            return AsyncEndpointFuture::answered(event_stream(engine, request));
        }
        if request.method() == Method::DELETE {
            match call_of(request.headers(), request.uri()) {
                // No credentials: the app's own DELETE, if it has one.
                Call::Start => {}
                // Credentials that cannot be genuine: the same 404 as a poll.
                Call::Malformed => {
                    return AsyncEndpointFuture::answered(async { problem(Problem::NotFound) });
                }
                Call::Poll { id, token } => {
                    let (parts, _body) = request.into_parts();
                    let engine = self.engine.clone();
                    let owner = engine.owner.as_ref().and_then(|owner| owner(&parts));
                    return AsyncEndpointFuture::answered(async move {
                        let answer = engine.cancel(&id, &token, owner.as_deref()).await;
                        // A cancel answers 202 or a problem: never `done` or `failed`.
                        render(
                            answer.into(),
                            |()| StatusCode::CONFLICT,
                            |_| StatusCode::CONFLICT,
                        )
                    });
                }
            }
        }
        request
            .extensions_mut()
            .insert(EngineRef(self.engine.clone()));
        AsyncEndpointFuture {
            kind: Kind::Inner {
                future: self.inner.call(request),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`AsyncEndpointService`]: the app's, or the layer's own answer to
    /// a cancellation.
    pub struct AsyncEndpointFuture<F, E> {
        #[pin]
        kind: Kind<F, E>,
    }
}

type Answering<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, E> {
        // Every request but a cancellation: the app's future, not boxed.
        Inner { #[pin] future: F },
        // A `DELETE` with credentials, answered by the layer.
        Answering { future: Answering<E> },
    }
}

impl<F, E: Send + 'static> AsyncEndpointFuture<F, E> {
    fn answered(response: impl Future<Output = Response> + Send + 'static) -> Self {
        AsyncEndpointFuture {
            kind: Kind::Answering {
                future: Box::pin(async move { Ok(response.await) }),
            },
        }
    }
}

impl<F, E> Future for AsyncEndpointFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Answering { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, E> std::fmt::Debug for AsyncEndpointFuture<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEndpointFuture")
            .finish_non_exhaustive()
    }
}
