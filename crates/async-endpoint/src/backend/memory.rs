//! The embedded default: records in a map with TTL, jobs in an in-process queue.
//!
//! Records live in [`SHARDS`] maps chosen by request id, each behind its own lock, so a map's
//! growth (a rehash of every entry) holds only 1/[`SHARDS`] of the requests, and requests for
//! different ids rarely wait on each other. The state that spans requests (the job queue,
//! idempotency keys, pending sets) has one lock of its own. Lock order: a shard, then the shared
//! state; never two shards.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
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

/// How many record maps: a power of two, so the shard is a few bits of the (random) id. Ids are
/// random, so the maps grow together: each doubles at 7/8 × 2^k records in all, and the insert
/// that finds its map full rehashes it while holding its lock. With 256 maps the largest such step
/// on the way to 1,000,000 records moves ≈ 3,600 records (≈ 0.3 MB; with 64 maps it was ≈ 14,300,
/// and the starts around those counts were measurably slower, `bench --example growth_probe`).
const SHARDS: usize = 256;

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    shared: Mutex<Shared>,
    queued: Notify,
    notifier: Notifier,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shared: Mutex::default(),
            queued: Notify::default(),
            notifier: Notifier::default(),
        }
    }
}

/// Hashes a request id by its first 8 bytes. Ids are random and made by the server (a client
/// cannot choose which ids are stored), so this is as good as SipHash here, and cheaper.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }

    fn write_usize(&mut self, _: usize) {
        // The length prefix of the id's bytes: always 16.
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One shard's records.
#[derive(Default)]
struct Shard {
    records: HashMap<RequestId, Record, BuildHasherDefault<IdHasher>>,
    /// (expiry when enqueued here, id), oldest first; re-checked against the record on pop.
    expiries: VecDeque<(u64, RequestId)>,
}

/// The state that spans requests.
#[derive(Default)]
struct Shared {
    queue: Queue,
    /// Idempotency keys by their scoped digest; each lives the TTL of its request's creation.
    keys: HashMap<String, KeyEntry>,
    /// (expiry, scoped key), in creation order; re-checked against the entry on pop.
    key_expiries: VecDeque<(u64, String)>,
    /// Pending requests per owner and per task, for the pending limits.
    pending: HashMap<PendingKey, BTreeSet<(u64, RequestId)>>,
}

/// The FIFO job queue, in chunks of at most [`Queue::CHUNK`] entries: growing it never copies
/// more than one chunk (one `VecDeque` of a million jobs would copy 40 MB at once, holding the
/// shared lock meanwhile).
#[derive(Default)]
struct Queue {
    chunks: VecDeque<VecDeque<Queued>>,
}

impl Queue {
    const CHUNK: usize = 4096;

    fn push_back(&mut self, queued: Queued) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < Self::CHUNK => chunk.push_back(queued),
            _ => self.chunks.push_back(VecDeque::from([queued])),
        }
    }

    fn push_front(&mut self, queued: Queued) {
        match self.chunks.front_mut() {
            Some(chunk) if chunk.len() < Self::CHUNK => chunk.push_front(queued),
            _ => self.chunks.push_front(VecDeque::from([queued])),
        }
    }

    /// How many jobs of `task` wait.
    fn count(&self, task: &'static str) -> usize {
        self.chunks
            .iter()
            .flatten()
            .filter(|queued| queued.task == task)
            .count()
    }

    /// Removes and returns, oldest first, at most `max` jobs of `tasks`.
    fn take(&mut self, tasks: &[&'static str], max: usize) -> Vec<Queued> {
        let mut taken = Vec::new();
        let mut c = 0;
        while c < self.chunks.len() && taken.len() < max {
            let chunk = &mut self.chunks[c];
            let mut i = 0;
            while i < chunk.len() && taken.len() < max {
                if tasks.contains(&chunk[i].task) {
                    taken.extend(chunk.remove(i));
                } else {
                    i += 1;
                }
            }
            if chunk.is_empty() {
                self.chunks.remove(c);
            } else {
                c += 1;
            }
        }
        taken
    }
}

/// A job in the queue (a [`Job`] is made of it when fetched).
struct Queued {
    id: RequestId,
    task: &'static str,
    /// Deliveries so far.
    deliveries: u32,
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

/// One request. Kept small (a million live records is an hour of a busy app): the params and
/// the output share one field (params are dropped once the request is over, and only a done
/// request has an output), and what most records never have is boxed apart.
struct Record {
    task: &'static str,
    /// The params until the request is terminal, then the output (done) or nothing (failed).
    value: Box<str>,
    status: Status,
    attempt: u32,
    deadline_ms: u64,
    ttl_ms: u64,
    expires_ms: u64,
    rare: Option<Box<Rare>>,
}

/// What most records never have.
#[derive(Default)]
struct Rare {
    progress: Option<Progress>,
    failure: Option<StoredFailure>,
    /// The W3C `traceparent` of the start, if any.
    traceparent: Option<String>,
    /// The pending sets this request is in (none once terminal, or when its start carried no
    /// limit).
    pending: Vec<PendingKey>,
}

impl Record {
    fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::new(self.task, self.status, self.attempt, self.deadline_ms);
        if let Some(rare) = &self.rare {
            snapshot.progress = rare.progress.clone();
            snapshot.failure = rare.failure.clone();
        }
        if self.status == Status::Done {
            snapshot.output = Some(self.value.to_string());
        }
        snapshot
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
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
                self.value = output.into_boxed_str();
            }
            Outcome::Failed(failure) => {
                self.status = Status::Failed;
                self.value = Box::default();
                self.rare().failure = Some(failure);
            }
        }
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
        let now_ms = now_ms();
        (0..SHARDS)
            .map(|i| {
                let mut shard = lock(&self.inner.shards[i]);
                shard.sweep(now_ms, &self.inner.shared);
                shard.records.len()
            })
            .sum()
    }

    /// True when no live record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard holding record `id`, locked.
    fn shard(&self, id: &RequestId) -> MutexGuard<'_, Shard> {
        lock(&self.inner.shards[usize::from(id.as_bytes()[15]) % SHARDS])
    }

    /// The shard holding record `id`, locked, after removing its expired records.
    fn swept(&self, id: &RequestId, now_ms: u64) -> MutexGuard<'_, Shard> {
        let mut shard = self.shard(id);
        shard.sweep(now_ms, &self.inner.shared);
        shard
    }

    /// The request `id` (whose record is `record`) no longer counts as pending.
    fn unpend(&self, id: &RequestId, record: &mut Record) {
        unpend(&self.inner.shared, id, record);
    }

    /// Applies `change` to a live record; when it reports a change, refreshes the TTL and wakes
    /// the record's waiters.
    fn change(&self, id: RequestId, change: impl FnOnce(&mut Record) -> bool) {
        let now_ms = now_ms();
        let changed = {
            let mut shard = self.shard(&id);
            shard.live(&id, now_ms).is_some_and(|r| {
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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The request no longer counts as pending: removes it from its pending sets (and drops sets
/// left empty). Call it on every terminal transition (done, failed, timed out, cancelled) and
/// on expiry; a no-op (no lock taken) for a request that is in no set. The caller holds the
/// record's shard: the shared lock comes second.
fn unpend(shared: &Mutex<Shared>, id: &RequestId, record: &mut Record) {
    let Some(rare) = record.rare.as_mut().filter(|r| !r.pending.is_empty()) else {
        return;
    };
    let keys = std::mem::take(&mut rare.pending);
    let mut shared = lock(shared);
    for key in keys {
        if let Some(set) = shared.pending.get_mut(&key) {
            set.remove(&(record.deadline_ms, *id));
            if set.is_empty() {
                shared.pending.remove(&key);
            }
        }
    }
}

impl Shard {
    /// Removes records whose TTL passed. Amortized O(1): each record is popped about once per TTL.
    fn sweep(&mut self, now_ms: u64, shared: &Mutex<Shared>) {
        while let Some(&(at, id)) = self.expiries.front() {
            if at > now_ms {
                break;
            }
            self.expiries.pop_front();
            match self.records.get(&id) {
                Some(r) if r.expires_ms <= now_ms => {
                    if let Some(mut record) = self.records.remove(&id) {
                        unpend(shared, &id, &mut record);
                    }
                }
                Some(r) => self.expiries.push_back((r.expires_ms, id)),
                None => {}
            }
        }
    }

    fn live(&mut self, id: &RequestId, now_ms: u64) -> Option<&mut Record> {
        self.records.get_mut(id).filter(|r| r.expires_ms > now_ms)
    }
}

impl Shared {
    /// Removes idempotency keys whose TTL passed.
    fn sweep(&mut self, now_ms: u64) {
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
            let mut shard = self.swept(&request.id, request.created_ms);
            let mut shared = lock(&self.inner.shared);
            shared.sweep(request.created_ms);
            // The key check, the limit check and the writes below hold the shared lock (and the
            // new record's shard): one atomic step, so one request per key, and never more
            // pending than a limit.
            if let Some(key) = &request.idempotency {
                if let Some(entry) = shared.keyed(&key.scoped, request.created_ms) {
                    return Ok(Created::Existing {
                        id: entry.id,
                        created_ms: entry.created_ms,
                        same_params: entry.params_digest == key.params_digest,
                    });
                }
            }
            let pending = match shared.admit(&request) {
                Ok(keys) => keys,
                Err(limit) => return Ok(Created::OverLimit(limit)),
            };
            if let Some(key) = &request.idempotency {
                shared.keys.insert(
                    key.scoped.clone(),
                    KeyEntry {
                        id: request.id,
                        params_digest: key.params_digest.clone(),
                        created_ms: request.created_ms,
                        expires_ms,
                    },
                );
                shared
                    .key_expiries
                    .push_back((expires_ms, key.scoped.clone()));
            }
            for key in &pending {
                shared
                    .pending
                    .entry(key.clone())
                    .or_default()
                    .insert((request.deadline_ms, request.id));
            }
            shared.queue.push_back(Queued {
                id: request.id,
                task: request.task,
                deliveries: 0,
            });
            drop(shared);
            let traceparent = request.traceparent;
            let rare = (!pending.is_empty() || traceparent.is_some()).then(|| {
                Box::new(Rare {
                    pending,
                    traceparent,
                    ..Rare::default()
                })
            });
            shard.records.insert(
                request.id,
                Record {
                    task: request.task,
                    value: request.params.into_boxed_str(),
                    status: Status::Queued,
                    attempt: 0,
                    deadline_ms: request.deadline_ms,
                    ttl_ms,
                    expires_ms,
                    rare,
                },
            );
            shard.expiries.push_back((expires_ms, request.id));
        }
        self.inner.queued.notify_one();
        Ok(Created::New)
    }

    async fn poll(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        let (snapshot, changed) = {
            let mut shard = self.swept(&id, now_ms);
            match shard.live(&id, now_ms) {
                None => return Ok(None),
                Some(r) => {
                    let changed = r.expire_deadline(now_ms);
                    if changed {
                        self.unpend(&id, r);
                    }
                    (r.snapshot(), changed)
                }
            }
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
        let shared = lock(&self.inner.shared);
        Ok(Some(shared.queue.count(task) as u64))
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
                let mut shared = lock(&self.inner.shared);
                shared
                    .queue
                    .take(tasks, max)
                    .into_iter()
                    .map(|q| Job::new(q.id, q.task, String::new(), q.deliveries + 1))
                    .collect::<Vec<_>>()
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
            let mut shard = self.shard(&job.id);
            match shard.live(&job.id, now_ms) {
                None => Begin::Skip,
                Some(r) if r.status.is_terminal() => Begin::Skip,
                Some(r) if now_ms > r.deadline_ms => {
                    timed_out = r.expire_deadline(now_ms);
                    if timed_out {
                        self.unpend(&job.id, r);
                    }
                    Begin::Skip
                }
                Some(r) => {
                    r.status = Status::Running;
                    r.attempt += 1;
                    r.touch(now_ms);
                    Begin::Run {
                        params: r.value.to_string(),
                        attempt: r.attempt,
                        deadline_ms: r.deadline_ms,
                        traceparent: r.rare.as_ref().and_then(|rare| rare.traceparent.clone()),
                    }
                }
            }
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
                    r.rare().progress = Some(progress);
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
            let mut shard = self.shard(&job.id);
            let (status, changed) = match shard.live(&job.id, now_ms) {
                // Gone (expired): nothing to write; report it as failed for the logs.
                None => (Status::Failed, false),
                Some(r) if r.status.is_terminal() => (r.status, false),
                Some(r) if now_ms > r.deadline_ms => {
                    r.expire_deadline(now_ms);
                    self.unpend(&job.id, r);
                    (Status::Failed, true)
                }
                Some(r) => {
                    r.settle(outcome, now_ms);
                    self.unpend(&job.id, r);
                    (r.status, true)
                }
            };
            (status, changed)
        };
        if changed {
            self.inner.notifier.notify(job.id);
        }
        Ok(status)
    }

    async fn cancel(&self, id: RequestId, now_ms: u64) -> Result<Option<Snapshot>, Error> {
        let (snapshot, changed) = {
            let mut shard = self.swept(&id, now_ms);
            match shard.live(&id, now_ms) {
                None => return Ok(None),
                Some(r) if r.status.is_terminal() => (r.snapshot(), false),
                Some(r) => {
                    // Past its deadline it is a timeout, not a cancellation.
                    if !r.expire_deadline(now_ms) {
                        r.settle(Outcome::Failed(StoredFailure::cancelled()), now_ms);
                    }
                    // No longer pending: its slot under the pending limits is free.
                    self.unpend(&id, r);
                    (r.snapshot(), true)
                }
            }
        };
        if changed {
            self.inner.notifier.notify(id);
        }
        Ok(Some(snapshot))
    }

    async fn release(&self, job: &Job) -> Result<(), Error> {
        // The queue holds the task's static name: the record has it. A job whose record is gone
        // would only be skipped.
        let task = self.shard(&job.id).records.get(&job.id).map(|r| r.task);
        if let Some(task) = task {
            lock(&self.inner.shared).queue.push_front(Queued {
                id: job.id,
                task,
                deliveries: job.deliveries.saturating_sub(1),
            });
            self.inner.queued.notify_one();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(i: u32, task: &'static str) -> Queued {
        Queued {
            id: RequestId::random(),
            task,
            deliveries: i,
        }
    }

    #[test]
    fn the_chunked_queue_is_fifo_across_chunks_and_filters_by_task() {
        let mut q = Queue::default();
        let n = Queue::CHUNK as u32 * 2 + 10;
        for i in 0..n {
            q.push_back(queued(i, if i % 3 == 0 { "a" } else { "b" }));
        }
        q.push_front(queued(u32::MAX, "a"));
        let a: Vec<u32> = q
            .take(&["a"], usize::MAX)
            .iter()
            .map(|q| q.deliveries)
            .collect();
        let mut expected = vec![u32::MAX];
        expected.extend((0..n).filter(|i| i % 3 == 0));
        assert_eq!(a, expected);
        let b: Vec<u32> = q.take(&["b"], 5).iter().map(|q| q.deliveries).collect();
        assert_eq!(b, [1, 2, 4, 5, 7]);
        let rest = q.take(&["a", "b"], usize::MAX);
        assert_eq!(rest.len() as u32, n - n.div_ceil(3) - 5);
        assert!(rest.windows(2).all(|w| w[0].deliveries < w[1].deliveries));
        assert!(q.chunks.is_empty());
    }
}
