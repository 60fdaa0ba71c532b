//! The README's quick start: `cargo run -p async-endpoint --example quick_start`, then
//! `curl -i localhost:3000/my_endpoint` and poll with the id and token it returns.

use std::time::Duration;

use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::{Json, Router, routing::get};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize)]
struct MyParams {
    param_1: String,
    param_2: String,
}

#[derive(Serialize, Deserialize)]
struct MyOutput {
    some_data: String,
    another_data: String,
}

struct MyAsyncRequest;

impl AsyncTask for MyAsyncRequest {
    const NAME: &'static str = "my_async_request";
    type Params = MyParams;
    type Output = MyOutput;

    async fn execute_task(&self, params: MyParams, ctx: TaskContext) -> Result<MyOutput, Failure> {
        ctx.progress(1, Some(2), "calling the external API").await;
        match execute_external_request(&params.param_1, &params.param_2).await {
            Some(response) => Ok(MyOutput {
                some_data: response.some_data,
                another_data: response.another_data,
            }),
            None => Err(Failure::new("My custom error message")),
        }
    }
}

async fn my_endpoint(async_request: AsyncRequest<MyAsyncRequest>) -> axum::response::Response {
    async_request
        .init(MyParams {
            param_1: "value_1".into(),
            param_2: "value_2".into(),
        })
        .handle(
            |output| {
                Json(json!({ "some_data": output.some_data, "another_data": output.another_data }))
            },
            |failure| Json(json!({ "error": failure.message() })),
        )
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Embedded default: in-memory state and in-process workers; nothing else to run.
    let endpoint = AsyncEndpoint::builder().task(MyAsyncRequest).build()?;
    let app = Router::new()
        .route("/my_endpoint", get(my_endpoint))
        .layer(endpoint.layer());
    axum::serve(tokio::net::TcpListener::bind("127.0.0.1:3000").await?, app).await?;
    Ok(())
}

/// Stands in for the slow external API: two seconds, then an answer.
struct ExternalResponse {
    some_data: String,
    another_data: String,
}

async fn execute_external_request(param_1: &str, param_2: &str) -> Option<ExternalResponse> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    Some(ExternalResponse {
        some_data: format!("{param_1} seen"),
        another_data: format!("{param_2} seen"),
    })
}
