//! RFC 9457 problem documents: the only error bodies a client ever sees.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

/// The media type of problem documents.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// A problem response with a fixed, client-safe `detail`.
pub(crate) fn problem(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One body for every unknown, malformed, forged or foreign id/token: no oracle.
pub(crate) fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "No async request matches this id and token.",
    )
}

/// A genuine token past its expiry.
pub(crate) fn gone() -> Response {
    problem(
        StatusCode::GONE,
        "This async request has expired; start a new one.",
    )
}

/// The backend cannot be reached; the client should come back later.
pub(crate) fn unavailable(retry_after_secs: u64) -> Response {
    let mut response = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "The service is temporarily unavailable; retry later.",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// A mistake of the application's developer (logged with its cause); the client learns nothing.
pub(crate) fn internal() -> Response {
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server could not handle this request.",
    )
}
