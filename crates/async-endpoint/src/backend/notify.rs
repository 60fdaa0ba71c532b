//! Wake-ups for waiting polls: a per-process registry of watched request ids.
//!
//! Only ids somebody waits on have an entry, so writes to unwatched requests cost one map lookup.
//! The memory backend notifies on every write; a networked backend notifies from its one shared
//! subscription (and may [`Notifier::notify_all`] after a reconnect, when messages may be lost).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::protocol::RequestId;

/// A registry of waiters keyed by request id.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use async_endpoint::{RequestId, backend::Notifier};
///
/// let notifier = Notifier::default();
/// let id = RequestId::random();
/// let mut watch = notifier.watch(id);
/// notifier.notify(id);
/// watch.changed().await; // returns at once: the change came after `watch`
/// # }
/// ```
#[derive(Clone, Default, Debug)]
pub struct Notifier {
    waiters: Arc<Mutex<HashMap<RequestId, watch::Sender<u64>>>>,
}

impl Notifier {
    fn lock(&self) -> MutexGuard<'_, HashMap<RequestId, watch::Sender<u64>>> {
        // The map stays consistent even if a holder panicked: every critical section is one call.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts watching `id`.
    pub fn watch(&self, id: RequestId) -> Watch {
        let rx = self
            .lock()
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Watch {
            id,
            rx,
            notifier: self.clone(),
        }
    }

    /// Wakes everyone watching `id`.
    pub fn notify(&self, id: RequestId) {
        if let Some(tx) = self.lock().get(&id) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wakes every waiter (after a reconnect, when notifications may have been missed).
    pub fn notify_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Whether anyone in this process watches `id` now: a networked backend's poll asks, and
    /// when so marks the record so that later writes to it are announced (see
    /// [`Backend::watch`](crate::backend::Backend::watch)).
    ///
    /// ```
    /// use async_endpoint::{RequestId, backend::Notifier};
    ///
    /// let notifier = Notifier::default();
    /// let id = RequestId::random();
    /// let watch = notifier.watch(id);
    /// assert!(notifier.is_watched(id));
    /// drop(watch);
    /// assert!(!notifier.is_watched(id));
    /// ```
    pub fn is_watched(&self, id: RequestId) -> bool {
        self.lock().contains_key(&id)
    }

    /// How many request ids are being watched.
    pub fn watched(&self) -> usize {
        self.lock().len()
    }
}

/// Interest in one request's changes; dropping it unregisters.
#[derive(Debug)]
pub struct Watch {
    id: RequestId,
    rx: watch::Receiver<u64>,
    notifier: Notifier,
}

impl Watch {
    /// Completes after the next change notified since this watch was made (or since the last
    /// `changed`).
    pub async fn changed(&mut self) {
        // The sender lives in the registry while any watch exists, so this cannot fail; if it
        // ever did, returning counts as a change and the caller re-reads.
        let _ = self.rx.changed().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.notifier.lock();
        // This watch's receiver still counts; it is the last one when the count is 1.
        if map.get(&self.id).is_some_and(|tx| tx.receiver_count() <= 1) {
            map.remove(&self.id);
        }
    }
}
