//! Failures: why a request failed ([`FailureKind`]), what the client is told ([`Failure`]), and
//! the generic messages the engine shows for the kinds whose details stay in the logs.

use serde::{Deserialize, Serialize};

/// The client's message when a task panics or hits an internal error, unless configured
/// (`internal_error_message`).
pub(crate) const DEFAULT_INTERNAL_MESSAGE: &str =
    "The request could not be completed because of an internal error.";
/// The client's message when a request's deadline passes, unless configured (`timeout_message`).
pub(crate) const DEFAULT_TIMEOUT_MESSAGE: &str = "The request did not finish in time.";
/// The client's message for a cancelled request, unless configured (`cancelled_message`).
pub(crate) const DEFAULT_CANCELLED_MESSAGE: &str = "The request was cancelled.";

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum FailureKind {
    /// The task returned `Err(Failure::new(..))`; the message is the task's own.
    Task,
    /// The task panicked, its params or output could not be decoded, or its worker gave up on it;
    /// the message is the endpoint's generic one and the details are in `tracing`.
    Internal,
    /// The deadline passed before the task finished.
    Timeout,
    /// A client cancelled the request (`DELETE` with its id and token) before it finished; the
    /// message is the endpoint's `cancelled_message`.
    Cancelled,
}

/// A failed request: the original gem's `failed 'message'`.
///
/// The message is shown to the client, so write it for them; never put error details in it.
///
/// ```
/// use async_endpoint::{Failure, FailureKind};
///
/// let f = Failure::new("The card was declined");
/// assert_eq!(f.message(), "The card was declined");
/// assert_eq!(f.kind(), FailureKind::Task);
/// assert!(!f.is_permanent());
/// assert!(f.permanent().is_permanent());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    kind: FailureKind,
    message: String,
    #[serde(skip)]
    permanent: bool,
}

impl Failure {
    /// A failure whose message the client sees.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Task,
            message: message.into(),
            permanent: false,
        }
    }

    /// Marks the failure as not worth retrying: the request fails at once even when the task has
    /// a [`RetryPolicy`](crate::RetryPolicy).
    #[must_use]
    pub fn permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    pub(crate) fn with_kind(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            permanent: matches!(kind, FailureKind::Timeout | FailureKind::Cancelled),
        }
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Why it failed.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether retries are skipped for this failure.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
