//! Child processes (servers, load, redis-server), killed on drop, and the tools the runner drives:
//! redis (commandstats, MONITOR), wrk, /proc.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A child process, killed and reaped when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command, log: &Path) -> Result<Proc, BoxError> {
        let log = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let mut p = Proc {
            child,
            stdout: None,
        };
        p.stdout = p.child.stdout.take().map(BufReader::new);
        Ok(p)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout lines until one starts with `prefix`; returns the rest of it.
    pub(crate) fn expect(&mut self, prefix: &str) -> Result<String, BoxError> {
        let out = self.stdout.as_mut().ok_or("no stdout")?;
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                return Err(format!("process ended before printing {prefix:?}").into());
            }
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
    }

    /// Hands the rest of its stdout, line by line, to a thread of its own: the lines arrive on
    /// the receiver as they are printed.
    pub(crate) fn lines(&mut self) -> std::sync::mpsc::Receiver<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(out) = self.stdout.take() {
            std::thread::spawn(move || {
                for line in out.lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        rx
    }

    /// Sends SIGKILL (the process cannot clean anything up) and reaps it.
    pub(crate) fn kill(&mut self) -> Result<(), BoxError> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Waits for the process to end and returns its whole stdout.
    pub(crate) fn finish(mut self) -> Result<String, BoxError> {
        let mut s = String::new();
        if let Some(out) = self.stdout.as_mut() {
            std::io::Read::read_to_string(out, &mut s)?;
        }
        self.child.wait()?;
        Ok(s)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of a process, bytes.
pub(crate) fn rss(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS")?;
    Ok(kb * 1024)
}

/// CPU time a process has used so far (`utime + stime` of `/proc/<pid>/stat`), clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').ok_or("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; the first after the name is field 3.
    let tick =
        |i: usize| -> Result<u64, BoxError> { Ok(fields.get(i).ok_or("short stat")?.parse()?) };
    Ok(tick(11)? + tick(12)?)
}

/// `getconf CLK_TCK` (100 on Linux unless configured otherwise).
pub(crate) fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A private redis-server.
pub(crate) struct Redis {
    _server: test_support::redis::RedisServer,
    pub(crate) port: u16,
    pub(crate) url: String,
    conn: Mutex<redis::Connection>,
}

impl Redis {
    /// A private redis-server (test-support's launcher: its own temporary directory, removed
    /// on drop; `_dir` is the run's directory, kept for the callers).
    pub(crate) fn start(_dir: &Path) -> Result<Redis, BoxError> {
        let server = test_support::redis::RedisServer::try_start(false)
            .map_err(|e| format!("redis-server: {e}"))?;
        let (port, url) = (server.port, server.url());
        let client = redis::Client::open(url.as_str())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match client.get_connection() {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        Ok(Redis {
            _server: server,
            port,
            url,
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T, BoxError> {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(c.query(&mut *conn)?)
    }

    /// `INFO <section>` as key → value.
    pub(crate) fn info(&self, section: &str) -> Result<BTreeMap<String, String>, BoxError> {
        let text: String = self.cmd(&["INFO", section])?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// The server's process id (`INFO server`).
    pub(crate) fn pid(&self) -> Result<u32, BoxError> {
        self.info("server")?
            .get("process_id")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| "no process_id in INFO server".into())
    }

    /// CPU time redis-server has used so far, microseconds (`/proc`).
    pub(crate) fn cpu_us(&self) -> Result<f64, BoxError> {
        Ok(cpu_ticks(self.pid()?)? as f64 * 1e6 / clock_ticks_per_second())
    }

    /// Calls per command from `INFO commandstats`.
    pub(crate) fn commandstats(&self) -> Result<BTreeMap<String, u64>, BoxError> {
        Ok(self
            .info("commandstats")?
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("cmdstat_")?.to_owned();
                let calls = v.split(',').find_map(|f| f.strip_prefix("calls="))?;
                Some((name, calls.parse().ok()?))
            })
            .collect())
    }

    /// Microseconds Redis spent executing commands so far (sum of commandstats `usec`).
    pub(crate) fn command_usec(&self) -> Result<u64, BoxError> {
        Ok(self
            .info("commandstats")?
            .values()
            .filter_map(|v| v.split(',').find_map(|f| f.strip_prefix("usec=")))
            .filter_map(|v| v.parse::<u64>().ok())
            .sum())
    }

    pub(crate) fn used_memory(&self) -> Result<u64, BoxError> {
        Ok(self
            .info("memory")?
            .get("used_memory")
            .and_then(|v| v.parse().ok())
            .ok_or("no used_memory")?)
    }

    /// Keys matching `pattern` (SCAN).
    pub(crate) fn keys(&self, pattern: &str) -> Result<Vec<String>, BoxError> {
        let mut cursor = "0".to_owned();
        let mut keys = Vec::new();
        loop {
            let (next, batch): (String, Vec<String>) =
                self.cmd(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"])?;
            keys.extend(batch);
            if next == "0" {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Starts a MONITOR connection counting commands: (from a script, name) → calls.
    pub(crate) fn monitor(&self) -> Result<Monitor, BoxError> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.write_all(b"MONITOR\r\n")?;
        let counts: Arc<Mutex<BTreeMap<(bool, String), u64>>> = Arc::default();
        let reader = BufReader::new(stream.try_clone()?);
        let c = counts.clone();
        let thread = std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                // +1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" "…"   or   [0 lua] "HSET" …
                let Some(rest) = line.split_once(" [").map(|(_, r)| r) else {
                    continue;
                };
                let Some((who, cmd)) = rest.split_once("] ") else {
                    continue;
                };
                let lua = who.ends_with("lua");
                let name = cmd.split('"').nth(1).unwrap_or("").to_ascii_lowercase();
                *c.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry((lua, name))
                    .or_default() += 1;
            }
        });
        // Let the MONITOR take effect before anything is measured.
        std::thread::sleep(Duration::from_millis(100));
        Ok(Monitor {
            stream,
            thread: Some(thread),
            counts,
        })
    }
}

/// A running MONITOR.
pub(crate) struct Monitor {
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
    counts: Arc<Mutex<BTreeMap<(bool, String), u64>>>,
}

impl Monitor {
    /// Stops it: (from a script, command) → calls.
    pub(crate) fn stop(mut self) -> BTreeMap<(bool, String), u64> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Differences of two commandstats snapshots, without the runner's own commands.
pub(crate) fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    const OURS: &[&str] = &[
        "info",
        "xlen",
        "zcard",
        "scard",
        "llen",
        "hlen",
        "type",
        "scan",
        "monitor",
        "memory",
        "dbsize",
        "hget",
        "command",
        "hello",
        "client|setinfo",
        "config|get",
    ];
    after
        .iter()
        .filter(|(k, _)| !OURS.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// One wrk run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wrk {
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) requests: u64,
    pub(crate) bad: u64,
    /// Redis command time per request, µs (when measured).
    pub(crate) redis_us: Option<f64>,
}

pub(crate) fn wrk(
    url: &str,
    headers: &[(&str, &str)],
    connections: u32,
    secs: u64,
) -> Result<Wrk, BoxError> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{secs}s"),
    ])
    .args(["--latency", "--timeout", "10s"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    let out = cmd.arg(url).output().map_err(|e| -> BoxError {
        if e.kind() == std::io::ErrorKind::NotFound {
            "wrk not found on PATH: install it (Debian: apt-get install wrk)".into()
        } else {
            format!("wrk did not run: {e}").into()
        }
    })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let mut w = Wrk::default();
    for line in text.lines() {
        let t = line.trim();
        let f: Vec<&str> = t.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => w.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => w.p50_ms = ms(v),
            ["99%", v] => w.p99_ms = ms(v),
            [n, "requests", "in", ..] => w.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => w.bad += n.parse::<u64>().unwrap_or(0),
            ["Socket", "errors:", ..] => {
                w.bad += t
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    Ok(w)
}

fn ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// The workspace root (this crate's parent).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the peer crate `bench/peers/<name>` (its own crate outside the workspace, so its
/// dependencies stay out of the workspace's) in release mode into `target`; the binary's path.
/// `what` names it in the log and the error.
pub(crate) fn build_peer(name: &str, what: &str, target: &Path) -> Result<PathBuf, BoxError> {
    crate::runner::log(&format!(
        "building the {what} peer (its own crate, outside the workspace) …"
    ));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(
            workspace_root()
                .join("bench/peers")
                .join(name)
                .join("Cargo.toml"),
        )
        .arg("--target-dir")
        .arg(target)
        .status()?;
    if !status.success() {
        return Err(format!("the {what} peer did not build").into());
    }
    Ok(target.join("release").join(name))
}
