//! Test support shared by every test suite of the workspace, the demo's tests and the benchmark.
//!
//! - [`skip`] / [`in_ci`]: the one rule for a test whose tool (redis-server, PostgreSQL,
//!   chromium, …) is missing: skip loudly on a developer machine, fail in CI.
//! - [`free_port`]: a loopback port nothing listens on right now.
//! - [`redis::RedisServer`]: a private `redis-server` per test, on a free port in a temporary
//!   directory, killed and removed on drop.
//! - [`redis_cluster::RedisCluster`]: a private Redis Cluster (3 masters, 3 replicas by default)
//!   of such servers, joined by `redis-cli --cluster create`; a master can be killed and its
//!   replica's promotion awaited.
//! - [`tls::Certificates`]: a private CA and a server certificate for 127.0.0.1, made with
//!   `openssl`, for TLS tests (one server or a cluster with `--tls-cluster yes`).
//! - [`postgres::PostgresServer`]: a private PostgreSQL 15 cluster per test (`initdb` + `pg_ctl`,
//!   as the `postgres` user when run as root), on a free port in a temporary directory, stopped
//!   and removed on drop.
//! - [`http`]: an HTTP/1.1 client on `hyper-util`'s client (async, blocking, keep-alive).
//! - [`process::ChildOutput`]: a child's stdout lines read on a thread, to wait for a marker line
//!   and to join the reader to EOF once the child has exited.
//! - [`browser::Browser`]: headless Debian Chromium through its `chromedriver`, driven over W3C
//!   WebDriver by `fantoccini`, with a blocking API for plain `#[test]`s.
//!
//! Not published: it exists for this workspace's tests.

use std::io::Write as _;
use std::net::TcpListener;

pub mod browser;
pub mod http;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod tls;

/// Whether this is a CI run: `CI` is set to anything but empty, `false` (any case) or `0`.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| means_ci(&v.to_string_lossy()))
}

/// The value half of [`in_ci`].
fn means_ci(value: &str) -> bool {
    let v = value.trim();
    !(v.is_empty() || v.eq_ignore_ascii_case("false") || v == "0")
}

/// The rule for a test whose tool is missing. Under CI (see [`in_ci`]) it **panics**, naming the
/// missing tool, so a CI machine without it cannot pass silently. Otherwise it writes a loud
/// `*** SKIPPED: … ***` line straight to the process's stderr (the test harness captures
/// `eprintln!` of a passing test) and returns, so the caller returns too.
///
/// `test` names the test (or the group of tests), `why` says what is missing.
#[track_caller]
pub fn skip(test: &str, why: &str) {
    assert!(
        !in_ci(),
        "{test}: {why}. CI is set, so this test must run: install the missing tool."
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {test}: {why} (set CI=true to make this a failure) ***\n"
    );
}

/// A loopback port nothing listens on right now (another process may take it before the
/// caller binds it: launchers retry on another port).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A fresh, unique directory under the system's temporary directory, named `{prefix}-{pid}-{n}`.
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_anything_but_empty_false_or_zero() {
        for v in ["", " ", "false", "FALSE", "False", "0"] {
            assert!(!means_ci(v), "{v:?} is not CI");
        }
        for v in ["true", "TRUE", "1", "yes", "github", "on"] {
            assert!(means_ci(v), "{v:?} is CI");
        }
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the free port binds");
    }

    #[test]
    fn temp_dirs_are_unique() {
        let (a, b) = (temp_dir("ts-test"), temp_dir("ts-test"));
        assert_ne!(a, b);
        assert!(a.is_dir() && b.is_dir());
        let _ = std::fs::remove_dir_all(a);
        let _ = std::fs::remove_dir_all(b);
    }
}
