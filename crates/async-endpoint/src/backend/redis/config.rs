//! [`RedisBackendBuilder`]: the settings of the Redis backend, validated by `build()`.

use std::time::Duration;

use super::RedisBackend;
use crate::error::Error;

/// Configures a [`RedisBackend`]; `build()` checks every setting and names the bad one.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `prefix` | `"ae"` | first part of every key and of the notification channel |
/// | `claim_idle` | 30 s | a job whose worker has not been heard of for this long is claimed by another worker |
/// | `max_deliveries` | 5 | deliveries after which a request fails (internal) instead of running again |
/// | `connection_timeout` | 2 s | bound on connecting (and reconnecting) to Redis |
/// | `response_timeout` | 2 s | bound on one command's answer; past it the call fails with [`Error::Unavailable`] |
/// | `claim_batch` | 100 | most entries claimed from one stream in one go |
///
/// Running workers tell Redis they are alive every `claim_idle / 3`, so only jobs of dead or
/// stuck workers are claimed; a claimed job runs again (at-least-once), so keep `claim_idle`
/// well above a worker's worst pause and tasks idempotent.
///
/// ```
/// use async_endpoint::backend::RedisBackend;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
/// // Nothing connects yet: the first command does (so a web process starts while Redis is down).
/// let redis = RedisBackend::builder("redis://127.0.0.1:6379/")
///     .prefix("myapp")
///     .claim_idle(Duration::from_secs(60))
///     .max_deliveries(3)
///     .build()?;
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[must_use]
#[derive(Debug, Clone)]
pub struct RedisBackendBuilder {
    pub(super) url: String,
    pub(super) prefix: String,
    pub(super) claim_idle: Duration,
    pub(super) max_deliveries: u32,
    pub(super) connection_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) claim_batch: usize,
}

impl RedisBackendBuilder {
    pub(super) fn new(url: impl Into<String>) -> Self {
        RedisBackendBuilder {
            url: url.into(),
            prefix: "ae".to_owned(),
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            claim_batch: 100,
        }
    }

    /// First part of every key (`{prefix}:r:{<id>}`, `{prefix}:q:<task>`) and of the
    /// notification channel (`{prefix}:n`). Apps sharing one Redis use different prefixes;
    /// processes of one app must use the same. 1–64 characters, no `{`, `}` or whitespace.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a delivered job may go without a sign of life from its worker before another
    /// worker claims it (default 30 s; at least 100 ms). Lower means faster recovery from a
    /// crashed worker; too low risks claiming jobs of workers that are merely slow to reach Redis.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Deliveries after which a request fails with an internal failure instead of running again,
    /// so a job that crashes its worker every time stops (default 5; at least 1).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// Bound on one connection attempt (default 2 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Bound on one command's answer (default 2 s). When it passes the call fails with
    /// [`Error::Unavailable`] (a 503 for clients) instead of hanging.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Most entries claimed from one stream in one go (default 100).
    pub fn claim_batch(mut self, n: usize) -> Self {
        self.claim_batch = n;
        self
    }

    /// Checks the settings and the URL. Does not connect: the first command does, and a
    /// connection lost later is re-established by itself.
    pub fn build(self) -> Result<RedisBackend, Error> {
        let bad = |setting: &'static str, reason: String| Err(Error::Config { setting, reason });
        if self.prefix.is_empty()
            || self.prefix.len() > 64
            || self
                .prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
        {
            return bad(
                "prefix",
                format!(
                    "{:?} must be 1-64 characters without braces or whitespace",
                    self.prefix
                ),
            );
        }
        if self.claim_idle < Duration::from_millis(100) {
            return bad("claim_idle", "must be at least 100 ms".into());
        }
        if self.max_deliveries == 0 {
            return bad("max_deliveries", "must be at least 1".into());
        }
        if self.connection_timeout.is_zero() {
            return bad("connection_timeout", "must be above zero".into());
        }
        if self.response_timeout.is_zero() {
            return bad("response_timeout", "must be above zero".into());
        }
        if self.claim_batch == 0 {
            return bad("claim_batch", "must be at least 1".into());
        }
        let client = match redis::Client::open(self.url.as_str()) {
            Ok(client) => client,
            Err(error) => return bad("url", format!("not a usable Redis URL: {error}")),
        };
        Ok(RedisBackend::from_parts(client, self))
    }
}
