//! Item `drain` (`--only drain`): a backlog of 1,000,000 requests (100,000 with `--quick`, or
//! `BENCH_DRAIN_N` in the environment) with
//! ~100-byte params, queued into the run's private redis-server, drained by ONE worker process.
//! Reports jobs/s, the CPU time the worker process and redis-server spent per job (`/proc`), the
//! worker's warnings and errors, Redis memory queued and finished, and reads every result back
//! through the backend's own `poll`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_endpoint::RequestId;
use async_endpoint::Status;
use async_endpoint::backend::{Backend, NewRequest, RedisBackend};

use crate::procs::{BoxError, clock_ticks_per_second, cpu_ticks, delta};
use crate::runner::{Run, log};
use crate::servers::{SHIP_TASK, ship_output, ship_params};

/// Key prefix of this item.
const PREFIX: &str = "dr";
/// Concurrent starts / polls of the runner (one multiplexed connection, so they pipeline).
const CLIENTS: usize = 128;
/// How long the drain may take before the item gives up.
const LIMIT: Duration = Duration::from_secs(900);

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let n: usize = std::env::var("BENCH_DRAIN_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if run.quick { 100_000 } else { 1_000_000 });
    run.redis.cmd::<()>(&["FLUSHALL"])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let backend = RedisBackend::builder(run.redis.url.clone())
        .prefix(PREFIX)
        .build()?;
    let queue = format!("{PREFIX}:q:{SHIP_TASK}");
    let mem0 = run.redis.used_memory()?;
    let t = Instant::now();
    let ids = rt.block_on(enqueue(&backend, n))?;
    let enqueue_secs = t.elapsed().as_secs_f64();
    let mem_queued = run.redis.used_memory()?;
    let queued: u64 = run.redis.cmd(&["XLEN", &queue])?;
    log(&format!(
        "drain: {n} requests queued in {enqueue_secs:.1} s ({queued} stream entries)"
    ));
    let redis_pid = run.redis.pid()?;
    let s0 = run.redis.commandstats()?;
    let redis_cpu0 = cpu_ticks(redis_pid)?;
    let t = Instant::now();
    let load = load_average();
    let (worker, _) = run.serve_redis("worker", PREFIX, &["--ship", "1", "--log", "warn"])?;
    let worker_log = run.last_log();
    let mut first: Option<(Instant, u64)> = None;
    let mut worker_cpu = 0;
    let left = loop {
        let left: u64 = run.redis.cmd(&["XLEN", &queue])?;
        let done = queued.saturating_sub(left);
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), done));
        }
        // The worker's CPU time while it still runs (read before it is stopped).
        worker_cpu = cpu_ticks(worker.pid()).unwrap_or(worker_cpu);
        if left == 0 || t.elapsed() > LIMIT {
            break left;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = t.elapsed().as_secs_f64();
    let steady = first.map_or(f64::NAN, |(at, d0)| {
        (queued - left - d0) as f64 / at.elapsed().as_secs_f64()
    });
    let redis_cpu = cpu_ticks(redis_pid)?.saturating_sub(redis_cpu0);
    let s1 = run.redis.commandstats()?;
    drop(worker);
    let mem_done = run.redis.used_memory()?;
    let warnings = std::fs::read_to_string(&worker_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    let t = Instant::now();
    let verified = rt.block_on(verify(&backend, &ids))?;
    let verify_secs = t.elapsed().as_secs_f64();
    drop(backend);
    drop(rt);
    run.redis.cmd::<()>(&["FLUSHALL"])?;

    let jobs = queued - left;
    let rate = jobs as f64 / secs;
    let tick_us = 1e6 / clock_ticks_per_second();
    let worker_us = worker_cpu as f64 * tick_us / jobs.max(1) as f64;
    let redis_us = redis_cpu as f64 * tick_us / jobs.max(1) as f64;
    let commands = super::per(&delta(&s0, &s1), jobs.max(1) as usize);
    let bad = n - verified.done_right;
    run.goal(
        &format!("{n}-request backlog drains at ≥ 20,000 jobs/s, no error, every result readable"),
        format!(
            "{rate:.0} jobs/s incl. worker start ({steady:.0} steady); {warnings} warnings/errors; {} of {n} results read back done and right",
            verified.done_right
        ),
        rate >= 20_000.0 && warnings == 0 && bad == 0 && left == 0,
    );
    let md = &mut run.md;
    let _ = writeln!(md, "\n## Drain of a {n}-request backlog\n");
    let _ = writeln!(
        md,
        "{n} requests of a task with {}-byte JSON params (an order: id, customer e-mail, SKU, quantity, note) are \
         created through the Redis backend's own `create` ({CLIENTS} at a time from the runner), then ONE worker \
         process (`concurrency` 64, the default) drains them. Rate = jobs / time from the worker process's start until \
         the stream is empty (every entry is acknowledged and deleted when its outcome is written); steady = from the \
         first job done to the last. CPU is `utime + stime` from `/proc/<pid>/stat` over the drain, per job. Every \
         result is then read back through the backend's `poll` (all {n}, not a sample) and compared with the output \
         the task computes from its params.\n",
        ship_params(0).len()
    );
    let _ = writeln!(md, "| what | measured |");
    let _ = writeln!(md, "|---|---:|");
    let _ = writeln!(
        md,
        "| enqueue ({n} `create` calls) | {enqueue_secs:.1} s ({:.0} /s) |",
        n as f64 / enqueue_secs
    );
    let _ = writeln!(
        md,
        "| drain: jobs/s incl. worker start | **{rate:.0}** ({jobs} jobs in {secs:.1} s) |"
    );
    let _ = writeln!(md, "| drain: jobs/s steady | {steady:.0} |");
    let _ = writeln!(md, "| jobs left in the stream | {left} |");
    let _ = writeln!(
        md,
        "| worker process CPU per job | {worker_us:.1} µs ({:.2} cores on average) |",
        worker_us * rate / 1e6
    );
    let _ = writeln!(
        md,
        "| redis-server CPU per job | {redis_us:.1} µs ({:.2} cores on average) |",
        redis_us * rate / 1e6
    );
    let _ = writeln!(
        md,
        "| load average (1 min) when the drain started | {load} |"
    );
    let _ = writeln!(md, "| Redis commands per job while draining | {commands} |");
    let _ = writeln!(
        md,
        "| worker warnings and errors (its WARN/ERROR log lines) | {warnings} |"
    );
    let _ = writeln!(
        md,
        "| results read back (`poll`, all {n}) | {} done with the right output, {} other, {} missing; {verify_secs:.1} s |",
        verified.done_right, verified.other, verified.missing
    );
    let _ = writeln!(
        md,
        "| Redis `used_memory` per queued request (record + stream entry, Δ / {n}) | {:.0} bytes |",
        mem_queued.saturating_sub(mem0) as f64 / n as f64
    );
    let _ = writeln!(
        md,
        "| Redis `used_memory` per finished request (Δ / {n}) | {:.0} bytes |",
        mem_done.saturating_sub(mem0) as f64 / n as f64
    );
    Ok(())
}

/// Creates `n` requests of the ship task; returns their ids (request `i` has params
/// `ship_params(i)`).
async fn enqueue(backend: &RedisBackend, n: usize) -> Result<Vec<RequestId>, BoxError> {
    let ids: Arc<Vec<RequestId>> = Arc::new((0..n).map(|_| RequestId::random()).collect());
    let mut set = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let (backend, ids) = (backend.clone(), ids.clone());
        set.spawn(async move {
            let ttl = Duration::from_secs(3600);
            for i in (client..ids.len()).step_by(CLIENTS) {
                let now = now_ms();
                let request = NewRequest::new(
                    ids[i],
                    SHIP_TASK,
                    ship_params(i as u64),
                    now,
                    now + 3_000_000,
                    ttl,
                );
                backend.create(request).await?;
            }
            Ok::<(), BoxError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(Arc::try_unwrap(ids).unwrap_or_else(|ids| (*ids).clone()))
}

/// What reading every result back found.
#[derive(Default)]
struct Verified {
    done_right: usize,
    other: usize,
    missing: usize,
}

/// Polls every request through the backend and checks its output.
async fn verify(backend: &RedisBackend, ids: &[RequestId]) -> Result<Verified, BoxError> {
    let ids: Arc<Vec<RequestId>> = Arc::new(ids.to_vec());
    let mut set = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let (backend, ids) = (backend.clone(), ids.clone());
        set.spawn(async move {
            let mut v = Verified::default();
            for i in (client..ids.len()).step_by(CLIENTS) {
                match backend.poll(ids[i], now_ms()).await? {
                    None => v.missing += 1,
                    Some(s)
                        if s.status == Status::Done
                            && s.output.as_deref() == Some(ship_output(i as u64).as_str()) =>
                    {
                        v.done_right += 1;
                    }
                    Some(_) => v.other += 1,
                }
            }
            Ok::<Verified, BoxError>(v)
        });
    }
    let mut all = Verified::default();
    while let Some(r) = set.join_next().await {
        let v = r??;
        all.done_right += v.done_right;
        all.other += v.other;
        all.missing += v.missing;
    }
    Ok(all)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The 1-minute load average (`/proc/loadavg`), as text.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}
