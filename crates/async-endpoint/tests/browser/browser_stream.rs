//! One connection per page, in headless Chromium: ten pending requests (half through the ES
//! module, half through `$.getAsyncEndpoint`) share one event stream, and a plain `$.getJSON` to
//! the same server is answered at once while they are pending (with waiting polls for each of
//! them it would queue behind the browser's six connections until a poll is answered, 25 s here:
//! the jobs hold until the test releases them); the same without the stream (at most two waiting
//! polls per origin, the rest short-poll); the connection cut mid-way (through a TCP proxy whose
//! connections the test cuts) and every result still delivered; a progress bar fed by the stream.
//!
//! Needs what `browser_js` needs (chromium, chromium-driver, jQuery 3); skipped loudly otherwise.

use std::net::SocketAddr;
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

const SECRET: &[u8] = b"browser stream test secret, 32 bytes or more";
const LONG: Duration = Duration::from_secs(90);

/// A job that reports progress `s/steps` for each step and holds at each until the test's gate
/// reaches `gate + s`.
#[derive(Serialize, Deserialize)]
struct Plan {
    gate: u64,
    steps: u64,
    n: u64,
}

struct Held {
    gate: watch::Receiver<u64>,
}

impl AsyncTask for Held {
    const NAME: &'static str = "held";
    type Params = Plan;
    type Output = u64;

    async fn execute_task(&self, plan: Plan, ctx: TaskContext) -> Result<u64, Failure> {
        let mut gate = self.gate.clone();
        for step in 0..plan.steps {
            ctx.progress(step, Some(plan.steps), format!("step {step}"))
                .await;
            let _ = gate.wait_for(|open| *open >= plan.gate + step).await;
        }
        Ok(plan.n)
    }
}

async fn held(request: AsyncRequest<Held>, Query(plan): Query<Plan>) -> Response {
    request
        .init(plan)
        .handle(
            |n| Json(json!({ "n": n })),
            |f| Json(json!({ "error": f.message() })),
        )
        .await
}

/// Requests the server saw: (uri, answered status).
type Log = Arc<Mutex<Vec<(String, Option<u16>)>>>;

async fn record(State(log): State<Log>, request: Request, next: Next) -> Response {
    let index = {
        let mut log = log.lock().unwrap();
        log.push((request.uri().path().to_owned(), None));
        log.len() - 1
    };
    let response = next.run(request).await;
    log.lock().unwrap()[index].1 = Some(response.status().as_u16());
    response
}

/// A TCP proxy whose connections can all be cut at once (new ones are still accepted).
struct Proxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let list = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { addr, connections }
    }

    /// Drops every open connection (both sides).
    fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

#[test]
fn one_stream_per_page_in_headless_chromium() {
    const TEST: &str = "browser_stream::one_stream_per_page_in_headless_chromium";
    if !test_support::browser::available_or_skip(TEST) {
        return;
    }
    let jquery = ["jquery.min.js", "jquery.js"]
        .iter()
        .map(|f| std::path::PathBuf::from("/usr/share/javascript/jquery").join(f))
        .chain(std::env::var_os("JQUERY").map(Into::into))
        .find(|p| p.is_file());
    let Some(jquery) = jquery else {
        test_support::skip(
            TEST,
            "jQuery 3 not found (Debian's libjs-jquery, or JQUERY)",
        );
        return;
    };
    let jquery = Bytes::from(std::fs::read(jquery).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (gate, gate_rx) = watch::channel(0u64);
    let log = Log::default();
    let app_log = log.clone();
    let (proxy, _endpoint) = rt.block_on(async move {
        let endpoint = AsyncEndpoint::builder()
            .secret(SECRET)
            .task(Held { gate: gate_rx })
            // Every step shows (the default drops an update within 250 ms of the previous one).
            .progress_interval(Duration::ZERO)
            .build()
            .unwrap();
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
            .route("/plain", get(|| async { Json(json!({ "plain": true })) }))
            .route("/held", get(held))
            .layer(endpoint.layer())
            .layer(axum::middleware::from_fn_with_state(app_log, record));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (Proxy::start(addr).await, endpoint)
    });

    let browser = Browser::launch().expect("launch headless chromium");
    browser
        .goto(&format!("http://{}/", proxy.addr))
        .expect("open page");
    browser
        .wait_for(
            "window.ready === true && typeof jQuery.getAsyncEndpoint === 'function'",
            Duration::from_secs(30),
        )
        .expect("page, module and jQuery plugin loaded");
    let streams = |log: &Log| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path == "/async-endpoint/stream")
            .count()
    };

    // (1) Ten pending requests over the stream, and a plain request answered at once.
    for (phase, gate_at, stream) in [("streamed", 1, true), ("polled", 2, false)] {
        browser
            .execute(
                &format!("window.startMany('{phase}', 10, {gate_at}, 1, {stream});"),
                &[],
            )
            .unwrap();
        browser
            .wait_for(
                &format!("window.phases['{phase}'].running.filter(Boolean).length === 10"),
                LONG,
            )
            .unwrap_or_else(|e| panic!("{phase}: not all running: {e}"));
        browser.execute("window.plain();", &[]).unwrap();
        let plain_ms = browser
            .wait_for("window.plainMs", LONG)
            .unwrap_or_else(|e| panic!("{phase}: the plain request never came back: {e}"));
        eprintln!("{phase}: plain $.getJSON answered after {plain_ms} ms with 10 pending");
        assert!(
            plain_ms.as_f64().unwrap() < 200.0,
            "{phase}: a plain request waited {plain_ms} ms: pending requests hold too many connections"
        );
        browser.execute("window.plainMs = undefined;", &[]).unwrap();
        gate.send_replace(gate_at);
        let results = browser
            .wait_for(
                &format!("window.phases['{phase}'].results.filter(r => r !== undefined).length === 10 && window.phases['{phase}']"),
                LONG,
            )
            .unwrap_or_else(|e| panic!("{phase}: not every result delivered: {e}"));
        let got: Vec<Value> = (0..10).map(|n| json!({ "n": n })).collect();
        assert_eq!(results["results"], Value::Array(got), "{phase}");
        assert_eq!(results["errors"], json!([]), "{phase}");
    }
    assert!(streams(&log) >= 1, "the streamed phase used the stream");

    // (2) The connection cut mid-way: every result still delivered, over a re-opened stream.
    browser
        .execute("window.startMany('cut', 5, 3, 1, true);", &[])
        .unwrap();
    browser
        .wait_for(
            "window.phases['cut'].running.filter(Boolean).length === 5",
            LONG,
        )
        .expect("cut: all running");
    let before = streams(&log);
    proxy.cut();
    // The page notices and opens the stream again; results arrive after the release.
    let deadline = std::time::Instant::now() + LONG;
    while streams(&log) <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream was never re-opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gate.send_replace(3);
    let results = browser
        .wait_for(
            "window.phases['cut'].results.filter(r => r !== undefined).length === 5 && window.phases['cut']",
            LONG,
        )
        .expect("cut: every result delivered");
    assert_eq!(results["errors"], json!([]));

    // (3) A progress bar fed by the stream: each step shows before the job is let go further.
    browser.execute("window.progressBar();", &[]).unwrap();
    for step in 0..3u64 {
        browser
            .wait_for(
                &format!("document.getElementById('bar').value === {step} && document.getElementById('bar').max === 3"),
                LONG,
            )
            .unwrap_or_else(|e| panic!("progress bar never showed step {step}: {e}"));
        gate.send_replace(4 + step);
    }
    let done = browser
        .wait_for("window.barDone", LONG)
        .expect("progress bar request done");
    assert_eq!(done, json!({ "n": 99 }));

    let unhandled = browser.execute("return window.unhandled;", &[]).unwrap();
    assert_eq!(unhandled, json!([]));
    drop(browser);
    rt.shutdown_timeout(Duration::from_secs(2));
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>async-endpoint: one stream per page</title>
<link rel="icon" href="data:,">
<script src="/jquery.js"></script>
<script>
  window.unhandled = [];
  window.addEventListener("unhandledrejection", (e) => window.unhandled.push(String(e.reason)));
  window.phases = {};
  window.plain = function () {
    const t0 = performance.now();
    $.getJSON("/plain").done(() => { window.plainMs = performance.now() - t0; });
  };
</script>
<script type="module">
  import { asyncRequest } from "/async_endpoint.js";
  // n requests, even ones through the ES module, odd ones through $.getAsyncEndpoint.
  window.startMany = function (phase, n, gate, steps, stream) {
    const st = (window.phases[phase] = { running: [], results: [], errors: [] });
    for (let i = 0; i < n; i++) {
      const url = `/held?gate=${gate}&steps=${steps}&n=${i}`;
      const onProgress = (u) => { if (u.status === "running") st.running[i] = true; };
      const options = { timeout: 120000, stream, onProgress };
      if (i % 2 === 0) {
        asyncRequest(url, options).then((r) => (st.results[i] = r.body), (e) => st.errors.push(String(e)));
      } else {
        $.getAsyncEndpoint(url, 120000, options)
          .success((body) => (st.results[i] = body))
          .error((e) => st.errors.push(JSON.stringify(e)));
      }
    }
  };
  window.progressBar = function () {
    const bar = document.getElementById("bar");
    asyncRequest("/held?gate=4&steps=3&n=99", {
      timeout: 120000,
      onProgress: ({ progress }) => {
        if (progress) { bar.max = progress.total; bar.value = progress.at; }
      },
    }).then((r) => (window.barDone = r.body));
  };
  window.ready = true;
</script>
</head>
<body>
<h1>One stream per page</h1>
<progress id="bar" value="0" max="1"></progress>
</body>
</html>
"#;
