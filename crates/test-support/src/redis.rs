//! A private `redis-server` per test.
//!
//! Every test that stops, restarts or floods Redis gets its own server on a free port in its own
//! temporary directory, so tests never touch a shared Redis and never interfere with each other.
//! Without `redis-server` on `PATH` (or at `$REDIS_SERVER`), [`start`] and friends apply the
//! [`skip`](crate::skip) rule: a loud SKIPPED line, or a failure in CI.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private redis-server, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    /// More arguments for redis-server (TLS, replication, …).
    extra: Vec<String>,
}

/// Starts a private server without persistence; `None` (after the skip rule) when redis-server
/// is not installed.
pub fn start() -> Option<RedisServer> {
    RedisServer::start(false)
}

/// Starts a private server with an append-only file, so a stop and restart keep the data.
pub fn start_persistent() -> Option<RedisServer> {
    RedisServer::start(true)
}

/// The binary: `$REDIS_SERVER`, else `redis-server` on `PATH`.
fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

fn not_found() {
    crate::skip(
        "Redis tests",
        &format!("{} not found on PATH (install redis-server)", binary()),
    );
}

impl RedisServer {
    /// Starts a private server on `port` (which the caller knows to be free); `None` (after the
    /// skip rule) when redis-server is not installed.
    pub fn start_at(port: u16) -> Option<RedisServer> {
        let mut server = RedisServer {
            child: None,
            port,
            dir: crate::temp_dir("ae-redis-test"),
            persistent: false,
            extra: Vec::new(),
        };
        match server.spawn() {
            Ok(true) => Some(server),
            Ok(false) => panic!("redis-server did not start on port {port}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                not_found();
                None
            }
            Err(e) => panic!("could not start redis-server: {e}"),
        }
    }

    fn start(persistent: bool) -> Option<RedisServer> {
        match RedisServer::try_start(persistent) {
            Ok(server) => Some(server),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                not_found();
                None
            }
            Err(e) => panic!("could not start redis-server: {e}"),
        }
    }

    /// Starts a private server on a free port (trying up to 5), without the skip rule: the
    /// error is `NotFound` when redis-server is not installed (for the benchmark).
    pub fn try_start(persistent: bool) -> std::io::Result<RedisServer> {
        RedisServer::try_start_with(persistent, &[])
    }

    /// Starts a private server on a free port with more arguments (e.g. `--tls-port N
    /// --tls-cert-file …`, `--replicaof 127.0.0.1 N`); `None` (after the skip rule) when
    /// redis-server is not installed. The plain port stays open for [`command`](Self::command).
    pub fn start_with(extra: &[String]) -> Option<RedisServer> {
        match RedisServer::try_start_with(false, extra) {
            Ok(server) => Some(server),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                not_found();
                None
            }
            Err(e) => panic!("could not start redis-server: {e}"),
        }
    }

    /// Like [`start_with`](Self::start_with), without the skip rule: `NotFound` when
    /// redis-server is not installed, another error when it does not come up with these
    /// arguments (e.g. `--tls-port` on a server built without TLS).
    pub fn try_start_with_args(extra: &[String]) -> std::io::Result<RedisServer> {
        RedisServer::try_start_with(false, extra)
    }

    fn try_start_with(persistent: bool, extra: &[String]) -> std::io::Result<RedisServer> {
        for _ in 0..5 {
            // A directory per attempt: a failed attempt's drop removes its own.
            let mut server = RedisServer {
                child: None,
                port: crate::free_port(),
                dir: crate::temp_dir("ae-redis-test"),
                persistent,
                extra: extra.to_vec(),
            };
            if server.spawn()? {
                return Ok(server);
            }
            // The port was taken in the meantime: try another.
        }
        Err(std::io::Error::other(
            "redis-server did not come up on any of 5 ports",
        ))
    }

    /// Spawns redis-server on `self.port`; Ok(false) when it exited (port taken).
    fn spawn(&mut self) -> std::io::Result<bool> {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut cmd = Command::new(binary());
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            &dir,
        ])
        .args(["--appendonly", if self.persistent { "yes" } else { "no" }])
        .args(&self.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if child.try_wait()?.is_some() {
                return Ok(false);
            }
            if self.ping() {
                self.child = Some(child);
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(false)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's working directory (its AOF lives there).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Sends one inline command and returns the first reply line.
    pub fn command(&self, line: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{line}\r\n").as_bytes())?;
        let mut reader = BufReader::new(s);
        let mut reply = String::new();
        reader.read_line(&mut reply)?;
        Ok(reply.trim_end().to_owned())
    }

    /// Sends one command and reads a reply of one line or one bulk string: the bulk string's
    /// text, a nil reply as `None`, any other one-line reply as it came (`:12`, `+OK`, …).
    pub fn bulk(&self, line: &str) -> std::io::Result<Option<String>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{line}\r\n").as_bytes())?;
        let mut reader = BufReader::new(s);
        let mut reply = String::new();
        reader.read_line(&mut reply)?;
        let reply = reply.trim_end();
        match reply.strip_prefix('$').map(str::parse::<i64>) {
            Some(Ok(n)) if n < 0 => Ok(None),
            Some(Ok(n)) => {
                let mut text = vec![0; n as usize + 2];
                std::io::Read::read_exact(&mut reader, &mut text)?;
                text.truncate(n as usize);
                Ok(Some(String::from_utf8_lossy(&text).into_owned()))
            }
            _ => Ok(Some(reply.to_owned())),
        }
    }

    /// Whether it answers `PING` with `PONG`.
    pub fn ping(&self) -> bool {
        self.command("PING").is_ok_and(|r| r == "+PONG")
    }

    /// Stops the server the way an operator would (`SHUTDOWN`: the AOF is flushed) and waits.
    pub fn stop(&mut self) {
        let _ = self.command("SHUTDOWN");
        if let Some(mut child) = self.child.take() {
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL (no shutdown, no AOF flush: a crash) and waits for it to
    /// exit. Its directory stays until drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still ours to talk to (not stopped or killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) {
        for _ in 0..50 {
            if self.spawn().expect("redis-server restart") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_server_stops_restarts_and_cleans_up() {
        let Some(mut server) = start_persistent() else {
            return;
        };
        assert!(server.ping());
        assert_eq!(server.command("SET k v").unwrap(), "+OK");
        server.stop();
        assert!(!server.ping(), "stopped");
        server.restart();
        assert_eq!(
            server.command("GET k").unwrap(),
            "$1",
            "the AOF kept the key"
        );
        let dir = server.dir().to_owned();
        assert!(dir.is_dir());
        drop(server);
        assert!(!dir.exists(), "its directory is removed on drop");
    }
}
