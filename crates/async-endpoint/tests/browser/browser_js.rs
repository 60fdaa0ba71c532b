//! The bundled JS client in a real browser: headless Chromium (through `test_support::browser`) loads a
//! page from a real axum server that uses this crate, and drives both the ES module
//! (`asyncRequest`) and the original jQuery call (`$.getAsyncRequest(url, 10000).success(…).error(…)`)
//! to a success, a task failure, a client timeout and progress updates. The server records every
//! request URI, to show the id and token travel in headers only.
//!
//! Needs `chromium` + `chromium-driver` (see `test_support::browser::available`) and jQuery 3
//! from Debian's `libjs-jquery` (`/usr/share/javascript/jquery/jquery.min.js`, or the `JQUERY`
//! environment variable). Without them the test is skipped loudly, or fails when `CI=true`.
//! It takes about 15 s: the jQuery timeout case uses the snippet's 10 s timeout verbatim.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use test_support::browser::Browser;

const SECRET: &[u8] = b"browser test secret, 32 bytes or more of it";
const FAILURE_MESSAGE: &str = "the upstream API said no";

#[derive(Serialize, Deserialize)]
struct Who {
    who: String,
}

#[derive(Serialize, Deserialize)]
struct ReportOutput {
    who: String,
    rows: u32,
}

/// Reports progress 1/4 … 4/4 over about 1.5 s, then answers. It holds at step 1 until a poll
/// that reached the server after that step was answered 202, or the page's event stream is open:
/// either carries the step, so
/// the client's progress callbacks see real progress however slowly the browser polls.
struct Report {
    log: Log,
}

impl AsyncTask for Report {
    const NAME: &'static str = "report";
    type Params = Who;
    type Output = ReportOutput;

    async fn execute_task(&self, p: Who, ctx: TaskContext) -> Result<ReportOutput, Failure> {
        let id = ctx.request_id().to_string();
        for step in 1..=3 {
            ctx.progress(step, Some(4), format!("step {step} of 4"))
                .await;
            if step == 1 {
                let mark = self.log.lock().unwrap().len();
                // A poll answered 202 after the step carried it; an open event stream (the
                // page's, for every request) carries it too.
                let seen = || {
                    let log = self.log.lock().unwrap();
                    log[mark..]
                        .iter()
                        .any(|s| s.id.as_deref() == Some(&id) && s.answered == Some(202))
                        || log
                            .iter()
                            .any(|s| s.uri == "/async-endpoint/stream" && s.answered == Some(200))
                };
                // Bounded only so a broken client cannot hang the task; the test then fails on
                // the missing progress.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while !seen() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ctx.progress(4, Some(4), "done").await;
        Ok(ReportOutput {
            who: p.who,
            rows: 3,
        })
    }
}

/// Fails with a message for the client.
struct Broken;

impl AsyncTask for Broken {
    const NAME: &'static str = "broken";
    type Params = Who;
    type Output = ReportOutput;

    async fn execute_task(&self, _: Who, _: TaskContext) -> Result<ReportOutput, Failure> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Err(Failure::new(FAILURE_MESSAGE))
    }
}

/// Far longer than any client timeout here.
struct Forever;

impl AsyncTask for Forever {
    const NAME: &'static str = "forever";
    type Params = Who;
    type Output = ReportOutput;

    async fn execute_task(&self, _: Who, _: TaskContext) -> Result<ReportOutput, Failure> {
        tokio::time::sleep(Duration::from_secs(600)).await;
        Err(Failure::new("not reached"))
    }
}

/// What `done` renders: the output as JSON (status 200).
fn render_ok(output: ReportOutput) -> Json<ReportOutput> {
    Json(output)
}

/// What `failed` renders: `{"error": message}` (status 422).
fn render_failure(failure: &Failure) -> Json<Value> {
    Json(json!({ "error": failure.message() }))
}

async fn report(request: AsyncRequest<Report>, Query(who): Query<Who>) -> Response {
    request
        .init(who)
        .handle(render_ok, |f| render_failure(&f))
        .await
}

async fn broken(request: AsyncRequest<Broken>) -> Response {
    let who = Who { who: "-".into() };
    request
        .init(who)
        .handle(render_ok, |f| render_failure(&f))
        .await
}

async fn forever(request: AsyncRequest<Forever>) -> Response {
    let who = Who { who: "-".into() };
    request
        .init(who)
        .handle(render_ok, |f| render_failure(&f))
        .await
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    id: Option<String>,
    token: Option<String>,
    /// The answer's status, once it was sent.
    answered: Option<u16>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn record(State(log): State<Log>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        uri: request.uri().to_string(),
        id: header("async-request-id"),
        token: header("async-request-token"),
        answered: None,
    };
    let index = {
        let mut log = log.lock().unwrap();
        log.push(seen);
        log.len() - 1
    };
    let response = next.run(request).await;
    log.lock().unwrap()[index].answered = Some(response.status().as_u16());
    response
}

/// Starts the app on 127.0.0.1:0 in `rt`; returns its address, the request log and the endpoint
/// (kept alive: its in-process workers stop when it is dropped).
fn start_server(rt: &tokio::runtime::Runtime, jquery: Bytes) -> (SocketAddr, Log, AsyncEndpoint) {
    let log = Log::default();
    let app_log = log.clone();
    let task_log = log.clone();
    let (addr, endpoint) = rt.block_on(async move {
        let endpoint = AsyncEndpoint::builder()
            .secret(SECRET)
            .task(Report { log: task_log })
            // A poll held while `Report` holds at step 1 (no change to wake it) is answered
            // within a second, not after the client's 20 s.
            .max_wait(Duration::from_secs(1))
            .task(Broken)
            .task(Forever)
            .build()
            .expect("endpoint");
        let app = Router::new()
            .route("/", get(|| async { Html(PAGE) }))
            .route(async_endpoint::js::PATH, get(async_endpoint::js::serve))
            .route(
                "/jquery.js",
                get(move || {
                    let jquery = jquery.clone();
                    async move { ([("content-type", "text/javascript")], jquery).into_response() }
                }),
            )
            .route("/report", get(report))
            .route("/broken", get(broken))
            .route("/forever", get(forever))
            .layer(endpoint.layer())
            // Outermost, so it sees every request the browser sends.
            .layer(axum::middleware::from_fn_with_state(app_log, record));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        (addr, endpoint)
    });
    (addr, log, endpoint)
}

/// jQuery 3 from `$JQUERY`, else Debian's `libjs-jquery`; the error says what is missing.
fn jquery_path() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("JQUERY").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("jQuery not found at JQUERY={}", path.display()))
        };
    }
    ["jquery.min.js", "jquery.js"]
        .iter()
        .map(|f| PathBuf::from("/usr/share/javascript/jquery").join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "jQuery not found in /usr/share/javascript/jquery/ (install the Debian package \
             `libjs-jquery`, or set JQUERY to a jquery.js)"
                .to_owned()
        })
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    )
}

const CASES: [&str; 7] = [
    "es-success",
    "es-failure",
    "es-timeout",
    "jq-success",
    "jq-failure",
    "jq-timeout",
    "jq-progress",
];

#[test]
fn js_client_in_headless_chromium() {
    const TEST: &str = "browser_js::js_client_in_headless_chromium";
    if !test_support::browser::available_or_skip(TEST) {
        return;
    }
    let jquery = match jquery_path() {
        Ok(path) => path,
        Err(why) => {
            test_support::skip(TEST, &why);
            return;
        }
    };
    let jquery = Bytes::from(std::fs::read(&jquery).expect("read jQuery"));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, log, _endpoint) = start_server(&rt, jquery);

    let browser = Browser::launch().expect("launch headless chromium");
    browser.goto(&format!("http://{addr}/")).expect("open page");
    let ready = browser
        .wait_for(
            "window.moduleReady === true && typeof jQuery === 'function' && \
             jQuery.fn.jquery + ' ' + typeof jQuery.getAsyncRequest",
            Duration::from_secs(30),
        )
        .expect("page, module and jQuery plugin loaded");
    let ready = ready.as_str().unwrap_or_default();
    assert!(ready.starts_with('3'), "jQuery 3 expected, got {ready}");
    assert!(
        ready.ends_with(" function"),
        "no $.getAsyncRequest: {ready}"
    );

    browser
        .click("#run-module")
        .expect("click ES module button");
    browser.click("#run-jquery").expect("click jQuery button");

    let all_done = format!(
        "{}.every(k => k in window.results)",
        serde_json::to_string(&CASES).unwrap()
    );
    // The slowest case is the jQuery timeout (10 s); the bound is generous for a loaded machine.
    let waited = browser.wait_for(&all_done, Duration::from_secs(120));
    let results = browser
        .execute("return window.results;", &[])
        .expect("read results");
    let unhandled = browser
        .execute("return window.unhandled;", &[])
        .expect("read unhandled");
    let console = browser.console_logs().unwrap_or_default();
    let shot = target_dir().join("browser-js.png");
    browser.screenshot_png(&shot).expect("screenshot");
    eprintln!("screenshot: {}", shot.display());
    for entry in &console {
        eprintln!("console {}: {}", entry.level, entry.message);
    }
    eprintln!(
        "results: {}",
        serde_json::to_string_pretty(&results).unwrap()
    );
    if let Err(e) = waited {
        panic!("not every case finished: {e}\nresults: {results}");
    }
    drop(browser);
    rt.shutdown_timeout(Duration::from_secs(2));

    // (a) The ES module.
    let r = &results["es-success"];
    assert_eq!(r["ok"], true, "es-success: {r}");
    assert_eq!(r["status"], 200, "es-success: {r}");
    assert_eq!(
        r["body"],
        json!({ "who": "module", "rows": 3 }),
        "es-success: {r}"
    );
    assert_real_progress("es-success", &r["updates"]);

    let r = &results["es-failure"];
    assert_eq!(r["ok"], false, "es-failure: {r}");
    assert_eq!(r["isAsyncRequestError"], true, "es-failure: {r}");
    assert_eq!(r["kind"], "failed", "es-failure: {r}");
    assert_eq!(r["status"], 422, "es-failure: {r}");
    assert_eq!(
        r["body"],
        json!({ "error": FAILURE_MESSAGE }),
        "es-failure: {r}"
    );
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains(FAILURE_MESSAGE)),
        "es-failure: {r}"
    );

    let r = &results["es-timeout"];
    assert_eq!(r["ok"], false, "es-timeout: {r}");
    assert_eq!(r["isAsyncRequestError"], true, "es-timeout: {r}");
    assert_eq!(r["kind"], "timeout", "es-timeout: {r}");
    assert!(r["status"].is_null(), "a timeout has no status: {r}");

    // (b) The jQuery snippet, verbatim.
    let r = &results["jq-success"];
    assert_eq!(r["callback"], "success", "jq-success: {r}");
    assert_eq!(
        r["arg"],
        json!({ "who": "jquery", "rows": 3 }),
        "jq-success: {r}"
    );

    let r = &results["jq-failure"];
    assert_eq!(r["callback"], "error", "jq-failure: {r}");
    assert_eq!(
        r["arg"],
        json!({ "error": FAILURE_MESSAGE }),
        "jq-failure: {r}"
    );

    let r = &results["jq-timeout"];
    assert_eq!(r["callback"], "error", "jq-timeout: {r}");
    assert_eq!(r["arg"]["error"], "timeout", "jq-timeout: {r}");
    assert_eq!(r["arg"]["kind"], "timeout", "jq-timeout: {r}");

    // Progress through the plugin's third argument (asyncRequest options), and `.then`/`.always`.
    let r = &results["jq-progress"];
    assert_eq!(
        r["then"], "jquery-progress seen by then",
        "jq-progress: {r}"
    );
    assert_eq!(r["always"], true, "jq-progress: {r}");
    assert_real_progress("jq-progress", &r["updates"]);

    assert_eq!(
        unhandled,
        json!([]),
        "unhandled rejections or errors in the page"
    );
    let uncaught: Vec<_> = console
        .iter()
        .filter(|e| e.message.contains("Uncaught"))
        .collect();
    assert!(
        uncaught.is_empty(),
        "uncaught errors in the console: {uncaught:?}"
    );

    // The id and token travelled in headers, never in a URL.
    let seen = log.lock().unwrap().clone();
    let polls: Vec<&Seen> = seen.iter().filter(|s| s.id.is_some()).collect();
    assert!(
        polls.iter().all(|s| s.token.is_some()),
        "a poll with an id header but no token header: {polls:?}"
    );
    let ids: HashSet<&str> = polls.iter().filter_map(|s| s.id.as_deref()).collect();
    // One request per case. The three `report` cases (1.5 s or more) were polled with the headers
    // for their answer; a failing case may have been answered by its held start; the timeout
    // cases are followed over the page's event stream, which polls only a request that finished.
    assert!(
        (3..=CASES.len()).contains(&ids.len()),
        "distinct ids polled via headers: {ids:?}"
    );
    let secrets: Vec<&str> = polls
        .iter()
        .flat_map(|s| [s.id.as_deref(), s.token.as_deref()])
        .flatten()
        .collect();
    for s in &seen {
        assert!(
            !s.uri.contains("async_request"),
            "id/token parameter in a URL: {}",
            s.uri
        );
        for secret in &secrets {
            assert!(!s.uri.contains(secret), "id or token in a URL: {}", s.uri);
        }
    }
    eprintln!(
        "server saw {} requests, {} of them polls with id/token headers; URIs: {:?}",
        seen.len(),
        polls.len(),
        seen.iter().map(|s| s.uri.as_str()).collect::<HashSet<_>>()
    );
}

/// At least one `onProgress` update carried a real progress object from the task.
fn assert_real_progress(case: &str, updates: &Value) {
    let updates = updates
        .as_array()
        .unwrap_or_else(|| panic!("{case}: no updates list"));
    let real: Vec<&Value> = updates
        .iter()
        .filter(|u| u["progress"].is_object())
        .collect();
    assert!(
        !real.is_empty(),
        "{case}: no onProgress update with a progress object: {updates:?}"
    );
    for u in real {
        let p = &u["progress"];
        assert!(
            u["status"].is_string(),
            "{case}: update without status: {u}"
        );
        assert_eq!(p["total"], 4, "{case}: {u}");
        let at = p["at"]
            .as_u64()
            .unwrap_or_else(|| panic!("{case}: no `at`: {u}"));
        assert!((1..=4).contains(&at), "{case}: {u}");
        assert!(p["percent"].is_number(), "{case}: {u}");
        assert!(
            p["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("step ") || m == "done"),
            "{case}: {u}"
        );
    }
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>async-endpoint JS client: browser test</title>
<link rel="icon" href="data:,">
<style>
  body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
  table { border-collapse: collapse; width: 100%; table-layout: fixed; }
  th, td { border: 1px solid #ccc; padding: 6px 8px; text-align: left; vertical-align: top; }
  th { width: 14em; }
  td { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
  td.pending { color: #999; }
  td.done { background: #eef8ee; }
  button { font-size: 14px; margin-right: 8px; }
</style>
<script src="/jquery.js"></script>
<script>
  window.results = {};
  window.unhandled = [];
  window.addEventListener("unhandledrejection", function (e) {
    window.unhandled.push("unhandled rejection: " + (e.reason && e.reason.message || e.reason));
  });
  window.addEventListener("error", function (e) { window.unhandled.push("error: " + e.message); });

  function record(name, value) {
    window.results[name] = value;
    var cell = document.getElementById(name);
    var text = JSON.stringify(value);
    cell.textContent = text.length > 400 ? text.slice(0, 400) + "…" : text;
    cell.className = "done";
  }

  // The original API, verbatim: $.getAsyncRequest(url, 10000).success(fn).error(fn). The cases
  // that must end with an answer get 60000 instead, so a slow machine cannot turn them into
  // timeouts; the timeout case keeps the snippet's 10000.
  function runJQuery() {
    $.getAsyncRequest("/report?who=jquery", 60000).success(function(r){ record("jq-success", {callback: "success", arg: r}); }).error(function(r){ record("jq-success", {callback: "error", arg: r}); });
    $.getAsyncRequest("/broken", 60000).success(function(r){ record("jq-failure", {callback: "success", arg: r}); }).error(function(r){ record("jq-failure", {callback: "error", arg: r}); });
    $.getAsyncRequest("/forever", 10000).success(function(r){ record("jq-timeout", {callback: "success", arg: r}); }).error(function(r){ record("jq-timeout", {callback: "error", arg: r}); });

    // Progress: jQuery's own .progress(fn) (the plugin also takes asyncRequest options, e.g.
    // onProgress, as a third argument).
    var updates = [], always = false;
    var p = $.getAsyncRequest("/report?who=jquery-progress", 60000);
    p.progress(function (u) { updates.push(u); });
    p.always(function () { always = true; });
    p.then(function (r) { return r.who + " seen by then"; })
      .done(function (v) { record("jq-progress", {then: v, always: always, updates: updates}); })
      .fail(function (r) { record("jq-progress", {failed: r, always: always, updates: updates}); });
  }
</script>
<script type="module">
  import { asyncRequest, AsyncRequestError } from "/async_endpoint.js";

  async function outcome(promise) {
    try {
      const r = await promise;
      return { ok: true, status: r.status, body: r.body };
    } catch (e) {
      return { ok: false, isAsyncRequestError: e instanceof AsyncRequestError, kind: e.kind,
               status: e.status ?? null, body: e.body ?? null, message: e.message };
    }
  }

  window.runModule = function () {
    const updates = [];
    outcome(asyncRequest("/report?who=module", { timeout: 60000, onProgress: (u) => updates.push(u) }))
      .then((r) => record("es-success", { ...r, updates }));
    outcome(asyncRequest("/broken", { timeout: 60000 })).then((r) => record("es-failure", r));
    outcome(asyncRequest("/forever", { timeout: 1500 })).then((r) => record("es-timeout", r));
  };
  document.getElementById("run-module").addEventListener("click", () => window.runModule());
  window.moduleReady = true;
</script>
</head>
<body>
<h1>async-endpoint JS client in headless Chromium</h1>
<p>
  <button id="run-module">Run ES module cases</button>
  <button id="run-jquery" onclick="runJQuery()">Run jQuery cases</button>
</p>
<table>
  <tr><th>ES module: success + onProgress</th><td id="es-success" class="pending">pending</td></tr>
  <tr><th>ES module: task failure</th><td id="es-failure" class="pending">pending</td></tr>
  <tr><th>ES module: timeout (1.5 s)</th><td id="es-timeout" class="pending">pending</td></tr>
  <tr><th>jQuery: success</th><td id="jq-success" class="pending">pending</td></tr>
  <tr><th>jQuery: task failure</th><td id="jq-failure" class="pending">pending</td></tr>
  <tr><th>jQuery: timeout (10 s)</th><td id="jq-timeout" class="pending">pending</td></tr>
  <tr><th>jQuery: onProgress, .then, .always</th><td id="jq-progress" class="pending">pending</td></tr>
</table>
</body>
</html>
"#;
