//! The wire protocol (v1), framework-neutral: request ids, tokens, the status body of a 202,
//! problem documents, credentials and `Prefer: wait`.
//!
//! Nothing here knows a web framework or a backend; the engine decides with these types and each
//! framework adapter writes them out.

mod credentials;
mod id;
pub(crate) mod idempotency;
pub(crate) mod prefer;
mod problem;
mod status;
pub(crate) mod token;

pub(crate) use credentials::Call;
pub use credentials::{ID_HEADER, ID_PARAM, TOKEN_HEADER, TOKEN_PARAM};
pub(crate) use id::random_bytes;
pub use id::{ParseIdError, RequestId};
pub(crate) use problem::{PROBLEM_JSON, Problem};
pub(crate) use status::StatusBody;
pub use status::{Progress, Status};

#[cfg(test)]
pub(crate) use credentials::{MAX_CREDENTIAL_LEN, one};

use http::StatusCode;

/// The answer to a start or a poll of a request under way.
pub(crate) const ACCEPTED_STATUS: StatusCode = StatusCode::ACCEPTED;
/// The answer to a poll of a failed request when the app's `failed` sets no status of its own
/// (a done request's is 200, the framework's default).
pub(crate) const FAILED_STATUS: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;
/// `Cache-Control` of every answer: ids, tokens and results are private to the token's holder.
pub(crate) const NO_STORE: &str = "no-store";
