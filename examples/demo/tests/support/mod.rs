//! Shared by the demo's tests: run the built `demo` binary, and a tiny blocking HTTP/1.1 GET.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous: the first start on a loaded 2-core machine can be slow.
const STARTUP: Duration = Duration::from_secs(60);

/// A running `demo` process, killed on drop.
pub(crate) struct Demo {
    child: Child,
    /// The first line it printed (the URL line for web processes).
    pub(crate) banner: String,
}

impl Demo {
    /// Starts the built binary with `args` and `env` (plus `PORT=0` unless given) and waits
    /// for its first line on stdout.
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut command = Command::new(env!("CARGO_BIN_EXE_demo"));
        command
            .args(args)
            .env("PORT", "0")
            .env_remove("REDIS_URL")
            .env_remove("DEMO_ROLE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn the demo binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the demo never blocks on a full pipe.
            for _ in lines {}
        });
        let Ok(banner) = rx.recv_timeout(STARTUP) else {
            let _ = child.kill();
            let status = child.wait();
            panic!("the demo printed nothing within {STARTUP:?} (exit: {status:?})");
        };
        Demo { child, banner }
    }

    /// The base URL from the banner, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub(crate) fn url(&self) -> String {
        let start = self
            .banner
            .find("http://")
            .unwrap_or_else(|| panic!("no URL in the demo's banner: {}", self.banner));
        self.banner[start..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned()
    }

    /// `127.0.0.1:port` of [`url`](Self::url).
    pub(crate) fn addr(&self) -> String {
        self.url().trim_start_matches("http://").to_owned()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through `kill`, so no unsafe code) and waits up to `bound` for the exit.
    pub(crate) fn terminate(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let start = Instant::now();
        while start.elapsed() < bound {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET path` on `addr` (`127.0.0.1:port`) with extra headers; one connection, read to EOF.
pub(crate) fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set timeout");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read answer");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head: {}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    // Field names are case-insensitive, values lose their optional whitespace (RFC 9110 5.5).
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut answer = Answer {
        status,
        headers,
        body: String::new(),
    };
    // The server may send any body chunked (RFC 9112 7.1), whatever its size.
    let chunked = answer.header("transfer-encoding").is_some_and(|te| {
        te.rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    answer.body = String::from_utf8_lossy(&body).into_owned();
    answer
}

/// The payload of a `Transfer-Encoding: chunked` body (extensions and trailers ignored).
pub(crate) fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("chunk size line without CRLF"));
        let line = String::from_utf8_lossy(&body[..line_end]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        body = &body[line_end + 2..];
        if size == 0 {
            return out;
        }
        assert!(body.len() >= size + 2, "chunk cut short");
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Starts a lookup and polls it (waiting polls) until it is not 202 any more; returns the final
/// answer. Panics after `bound`.
pub(crate) fn lookup(addr: &str, query: &str, bound: Duration) -> Answer {
    let started = get(addr, &format!("/api/lookup?{query}"), &[]);
    assert_eq!(started.status, 202, "start: {started:?}");
    let body = started.json();
    let id = body["async_request_id"].as_str().expect("id").to_owned();
    let token = body["async_request_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let start = Instant::now();
    loop {
        let answer = get(
            addr,
            &format!("/api/lookup?{query}"),
            &[
                ("Async-Request-Id", &id),
                ("Async-Request-Token", &token),
                ("Prefer", "wait=5"),
            ],
        );
        if answer.status != 202 {
            return answer;
        }
        assert!(
            start.elapsed() < bound,
            "still 202 after {bound:?}: {answer:?}"
        );
    }
}
