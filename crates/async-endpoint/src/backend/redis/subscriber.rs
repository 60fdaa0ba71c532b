//! The one shared pub/sub subscriber of a process: it turns messages on `{prefix}:n` (a request
//! id each) into [`Notifier::notify`] calls, so waiting polls wake without polling Redis.
//!
//! It reconnects forever with backoff (100 ms doubling to 5 s). Messages published while it was
//! disconnected are lost, so after every re-subscription it wakes every waiter
//! ([`Notifier::notify_all`]); each re-reads its request once. (The first subscription needs no
//! such wake-up: until it is active, reads and writes of this process wait for it, bounded.) A PING every
//! [`PING_EVERY`] detects a connection that died silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;

use crate::backend::Notifier;
use crate::protocol::RequestId;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the subscriber checks its connection is alive.
const PING_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Subscriber {
    /// Asked for the server on every (re)connection, so with Sentinel it follows the primary.
    pub(super) connector: super::connector::Connector,
    pub(super) channel: String,
    pub(super) notifier: Notifier,
    pub(super) closed: tokio::sync::watch::Receiver<()>,
    pub(super) connection_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) subscribed: Arc<tokio::sync::watch::Sender<bool>>,
    pub(super) missed: Arc<AtomicBool>,
}

pub(super) async fn run(mut s: Subscriber) {
    let mut backoff = BACKOFF_MIN;
    let mut was_connected = true;
    loop {
        let connect = async {
            let pubsub = async { s.connector.client().await?.get_async_pubsub().await };
            let mut pubsub = tokio::time::timeout(s.connection_timeout, pubsub)
                .await
                .map_err(|e| {
                    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, e))
                })??;
            tokio::time::timeout(s.response_timeout, pubsub.subscribe(&s.channel))
                .await
                .map_err(|e| {
                    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, e))
                })??;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let connected = tokio::select! {
            _ = s.closed.changed() => return,
            connected = connect => connected,
        };
        let pubsub = match connected {
            Ok(pubsub) => pubsub,
            Err(error) => {
                if was_connected {
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "wake-up subscriber cannot reach Redis; retrying with backoff (waiting polls fall back to their bound)"
                    );
                    was_connected = false;
                }
                tokio::select! {
                    _ = s.closed.changed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if !was_connected {
            tracing::info!("wake-up subscriber reconnected");
        }
        backoff = BACKOFF_MIN;
        if *s.subscribed.borrow() || s.missed.swap(false, Ordering::AcqRel) {
            // Anything published while we were not subscribed is lost: every waiter re-reads.
            s.notifier.notify_all();
        }
        // The first time, operations waited for this (see `await_subscriber`): nothing was lost.
        s.subscribed.send_replace(true);
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = s.closed.changed() => return,
                message = messages.next() => match message {
                    Some(message) => {
                        let id = std::str::from_utf8(message.get_payload_bytes())
                            .ok()
                            .and_then(|text| text.parse::<RequestId>().ok());
                        if let Some(id) = id {
                            s.notifier.notify(id);
                        }
                    }
                    None => break,
                },
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(s.response_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        tracing::warn!("wake-up subscriber lost its connection; reconnecting");
        was_connected = false;
    }
}

/// The shared subscriber of a process on a Redis Cluster: one RESP3 cluster connection (a
/// socket per master) subscribed with `SSUBSCRIBE` to every shard's channels: changes of its
/// requests (`{prefix}:n:{T}`, a request id each) and new jobs while workers sleep
/// (`{prefix}:j:{T}:jobs`, which ring the doorbell).
#[cfg(feature = "redis-cluster")]
pub(super) struct ClusterSubscriber {
    pub(super) clients: super::connector::ClusterClients,
    /// Channels of request changes, one per shard.
    pub(super) changes: Vec<String>,
    /// Channels of new jobs, one per shard.
    pub(super) jobs: Vec<String>,
    pub(super) notifier: Notifier,
    pub(super) doorbell: Arc<tokio::sync::Notify>,
    pub(super) closed: tokio::sync::watch::Receiver<()>,
    pub(super) connection_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) subscribed: Arc<tokio::sync::watch::Sender<bool>>,
    pub(super) missed: Arc<AtomicBool>,
}

/// How often the cluster subscriber checks that every subscription still stands (after a
/// failover, the new master of a shard must be subscribed to).
#[cfg(feature = "redis-cluster")]
const CLUSTER_CHECK_EVERY: Duration = Duration::from_secs(1);

#[cfg(feature = "redis-cluster")]
pub(super) async fn run_cluster(mut s: ClusterSubscriber) {
    use redis::PushKind;
    let (pushes, mut received) = tokio::sync::mpsc::unbounded_channel();
    let client = match s
        .clients
        .subscriber(pushes, s.connection_timeout, s.response_timeout)
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "wake-up subscriber cannot be made; waiting polls fall back to their bound"
            );
            s.missed.store(true, Ordering::Release);
            return;
        }
    };
    let channels: Vec<String> = s.changes.iter().chain(&s.jobs).cloned().collect();
    let mut conn: Option<redis::cluster_async::ClusterConnection> = None;
    // Whether every channel is known to be subscribed; false at first and after any sign of
    // trouble (a dropped connection, a channel unsubscribed by a slot move, a failed check).
    let mut whole = false;
    let mut backoff = BACKOFF_MIN;
    let mut check = tokio::time::interval(CLUSTER_CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !whole {
            let attempt = async {
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => client
                        .get_async_connection()
                        .await
                        .map_err(|error| (None, error))?,
                };
                // One channel per command: a cluster refuses channels of several slots in one.
                let subscribed = async {
                    for channel in &channels {
                        c.ssubscribe(channel).await?;
                    }
                    Ok::<_, redis::RedisError>(())
                }
                .await;
                match subscribed {
                    Ok(()) => Ok(c),
                    Err(error) => Err((Some(c), error)),
                }
            };
            let bound = s.connection_timeout * 2 + s.response_timeout * 4;
            let outcome = tokio::select! {
                _ = s.closed.changed() => return,
                outcome = tokio::time::timeout(bound, attempt) => outcome,
            };
            match outcome {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    whole = true;
                    backoff = BACKOFF_MIN;
                    if *s.subscribed.borrow() || s.missed.swap(false, Ordering::AcqRel) {
                        // Anything published while a subscription was gone is lost.
                        s.notifier.notify_all();
                        s.doorbell.notify_waiters();
                        tracing::info!("wake-up subscriber subscribed again");
                    }
                    s.subscribed.send_replace(true);
                }
                Ok(Err((c, error))) => {
                    conn = c;
                    tracing::warn!(
                        error = &error as &dyn std::error::Error,
                        "wake-up subscriber cannot subscribe every shard; retrying with backoff"
                    );
                }
                Err(_) => {
                    conn = None;
                    tracing::warn!("wake-up subscriber timed out subscribing; retrying");
                }
            }
            if !whole {
                tokio::select! {
                    _ = s.closed.changed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        tokio::select! {
            _ = s.closed.changed() => return,
            push = received.recv() => match push {
                None => return,
                Some(push) => match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        let channel = push.data.first().and_then(|c| match c {
                            redis::Value::BulkString(bytes) => Some(bytes.as_slice()),
                            _ => None,
                        });
                        if channel.is_some_and(|c| c.ends_with(b":jobs")) {
                            s.doorbell.notify_waiters();
                        } else if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                            let id = std::str::from_utf8(payload)
                                .ok()
                                .and_then(|text| text.parse::<RequestId>().ok());
                            if let Some(id) = id {
                                s.notifier.notify(id);
                            }
                        }
                    }
                    // A dropped node connection or a slot that moved: subscribe again.
                    PushKind::Disconnection | PushKind::SUnsubscribe => whole = false,
                    _ => {}
                },
            },
            _ = check.tick() => {
                // A command on every master: fails (and makes redis-rs refresh its slot map)
                // when one is gone, so a failover is noticed even with no message flowing.
                if let Some(c) = conn.as_mut() {
                    let ping = tokio::time::timeout(
                        s.response_timeout,
                        redis::cmd("PING").query_async::<redis::Value>(c),
                    )
                    .await;
                    if !matches!(ping, Ok(Ok(_))) {
                        whole = false;
                    }
                }
            }
        }
    }
}
