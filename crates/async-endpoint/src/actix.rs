//! The actix-web adapter (feature `actix`): the same [`AsyncRequest`] extractor and
//! [`handle`](InitializedRequest::handle) as the axum one, for actix-web 4.
//!
//! Like the axum adapter it only translates; the engine decides what to answer. The engine
//! reaches handlers through a middleware, [`AsyncEndpoint::middleware`], which also answers
//! `DELETE`s that carry an id and a token (cancellation) before the app's routing, so they work on
//! resources the app declared with `web::get()` only:
//!
//! ```
//! use actix_web::{App, HttpResponse, web};
//! use async_endpoint::actix::AsyncRequest;
//! use async_endpoint::{AsyncEndpoint, AsyncTask, Failure, TaskContext};
//!
//! struct Double;
//! impl AsyncTask for Double {
//!     const NAME: &'static str = "double";
//!     type Params = u64;
//!     type Output = u64;
//!     async fn execute_task(&self, n: u64, _ctx: TaskContext) -> Result<u64, Failure> { Ok(n * 2) }
//! }
//!
//! async fn double(request: AsyncRequest<Double>) -> HttpResponse {
//!     request
//!         .init(21)
//!         .handle(
//!             |n| HttpResponse::Ok().json(n),
//!             |failure| HttpResponse::Ok().json(failure.message()),
//!         )
//!         .await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
//! let endpoint = AsyncEndpoint::builder().task(Double).build()?;
//! let app = App::new()
//!     .wrap(endpoint.middleware())
//!     .route("/double", web::get().to(double));
//! # let _ = app;
//! # Ok(()) }
//! ```
//!
//! actix-web 4 speaks `http` 0.2, the engine `http` 1: the
//! [`owner`](crate::AsyncEndpointBuilder::owner) hook gets an `http::request::Parts` rebuilt
//! from actix's request head (method, URI, version and headers; its extensions are empty, since
//! actix keeps its own), so one hook serves both frameworks.

use std::future::{Future, Ready, ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, Responder, ResponseError};
use http::request::Parts;

use crate::axum::{EngineRef, call, requested_wait};
use crate::endpoint::AsyncEndpoint;
use crate::engine::{Answer, Engine, Reply};
use crate::failure::Failure;
use crate::protocol::idempotency::KeyHeader;
use crate::protocol::prefer::{self, PREFERENCE_APPLIED};
use crate::protocol::{ACCEPTED_STATUS, Call, FAILED_STATUS, NO_STORE, PROBLEM_JSON, Problem};
use crate::task::AsyncTask;

/// The actix-web extractor for one async endpoint of task `T`: the same as the axum
/// [`AsyncRequest`](crate::AsyncRequest), fed by [`AsyncEndpoint::middleware`].
///
/// On a request without id and token it starts a new request; with them it polls. Without the
/// middleware on the app it answers 500 and logs which middleware is missing.
///
/// ```
/// use actix_web::{HttpResponse, web};
/// use async_endpoint::actix::AsyncRequest;
/// # use async_endpoint::{AsyncTask, Failure, TaskContext};
/// # struct Double;
/// # impl AsyncTask for Double {
/// #     const NAME: &'static str = "double"; type Params = u64; type Output = u64;
/// #     async fn execute_task(&self, n: u64, _: TaskContext) -> Result<u64, Failure> { Ok(n * 2) }
/// # }
///
/// async fn double(request: AsyncRequest<Double>, n: web::Query<u64>) -> HttpResponse {
///     request
///         .init(n.into_inner())
///         .handle(|n| HttpResponse::Ok().json(n), |f| HttpResponse::Ok().json(f.message()))
///         .await
/// }
/// ```
pub struct AsyncRequest<T> {
    engine: Arc<Engine>,
    http: HttpRequest,
    call: Call,
    owner: Option<String>,
    wait: Option<u64>,
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

/// Rejection of [`AsyncRequest`] when [`AsyncEndpoint::middleware`] does not wrap the app: a 500
/// problem response, with the cause in `tracing`.
#[derive(Debug)]
pub struct MissingMiddleware;

impl std::fmt::Display for MissingMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncRequest extractor used without the AsyncEndpoint middleware")
    }
}

impl ResponseError for MissingMiddleware {
    fn status_code(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    fn error_response(&self) -> HttpResponse {
        tracing::error!(
            "AsyncRequest extractor used without the AsyncEndpoint middleware: add `.wrap(endpoint.middleware())` to the App"
        );
        problem(Problem::Internal)
    }
}

impl<T: AsyncTask> FromRequest for AsyncRequest<T> {
    type Error = MissingMiddleware;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let Some(engine) = req.extensions().get::<EngineRef>().map(|e| e.0.clone()) else {
            return ready(Err(MissingMiddleware));
        };
        let parts = parts_of(req.method(), req.uri(), req.version(), req.headers());
        let call = call(&parts);
        let wait = match call {
            Call::Poll { .. } | Call::Start => requested_wait(&parts.headers),
            Call::Malformed => None,
        };
        let key = match call {
            Call::Start => KeyHeader::from_headers(&parts.headers),
            Call::Poll { .. } | Call::Malformed => KeyHeader::Absent,
        };
        let owner = engine.owner.as_ref().and_then(|owner| owner(&parts));
        ready(Ok(AsyncRequest {
            engine,
            http: req.clone(),
            call,
            owner,
            wait,
            key,
            task: PhantomData,
        }))
    }
}

impl<T: AsyncTask> AsyncRequest<T> {
    /// Supplies the params a new request would start with (ignored when polling).
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
    /// Starts or polls, and answers exactly as the axum
    /// [`handle`](crate::InitializedRequest::handle) does: 202 while under way, `done(output)`
    /// (200 unless it sets a status), `failed(failure)` (422 unless it sets a status), problem
    /// documents otherwise. `done` and `failed` return any actix [`Responder`].
    pub async fn handle<D, F, RD, RF>(self, done: D, failed: F) -> HttpResponse
    where
        D: FnOnce(T::Output) -> RD,
        F: FnOnce(Failure) -> RF,
        RD: Responder,
        RF: Responder,
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
        render(&request.http, reply, done, failed)
    }
}

/// Rebuilds an `http` 1 request head from actix-web's `http` 0.2 one, for the engine's parsing
/// and the owner hook. Every part actix accepted is valid in `http` 1 too; a header that were
/// not would be left out.
fn parts_of(
    method: &actix_web::http::Method,
    uri: &actix_web::http::Uri,
    version: actix_web::http::Version,
    headers: &actix_web::http::header::HeaderMap,
) -> Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = http::Method::from_bytes(method.as_str().as_bytes()).unwrap_or_default();
    parts.uri = uri.to_string().parse().unwrap_or_default();
    parts.version = match version {
        actix_web::http::Version::HTTP_09 => http::Version::HTTP_09,
        actix_web::http::Version::HTTP_10 => http::Version::HTTP_10,
        actix_web::http::Version::HTTP_2 => http::Version::HTTP_2,
        actix_web::http::Version::HTTP_3 => http::Version::HTTP_3,
        _ => http::Version::HTTP_11,
    };
    parts.headers.reserve(headers.len());
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            parts.headers.append(name, value);
        }
    }
    parts
}

fn status(code: http::StatusCode) -> StatusCode {
    StatusCode::from_u16(code.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn name(name: &http::HeaderName) -> HeaderName {
    // Every name the protocol uses is a valid lower-case token in both versions.
    HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or(actix_web::http::header::WARNING)
}

/// Writes the engine's reply out as an actix response.
fn render<O, D, F, RD, RF>(req: &HttpRequest, reply: Reply<O>, done: D, failed: F) -> HttpResponse
where
    D: FnOnce(O) -> RD,
    F: FnOnce(Failure) -> RF,
    RD: Responder,
    RF: Responder,
{
    let mut response = match reply.answer {
        Answer::Accepted { body, retry_after } => {
            let json = body.to_json();
            HttpResponse::build(status(ACCEPTED_STATUS))
                .insert_header(("content-type", "application/json"))
                .insert_header(("cache-control", NO_STORE))
                .insert_header(("retry-after", retry_after))
                .body(json)
        }
        Answer::Done(output) => private(done(output).respond_to(req).map_into_boxed_body()),
        Answer::Failed(failure) => {
            let mut response = failed(failure).respond_to(req).map_into_boxed_body();
            if response.status() == StatusCode::OK {
                *response.status_mut() = status(FAILED_STATUS);
            }
            private(response)
        }
        Answer::Problem(p) => return problem(p),
    };
    if let Some(secs) = reply.wait_applied {
        response.headers_mut().insert(
            name(&PREFERENCE_APPLIED),
            HeaderValue::from_str(&prefer::applied(secs))
                .unwrap_or(HeaderValue::from_static("wait")),
        );
    }
    response
}

/// Results are private to whoever holds the token: never let a cache keep them.
fn private(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    if !headers.contains_key(actix_web::http::header::CACHE_CONTROL) {
        headers.insert(
            actix_web::http::header::CACHE_CONTROL,
            HeaderValue::from_static(NO_STORE),
        );
    }
    response
}

/// A problem document as a response.
fn problem(problem: Problem) -> HttpResponse {
    let mut response = HttpResponse::build(status(problem.status()));
    response
        .insert_header(("content-type", PROBLEM_JSON))
        .insert_header(("cache-control", NO_STORE));
    if let Some(secs) = problem.retry_after() {
        response.insert_header(("retry-after", secs));
    }
    response.body(problem.body())
}

impl AsyncEndpoint {
    /// The actix-web middleware that makes this endpoint available to the
    /// [`actix::AsyncRequest`](AsyncRequest) extractor and answers cancellations (feature
    /// `actix`): `App::new().wrap(endpoint.middleware())`.
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
    /// let app = actix_web::App::new().wrap(endpoint.middleware());
    /// # let _ = app;
    /// # Ok(()) }
    /// ```
    pub fn middleware(&self) -> AsyncEndpointMiddleware {
        AsyncEndpointMiddleware {
            engine: self.engine.clone(),
        }
    }
}

/// The actix-web middleware from [`AsyncEndpoint::middleware`].
#[derive(Clone)]
pub struct AsyncEndpointMiddleware {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for AsyncEndpointMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEndpointMiddleware")
            .finish_non_exhaustive()
    }
}

impl<S, B> Transform<S, ServiceRequest> for AsyncEndpointMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = actix_web::Error;
    type Transform = AsyncEndpointMiddlewareService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AsyncEndpointMiddlewareService {
            service: Rc::new(service),
            engine: self.engine.clone(),
        }))
    }
}

/// The service made by [`AsyncEndpointMiddleware`].
pub struct AsyncEndpointMiddlewareService<S> {
    service: Rc<S>,
    engine: Arc<Engine>,
}

impl<S> std::fmt::Debug for AsyncEndpointMiddlewareService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEndpointMiddlewareService")
            .finish_non_exhaustive()
    }
}

type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for AsyncEndpointMiddlewareService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B, BoxBody>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        if req.method() == actix_web::http::Method::DELETE {
            let parts = parts_of(req.method(), req.uri(), req.version(), req.headers());
            match call(&parts) {
                // No credentials: the app's own DELETE, if it has one.
                Call::Start => {}
                // Credentials that cannot be genuine: the same 404 as a poll.
                Call::Malformed => {
                    let response = problem(Problem::NotFound);
                    return Box::pin(async move {
                        Ok(req.into_response(response).map_into_right_body())
                    });
                }
                Call::Poll { id, token } => {
                    let engine = self.engine.clone();
                    let owner = engine.owner.as_ref().and_then(|owner| owner(&parts));
                    return Box::pin(async move {
                        let answer = engine.cancel(&id, &token, owner.as_deref()).await;
                        // A cancel answers 202 or a problem: never `done` or `failed`.
                        let response = render(
                            req.request(),
                            answer.into(),
                            |()| HttpResponse::Conflict().finish(),
                            |_| HttpResponse::Conflict().finish(),
                        );
                        Ok(req.into_response(response).map_into_right_body())
                    });
                }
            }
        }
        req.extensions_mut().insert(EngineRef(self.engine.clone()));
        let service = self.service.clone();
        Box::pin(async move { Ok(service.call(req).await?.map_into_left_body()) })
    }
}
