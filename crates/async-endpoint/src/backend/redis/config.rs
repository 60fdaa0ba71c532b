//! [`RedisBackendBuilder`]: the settings of the Redis backend, validated by `build()`.

use std::time::Duration;

use super::RedisBackend;
use super::connector::{self, Connector};
use crate::error::Error;

/// Configures a [`RedisBackend`]; `build()` checks every setting and names the bad one.
///
/// | setting | default | meaning |
/// |---|---|---|
/// | `prefix` | `"ae"` | first part of every key and of the notification channel |
/// | `takeover_after` | 5 s | the running jobs of a worker process silent this long (killed, crashed, cut off) are taken over by another worker |
/// | `claim_idle` | 30 s | a job its (live) worker stopped vouching for (dropped after an error, or running past its deadline) is claimed after this long |
/// | `max_deliveries` | 5 | deliveries after which a request fails (internal) instead of running again |
/// | `connection_timeout` | 2 s | bound on connecting (and reconnecting) to Redis |
/// | `response_timeout` | 2 s | bound on one command's answer; past it the call fails with [`Error::Unavailable`] |
/// | `claim_batch` | 100 | most entries claimed from one stream in one go |
/// | `shards` | 16 | Redis Cluster only: how many shards (hash tags) requests are spread over |
/// | `tls_root_certificate` | the system's roots | CA (PEM) that signs the server's certificate, for `rediss://` (feature `redis-tls`) |
/// | `tls_client_certificate` | none | certificate and key (PEM) for servers that require client certificates (feature `redis-tls`) |
///
/// URLs: `redis://[user:pass@]host:port/db`, and `rediss://…` for TLS (feature `redis-tls`:
/// rustls, no system OpenSSL; the server is verified against the system's roots or
/// `tls_root_certificate`; `rediss://host/#insecure` skips verification and is for tests only).
///
/// Redis Sentinel: `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/<master>[/db]`
/// lists the sentinels (port 26379 unless given) and names the monitored master; the
/// credentials and db are the primary's (sentinels are reached without a password). Every
/// connection, and every reconnection, asks the sentinels which server is primary now, so after
/// a failover the backend follows the new primary; requests caught by the switch answer 503 (or
/// their workers retry) instead of hanging. Sentinel with TLS is not supported yet.
///
/// Each worker process keeps a heartbeat key (`{prefix}:w:<consumer>`, refreshed every
/// `takeover_after / 5`, expiring after `takeover_after × 2/5`). Another worker takes over the
/// jobs of a process whose key is gone and stays gone for a grace period (`takeover_after ×
/// 2/5`), so a killed worker's jobs run again within `takeover_after`, while a live worker's jobs
/// are never taken, however long they run: a beat delayed by a slow or paused Redis lands within
/// the grace period. A taken-over job runs again (at-least-once), so keep tasks idempotent.
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
    pub(super) takeover_after: Duration,
    pub(super) max_deliveries: u32,
    pub(super) connection_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) claim_batch: usize,
    /// The seed nodes of a Redis Cluster (`cluster_builder`); `None` for one server or Sentinel.
    pub(super) cluster: Option<Vec<String>>,
    /// Shards on a cluster; `None` until set (16 on a cluster).
    pub(super) shards: Option<u16>,
    #[cfg(feature = "redis-tls")]
    pub(super) tls_root: Option<Vec<u8>>,
    #[cfg(feature = "redis-tls")]
    pub(super) tls_client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisBackendBuilder {
    pub(super) fn new(url: impl Into<String>) -> Self {
        RedisBackendBuilder {
            url: url.into(),
            prefix: "ae".to_owned(),
            claim_idle: Duration::from_secs(30),
            takeover_after: Duration::from_secs(5),
            max_deliveries: 5,
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            claim_batch: 100,
            cluster: None,
            shards: None,
            #[cfg(feature = "redis-tls")]
            tls_root: None,
            #[cfg(feature = "redis-tls")]
            tls_client: None,
        }
    }

    /// A builder for the Redis Cluster whose seed nodes are `urls` (feature `redis-cluster`).
    #[cfg(feature = "redis-cluster")]
    pub(super) fn new_cluster<I>(urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        let mut builder = Self::new(urls.first().cloned().unwrap_or_default());
        builder.cluster = Some(urls);
        builder
    }

    /// On a Redis Cluster: how many shards requests are spread over (default 16; 1 to 256).
    /// Each shard has a hash tag of its own, placed so that the shards spread evenly over the
    /// masters; a request's record, its job's entry in its task's queue and its idempotency key
    /// live in its shard's slot, and workers read every shard. More shards than masters keeps
    /// the load even (16 on 3 masters: 6, 5 and 5); more than a few per master only adds reads
    /// for idle workers. Raise it when adding masters; never lower it while requests are
    /// pending (jobs in the dropped shards would wait until their deadline). Every process of
    /// an app must use the same value. Only for a cluster: a one-server backend refuses it.
    ///
    /// ```
    /// use async_endpoint::backend::RedisBackend;
    ///
    /// let built = RedisBackend::builder("redis://127.0.0.1/").shards(8).build();
    /// assert!(matches!(built, Err(async_endpoint::Error::Config { setting: "shards", .. })));
    /// ```
    pub fn shards(mut self, shards: u16) -> Self {
        self.shards = Some(shards);
        self
    }

    /// First part of every key (`{prefix}:r:{<id>}`, `{prefix}:q:<task>`) and of the
    /// notification channel (`{prefix}:n`). Apps sharing one Redis use different prefixes;
    /// processes of one app must use the same. 1–64 characters, no `{`, `}` or whitespace.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long a job may go unvouched for by its live worker before another worker claims it
    /// (default 30 s; at least 100 ms). A running job is vouched for until its deadline; this
    /// catches jobs a worker dropped (an error while starting them) or that run past their
    /// deadline. Jobs of dead workers are taken over sooner, after
    /// [`takeover_after`](Self::takeover_after).
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// How soon the running jobs of a worker process that stopped (SIGKILL, crash, lost host)
    /// are taken over by another worker (default 5 s; 500 ms to 1 hour). Liveness comes from
    /// each process's heartbeat key, never from how long a job has run, so a live worker's jobs
    /// are not taken however long they run. Lower means faster recovery; keep it above the
    /// longest pause a worker process may have (a beat is sent every `takeover_after / 5`).
    ///
    /// ```
    /// use async_endpoint::backend::RedisBackend;
    /// use std::time::Duration;
    ///
    /// let built = RedisBackend::builder("redis://127.0.0.1/")
    ///     .takeover_after(Duration::from_millis(100))
    ///     .build();
    /// assert!(matches!(built, Err(async_endpoint::Error::Config { setting: "takeover_after", .. })));
    /// ```
    pub fn takeover_after(mut self, after: Duration) -> Self {
        self.takeover_after = after;
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

    /// The CA certificate (PEM) that signs the server's certificate, for a `rediss://` URL whose
    /// server is not signed by one of the system's roots (a private or managed-service CA).
    /// Feature `redis-tls`.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = async_endpoint::backend::RedisBackend::builder("rediss://redis.internal:6380/")
    ///     .tls_root_certificate(std::fs::read("/etc/redis/ca.pem")?)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis-tls")]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// A client certificate and its private key (both PEM), for servers that require clients
    /// to present one (mutual TLS). Feature `redis-tls`.
    #[cfg(feature = "redis-tls")]
    pub fn tls_client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_client = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// Where connections go: the URL's server (with the TLS settings), the sentinels', or the
    /// cluster's nodes.
    fn connector(&self) -> Result<Connector, Error> {
        #[cfg(feature = "redis-cluster")]
        if let Some(urls) = &self.cluster {
            return connector::cluster(
                urls,
                self.tls_certificates()?,
                self.connection_timeout,
                self.response_timeout,
            );
        }
        if connector::is_sentinel_url(&self.url) {
            #[cfg(feature = "redis-tls")]
            if let Some((setting, _)) = self.tls_given() {
                return Err(Error::Config {
                    setting,
                    reason: "only applies to a rediss:// URL".into(),
                });
            }
            return connector::sentinel(&self.url);
        }
        self.client()
            .map(|client| Connector::Direct(Box::new(client)))
    }

    /// The TLS settings for a cluster: `None` without `tls_root_certificate` and
    /// `tls_client_certificate` (a `rediss://` seed then verifies against the system's roots);
    /// refused when given for `redis://` seeds.
    #[cfg(feature = "redis-cluster")]
    fn tls_certificates(&self) -> Result<Option<connector::TlsSettings>, Error> {
        #[cfg(feature = "redis-tls")]
        if let Some((setting, certificates)) = self.tls_given() {
            let seeds = self.cluster.as_deref().unwrap_or_default();
            if !seeds.iter().all(|url| url.starts_with("rediss://")) {
                return Err(Error::Config {
                    setting,
                    reason: "only applies to rediss:// seed URLs".into(),
                });
            }
            return Ok(Some(certificates));
        }
        Ok(None)
    }

    /// The TLS settings given (`tls_root_certificate`, `tls_client_certificate`) as redis-rs
    /// takes them, with the name of one of them for errors; `None` when neither was set.
    #[cfg(feature = "redis-tls")]
    fn tls_given(&self) -> Option<(&'static str, redis::TlsCertificates)> {
        let setting = match (&self.tls_root, &self.tls_client) {
            (None, None) => return None,
            (Some(_), _) => "tls_root_certificate",
            (None, Some(_)) => "tls_client_certificate",
        };
        let certificates = redis::TlsCertificates {
            client_tls: self.tls_client.clone().map(|(client_cert, client_key)| {
                redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }
            }),
            root_cert: self.tls_root.clone(),
        };
        Some((setting, certificates))
    }

    /// The client for a `redis://` or `rediss://` URL and the TLS settings.
    fn client(&self) -> Result<redis::Client, Error> {
        let bad = |setting: &'static str, reason: String| Err(Error::Config { setting, reason });
        let tls = self.url.starts_with("rediss://");
        #[cfg(not(feature = "redis-tls"))]
        if tls {
            return bad(
                "url",
                "rediss:// (TLS) needs the `redis-tls` feature of async-endpoint".into(),
            );
        }
        #[cfg(feature = "redis-tls")]
        if let Some((setting, certificates)) = self.tls_given() {
            if !tls {
                return bad(setting, "only applies to a rediss:// URL".into());
            }
            return match redis::Client::build_with_tls(self.url.as_str(), certificates) {
                Ok(client) => Ok(client),
                Err(error) => bad(
                    "tls_root_certificate",
                    format!("TLS settings not usable: {error}"),
                ),
            };
        }
        match redis::Client::open(self.url.as_str()) {
            Ok(client) => Ok(client),
            Err(error) => bad("url", format!("not a usable Redis URL: {error}")),
        }
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
        if self.takeover_after < Duration::from_millis(500)
            || self.takeover_after > Duration::from_secs(3600)
        {
            return bad("takeover_after", "must be between 500 ms and 1 hour".into());
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
        match (self.cluster.is_some(), self.shards) {
            (false, Some(_)) => {
                return bad(
                    "shards",
                    "only applies to a Redis Cluster (RedisBackend::cluster_builder)".into(),
                );
            }
            (true, Some(n)) if n == 0 || n > super::layout::MAX_SHARDS => {
                return bad(
                    "shards",
                    format!("must be 1 to {}", super::layout::MAX_SHARDS),
                );
            }
            _ => {}
        }
        let connector = self.connector()?;
        Ok(RedisBackend::from_parts(connector, self))
    }
}
