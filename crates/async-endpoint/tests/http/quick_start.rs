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

/// Generous: the example starts, and answers, on a loaded machine too.
const LONG: Duration = Duration::from_secs(60);

/// A GET on the quick start's address: status code and body.
fn get(path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    let answer = test_support::http::blocking_get("127.0.0.1:3000", path, headers)?;
    Ok((answer.status, answer.body))
}

/// Starts the example and waits until it is the one listening on 127.0.0.1:3000. The port is
/// fixed (the README's code binds it), so another test run on this machine may hold it for a
/// while: then wait for it to be free and start again, rather than talk to someone else's server.
fn start_listening(binary: &std::path::Path) -> Server {
    let give_up = Instant::now() + LONG * 3;
    loop {
        while std::net::TcpListener::bind("127.0.0.1:3000").is_err() {
            assert!(Instant::now() < give_up, "127.0.0.1:3000 stayed taken");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut server = Server(Command::new(binary).spawn().unwrap());
        loop {
            assert!(
                Instant::now() < give_up,
                "the quick start never listened on 127.0.0.1:3000"
            );
            if server.0.try_wait().unwrap().is_some() {
                break; // it lost the port to another process: start again once it is free
            }
            match listens_on_3000(server.0.id()) {
                Some(true) => return server,
                Some(false) => {}
                // No /proc (not Linux): an answer on the port is the best sign there is.
                None if get("/my_endpoint?probe", &[]).is_ok() => return server,
                None => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether process `pid` holds the listening socket on 127.0.0.1:3000, from `/proc/net/tcp`
/// and the process's file descriptors; `None` where there is no `/proc`.
fn listens_on_3000(pid: u32) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // Columns: sl, local_address (hex IP:port), rem_address, st (0A = LISTEN), …, inode (10th).
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(1) == Some(&"0100007F:0BB8") && f.get(3) == Some(&"0A"))
        .filter_map(|f| f.get(9).map(|inode| format!("socket:[{inode}]")))
        .collect();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    }))
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
    let mut server = start_listening(&binary);
    let (status, body) = get("/my_endpoint", &[]).expect("the quick start answers");
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
    // Cancellation works on the quick start as written (its route is `get(...)` only): a DELETE
    // with id and token answers 202, and the request then polls as the cancelled failure.
    let (status, body) = get("/my_endpoint", &[]).unwrap();
    assert_eq!(status, 202, "{body}");
    let accepted: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = accepted["async_request_id"].as_str().unwrap().to_owned();
    let token = accepted["async_request_token"].as_str().unwrap().to_owned();
    let credentials = [
        ("Async-Request-Id", id.as_str()),
        ("Async-Request-Token", token.as_str()),
    ];
    let deleted = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test_support::http::delete(
            3000,
            "/my_endpoint",
            &credentials,
        ))
        .unwrap();
    assert_eq!(deleted.status, 202, "{deleted:?}");
    let (status, body) = get("/my_endpoint", &credentials).unwrap();
    assert_eq!(status, 422, "{body}");
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

/// The README's "Testing an app" example defines the quick start's items in hidden lines (`# …`):
/// they are the example's, apart from its `main`.
#[test]
fn readme_testing_example_uses_the_quick_start() {
    let root = env!("CARGO_MANIFEST_DIR");
    let example = std::fs::read_to_string(format!("{root}/examples/quick_start.rs")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/../../README.md")).unwrap();
    let section = &readme[readme.find("### Testing an app").unwrap()..];
    let block = &section[section.find("```rust\n").unwrap() + 8..];
    let block = &block[..block.find("```\n").unwrap()];
    let hidden: String = block
        .lines()
        .filter_map(|line| match line {
            "#" => Some(""),
            _ => line.strip_prefix("# "),
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    let code = &example[example.find("use std::time").unwrap()..];
    let (items, rest) = code.split_at(code.find("#[tokio::main]").unwrap());
    let external = &rest[rest.find("/// Stands in").unwrap()..];
    for part in [items, external] {
        assert!(
            hidden.contains(part.trim()),
            "README.md's testing example differs from examples/quick_start.rs:\n{}",
            part.trim()
        );
    }
}
