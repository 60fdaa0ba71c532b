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
