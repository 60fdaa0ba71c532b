//! The HTTP tests' app on actix-web, served on a real TCP port (feature `actix`): the same
//! routes and handlers as [`support::router`](crate::support::router), so the same tests run
//! against both frameworks.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, web};
use async_endpoint::AsyncEndpoint;
use async_endpoint::actix::AsyncRequest;
use axum::body::Body;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use crate::support::{Answer, Other, Script, Scripted, Target};

async fn scripted(request: AsyncRequest<Scripted>, script: web::Query<Script>) -> HttpResponse {
    request
        .init(script.into_inner())
        .handle(
            |echo| HttpResponse::Ok().json(json!({ "text": echo.text, "attempt": echo.attempt })),
            |failure| HttpResponse::Ok().json(json!({ "error": failure.message() })),
        )
        .await
}

async fn scripted_custom_status(
    request: AsyncRequest<Scripted>,
    script: web::Query<Script>,
) -> HttpResponse {
    request
        .init(script.into_inner())
        .handle(
            |echo| HttpResponse::Created().json(json!({ "text": echo.text })),
            |failure| HttpResponse::BadRequest().json(json!({ "error": failure.message() })),
        )
        .await
}

async fn other(request: AsyncRequest<Other>, script: web::Query<Script>) -> HttpResponse {
    request
        .init(script.into_inner())
        .handle(
            |echo| HttpResponse::Ok().json(json!({ "text": echo.text })),
            |f| HttpResponse::Ok().json(json!({ "error": f.message() })),
        )
        .await
}

async fn plain(request: AsyncRequest<Scripted>) -> HttpResponse {
    request
        .init(Script {
            text: "plain".into(),
            ..Script::default()
        })
        .handle(
            |echo| HttpResponse::Ok().json(json!({ "text": echo.text })),
            |f| HttpResponse::Ok().json(json!({ "error": f.message() })),
        )
        .await
}

/// The routes of `support::router` on actix-web, on `127.0.0.1:<free port>`, in a thread of
/// its own (actix runs its own single-threaded runtimes); stopped when the last clone drops.
#[derive(Clone)]
pub struct ActixApp {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The stop command is sent at once; not awaiting its completion is fine in tests.
        drop(self.handle.stop(false));
    }
}

impl ActixApp {
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }
}

pub fn actix_app(endpoint: &AsyncEndpoint) -> ActixApp {
    let endpoint = endpoint.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(endpoint.middleware())
                    .route("/job", web::get().to(scripted))
                    .route("/job", web::post().to(scripted))
                    .route("/custom", web::get().to(scripted_custom_status))
                    .route("/other", web::get().to(other))
                    .route("/plain", web::get().to(plain))
            })
            .workers(2)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .expect("bind");
            let addr = server.addrs()[0];
            let server = server.run();
            tx.send((addr, server.handle())).expect("test alive");
            let _ = server.await;
        });
    });
    let (addr, handle) = rx.recv().expect("actix server started");
    ActixApp {
        inner: Arc::new(Inner {
            addr,
            handle,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }),
    }
}

impl Target for ActixApp {
    async fn send(&self, request: Request<Body>) -> Answer {
        let (mut parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://{}{path}", self.inner.addr).parse().unwrap();
        let response = self
            .inner
            .client
            .request(http::Request::from_parts(parts, Full::new(body)))
            .await
            .expect("actix app answers");
        let (head, body) = response.into_parts();
        Answer {
            status: head.status,
            headers: head.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}
