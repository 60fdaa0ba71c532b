//! A page on one origin using the API on another: the page server (port A) serves the page, the
//! JS client and jQuery; the API server (port B) has the endpoint behind tower-http's
//! `CorsLayer` configured as the README shows. Headless Chromium runs the ES module and the
//! jQuery call across the two origins (success with progress, failure), reads the exposed
//! `Retry-After` and `Preference-Applied`, and cancels with a cross-origin `DELETE`.
//!
//! Needs `chromium` + `chromium-driver` and Debian's `libjs-jquery` like `browser_js`; skipped
//! loudly without them (a failure when `CI=true`).

use std::path::PathBuf;
use std::time::Duration;

use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::body::Bytes;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderName, HeaderValue, Method, header};
use serde_json::json;
use test_support::browser::Browser;
use tower_http::cors::CorsLayer;

const SECRET: &[u8] = b"cors browser test secret, 32 bytes or more";

/// Two steps with progress, then its name back; the second step outlasts `max_wait`, so the
/// client sees a 202 with the progress before the result.
struct Slow;

impl AsyncTask for Slow {
    const NAME: &'static str = "slow";
    type Params = String;
    type Output = String;

    async fn execute_task(&self, who: String, ctx: TaskContext) -> Result<String, Failure> {
        ctx.progress(1, Some(2), "half way").await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok(who)
    }
}

struct Broken;

impl AsyncTask for Broken {
    const NAME: &'static str = "broken";
    type Params = ();
    type Output = String;

    async fn execute_task(&self, (): (), _: TaskContext) -> Result<String, Failure> {
        Err(Failure::new("the upstream API said no"))
    }
}

/// Runs until cancelled.
struct Forever;

impl AsyncTask for Forever {
    const NAME: &'static str = "forever";
    type Params = ();
    type Output = String;

    async fn execute_task(&self, (): (), ctx: TaskContext) -> Result<String, Failure> {
        ctx.cancelled().await;
        Err(Failure::new("cancelled"))
    }
}

async fn slow(request: AsyncRequest<Slow>, query: axum::extract::Query<Who>) -> Response {
    request
        .init(query.0.who)
        .handle(
            |who| Json(json!({ "who": who })),
            |f| Json(json!({ "error": f.message() })),
        )
        .await
}

#[derive(serde::Deserialize)]
struct Who {
    who: String,
}

async fn broken(request: AsyncRequest<Broken>) -> Response {
    request
        .init(())
        .handle(Json, |f| Json(json!({ "error": f.message() })))
        .await
}

async fn forever(request: AsyncRequest<Forever>) -> Response {
    request
        .init(())
        .handle(Json, |f| Json(json!({ "error": f.message() })))
        .await
}

/// The README's CORS configuration, for the page's origin.
fn cors(page_origin: &str) -> CorsLayer {
    CorsLayer::new()
        .allow_origin([page_origin.parse::<HeaderValue>().expect("origin")])
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            HeaderName::from_static("async-request-id"),
            HeaderName::from_static("async-request-token"),
            HeaderName::from_static("prefer"),
            HeaderName::from_static("idempotency-key"),
            header::CONTENT_TYPE,
        ])
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static("preference-applied"),
            header::LINK,
        ])
        .max_age(Duration::from_secs(600))
}

fn jquery() -> Option<Bytes> {
    let path = std::env::var_os("JQUERY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            ["jquery.min.js", "jquery.js"]
                .iter()
                .map(|f| PathBuf::from("/usr/share/javascript/jquery").join(f))
                .find(|p| p.is_file())
        })?;
    std::fs::read(path).ok().map(Bytes::from)
}

const CASES: [&str; 6] = [
    "es-success",
    "es-failure",
    "headers",
    "cancel",
    "jq-success",
    "jq-failure",
];

#[test]
fn the_js_client_works_across_two_origins_with_the_readme_cors() {
    const TEST: &str = "browser_cors::the_js_client_works_across_two_origins_with_the_readme_cors";
    if !test_support::browser::available_or_skip(TEST) {
        return;
    }
    let Some(jquery) = jquery() else {
        test_support::skip(
            TEST,
            "jQuery not found (install libjs-jquery or set JQUERY)",
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let streams = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let streams_seen = streams.clone();
    let (page, api, _endpoint) = rt.block_on(async move {
        let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Two origins: same host, two ports (an origin is scheme, host and port).
        let page = format!(
            "http://127.0.0.1:{}",
            page_listener.local_addr().unwrap().port()
        );
        let api = format!(
            "http://127.0.0.1:{}",
            api_listener.local_addr().unwrap().port()
        );
        let endpoint = AsyncEndpoint::builder()
            .secret(SECRET)
            .task(Slow)
            .task(Broken)
            .task(Forever)
            .max_wait(Duration::from_secs(2))
            .build()
            .expect("endpoint");
        let api_app = Router::new()
            .route("/slow", get(slow))
            .route("/broken", get(broken))
            .route("/forever", get(forever))
            .layer(endpoint.layer())
            // Outside the endpoint's layer, so preflights and the layer's own answers (cancels)
            // get the CORS headers too.
            .layer(cors(&page))
            // Counts the page's requests for the shared event stream (found through `Link`).
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let streams = streams_seen.clone();
                    async move {
                        if request.method() == Method::POST
                            && request.uri().path() == "/async-endpoint/stream"
                        {
                            streams.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        next.run(request).await
                    }
                },
            ));
        let html = PAGE.replace("API_ORIGIN", &api);
        let page_app = Router::new()
            .route("/", get(move || async move { Html(html) }))
            .route(async_endpoint::js::PATH, get(async_endpoint::js::serve))
            .route(
                "/jquery.js",
                get(move || async move {
                    ([("content-type", "text/javascript")], jquery.clone()).into_response()
                }),
            );
        tokio::spawn(async move { axum::serve(api_listener, api_app).await });
        tokio::spawn(async move { axum::serve(page_listener, page_app).await });
        (page, api, endpoint)
    });

    let browser = Browser::launch().expect("launch headless chromium");
    let streams_opened = || streams.load(std::sync::atomic::Ordering::SeqCst);
    browser.goto(&format!("{page}/")).expect("open page");
    browser
        .wait_for(
            "window.moduleReady === true && typeof jQuery.getAsyncRequest === 'function'",
            Duration::from_secs(30),
        )
        .expect("page, module and jQuery plugin loaded");
    browser.execute("window.runAll();", &[]).expect("run");
    let all_done = format!(
        "{}.every(k => k in window.results)",
        serde_json::to_string(&CASES).unwrap()
    );
    let waited = browser.wait_for(&all_done, Duration::from_secs(90));
    let results = browser
        .execute("return window.results;", &[])
        .expect("read results");
    let console = browser.console_logs().unwrap_or_default();
    for entry in &console {
        eprintln!("console {}: {}", entry.level, entry.message);
    }
    eprintln!(
        "api {api}, results: {}",
        serde_json::to_string_pretty(&results).unwrap()
    );
    if let Err(e) = waited {
        panic!("not every case finished: {e}\nresults: {results}");
    }
    drop(browser);
    rt.shutdown_timeout(Duration::from_secs(2));

    assert!(
        streams_opened() > 0,
        "the page never opened the shared event stream across origins (is `Link` exposed?)"
    );
    let r = &results["es-success"];
    assert_eq!(r["ok"], true, "es-success: {r}");
    assert_eq!(r["status"], 200, "es-success: {r}");
    assert_eq!(r["body"], json!({ "who": "module" }), "es-success: {r}");
    assert!(
        r["updates"].as_array().is_some_and(|u| !u.is_empty()),
        "progress across origins: {r}"
    );

    let r = &results["es-failure"];
    assert_eq!(r["ok"], false, "es-failure: {r}");
    assert_eq!(r["kind"], "failed", "es-failure: {r}");
    assert_eq!(r["status"], 422, "es-failure: {r}");
    assert_eq!(
        r["body"],
        json!({ "error": "the upstream API said no" }),
        "es-failure: {r}"
    );

    // Exposed response headers are readable by the page.
    let r = &results["headers"];
    assert_eq!(r["start"], 202, "headers: {r}");
    assert_eq!(r["retryAfter"], "1", "Retry-After exposed: {r}");
    assert_eq!(
        r["preferenceApplied"], "wait=1",
        "Preference-Applied exposed: {r}"
    );

    // A cross-origin DELETE (preflighted) cancels; the next poll sees the cancellation.
    let r = &results["cancel"];
    assert_eq!(r["deleted"], 202, "cancel: {r}");
    assert_eq!(r["after"], 422, "cancel: {r}");

    let r = &results["jq-success"];
    assert_eq!(r["callback"], "success", "jq-success: {r}");
    assert_eq!(r["arg"], json!({ "who": "jquery" }), "jq-success: {r}");
    let r = &results["jq-failure"];
    assert_eq!(r["callback"], "error", "jq-failure: {r}");
    assert_eq!(
        r["arg"],
        json!({ "error": "the upstream API said no" }),
        "jq-failure: {r}"
    );

    let blocked: Vec<_> = console
        .iter()
        .filter(|e| e.message.contains("CORS") || e.message.contains("Uncaught"))
        .collect();
    assert!(
        blocked.is_empty(),
        "CORS errors in the console: {blocked:?}"
    );
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>async-endpoint across origins</title>
<link rel="icon" href="data:,">
<script src="/jquery.js"></script>
<script>
  window.results = {};
  function record(name, value) { window.results[name] = value; }
  const API = "API_ORIGIN";
  function runJQuery() {
    $.getAsyncRequest(API + "/slow?who=jquery", 60000)
      .success(function (r) { record("jq-success", { callback: "success", arg: r }); })
      .error(function (r) { record("jq-success", { callback: "error", arg: r }); });
    $.getAsyncRequest(API + "/broken", 60000)
      .success(function (r) { record("jq-failure", { callback: "success", arg: r }); })
      .error(function (r) { record("jq-failure", { callback: "error", arg: r }); });
  }
</script>
<script type="module">
  import { asyncRequest, AsyncRequestError } from "/async_endpoint.js";

  async function outcome(promise) {
    try {
      const r = await promise;
      return { ok: true, status: r.status, body: r.body };
    } catch (e) {
      return { ok: false, kind: e.kind, status: e.status ?? null, body: e.body ?? null,
               message: e.message };
    }
  }

  async function headers() {
    const start = await fetch(API + "/slow?who=headers", { cache: "no-store" });
    const body = await start.json();
    const poll = await fetch(API + "/slow?who=headers", { cache: "no-store", headers: {
      "Async-Request-Id": body.async_request_id,
      "Async-Request-Token": body.async_request_token,
      "Prefer": "wait=1",
    } });
    return { start: start.status, retryAfter: start.headers.get("retry-after"),
             poll: poll.status, preferenceApplied: poll.headers.get("preference-applied") };
  }

  async function cancel() {
    const start = await fetch(API + "/forever", { cache: "no-store" });
    const body = await start.json();
    const creds = { "Async-Request-Id": body.async_request_id,
                    "Async-Request-Token": body.async_request_token };
    const deleted = await fetch(API + "/forever", { method: "DELETE", cache: "no-store", headers: creds });
    const after = await fetch(API + "/forever", { cache: "no-store", headers: creds });
    return { deleted: deleted.status, after: after.status, body: await after.text() };
  }

  function guard(name, promise) {
    promise.then((r) => record(name, r), (e) => record(name, { threw: String(e) }));
  }

  window.runAll = function () {
    const updates = [];
    guard("es-success", outcome(asyncRequest(API + "/slow?who=module",
      { timeout: 60000, onProgress: (u) => updates.push(u) })).then((r) => ({ ...r, updates })));
    guard("es-failure", outcome(asyncRequest(API + "/broken", { timeout: 60000 })));
    guard("headers", headers());
    guard("cancel", cancel());
    runJQuery();
  };
  window.moduleReady = true;
</script>
</head>
<body><h1>async-endpoint across two origins</h1></body>
</html>
"#;
