//! Headless Debian Chromium for browser tests, through its own private `chromedriver` and the
//! W3C WebDriver client `fantoccini`, behind a small blocking API for plain `#[test]`s.
//!
//! ```no_run
//! use std::time::Duration;
//! use test_support::browser::{self, Browser};
//!
//! // Skips loudly (or fails in CI) when chromium or chromedriver is missing.
//! if !browser::available_or_skip("my_browser_test") {
//!     return;
//! }
//! let browser = Browser::launch().expect("launch");
//! browser.goto("http://127.0.0.1:8080/").unwrap();
//! browser.click("#start").unwrap();
//! let result = browser.wait_for("window.result", Duration::from_secs(30)).unwrap();
//! assert_eq!(result["ok"], true);
//! assert_eq!(browser.text("#status").unwrap(), "done");
//! browser.screenshot_png("target/my-page.png").unwrap();
//! ```
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `CHROMIUM` | `/usr/bin/chromium` | the browser binary (Debian package `chromium`) |
//! | `CHROMEDRIVER` | `chromedriver` on `PATH`, else `/usr/bin/chromedriver` | the driver (Debian package `chromium-driver`) |
//!
//! `CHROMIUM=/nonexistent` shows the skip (or the CI failure) on a machine that has Chromium.
//!
//! Chromium runs with `--headless --no-sandbox --disable-gpu --disable-dev-shm-usage
//! --disable-background-networking --disable-component-update --disable-sync --no-first-run
//! --disable-quic`, a fresh `--user-data-dir` and a fixed window size (1280×900 by default).
//!
//! Each [`Browser`] owns a current-thread Tokio runtime for its WebDriver calls: call it from
//! plain threads, not from inside an async task (the app under test runs on its own runtime).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// How often [`Browser::wait_for`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The Chromium binary: `$CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// The chromedriver binary: `$CHROMEDRIVER`, else `chromedriver` on `PATH`, else
/// `/usr/bin/chromedriver`.
pub fn chromedriver_path() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMEDRIVER") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromedriver"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether Chromium and chromedriver are both there; the error says which one is missing.
pub fn available() -> Result<(), String> {
    let chromium = chromium_path();
    if !is_executable(&chromium) {
        return Err(format!(
            "chromium not found at {} (install the Debian package `chromium`, or set CHROMIUM)",
            chromium.display()
        ));
    }
    let driver = chromedriver_path();
    if !is_executable(&driver) {
        return Err(format!(
            "chromedriver not found at {} (install the Debian package `chromium-driver`, or set \
             CHROMEDRIVER)",
            driver.display()
        ));
    }
    Ok(())
}

/// [`available`] with the [`skip`](crate::skip) rule: `true` when the test can go on.
#[track_caller]
pub fn available_or_skip(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) => {
            crate::skip(test, &why);
            false
        }
    }
}

/// What went wrong talking to the browser.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn cmd_error(what: &str) -> impl FnOnce(CmdError) -> Error + '_ {
    move |e| Error(format!("{what}: {e}"))
}

/// How to launch the browser; [`Options::default`] fits most tests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Window size in CSS pixels (default 1280×900); screenshots have this size.
    pub window: (u32, u32),
    /// Bound for async scripts (default 30 s).
    pub script_timeout: Duration,
    /// Bound for [`Browser::goto`] page loads (default 30 s).
    pub page_load_timeout: Duration,
    /// Bound for chromedriver to come up and the session to open (default 60 s, generous for
    /// a loaded machine).
    pub startup_timeout: Duration,
    /// Extra Chromium command-line flags.
    pub extra_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            window: (1280, 900),
            script_timeout: Duration::from_secs(30),
            page_load_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(60),
            extra_args: Vec::new(),
        }
    }
}

impl Options {
    /// Sets the window size.
    #[must_use]
    pub fn window(mut self, width: u32, height: u32) -> Self {
        self.window = (width, height);
        self
    }

    /// Adds a Chromium flag.
    #[must_use]
    pub fn arg(mut self, flag: impl Into<String>) -> Self {
        self.extra_args.push(flag.into());
        self
    }
}

/// One console message from the page (see [`Browser::console_logs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO` or `DEBUG`.
    pub level: String,
    /// The text, prefixed by Chromium with the source location.
    pub message: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
}

/// chromedriver's log endpoint (not in W3C WebDriver, so not in fantoccini):
/// `POST /session/{id}/se/log` with `{"type": "browser"}`.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// A headless Chromium session, driven through its own private `chromedriver`.
///
/// Dropping it ends the session (Chromium exits), kills chromedriver and removes the temporary
/// profile.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    dir: PathBuf,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Launches with [`Options::default`].
    pub fn launch() -> Result<Browser, Error> {
        Self::launch_with(&Options::default())
    }

    /// Starts `chromedriver --port=<free port>` on loopback and opens a session for headless
    /// Chromium (see the module docs for the flags).
    pub fn launch_with(options: &Options) -> Result<Browser, Error> {
        available().map_err(Error)?;
        // A free port can be taken between our probe and chromedriver's bind: try a few times.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start(options) {
                Ok(browser) => return Ok(browser),
                Err(e) => last = e.0,
            }
        }
        Err(Error(format!("could not start the browser: {last}")))
    }

    fn start(options: &Options) -> Result<Browser, Error> {
        let dir = crate::temp_dir("browser-test");
        let port = crate::free_port();
        let log = dir.join("chromedriver.log");
        let driver = Command::new(chromedriver_path())
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let driver = match driver {
            Ok(driver) => driver,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error(format!("cannot run chromedriver: {e}")));
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error(format!("runtime: {e}")))?;
        // Built first so Drop cleans up whatever happens next.
        let mut browser = Browser {
            runtime,
            client: None,
            driver,
            dir: dir.clone(),
        };
        let log_tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let start = text.len().saturating_sub(2000);
            text.get(start..).unwrap_or("").to_owned()
        };

        let (w, h) = options.window;
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push(format!("--user-data-dir={}", dir.join("profile").display()));
        args.push(format!("--window-size={w},{h}"));
        args.extend(options.extra_args.iter().cloned());
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let Value::Object(capabilities) = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_path().to_string_lossy(),
                "args": args,
            },
            "goog:loggingPrefs": { "browser": "ALL" },
            "timeouts": {
                "script": millis(options.script_timeout),
                "pageLoad": millis(options.page_load_timeout),
                "implicit": 0,
            },
        }) else {
            unreachable!("an object literal");
        };

        // chromedriver needs a moment to listen: retry the session until the startup bound.
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + options.startup_timeout;
        let client = loop {
            if let Ok(Some(status)) = browser.driver.try_wait() {
                return Err(Error(format!(
                    "chromedriver exited ({status}) on port {port}; its log:\n{}",
                    log_tail()
                )));
            }
            let attempt = browser.runtime.block_on(async {
                let connect = ClientBuilder::new(HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&url)
                    .await;
                tokio::time::sleep(if connect.is_err() {
                    POLL_INTERVAL
                } else {
                    Duration::ZERO
                })
                .await;
                connect
            });
            match attempt {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => {
                    return Err(Error(format!(
                        "no WebDriver session on port {port} after {:?}: {e}; chromedriver log:\n{}",
                        options.startup_timeout,
                        log_tail()
                    )));
                }
                Err(_) => {}
            }
        };
        browser.client = Some(client);
        Ok(browser)
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    /// Navigates and waits for the page to load.
    pub fn goto(&self, url: &str) -> Result<(), Error> {
        self.runtime
            .block_on(self.client().goto(url))
            .map_err(cmd_error("goto"))
    }

    /// The current page's URL.
    pub fn current_url(&self) -> Result<String, Error> {
        self.runtime
            .block_on(self.client().current_url())
            .map(String::from)
            .map_err(cmd_error("current url"))
    }

    /// The page's title.
    pub fn title(&self) -> Result<String, Error> {
        self.runtime
            .block_on(self.client().title())
            .map_err(cmd_error("title"))
    }

    /// Runs `script` (a function body: `return …;` gives the value) with `args`.
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value, Error> {
        self.runtime
            .block_on(self.client().execute(script, args.to_vec()))
            .map_err(cmd_error("execute"))
    }

    /// The text of the first element matching `css`.
    pub fn text(&self, css: &str) -> Result<String, Error> {
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.text().await })
            .map_err(cmd_error(css))
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) -> Result<(), Error> {
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.click().await })
            .map_err(cmd_error(css))
    }

    /// The `value` property of the first element matching `css` (an input's value).
    pub fn value(&self, css: &str) -> Result<String, Error> {
        self.runtime
            .block_on(async {
                self.client()
                    .find(Locator::Css(css))
                    .await?
                    .prop("value")
                    .await
            })
            .map(Option::unwrap_or_default)
            .map_err(cmd_error(css))
    }

    /// Types `text` into the first element matching `css`.
    pub fn send_keys(&self, css: &str, text: &str) -> Result<(), Error> {
        self.runtime
            .block_on(async {
                self.client()
                    .find(Locator::Css(css))
                    .await?
                    .send_keys(text)
                    .await
            })
            .map_err(cmd_error(css))
    }

    /// Evaluates the JavaScript expression `condition` until it is truthy (JavaScript's rules)
    /// and returns its value; a script error counts as not yet. Fails after `timeout`, saying
    /// the last value.
    pub fn wait_for(&self, condition: &str, timeout: Duration) -> Result<Value, Error> {
        let script = format!("return ({condition});");
        let start = Instant::now();
        let mut last: String;
        loop {
            match self
                .runtime
                .block_on(self.client().execute(&script, Vec::new()))
            {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => last = v.to_string(),
                Err(CmdError::Standard(e)) if e.error == ErrorStatus::JavascriptError => {
                    last = e.to_string();
                }
                Err(e) => return Err(cmd_error("wait_for")(e)),
            }
            if start.elapsed() >= timeout {
                return Err(Error(format!(
                    "timed out after {:?} waiting for {condition}; last value: {last}",
                    start.elapsed()
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>, Error> {
        self.runtime
            .block_on(self.client().screenshot())
            .map_err(cmd_error("screenshot"))
    }

    /// Saves a PNG of the viewport to `path` (creating its directory).
    pub fn screenshot_png(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let png = self.screenshot()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error(format!("create {}: {e}", dir.display())))?;
        }
        std::fs::write(path, png).map_err(|e| Error(format!("write {}: {e}", path.display())))
    }

    /// The page's console messages since the last call (chromedriver's log endpoint).
    pub fn console_logs(&self) -> Result<Vec<LogEntry>, Error> {
        let v = self
            .runtime
            .block_on(self.client().issue_cmd(BrowserLog))
            .map_err(cmd_error("console logs"))?;
        Ok(v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| LogEntry {
                        level: e["level"].as_str().unwrap_or_default().to_owned(),
                        message: e["message"].as_str().unwrap_or_default().to_owned(),
                        timestamp: e["timestamp"].as_u64().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), client.close()).await
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// JavaScript's truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_javascript() {
        for v in [json!(null), json!(false), json!(0), json!(0.0), json!("")] {
            assert!(!truthy(&v), "{v} should be falsy");
        }
        for v in [
            json!(true),
            json!(1),
            json!(-0.5),
            json!("x"),
            json!([]),
            json!({}),
        ] {
            assert!(truthy(&v), "{v} should be truthy");
        }
    }

    #[test]
    fn drives_a_page() {
        if !available_or_skip("test_support::browser::drives_a_page") {
            return;
        }
        let browser = Browser::launch_with(&Options::default().window(400, 300)).unwrap();
        browser
            .goto("data:text/html,<title>t</title><p id=p>hi</p><input id=i value=a><button id=b onclick=\"console.error('boom');window.done=41+1\">b</button>")
            .unwrap();
        assert_eq!(browser.title().unwrap(), "t");
        assert!(browser.current_url().unwrap().starts_with("data:text/html"));
        assert_eq!(browser.text("#p").unwrap(), "hi");
        browser.send_keys("#i", "bc").unwrap();
        assert_eq!(browser.value("#i").unwrap(), "abc");
        assert_eq!(
            browser
                .execute("return arguments[0] + arguments[1];", &[json!(2), json!(3)])
                .unwrap(),
            json!(5)
        );
        assert!(browser.text("#nope").is_err(), "no such element");
        browser.click("#b").unwrap();
        assert_eq!(
            browser
                .wait_for("window.done", Duration::from_secs(10))
                .unwrap(),
            json!(42)
        );
        let logs = browser.console_logs().unwrap();
        assert!(
            logs.iter()
                .any(|l| l.level == "SEVERE" && l.message.contains("boom")),
            "{logs:?}"
        );
        assert!(
            browser
                .wait_for("window.never", Duration::from_millis(300))
                .is_err()
        );
        assert!(browser.screenshot().unwrap().starts_with(b"\x89PNG"));
    }
}
