//! Trace context over Redis: a start's `traceparent` travels with its job, and the worker's span
//! of the task (in a worker on another backend handle) becomes the HTTP span's child.
//!
//! The tracer here is a small `tracing` layer that gives spans W3C ids (child spans inherit the
//! trace id), wired through the two `trace_context` hooks exactly as an app wires
//! `tracing-opentelemetry` (`Span::context()` + a propagator in `capture`, `set_parent` in
//! `link`).
//!
//! A binary of its own: its subscriber is the process's global one, so no other test's
//! subscriber (another thread's default, a global one with a level filter) can change which
//! spans are enabled here (tracing caches a callsite's interest across all dispatchers).
#![cfg(all(feature = "redis", feature = "testing"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_endpoint::{
    AsyncEndpoint, AsyncRequest, AsyncTask, Failure, RequestId, TaskContext, testing,
};
use axum::{Json, Router, response::Response, routing::get};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::{LookupSpan, Registry};

/// A span's W3C ids: trace id (32 hex), own id (16 hex), parent's id if any.
#[derive(Clone, Debug)]
struct Ids {
    trace: String,
    span: String,
    parent: Option<String>,
}

fn hex(n: usize) -> String {
    (0..n / 32 + 1)
        .map(|_| RequestId::random().to_string().replace('-', ""))
        .collect::<String>()[..n]
        .to_owned()
}

/// Gives each span ids and keeps every closed span's (name, ids).
#[derive(Clone, Default)]
struct Tracer(Arc<Mutex<Vec<(String, Ids)>>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Tracer {
    fn on_new_span(&self, _: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Ids>().cloned());
        let ids = Ids {
            trace: parent.as_ref().map_or_else(|| hex(32), |p| p.trace.clone()),
            span: hex(16),
            parent: parent.map(|p| p.span),
        };
        span.extensions_mut().insert(ids);
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let ids = span.extensions().get::<Ids>().cloned().unwrap();
        self.0.lock().unwrap().push((span.name().to_owned(), ids));
    }
}

fn with_ids<R>(span: &tracing::Span, f: impl FnOnce(&mut Ids) -> R) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let data = registry.span(id)?;
        let mut extensions = data.extensions_mut();
        Some(f(extensions.get_mut::<Ids>()?))
    })
    .flatten()
}

/// `capture`: the current span's `traceparent`.
fn capture() -> Option<String> {
    with_ids(&tracing::Span::current(), |ids| {
        format!("00-{}-{}-01", ids.trace, ids.span)
    })
}

/// `link`: the worker's span joins the start's trace as the child of its span.
fn link(span: &tracing::Span, traceparent: &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    with_ids(span, |ids| {
        ids.trace = parts[1].to_owned();
        ids.parent = Some(parts[2].to_owned());
    });
}

struct Traced;
impl AsyncTask for Traced {
    const NAME: &'static str = "traced";
    type Params = ();
    type Output = String;
    async fn execute_task(&self, (): (), _: TaskContext) -> Result<String, Failure> {
        Ok("traced".into())
    }
}

async fn handler(request: AsyncRequest<Traced>) -> Response {
    request
        .init(())
        .handle(Json, |failure| failure.message().to_owned())
        .await
}

#[tokio::test(flavor = "current_thread")]
async fn the_workers_span_is_the_http_spans_child_over_redis() {
    let Some(server) = test_support::redis::start() else {
        return;
    };
    let tracer = Tracer::default();
    // The process's subscriber (this binary's only test): the current-thread runtime polls the
    // web side and the worker (`task_threads(0)`) here.
    tracing::subscriber::set_global_default(Registry::default().with(tracer.clone()))
        .expect("the only subscriber of this test binary");
    let secret = "trace test secret: thirty-two bytes or more, not an example";
    let web = AsyncEndpoint::builder()
        .task(Traced)
        .redis(server.url())
        .secret(secret)
        .in_process_workers(false)
        .trace_context(capture, link)
        .build()
        .unwrap();
    // The worker: its own backend handle (its own connections and subscriber), as in another
    // process; it runs the job by draining its queue.
    let worker = AsyncEndpoint::builder()
        .task(Traced)
        .redis(server.url())
        .secret(secret)
        .in_process_workers(false)
        .task_threads(0)
        .trace_context(capture, link)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/traced", get(handler))
        .layer(web.layer());
    let started = {
        let http = tracing::info_span!("http_request");
        let _entered = http.enter();
        testing::call(
            &app,
            http::Request::get("/traced")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
    };
    assert_eq!(started.status, 202, "{}", started.text());
    let ran = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if worker.drain().await > 0 {
                break;
            }
        }
    })
    .await;
    assert!(ran.is_ok(), "the worker never got the job");
    // A span is recorded when it closes: when the last task holding it (the attempt, the
    // cancellation watch) has been dropped, which the runtime may do after `drain` returns.
    let closed = |name: &str| tracer.0.lock().unwrap().iter().any(|(n, _)| n == name);
    let recorded = tokio::time::timeout(Duration::from_secs(30), async {
        while !closed("async_request") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(recorded.is_ok(), "the worker's span never closed");
    let spans = tracer.0.lock().unwrap().clone();
    let find = |name: &str| {
        spans
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ids)| ids.clone())
            .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
    };
    let http = find("http_request");
    let job = find("async_request");
    assert_eq!(
        job.trace, http.trace,
        "the job's span is in the HTTP request's trace"
    );
    assert_eq!(
        job.parent.as_deref(),
        Some(http.span.as_str()),
        "and its child"
    );
    drop(server);
}
