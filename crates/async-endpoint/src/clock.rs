//! The one clock: wall-clock milliseconds since the Unix epoch.
//!
//! Deadlines and expiries are stored as unix milliseconds so that every process (web and worker,
//! on any host) judges them the same way. Everything that needs "now" calls [`now_ms`].
//!
//! With the `testing` feature, "now" follows Tokio's clock: the wall time at the first reading
//! plus the time Tokio's clock has moved since, so a test on a paused clock
//! (`tokio::time::pause`, `advance`) moves deadlines, token expiry and in-memory TTLs with it.
//! On a running clock that is the wall time. Without the feature (production) it is the system
//! clock, read directly.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
#[cfg(not(feature = "testing"))]
pub(crate) fn now_ms() -> u64 {
    system_ms()
}

/// Milliseconds since the Unix epoch, on Tokio's clock (see the module's docs).
#[cfg(feature = "testing")]
pub(crate) fn now_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    let &(wall, at) = ANCHOR.get_or_init(|| (system_ms(), Instant::now()));
    let now = tokio::time::Instant::now().into_std();
    match now.checked_duration_since(at) {
        Some(later) => wall.saturating_add(later.as_millis() as u64),
        None => wall.saturating_sub(at.duration_since(now).as_millis() as u64),
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
