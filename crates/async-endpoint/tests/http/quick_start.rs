//! Runs the README's quick start (`examples/quick_start.rs`) as a real server on 127.0.0.1:3000
//! and drives it over HTTP; also checks the README shows that file's code verbatim.

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

/// A GET on the quick start's address: status code and body.
fn get(path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    let answer = test_support::http::blocking_get("127.0.0.1:3000", path, headers)?;
    Ok((answer.status, answer.body))
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
    let _server = Server(Command::new(&binary).spawn().unwrap());
    let started = Instant::now();
    let (status, body) = loop {
        match get("/my_endpoint", &[]) {
            Ok(answer) => break answer,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("the quick start never listened on 127.0.0.1:3000: {e}"),
        }
    };
    assert_eq!(status, 202, "{body}");
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = accepted["async_request_id"].as_str().unwrap().to_owned();
    let token = accepted["async_request_token"].as_str().unwrap().to_owned();
    // The original gem's way: id and token as query params; a waiting poll via headers.
    let (status, _) = get(
        &format!("/my_endpoint?async_request_id={id}&async_request_token={token}"),
        &[],
    )
    .unwrap();
    assert_eq!(status, 202);
    let mut last = (0, String::new());
    for _ in 0..20 {
        last = get(
            "/my_endpoint",
            &[
                ("Async-Request-Id", &id),
                ("Async-Request-Token", &token),
                ("Prefer", "wait=10"),
            ],
        )
        .unwrap();
        if last.0 != 202 {
            break;
        }
    }
    assert_eq!(last.0, 200, "{}", last.1);
    let done: serde_json::Value = serde_json::from_str(&last.1).unwrap();
    assert_eq!(
        done,
        serde_json::json!({"some_data": "value_1 seen", "another_data": "value_2 seen"})
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
