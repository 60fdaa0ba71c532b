//! A private PostgreSQL server shared by the tests that run at the same time (each in its own
//! schema), stopped once the last of them ends.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use test_support::postgres::PostgresServer;

static SHARED: Mutex<Weak<PostgresServer>> = Mutex::new(Weak::new());

/// The shared server (started when no test holds it), or `None` after the skip rule.
pub(crate) fn shared_server() -> Option<Arc<PostgresServer>> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(server) = shared.upgrade() {
        return Some(server);
    }
    let server = Arc::new(test_support::postgres::start()?);
    *shared = Arc::downgrade(&server);
    Some(server)
}

/// A schema name no other test of this run uses.
pub(crate) fn fresh_schema(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t_{what}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
