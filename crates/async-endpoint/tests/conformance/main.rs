//! The backend conformance suite against the in-memory backend.

#[path = "suite.rs"]
mod conformance;

conformance::suite!(async { Some(async_endpoint::backend::MemoryBackend::new()) });
