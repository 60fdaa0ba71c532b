//! RFC 9457 problem documents: the only error bodies a client ever sees.
//!
//! A [`Problem`] is framework-neutral: the engine decides which one applies, and each framework
//! adapter writes [`Problem::status`], [`Problem::body`] and the headers it names.

use http::StatusCode;

/// The media type of problem documents.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// Every problem the protocol answers with; each has a fixed, client-safe `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    /// Unknown, malformed, forged or foreign id/token: one body for all of them, so no oracle.
    NotFound,
    /// A genuine token past its expiry.
    Gone,
    /// The backend cannot be reached; the client should come back after `retry_after` seconds.
    Unavailable {
        /// Whole seconds for `Retry-After`.
        retry_after: u64,
    },
    /// A `DELETE` of a request that already finished (done, failed or timed out): nothing to
    /// cancel; its result stays readable.
    Finished,
    /// The start's params, serialized, are larger than `max_params_bytes`. Params carry what a
    /// client sent (a body, a form), so this is the client's doing: a 413, never a 500.
    TooLarge,
    /// The start's `Idempotency-Key` header is malformed: empty, longer than 255 bytes, not
    /// visible ASCII, badly quoted, or sent more than once.
    BadIdempotencyKey,
    /// The start's `Idempotency-Key` was used before (same task and owner) with other params.
    IdempotencyKeyReused,
    /// A pending-request limit (the owner's or the task's) is reached: nothing was enqueued; the
    /// client may start again after `retry_after` seconds. One text for either limit, so a client
    /// learns nothing about other owners.
    TooManyPending {
        /// Whole seconds for `Retry-After`.
        retry_after: u64,
    },
    /// A mistake of the application's developer, or a backend refusal (logged with its cause);
    /// the client learns nothing.
    Internal,
    /// An event stream request whose body is not `{"requests": [{"async_request_id", "async_request_token"}]}`.
    BadStreamRequest,
}

impl Problem {
    /// The HTTP status.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Problem::NotFound => StatusCode::NOT_FOUND,
            Problem::Gone => StatusCode::GONE,
            Problem::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Problem::Finished => StatusCode::CONFLICT,
            Problem::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::BadIdempotencyKey => StatusCode::BAD_REQUEST,
            Problem::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::TooManyPending { .. } => StatusCode::TOO_MANY_REQUESTS,
            Problem::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Problem::BadStreamRequest => StatusCode::BAD_REQUEST,
        }
    }

    /// The `detail` member: fixed text, never an error's.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Problem::NotFound => "No async request matches this id and token.",
            Problem::Gone => "This async request has expired; start a new one.",
            Problem::Unavailable { .. } => "The service is temporarily unavailable; retry later.",
            Problem::Finished => {
                "This async request has already finished; its result can still be read."
            }
            Problem::TooLarge => "The request's parameters are larger than this endpoint accepts.",
            Problem::BadIdempotencyKey => {
                "The Idempotency-Key header must be sent once, with 1 to 255 visible ASCII characters."
            }
            Problem::IdempotencyKeyReused => {
                "This Idempotency-Key was used with other parameters; send a new key for a new request."
            }
            Problem::TooManyPending { .. } => {
                "Too many requests are pending; wait for some to finish, then start again."
            }
            Problem::Internal => "The server could not handle this request.",
            Problem::BadStreamRequest => {
                "An event stream request's body must be JSON: {\"requests\": [{\"async_request_id\", \"async_request_token\"}]}."
            }
        }
    }

    /// Seconds for a `Retry-After` header, when the problem calls for one.
    pub(crate) fn retry_after(self) -> Option<u64> {
        match self {
            Problem::Unavailable { retry_after } | Problem::TooManyPending { retry_after } => {
                Some(retry_after)
            }
            _ => None,
        }
    }

    /// The `application/problem+json` body.
    pub(crate) fn body(self) -> String {
        let status = self.status();
        serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.detail(),
        })
        .to_string()
    }
}
