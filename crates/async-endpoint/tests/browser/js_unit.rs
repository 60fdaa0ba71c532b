//! Runs the JS client's unit tests (`node --test` in `js/`) as part of `cargo test`.
//!
//! The client (`assets/async_endpoint.js`) ships inside this crate, so its tests gate the crate too.
//! They need Node.js ≥ 18 on `PATH` (or its path in the `NODE` environment variable) and nothing
//! else: no npm install. Without Node the test is skipped loudly on a developer machine and fails
//! in CI (`CI=true`), so a CI image without Node cannot pass silently.

use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn js_client_unit_tests_pass() {
    let js_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../js");
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    if !js_dir.join("package.json").is_file() {
        // The crate as published (a .crate file) carries no js/ directory.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no JS package at {}",
            js_dir.display()
        );
        return;
    }

    let output = match Command::new(&node)
        .args(["--test", "test/"])
        .current_dir(&js_dir)
        // A parent `node --test` (or a user's NODE_OPTIONS) must not change how the suite runs.
        .env_remove("NODE_TEST_CONTEXT")
        .env_remove("NODE_OPTIONS")
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            test_support::skip(
                "js_client_unit_tests_pass",
                &format!(
                    "node not found ({node:?}): install Node.js >= 18 or set NODE to its path"
                ),
            );
            return;
        }
        Err(e) => panic!("could not run {node:?} --test in {}: {e}", js_dir.display()),
    };

    eprintln!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "`node --test test/` in {} failed ({}); its output is above",
        js_dir.display(),
        output.status
    );
}
