//! [`PostgresBackendBuilder`]: the settings of the PostgreSQL backend, validated by `build()`.

use std::str::FromStr;
use std::time::Duration;

use super::PostgresBackend;
use crate::error::Error;

/// Configures a [`PostgresBackend`]; `build()` checks every setting and names the bad one.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `schema` | `"async_endpoint"` | the schema the backend creates and migrates (its table, functions and notification channel) |
/// | `claim_idle` | 30 s | a job whose worker has not been heard of for this long (its lease ran out) is taken over by another worker |
/// | `max_deliveries` | 5 | deliveries after which a request fails (internal) instead of running again |
/// | `pool_size` | 16 | most pooled connections of this process (plus one listener connection) |
/// | `connection_timeout` | 5 s | bound on connecting (and on waiting for a pooled connection) |
/// | `response_timeout` | 5 s | bound on one statement; past it the call fails with [`Error::Unavailable`] |
/// | `sweep_interval` | 30 s | how often this process deletes expired rows |
/// | `sweep_batch` | 1000 | most rows one sweeping statement deletes (each batch is its own short transaction) |
///
/// Running workers extend their leases every `claim_idle / 3`, so only jobs of dead or stuck
/// workers are taken over; a taken-over job runs again (at-least-once), so keep `claim_idle` well
/// above a worker's worst pause and tasks idempotent.
///
/// The URL is libpq's (`postgres://user:password@host:port/db?options`, or `host=… user=…`).
/// TLS is not compiled in: connect over a trusted network or a local socket.
///
/// ```
/// use async_endpoint::backend::PostgresBackend;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
/// // Nothing connects yet: the first operation does (and migrates the schema).
/// let postgres = PostgresBackend::builder("postgres://app@127.0.0.1:5432/app")
///     .schema("myapp_async")
///     .claim_idle(Duration::from_secs(60))
///     .max_deliveries(3)
///     .build()?;
/// # Ok(()) }
/// ```
#[must_use]
#[derive(Debug, Clone)]
pub struct PostgresBackendBuilder {
    pub(super) url: String,
    pub(super) schema: String,
    pub(super) claim_idle: Duration,
    pub(super) max_deliveries: u32,
    pub(super) pool_size: usize,
    pub(super) connection_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) sweep_interval: Duration,
    pub(super) sweep_batch: u32,
}

impl PostgresBackendBuilder {
    pub(super) fn new(url: impl Into<String>) -> Self {
        PostgresBackendBuilder {
            url: url.into(),
            schema: "async_endpoint".to_owned(),
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            pool_size: 16,
            connection_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(30),
            sweep_batch: 1000,
        }
    }

    /// The schema that holds the backend's table and functions, created and migrated on first
    /// use (default `async_endpoint`). Apps sharing one database use different schemas;
    /// processes of one app must use the same. 1–48 characters of `a-z`, `0-9` and `_`, not
    /// starting with a digit, and not `pg_…`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How long a delivered job's lease lasts without a heartbeat from its worker before another
    /// worker takes it over (default 30 s; at least 100 ms).
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Deliveries after which a request fails with an internal failure instead of running again,
    /// so a job that kills its worker every time stops (default 5; at least 1).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// Most connections this process's pool opens (default 16; at least 1). One more, the
    /// listener, receives `LISTEN/NOTIFY` wake-ups for the whole process.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Bound on one connection attempt and on waiting for a free pooled connection (default 5 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Bound on one statement's answer (default 5 s). When it passes the call fails with
    /// [`Error::Unavailable`] (a 503 for clients) instead of hanging.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How often this process deletes rows whose TTL passed (default 30 s; at least 10 ms).
    /// Expired rows are invisible to reads at once; this only reclaims their space.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Most rows one sweeping statement deletes (default 1000; 1–100000). Batches are separate
    /// short transactions that skip rows others hold, so sweeping never holds long locks.
    pub fn sweep_batch(mut self, n: u32) -> Self {
        self.sweep_batch = n;
        self
    }

    /// Checks the settings and the URL. Does not connect: the first operation does (and applies
    /// the migrations), and connections lost later are re-established by themselves.
    pub fn build(self) -> Result<PostgresBackend, Error> {
        let bad = |setting: &'static str, reason: String| Err(Error::Config { setting, reason });
        if !valid_schema(&self.schema) {
            return bad(
                "schema",
                format!(
                    "{:?} must be 1-48 characters of a-z, 0-9 and _, not starting with a digit \
                     or pg_",
                    self.schema
                ),
            );
        }
        if self.claim_idle < Duration::from_millis(100) {
            return bad("claim_idle", "must be at least 100 ms".into());
        }
        if self.max_deliveries == 0 || self.max_deliveries > i32::MAX as u32 {
            return bad("max_deliveries", "must be at least 1".into());
        }
        if self.pool_size == 0 {
            return bad("pool_size", "must be at least 1".into());
        }
        if self.connection_timeout.is_zero() {
            return bad("connection_timeout", "must be above zero".into());
        }
        if self.response_timeout.is_zero() {
            return bad("response_timeout", "must be above zero".into());
        }
        if self.sweep_interval < Duration::from_millis(10) {
            return bad("sweep_interval", "must be at least 10 ms".into());
        }
        if !(1..=100_000).contains(&self.sweep_batch) {
            return bad("sweep_batch", "must be 1-100000".into());
        }
        // The parser's message may quote the URL (and a password in it): keep it out.
        let Ok(mut config) = tokio_postgres::Config::from_str(&self.url) else {
            return bad("url", "not a usable PostgreSQL URL".into());
        };
        config.connect_timeout(self.connection_timeout);
        if config.get_application_name().is_none() {
            config.application_name("async-endpoint");
        }
        // A dead peer (not a refused connection) is noticed by the listener within a minute.
        config.keepalives_idle(Duration::from_secs(30));
        PostgresBackend::from_parts(config, self)
    }
}

/// A lower-case identifier that needs no quoting and leaves room for the channel's suffix.
fn valid_schema(schema: &str) -> bool {
    (1..=48).contains(&schema.len())
        && !schema.starts_with("pg_")
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(built: Result<PostgresBackend, Error>) -> &'static str {
        match built {
            Err(Error::Config { setting, .. }) => setting,
            Err(other) => panic!("not a config error: {other}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let b = || PostgresBackendBuilder::new("postgres://u@127.0.0.1/db");
        for schema in ["", "A", "1a", "pg_x", "a-b", "a b", &"a".repeat(49)] {
            assert_eq!(setting(b().schema(schema).build()), "schema", "{schema:?}");
        }
        assert_eq!(
            setting(b().claim_idle(Duration::from_millis(5)).build()),
            "claim_idle"
        );
        assert_eq!(setting(b().max_deliveries(0).build()), "max_deliveries");
        assert_eq!(setting(b().pool_size(0).build()), "pool_size");
        assert_eq!(
            setting(b().connection_timeout(Duration::ZERO).build()),
            "connection_timeout"
        );
        assert_eq!(
            setting(b().response_timeout(Duration::ZERO).build()),
            "response_timeout"
        );
        assert_eq!(
            setting(b().sweep_interval(Duration::ZERO).build()),
            "sweep_interval"
        );
        assert_eq!(setting(b().sweep_batch(0).build()), "sweep_batch");
        let url = PostgresBackendBuilder::new("postgres://u:hunter2@127.0.0.1:notaport/db").build();
        match url {
            Err(Error::Config { setting, reason }) => {
                assert_eq!(setting, "url");
                assert!(!reason.contains("hunter2"));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
