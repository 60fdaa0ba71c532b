//! The protocol suite again, against the actix-web adapter served on a real TCP port: the same
//! test file, with `support::router` building the actix app instead of the axum router.

pub(crate) mod support {
    pub(crate) use crate::support::*;

    /// The actix-web app with the same routes as the axum router.
    pub(crate) fn router(endpoint: &async_endpoint::AsyncEndpoint) -> ActixApp {
        actix_app(endpoint)
    }
}

// Deliberately the same file a second time, against the other framework.
#[allow(clippy::duplicate_mod)]
#[path = "http_protocol.rs"]
mod http_protocol;
