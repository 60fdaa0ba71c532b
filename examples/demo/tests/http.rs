//! The demo's HTTP behaviour without a browser: the router in process (start → 202, poll →
//! 200 or 422, the synchronous endpoints, the page and its assets), and the built binary (prints
//! its URL, serves, stops on SIGTERM, refuses web/worker roles without Redis).

mod support;

use std::time::Duration;

use async_endpoint::AsyncEndpoint;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use demo::Settings;

const LONG: Duration = Duration::from_secs(60);

async fn app(jquery: Option<Bytes>) -> (AsyncEndpoint, Router) {
    let settings = Settings::parse(|_| None, []).expect("default settings");
    let endpoint = demo::endpoint(&settings).await.expect("endpoint");
    let router = demo::router(&endpoint, &settings, 2, jquery);
    (endpoint, router)
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn get(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Starts `uri` and polls it with waiting polls until it is no longer 202.
async fn start_and_poll(app: &Router, uri: &str) -> (Reply, Vec<Value>) {
    let started = get(app, uri, &[]).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.body);
    assert_eq!(started.headers[header::CACHE_CONTROL], "no-store");
    let body = started.json();
    assert_eq!(body["status"], "queued");
    let id = body["async_request_id"].as_str().expect("id").to_owned();
    let token = body["async_request_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut progress = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let reply = get(
            app,
            uri,
            &[
                ("async-request-id", &id),
                ("async-request-token", &token),
                ("prefer", "wait=5"),
            ],
        )
        .await;
        if reply.status != StatusCode::ACCEPTED {
            return (reply, progress);
        }
        progress.push(reply.json()["progress"].clone());
        assert!(
            tokio::time::Instant::now() < deadline,
            "still 202 after {LONG:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_starts_with_202_reports_progress_and_ends_with_200() {
    let (endpoint, app) = app(None).await;
    let (done, progress) =
        start_and_poll(&app, "/api/lookup?q=tea&delay_ms=3000&fail_rate=0").await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let body = done.json();
    assert!(
        body["answer"]
            .as_str()
            .is_some_and(|a| a.ends_with("results for “tea”")),
        "{body}"
    );
    assert!(
        body["took_ms"].as_u64().is_some_and(|ms| ms >= 3000),
        "{body}"
    );
    assert_eq!(body["worker_pid"], std::process::id(), "in-process worker");
    // Progress is reported while it runs: at least one 202 carried a message and a percent < 100.
    let reported = progress
        .iter()
        .find(|p| p.is_object())
        .expect("progress was reported");
    assert!(
        reported["percent"].as_u64().is_some_and(|p| p < 100),
        "{reported}"
    );
    assert!(
        reported["message"]
            .as_str()
            .is_some_and(|m| m.contains("external API")),
        "{reported}"
    );
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_lookup_ends_with_422_and_the_message() {
    let (endpoint, app) = app(None).await;
    let (failed, _) = start_and_poll(&app, "/api/lookup?q=x&delay_ms=200&fail_rate=100").await;
    assert_eq!(
        failed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        failed.body
    );
    let error = failed.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.starts_with("The external API answered 503 Service Unavailable after"),
        "{error}"
    );
    endpoint.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_endpoints_answer_in_one_response() {
    let (endpoint, app) = app(None).await;
    for path in ["/sync/await", "/sync/blocking"] {
        let ok = get(&app, &format!("{path}?q=a&delay_ms=200"), &[]).await;
        assert_eq!(ok.status, StatusCode::OK, "{path}: {}", ok.body);
        assert!(
            ok.json()["took_ms"].as_u64().is_some_and(|ms| ms >= 200),
            "{path}"
        );
        let failed = get(&app, &format!("{path}?delay_ms=200&fail_rate=100"), &[]).await;
        assert_eq!(failed.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert!(
            failed.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("503"))
        );
    }
    let api = get(&app, "/api/external?delay_ms=100&fail_rate=100", &[]).await;
    assert_eq!(
        api.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the fake API itself fails with 503"
    );
    let beat = get(&app, "/api/heartbeat", &[]).await;
    assert_eq!(beat.status, StatusCode::OK);
    assert_eq!(beat.headers[header::CACHE_CONTROL], "no-store");
    endpoint.shutdown().await;
}

#[tokio::test]
async fn page_assets_and_jquery_when_present() {
    let (endpoint, app) = app(Some(Bytes::from_static(b"/* jquery */"))).await;
    let page = get(&app, "/", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers[header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/html"))
    );
    let csp = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(
        page.body
            .contains(r#"<script src="/vendor/jquery.min.js"></script>"#)
    );
    assert!(
        page.body
            .contains(r#"<script type="module" src="/app.js"></script>"#)
    );
    for (path, kind) in [
        ("/style.css", "text/css"),
        ("/app.js", "text/javascript"),
        (async_endpoint::js::PATH, "text/javascript"),
        ("/vendor/jquery.min.js", "text/javascript"),
    ] {
        let asset = get(&app, path, &[]).await;
        assert_eq!(asset.status, StatusCode::OK, "{path}");
        assert!(
            asset.headers[header::CONTENT_TYPE]
                .to_str()
                .is_ok_and(|t| t.starts_with(kind)),
            "{path}"
        );
    }
    assert!(
        get(&app, "/app.js", &[])
            .await
            .body
            .contains(r#"from "/async_endpoint.js""#)
    );
    let info = get(&app, "/api/info", &[]).await.json();
    assert_eq!(info["backend"], "memory");
    assert_eq!(info["role"], "web + workers");
    assert_eq!(info["runtime_threads"], 2);
    assert_eq!(info["jquery"], true);
    endpoint.shutdown().await;
}

#[tokio::test]
async fn without_jquery_the_example_is_hidden_and_nothing_404s_on_the_page() {
    let (endpoint, app) = app(None).await;
    let page = get(&app, "/", &[]).await;
    assert!(
        !page.body.contains("/vendor/jquery.min.js"),
        "no script tag without jQuery"
    );
    assert!(
        page.body
            .contains(r#"id="jquery-panel" aria-labelledby="jq-title" hidden"#)
    );
    assert_eq!(
        get(&app, "/vendor/jquery.min.js", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&app, "/api/info", &[]).await.json()["jquery"], false);
    endpoint.shutdown().await;
}

#[test]
fn the_binary_prints_its_url_serves_and_stops_on_sigterm() {
    let mut demo = support::Demo::start(&[], &[]);
    assert!(
        demo.banner.contains("listening on http://127.0.0.1:"),
        "{}",
        demo.banner
    );
    let addr = demo.addr();
    let answer = support::lookup(&addr, "q=bin&delay_ms=300", LONG);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json()["worker_pid"],
        demo.pid(),
        "the demo's own workers ran it"
    );
    let status = demo.terminate(LONG).expect("the demo exits after SIGTERM");
    assert!(status.success(), "graceful exit: {status:?}");
}

#[test]
fn web_and_worker_roles_need_redis() {
    for role in ["web", "worker"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_demo"))
            .arg(role)
            .env_remove("REDIS_URL")
            .env("PORT", "0")
            .output()
            .expect("run the demo");
        assert_eq!(output.status.code(), Some(2), "{role}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("needs REDIS_URL"), "{role}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_text() {
    let (endpoint, app) = app(None).await;
    let (done, _) = start_and_poll(&app, "/api/lookup?q=tea&delay_ms=0&fail_rate=0").await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    // The queue depth is sampled by the worker about once a second, and a job is counted as
    // finished by its worker just after its outcome is stored (which a poll may see first): wait
    // until every line is there (other tests of this binary share the process's recorder).
    let lines = [
        "# TYPE async_endpoint_requests_started_total counter",
        "async_endpoint_requests_started_total{task=\"demo_lookup\"}",
        "async_endpoint_requests_finished_total{task=\"demo_lookup\",outcome=\"done\"}",
        "# TYPE async_endpoint_queue_wait_seconds summary",
        "async_endpoint_queue_depth{task=\"demo_lookup\"}",
    ];
    let give_up = std::time::Instant::now() + LONG;
    loop {
        let metrics = get(&app, "/metrics", &[]).await;
        assert_eq!(metrics.status, StatusCode::OK);
        assert!(
            metrics.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4"),
            "{:?}",
            metrics.headers
        );
        let missing: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|line| !metrics.body.contains(line))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "no {missing:?} in:\n{}",
            metrics.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    endpoint.shutdown().await;
}
