//! The event stream: one connection that follows many requests at once.
//!
//! A client sends the id and token of every request it waits for (in a request body, never in a
//! URL) and gets server-sent events: for each request its current state first, then every change
//! of status or progress, then `finished` (the rendered result still comes from one poll of the
//! request's endpoint, since `done` and `failed` are the app's). Credentials that are malformed,
//! forged, foreign, expired or name a request that is gone all get the same `not_found` event, so
//! the stream tells nobody more than a poll would.
//!
//! Each request is followed through the backend's [`watch`](crate::backend::Backend::watch) and
//! [`poll`](crate::backend::Backend::poll), like a waiting poll, so a request started on one web
//! process is followed from any other (Redis pub/sub). Everything is bounded: requests per stream,
//! the stream's lifetime (it ends and the client reconnects, getting every state first again), and
//! heartbeats (SSE comments) keep proxies from closing an idle stream.
//!
//! Framework-neutral: [`Engine::open_stream`] parses the request body and answers either a
//! problem or an [`EventStream`], whose [`EventStream::next`] yields the bytes to write.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{DEADLINE_SLACK, Engine};
use crate::backend::{Backend, SharedBackend};
use crate::clock::now_ms;
use crate::protocol::token::Claims;
use crate::protocol::{Problem, Progress, RequestId, Status};

/// The path the layer serves the stream at unless the app sets another.
pub(crate) const DEFAULT_STREAM_PATH: &str = "/async-endpoint/stream";
/// The `rel` of the `Link` header on every 202 that names the stream.
pub(crate) const STREAM_REL: &str = "async-endpoint-stream";
/// Largest stream request body: room for the most requests a stream takes, with slack.
pub(crate) const fn max_body_bytes(max_requests: usize) -> usize {
    // An entry is about 120 bytes of JSON; credentials that are longer are refused anyway.
    1024 + max_requests * 256
}

/// A stream request's body: `{"requests": [{"async_request_id": …, "async_request_token": …}]}`.
#[derive(Debug, Deserialize)]
struct StreamRequest {
    requests: Vec<Entry>,
}

/// One watched request, as the client names it.
#[derive(Debug, Deserialize)]
struct Entry {
    async_request_id: String,
    async_request_token: String,
}

/// One event's data.
#[derive(Debug, Serialize)]
struct EventData<'a> {
    async_request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<&'a Progress>,
}

/// Writes one server-sent event (JSON data has no newlines, so one `data:` line).
fn event(name: &str, data: &EventData<'_>) -> String {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    format!("event: {name}\ndata: {json}\n\n")
}

/// A heartbeat: an SSE comment, ignored by clients, that keeps proxies from closing the stream.
const HEARTBEAT: &str = ": heartbeat\n\n";

/// An open event stream; dropping it stops following every request.
pub(crate) struct EventStream {
    events: mpsc::Receiver<String>,
    // Followers of the requests; aborted when the stream is dropped.
    _followers: JoinSet<()>,
    heartbeat: tokio::time::Interval,
    end: Instant,
    preface: Option<String>,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}

impl EventStream {
    /// The next chunk to write; `None` once every request finished or the lifetime passed.
    pub(crate) async fn next(&mut self) -> Option<String> {
        if let Some(preface) = self.preface.take() {
            return Some(preface);
        }
        if self.done {
            return None;
        }
        tokio::select! {
            biased;
            event = self.events.recv() => match event {
                Some(event) => Some(event),
                // Every follower is done: every request finished (or was not found).
                None => {
                    self.done = true;
                    None
                }
            },
            () = tokio::time::sleep_until(self.end) => {
                // Proxies cap a response's life; end cleanly and let the client reconnect.
                self.done = true;
                Some("event: reconnect\ndata: {}\n\n".to_owned())
            }
            _ = self.heartbeat.tick() => Some(HEARTBEAT.to_owned()),
        }
    }
}

impl Engine {
    /// Opens an event stream for the requests a stream request's `body` names, for `owner`: a
    /// problem for a body that is not one (400) or names too many requests (413).
    pub(crate) fn open_stream(
        &self,
        body: &[u8],
        owner: Option<&str>,
    ) -> Result<EventStream, Problem> {
        let config = &self.config;
        let Ok(request) = serde_json::from_slice::<StreamRequest>(body) else {
            return Err(Problem::BadStreamRequest);
        };
        if request.requests.len() > config.stream_max_requests {
            return Err(Problem::TooLarge);
        }
        let (tx, events) = mpsc::channel(64);
        let mut followers = JoinSet::new();
        let mut seen = HashSet::new();
        for entry in request.requests {
            if !seen.insert(entry.async_request_id.clone()) {
                continue;
            }
            let task = self.verified(&entry, owner);
            let tx = tx.clone();
            let backend = self.backend.clone();
            let retry = config.retry_after.max(Duration::from_secs(1));
            followers.spawn(async move {
                match task {
                    Some((id, task)) => follow(backend, id, task, entry, tx, retry).await,
                    None => not_found(&entry, &tx).await,
                }
            });
        }
        let start = Instant::now();
        let mut heartbeat =
            tokio::time::interval_at(start + config.stream_heartbeat, config.stream_heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A client that loses the stream reconnects after about this long.
        let preface = format!("retry: {}\n\n", config.retry_after.as_millis().max(250));
        Ok(EventStream {
            events,
            _followers: followers,
            heartbeat,
            end: start + config.stream_lifetime,
            preface: Some(preface),
            done: false,
        })
    }

    /// The id and task an entry's token is genuine and unexpired for; `None` for anything else
    /// (all the same to the client). No backend read for credentials that are not genuine.
    fn verified(&self, entry: &Entry, owner: Option<&str>) -> Option<(RequestId, &'static str)> {
        let id = entry.async_request_id.parse::<RequestId>().ok()?;
        let now = now_ms() / 1000;
        self.task_names
            .iter()
            .copied()
            .find(|task| {
                let claims = Claims {
                    id: &id,
                    task,
                    owner,
                };
                self.keys
                    .verify(&entry.async_request_token, &claims, now)
                    .is_ok()
            })
            .map(|task| (id, task))
    }
}

/// Tells the client a request is not one it can follow.
async fn not_found(entry: &Entry, tx: &mpsc::Sender<String>) {
    let data = EventData {
        async_request_id: &entry.async_request_id,
        status: None,
        progress: None,
    };
    let _ = tx.send(event("not_found", &data)).await;
}

/// Follows one request: its state now, every change, then `finished`.
async fn follow(
    backend: SharedBackend,
    id: RequestId,
    task: &'static str,
    entry: Entry,
    tx: mpsc::Sender<String>,
    retry: Duration,
) {
    // Registered before the first read, so a change between the read and the wait is not missed.
    let mut watch = backend.watch(id);
    let mut last: Option<(Status, Option<Progress>)> = None;
    loop {
        let snapshot = match backend.poll(id, now_ms()).await {
            Ok(Some(snapshot)) if snapshot.task == task => snapshot,
            Ok(_) => return not_found(&entry, &tx).await,
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "event stream: backend unavailable"
                );
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = watch.changed() => {}
                }
                continue;
            }
        };
        let data = EventData {
            async_request_id: &entry.async_request_id,
            status: Some(snapshot.status),
            progress: snapshot.progress.as_ref(),
        };
        if snapshot.status.is_terminal() {
            let _ = tx.send(event("finished", &data)).await;
            return;
        }
        let now = (snapshot.status, snapshot.progress.clone());
        if last.as_ref() != Some(&now) {
            if tx.send(event("state", &data)).await.is_err() {
                return; // the stream is gone
            }
            last = Some(now);
        }
        // Wake on a change, or when the deadline passes (the next read applies it).
        let until_deadline = Duration::from_millis(snapshot.deadline_ms.saturating_sub(now_ms()));
        let bound = (until_deadline + DEADLINE_SLACK).max(retry);
        let _ = tokio::time::timeout(bound, watch.changed()).await;
    }
}
