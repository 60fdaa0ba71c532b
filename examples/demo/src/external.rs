//! The deliberately slow fake external API the demo calls.
//!
//! A lookup takes `delay_ms` and fails with probability `fail_rate` %, at a random moment in the
//! second half of the call (the way a real upstream gives up with a 503). It comes in two flavours,
//! like real client libraries: [`lookup`] is an async client (it awaits a timer, and can report
//! progress), [`lookup_blocking`] is a blocking SDK (it puts the calling thread to sleep).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_endpoint::TaskContext;
use serde::{Deserialize, Serialize};

/// How often the async client reports progress (the endpoint's `progress_interval` is 250 ms).
const TICK: Duration = Duration::from_millis(250);
/// Bounds on the delay a client may ask for.
const MIN_DELAY_MS: u64 = 100;
/// The longest call: well under the endpoint's 60 s deadline.
pub const MAX_DELAY_MS: u64 = 30_000;
/// Longest query kept (longer ones are cut, on a character boundary).
const MAX_QUERY_CHARS: usize = 100;

/// What the page asks for: a query, how slow the API should be, and how often it should fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LookupParams {
    /// The text to look up.
    pub q: String,
    /// How long the call takes, in milliseconds (clamped to 100–30 000).
    pub delay_ms: u64,
    /// Chance of failure in percent (clamped to 0–100).
    pub fail_rate: u8,
}

impl Default for LookupParams {
    fn default() -> Self {
        LookupParams {
            q: "hello".into(),
            delay_ms: 5_000,
            fail_rate: 0,
        }
    }
}

impl LookupParams {
    /// The same params with every field in range.
    pub fn clamped(&self) -> LookupParams {
        LookupParams {
            q: self.q.trim().chars().take(MAX_QUERY_CHARS).collect(),
            delay_ms: self.delay_ms.clamp(MIN_DELAY_MS, MAX_DELAY_MS),
            fail_rate: self.fail_rate.min(100),
        }
    }
}

/// A successful answer of the fake API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// What the API found.
    pub answer: String,
    /// How long the call took, in milliseconds.
    pub took_ms: u64,
}

/// The fake API gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// How long it took to fail, in milliseconds.
    pub after_ms: u64,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "The external API answered 503 Service Unavailable after {:.1} s.",
            self.after_ms as f64 / 1000.0
        )
    }
}

impl std::error::Error for ApiError {}

/// One call's fate, decided up front: how long it runs and whether it ends in a failure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    total: Duration,
    /// `Some(t)`: the call fails after `t` (≤ `total`).
    fails_after: Option<Duration>,
}

impl Plan {
    fn roll(params: &LookupParams) -> Plan {
        let total = Duration::from_millis(params.delay_ms);
        let fails = u64::from(params.fail_rate) > random() % 100;
        // Fail somewhere in the second half: the bar moves, then the upstream gives up.
        let fails_after = fails.then(|| total.mul_f64(0.5 + (random() % 500) as f64 / 1000.0));
        Plan { total, fails_after }
    }

    fn end(&self) -> Duration {
        self.fails_after.unwrap_or(self.total)
    }

    fn outcome(&self, params: &LookupParams, took: Duration) -> Result<Answer, ApiError> {
        let took_ms = millis(took);
        match self.fails_after {
            Some(_) => Err(ApiError { after_ms: took_ms }),
            None => Ok(Answer {
                answer: answer_for(&params.q),
                took_ms,
            }),
        }
    }
}

/// Calls of the async client dropped before they ended (their task was cancelled).
static CALLS_STOPPED: AtomicU64 = AtomicU64::new(0);

/// How many calls of the async client were stopped midway in this process (a cancelled task's
/// future is dropped at its next await, and the call with it).
pub fn calls_stopped() -> u64 {
    CALLS_STOPPED.load(Ordering::Relaxed)
}

/// Logs and counts a call dropped before it ended: what a real client's connection close is.
struct StopWatch {
    started: Instant,
    ended: bool,
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        if !self.ended {
            CALLS_STOPPED.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                after_ms = millis(self.started.elapsed()),
                "external call stopped: its request was cancelled"
            );
        }
    }
}

/// The async client: awaits the slow call, reporting progress to `ctx` when given one. Dropping
/// its future stops the call (no more progress, nothing more awaited).
pub async fn lookup(params: &LookupParams, ctx: Option<&TaskContext>) -> Result<Answer, ApiError> {
    let params = params.clamped();
    let plan = Plan::roll(&params);
    let started = Instant::now();
    let mut watch = StopWatch {
        started,
        ended: false,
    };
    let total_ms = millis(plan.total);
    loop {
        let elapsed = started.elapsed();
        if elapsed >= plan.end() {
            break;
        }
        if let Some(ctx) = ctx {
            let message = format!(
                "waiting for the external API · {:.1} of {:.1} s",
                elapsed.as_secs_f64(),
                plan.total.as_secs_f64()
            );
            ctx.progress(millis(elapsed), Some(total_ms), message).await;
        }
        tokio::time::sleep(TICK.min(plan.end() - elapsed)).await;
    }
    watch.ended = true;
    plan.outcome(&params, started.elapsed())
}

/// The blocking SDK: the same call, but it puts the calling thread to sleep for the whole time.
pub fn lookup_blocking(params: &LookupParams) -> Result<Answer, ApiError> {
    let params = params.clamped();
    let plan = Plan::roll(&params);
    let started = Instant::now();
    std::thread::sleep(plan.end());
    plan.outcome(&params, started.elapsed())
}

/// A deterministic, slightly plausible answer.
fn answer_for(q: &str) -> String {
    let q = if q.is_empty() { "(nothing)" } else { q };
    // FNV-1a: stable across processes, so every worker gives the same answer.
    let hash = q.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{} results for “{q}”", 1 + hash % 9_999)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A random number for the dice; falls back to the clock if the OS has no randomness to give.
fn random() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_clamped() {
        let p = LookupParams {
            q: format!("  {}  ", "x".repeat(500)),
            delay_ms: 1_000_000,
            fail_rate: 250,
        }
        .clamped();
        assert_eq!(p.q.chars().count(), MAX_QUERY_CHARS);
        assert_eq!(p.delay_ms, MAX_DELAY_MS);
        assert_eq!(p.fail_rate, 100);
        assert_eq!(
            LookupParams {
                delay_ms: 0,
                ..LookupParams::default()
            }
            .clamped()
            .delay_ms,
            MIN_DELAY_MS
        );
    }

    #[test]
    fn fail_rate_zero_never_fails_and_hundred_always_does() {
        let ok = LookupParams {
            delay_ms: 100,
            fail_rate: 0,
            ..LookupParams::default()
        };
        let bad = LookupParams {
            fail_rate: 100,
            ..ok.clone()
        };
        for _ in 0..3 {
            let answer = lookup_blocking(&ok).expect("fail_rate 0 succeeds");
            assert_eq!(answer.answer, answer_for("hello"));
            assert!(answer.took_ms >= 100, "took {} ms", answer.took_ms);
            let error = lookup_blocking(&bad).expect_err("fail_rate 100 fails");
            assert!(error.to_string().contains("503"), "{error}");
        }
    }
}
