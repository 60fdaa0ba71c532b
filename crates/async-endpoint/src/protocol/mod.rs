//! The wire protocol (v1), framework-neutral: request ids, tokens, the status body of a 202,
//! problem documents, credentials and `Prefer: wait`.
//!
//! Nothing here knows a web framework or a backend; the engine decides with these types and each
//! framework adapter writes them out.

mod credentials;
mod id;
pub(crate) mod prefer;
mod problem;
mod status;
pub(crate) mod token;

pub(crate) use credentials::Call;
pub use credentials::{ID_HEADER, ID_PARAM, TOKEN_HEADER, TOKEN_PARAM};
pub use id::{ParseIdError, RequestId};
pub(crate) use problem::{PROBLEM_JSON, Problem};
pub(crate) use status::StatusBody;
pub use status::{Progress, Status};

#[cfg(test)]
pub(crate) use credentials::{MAX_CREDENTIAL_LEN, one};
