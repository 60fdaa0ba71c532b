//! Shared by the demo's tests: run the built `demo` binary, and a blocking GET (test-support's
//! HTTP client).
#![allow(dead_code)] // each test file uses a different part

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::process::ChildOutput;

/// Generous: the first start on a loaded 2-core machine can be slow.
const STARTUP: Duration = Duration::from_secs(60);

/// A running `demo` process, killed on drop.
pub(crate) struct Demo {
    child: Child,
    /// Its stdout, read on a thread (so the demo never blocks on a full pipe).
    _output: ChildOutput,
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
        let output = ChildOutput::capture(&mut child);
        let start = Instant::now();
        let banner = loop {
            if let Some(line) = output.lines().into_iter().next() {
                break line;
            }
            if start.elapsed() > STARTUP {
                let _ = child.kill();
                let status = child.wait();
                panic!("the demo printed nothing within {STARTUP:?} (exit: {status:?})");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Demo {
            child,
            _output: output,
            banner,
        }
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
pub(crate) use test_support::http::Response as Answer;

/// `GET path` on `addr` (`127.0.0.1:port`) with extra headers, on a fresh connection.
pub(crate) fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    test_support::http::blocking_get(addr, path, headers)
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
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
