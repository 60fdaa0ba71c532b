//! The one listener connection per process: `LISTEN {schema}_changes`, feeding waiting polls,
//! `watch`ers (`r <id>`) and blocked fetches (`q <task>`).
//!
//! Notifications sent while the listener is not listening (before its first `LISTEN`, or while
//! it reconnects) are lost, so each time it starts listening it wakes every watcher and every
//! blocked fetch: they re-read, and whatever changed meanwhile is seen.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

use super::prebegun::Prebegun;
use crate::backend::Notifier;
use crate::protocol::RequestId;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(super) struct Listener {
    pub(super) config: tokio_postgres::Config,
    pub(super) channel: String,
    pub(super) notifier: Notifier,
    pub(super) queued: Arc<Notify>,
    /// Told of every announced change, so a job begun by its fetch is read again before it runs.
    pub(super) prebegun: Arc<Prebegun>,
}

/// Listens until `closed` changes (the backend is dropped), reconnecting with backoff.
pub(super) async fn run(listener: Listener, mut closed: tokio::sync::watch::Receiver<()>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let session = tokio::select! {
            _ = closed.changed() => return,
            listened = listen(&listener) => listened,
        };
        match session {
            // It listened, then the connection ended: reconnect at once.
            Ok(()) => backoff = BACKOFF_MIN,
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "PostgreSQL listener could not listen");
                tokio::select! {
                    _ = closed.changed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Connects, listens and dispatches until the connection ends. `Err` when it never listened.
async fn listen(listener: &Listener) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = listener.config.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection must be polled for the LISTEN to complete and for notifications to arrive.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "PostgreSQL listener connection lost");
                    return;
                }
                None => return,
            }
        }
    });
    let listened = tokio::time::timeout(
        Duration::from_secs(30),
        client.batch_execute(&format!("LISTEN {}", listener.channel)),
    )
    .await;
    match listened {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            driver.abort();
            return Err(error);
        }
        Err(_) => {
            driver.abort();
            // Not listening: try again like any other failure (the next connect reports why).
            return Ok(());
        }
    }
    tracing::debug!(channel = listener.channel, "PostgreSQL listener listening");
    // Whatever was sent before this point was not heard: everyone re-reads.
    listener.prebegun.touch_all();
    listener.notifier.notify_all();
    listener.queued.notify_waiters();
    while let Some(payload) = rx.recv().await {
        match payload.split_once(' ') {
            Some(("r", id)) => {
                if let Ok(id) = id.parse::<RequestId>() {
                    listener.prebegun.touch(id);
                    listener.notifier.notify(id);
                }
            }
            Some(("q", _task)) => listener.queued.notify_waiters(),
            _ => {}
        }
    }
    drop(client);
    Ok(())
}
