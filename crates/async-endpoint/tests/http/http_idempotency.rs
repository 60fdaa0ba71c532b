//! Idempotency keys over real HTTP (127.0.0.1, real TCP), on the memory backend and on Redis
//! (feature `redis`, a private redis-server; skipped loudly without one, failing in CI):
//!
//! * a repeated start with the key answers the first request's byte-identical id and token, and
//!   its final answer once it is done; the job runs once;
//! * 16 concurrent starts with one key: one id, one token, one run;
//! * the draft's quoted form and a bare token are one key;
//! * the key with other params: 422 problem+json; a malformed key: 400 problem+json;
//! * another owner (the owner hook) or another task with the same key: a request of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_endpoint::backend::MemoryBackend;
use async_endpoint::{
    AsyncEndpoint, AsyncEndpointBuilder, AsyncRequest, AsyncTask, Failure, TaskContext,
};
use axum::body::Body;
use axum::extract::Query;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderValue, Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use test_support::http::Response as HttpResponse;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Params {
    text: String,
    /// Wait until the test releases the runs.
    hold: bool,
}

/// Counts its runs; held runs wait for `release`.
#[derive(Clone)]
struct Counted {
    runs: Arc<AtomicU32>,
    release: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Counted {
    fn default() -> Self {
        Counted {
            runs: Arc::default(),
            release: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Counted {
    fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }

    fn release(&self) {
        self.release.send_replace(true);
    }
}

impl AsyncTask for Counted {
    const NAME: &'static str = "counted";
    type Params = Params;
    type Output = String;

    async fn execute_task(&self, p: Params, _ctx: TaskContext) -> Result<String, Failure> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if p.hold {
            let mut released = self.release.subscribe();
            let _ = released.wait_for(|r| *r).await;
        }
        Ok(format!("done {}", p.text))
    }
}

/// A second task, to check keys are scoped to their task.
#[derive(Clone, Default)]
struct Another(Counted);

impl AsyncTask for Another {
    const NAME: &'static str = "another";
    type Params = Params;
    type Output = String;

    async fn execute_task(&self, p: Params, ctx: TaskContext) -> Result<String, Failure> {
        self.0.execute_task(p, ctx).await
    }
}

async fn counted(request: AsyncRequest<Counted>, Query(p): Query<Params>) -> Response {
    request
        .init(p)
        .handle(
            |o| Json(json!({ "output": o })),
            |f| Json(json!({ "error": f.message() })),
        )
        .await
}

async fn another(request: AsyncRequest<Another>, Query(p): Query<Params>) -> Response {
    request
        .init(p)
        .handle(
            |o| Json(json!({ "output": o })),
            |f| Json(json!({ "error": f.message() })),
        )
        .await
}

fn owner_hook(parts: &http::request::Parts) -> Option<String> {
    parts
        .headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Memory,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis,
}

struct Served {
    port: u16,
    app: Router,
    task: Counted,
    other: Another,
    _redis: Option<test_support::redis::RedisServer>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.release();
        self.other.0.release();
    }
}

fn with_backend(
    builder: AsyncEndpointBuilder,
    which: Which,
) -> Option<(
    AsyncEndpointBuilder,
    Option<test_support::redis::RedisServer>,
)> {
    match which {
        Which::Memory => Some((builder.backend(MemoryBackend::new()), None)),
        #[cfg(feature = "redis")]
        Which::Redis => {
            let server = test_support::redis::start()?;
            let backend = async_endpoint::backend::RedisBackend::builder(server.url())
                .build()
                .unwrap();
            Some((builder.backend(backend), Some(server)))
        }
        #[cfg(not(feature = "redis"))]
        Which::Redis => unreachable!("the Redis cases are compiled only with the redis feature"),
    }
}

async fn serve(which: Which) -> Option<Served> {
    let (task, other) = (Counted::default(), Another::default());
    let builder = AsyncEndpoint::builder()
        .secret(b"http-idempotency-secret-http-idempotency")
        .owner(owner_hook)
        .task(task.clone())
        .task(other.clone());
    let (builder, redis) = with_backend(builder, which)?;
    let endpoint: AsyncEndpoint = builder.build().unwrap();
    let app = Router::new()
        .route("/counted", get(counted))
        .route("/another", get(another))
        .layer(endpoint.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served_app = app.clone();
    tokio::spawn(async move {
        // The endpoint (and its workers) live as long as the server.
        let _endpoint = endpoint;
        axum::serve(listener, served_app).await
    });
    Some(Served {
        port,
        app,
        task,
        other,
        _redis: redis,
    })
}

async fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    test_support::http::get(port, path, headers).await.unwrap()
}

async fn start_keyed(port: u16, path: &str, key: &str) -> HttpResponse {
    get_with(port, path, &[("idempotency-key", key)]).await
}

fn id_token(a: &HttpResponse) -> (String, String) {
    assert_eq!(a.status, 202, "{}", a.body);
    let j = a.json();
    (
        j["async_request_id"].as_str().unwrap().to_owned(),
        j["async_request_token"].as_str().unwrap().to_owned(),
    )
}

fn assert_problem(a: &HttpResponse, status: u16, detail_has: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let j = a.json();
    assert_eq!(j["status"], status);
    let detail = j["detail"].as_str().unwrap();
    assert!(detail.contains(detail_has), "{detail}");
}

/// Polls (waiting) until the answer is final; returns it.
async fn final_answer(port: u16, path: &str, id: &str, token: &str) -> HttpResponse {
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let headers = [
            ("async-request-id", id),
            ("async-request-token", token),
            ("prefer", "wait=2"),
        ];
        let a = get_with(port, path, &headers).await;
        if a.status != 202 {
            return a;
        }
        assert!(std::time::Instant::now() < give_up, "{id} never finished");
    }
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(s) = super::serve(super::Which::Memory).await else { return };
                    super::$name(&s).await;
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(s) = super::serve(super::Which::Redis).await else { return };
                    super::$name(&s).await;
                }
            )*
        }
    };
}

on_every_backend!(
    repeated_start_is_a_poll_of_the_first,
    concurrent_starts_with_one_key_run_once,
    quoted_and_bare_keys_are_one_key,
    other_params_are_refused,
    keys_are_scoped_to_owner_and_task,
    malformed_keys_are_refused,
);

async fn repeated_start_is_a_poll_of_the_first(s: &Served) {
    let path = "/counted?text=a&hold=true";
    let first = start_keyed(s.port, path, "order-1").await;
    let (id, token) = id_token(&first);
    let again = start_keyed(s.port, path, "order-1").await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(id_token(&again), (id.clone(), token.clone()));
    assert_eq!(again.header("cache-control"), Some("no-store"));
    assert!(again.header("retry-after").is_some());

    s.task.release();
    let done = final_answer(s.port, "/counted", &id, &token).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json(), json!({ "output": "done a" }));
    // Once done, a repeat answers what a poll would: the final answer.
    let replay = start_keyed(s.port, path, "order-1").await;
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.body, done.body);
    // With Prefer: wait, as a waiting poll would.
    let waited = get_with(
        s.port,
        path,
        &[("idempotency-key", "order-1"), ("prefer", "wait=1")],
    )
    .await;
    assert_eq!(waited.status, 200, "{}", waited.body);
    assert_eq!(waited.header("preference-applied"), Some("wait=1"));
    assert_eq!(s.task.runs(), 1);
    // Without the key, the same start is a new request.
    let fresh = get_with(s.port, path, &[]).await;
    assert_ne!(id_token(&fresh).0, id);
}

async fn concurrent_starts_with_one_key_run_once(s: &Served) {
    const N: usize = 16;
    let port = s.port;
    let starts: Vec<_> = (0..N)
        .map(|_| {
            tokio::spawn(
                async move { start_keyed(port, "/counted?text=c&hold=true", "race").await },
            )
        })
        .collect();
    let mut answers = Vec::new();
    for start in starts {
        answers.push(id_token(&start.await.unwrap()));
    }
    let (id, token) = answers[0].clone();
    assert!(
        answers.iter().all(|a| *a == (id.clone(), token.clone())),
        "{answers:?}"
    );
    s.task.release();
    let done = final_answer(port, "/counted", &id, &token).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(s.task.runs(), 1);
}

async fn quoted_and_bare_keys_are_one_key(s: &Served) {
    let path = "/counted?text=q&hold=true";
    let bare = id_token(&start_keyed(s.port, path, "k-7f3a").await);
    let quoted = id_token(&start_keyed(s.port, path, "\"k-7f3a\"").await);
    let padded = id_token(&start_keyed(s.port, path, "  \"k-7f3a\" ").await);
    assert_eq!(bare, quoted);
    assert_eq!(bare, padded);
    // Escapes are undone: "a\"b" is the bare a"b.
    let escaped = id_token(&start_keyed(s.port, path, r#""a\"b""#).await);
    assert_eq!(
        escaped,
        id_token(&start_keyed(s.port, path, r#"a"b"#).await)
    );
    assert_ne!(escaped, bare);
}

async fn other_params_are_refused(s: &Served) {
    let (id, _) = id_token(&start_keyed(s.port, "/counted?text=x&hold=true", "pay-1").await);
    let other = start_keyed(s.port, "/counted?text=y&hold=true", "pay-1").await;
    assert_problem(
        &other,
        422,
        "Idempotency-Key was used with other parameters",
    );
    assert_eq!(other.header("cache-control"), Some("no-store"));
    assert!(!other.body.contains(&id), "the problem names no request");
    // The first request is untouched and still answers its key.
    let again = id_token(&start_keyed(s.port, "/counted?text=x&hold=true", "pay-1").await);
    assert_eq!(again.0, id);
}

async fn keys_are_scoped_to_owner_and_task(s: &Served) {
    let path = "/counted?text=o&hold=true";
    let alice = id_token(
        &get_with(
            s.port,
            path,
            &[("idempotency-key", "k"), ("x-user", "alice")],
        )
        .await,
    );
    let bob =
        id_token(&get_with(s.port, path, &[("idempotency-key", "k"), ("x-user", "bob")]).await);
    let nobody = id_token(&start_keyed(s.port, path, "k").await);
    let other_task = id_token(&start_keyed(s.port, "/another?text=o&hold=true", "k").await);
    let ids = [&alice.0, &bob.0, &nobody.0, &other_task.0];
    for (i, id) in ids.iter().enumerate() {
        assert!(!ids[..i].contains(id), "{id} shared across scopes");
    }
    // Each scope keeps its own request, and other params in another scope are no reuse.
    let alice_again = get_with(
        s.port,
        path,
        &[("idempotency-key", "k"), ("x-user", "alice")],
    )
    .await;
    assert_eq!(id_token(&alice_again), alice);
    let carol = get_with(
        s.port,
        "/counted?text=different&hold=true",
        &[("idempotency-key", "k"), ("x-user", "carol")],
    )
    .await;
    assert_eq!(carol.status, 202, "{}", carol.body);
}

async fn malformed_keys_are_refused(s: &Served) {
    let path = "/counted?text=m&hold=true";
    let long = "k".repeat(256);
    for bad in [
        "",
        "  ",
        "\"\"",
        "a b",
        "\"a b\"",
        "\"open",
        "\"a\\nb\"",
        long.as_str(),
    ] {
        let a = start_keyed(s.port, path, bad).await;
        assert_problem(&a, 400, "Idempotency-Key");
    }
    let longest = "k".repeat(255);
    let (longest_id, longest_token) = id_token(&start_keyed(s.port, path, &longest).await);
    let two = get_with(
        s.port,
        path,
        &[("idempotency-key", "k1"), ("idempotency-key", "k1")],
    )
    .await;
    assert_problem(&two, 400, "Idempotency-Key");
    // Bytes outside visible ASCII (the test client sends only text; go through the router).
    let raws: [&[u8]; 3] = ["clé".as_bytes(), b"a\x80b", b"a\tb"];
    for raw in raws {
        let request = Request::get(path)
            .header("idempotency-key", HeaderValue::from_bytes(raw).unwrap())
            .body(Body::empty())
            .unwrap();
        let response = tower::ServiceExt::oneshot(s.app.clone(), request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{raw:?}");
    }
    // A key on a poll is ignored, malformed or not.
    let (id, token) = id_token(&start_keyed(s.port, path, "poll-me").await);
    let poll = get_with(
        s.port,
        "/counted",
        &[
            ("async-request-id", &id),
            ("async-request-token", &token),
            ("idempotency-key", "a b"),
        ],
    )
    .await;
    assert_eq!(poll.status, 202, "{}", poll.body);
    // Nothing started for any malformed key: only the 255-byte key's request and this one ran.
    s.task.release();
    for (id, token) in [(&longest_id, &longest_token), (&id, &token)] {
        assert_eq!(
            final_answer(s.port, "/counted", id, token).await.status,
            200
        );
    }
    assert_eq!(s.task.runs(), 2);
}

/// A memory backend whose keys name requests that are gone (as when a record was removed while
/// its key lived on).
struct Forgetful(MemoryBackend);

impl async_endpoint::backend::Backend for Forgetful {
    async fn create(
        &self,
        request: async_endpoint::backend::NewRequest,
    ) -> Result<async_endpoint::backend::Created, async_endpoint::Error> {
        if request.idempotency.is_none() {
            return self.0.create(request).await;
        }
        Ok(async_endpoint::backend::Created::Existing {
            id: async_endpoint::RequestId::random(),
            created_ms: request.created_ms,
            same_params: true,
        })
    }
    async fn poll(
        &self,
        id: async_endpoint::RequestId,
        now_ms: u64,
    ) -> Result<Option<async_endpoint::backend::Snapshot>, async_endpoint::Error> {
        self.0.poll(id, now_ms).await
    }
    fn watch(&self, id: async_endpoint::RequestId) -> async_endpoint::backend::Watch {
        self.0.watch(id)
    }
    async fn fetch(
        &self,
        tasks: &[&'static str],
        max: usize,
        block: Duration,
    ) -> Result<Vec<async_endpoint::backend::Job>, async_endpoint::Error> {
        self.0.fetch(tasks, max, block).await
    }
    async fn begin(
        &self,
        job: &async_endpoint::backend::Job,
        now_ms: u64,
    ) -> Result<async_endpoint::backend::Begin, async_endpoint::Error> {
        self.0.begin(job, now_ms).await
    }
    async fn update(
        &self,
        id: async_endpoint::RequestId,
        update: async_endpoint::backend::Update,
    ) -> Result<(), async_endpoint::Error> {
        self.0.update(id, update).await
    }
    async fn finish(
        &self,
        job: &async_endpoint::backend::Job,
        outcome: async_endpoint::backend::Outcome,
        now_ms: u64,
    ) -> Result<async_endpoint::Status, async_endpoint::Error> {
        self.0.finish(job, outcome, now_ms).await
    }
    async fn release(
        &self,
        job: &async_endpoint::backend::Job,
    ) -> Result<(), async_endpoint::Error> {
        self.0.release(job).await
    }
    async fn cancel(
        &self,
        id: async_endpoint::RequestId,
        now_ms: u64,
    ) -> Result<Option<async_endpoint::backend::Snapshot>, async_endpoint::Error> {
        self.0.cancel(id, now_ms).await
    }
}

#[tokio::test]
async fn a_key_whose_request_is_gone_answers_what_a_poll_would() {
    let endpoint = AsyncEndpoint::builder()
        .secret(b"http-idempotency-secret-http-idempotency")
        .backend(Forgetful(MemoryBackend::new()))
        .task(Counted::default())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/counted", get(counted))
        .layer(endpoint.layer());
    let request = Request::get("/counted?text=g")
        .header("idempotency-key", "gone")
        .body(Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}
