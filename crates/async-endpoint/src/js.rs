//! The bundled JS client (`assets/async_endpoint.js`), served with an `ETag`.
//!
//! One dependency-free ES module: a Promise API over `fetch` (`asyncRequest`), resumable state,
//! and, when jQuery is on the page, the original `$.getAsyncRequest(url, timeout)`. The same file
//! is published to npm as `async-endpoint`.
//!
//! ```
//! use axum::{Router, routing::get};
//!
//! let app: Router = Router::new().route(async_endpoint::js::PATH, get(async_endpoint::js::serve));
//! ```
//!
//! ```html
//! <script type="module">
//!   import { asyncRequest } from "/async_endpoint.js";
//!   const { body } = await asyncRequest("/my_endpoint", { onProgress: (p) => console.log(p) });
//! </script>
//! ```

use std::sync::OnceLock;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

/// The module's source.
pub const SOURCE: &str = include_str!("../assets/async_endpoint.js");

/// The conventional route for the module.
pub const PATH: &str = "/async_endpoint.js";

/// A strong validator derived from the content, so a new release is never served from a stale
/// cache.
fn etag() -> &'static HeaderValue {
    static ETAG: OnceLock<HeaderValue> = OnceLock::new();
    ETAG.get_or_init(|| {
        let digest = Sha256::digest(SOURCE.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
    })
}

/// Serves [`SOURCE`] as `text/javascript` with an `ETag` and `Cache-Control: no-cache` (browsers
/// keep it and revalidate; an unchanged file costs a 304 without a body).
pub async fn serve(headers: HeaderMap) -> Response {
    let etag = etag();
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/").as_bytes() == etag.as_bytes()
        });
    let mut response = if fresh {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Body::from(SOURCE))
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, etag.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
