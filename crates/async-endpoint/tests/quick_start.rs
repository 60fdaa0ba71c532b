//! Runs the README's quick start (`examples/quick_start.rs`) as a real server on 127.0.0.1:3000
//! and drives it over HTTP; also checks the README shows that file's code verbatim.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The example binary cargo built next to this test's `deps` directory.
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples")
        .join(format!("quick_start{}", std::env::consts::EXE_SUFFIX))
}

/// Generous: the example starts, and answers, on a loaded machine too.
const LONG: Duration = Duration::from_secs(60);

/// A minimal HTTP/1.1 GET: status code and body.
fn get(path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect("127.0.0.1:3000")?;
    stream.set_read_timeout(Some(LONG))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head: {}", String::from_utf8_lossy(&response)));
    let head = String::from_utf8_lossy(&response[..end]);
    let body = &response[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    // Field names are case-insensitive and values have optional whitespace (RFC 9110 5.5); any
    // body may come chunked, in any number of chunks (RFC 9112 7.1).
    let chunked = lines
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8(body).expect("a UTF-8 body")))
}

/// The payload of a chunked body (chunk extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line without CRLF");
        let line = String::from_utf8_lossy(&rest[..eol]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
        rest = &rest[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[test]
fn quick_start_runs_end_to_end() {
    let binary = example_binary();
    if !binary.exists() {
        // `cargo test --workspace` builds examples; a filtered run may not have.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "-p", "async-endpoint", "--example", "quick_start"])
            .status()
            .unwrap();
        assert!(
            built.success() && binary.exists(),
            "{} not built",
            binary.display()
        );
    }
    let mut server = Server(Command::new(&binary).spawn().unwrap());
    let started = Instant::now();
    let (status, body) = loop {
        if let Some(exit) = server.0.try_wait().unwrap() {
            panic!("the quick start exited before answering ({exit}); is 127.0.0.1:3000 taken?");
        }
        match get("/my_endpoint", &[]) {
            Ok(answer) => break answer,
            Err(_) if started.elapsed() < LONG => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the quick start never listened on 127.0.0.1:3000: {e}"),
        }
    };
    assert_eq!(status, 202, "{body}");
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = accepted["async_request_id"].as_str().unwrap().to_owned();
    let token = accepted["async_request_token"].as_str().unwrap().to_owned();
    let done = serde_json::json!({"some_data": "value_1 seen", "another_data": "value_2 seen"});
    // The original gem's way: id and token as query params. It polls this request: a 202 for
    // the same id (not a new start), or its result if the 2 s task is already over.
    let (status, body) = get(
        &format!("/my_endpoint?async_request_id={id}&async_request_token={token}"),
        &[],
    )
    .unwrap();
    let polled: serde_json::Value = serde_json::from_str(&body).unwrap();
    match status {
        202 => assert_eq!(polled["async_request_id"], id.as_str(), "{body}"),
        200 => assert_eq!(polled, done),
        _ => panic!("query-param poll: {status} {body}"),
    }
    // Waiting polls via headers until the end.
    let polling = Instant::now();
    let last = loop {
        let answer = get(
            "/my_endpoint",
            &[
                ("Async-Request-Id", &id),
                ("Async-Request-Token", &token),
                ("Prefer", "wait=10"),
            ],
        )
        .unwrap();
        if answer.0 != 202 || polling.elapsed() > LONG {
            break answer;
        }
    };
    assert_eq!(last.0, 200, "{}", last.1);
    let result: serde_json::Value = serde_json::from_str(&last.1).unwrap();
    assert_eq!(result, done);
    // It was our example that answered, not some other server on port 3000.
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the quick start exited (port 3000 taken?): another server answered"
    );
}

#[test]
fn readme_shows_the_quick_start_verbatim() {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(format!("{root}/examples/quick_start.rs")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/../../README.md")).unwrap();
    // The README shows the code from the first `use` on.
    let code = &example[example.find("use std::time").unwrap()..];
    assert!(
        readme.contains(code.trim()),
        "README.md's quick start differs from examples/quick_start.rs"
    );
}
