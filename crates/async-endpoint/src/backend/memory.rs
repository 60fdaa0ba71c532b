//! The embedded default: records in a map with TTL, jobs in an in-process queue.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use super::{
    Backend, Begin, Created, Job, Limit, NewRequest, Notifier, Outcome, Snapshot, StoredFailure,
    Update, Watch,
};
use crate::clock::now_ms;
use crate::error::Error;
use crate::protocol::{Progress, RequestId, Status};

/// In-memory backend: one process, records with TTL, jobs in a FIFO queue.
///
/// This is what [`AsyncEndpoint::builder`](crate::AsyncEndpoint::builder) uses when no backend is
/// chosen. Everything is lost when the process exits, so it suits single-process apps, development
/// and tests. Expired records are removed as time passes (amortized on every call), so memory
/// holds only live requests.
///
/// ```
/// use async_endpoint::{AsyncEndpoint, backend::MemoryBackend};
/// # use async_endpoint::{AsyncTask, Failure, TaskContext};
/// # struct Echo;
/// # impl AsyncTask for Echo {
/// #     const NAME: &'static str = "echo";
/// #     type Params = String;
/// #     type Output = String;
/// #     async fn execute_task(&self, p: String, _: TaskContext) -> Result<String, Failure> { Ok(p) }
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), async_endpoint::Error> {
/// let endpoint = AsyncEndpoint::builder()
///     .backend(MemoryBackend::new())
///     .task(Echo)
///     .build()?;
/// # Ok(()) }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
#[derive(Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    queued: Notify,
    notifier: Notifier,
}

#[derive(Default)]
struct State {
    records: HashMap<RequestId, Record>,
    /// (expiry when enqueued here, id), oldest first; re-checked against the record on pop.
    expiries: VecDeque<(u64, RequestId)>,
    queue: VecDeque<Job>,
    /// Idempotency keys by their scoped digest; each lives the TTL of its request's creation.
    keys: HashMap<String, KeyEntry>,
    /// (expiry, scoped key), in creation order; re-checked against the entry on pop.
    key_expiries: VecDeque<(u64, String)>,
    /// Pending requests per owner and per task, for the pending limits.
    pending: HashMap<PendingKey, BTreeSet<(u64, RequestId)>>,
}

/// The request an idempotency key created.
struct KeyEntry {
    id: RequestId,
    params_digest: String,
    created_ms: u64,
    expires_ms: u64,
}

/// A set of pending requests a limit counts: one owner's, or one task's. Each set holds
/// `(deadline, id)`, ordered by deadline, so requests past their deadline are pruned from its
/// front when it is counted (they stop counting even if nobody polls or runs them). A set is
/// written only by starts that carry its limit, and removed once empty, so memory follows the
/// live pending requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PendingKey {
    Owner(String),
    Task(&'static str),
}

struct Record {
    task: &'static str,
    params: String,
    status: Status,
    attempt: u32,
    progress: Option<Progress>,
    output: Option<String>,
    failure: Option<StoredFailure>,
    deadline_ms: u64,
    ttl_ms: u64,
    expires_ms: u64,
    /// The W3C `traceparent` of the start, if any.
    traceparent: Option<String>,
    /// The pending sets this request is in (none once terminal, or when its start carried no
    /// limit).
    pending: Vec<PendingKey>,
}

impl Record {
    fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::new(self.task, self.status, self.attempt, self.deadline_ms);
        snapshot.progress = self.progress.clone();
        snapshot.output = self.output.clone();
        snapshot.failure = self.failure.clone();
        snapshot
    }

    fn touch(&mut self, now_ms: u64) {
        self.expires_ms = now_ms.saturating_add(self.ttl_ms);
    }

    /// Turns an unfinished request past its deadline into a timeout; true if it did.
    fn expire_deadline(&mut self, now_ms: u64) -> bool {
        if !self.status.is_terminal() && now_ms > self.deadline_ms {
            self.settle(Outcome::Failed(StoredFailure::timeout()), now_ms);
            true
        } else {
            false
        }
    }

    /// Makes an unfinished record terminal with `outcome`: the one place a record becomes
    /// `done` or `failed` (finish, deadline, cancel). Params are only needed to run the task;
    /// they are dropped once it is over.
    fn settle(&mut self, outcome: Outcome, now_ms: u64) {
        match outcome {
            Outcome::Done(output) => {
                self.status = Status::Done;
                self.output = Some(output);
            }
            Outcome::Failed(failure) => {
                self.status = Status::Failed;
                self.failure = Some(failure);
            }
        }
        self.params = String::new();
        self.touch(now_ms);
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live (unexpired) records, after removing expired ones.
    pub fn len(&self) -> usize {
        let mut st = self.lock();
        st.sweep(now_ms());
        st.records.len()
    }

    /// True when no live record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `change` to a live record; when it reports a change, refreshes the TTL and wakes
    /// the record's waiters.
    fn change(&self, id: RequestId, change: impl FnOnce(&mut Record) -> bool) {
        let now_ms = now_ms();
        let changed = {
            let mut st = self.lock();
            st.live(&id, now_ms).is_some_and(|r| {
                let changed = change(r);
                if changed {
                    r.touch(now_ms);
                }
                changed
            })
        };
        if changed {
            self.inner.notifier.notify(id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Removes records whose TTL passed. Amortized O(1): each record is popped about once per TTL.
    fn sweep(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.expiries.front() {
            if at > now_ms {
                break;
            }
            self.expiries.pop_front();
            match self.records.get(&id) {
                Some(r) if r.expires_ms <= now_ms => {
                    self.unpend(&id);
                    self.records.remove(&id);
                }
                Some(r) => self.expiries.push_back((r.expires_ms, id)),
                None => {}
            }
        }
        while let Some((at, _)) = self.key_expiries.front() {
            if *at > now_ms {
                break;
            }
            if let Some((_, key)) = self.key_expiries.pop_front() {
                if self.keys.get(&key).is_some_and(|e| e.expires_ms <= now_ms) {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// The live request the idempotency key `scoped` created, if any.
    fn keyed(&self, scoped: &str, now_ms: u64) -> Option<&KeyEntry> {
        self.keys.get(scoped).filter(|e| e.expires_ms > now_ms)
    }

    fn live(&mut self, id: &RequestId, now_ms: u64) -> Option<&mut Record> {
        self.records.get_mut(id).filter(|r| r.expires_ms > now_ms)
    }

    /// The request no longer counts as pending: removes it from its pending sets (and drops
    /// sets left empty). Call it on every terminal transition (done, failed, timed out,
    /// cancelled); a no-op for a request that is in no set.
    fn unpend(&mut self, id: &RequestId) {
        let Some(record) = self.records.get_mut(id) else {
            return;
        };
        let deadline_ms = record.deadline_ms;
        for key in std::mem::take(&mut record.pending) {
            if let Some(set) = self.pending.get_mut(&key) {
                set.remove(&(deadline_ms, *id));
                if set.is_empty() {
                    self.pending.remove(&key);
                }
            }
        }
    }

    /// How many requests in `key`'s set are still pending at `now_ms`, after pruning those past
    /// their deadline. O(log n) per pruned entry.
    fn pending_count(&mut self, key: &PendingKey, now_ms: u64) -> usize {
        let Some(set) = self.pending.get_mut(key) else {
            return 0;
        };
        while set
            .first()
            .is_some_and(|&(deadline_ms, _)| deadline_ms < now_ms)
        {
            set.pop_first();
        }
        let count = set.len();
        if count == 0 {
            self.pending.remove(key);
        }
        count
    }

    /// The sets a start of `request` joins, or the limit it would exceed (checked owner first).
    fn admit(&mut self, request: &NewRequest) -> Result<Vec<PendingKey>, Limit> {
        let limits = request.limits;
        let mut keys = Vec::new();
        let checks = [
            (
                limits.per_owner,
                request.owner.clone().map(PendingKey::Owner),
                Limit::Owner,
            ),
            (
                limits.per_task,
                Some(PendingKey::Task(request.task)),
                Limit::Task,
            ),
        ];
        for (limit, key, which) in checks {
            let (Some(limit), Some(key)) = (limit, key) else {
                continue;
            };
            if self.pending_count(&key, request.created_ms) >= limit as usize {
                return Err(which);
            }
            keys.push(key);
        }
        Ok(keys)
    }
}

impl Backend for MemoryBackend {
    async fn create(&self, request: NewRequest) -> Result<Created, Error> {
        let ttl_ms = request.ttl.as_millis() as u64;
        let expires_ms = request.created_ms.saturating_add(ttl_ms);
        {
            let mut st = self.lock();
            st.sweep(request.created_ms);
            // The key check, the limit check and the writes below hold one lock: one atomic
            // step, so one request per key, and never more pending than a limit.
            if let Some(key) = &request.idempotency {
                if let Some(entry) = st.keyed(&key.scoped, request.created_ms) {
                    return Ok(Created::Existing {
                        id: entry.id,
                        created_ms: entry.created_ms,
                        same_params: entry.params_digest == key.params_digest,
                    });
                }
            }
            let pending = match st.admit(&request) {
                Ok(keys) => keys,
                Err(limit) => return Ok(Created::OverLimit(limit)),
            };
            if let Some(key) = &request.idempotency {
                st.keys.insert(
                    key.scoped.clone(),
                    KeyEntry {
                        id: request.id,
                        params_digest: key.params_digest.clone(),
                        created_ms: request.created_ms,
                        expires_ms,
                    },
                );
                st.key_expiries.push_back((expires_ms, key.scoped.clone()));
            }
            for key in &pending {
                st.pending
                    .entry(key.clone())
                    .or_default()
                    .insert((request.deadline_ms, request.id));
            }
            st.records.insert(
                request.id,
                Record {
                    task: request.task,
                    params: request.params,
                    status: Status::Queued,
                    attempt: 0,
                    progress: None,
                    output: None,
                    failure: None,
                    deadline_ms: request.deadline_ms,
                    ttl_ms,
                    expires_ms,
                    pending,
                    traceparent: request.traceparent,
                },
            );
            st.expiries.push_back((expires_ms, request.id));
            st.queue
                .push_back(Job::new(request.id, request.task, String::new(), 0));
        }
        self.inner.queued.notify_one();
        Ok(Created::New)
    }

    async fn poll(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        let (snapshot, changed) = {
            let mut st = self.lock();
            st.sweep(now_ms);
            let (snapshot, changed) = match st.live(&id, now_ms) {
                None => return Ok(None),
                Some(r) => {
                    let changed = r.expire_deadline(now_ms);
                    (r.snapshot(), changed)
                }
            };
            if changed {
                st.unpend(&id);
            }
            (snapshot, changed)
        };
        if changed {
            tracing::warn!(request_id = %id, "deadline passed: request failed with a timeout");
            self.inner.notifier.notify(id);
        }
        Ok(Some(snapshot))
    }

    fn watch(&self, id: RequestId) -> Watch {
        self.inner.notifier.watch(id)
    }

    async fn queue_depth(&self, task: &'static str) -> Result<Option<u64>, Error> {
        let st = self.lock();
        Ok(Some(
            st.queue.iter().filter(|job| job.task == task).count() as u64
        ))
    }

    async fn fetch(
        &self,
        tasks: &[&'static str],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, Error> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let notified = self.inner.queued.notified();
            tokio::pin!(notified);
            // Register before looking, so a push between the look and the wait is not missed.
            notified.as_mut().enable();
            let jobs = {
                let mut st = self.lock();
                let mut jobs = Vec::new();
                let mut i = 0;
                while i < st.queue.len() && jobs.len() < max {
                    if tasks.contains(&st.queue[i].task.as_str()) {
                        if let Some(mut job) = st.queue.remove(i) {
                            job.deliveries += 1;
                            jobs.push(job);
                        }
                    } else {
                        i += 1;
                    }
                }
                jobs
            };
            if !jobs.is_empty() {
                return Ok(jobs);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn begin(&self, job: &Job, now_ms: u64) -> Result<Begin, Error> {
        let mut timed_out = false;
        let begin = {
            let mut st = self.lock();
            let begin = match st.live(&job.id, now_ms) {
                None => Begin::Skip,
                Some(r) if r.status.is_terminal() => Begin::Skip,
                Some(r) if now_ms > r.deadline_ms => {
                    timed_out = r.expire_deadline(now_ms);
                    Begin::Skip
                }
                Some(r) => {
                    r.status = Status::Running;
                    r.attempt += 1;
                    r.touch(now_ms);
                    Begin::Run {
                        params: r.params.clone(),
                        attempt: r.attempt,
                        deadline_ms: r.deadline_ms,
                        traceparent: r.traceparent.clone(),
                    }
                }
            };
            if timed_out {
                st.unpend(&job.id);
            }
            begin
        };
        if timed_out || matches!(begin, Begin::Run { .. }) {
            self.inner.notifier.notify(job.id);
        }
        Ok(begin)
    }

    async fn update(&self, id: RequestId, update: Update) -> Result<(), Error> {
        self.change(id, |r| match update {
            Update::Progress(progress) => {
                matches!(r.status, Status::Running | Status::Retrying) && {
                    r.progress = Some(progress);
                    true
                }
            }
            Update::Retrying => {
                r.status == Status::Running && {
                    r.status = Status::Retrying;
                    true
                }
            }
        });
        Ok(())
    }

    async fn finish(&self, job: &Job, outcome: Outcome, now_ms: u64) -> Result<Status, Error> {
        let (status, changed) = {
            let mut st = self.lock();
            let (status, changed) = match st.live(&job.id, now_ms) {
                // Gone (expired): nothing to write; report it as failed for the logs.
                None => (Status::Failed, false),
                Some(r) if r.status.is_terminal() => (r.status, false),
                Some(r) if now_ms > r.deadline_ms => {
                    r.expire_deadline(now_ms);
                    (Status::Failed, true)
                }
                Some(r) => {
                    r.settle(outcome, now_ms);
                    (r.status, true)
                }
            };
            if changed {
                st.unpend(&job.id);
            }
            (status, changed)
        };
        if changed {
            self.inner.notifier.notify(job.id);
        }
        Ok(status)
    }

    async fn cancel(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        let (snapshot, changed) = {
            let mut st = self.lock();
            st.sweep(now_ms);
            let (snapshot, changed) = match st.live(&id, now_ms) {
                None => return Ok(None),
                Some(r) if r.status.is_terminal() => (r.snapshot(), false),
                Some(r) => {
                    // Past its deadline it is a timeout, not a cancellation.
                    if !r.expire_deadline(now_ms) {
                        r.settle(Outcome::Failed(StoredFailure::cancelled()), now_ms);
                    }
                    (r.snapshot(), true)
                }
            };
            if changed {
                // No longer pending: its slot under the pending limits is free.
                st.unpend(&id);
            }
            (snapshot, changed)
        };
        if changed {
            self.inner.notifier.notify(id);
        }
        Ok(Some(snapshot))
    }

    async fn release(&self, job: &Job) -> Result<(), Error> {
        let mut job = job.clone();
        job.deliveries = job.deliveries.saturating_sub(1);
        self.lock().queue.push_front(job);
        self.inner.queued.notify_one();
        Ok(())
    }
}
