//! Test support: drive headless Debian Chromium through `chromedriver`, from plain blocking Rust.
//!
//! WebDriver is HTTP + JSON, so this crate is a small blocking HTTP/1.1 client over
//! [`std::net::TcpStream`] plus the handful of WebDriver commands browser tests need. It depends
//! on `serde_json` and `base64` only, runs no async runtime of its own (so it can be driven from a
//! `#[test]` while the app under test runs on a Tokio runtime in other threads), and cleans up
//! after itself: the session, `chromedriver`, Chromium and the temporary profile go away when the
//! [`Browser`] is dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use browser_harness::Browser;
//!
//! # fn main() -> Result<(), browser_harness::Error> {
//! // Skips loudly (or fails when CI=true) when chromium or chromedriver is missing.
//! if !browser_harness::browser_or_skip("my_browser_test") {
//!     return Ok(());
//! }
//! let browser = Browser::launch()?;
//! browser.goto("http://127.0.0.1:8080/")?;
//! browser.click("#start")?;
//! let result = browser.wait_for("window.result", Duration::from_secs(30))?;
//! assert_eq!(result["ok"], true);
//! assert_eq!(browser.text("#status")?, "done");
//! browser.screenshot_png("target/my-page.png")?;
//! # Ok(()) }
//! ```
//!
//! # Finding the tools
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `CHROMIUM` | `/usr/bin/chromium` | the browser binary (Debian package `chromium`) |
//! | `CHROMEDRIVER` | `chromedriver` on `PATH`, else `/usr/bin/chromedriver` | the driver (Debian package `chromium-driver`) |
//! | `CI` | unset | when `true` (or `1`), a missing tool fails the test instead of skipping it |
//!
//! Setting `CHROMIUM=/nonexistent` is the way to see the skip (or the CI failure) on a machine
//! that has Chromium.
//!
//! Chromium runs with `--headless --no-sandbox --disable-gpu --disable-dev-shm-usage
//! --disable-background-networking --disable-component-update --disable-sync --no-first-run
//! --disable-quic`, a fresh `--user-data-dir` and a fixed window size (1280×900 by default).

use std::fmt;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

mod http;

/// The W3C WebDriver key under which an element reference travels.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How often [`Browser::wait_for`] and [`Browser::wait_until`] poll.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Availability and the skip rule
// ---------------------------------------------------------------------------------------------

/// The Chromium binary: `$CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// The chromedriver binary: `$CHROMEDRIVER`, else `chromedriver` on `PATH`, else
/// `/usr/bin/chromedriver`.
pub fn chromedriver_path() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMEDRIVER").filter(|v| !v.is_empty()) {
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
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// Whether Chromium and chromedriver are both there (see [`chromium_path`],
/// [`chromedriver_path`]). The error says which one is missing and how to get it.
pub fn browser_available() -> Result<(), String> {
    check_tools(&chromium_path(), &chromedriver_path())
}

fn check_tools(chromium: &Path, driver: &Path) -> Result<(), String> {
    if !is_executable(chromium) {
        return Err(format!(
            "chromium not found at {} (install the Debian package `chromium`, or set CHROMIUM)",
            chromium.display()
        ));
    }
    if !is_executable(driver) {
        return Err(format!(
            "chromedriver not found at {} (install the Debian package `chromium-driver`, or set \
             CHROMEDRIVER)",
            driver.display()
        ));
    }
    Ok(())
}

/// Whether this is a CI run: `CI` is `true` (any case) or `1`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The team's rule for a test whose tool is missing: **fails** (panics) when [`in_ci`], so a CI
/// image without the tool cannot pass silently; otherwise writes a loud `SKIPPED: …` block
/// straight to the process's stderr (the test harness would swallow `eprintln!` of a passing
/// test) and returns, so the caller returns too.
///
/// `test` names the test, `why` says what is missing.
#[track_caller]
pub fn skip_or_fail(test: &str, why: &str) {
    assert!(
        !in_ci(),
        "{test}: {why}. CI=true, so this test must run: install the missing tool."
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n==================================================================\n\
         SKIPPED: {test}: {why}\n\
         The browser test did not run (set CI=true to make this a failure).\n\
         =================================================================="
    );
}

/// [`browser_available`] combined with [`skip_or_fail`]: `true` when the test can go on.
///
/// ```no_run
/// #[test]
/// fn page_works() {
///     if !browser_harness::browser_or_skip("page_works") {
///         return;
///     }
///     // … Browser::launch() …
/// }
/// ```
pub fn browser_or_skip(test: &str) -> bool {
    match browser_available() {
        Ok(()) => true,
        Err(why) => {
            skip_or_fail(test, &why);
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// What can go wrong talking to the browser.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Chromium or chromedriver is missing (see [`browser_available`]).
    Unavailable(String),
    /// chromedriver did not start, or the session could not be created.
    Startup(String),
    /// A socket or file operation failed; the string says which.
    Io(&'static str, std::io::Error),
    /// chromedriver answered something that is not WebDriver.
    Protocol(String),
    /// A WebDriver command failed (e.g. `no such element`, `javascript error`).
    WebDriver {
        /// The command, e.g. `POST /element`.
        command: String,
        /// The HTTP status.
        status: u16,
        /// The WebDriver error code, e.g. `no such element`.
        error: String,
        /// The driver's message.
        message: String,
    },
    /// A wait ran out.
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it waited.
        waited: Duration,
        /// The last value or error seen, for the failure message.
        last: String,
    },
}

impl Error {
    /// The WebDriver error code (`"no such element"`, `"javascript error"`, …), if this is one.
    pub fn webdriver_code(&self) -> Option<&str> {
        match self {
            Error::WebDriver { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unavailable(why) => write!(f, "browser unavailable: {why}"),
            Error::Startup(why) => write!(f, "browser did not start: {why}"),
            Error::Io(what, e) => write!(f, "chromedriver I/O ({what}): {e}"),
            Error::Protocol(why) => write!(f, "unexpected chromedriver answer: {why}"),
            Error::WebDriver {
                command,
                status,
                error,
                message,
            } => write!(f, "{command} failed ({status} {error}): {message}"),
            Error::Timeout { what, waited, last } => {
                write!(
                    f,
                    "timed out after {waited:?} waiting for {what}; last: {last}"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// How to launch the browser; [`Options::default`] fits most tests.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// Window size in CSS pixels (default 1280×900); screenshots have this size.
    pub window: (u32, u32),
    /// Bound for [`Browser::execute_async`] scripts (default 30 s).
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

// ---------------------------------------------------------------------------------------------
// Browser
// ---------------------------------------------------------------------------------------------

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

/// A headless Chromium session, driven through its own private `chromedriver`.
///
/// Dropping it ends the session (Chromium exits), kills chromedriver and removes the temporary
/// profile. Methods take `&self`; each is one or a few blocking WebDriver calls.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    dir: PathBuf,
    command_timeout: Duration,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("chromedriver", &self.addr)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Launches with [`Options::default`].
    pub fn launch() -> Result<Browser, Error> {
        Self::launch_with(&Options::default())
    }

    /// Starts `chromedriver --port=<free port>` on loopback and opens a session for headless
    /// Chromium (see the crate docs for the flags).
    pub fn launch_with(options: &Options) -> Result<Browser, Error> {
        browser_available().map_err(Error::Unavailable)?;
        // A free port can be taken between our probe and chromedriver's bind: try a few times.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start(options) {
                Ok(browser) => return Ok(browser),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::Startup(last))
    }

    fn start(options: &Options) -> Result<Browser, Error> {
        let dir = temp_dir()?;
        let port = match free_port() {
            Ok(port) => port,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
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
                return Err(Error::Startup(format!("cannot run chromedriver: {e}")));
            }
        };
        let command_timeout = options
            .script_timeout
            .max(options.page_load_timeout)
            .saturating_add(Duration::from_secs(30));
        // Build the value first so Drop cleans up whatever happens next.
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            dir: dir.clone(),
            command_timeout,
        };
        let log_tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let start = text.len().saturating_sub(2000);
            text.get(start..).unwrap_or("").to_owned()
        };

        let deadline = Instant::now() + options.startup_timeout;
        loop {
            if let Ok(Some(status)) = browser.driver.try_wait() {
                return Err(Error::Startup(format!(
                    "chromedriver exited ({status}) on port {port}; its log:\n{}",
                    log_tail()
                )));
            }
            let ready = http::request(addr, "GET", "/status", None, Duration::from_secs(5))
                .ok()
                .and_then(|a| serde_json::from_slice::<Value>(&a.body).ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Startup(format!(
                    "chromedriver not ready on port {port} after {:?}; its log:\n{}",
                    options.startup_timeout,
                    log_tail()
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }

        let profile = dir.join("profile");
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
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push(format!("--window-size={w},{h}"));
        args.extend(options.extra_args.iter().cloned());
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
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
                }
            }
        });
        let created = browser
            .raw(
                "POST",
                "/session",
                Some(&capabilities),
                options.startup_timeout,
            )
            .map_err(|e| Error::Startup(format!("{e}; chromedriver log:\n{}", log_tail())))?;
        browser.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| Error::Protocol(format!("new session without sessionId: {created}")))?
            .to_owned();
        Ok(browser)
    }

    /// The WebDriver session id.
    pub fn session_id(&self) -> &str {
        &self.session
    }

    /// Sends one WebDriver command and returns its `value`.
    fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, Error> {
        let bytes = body.map(Value::to_string);
        let answer = http::request(
            self.addr,
            method,
            path,
            bytes.as_deref().map(str::as_bytes),
            timeout,
        )?;
        let command = || {
            format!(
                "{method} {}",
                path.rsplit_once(&self.session).map_or(path, |(_, p)| p)
            )
        };
        let mut json: Value = serde_json::from_slice(&answer.body).map_err(|e| {
            Error::Protocol(format!(
                "{} answered {} with non-JSON ({e}): {}",
                command(),
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ))
        })?;
        let value = json["value"].take();
        if (200..300).contains(&answer.status) {
            return Ok(value);
        }
        let text = |k: &str| value[k].as_str().unwrap_or_default().to_owned();
        Err(Error::WebDriver {
            command: command(),
            status: answer.status,
            error: text("error"),
            message: text("message"),
        })
    }

    /// A command on this session: `path` is relative to `/session/{id}`.
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let full = format!("/session/{}{path}", self.session);
        self.raw(method, &full, body, self.command_timeout)
    }

    /// Navigates and waits for the page to load.
    pub fn goto(&self, url: &str) -> Result<(), Error> {
        self.cmd("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// The current page's URL.
    pub fn current_url(&self) -> Result<String, Error> {
        let v = self.cmd("GET", "/url", None)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// The current page's title.
    pub fn title(&self) -> Result<String, Error> {
        let v = self.cmd("GET", "/title", None)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Runs `script` as the body of a function in the page (so it needs `return` to give a value)
    /// with `args` as `arguments`, and returns the result as JSON. Elements come back as
    /// WebDriver references; a thrown exception is [`Error::WebDriver`] `javascript error`.
    ///
    /// ```no_run
    /// # fn f(browser: &browser_harness::Browser) -> Result<(), browser_harness::Error> {
    /// let sum = browser.execute("return arguments[0] + arguments[1];", &[1.into(), 2.into()])?;
    /// assert_eq!(sum, 3);
    /// # Ok(()) }
    /// ```
    pub fn execute(&self, script: &str, args: &[Value]) -> Result<Value, Error> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` like [`execute`](Self::execute), but it finishes by calling its last
    /// argument, the callback: `arguments[arguments.length - 1](value)`. A returned Promise
    /// also works: its resolution is the result. Bounded by [`Options::script_timeout`].
    ///
    /// ```no_run
    /// # fn f(browser: &browser_harness::Browser) -> Result<(), browser_harness::Error> {
    /// let status = browser.execute_async(
    ///     "const done = arguments[arguments.length - 1];
    ///      fetch(arguments[0]).then(r => done(r.status));",
    ///     &["/health".into()],
    /// )?;
    /// # Ok(()) }
    /// ```
    pub fn execute_async(&self, script: &str, args: &[Value]) -> Result<Value, Error> {
        self.cmd(
            "POST",
            "/execute/async",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// The first element matching the CSS selector (no implicit wait: use
    /// [`wait_for`](Self::wait_for) for elements that appear later).
    pub fn find(&self, css: &str) -> Result<Element<'_>, Error> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        self.element(&v)
    }

    /// Every element matching the CSS selector, possibly none.
    pub fn find_all(&self, css: &str) -> Result<Vec<Element<'_>>, Error> {
        let v = self.cmd(
            "POST",
            "/elements",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        v.as_array()
            .ok_or_else(|| Error::Protocol(format!("elements answer is not a list: {v}")))?
            .iter()
            .map(|e| self.element(e))
            .collect()
    }

    fn element(&self, v: &Value) -> Result<Element<'_>, Error> {
        let id = v[ELEMENT_KEY]
            .as_str()
            .ok_or_else(|| Error::Protocol(format!("not an element reference: {v}")))?;
        Ok(Element {
            browser: self,
            id: id.to_owned(),
        })
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) -> Result<(), Error> {
        self.find(css)?.click()
    }

    /// The rendered text of the first element matching `css`.
    pub fn text(&self, css: &str) -> Result<String, Error> {
        self.find(css)?.text()
    }

    /// The current `value` property of the first element matching `css` (inputs, selects,
    /// textareas); empty when it has none.
    pub fn value(&self, css: &str) -> Result<String, Error> {
        let v = self.find(css)?.property("value")?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Types `text` into the first element matching `css`.
    pub fn send_keys(&self, css: &str, text: &str) -> Result<(), Error> {
        self.find(css)?.send_keys(text)
    }

    /// Polls the JavaScript *expression* `condition` every 100 ms until it is truthy, and
    /// returns its value. A `javascript error` while polling (e.g. an element not there yet)
    /// counts as "not yet"; the last one is reported if time runs out.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn f(browser: &browser_harness::Browser) -> Result<(), browser_harness::Error> {
    /// let results = browser.wait_for("window.results && window.results.done", Duration::from_secs(30))?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for(&self, condition: &str, timeout: Duration) -> Result<Value, Error> {
        let script = format!("return ({condition});");
        let mut last = String::from("(never evaluated)");
        self.wait_until(condition, timeout, |b| match b.execute(&script, &[]) {
            Ok(v) if truthy(&v) => Ok(Some(v)),
            Ok(v) => {
                last = v.to_string();
                Ok(None)
            }
            Err(e) if e.webdriver_code() == Some("javascript error") => {
                last = e.to_string();
                Ok(None)
            }
            Err(e) => Err(e),
        })
        .map_err(|e| match e {
            Error::Timeout { what, waited, .. } => Error::Timeout { what, waited, last },
            e => e,
        })
    }

    /// Calls `check` every 100 ms until it returns `Some`, and returns that. An `Err` from
    /// `check` stops the wait at once. `what` names the wait in the timeout error.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Browser) -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        let start = Instant::now();
        loop {
            if let Some(v) = check(self)? {
                return Ok(v);
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    waited: start.elapsed(),
                    last: "(see the condition)".to_owned(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// A PNG screenshot of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>, Error> {
        let v = self.cmd("GET", "/screenshot", None)?;
        let b64 = v
            .as_str()
            .ok_or_else(|| Error::Protocol("screenshot is not a string".into()))?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| Error::Protocol(format!("screenshot is not base64: {e}")))
    }

    /// Saves a PNG screenshot of the viewport to `path` (creating its directory).
    pub fn screenshot_png(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let png = self.screenshot()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io("create screenshot dir", e))?;
        }
        std::fs::write(path, png).map_err(|e| Error::Io("write screenshot", e))
    }

    /// The browser console messages since the last call (Chromium's log, which also has
    /// failed resource loads and uncaught errors). Each call drains what it returns.
    pub fn console_logs(&self) -> Result<Vec<LogEntry>, Error> {
        let v = self.cmd("POST", "/se/log", Some(&json!({ "type": "browser" })))?;
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
        if !self.session.is_empty() {
            // Ends Chromium; chromedriver would leave it running if only chromedriver died.
            let path = format!("/session/{}", self.session);
            let _ = self.raw("DELETE", &path, None, Duration::from_secs(20));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An element in the page, found with [`Browser::find`].
#[derive(Debug)]
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl Element<'_> {
    fn cmd(&self, method: &str, what: &str, body: Option<&Value>) -> Result<Value, Error> {
        self.browser
            .cmd(method, &format!("/element/{}{what}", self.id), body)
    }

    /// Clicks it (scrolling it into view first).
    pub fn click(&self) -> Result<(), Error> {
        self.cmd("POST", "/click", Some(&json!({}))).map(drop)
    }

    /// Its rendered text.
    pub fn text(&self) -> Result<String, Error> {
        let v = self.cmd("GET", "/text", None)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// A DOM property (`value`, `checked`, …) as JSON; `null` when absent.
    pub fn property(&self, name: &str) -> Result<Value, Error> {
        self.cmd("GET", &format!("/property/{name}"), None)
    }

    /// An HTML attribute, `None` when absent.
    pub fn attribute(&self, name: &str) -> Result<Option<String>, Error> {
        let v = self.cmd("GET", &format!("/attribute/{name}"), None)?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Types `text` into it.
    pub fn send_keys(&self, text: &str) -> Result<(), Error> {
        self.cmd("POST", "/value", Some(&json!({ "text": text })))
            .map(drop)
    }

    /// Clears an input or textarea.
    pub fn clear(&self) -> Result<(), Error> {
        self.cmd("POST", "/clear", Some(&json!({}))).map(drop)
    }
}

/// JavaScript truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::Io("find a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Io("find a free port", e))
}

/// A fresh directory for the profile and chromedriver's log.
fn temp_dir() -> Result<PathBuf, Error> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "browser-harness-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(dir.join("profile")).map_err(|e| Error::Io("create profile dir", e))?;
    Ok(dir)
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
    fn missing_tools_are_named() {
        // Through the inner function: tests run in parallel threads, so no environment changes.
        let sh = Path::new("/bin/sh");
        let gone = Path::new("/nonexistent");
        assert_eq!(check_tools(sh, sh), Ok(()));
        let e = check_tools(gone, sh).unwrap_err();
        assert!(e.starts_with("chromium not found at /nonexistent"), "{e}");
        let e = check_tools(sh, gone).unwrap_err();
        assert!(
            e.starts_with("chromedriver not found at /nonexistent"),
            "{e}"
        );
        // A directory or a non-executable file is not a tool either.
        assert!(check_tools(Path::new("/"), sh).is_err());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert!(check_tools(&manifest, sh).is_err());
    }
}
