//! Tokens, the 404/410 rules, hostile input and developer mistakes, over HTTP.

use crate::support;

use std::time::Duration;

use async_endpoint::backend::MemoryBackend;
use async_endpoint::{AsyncEndpoint, AsyncRequest, Error, RequestId};
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use http::{HeaderValue, Request, StatusCode};
use serde_json::json;
use support::*;

/// Every way to present a bad id or token gets the same bytes back.
#[tokio::test]
async fn one_identical_404_for_every_bad_credential() {
    let endpoint = builder(Scripted::default())
        .owner(|parts| {
            parts
                .headers
                .get("x-user")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .build()
        .unwrap();
    let app = router(&endpoint);
    let mine = send(
        &app,
        Request::get("/job?hold=true")
            .header("x-user", "alice")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let theirs = send(
        &app,
        Request::get("/job?hold=true")
            .header("x-user", "alice")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let other_task = send(
        &app,
        Request::get("/other")
            .header("x-user", "alice")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let (id, token) = (mine.id(), mine.token());
    let mut tampered = token.clone().into_bytes();
    tampered[20] = if tampered[20] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let poll_as = |user: &'static str, id: String, token: String| {
        let app = app.clone();
        async move {
            let mut req = Request::get("/job").header("x-user", user);
            if !id.is_empty() {
                req = req.header("async-request-id", id);
            }
            if !token.is_empty() {
                req = req.header("async-request-token", token);
            }
            send(&app, req.body(Body::empty()).unwrap()).await
        }
    };
    // The genuine poll works.
    assert_eq!(
        poll_as("alice", id.clone(), token.clone()).await.status,
        StatusCode::ACCEPTED
    );

    let cases = vec![
        (
            "unknown id",
            RequestId::random().to_string(),
            token.clone(),
            "alice",
        ),
        ("malformed id", "zz".repeat(16), token.clone(), "alice"),
        ("uppercase id", id.to_uppercase(), token.clone(), "alice"),
        ("missing token", id.clone(), String::new(), "alice"),
        ("missing id", String::new(), token.clone(), "alice"),
        ("forged token", id.clone(), "A".repeat(55), "alice"),
        ("tampered token", id.clone(), tampered, "alice"),
        ("short token", id.clone(), token[..54].to_owned(), "alice"),
        (
            "another request's token",
            id.clone(),
            theirs.token(),
            "alice",
        ),
        (
            "another task's token",
            other_task.id(),
            other_task.token(),
            "alice",
        ),
        ("another owner", id.clone(), token.clone(), "mallory"),
    ];
    let mut bodies = Vec::new();
    for (what, id, token, user) in cases {
        let a = poll_as(user, id, token).await;
        assert_problem(&a, StatusCode::NOT_FOUND);
        bodies.push((what, a.body));
    }
    for (what, body) in &bodies {
        assert_eq!(
            body, &bodies[0].1,
            "{what} must get the same body as {}",
            bodies[0].0
        );
    }
}

#[tokio::test]
async fn expired_token_is_410() {
    let endpoint = builder(Scripted::default())
        .deadline(Duration::from_millis(500))
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let app = router(&endpoint);
    let a = start(&app, "text=x").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let p = poll(&app, "/job", &a.id(), &a.token(), None).await;
    assert_problem(&p, StatusCode::GONE);
    // An expired *forged* token is still a 404: expiry is only revealed for genuine tokens.
    let p = poll(&app, "/job", &a.id(), &"A".repeat(55), None).await;
    assert_problem(&p, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid() {
    let backend = MemoryBackend::new();
    let old_key = b"old-key-old-key-old-key-old-key-!";
    let new_key = b"new-key-new-key-new-key-new-key-!";
    let before = AsyncEndpoint::builder()
        .secret(old_key)
        .task(Scripted::default())
        .backend(backend.clone())
        .build()
        .unwrap();
    let a = start(&router(&before), "text=rotated").await;
    let rotated = AsyncEndpoint::builder()
        .secret(new_key)
        .old_secret(old_key)
        .task(Scripted::default())
        .backend(backend.clone())
        .in_process_workers(false)
        .build()
        .unwrap();
    let p = until_final(&router(&rotated), "/job", &a.id(), &a.token()).await;
    assert_eq!(p.status, StatusCode::OK);
    let dropped = AsyncEndpoint::builder()
        .secret(new_key)
        .task(Scripted::default())
        .backend(backend)
        .in_process_workers(false)
        .build()
        .unwrap();
    let p = poll(&router(&dropped), "/job", &a.id(), &a.token(), None).await;
    assert_problem(&p, StatusCode::NOT_FOUND);
}

/// The quick start's setting: in-memory backend, no secret. Tokens work, and are signed with a key
/// of this endpoint alone: another endpoint over the same records (as another process would be)
/// cannot verify them, so no two processes (or two copies of the docs) share a key by accident.
#[tokio::test]
async fn without_a_secret_the_memory_backend_signs_with_a_random_key() {
    let backend = MemoryBackend::new();
    let endpoint = AsyncEndpoint::builder()
        .task(Scripted::default())
        .task(Other)
        .backend(backend.clone())
        .build()
        .expect("the in-memory backend needs no secret");
    let app = router(&endpoint);
    let a = start(&app, "text=keyless").await;
    let done = until_final(&app, "/job", &a.id(), &a.token()).await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(done.json()["text"], "keyless");

    let other = AsyncEndpoint::builder()
        .task(Scripted::default())
        .task(Other)
        .backend(backend)
        .in_process_workers(false)
        .build()
        .expect("the in-memory backend needs no secret");
    let p = poll(&router(&other), "/job", &a.id(), &a.token(), None).await;
    assert_problem(&p, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn hostile_input_never_gives_a_500() {
    let endpoint = builder(Scripted::default()).build().unwrap();
    let app = router(&endpoint);
    let a = start(&app, "text=ok&hold=true").await;
    let (id, token) = (a.id(), a.token());
    let big = "x".repeat(20_000);
    let uris = vec![
        format!(
            "/plain?async_request_id={id}&async_request_token={token}&async_request_id={}",
            RequestId::random()
        ),
        format!("/plain?async_request_id={id}&async_request_token={big}"),
        format!("/plain?async_request_id={big}&async_request_token={token}"),
        format!("/plain?async_request_id=%FF%FE&async_request_token={token}"),
        format!("/plain?async_request_id={id}%00&async_request_token={token}"),
        format!("/plain?async_request_id=%00&async_request_token=%00"),
        format!("/plain?async_request_id={id}&async_request_token={token}%00"),
        format!("/plain?async_request_id[]={id}&async_request_token={token}"),
        "/plain?async_request_id=&async_request_token=abc".to_owned(),
        "/plain?%%%%&&&==&async_request_token".to_owned(),
    ];
    for uri in &uris {
        let p = get_uri(&app, uri).await;
        assert_ne!(p.status, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        assert!(
            p.status.is_client_error() || p.status == StatusCode::ACCEPTED,
            "{uri}: {}",
            p.status
        );
        if p.status.is_client_error() {
            assert_problem(&p, StatusCode::NOT_FOUND);
        }
    }
    // The same value twice is fine.
    let p = get_uri(
        &app,
        &format!("/plain?async_request_id={id}&async_request_id={id}&async_request_token={token}"),
    )
    .await;
    assert_eq!(p.status, StatusCode::ACCEPTED);
    // Header and query disagreeing is malformed.
    let req = Request::get(format!(
        "/plain?async_request_id={}&async_request_token={token}",
        RequestId::random()
    ))
    .header("async-request-id", &id)
    .body(Body::empty())
    .unwrap();
    assert_problem(&send(&app, req).await, StatusCode::NOT_FOUND);

    let odd_headers: Vec<(&str, HeaderValue)> = vec![
        (
            "async-request-id",
            HeaderValue::from_bytes(b"\xff\xfe\xfd").unwrap(),
        ),
        (
            "async-request-token",
            HeaderValue::from_bytes("é".repeat(40).as_bytes()).unwrap(),
        ),
        (
            "async-request-token",
            HeaderValue::from_str(&"t".repeat(100_000)).unwrap(),
        ),
        (
            "prefer",
            HeaderValue::from_static("wait=notanumber, wait=, =,,;;"),
        ),
        ("prefer", HeaderValue::from_bytes(b"wait=\xff").unwrap()),
    ];
    for (name, value) in odd_headers {
        let req = Request::get("/plain")
            .header("async-request-id", &id)
            .header("async-request-token", &token)
            .header(name, value.clone())
            .body(Body::empty())
            .unwrap();
        let p = send(&app, req).await;
        assert_ne!(
            p.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{name}: {value:?}"
        );
        if p.status.is_client_error() {
            assert_problem(&p, StatusCode::NOT_FOUND);
        }
    }
}

#[tokio::test]
async fn missing_layer_is_a_clear_500() {
    let app: Router = Router::new().route("/plain", get(plain));
    let p = get_uri(&app, "/plain").await;
    assert_problem(&p, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !String::from_utf8_lossy(&p.body).contains("layer"),
        "no internals to the client"
    );
}

#[tokio::test]
async fn unregistered_task_is_a_clear_500() {
    let endpoint = AsyncEndpoint::builder()
        .secret(SECRET)
        .task(Other)
        .build()
        .unwrap();
    let app = router(&endpoint);
    assert_problem(
        &get_uri(&app, "/job").await,
        StatusCode::INTERNAL_SERVER_ERROR,
    );
}

async fn huge(request: AsyncRequest<Scripted>) -> Response {
    request
        .init(Script {
            text: "y".repeat(70_000),
            ..Script::default()
        })
        .handle(Json, |f| Json(f.message().to_owned()))
        .await
}

struct Unserializable;
impl serde::Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("cannot serialize this"))
    }
}
impl<'de> serde::Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unserializable)
    }
}
struct BadParams;
impl async_endpoint::AsyncTask for BadParams {
    const NAME: &'static str = "bad_params";
    type Params = Unserializable;
    type Output = ();
    async fn execute_task(
        &self,
        _: Unserializable,
        _: async_endpoint::TaskContext,
    ) -> Result<(), async_endpoint::Failure> {
        Ok(())
    }
}
async fn bad(request: AsyncRequest<BadParams>) -> Response {
    request
        .init(Unserializable)
        .handle(Json, |f| Json(f.message().to_owned()))
        .await
}

/// Unserializable params are the developer's mistake (500); params over `max_params_bytes` carry
/// what a client sent, so they are the client's (413). Neither answer says more than its status.
#[tokio::test]
async fn params_too_large_are_413_and_unserializable_ones_a_developer_error() {
    let endpoint = builder(Scripted::default())
        .task(BadParams)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/huge", get(huge))
        .route("/bad", get(bad))
        .layer(endpoint.layer());
    for (uri, status) in [
        ("/huge", StatusCode::PAYLOAD_TOO_LARGE),
        ("/bad", StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        let p = get_uri(&app, uri).await;
        assert_problem(&p, status);
        let text = String::from_utf8_lossy(&p.body);
        assert!(
            !text.contains("cannot serialize") && !text.contains("65536"),
            "{text}"
        );
    }
    // The limit is configurable.
    let endpoint = builder(Scripted::default())
        .max_params_bytes(100_000)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/huge", get(huge))
        .layer(endpoint.layer());
    assert_eq!(get_uri(&app, "/huge").await.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn builder_names_the_bad_setting() {
    fn setting(r: Result<AsyncEndpoint, Error>) -> &'static str {
        match r {
            Err(Error::Config { setting, .. }) => setting,
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("accepted a bad setting"),
        }
    }
    let ok = || AsyncEndpoint::builder().secret(SECRET).task(Other);
    // Keys printed in the docs and the demo are refused, by name.
    for documented in [
        &b"at least 32 bytes of secret key material"[..],
        &b"the same 32+ byte secret in every process"[..],
        &b"async-endpoint demo secret: change me (32+ bytes)"[..],
        &[7u8; 32][..],
    ] {
        assert_eq!(
            setting(
                AsyncEndpoint::builder()
                    .secret(documented)
                    .task(Other)
                    .build()
            ),
            "secret"
        );
        assert_eq!(setting(ok().old_secret(documented).build()), "old_secret");
    }
    // Rotation without the current key makes no sense.
    assert_eq!(
        setting(
            AsyncEndpoint::builder()
                .old_secret(SECRET)
                .task(Other)
                .build()
        ),
        "old_secret"
    );
    assert_eq!(
        setting(
            AsyncEndpoint::builder()
                .secret([1u8; 31])
                .task(Other)
                .build()
        ),
        "secret"
    );
    assert_eq!(setting(ok().old_secret(b"short").build()), "old_secret");
    assert_eq!(
        setting(AsyncEndpoint::builder().secret(SECRET).build()),
        "task"
    );
    assert_eq!(setting(ok().task(Other).build()), "task");
    assert_eq!(setting(ok().deadline(Duration::ZERO).build()), "deadline");
    assert_eq!(setting(ok().ttl(Duration::from_secs(60)).build()), "ttl");
    assert_eq!(setting(ok().concurrency(0).build()), "concurrency");
    assert_eq!(
        setting(ok().max_params_bytes(0).build()),
        "max_params_bytes"
    );
    assert_eq!(
        setting(ok().max_wait(Duration::from_secs(3600)).build()),
        "max_wait"
    );
    let long_deadline = Scripted {
        deadline: Some(Duration::from_secs(7200)),
        ..Scripted::default()
    };
    assert_eq!(setting(ok().task(long_deadline).build()), "task");
    let err = ok()
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("ttl"), "{err}");
    assert!(ok().build().is_ok());
}

#[test]
fn build_outside_a_runtime_is_a_typed_error() {
    let r = AsyncEndpoint::builder().secret(SECRET).task(Other).build();
    assert!(matches!(r, Err(Error::NoRuntime(_))));
    // Without in-process workers no runtime is needed.
    let r = AsyncEndpoint::builder()
        .secret(SECRET)
        .task(Other)
        .in_process_workers(false)
        .build();
    assert!(r.is_ok());
}

#[tokio::test]
async fn results_are_not_readable_across_owners() {
    let endpoint = builder(Scripted::default())
        .owner(|parts| {
            parts
                .headers
                .get("x-user")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .build()
        .unwrap();
    let app = router(&endpoint);
    let a = send(
        &app,
        Request::get("/job?text=alice-secret")
            .header("x-user", "alice")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let as_user = |user: &'static str| {
        Request::get("/job")
            .header("x-user", user)
            .header("async-request-id", a.id())
            .header("async-request-token", a.token())
            .header("prefer", "wait=2")
            .body(Body::empty())
            .unwrap()
    };
    let mut mine = send(&app, as_user("alice")).await;
    while mine.status == StatusCode::ACCEPTED {
        mine = send(&app, as_user("alice")).await;
    }
    assert_eq!(mine.json(), json!({"text": "alice-secret", "attempt": 1}));
    for user in ["bob", ""] {
        let theirs = send(&app, as_user(user)).await;
        assert_problem(&theirs, StatusCode::NOT_FOUND);
        assert!(!String::from_utf8_lossy(&theirs.body).contains("alice-secret"));
    }
}
