//! # async-endpoint
//!
//! The asynchronous request-reply pattern for [axum]: a handler that has to call something slow
//! enqueues a background job and answers `202 Accepted` with an `async_request_id` and an
//! `async_request_token`; the client polls the same endpoint with them until it gets the result
//! (200) or the failure (422).
//!
//! ```
//! use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
//! use axum::{Json, Router, response::Response, routing::get};
//!
//! struct Shout;
//!
//! impl AsyncTask for Shout {
//!     const NAME: &'static str = "shout";
//!     type Params = String;
//!     type Output = String;
//!
//!     async fn execute_task(&self, text: String, ctx: TaskContext) -> Result<String, Failure> {
//!         ctx.progress(1, Some(1), "shouting").await;
//!         Ok(text.to_uppercase())
//!     }
//! }
//!
//! async fn shout(request: AsyncRequest<Shout>) -> Response {
//!     request
//!         .init("hello".to_owned())
//!         .handle(|text| Json(text), |failure| Json(failure.message().to_owned()))
//!         .await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), async_endpoint::Error> {
//! let endpoint = AsyncEndpoint::builder()
//!     .task(Shout)
//!     .build()?;
//! let app: Router = Router::new().route("/shout", get(shout)).layer(endpoint.layer());
//! # Ok(()) }
//! ```
//!
//! ## The original API, in Rust
//!
//! | Rails gem (2016) | async-endpoint |
//! |---|---|
//! | `class MyAsyncRequest < AsyncRequest` + `execute_task` | `impl AsyncTask for MyAsyncRequest` + `execute_task(params, ctx)` |
//! | `params_hash` | the `Params` serde type |
//! | `done` | `Ok(output)` |
//! | `failed 'message'` | `Err(Failure::new("message"))` |
//! | `MyAsyncRequest.init(self, params)` | `AsyncRequest<MyAsyncRequest>` extractor + `.init(params)` |
//! | `@async_request.handle(done_proc, failed_proc)` | `.handle(done, failed).await` |
//!
//! ## Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `memory` | yes | [`backend::MemoryBackend`]: in-memory state and in-process workers |
//! | `redis` | no | `backend::RedisBackend`: many web and worker processes over one Redis |
//! | `metrics` | no | counters, gauges and histograms through the [`metrics`](https://docs.rs/metrics) facade |
//! | `testing` | no | `testing`: helpers for an app's tests (dev-dependencies only) |
//! | `postgres` | no | `backend::PostgresBackend`: many web and worker processes over PostgreSQL |
//!
//! ## Protocol
//!
//! | situation | answer |
//! |---|---|
//! | start | 202 `{async_request_id, async_request_token, status, progress}`, `Retry-After`, `Cache-Control: no-store` |
//! | poll, under way | 202, same body |
//! | poll, done | what `done` renders (200 unless it sets a status) |
//! | poll, failed or timed out | what `failed` renders (422 unless it sets a status) |
//! | bad id or token, another request's, task's or owner's | 404 `application/problem+json`, one body for all |
//! | expired token | 410 problem |
//! | backend unreachable | 503 problem with `Retry-After` |
//!
//! Polls carry `async_request_id` / `async_request_token` as query parameters or as the
//! `Async-Request-Id` / `Async-Request-Token` headers, and may ask to be held until something
//! changes with `Prefer: wait=N` (capped by `max_wait`; answered with `Preference-Applied`).
//!
//! [axum]: https://docs.rs/axum

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "actix")]
pub mod actix;
mod axum;
pub mod backend;
mod clock;
mod endpoint;
mod engine;
mod error;
mod failure;
pub mod js;
mod keys;
mod metrics;
#[cfg(test)]
mod proptests;
mod protocol;
mod task;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod trace;
mod worker;

pub use self::axum::{
    AsyncEndpointFuture, AsyncEndpointLayer, AsyncEndpointService, AsyncRequest,
    InitializedRequest, MissingLayer,
};
pub use endpoint::{AsyncEndpoint, AsyncEndpointBuilder};
pub use error::Error;
pub use failure::{Failure, FailureKind};
pub use protocol::{
    ID_HEADER, ID_PARAM, ParseIdError, Progress, RequestId, Status, TOKEN_HEADER, TOKEN_PARAM,
};
pub use task::{AsyncTask, RetryPolicy, TaskContext};
pub use trace::is_traceparent;

/// The README's examples, compiled as doctests (they use every feature).
#[cfg(all(
    doctest,
    feature = "redis",
    feature = "postgres",
    feature = "actix",
    feature = "testing",
    feature = "metrics"
))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
