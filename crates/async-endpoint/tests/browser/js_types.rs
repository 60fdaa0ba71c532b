//! The npm package's TypeScript declarations: `npm ci` in `js/` (TypeScript and @types/jquery,
//! pinned in `js/package-lock.json`), then `tsc --noEmit` over the typed example in
//! `js/types-test/` (the ES module and the jQuery plugin), then `npm pack --dry-run` must ship
//! the declarations. Needs Node.js and npm, and the npm registry for `npm ci`: without npm the
//! test is skipped loudly on a developer machine and fails in CI (`CI=true`).

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn npm(js_dir: &Path, args: &[&str]) -> Result<Output, std::io::Error> {
    let npm = std::env::var_os("NPM").unwrap_or_else(|| "npm".into());
    Command::new(npm)
        .args(args)
        .current_dir(js_dir)
        .env_remove("NODE_TEST_CONTEXT")
        .env_remove("NODE_OPTIONS")
        .output()
}

fn check(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "`{what}` in js/ failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn typescript_declarations_compile_and_ship() {
    let js_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../js");
    if !js_dir.join("package.json").is_file() {
        // The crate as published (a .crate file) carries no js/ directory.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no JS package at {}",
            js_dir.display()
        );
        return;
    }
    let installed = match npm(
        &js_dir,
        &["ci", "--no-audit", "--no-fund", "--ignore-scripts"],
    ) {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            test_support::skip(
                "typescript_declarations_compile_and_ship",
                "npm not found: install Node.js's npm (Debian: `apt-get install npm`) or set NPM",
            );
            return;
        }
        Err(e) => panic!("could not run npm in {}: {e}", js_dir.display()),
    };
    check("npm ci", &installed);
    check(
        "npm run typecheck",
        &npm(&js_dir, &["run", "typecheck"]).unwrap(),
    );
    let packed = npm(&js_dir, &["pack", "--dry-run", "--json"]).unwrap();
    check("npm pack --dry-run", &packed);
    let listing: serde_json::Value = serde_json::from_slice(&packed.stdout).unwrap();
    let files: Vec<&str> = listing[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for shipped in [
        "async_endpoint.js",
        "async_endpoint.d.ts",
        "package.json",
        "README.md",
    ] {
        assert!(
            files.contains(&shipped),
            "npm pack leaves out {shipped}: {files:?}"
        );
    }
}
