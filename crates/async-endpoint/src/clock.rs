//! The one clock: wall-clock milliseconds since the Unix epoch.
//!
//! Deadlines and expiries are stored as unix milliseconds so that every process (web and worker,
//! on any host) judges them the same way. Everything that needs "now" calls [`now_ms`], so a test
//! clock, if one is ever needed, has one place to go.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
