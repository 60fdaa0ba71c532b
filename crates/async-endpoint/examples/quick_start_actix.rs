//! The README's quick start on actix-web: `cargo run -p async-endpoint --features actix --example
//! quick_start_actix`, then `curl -i localhost:3000/my_endpoint` and poll with the id and token
//! it returns. The same task; only the handler and the server differ.

use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use async_endpoint::actix::AsyncRequest;
use async_endpoint::{AsyncEndpoint, AsyncTask, Failure, TaskContext};
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

async fn my_endpoint(async_request: AsyncRequest<MyAsyncRequest>) -> HttpResponse {
    async_request
        .init(MyParams {
            param_1: "value_1".into(),
            param_2: "value_2".into(),
        })
        .handle(
            |output| {
                HttpResponse::Ok().json(
                    json!({ "some_data": output.some_data, "another_data": output.another_data }),
                )
            },
            |failure| HttpResponse::Ok().json(json!({ "error": failure.message() })),
        )
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Embedded default: in-memory state and in-process workers (on this Tokio runtime).
    let endpoint = AsyncEndpoint::builder().task(MyAsyncRequest).build()?;
    HttpServer::new(move || {
        App::new()
            .wrap(endpoint.middleware())
            .route("/my_endpoint", web::get().to(my_endpoint))
    })
    .bind(("127.0.0.1", 3000))?
    .run()
    .await?;
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
