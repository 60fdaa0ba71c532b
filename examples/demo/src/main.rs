//! The async-endpoint demo: `cargo run -p demo`, then open the URL it prints.
//!
//! A form calls a deliberately slow fake external API through async-endpoint. `PORT` sets the port
//! (default 3000).

use std::time::Duration;

use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::extract::Query;
use axum::response::{Html, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What the slow call needs: how long it takes and whether it fails.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct SlowParams {
    seconds: u64,
    fail: bool,
}

/// What the slow call returns.
#[derive(Debug, Serialize, Deserialize)]
struct SlowOutput {
    answer: String,
    took_seconds: u64,
}

/// Calls the slow fake API, reporting progress every second.
struct SlowCall;

impl AsyncTask for SlowCall {
    const NAME: &'static str = "slow_call";
    type Params = SlowParams;
    type Output = SlowOutput;

    async fn execute_task(&self, p: SlowParams, ctx: TaskContext) -> Result<SlowOutput, Failure> {
        let seconds = p.seconds.clamp(1, 30);
        for s in 0..seconds {
            ctx.progress(
                s,
                Some(seconds),
                format!("waiting for the external API ({s}/{seconds} s)"),
            )
            .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if p.fail {
            return Err(Failure::new("The external API said no."));
        }
        Ok(SlowOutput {
            answer: "42".into(),
            took_seconds: seconds,
        })
    }
}

async fn slow(request: AsyncRequest<SlowCall>, Query(params): Query<SlowParams>) -> Response {
    request
        .init(params)
        .handle(
            |out| Json(json!({ "answer": out.answer, "took_seconds": out.took_seconds })),
            |failure| Json(json!({ "error": failure.message() })),
        )
        .await
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let endpoint = AsyncEndpoint::builder()
        .secret(
            std::env::var("SECRET")
                .unwrap_or_else(|_| "demo secret: change me, at least 32 bytes long".into()),
        )
        .task(SlowCall)
        .build()?;
    let app = Router::new()
        .route("/", get(index))
        .route("/slow", get(slow))
        .layer(endpoint.layer());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!("demo listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    endpoint.shutdown().await;
    Ok(())
}
