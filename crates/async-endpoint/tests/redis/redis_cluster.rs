//! Redis Cluster (feature `redis-cluster`): the backend against a private cluster of 3 masters
//! and 3 replicas (skipped loudly without redis-server / redis-cli, failing under `CI=true`).
#![cfg(feature = "redis-cluster")]

use std::time::Duration;

use async_endpoint::backend::{Backend, NewRequest, PendingLimits, RedisBackend};
use async_endpoint::{Error, RequestId};

fn request(owner: Option<&str>, limits: PendingLimits) -> NewRequest {
    let mut request = NewRequest::new(
        RequestId::random(),
        "task",
        "{}",
        0,
        60_000,
        Duration::from_secs(60),
    );
    request.owner = owner.map(str::to_owned);
    request.limits = limits;
    request
}

fn limits(per_owner: Option<u32>, per_task: Option<u32>) -> PendingLimits {
    let mut limits = PendingLimits::default();
    limits.per_owner = per_owner;
    limits.per_task = per_task;
    limits
}

#[tokio::test]
async fn cluster_backend_reaches_every_master() {
    let Some(cluster) = test_support::redis_cluster::start() else {
        return;
    };
    let backend = RedisBackend::cluster_builder(cluster.urls())
        .build()
        .expect("valid settings");
    // PING goes to every master.
    backend.ping().await.expect("the cluster answers");
}

#[test]
fn cluster_settings_are_checked() {
    let reason = |built: Result<RedisBackend, Error>, want: &str| match built {
        Err(Error::Config { setting, reason }) => {
            assert_eq!(setting, want, "{reason}");
            reason
        }
        other => panic!("expected a config error for {want}, got {other:?}"),
    };
    reason(
        RedisBackend::builder("redis://127.0.0.1/")
            .shards(4)
            .build(),
        "shards",
    );
    for n in [0, 257] {
        reason(
            RedisBackend::cluster_builder(["redis://127.0.0.1:7000/"])
                .shards(n)
                .build(),
            "shards",
        );
    }
    let none: [&str; 0] = [];
    assert!(reason(RedisBackend::cluster_builder(none).build(), "url").contains("seed"));
    assert!(
        reason(
            RedisBackend::cluster_builder(["redis+sentinel://127.0.0.1/m"]).build(),
            "url"
        )
        .contains("Sentinel")
    );
    // rediss:// seeds need the TLS feature (tests/redis/redis_tls.rs runs a TLS cluster).
    let tls = RedisBackend::cluster_builder(["rediss://127.0.0.1:7000/"]).build();
    if cfg!(feature = "redis-tls") {
        tls.expect("rediss:// seeds with the redis-tls feature");
    } else {
        assert!(reason(tls, "url").contains("redis-tls"));
    }
    RedisBackend::cluster_builder(["redis://127.0.0.1:7000/", "redis://127.0.0.1:7001/"])
        .shards(256)
        .build()
        .expect("a seed list and a shard count in range");
}

#[test]
fn ids_name_the_shard_their_start_needs() {
    let backend = RedisBackend::cluster_builder(["redis://127.0.0.1:7000/"])
        .shards(8)
        .build()
        .unwrap();
    let shard = |request: &mut NewRequest| {
        let before = request.id;
        backend.place(request);
        assert_eq!(
            request.id.as_bytes()[1..],
            before.as_bytes()[1..],
            "only the first byte changes"
        );
        request.id.as_bytes()[0]
    };
    // The owner's limit: every start of one owner lands in one shard.
    let owner_limited = limits(Some(10), None);
    let first = shard(&mut request(Some("alice"), owner_limited));
    for _ in 0..20 {
        assert_eq!(shard(&mut request(Some("alice"), owner_limited)), first);
    }
    // A task's limit: every start of the task lands in one shard, whoever starts it.
    let task_limited = limits(None, Some(10));
    let task_shard = shard(&mut request(Some("alice"), task_limited));
    for owner in ["bob", "carol", "dave"] {
        assert_eq!(shard(&mut request(Some(owner), task_limited)), task_shard);
    }
    // Without limits or key, starts spread over all shards.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..400 {
        let s = shard(&mut request(None, PendingLimits::default()));
        assert!(s < 8);
        seen.insert(s);
    }
    assert_eq!(seen.len(), 8, "{seen:?}");
    // One server: ids are left alone.
    let single = RedisBackend::builder("redis://127.0.0.1/").build().unwrap();
    let mut r = request(Some("alice"), owner_limited);
    let id = r.id;
    single.place(&mut r);
    assert_eq!(r.id, id);
}
