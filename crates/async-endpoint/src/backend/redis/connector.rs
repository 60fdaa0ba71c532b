//! Where connections go: the URL's one server, (Redis Sentinel) whichever server the sentinels
//! name primary at the moment a connection is made, or (Redis Cluster, feature `redis-cluster`)
//! the master serving each command's slot.
//!
//! With Sentinel, every connection and every reconnection asks the sentinels again (through
//! redis-rs's [`SentinelClient`], which also checks that the named server calls itself primary),
//! so after a failover nothing keeps talking to the old primary, now a replica. Connections that
//! fail, time out or are refused with `READONLY` are dropped by the backend and made afresh.
//!
//! URL: `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/<master name>[/<db>]`
//! (sentinel port 26379 by default; the credentials and db are for the primary, the sentinels
//! are reached without authentication).

use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::error::Error;

/// The scheme of Sentinel URLs.
const SCHEME: &str = "redis+sentinel://";
/// The port sentinels listen on unless the URL says otherwise.
const SENTINEL_PORT: u16 = 26379;

/// Makes clients for the server commands go to.
#[derive(Clone)]
pub(super) enum Connector {
    /// The URL's server, always.
    Direct(Box<redis::Client>),
    /// The primary the sentinels name, asked anew for every connection.
    Sentinel(Arc<tokio::sync::Mutex<SentinelClient>>),
    /// A Redis Cluster, found from its seed nodes (redis-rs follows slots, `MOVED`/`ASK` and
    /// failovers).
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<ClusterClients>),
}

/// The clients of a cluster: one for commands, one for the shared subscriber (RESP3, whose push
/// messages go to the sender given when it is built).
#[cfg(feature = "redis-cluster")]
#[derive(Clone)]
pub(super) struct ClusterClients {
    /// The seed nodes' URLs.
    pub(super) urls: Vec<String>,
    /// The CA and client certificate for `rediss://` seeds, when set.
    pub(super) tls: Option<TlsSettings>,
    /// For commands.
    pub(super) commands: redis::cluster::ClusterClient,
}

#[cfg(feature = "redis-cluster")]
impl ClusterClients {
    /// A client for the same seeds speaking RESP3, whose pushes (sharded pub/sub messages and
    /// subscription confirmations) go to `pushes`.
    pub(super) fn subscriber(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
        connection_timeout: std::time::Duration,
        response_timeout: std::time::Duration,
    ) -> RedisResult<redis::cluster::ClusterClient> {
        let builder =
            redis::cluster::ClusterClientBuilder::new(self.urls.iter().map(String::as_str))
                .use_protocol(redis::ProtocolVersion::RESP3)
                .connection_timeout(connection_timeout)
                .response_timeout(response_timeout)
                .push_sender(pushes);
        with_tls(builder, self.tls.clone()).build()
    }
}

/// The TLS settings of a cluster's connections (feature `redis-tls`; without it there are none
/// to give, and `rediss://` seeds are refused).
#[cfg(all(feature = "redis-cluster", feature = "redis-tls"))]
pub(super) type TlsSettings = redis::TlsCertificates;
/// The TLS settings of a cluster's connections (feature `redis-tls`; without it there are none
/// to give, and `rediss://` seeds are refused).
#[cfg(all(feature = "redis-cluster", not(feature = "redis-tls")))]
#[derive(Clone)]
pub(super) enum TlsSettings {}

/// `builder` verifying servers against `tls`'s CA and presenting its client certificate.
#[cfg(feature = "redis-cluster")]
fn with_tls(
    builder: redis::cluster::ClusterClientBuilder,
    tls: Option<TlsSettings>,
) -> redis::cluster::ClusterClientBuilder {
    match tls {
        #[cfg(feature = "redis-tls")]
        Some(certificates) => builder.certs(certificates),
        #[cfg(not(feature = "redis-tls"))]
        Some(never) => match never {},
        None => builder,
    }
}

/// The client of a Redis Cluster seeded by `urls` (`redis://host:port/` each), with every
/// command bounded by the timeouts. Nothing connects yet.
#[cfg(feature = "redis-cluster")]
pub(super) fn cluster(
    urls: &[String],
    tls: Option<TlsSettings>,
    connection_timeout: std::time::Duration,
    response_timeout: std::time::Duration,
) -> Result<Connector, Error> {
    let bad = |reason: String| Error::Config {
        setting: "url",
        reason,
    };
    if urls.is_empty() {
        return Err(bad(
            "a Redis Cluster needs at least one seed node URL".into()
        ));
    }
    for url in urls {
        if is_sentinel_url(url) {
            return Err(bad(format!(
                "{url}: a cluster is found from its nodes' redis:// URLs, not through Sentinel"
            )));
        }
        #[cfg(not(feature = "redis-tls"))]
        if url.starts_with("rediss://") {
            return Err(bad(format!(
                "{url}: rediss:// (TLS) needs the `redis-tls` feature of async-endpoint"
            )));
        }
        // redis-rs takes the TLS mode of the first seed for every node: seeds must agree.
        if url.starts_with("rediss://") != urls[0].starts_with("rediss://") {
            return Err(bad(format!(
                "{url}: the seed URLs mix redis:// and rediss://; a cluster is reached one way"
            )));
        }
        if let Err(error) = redis::Client::open(url.as_str()) {
            return Err(bad(format!("{url}: not a usable Redis URL: {error}")));
        }
    }
    let builder = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
        .connection_timeout(connection_timeout)
        .response_timeout(response_timeout)
        // `MOVED`, `ASK`, `TRYAGAIN` and a failover's refusals are retried within this bound;
        // past it the command fails (a 503 for clients, a back-off for workers).
        .overall_response_timeout(Some(connection_timeout + response_timeout * 2));
    let commands = with_tls(builder, tls.clone())
        .build()
        .map_err(|error| bad(format!("not a usable Redis Cluster seed list: {error}")))?;
    Ok(Connector::Cluster(Box::new(ClusterClients {
        urls: urls.to_vec(),
        tls,
        commands,
    })))
}

impl Connector {
    /// A client for the server to connect to now. (Boxed: redis-rs's Sentinel futures are deep,
    /// and every command's future would otherwise contain them.)
    pub(super) fn client(&self) -> BoxFuture<'static, RedisResult<redis::Client>> {
        match self {
            Connector::Direct(client) => std::future::ready(Ok((**client).clone())).boxed(),
            Connector::Sentinel(sentinel) => {
                let sentinel = sentinel.clone();
                async move { sentinel.lock().await.async_get_client().await }.boxed()
            }
            // Connections to one node are not made through here on a cluster: the cluster
            // connection routes every command by its keys.
            #[cfg(feature = "redis-cluster")]
            Connector::Cluster(_) => std::future::ready(Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a single-node connection was asked of a Redis Cluster",
            ))))
            .boxed(),
        }
    }

    /// Whether this is a Redis Cluster (keys placed in shards, see `layout.rs`).
    pub(super) fn is_cluster(&self) -> bool {
        #[cfg(feature = "redis-cluster")]
        if let Connector::Cluster(_) = self {
            return true;
        }
        false
    }

    /// Whether connections must be re-made (through Sentinel) rather than re-established to the
    /// same address.
    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self, Connector::Sentinel(_))
    }
}

/// Whether `url` names sentinels rather than a server.
pub(super) fn is_sentinel_url(url: &str) -> bool {
    url.get(..SCHEME.len())
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(SCHEME))
}

/// The connector for a `redis+sentinel://` URL (see the module docs).
pub(super) fn sentinel(url: &str) -> Result<Connector, Error> {
    let bad = |reason: String| Error::Config {
        setting: "url",
        reason,
    };
    let rest = &url[SCHEME.len()..];
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts),
        None => (None, authority),
    };
    let mut nodes = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '?' || c == '#') {
            return Err(bad(
                "a Sentinel URL lists sentinels as host[:port],host[:port]… (redis+sentinel://host:26379/<master>)"
                    .into(),
            ));
        }
        // A port after the last `]` (IPv6) or the only `:`.
        let has_port = host
            .rsplit_once(']')
            .map_or(host, |(_, after)| after)
            .contains(':');
        nodes.push(if has_port {
            format!("redis://{host}/")
        } else {
            format!("redis://{host}:{SENTINEL_PORT}/")
        });
    }
    let mut parts = path.trim_end_matches('/').split('/');
    let master = parts.next().unwrap_or_default();
    if master.is_empty() {
        return Err(bad(
            "a Sentinel URL names the master after the hosts: redis+sentinel://host:26379/<master>[/<db>]".into(),
        ));
    }
    let master = decode(master).ok_or_else(|| bad("the master name is not valid UTF-8".into()))?;
    let mut info = redis::RedisConnectionInfo::default();
    if let Some(db) = parts.next() {
        let db = db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| bad(format!("the database {db:?} is not a number")))?;
        info = info.set_db(db);
    }
    if parts.next().is_some() {
        return Err(bad(
            "a Sentinel URL ends with /<master>[/<db>], nothing after".into(),
        ));
    }
    if let Some(credentials) = credentials {
        let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
        let undecodable = || bad("the credentials are not valid percent-encoded UTF-8".into());
        let user = decode(user).ok_or_else(undecodable)?;
        let password = decode(password).ok_or_else(undecodable)?;
        if !user.is_empty() {
            info = info.set_username(user);
        }
        if !password.is_empty() {
            info = info.set_password(password);
        }
    }
    let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
    match SentinelClient::build(nodes, master, Some(node), SentinelServerType::Master) {
        Ok(client) => Ok(Connector::Sentinel(Arc::new(tokio::sync::Mutex::new(
            client,
        )))),
        Err(error) => Err(bad(format!("not a usable Sentinel URL: {error}"))),
    }
}

/// Percent-decodes `text`; `None` when the result is not UTF-8 or an escape is cut short.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The command connection: redis-rs's reconnecting manager to the URL's one server, or (Sentinel)
/// a plain connection to the current primary that the backend drops on trouble and re-makes
/// through Sentinel.
#[derive(Clone)]
pub(super) enum Conn {
    Managed(ConnectionManager),
    Plain(MultiplexedConnection),
    /// Routes each command (a script: by its first key) to the master serving its slot.
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(conn) => conn.req_packed_command(cmd),
            Conn::Plain(conn) => conn.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(conn) => conn.req_packed_commands(cmd, offset, count),
            Conn::Plain(conn) => conn.req_packed_commands(cmd, offset, count),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(conn) => conn.get_db(),
            Conn::Plain(conn) => conn.get_db(),
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str) -> String {
        match sentinel(url) {
            Err(Error::Config { setting, reason }) => {
                assert_eq!(setting, "url");
                reason
            }
            Ok(_) => panic!("{url} was accepted"),
            Err(other) => panic!("{url}: {other}"),
        }
    }

    #[test]
    fn sentinel_urls_parse() {
        assert!(is_sentinel_url("redis+sentinel://h/m"));
        assert!(is_sentinel_url("Redis+Sentinel://h/m"));
        assert!(!is_sentinel_url("redis://h/"));
        for url in [
            "redis+sentinel://127.0.0.1:26379/mymaster",
            "redis+sentinel://a:1,b:2,c/mymaster/3",
            "redis+sentinel://:p%40ss@a,b/mymaster/",
            "redis+sentinel://user:pass@[::1]:26379,[::1]/m",
        ] {
            assert!(sentinel(url).is_ok(), "{url}");
        }
        assert!(reason("redis+sentinel://a:1/").contains("master"));
        assert!(reason("redis+sentinel://a:1").contains("master"));
        assert!(reason("redis+sentinel://a:1,,b/m").contains("host"));
        assert!(reason("redis+sentinel://a/m/x").contains("database"));
        assert!(reason("redis+sentinel://a/m/1/2").contains("nothing after"));
        assert!(reason("redis+sentinel://u:%zz@a/m").contains("credentials"));
    }
}
