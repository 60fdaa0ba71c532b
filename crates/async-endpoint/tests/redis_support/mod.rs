//! Test support for the Redis tests: a private `redis-server` per test and a tiny HTTP client.
//!
//! Every test that stops, restarts or floods Redis gets its own server on a free port, so tests
//! never touch the shared Redis and never interfere with each other. Without `redis-server` on
//! PATH the tests print a loud SKIPPED line, or fail under `CI=true`.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private redis-server, killed (and its directory removed) on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
}

/// Starts a private server without persistence; `None` (after printing why) when redis-server
/// is not installed and this is not CI.
pub fn start() -> Option<RedisServer> {
    RedisServer::start(false)
}

/// Starts a private server with an append-only file, so a stop and restart keep the data.
pub fn start_persistent() -> Option<RedisServer> {
    RedisServer::start(true)
}

fn unique_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("ae-redis-test-{}-{n}", std::process::id()))
}

/// Without redis-server: fails under `CI=true`, otherwise says loudly that the test is skipped.
fn skip_or_fail() {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("redis-server not found on PATH, and CI=true: install Redis to run the Redis tests");
    }
    eprintln!("\n*** SKIPPED: redis-server not found on PATH; Redis tests did not run ***\n");
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

impl RedisServer {
    /// Starts a private server on `port` (which the caller knows to be free).
    pub fn start_at(port: u16) -> Option<RedisServer> {
        let mut server = RedisServer {
            child: None,
            port,
            dir: unique_dir(),
            persistent: false,
        };
        std::fs::create_dir_all(&server.dir).expect("temp dir");
        match server.spawn() {
            Ok(true) => Some(server),
            Ok(false) => panic!("redis-server did not start on port {port}"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                skip_or_fail();
                None
            }
            Err(e) => panic!("could not start redis-server: {e}"),
        }
    }

    fn start(persistent: bool) -> Option<RedisServer> {
        let dir = unique_dir();
        std::fs::create_dir_all(&dir).expect("temp dir");
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                dir: dir.clone(),
                persistent,
            };
            match server.spawn() {
                Ok(true) => return Some(server),
                Ok(false) => continue, // port taken in the meantime: try another
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    skip_or_fail();
                    return None;
                }
                Err(e) => panic!("could not start redis-server: {e}"),
            }
        }
        panic!("redis-server did not come up on any of 5 ports");
    }

    /// Spawns redis-server on `self.port`; Ok(false) when it exited (port taken).
    fn spawn(&mut self) -> std::io::Result<bool> {
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let mut cmd = Command::new("redis-server");
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

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A minimal HTTP/1.1 GET over a fresh connection (`Connection: close`), enough for these
/// tests and free of client dependencies.
pub async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> std::io::Result<HttpResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    parse(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad HTTP response"))
}

fn parse(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..end]).ok()?.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(end + 2..end + 2 + size)?);
            rest = rest.get(end + 4 + size..)?;
        }
        body = out;
    }
    Some(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A child's stdout, read line by line on a thread into a shared log (for `READY` / `RUN`
/// markers).
pub struct Lines {
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Lines {
    /// Every line read so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line the child wrote, read to the end of its output: call it once the child has
    /// exited, so a check of its last lines never races the reader thread.
    pub fn read_to_end(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stdout reader panicked");
        }
        self.snapshot()
    }
}

/// Starts reading a child's stdout lines.
pub fn collect_lines(child: &mut Child) -> Lines {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = child.stdout.take().map(|out| {
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(out);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().unwrap().push(line.trim_end().to_owned());
                line.clear();
            }
        })
    });
    Lines { lines, reader }
}

/// Waits until a line containing `prefix` shows up; returns the line from `prefix` on.
pub fn wait_line(lines: &std::sync::Mutex<Vec<String>>, prefix: &str, within: Duration) -> String {
    let until = Instant::now() + within;
    loop {
        // The test harness may print its own text before ours on the same line.
        if let Some(at) = lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.find(prefix).map(|i| l[i..].to_owned()))
        {
            return at;
        }
        assert!(
            Instant::now() < until,
            "no line starting with {prefix:?} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
