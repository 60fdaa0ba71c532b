//! The `AsyncRequest<T>` extractor: `init(params)` then `handle(done, failed)`.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::backend::{NewRequest, Snapshot};
use crate::clock::now_ms;
use crate::engine::Engine;
use crate::layer::EngineRef;
use crate::problem;
use crate::token::{Claims, TokenError};
use crate::{AsyncTask, Error, Failure, Progress, RequestId, Status};

/// Header carrying the request id on polls (the JS client's way).
pub const ID_HEADER: HeaderName = HeaderName::from_static("async-request-id");
/// Header carrying the request token on polls.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("async-request-token");
/// Query/form parameter carrying the request id (the original gem's way).
pub const ID_PARAM: &str = "async_request_id";
/// Query/form parameter carrying the request token.
pub const TOKEN_PARAM: &str = "async_request_token";

const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");
/// Longest id/token value looked at (ids are 32 bytes, tokens 55); anything longer is malformed.
pub(crate) const MAX_CREDENTIAL_LEN: usize = 128;
/// Extra time a waiting poll gives a request past its deadline, so the poll sees the timeout.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

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
    wait: Option<Duration>,
    task: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for AsyncRequest<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncRequest")
            .field("poll", &!matches!(self.call, Call::Start))
            .finish_non_exhaustive()
    }
}

/// What the client asked for.
pub(crate) enum Call {
    Start,
    Poll {
        id: String,
        token: String,
    },
    /// Credentials that cannot be genuine (half present, repeated with different values, …).
    Malformed,
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
        problem::internal()
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
            Call::Poll { .. } => requested_wait(&parts.headers)
                .map(|secs| Duration::from_secs(secs).min(engine.config.max_wait))
                .filter(|wait| !wait.is_zero()),
            _ => None,
        };
        let owner = engine.owner.as_ref().and_then(|owner| owner(parts));
        Ok(AsyncRequest {
            engine,
            call,
            owner,
            wait,
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
        let engine = &request.engine;
        let Some(task) = engine.tasks.get(T::NAME) else {
            return developer_error(&Error::UnknownTask(T::NAME.to_owned()));
        };
        match &request.call {
            Call::Malformed => problem::not_found(),
            Call::Start => {
                start::<T>(engine, task.deadline(), &params, request.owner.as_deref()).await
            }
            Call::Poll { id, token } => {
                let Ok(id) = id.parse::<RequestId>() else {
                    return problem::not_found();
                };
                let now = now_ms();
                let claims = Claims {
                    id: &id,
                    task: T::NAME,
                    owner: request.owner.as_deref(),
                };
                match engine.keys.verify(token, &claims, now / 1000) {
                    Ok(()) => {}
                    Err(TokenError::Invalid) => return problem::not_found(),
                    Err(TokenError::Expired) => return problem::gone(),
                }
                let snapshot = match read(engine, id, request.wait).await {
                    Ok(Some(snapshot)) if snapshot.task == T::NAME => snapshot,
                    Ok(_) => return problem::not_found(),
                    Err(error) => return backend_error(engine, &error),
                };
                tracing::debug!(request_id = %id, task = T::NAME, status = snapshot.status.as_str(), "poll");
                let mut response =
                    render::<T, _, _, _, _>(engine, &id, token, snapshot, done, failed);
                if let Some(wait) = request.wait {
                    response.headers_mut().insert(
                        PREFERENCE_APPLIED,
                        HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
                            .unwrap_or(HeaderValue::from_static("wait")),
                    );
                }
                response
            }
        }
    }
}

async fn start<T: AsyncTask>(
    engine: &Engine,
    task_deadline: Option<Duration>,
    params: &T::Params,
    owner: Option<&str>,
) -> Response {
    let config = &engine.config;
    let params = match serde_json::to_string(params) {
        Ok(params) => params,
        Err(source) => {
            return developer_error(&Error::SerializeParams {
                task: T::NAME,
                source,
            });
        }
    };
    if params.len() > config.max_params_bytes {
        return developer_error(&Error::ParamsTooLarge {
            task: T::NAME,
            size: params.len(),
            limit: config.max_params_bytes,
        });
    }
    let id = RequestId::random();
    let now = now_ms();
    let deadline = task_deadline.unwrap_or(config.deadline);
    let expires_at = now.saturating_add(config.ttl.as_millis() as u64) / 1000;
    let claims = Claims {
        id: &id,
        task: T::NAME,
        owner,
    };
    let token = engine.keys.sign(&claims, expires_at);
    let created = engine
        .backend
        .create(NewRequest {
            id,
            task: T::NAME,
            params,
            created_ms: now,
            deadline_ms: now.saturating_add(deadline.as_millis() as u64),
            ttl: config.ttl,
        })
        .await;
    if let Err(error) = created {
        return backend_error(engine, &error);
    }
    tracing::info!(request_id = %id, task = T::NAME, "request enqueued");
    accepted(engine, &id, &token, Status::Queued, None)
}

/// Reads the request; with `wait`, holds until it changes, finishes, or the bound passes.
async fn read(
    engine: &Engine,
    id: RequestId,
    wait: Option<Duration>,
) -> Result<Option<Snapshot>, Error> {
    let timeout = &engine.config.timeout_failure;
    let Some(wait) = wait else {
        return engine.backend.poll(id, now_ms(), timeout).await;
    };
    // Register before the first read so a change between the read and the wait is not missed.
    let mut watch = engine.backend.watch(id);
    let Some(first) = engine.backend.poll(id, now_ms(), timeout).await? else {
        return Ok(None);
    };
    if first.status.is_terminal() {
        return Ok(Some(first));
    }
    let until_deadline = Duration::from_millis(first.deadline_ms.saturating_sub(now_ms()));
    let bound = tokio::time::Instant::now() + wait.min(until_deadline + DEADLINE_SLACK);
    loop {
        if tokio::time::timeout_at(bound, watch.changed())
            .await
            .is_err()
        {
            // The bound passed: one last read (it also applies a passed deadline).
            return engine.backend.poll(id, now_ms(), timeout).await;
        }
        match engine.backend.poll(id, now_ms(), timeout).await? {
            Some(now) if now == first => continue,
            other => return Ok(other),
        }
    }
}

fn render<T, D, F, RD, RF>(
    engine: &Engine,
    id: &RequestId,
    token: &str,
    snapshot: Snapshot,
    done: D,
    failed: F,
) -> Response
where
    T: AsyncTask,
    D: FnOnce(T::Output) -> RD,
    F: FnOnce(Failure) -> RF,
    RD: IntoResponse,
    RF: IntoResponse,
{
    let mut response = match snapshot.status {
        Status::Done => {
            let output = snapshot.output.as_deref().unwrap_or("null");
            match serde_json::from_str::<T::Output>(output) {
                Ok(output) => done(output).into_response(),
                Err(source) => {
                    return developer_error(&Error::Decode {
                        task: T::NAME.to_owned(),
                        source,
                    });
                }
            }
        }
        Status::Failed => {
            let failure = snapshot
                .failure
                .unwrap_or_else(|| engine.config.internal_failure.clone());
            let mut response = failed(failure).into_response();
            if response.status() == StatusCode::OK {
                *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            }
            response
        }
        status => {
            return accepted(engine, id, token, status, snapshot.progress.as_ref());
        }
    };
    // Results are private to whoever holds the token: never let a cache keep them.
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The 202 body of the protocol.
#[derive(Serialize)]
struct AcceptedBody<'a> {
    async_request_id: &'a RequestId,
    async_request_token: &'a str,
    status: Status,
    progress: Option<&'a Progress>,
}

fn accepted(
    engine: &Engine,
    id: &RequestId,
    token: &str,
    status: Status,
    progress: Option<&Progress>,
) -> Response {
    let body = AcceptedBody {
        async_request_id: id,
        async_request_token: token,
        status,
        progress,
    };
    // Plain strings and numbers always serialize; keep the impossible path a clean 500.
    let Ok(json) = serde_json::to_vec(&body) else {
        return problem::internal();
    };
    let mut response = Response::new(Body::from(json));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(engine.config.retry_after.as_secs()),
    );
    response
}

fn developer_error(error: &Error) -> Response {
    tracing::error!(
        error = error as &dyn std::error::Error,
        "async-endpoint misuse"
    );
    problem::internal()
}

fn backend_error(engine: &Engine, error: &Error) -> Response {
    if error.is_unavailable() {
        tracing::warn!(
            error = error as &dyn std::error::Error,
            "backend unavailable"
        );
        problem::unavailable(engine.config.retry_after.as_secs().max(1))
    } else {
        tracing::error!(error = error as &dyn std::error::Error, "backend error");
        problem::internal()
    }
}

/// Finds id and token in the headers or the query string.
pub(crate) fn call(parts: &Parts) -> Call {
    let query = parts.uri.query().unwrap_or("");
    let from_query = |name: &'static str| {
        form_urlencoded::parse(query.as_bytes())
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let from_headers = |name: HeaderName| {
        parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| match v.to_str() {
                Ok(v) => v.trim().to_owned(),
                // Not visible ASCII: can never be a genuine id or token.
                Err(_) => "\u{0}".to_owned(),
            })
    };
    let id = one(from_headers(ID_HEADER).chain(from_query(ID_PARAM)));
    let token = one(from_headers(TOKEN_HEADER).chain(from_query(TOKEN_PARAM)));
    match (id, token) {
        (Ok(None), Ok(None)) => Call::Start,
        (Ok(Some(id)), Ok(Some(token))) => Call::Poll { id, token },
        _ => Call::Malformed,
    }
}

/// The one non-empty value among `values`; repeats must agree. `Err` when they do not, or a value
/// is longer than any genuine credential.
pub(crate) fn one(values: impl Iterator<Item = String>) -> Result<Option<String>, ()> {
    let mut found: Option<String> = None;
    for value in values {
        if value.is_empty() {
            continue;
        }
        if value.len() > MAX_CREDENTIAL_LEN {
            return Err(());
        }
        match &found {
            Some(previous) if *previous != value => return Err(()),
            Some(_) => {}
            None => found = Some(value),
        }
    }
    Ok(found)
}

/// `Prefer: wait=N` (RFC 7240): the first well-formed `wait` preference, in seconds. Malformed
/// preferences are ignored, as the RFC asks.
pub(crate) fn requested_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all(PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let pref = pref.split(';').next()?.trim();
            let (name, value) = pref.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            value.parse::<u64>().ok()
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(PREFER, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn prefer_wait_parsing() {
        assert_eq!(requested_wait(&headers(&["wait=10"])), Some(10));
        assert_eq!(
            requested_wait(&headers(&["respond-async, wait=5"])),
            Some(5)
        );
        assert_eq!(requested_wait(&headers(&["WAIT = 7 ; x=y"])), Some(7));
        assert_eq!(requested_wait(&headers(&["wait=\"3\""])), Some(3));
        assert_eq!(requested_wait(&headers(&["wait=-1", "wait=2"])), Some(2));
        assert_eq!(requested_wait(&headers(&["wait=abc"])), None);
        assert_eq!(
            requested_wait(&headers(&["wait=99999999999999999999999"])),
            None
        );
        assert_eq!(requested_wait(&headers(&["handling=lenient"])), None);
        assert_eq!(requested_wait(&HeaderMap::new()), None);
    }

    #[test]
    fn one_value_rules() {
        let s = |v: &[&str]| one(v.iter().map(|s| s.to_string()));
        assert_eq!(s(&[]), Ok(None));
        assert_eq!(s(&["", ""]), Ok(None));
        assert_eq!(s(&["a", "a"]), Ok(Some("a".into())));
        assert_eq!(s(&["a", "", "a"]), Ok(Some("a".into())));
        assert_eq!(s(&["a", "b"]), Err(()));
        assert_eq!(s(&[&"x".repeat(500)]), Err(()));
    }
}
