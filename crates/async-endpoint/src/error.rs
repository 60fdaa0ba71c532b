//! The crate's one error type.

/// Everything that can go wrong in async-endpoint, for the developer (never shown to a client).
///
/// Client-facing answers are problem documents built from these; the error itself (with its
/// source chain) goes to `tracing`.
///
/// ```
/// use async_endpoint::{AsyncEndpoint, Error};
///
/// let err = AsyncEndpoint::builder().secret(b"too short").build().unwrap_err();
/// assert!(matches!(err, Error::Config { setting: "secret", .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is missing or out of range; `setting` names it.
    #[error("invalid setting `{setting}`: {reason}")]
    Config {
        /// The builder method whose value is wrong.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `build()` was called outside a Tokio runtime while in-process workers were requested.
    #[error("no Tokio runtime: call build() inside a Tokio runtime, or disable in-process workers")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
    /// The task's params could not be serialized to JSON.
    #[error("params of task `{task}` could not be serialized")]
    SerializeParams {
        /// The task's `NAME`.
        task: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The task's serialized params exceed the configured limit.
    #[error("params of task `{task}` are {size} bytes, above the limit of {limit} bytes")]
    ParamsTooLarge {
        /// The task's `NAME`.
        task: &'static str,
        /// Serialized size in bytes.
        size: usize,
        /// The configured limit (`max_params_bytes`).
        limit: usize,
    },
    /// A handler used `AsyncRequest<T>` for a task that was not registered with `.task(..)`.
    #[error("task `{0}` is not registered on this endpoint: add `.task(..)` to the builder")]
    UnknownTask(String),
    /// A stored value (output, params, record) could not be decoded.
    #[error("stored data of task `{task}` could not be decoded")]
    Decode {
        /// The task's `NAME`.
        task: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The backend could not be reached (connection refused, timed out, …). Clients get a 503.
    #[error("backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend was reached but refused the operation (e.g. a Redis permission, type or
    /// out-of-range error). Clients get a 500; the source says why.
    #[error("backend refused the operation")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend answered with something this version does not understand.
    #[error("backend returned unexpected data: {0}")]
    Corrupt(String),
}

impl Error {
    /// True when the cause is a backend that cannot be reached right now (clients get 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}
