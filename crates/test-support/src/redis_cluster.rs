//! A private Redis Cluster per test: masters and replicas, each a private `redis-server` (see
//! [`crate::redis`]) with `cluster-enabled yes` on a free port in its own temporary directory,
//! joined by `redis-cli --cluster create`.
//!
//! [`RedisCluster::start`] returns once every node reports `cluster_state:ok`, knows every other
//! node, and every replica's link to its master is up: conditions, polled with a generous bound,
//! never a fixed sleep. [`RedisCluster::kill_master`] kills a master with SIGKILL and waits until
//! one of its replicas has taken over its slots and the cluster is `ok` again. Everything is
//! killed and removed on drop.
//!
//! Without `redis-server` (or `$REDIS_SERVER`) or `redis-cli` (or `$REDIS_CLI`) on `PATH`, the
//! [`skip`](crate::skip) rule applies: a loud SKIPPED line, or a failure in CI. `$REDIS_SERVER`
//! may name a `valkey-server`: `redis-cli` creates a Valkey cluster just as well.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::RedisServer;

/// How long the cluster may take to form, or to fail over (the machine may be busy).
const BOUND: Duration = Duration::from_secs(60);

/// A private Redis Cluster; see the module docs.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// For a TLS cluster ([`start_tls`]): each node's TLS port by its plain port.
    tls_ports: HashMap<u16, u16>,
}

/// The `redis-cli` binary: `$REDIS_CLI`, else `redis-cli` on `PATH`.
fn cli() -> String {
    std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into())
}

/// Whether `redis-cli` runs here.
fn cli_found() -> bool {
    Command::new(cli())
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Starts a private cluster of 3 masters, each with 1 replica; `None` (after the skip rule) when
/// `redis-server` or `redis-cli` is not installed.
pub fn start() -> Option<RedisCluster> {
    RedisCluster::start(3, 1)
}

/// Like [`start`], every node also serving TLS with `certificates` (`--tls-cluster yes`, so a
/// client connected over TLS is told the nodes' TLS ports, as a managed TLS cluster does; no
/// client certificate required); [`RedisCluster::tls_urls`] are its `rediss://` seeds. `None`
/// (after the skip rule) also when `redis-server` was built without TLS.
pub fn start_tls(certificates: &crate::tls::Certificates) -> Option<RedisCluster> {
    RedisCluster::start_with(3, 1, Some(certificates))
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id.
    pub id: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Whether it is a master now.
    pub master: bool,
    /// Marked failed (`fail` or `fail?`) by the node asked.
    pub failed: bool,
    /// For a replica, its master's id.
    pub master_id: Option<String>,
    /// For a master, its slot ranges (inclusive).
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each (at least 3 masters: fewer cannot
    /// agree on a failover), and waits until the cluster is `ok` on every node.
    pub fn start(masters: usize, replicas: usize) -> Option<RedisCluster> {
        RedisCluster::start_with(masters, replicas, None)
    }

    fn start_with(
        masters: usize,
        replicas: usize,
        tls: Option<&crate::tls::Certificates>,
    ) -> Option<RedisCluster> {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        if !cli_found() {
            crate::skip(
                "Redis Cluster tests",
                &format!("{} not found on PATH (install redis-tools)", cli()),
            );
            return None;
        }
        let extra: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            // A dead master is noticed within a second, so a failover test is quick.
            "--cluster-node-timeout",
            "1000",
            // A replica may always take over (its data is as fresh as a test needs).
            "--cluster-replica-validity-factor",
            "0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut nodes = Vec::new();
        let mut tls_ports = HashMap::new();
        for _ in 0..masters * (1 + replicas) {
            let Some(certificates) = tls else {
                nodes.push(RedisServer::start_with(&extra)?);
                continue;
            };
            let tls_port = crate::free_port();
            let mut args = extra.clone();
            args.extend(certificates.redis_server_args(tls_port));
            // The cluster bus and replication over TLS too: nodes tell each other their TLS
            // ports, so a replica reaches its master there.
            for setting in ["--tls-cluster", "--tls-replication"] {
                args.extend([setting.to_owned(), "yes".to_owned()]);
            }
            let why = match RedisServer::try_start_with_args(&args) {
                Ok(node) if std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok() => {
                    tls_ports.insert(node.port, tls_port);
                    nodes.push(node);
                    continue;
                }
                Ok(_) => "redis-server does not listen on --tls-port (built without TLS?)",
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    "redis-server not found on PATH"
                }
                Err(_) => "redis-server does not start with --tls-port (built without TLS?)",
            };
            crate::skip("Redis Cluster TLS tests", why);
            return None;
        }
        let cluster = RedisCluster { nodes, tls_ports };
        let mut create = Command::new(cli());
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_ok(cluster.nodes.len());
        Some(cluster)
    }

    /// Waits until every live node says `cluster_state:ok`, knows `known` nodes, and every
    /// replica's link to its master is up.
    fn wait_ok(&self, known: usize) {
        let until = Instant::now() + BOUND;
        loop {
            let ready = self.live().all(|node| {
                let info = node.bulk("CLUSTER INFO").ok().flatten().unwrap_or_default();
                let replication = node
                    .bulk("INFO replication")
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{known}\r"))
                    && info.contains("cluster_slots_assigned:16384")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < until,
                "the cluster did not become ok within {BOUND:?}: {:?}",
                self.live()
                    .map(|n| (n.port, n.bulk("CLUSTER INFO").ok().flatten()))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn live(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|node| node.is_running())
    }

    /// `redis://127.0.0.1:PORT/` of every live node (masters and replicas): the seed list a
    /// cluster client takes.
    pub fn urls(&self) -> Vec<String> {
        self.live().map(RedisServer::url).collect()
    }

    /// `rediss://127.0.0.1:TLS_PORT/` of every live node of a cluster started with
    /// [`start_tls`]; empty for a plain cluster.
    pub fn tls_urls(&self) -> Vec<String> {
        self.live()
            .filter_map(|node| self.tls_ports.get(&node.port))
            .map(|port| format!("rediss://127.0.0.1:{port}/"))
            .collect()
    }

    /// The live node on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.live()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no live node on port {port}"))
    }

    /// The cluster as a live node sees it (`CLUSTER NODES`).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let text = self
            .live()
            .find_map(|node| node.bulk("CLUSTER NODES").ok().flatten())
            .expect("no live node answers CLUSTER NODES");
        parse_nodes(&text)
    }

    /// The ports of the masters serving slots now.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// The port of the master serving `key`'s slot now.
    pub fn master_for(&self, key: &str) -> u16 {
        let any = self.live().next().expect("no live node");
        let slot: u16 = any
            .bulk(&format!("CLUSTER KEYSLOT {key}"))
            .ok()
            .flatten()
            .and_then(|reply| reply.strip_prefix(':').and_then(|n| n.parse().ok()))
            .expect("CLUSTER KEYSLOT");
        self.nodes()
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|n| n.port)
            .expect("a master serves the slot")
    }

    /// Kills the master on `port` with SIGKILL and waits until one of its replicas serves its
    /// slots and every live node says `cluster_state:ok` again. Returns the new master's port.
    pub fn kill_master(&mut self, port: u16) -> u16 {
        let before = self.nodes();
        let dead = before
            .iter()
            .find(|n| n.port == port && n.master)
            .unwrap_or_else(|| panic!("{port} is not a master"))
            .clone();
        let replicas: Vec<u16> = before
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(dead.id.as_str()))
            .map(|n| n.port)
            .collect();
        assert!(
            !replicas.is_empty(),
            "master {port} has no replica to promote"
        );
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("the node is ours")
            .kill();
        let until = Instant::now() + BOUND;
        loop {
            let promoted = self
                .live()
                .filter(|node| replicas.contains(&node.port))
                .find(|node| {
                    node.bulk("INFO replication")
                        .ok()
                        .flatten()
                        .is_some_and(|info| info.contains("role:master"))
                })
                .map(|node| node.port);
            if let Some(new) = promoted {
                let serves = self
                    .nodes()
                    .into_iter()
                    .any(|n| n.port == new && n.master && n.slots == dead.slots);
                let ok = self.live().all(|node| {
                    node.bulk("CLUSTER INFO")
                        .ok()
                        .flatten()
                        .is_some_and(|info| info.contains("cluster_state:ok"))
                });
                if serves && ok {
                    return new;
                }
            }
            assert!(
                Instant::now() < until,
                "no replica of {port} took over within {BOUND:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keys on every live master (`DBSIZE` summed): 0 once everything has expired.
    pub fn keys(&self) -> u64 {
        let masters = self.masters();
        self.live()
            .filter(|node| masters.contains(&node.port))
            .map(|node| {
                node.bulk("DBSIZE")
                    .ok()
                    .flatten()
                    .and_then(|n| n.strip_prefix(':').and_then(|n| n.parse::<u64>().ok()))
                    .expect("DBSIZE")
            })
            .sum()
    }

    /// Every key on every live master (`KEYS *`, for tests with few keys), to say which remain.
    pub fn key_names(&self) -> Vec<String> {
        let masters = self.masters();
        let mut names = Vec::new();
        for node in self.live().filter(|node| masters.contains(&node.port)) {
            let output = Command::new(cli())
                .args(["-p", &node.port.to_string(), "--raw", "KEYS", "*"])
                .stdin(Stdio::null())
                .output()
                .expect("redis-cli KEYS");
            names.extend(
                String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
        names
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link>
/// <slot>…` per line.
fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    let mut nodes = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            continue;
        }
        let port = fields[1]
            .split('@')
            .next()
            .and_then(|address| address.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok());
        let Some(port) = port else { continue };
        let flags: Vec<&str> = fields[2].split(',').collect();
        let mut slots = Vec::new();
        for range in &fields[8..] {
            if range.starts_with('[') {
                // A slot being migrated or imported.
                continue;
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                slots.push((a, b));
            }
        }
        nodes.push(NodeInfo {
            id: fields[0].to_owned(),
            port,
            master: flags.contains(&"master"),
            failed: flags.contains(&"fail") || flags.contains(&"fail?"),
            master_id: Some(fields[3].to_owned()).filter(|m| m != "-"),
            slots,
        });
    }
    let mut by_port: HashMap<u16, NodeInfo> = HashMap::new();
    for node in nodes {
        by_port.insert(node.port, node);
    }
    let mut nodes: Vec<NodeInfo> = by_port.into_values().collect();
    nodes.sort_by_key(|n| n.port);
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_parse() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1 4 connected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002 master,fail - 0 1 2 connected 5461-10922 [10923->-abc]
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].port, 30001);
        assert!(nodes[0].master && !nodes[0].failed);
        assert_eq!(nodes[0].slots, vec![(0, 5460)]);
        assert!(nodes[1].failed);
        assert_eq!(nodes[1].slots, vec![(5461, 10922)]);
        assert_eq!(nodes[2].master_id.as_deref(), Some("e7d1"));
        assert!(!nodes[2].master);
    }

    #[test]
    fn cluster_forms_fails_over_and_cleans_up() {
        let Some(mut cluster) = start() else {
            return;
        };
        assert_eq!(cluster.urls().len(), 6);
        let masters = cluster.masters();
        assert_eq!(masters.len(), 3, "{:?}", cluster.nodes());
        let port = cluster.master_for("some-key");
        let node = cluster.node(port);
        assert_eq!(node.command("SET some-key v").unwrap(), "+OK");
        assert_eq!(cluster.keys(), 1);
        // Wait until the replica has the key, so the failover keeps it.
        let until = Instant::now() + BOUND;
        while cluster.node(port).command("WAIT 1 1000").unwrap() != ":1" {
            assert!(Instant::now() < until, "the replica never acknowledged");
        }
        let new = cluster.kill_master(port);
        assert_ne!(new, port);
        assert_eq!(cluster.master_for("some-key"), new);
        assert_eq!(cluster.masters().len(), 3);
        assert_eq!(
            cluster.node(new).bulk("GET some-key").unwrap().as_deref(),
            Some("v")
        );
        let dirs: Vec<_> = cluster.nodes.iter().map(|n| n.dir().to_owned()).collect();
        drop(cluster);
        assert!(
            dirs.iter().all(|d| !d.exists()),
            "directories removed on drop"
        );
    }
}
