//! Idempotency keys in the conformance suite: [`Backend::create`] with a key seen before returns
//! the earlier request and stores nothing; keys live the request's TTL from creation; N
//! concurrent creates with one key create exactly one request.
//!
//! The engine scopes a key to task and owner by digesting them into
//! [`IdempotencyKey::scoped`], so at this level another owner's or task's use of the "same" key
//! is a different `scoped` string; the HTTP tests (`tests/http/http_idempotency.rs`) check the
//! scoping end to end.

use std::sync::Arc;
use std::time::Duration;

use async_endpoint::backend::{Backend, Created, IdempotencyKey, NewRequest};
use async_endpoint::{RequestId, Status};

use super::{LONG, TASK, fetch_one, now, request};

/// A scoped key no other test (or earlier run on a shared server) uses.
fn fresh_scope() -> String {
    format!("{}{}", RequestId::random(), RequestId::random())
}

fn keyed(scoped: &str, params_digest: &str, ttl: Duration) -> NewRequest {
    let mut r = request(TASK, 60_000, ttl);
    r.idempotency = Some(IdempotencyKey::new(scoped, params_digest));
    r
}

/// The same key again: the first request, with its creation time; nothing new is stored or
/// enqueued, whether the params are the same or not.
pub async fn idempotency_key_returns_the_first_request<B: Backend + 'static>(b: Arc<B>) {
    let scope = fresh_scope();
    let first = keyed(&scope, "params-a", LONG * 30);
    assert_eq!(b.create(first.clone()).await.unwrap(), Created::New);

    let again = keyed(&scope, "params-a", LONG * 30);
    assert_eq!(
        b.create(again.clone()).await.unwrap(),
        Created::Existing {
            id: first.id,
            created_ms: first.created_ms,
            same_params: true,
        }
    );
    let other_params = keyed(&scope, "params-b", LONG * 30);
    assert_eq!(
        b.create(other_params.clone()).await.unwrap(),
        Created::Existing {
            id: first.id,
            created_ms: first.created_ms,
            same_params: false,
        }
    );
    // Nothing of the repeats was stored.
    assert_eq!(b.poll(again.id, now()).await.unwrap(), None);
    assert_eq!(b.poll(other_params.id, now()).await.unwrap(), None);
    assert_eq!(
        b.poll(first.id, now()).await.unwrap().unwrap().status,
        Status::Queued
    );
    // Nor enqueued: the first request's job is the only one.
    fetch_one(&*b, first.id).await;
    let more = b
        .fetch(&[TASK], 100, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(more.is_empty(), "a repeat was enqueued: {more:?}");
}

/// Another scope (the engine's digest of another owner or task with the same key), and a start
/// without a key, create requests of their own.
pub async fn idempotency_keys_are_scoped<B: Backend + 'static>(b: Arc<B>) {
    let (one, other) = (fresh_scope(), fresh_scope());
    let a = keyed(&one, "same", LONG * 30);
    let c = keyed(&other, "same", LONG * 30);
    assert_eq!(b.create(a.clone()).await.unwrap(), Created::New);
    assert_eq!(b.create(c.clone()).await.unwrap(), Created::New);
    let unkeyed = request(TASK, 60_000, LONG * 30);
    assert_eq!(b.create(unkeyed.clone()).await.unwrap(), Created::New);
    for id in [a.id, c.id, unkeyed.id] {
        assert!(b.poll(id, now()).await.unwrap().is_some(), "{id} missing");
    }
    // Each scope still answers with its own request.
    let again = |scope: &str| keyed(scope, "same", LONG * 30);
    assert!(matches!(
        b.create(again(&one)).await.unwrap(),
        Created::Existing { id, .. } if id == a.id
    ));
    assert!(matches!(
        b.create(again(&other)).await.unwrap(),
        Created::Existing { id, .. } if id == c.id
    ));
}

/// 16 creates with one key at once: exactly one is new, every other names it, and only its
/// record exists. Repeated for several keys to give the race a chance.
pub async fn concurrent_creates_with_one_key_make_one_request<B: Backend + 'static>(b: Arc<B>) {
    const N: usize = 16;
    for round in 0..5 {
        let scope = fresh_scope();
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        let racers: Vec<_> = (0..N)
            .map(|_| {
                let (b, barrier, r) = (b.clone(), barrier.clone(), keyed(&scope, "p", LONG * 30));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let created = b.create(r.clone()).await.expect("create");
                    (r, created)
                })
            })
            .collect();
        let mut results = Vec::new();
        for racer in racers {
            results.push(racer.await.unwrap());
        }
        let winners: Vec<&NewRequest> = results
            .iter()
            .filter(|(_, created)| *created == Created::New)
            .map(|(r, _)| r)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = winners[0];
        for (r, created) in &results {
            if r.id == winner.id {
                continue;
            }
            assert_eq!(
                *created,
                Created::Existing {
                    id: winner.id,
                    created_ms: winner.created_ms,
                    same_params: true,
                },
                "round {round}"
            );
            assert_eq!(b.poll(r.id, now()).await.unwrap(), None, "round {round}");
        }
        assert!(b.poll(winner.id, now()).await.unwrap().is_some());
    }
}

/// A key lives the request's TTL from its creation: within it a repeat finds the request, after
/// it the key creates a new one.
pub async fn idempotency_key_expires_with_the_ttl<B: Backend + 'static>(b: Arc<B>) {
    let ttl = Duration::from_secs(1);
    let scope = fresh_scope();
    let first = keyed(&scope, "p", ttl);
    assert_eq!(b.create(first.clone()).await.unwrap(), Created::New);
    assert!(matches!(
        b.create(keyed(&scope, "p", ttl)).await.unwrap(),
        Created::Existing { id, .. } if id == first.id
    ));
    // Wait for the condition (the key is gone), bounded; not for a fixed time.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    let renewed = loop {
        let r = keyed(&scope, "p", ttl);
        match b.create(r.clone()).await.unwrap() {
            Created::New => break r,
            Created::Existing { id, .. } => assert_eq!(id, first.id),
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the key outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Not before the TTL passed (a little slack for clocks of whole milliseconds).
    assert!(
        renewed.created_ms + 20 >= first.created_ms + ttl.as_millis() as u64,
        "key gone after {} ms",
        renewed.created_ms - first.created_ms
    );
    assert_ne!(renewed.id, first.id);
    assert!(b.poll(renewed.id, now()).await.unwrap().is_some());
}
