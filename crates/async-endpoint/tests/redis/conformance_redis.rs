//! The backend conformance suite against the Redis backend, each test on a private redis-server
//! (skipped with a loud message when redis-server is not installed; failing under `CI=true`).
#![cfg(feature = "redis")]

use crate::conformance;

use std::time::Duration;

use async_endpoint::backend::RedisBackend;
use test_support::redis::RedisServer;

/// A Redis backend that owns its private server, so the server lives exactly as long as the test.
type Served = conformance::Served<RedisBackend, RedisServer>;

async fn served() -> Option<Served> {
    let server = test_support::redis::start()?;
    let backend = RedisBackend::builder(server.url())
        .claim_idle(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    Some(Served {
        backend,
        guard: server,
    })
}

conformance::suite!(served());
