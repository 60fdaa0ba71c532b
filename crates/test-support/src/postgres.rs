//! A private PostgreSQL 15 server per test.
//!
//! Every test gets its own cluster: `initdb` into a fresh temporary directory, then `pg_ctl` starts
//! it on a free port, listening on 127.0.0.1 only, with its unix socket inside that directory,
//! `trust` authentication for the `postgres` role, `fsync` off and small shared buffers. Drop stops
//! it (`pg_ctl stop -m immediate`, else a kill) and removes the directory.
//!
//! The binaries come from `$PG_BIN` if set, else `/usr/lib/postgresql/15/bin` (Debian's layout).
//! `initdb` and `pg_ctl` refuse to run as root, so when the current user is root they run as the
//! `postgres` system user (`runuser -u postgres -- …`) and the directory is given to that user;
//! otherwise they run as the current user. (As root, the `postgres` user must be able to reach the
//! temporary directory: the default `/tmp` is fine, a `TMPDIR` under `/root` is not.)
//!
//! Without the binaries (or, as root, without the `postgres` user or `runuser`), [`start`] applies
//! the [`skip`](crate::skip) rule: a loud SKIPPED line, or a failure in CI.

use std::net::TcpStream;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The default directory of the PostgreSQL binaries (Debian's PostgreSQL 15).
pub const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long a start or a stop may take before it counts as failed (a loaded machine is slow).
const BOUND: Duration = Duration::from_secs(60);

/// A private PostgreSQL server, stopped (and its directory removed) on drop.
#[derive(Debug)]
pub struct PostgresServer {
    /// The port it listens on (127.0.0.1 only).
    pub port: u16,
    /// The temporary directory: the cluster in `data/`, the log and the unix socket.
    dir: PathBuf,
    /// Where `initdb`, `pg_ctl`, `pg_isready` and `psql` are.
    bin: PathBuf,
    /// `runuser` when commands run as the `postgres` system user (the current user is root).
    runuser: Option<PathBuf>,
    /// The postmaster's pid while it runs (from `postmaster.pid`), for the last-resort kill.
    pid: Option<u32>,
}

/// Starts a private server on a free port; `None` (after the skip rule) when PostgreSQL is not
/// installed (or, as root, the `postgres` user or `runuser` is missing).
pub fn start() -> Option<PostgresServer> {
    match PostgresServer::try_start() {
        Ok(server) => Some(server),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::skip("PostgreSQL tests", &e.to_string());
            None
        }
        Err(e) => panic!("could not start PostgreSQL: {e}"),
    }
}

/// The binaries' directory: `$PG_BIN`, else [`DEFAULT_BIN`].
fn bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_BIN), PathBuf::from)
}

fn not_found(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, what)
}

/// Whether this process runs as root: the owner of `/proc/self` is the effective uid; without
/// `/proc`, `id -u` says.
fn is_root() -> bool {
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return meta.uid() == 0;
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `id -u NAME` / `id -g NAME`: a user's uid or primary gid, `None` when there is no such user.
fn id_of(flag: &str, user: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, user]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A string as a single-quoted postgresql.conf value.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A command's stdout and stderr, for an error message.
fn describe(out: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

impl PostgresServer {
    /// Creates a cluster in a fresh temporary directory and starts it on a free port (trying up
    /// to 5 ports), without the skip rule: the error is `NotFound` when PostgreSQL is not
    /// installed (or, as root, the `postgres` user or `runuser` is missing).
    pub fn try_start() -> std::io::Result<PostgresServer> {
        let bin = bin_dir();
        for tool in ["initdb", "pg_ctl"] {
            if !bin.join(tool).is_file() {
                return Err(not_found(format!(
                    "{} not found (install postgresql 15, or set PG_BIN to its bin directory)",
                    bin.join(tool).display()
                )));
            }
        }
        let (runuser, owner) = if is_root() {
            let (Some(uid), Some(gid)) = (id_of("-u", "postgres"), id_of("-g", "postgres")) else {
                return Err(not_found(
                    "running as root, and there is no `postgres` system user to run initdb as \
                     (install postgresql)"
                        .into(),
                ));
            };
            let Some(runuser) = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
            else {
                return Err(not_found(
                    "running as root, and runuser (util-linux) is not installed".into(),
                ));
            };
            (Some(runuser), Some((uid, gid)))
        } else {
            (None, None)
        };

        let mut server = PostgresServer {
            port: crate::free_port(),
            dir: crate::temp_dir("ae-pg-test"),
            bin,
            runuser,
            pid: None,
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&server.dir, Some(uid), Some(gid))?;
        }
        server.init()?;
        for attempt in 0..5 {
            if attempt > 0 {
                // The port was taken in the meantime: try another.
                server.port = crate::free_port();
            }
            if server.spawn()? {
                return Ok(server);
            }
        }
        Err(std::io::Error::other(
            "PostgreSQL did not come up on any of 5 ports",
        ))
    }

    /// A PostgreSQL program from the binaries' directory, as the `postgres` user when we are
    /// root, run in the server's directory with no stdin.
    fn tool(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut cmd = if let Some(runuser) = &self.runuser {
            let mut cmd = Command::new(runuser);
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// `initdb` (trust auth, role `postgres`) and the test settings appended to postgresql.conf.
    fn init(&self) -> std::io::Result<()> {
        let out = self
            .tool("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "initdb failed: {}",
                describe(&out)
            )));
        }
        let settings = format!(
            "\n# test-support: a private test server\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = {}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 16MB\n\
             max_connections = 50\n",
            conf_quote(&self.dir.to_string_lossy())
        );
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))?;
        std::io::Write::write_all(&mut conf, settings.as_bytes())
    }

    /// Starts the cluster on `self.port` and waits until it accepts connections; Ok(false) when
    /// the port was taken.
    fn spawn(&mut self) -> std::io::Result<bool> {
        // The log is appended to across starts: only this start's part tells why it failed.
        let log_before = std::fs::metadata(self.log()).map_or(0, |m| m.len());
        let out = self
            .tool("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", &BOUND.as_secs().to_string()])
            .args(["-o", &format!("-p {}", self.port)])
            .output()?;
        if !out.status.success() {
            let log = std::fs::read(self.log()).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(log_before as usize..).unwrap_or_default());
            if log.contains("could not bind") || log.contains("Address already in use") {
                return Ok(false);
            }
            return Err(std::io::Error::other(format!(
                "pg_ctl start failed: {}; log: {log}",
                describe(&out)
            )));
        }
        self.pid = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse().ok());
        // pg_ctl -w waited for the postmaster's own "ready"; confirm it the way a client sees it.
        let until = Instant::now() + BOUND;
        while Instant::now() < until {
            if self.is_ready() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!(
            "PostgreSQL on port {} started but never accepted connections",
            self.port
        )))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's temporary directory (the cluster is in its `data/`, the log in
    /// `postgres.log`, the unix socket beside them).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether it accepts connections on 127.0.0.1: `pg_isready`, or a TCP connect where
    /// `pg_isready` is not installed.
    pub fn is_ready(&self) -> bool {
        let pg_isready = self.bin.join("pg_isready");
        if pg_isready.is_file() {
            return Command::new(pg_isready)
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-t",
                    "5",
                ])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        }
        TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), Duration::from_secs(5))
            .is_ok()
    }

    /// Runs SQL with `psql -h 127.0.0.1 -p PORT -U postgres -Atc SQL` (unaligned, tuples only)
    /// and returns its trimmed output; `NotFound` when psql is not installed.
    pub fn psql(&self, sql: &str) -> std::io::Result<String> {
        let psql = self.bin.join("psql");
        let psql = if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args(["-X", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "psql failed: {}",
                describe(&out)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `pg_ctl stop -m MODE -w`; whether it stopped.
    fn pg_ctl_stop(&self, mode: &str) -> bool {
        self.tool("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", &BOUND.as_secs().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the server the way an operator would (`pg_ctl stop -m fast`: clients are
    /// disconnected, a clean shutdown) and waits until it is down.
    pub fn stop(&mut self) {
        if self.pid.is_none() {
            return;
        }
        assert!(
            self.pg_ctl_stop("fast"),
            "pg_ctl stop failed on port {}; log: {}",
            self.port,
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
        self.pid = None;
    }

    /// Starts the server again on the same port and directory (its data kept).
    pub fn restart(&mut self) {
        for _ in 0..50 {
            // Ok(false): another process holds the port for now; it may let go of it.
            if self.spawn().expect("PostgreSQL restart") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("PostgreSQL did not restart on port {}", self.port);
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // `postmaster.pid` too: a `pg_ctl start` that timed out may have left a postmaster.
        let pid = self.pid.take();
        if (pid.is_some() || self.data().join("postmaster.pid").exists())
            && !self.pg_ctl_stop("immediate")
        {
            if let Some(pid) = pid {
                // Last resort: the postmaster's children exit when it dies.
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
                let until = Instant::now() + Duration::from_secs(10);
                while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `select 1` answers `1` through psql, or (without psql) the port accepts a connection.
    fn answers(server: &PostgresServer) {
        match server.psql("select 1") {
            Ok(out) => assert_eq!(out, "1"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                TcpStream::connect(("127.0.0.1", server.port)).expect("the port accepts");
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(conf_quote("/tmp/a'b"), "'/tmp/a''b'");
    }

    #[test]
    fn private_server_stops_restarts_and_cleans_up() {
        let Some(mut server) = start() else {
            return;
        };
        assert_eq!(
            server.url(),
            format!("postgres://postgres@127.0.0.1:{}/postgres", server.port)
        );
        answers(&server);
        let show = |setting: &str| server.psql(&format!("show {setting}")).unwrap();
        assert_eq!(show("listen_addresses"), "127.0.0.1");
        assert_eq!(
            show("unix_socket_directories"),
            server.dir().to_string_lossy()
        );
        assert_eq!(show("fsync"), "off");
        assert_eq!(show("shared_buffers"), "16MB");
        server
            .psql("create table t (v int); insert into t values (7)")
            .unwrap();
        server.stop();
        assert!(!server.is_ready(), "stopped");
        // Another process holds the port for a moment: the restart waits it out.
        let holder = std::net::TcpListener::bind(("127.0.0.1", server.port)).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            drop(holder);
        });
        server.restart();
        release.join().unwrap();
        answers(&server);
        assert_eq!(server.psql("select v from t").unwrap(), "7", "data kept");
        let dir = server.dir().to_owned();
        assert!(dir.join("data").is_dir());
        drop(server);
        assert!(!dir.exists(), "its directory is removed on drop");
    }
}
