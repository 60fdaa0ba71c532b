//! The backend conformance suite against the in-memory backend.

mod conformance;

conformance::suite!(async { Some(async_endpoint::backend::MemoryBackend::new()) });
