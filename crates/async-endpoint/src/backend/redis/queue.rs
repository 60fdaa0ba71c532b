//! The queue side: one stream per task with the consumer group `workers`.
//!
//! * Jobs are read with `XREADGROUP … BLOCK` on a connection of their own, so a job enqueued by
//!   any process starts within milliseconds.
//! * Entries leave the stream (`XACK` + `XDEL`) when their record reaches a terminal state, so a
//!   stream holds only live jobs; `XADD … MINID ~` also trims entries older than the TTL (their
//!   deadlines have passed, so nothing that could still run is ever trimmed).
//! * Liveness: each worker process keeps a heartbeat key `{prefix}:w:<consumer>` (`SET … PX`
//!   `takeover_after × 2/5`, every `takeover_after / 5`, and before its first read). Every
//!   `takeover_after / 20` a fetching worker runs `takeover.lua` per stream: consumers with
//!   pending entries and no heartbeat key are marked suspect, and their entries are taken over
//!   (`XCLAIM`, bounded by `claim_batch`) once they are still silent `takeover_after × 2/5`
//!   later, so a killed worker's jobs run again within `takeover_after`, and a live worker whose
//!   beat was only late (Redis paused or slow) beats first. Delivery counts carry over, so
//!   `max_deliveries` still stops poison jobs.
//! * Entries a live worker stops vouching for (dropped after an error, or running past their
//!   deadline) go idle: a second heartbeat (`XCLAIM … JUSTID` by this consumer, every
//!   `claim_idle / 3`) keeps the entries this process is working on fresh, and idle ones are
//!   claimed with `XAUTOCLAIM` (bounded by `claim_batch`) every `claim_idle / 4`, their delivery
//!   count read from the pending list.
//! * Groups are created with the stream by the first enqueue, or by a worker on a stream that
//!   lacks one, and looked up again after `NOGROUP`.
//! * Streams expire like records: every enqueue re-applies the request TTL, and only an enqueue
//!   creates a stream (with its group), never a worker, so no key of the library outlives its
//!   use. A worker looks for a task's missing queue every 250 ms (not on every fetch), so the
//!   first job after an idle period longer than the TTL may wait that long; every other job
//!   starts at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Weak;
use std::time::Duration;

use redis::streams::{StreamClaimOptions, StreamReadOptions, StreamReadReply};
use redis::{AsyncConnectionConfig, Cmd, RedisError, Value};
use tokio::time::Instant;

use super::scripts::Group;
use super::{GROUP, Inner, RedisBackend, code, has_code, map_err, reply};
use crate::backend::Job;
use crate::clock::now_ms;
use crate::error::Error;
use crate::protocol::RequestId;

/// Consumers with nothing pending and idle this long are deleted (at least; see `reap_idle`).
const REAP_IDLE: Duration = Duration::from_secs(3600);
/// How often one process looks for such consumers.
const REAP_EVERY: Duration = Duration::from_secs(600);
/// How often a worker with no queue to read looks for one to appear.
const QUEUE_RECHECK: Duration = Duration::from_millis(250);
/// Most ids in one heartbeat `XCLAIM`.
const HEARTBEAT_CHUNK: usize = 256;

/// Per-process queue bookkeeping.
#[derive(Default)]
pub(super) struct QueueState {
    /// Tasks whose group is known to exist.
    groups: HashSet<String>,
    /// Tasks found without a stream, and when to look again (every `QUEUE_RECHECK`, not on
    /// every fetch: a worker busy with one queue would otherwise ask about the others each time).
    absent: HashMap<String, Instant>,
    /// When the next `XAUTOCLAIM` round is due.
    next_claim: Option<Instant>,
    /// When the next `takeover.lua` round is due.
    next_takeover: Option<Instant>,
    /// When this process's heartbeat key was last written (the time the write was sent).
    beat_at: Option<Instant>,
    /// The heartbeat goes on until then (a fetch is reading), or while jobs are in flight.
    beat_until: Option<Instant>,
    /// Where each task's `XAUTOCLAIM` scan continues.
    cursors: HashMap<String, String>,
    /// When the next consumer clean-up is due.
    next_reap: Option<Instant>,
}

fn claim_interval(claim_idle: Duration) -> Duration {
    (claim_idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(10))
}

/// How often a worker process refreshes its heartbeat key.
fn beat_every(takeover: Duration) -> Duration {
    takeover / 5
}

/// How long the heartbeat key lives without a refresh (two beats).
fn beat_ttl(takeover: Duration) -> Duration {
    takeover * 2 / 5
}

/// How long a consumer found without a heartbeat stays suspect before its jobs are taken over.
fn takeover_grace(takeover: Duration) -> Duration {
    takeover * 2 / 5
}

/// How often a fetching worker looks for dead workers' jobs. Expiry, a round to see it, the
/// grace and a round to confirm: 2/5 + 1/20 + 2/5 + 1/20 = 9/10 of `takeover_after`.
fn takeover_every(takeover: Duration) -> Duration {
    takeover / 20
}

fn heartbeat_interval(claim_idle: Duration) -> Duration {
    (claim_idle / 3).max(Duration::from_millis(30))
}

/// The queue (or its group) is gone: `NOGROUP`, or `UNBLOCKED` when the stream expired under a
/// blocking read. The worker looks the queues up again on its next fetch. (`claim.lua` hands
/// `NOGROUP` back as XAUTOCLAIM sent it, so its code survives the script.)
fn is_nogroup(error: &RedisError) -> bool {
    has_code(error, &[code::NOGROUP, code::UNBLOCKED])
}

/// Records that this process works on `job` and keeps it alive until `until_ms`.
pub(super) fn vouch_until(b: &RedisBackend, job: &Job, until_ms: u64) {
    if !job.receipt.is_empty() {
        RedisBackend::lock(&b.inner.in_flight).insert(
            (b.inner.keys.queue(&job.task, &job.id), job.receipt.clone()),
            until_ms,
        );
    }
}

/// Stops keeping `job` alive (it is terminal, handed back, or dropped by the worker).
pub(super) fn forget(b: &RedisBackend, job: &Job) {
    RedisBackend::lock(&b.inner.in_flight)
        .remove(&(b.inner.keys.queue(&job.task, &job.id), job.receipt.clone()));
}

/// Time a fetched job is vouched for before `begin` extends it to its deadline.
fn fresh_until(b: &RedisBackend) -> u64 {
    now_ms().saturating_add(b.inner.settings.claim_idle.as_millis() as u64 * 2)
}

pub(super) async fn fetch(
    b: &RedisBackend,
    tasks: &[&'static str],
    max: usize,
    block: Duration,
) -> Result<Vec<Job>, Error> {
    if tasks.is_empty() || max == 0 {
        tokio::time::sleep(block).await;
        return Ok(Vec::new());
    }
    ensure_heartbeat(b);
    if b.inner.keys.shards.is_some() {
        return fetch_shards(b, tasks, max, block).await;
    }
    // Only queues that exist can be read; a task nothing was enqueued for (within the TTL) has
    // none, so look again every QUEUE_RECHECK until one appears or the block time is over.
    let until = Instant::now() + block;
    let ready = loop {
        let ready = ensure_groups(b, tasks).await?;
        if !ready.is_empty() {
            break ready;
        }
        let now = Instant::now();
        if now >= until {
            return Ok(Vec::new());
        }
        tokio::time::sleep(QUEUE_RECHECK.min(until - now)).await;
    };
    // Our heartbeat key must exist before we own any entry, or another worker could take it.
    // (Only while there is a queue to read: an idle process leaves no key behind.)
    beat_while(b, until).await?;
    let claimed = claim_if_due(b, &ready, max).await?;
    if !claimed.is_empty() {
        return Ok(claimed);
    }
    // Read in slices no longer than the takeover interval, looking for dead workers' jobs
    // between them, so an idle worker takes them over within the bound.
    let every = takeover_every(b.inner.settings.takeover_after);
    loop {
        let taken = takeover_if_due(b, &ready, max).await?;
        if !taken.is_empty() {
            return Ok(taken);
        }
        let left = until.saturating_duration_since(Instant::now());
        let jobs = read(b, &ready, max, left.min(every)).await?;
        if !jobs.is_empty() || left <= every {
            return Ok(jobs);
        }
        if RedisBackend::lock(&b.inner.queue).groups.is_empty() {
            // The queues went away (NOGROUP): look them up again on the next fetch.
            return Ok(jobs);
        }
    }
}

/// Every (task, stream) pair to look at for `tasks`: one stream per task, or one per task and
/// shard on a cluster.
fn queue_keys(b: &RedisBackend, tasks: &[&'static str]) -> Vec<(&'static str, String)> {
    tasks
        .iter()
        .flat_map(|task| {
            b.inner
                .keys
                .queues(task)
                .into_iter()
                .map(move |queue| (*task, queue))
        })
        .collect()
}

/// [`fetch`] on a cluster: reads every shard without blocking (`sweep.lua`, all shards at once
/// over the multiplexed cluster connection), and while none has a job, waits for a start to
/// announce one (the doorbell, rung by the subscriber) or for the read slice to pass.
async fn fetch_shards(
    b: &RedisBackend,
    tasks: &[&'static str],
    max: usize,
    block: Duration,
) -> Result<Vec<Job>, Error> {
    b.ensure_subscriber();
    let until = Instant::now() + block;
    beat_while(b, until).await?;
    let claimed = claim_if_due(b, tasks, max).await?;
    if !claimed.is_empty() {
        return Ok(claimed);
    }
    let every = takeover_every(b.inner.settings.takeover_after);
    let doorbell = b.inner.doorbell.clone();
    loop {
        let taken = takeover_if_due(b, tasks, max).await?;
        if !taken.is_empty() {
            return Ok(taken);
        }
        // Listen before reading: a job announced after the read wakes us.
        let rung = doorbell.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        let left = until.saturating_duration_since(Instant::now());
        let jobs = sweep(b, tasks, max, every).await?;
        if !jobs.is_empty() || left.is_zero() {
            return Ok(jobs);
        }
        tokio::select! {
            () = rung => {}
            () = tokio::time::sleep(left.min(every)) => {}
        }
        if Instant::now() >= until {
            return Ok(Vec::new());
        }
    }
}

/// One `sweep.lua` per shard, all at once: the new jobs of every task, at most `max` (extras
/// are handed back). Shards that fail are skipped unless all do.
async fn sweep(
    b: &RedisBackend,
    tasks: &[&'static str],
    max: usize,
    slice: Duration,
) -> Result<Vec<Job>, Error> {
    let keys = &b.inner.keys;
    let shards: Vec<u16> = keys.shard_list().collect();
    let count = max.div_ceil(shards.len() * tasks.len()).max(1);
    let conn = b.conn().await?;
    let mark_ms = (slice * 2).as_millis().max(1) as u64;
    let reads = shards.iter().map(|shard| {
        let mut conn = conn.clone();
        let mut call = b.inner.scripts.sweep.prepare_invoke();
        call.key(format!("{}idle", keys.base("z", *shard)));
        for task in tasks {
            call.key(keys.queue_in(task, *shard));
        }
        call.arg(GROUP)
            .arg(&b.inner.consumer)
            .arg(count)
            .arg(mark_ms);
        async move { b.bounded(call.invoke_async::<Value>(&mut conn)).await }
    });
    let results = futures_util::future::join_all(reads).await;
    let mut per_shard = Vec::new();
    let mut failure = None;
    for (shard, result) in shards.iter().zip(results) {
        match result
            .and_then(|read| reply::<Vec<(usize, String, String, u64)>>("sweep reply", read))
        {
            Ok(entries) => per_shard.push((*shard, entries)),
            Err(error) => failure = Some(error),
        }
    }
    if per_shard.is_empty() {
        if let Some(error) = failure {
            return Err(error);
        }
    }
    let mut jobs = Vec::new();
    for (shard, entries) in per_shard {
        for (index, receipt, id, prior) in entries {
            let Some(task) = index.checked_sub(1).and_then(|i| tasks.get(i)) else {
                continue;
            };
            let Ok(id) = id.parse::<RequestId>() else {
                discard(b, &keys.queue_in(task, shard), &receipt).await;
                continue;
            };
            let job = Job {
                id,
                task: (*task).to_owned(),
                receipt,
                deliveries: prior.saturating_add(1).min(u64::from(u32::MAX)) as u32,
            };
            vouch_until(b, &job, fresh_until(b));
            jobs.push(job);
        }
    }
    // Round-robin would need per-task queues; shards are read evenly, so hand back the tail.
    if jobs.len() > max {
        for job in jobs.split_off(max) {
            if let Err(error) = release(b, &job).await {
                tracing::warn!(request_id = %job.id, error = &error as &dyn std::error::Error, "could not hand back an extra job; it will be claimed after the idle bound");
            }
        }
    }
    Ok(jobs)
}

/// Keeps the heartbeat going until `until` (and while jobs are in flight), writing the key now
/// if the last write is older than one beat.
async fn beat_while(b: &RedisBackend, until: Instant) -> Result<(), Error> {
    {
        let mut state = RedisBackend::lock(&b.inner.queue);
        if state.beat_until.is_none_or(|at| at < until) {
            state.beat_until = Some(until);
        }
    }
    ensure_beat(b).await
}

/// Writes this process's heartbeat key now if the last write is older than one beat.
async fn ensure_beat(b: &RedisBackend) -> Result<(), Error> {
    let every = beat_every(b.inner.settings.takeover_after);
    let fresh = RedisBackend::lock(&b.inner.queue)
        .beat_at
        .is_some_and(|at| at.elapsed() < every);
    if fresh {
        return Ok(());
    }
    beat(b).await
}

/// Writes this process's heartbeat key (and clears a suspicion another worker raised).
async fn beat(b: &RedisBackend) -> Result<(), Error> {
    let sent = Instant::now();
    let conn = b.conn().await?;
    let ttl = beat_ttl(b.inner.settings.takeover_after);
    // One key per shard on a cluster (takeover.lua reads it with the shard's stream), each
    // pipeline in one slot; the shards' pipelines go out together.
    let beats = b.inner.keys.shard_list().map(|shard| {
        let mut conn = conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(b.inner.keys.alive(&b.inner.consumer, shard))
            .arg(1)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore()
            .del(b.inner.keys.suspect(&b.inner.consumer, shard))
            .ignore();
        async move { b.bounded(pipe.query_async::<()>(&mut conn)).await }
    });
    futures_util::future::try_join_all(beats).await?;
    let mut state = RedisBackend::lock(&b.inner.queue);
    if state.beat_at.is_none_or(|at| at < sent) {
        state.beat_at = Some(sent);
    }
    Ok(())
}

/// Takes over the jobs of dead workers (no heartbeat key), when a round is due.
async fn takeover_if_due(
    b: &RedisBackend,
    tasks: &[&'static str],
    max: usize,
) -> Result<Vec<Job>, Error> {
    let settings = &b.inner.settings;
    let now = Instant::now();
    {
        let mut state = RedisBackend::lock(&b.inner.queue);
        if state.next_takeover.is_some_and(|at| at > now) {
            return Ok(Vec::new());
        }
        state.next_takeover = Some(now + takeover_every(settings.takeover_after));
    }
    ensure_beat(b).await?;
    let mut conn = b.conn().await?;
    let grace = takeover_grace(settings.takeover_after).as_millis() as u64;
    let mut jobs = Vec::new();
    for (task, queue) in queue_keys(b, tasks) {
        let left = max.saturating_sub(jobs.len()).min(settings.claim_batch);
        if left == 0 {
            break;
        }
        let mut call = b.inner.scripts.takeover.prepare_invoke();
        call.key(&queue).arg(&b.inner.consumer).arg(left).arg(grace);
        let taken = match b.bounded_raw(call.invoke_async(&mut conn)).await? {
            Ok(taken) => taken,
            Err(e) if is_nogroup(&e) => {
                forget_groups(b);
                return Ok(jobs);
            }
            Err(e) => return Err(map_err(e)),
        };
        let entries: Vec<(String, String, u64)> = reply("takeover reply", taken)?;
        for (receipt, id, deliveries) in entries {
            let Ok(id) = id.parse::<RequestId>() else {
                discard(b, &queue, &receipt).await;
                continue;
            };
            let job = Job {
                id,
                task: task.to_owned(),
                receipt,
                deliveries: deliveries.min(u64::from(u32::MAX)) as u32,
            };
            tracing::warn!(request_id = %job.id, task, deliveries = job.deliveries, "took over a job whose worker stopped (no heartbeat)");
            vouch_until(b, &job, fresh_until(b));
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// Entries of `task`'s stream not delivered to a worker: `XLEN` less the group's pending
/// (delivered, unacknowledged) count, in one round trip; 0 when the stream does not exist.
pub(super) async fn depth(b: &RedisBackend, task: &'static str) -> Result<u64, Error> {
    // One stream per shard on a cluster: their depths add up.
    let mut depth = 0;
    for key in b.inner.keys.queues(task) {
        depth += depth_of(b, &key).await?;
    }
    Ok(depth)
}

/// [`depth`] of one stream.
async fn depth_of(b: &RedisBackend, key: &str) -> Result<u64, Error> {
    let mut conn = b.conn().await?;
    // Two commands, not a pipeline: a pipeline reports XPENDING's NOGROUP (no stream or no
    // group yet) wrapped, without its code. Sampled about once a second per worker process.
    let len: u64 = b
        .bounded_raw(redis::cmd("XLEN").arg(key).query_async(&mut conn))
        .await?
        .map_err(map_err)?;
    if len == 0 {
        return Ok(0);
    }
    let pending = b
        .bounded_raw(
            redis::cmd("XPENDING")
                .arg(key)
                .arg(GROUP)
                .query_async::<Value>(&mut conn),
        )
        .await?;
    match pending {
        // The summary form: [count, smallest id, greatest id, [[consumer, count], …]].
        Ok(Value::Array(items)) => {
            let pending = items
                .first()
                .and_then(|count| redis::from_redis_value::<u64>(count.clone()).ok())
                .unwrap_or(0);
            Ok(len.saturating_sub(pending))
        }
        Ok(_) => Ok(len),
        // No group yet: nothing was handed to a worker.
        Err(error) if is_nogroup(&error) => Ok(len),
        Err(error) => Err(map_err(error)),
    }
}

/// The tasks whose queue exists with its consumer group (creating the group on a stream that
/// lacks it). Tasks without a stream are left out and looked up again on the next fetch.
async fn ensure_groups(
    b: &RedisBackend,
    tasks: &[&'static str],
) -> Result<Vec<&'static str>, Error> {
    let missing: Vec<&'static str> = {
        let state = RedisBackend::lock(&b.inner.queue);
        let now = Instant::now();
        tasks
            .iter()
            .copied()
            .filter(|t| !state.groups.contains(*t))
            .filter(|t| state.absent.get(*t).is_none_or(|at| *at <= now))
            .collect()
    };
    if !missing.is_empty() {
        let mut conn = b.conn().await?;
        for task in missing {
            let mut call = b.inner.scripts.group.prepare_invoke();
            call.key(b.inner.keys.queue_in(task, 0)).arg(GROUP);
            match reply(
                "group reply",
                b.bounded(call.invoke_async(&mut conn)).await?,
            )? {
                Group::NoStream => {
                    RedisBackend::lock(&b.inner.queue)
                        .absent
                        .insert(task.to_owned(), Instant::now() + QUEUE_RECHECK);
                    continue;
                }
                Group::Created => tracing::debug!(task, "consumer group created"),
                Group::Existed => {}
            }
            let mut state = RedisBackend::lock(&b.inner.queue);
            state.absent.remove(task);
            state.groups.insert(task.to_owned());
        }
    }
    let state = RedisBackend::lock(&b.inner.queue);
    Ok(tasks
        .iter()
        .copied()
        .filter(|t| state.groups.contains(*t))
        .collect())
}

fn forget_groups(b: &RedisBackend) {
    let mut state = RedisBackend::lock(&b.inner.queue);
    state.groups.clear();
    state.cursors.clear();
}

/// Claims jobs idle longer than `claim_idle` (their worker died), when a round is due.
async fn claim_if_due(
    b: &RedisBackend,
    tasks: &[&'static str],
    max: usize,
) -> Result<Vec<Job>, Error> {
    let settings = &b.inner.settings;
    let now = Instant::now();
    let reap = {
        let mut state = RedisBackend::lock(&b.inner.queue);
        if state.next_claim.is_some_and(|at| at > now) {
            return Ok(Vec::new());
        }
        state.next_claim = Some(now + claim_interval(settings.claim_idle));
        let reap = state.next_reap.is_none_or(|at| at <= now);
        if reap {
            state.next_reap = Some(now + REAP_EVERY);
        }
        reap
    };
    let mut conn = b.conn().await?;
    if reap {
        reap_consumers(b, &mut conn, tasks).await;
    }
    let mut jobs = Vec::new();
    for (task, queue) in queue_keys(b, tasks) {
        let left = max.saturating_sub(jobs.len()).min(settings.claim_batch);
        if left == 0 {
            break;
        }
        let start = RedisBackend::lock(&b.inner.queue)
            .cursors
            .get(&queue)
            .cloned()
            .unwrap_or_else(|| "0-0".to_owned());
        let mut call = b.inner.scripts.claim.prepare_invoke();
        call.key(&queue)
            .arg(GROUP)
            .arg(&b.inner.consumer)
            .arg(settings.claim_idle.as_millis() as u64)
            .arg(&start)
            .arg(left);
        let claimed = match b.bounded_raw(call.invoke_async(&mut conn)).await? {
            Ok(claimed) => claimed,
            Err(e) if is_nogroup(&e) => {
                forget_groups(b);
                return Ok(jobs);
            }
            Err(e) => return Err(map_err(e)),
        };
        // The next start id, then (entry id, request id, deliveries) per claimed entry.
        let (next, entries): (String, Vec<(String, String, u64)>) = reply("claim reply", claimed)?;
        RedisBackend::lock(&b.inner.queue)
            .cursors
            .insert(queue.clone(), next);
        for (receipt, id, deliveries) in entries {
            let job = Job {
                id: match id.parse::<RequestId>() {
                    Ok(id) => id,
                    Err(_) => {
                        discard(b, &queue, &receipt).await;
                        continue;
                    }
                },
                task: task.to_owned(),
                receipt,
                deliveries: deliveries.min(u64::from(u32::MAX)) as u32,
            };
            tracing::warn!(request_id = %job.id, task, deliveries = job.deliveries, "claimed a job whose worker went silent");
            vouch_until(b, &job, fresh_until(b));
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// Deletes consumers left behind by exited processes (nothing pending, long idle).
async fn reap_consumers(
    b: &RedisBackend,
    conn: &mut super::connector::Conn,
    tasks: &[&'static str],
) {
    let idle = REAP_IDLE.max(b.inner.settings.claim_idle * 10);
    for (task, queue) in queue_keys(b, tasks) {
        let mut call = b.inner.scripts.reap.prepare_invoke();
        call.key(&queue).arg(GROUP).arg(idle.as_millis() as u64);
        let deleted = b
            .bounded(call.invoke_async(conn))
            .await
            .and_then(|deleted| reply::<u64>("reap reply", deleted));
        match deleted {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(task, deleted = n, "idle consumers deleted");
            }
            Err(error) => {
                tracing::debug!(
                    task,
                    error = &error as &dyn std::error::Error,
                    "consumer clean-up skipped"
                );
            }
        }
    }
}

/// Acknowledges and deletes an entry of stream `queue` that cannot be a job of ours (malformed
/// id).
async fn discard(b: &RedisBackend, queue: &str, receipt: &str) {
    tracing::error!(
        queue,
        receipt,
        "stream entry without a valid request id: deleted"
    );
    let Ok(mut conn) = b.conn().await else { return };
    let mut pipe = redis::pipe();
    pipe.xack(queue, GROUP, &[receipt]).xdel(queue, &[receipt]);
    let _ = b.bounded(pipe.query_async::<()>(&mut conn)).await;
}

/// Reads new jobs, blocking up to `block`. The read runs in a task of its own: if the caller
/// stops waiting (a worker shutting down drops `fetch`), entries that still arrive are handed
/// straight back instead of sitting in this consumer's pending list until `claim_idle`.
async fn read(
    b: &RedisBackend,
    tasks: &[&'static str],
    max: usize,
    block: Duration,
) -> Result<Vec<Job>, Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = b.clone();
    let streams: Vec<&'static str> = tasks.to_vec();
    tokio::spawn(async move {
        let result = read_group(&reader, &streams, max, block).await;
        if let Err(Ok(per_stream)) = tx.send(result) {
            for job in per_stream.into_iter().flatten() {
                if let Err(error) = release(&reader, &job).await {
                    tracing::warn!(request_id = %job.id, error = &error as &dyn std::error::Error, "could not hand back a job read during shutdown; it will be claimed after the idle bound");
                }
            }
        }
    });
    let per_stream = match rx.await {
        Ok(result) => result?,
        // The reader task panicked or was cancelled with the runtime.
        Err(closed) => return Err(Error::Unavailable(Box::new(closed))),
    };
    // Round-robin across tasks, so a backlog in one never starves another.
    let mut queues: Vec<VecDeque<Job>> = per_stream.into_iter().map(VecDeque::from).collect();
    let mut jobs = Vec::new();
    while jobs.len() < max && queues.iter().any(|q| !q.is_empty()) {
        for q in &mut queues {
            if jobs.len() < max {
                if let Some(job) = q.pop_front() {
                    jobs.push(job);
                }
            }
        }
    }
    for job in queues.into_iter().flatten() {
        if let Err(error) = release(b, &job).await {
            tracing::warn!(request_id = %job.id, error = &error as &dyn std::error::Error, "could not hand back an extra job; it will be claimed after the idle bound");
        }
    }
    Ok(jobs)
}

/// One `XREADGROUP` over every task's stream; the jobs come back per stream.
async fn read_group(
    b: &RedisBackend,
    tasks: &[&'static str],
    max: usize,
    block: Duration,
) -> Result<Vec<Vec<Job>>, Error> {
    let settings = &b.inner.settings;
    let mut slot = b.inner.blocking.lock().await;
    let conn = match slot.as_mut() {
        Some(conn) => conn,
        None => {
            // No response timeout on this connection: the blocking read is bounded below, with
            // the block time added.
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.connection_timeout))
                .set_response_timeout(None);
            // Through the connector: with Sentinel, every new connection goes to the primary.
            let connector = b.inner.connector.clone();
            let conn = b
                .bounded(async move {
                    connector
                        .client()
                        .await?
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                })
                .await?;
            slot.insert(conn)
        }
    };
    let per_stream = max.div_ceil(tasks.len()).max(1);
    let mut options = StreamReadOptions::default()
        .group(GROUP, &b.inner.consumer)
        .count(per_stream);
    if !block.is_zero() {
        options = options.block(block.as_millis().max(1) as usize);
    }
    let queues: Vec<String> = tasks
        .iter()
        .map(|task| b.inner.keys.queue_in(task, 0))
        .collect();
    // `>`: entries never delivered to this group.
    let cmd = Cmd::xread_options(&queues, &vec![">"; tasks.len()], &options);
    let bound = block + settings.response_timeout;
    let read = match tokio::time::timeout(bound, cmd.query_async(conn)).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) if is_nogroup(&e) => {
            // The stream expired (idle past the TTL) or Redis lost it (restart without
            // persistence): look the queues up again on the next fetch.
            tracing::debug!("queue gone: looking it up again");
            forget_groups(b);
            return Ok(Vec::new());
        }
        Ok(Err(e)) => {
            let error = map_err(e);
            if error.is_unavailable() {
                *slot = None;
            }
            return Err(error);
        }
        Err(elapsed) => {
            // The connection may be dead without having noticed; start afresh next time.
            *slot = None;
            return Err(Error::Unavailable(Box::new(elapsed)));
        }
    };
    drop(slot);
    // Nil when the block time ran out with nothing to read.
    let Some(read) = reply::<Option<StreamReadReply>>("XREADGROUP reply", read)? else {
        return Ok(Vec::new());
    };
    let mut per_stream = Vec::with_capacity(read.keys.len());
    for key in read.keys {
        let Some(task) = b.inner.keys.task_of(&key.key).map(str::to_owned) else {
            continue;
        };
        let mut jobs = Vec::with_capacity(key.ids.len());
        for entry in key.ids {
            let id = entry
                .get::<String>("i")
                .and_then(|s| s.parse::<RequestId>().ok());
            let Some(id) = id else {
                discard(b, &key.key, &entry.id).await;
                continue;
            };
            let prior = entry.get::<u64>("n").unwrap_or(0);
            let job = Job {
                id,
                task: task.clone(),
                receipt: entry.id,
                deliveries: prior.saturating_add(1).min(u64::from(u32::MAX)) as u32,
            };
            vouch_until(b, &job, fresh_until(b));
            jobs.push(job);
        }
        per_stream.push(jobs);
    }
    Ok(per_stream)
}

/// Hands `job` back: re-added at the tail of its stream if this consumer still owns it.
pub(super) async fn release(b: &RedisBackend, job: &Job) -> Result<(), Error> {
    forget(b, job);
    if job.receipt.is_empty() {
        return Ok(());
    }
    let mut conn = b.conn().await?;
    let mut call = b.inner.scripts.release.prepare_invoke();
    call.key(b.inner.keys.queue(&job.task, &job.id))
        .arg(GROUP)
        .arg(&job.receipt)
        .arg(job.id.to_string())
        .arg(job.deliveries.saturating_sub(1))
        .arg(&b.inner.consumer);
    b.bounded(call.invoke_async::<()>(&mut conn)).await
}

fn ensure_heartbeat(b: &RedisBackend) {
    use std::sync::atomic::Ordering;
    let inner = &b.inner;
    if inner
        .heartbeat_started
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        tokio::spawn(heartbeat(
            std::sync::Arc::downgrade(inner),
            inner.closed.subscribe(),
        ));
    }
}

/// Every `takeover_after / 5`, refreshes this process's heartbeat key; every `claim_idle / 3`,
/// also re-claims (`XCLAIM … JUSTID`, which resets the idle time without counting a delivery)
/// the entries this process is still working on.
async fn heartbeat(inner: Weak<Inner>, mut closed: tokio::sync::watch::Receiver<()>) {
    let mut next_refresh = Instant::now();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let b = RedisBackend { inner: strong };
        let every = beat_every(b.inner.settings.takeover_after);
        let wanted = RedisBackend::lock(&b.inner.queue)
            .beat_until
            .is_some_and(|at| at + every > Instant::now())
            || {
                let now = now_ms();
                RedisBackend::lock(&b.inner.in_flight)
                    .values()
                    .any(|until| *until > now)
            };
        if wanted && let Err(error) = beat(&b).await {
            tracing::debug!(
                error = &error as &dyn std::error::Error,
                "heartbeat failed; will try again"
            );
        }
        if Instant::now() >= next_refresh {
            next_refresh = Instant::now() + heartbeat_interval(b.inner.settings.claim_idle);
            refresh(&b).await;
        }
        drop(b);
        tokio::select! {
            _ = closed.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Re-claims the entries this process is still working on, so they never look idle.
async fn refresh(b: &RedisBackend) {
    {
        let now = now_ms();
        let mut by_queue: HashMap<String, Vec<String>> = HashMap::new();
        {
            let mut in_flight = RedisBackend::lock(&b.inner.in_flight);
            in_flight.retain(|_, until| *until > now);
            for (queue, receipt) in in_flight.keys() {
                by_queue
                    .entry(queue.clone())
                    .or_default()
                    .push(receipt.clone());
            }
        }
        if by_queue.is_empty() {
            return;
        }
        let Ok(mut conn) = b.conn().await else {
            return;
        };
        for (queue, receipts) in by_queue {
            for chunk in receipts.chunks(HEARTBEAT_CHUNK) {
                let cmd = Cmd::xclaim_options(
                    &queue,
                    GROUP,
                    &b.inner.consumer,
                    0,
                    chunk,
                    StreamClaimOptions::default().with_justid(),
                );
                if let Err(error) = b.bounded(cmd.query_async::<()>(&mut conn)).await {
                    tracing::debug!(
                        queue,
                        error = &error as &dyn std::error::Error,
                        "entry refresh failed; will try again"
                    );
                }
            }
        }
    }
}
