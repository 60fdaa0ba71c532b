//! Trace context that travels with a job: the W3C `traceparent` of the span that started a
//! request is stored with it, and the worker's span of the task is linked to it, in whichever
//! process runs it.
//!
//! The library carries the `traceparent` string and leaves making and reading it to the app's
//! tracing stack (two hooks on the builder), so it depends on no OpenTelemetry version: see
//! [`AsyncEndpointBuilder::trace_context`](crate::AsyncEndpointBuilder::trace_context).

use std::sync::Arc;

/// Makes the `traceparent` of the current span (the HTTP request's) at a start.
pub(crate) type CaptureFn = Arc<dyn Fn() -> Option<String> + Send + Sync>;
/// Makes the worker's span of a task (given) a child of the start's `traceparent` (given).
pub(crate) type LinkFn = Arc<dyn Fn(&tracing::Span, &str) + Send + Sync>;

/// The app's two trace hooks; both off by default.
#[derive(Clone, Default)]
pub(crate) struct TraceHooks {
    pub(crate) capture: Option<CaptureFn>,
    pub(crate) link: Option<LinkFn>,
}

impl TraceHooks {
    /// The current span's `traceparent`, if the app captures one and it is well-formed.
    pub(crate) fn capture(&self) -> Option<String> {
        let traceparent = (self.capture.as_ref()?)()?;
        if is_traceparent(&traceparent) {
            Some(traceparent)
        } else {
            tracing::debug!("trace_context hook returned no valid traceparent: not stored");
            None
        }
    }

    /// Links `span` (the worker's span of the task) to the start's `traceparent`.
    pub(crate) fn link(&self, span: &tracing::Span, traceparent: &str) {
        if let Some(link) = &self.link {
            if is_traceparent(traceparent) {
                link(span, traceparent);
            }
        }
    }
}

/// Whether `value` is a W3C `traceparent` of version 00 as it travels: `00-<32 hex trace id>-<16
/// hex parent id>-<2 hex flags>`, lowercase, with non-zero ids (55 characters: what is stored
/// stays that small).
///
/// ```
/// # use async_endpoint::is_traceparent;
/// assert!(is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
/// assert!(!is_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
/// assert!(!is_traceparent("not a traceparent"));
/// ```
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if *version == "00" && hex(trace, 32) && nonzero(trace) && hex(parent, 16)
            && nonzero(parent) && hex(flags, 2))
}
