//! Item 2: job throughput, ours against apalis. A backlog is queued first, then one worker
//! process drains it; rounds alternate the two systems, so background load hits both alike.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{median, per, starts};
use crate::procs::{BoxError, Redis, delta, workspace_root};
use crate::runner::Run;

/// The apalis worker's settings (ours: `concurrency` 64, the default).
const QUEUE: &str = "bench-apalis";
const CONCURRENCY: u32 = 64;
const BATCH: u32 = 100;
const POLL_MS: u32 = 100;

/// Calls per command (`INFO commandstats`).
type Stats = BTreeMap<String, u64>;

/// One system's drain of a backlog.
struct Drain {
    /// Jobs / time from the first recorded job to the last.
    steady: f64,
    /// Jobs / time from the worker process's start until the last job is recorded.
    rate: f64,
    secs: f64,
    /// Jobs whose record (ours) or status (apalis) says done.
    recorded: usize,
    /// redis-server CPU time per job while the worker drained the backlog, µs (`/proc`).
    redis_us: f64,
    /// Redis commands per job: enqueueing, then running and recording.
    enqueue: String,
    run: String,
    total: f64,
}

struct Ours {
    drain: Drain,
    start_secs: f64,
    queued: u64,
    /// Redis `used_memory` per queued request.
    mem_per: f64,
}

struct Apalis {
    drain: Drain,
    push_secs: f64,
    /// Why the worker stopped before the end, if it did.
    error: Option<String>,
}

/// Progress of a drain, watched from outside.
struct Watched {
    done: u64,
    secs: f64,
    steady: f64,
    stopped: Option<String>,
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    // Two backlogs in a full run: apalis's rate depends on it; both stay below its ~8,000 limit.
    let sizes: &[usize] = if run.quick { &[3000] } else { &[2000, 7000] };
    // Rounds alternate the two systems, so background load hits both alike; medians are reported.
    let rounds = if run.quick { 1 } else { 3 };
    // apalis 1.0 + apalis-redis, its own crate outside the workspace, built on demand.
    let peer = build_apalis()?;
    let mut last_totals = None;
    for (i, &n) in sizes.iter().enumerate() {
        let mut measured = Vec::new();
        for _ in 0..rounds {
            measured.push((ours(run, n)?, apalis(run, &peer, n)?));
        }
        write_backlog(run, n, &measured, i == 0);
        if let Some((ours, apalis)) = measured.last() {
            last_totals = Some((ours.drain.total, apalis.drain.total));
        }
    }
    if let Some((ours, apalis)) = last_totals {
        run.goal(
            "fewer Redis commands per job than apalis",
            format!("{ours:.1} vs {apalis:.1}"),
            ours < apalis,
        );
    }
    Ok(())
}

/// Ours: prefill through HTTP starts on a web-only process, then one worker process drains.
fn ours(run: &Run, n: usize) -> Result<Ours, BoxError> {
    run.redis.cmd::<()>(&["FLUSHALL"])?;
    let (web, addr) = run.serve_redis("ae", "tp", &["--workers", "off"])?;
    let mem0 = run.redis.used_memory()?;
    let s0 = run.redis.commandstats()?;
    let t = Instant::now();
    starts(&addr, "/noop", n, 16)?;
    let start_secs = t.elapsed().as_secs_f64();
    let s1 = run.redis.commandstats()?;
    let mem1 = run.redis.used_memory()?;
    drop(web);
    let queued: u64 = run.redis.cmd(&["XLEN", "tp:q:noop"])?;
    let cpu0 = run.redis.cpu_us()?;
    let t = Instant::now();
    let (worker, _) = run.serve_redis("worker", "tp", &[])?;
    let left = || run.redis.cmd::<u64>(&["XLEN", "tp:q:noop"]);
    let w = watch(
        t,
        queued,
        || Ok(queued.saturating_sub(left()?)),
        |done| {
            let late = t.elapsed() > Duration::from_secs(120);
            late.then(|| format!("our worker left {} jobs after 120 s", queued - done))
        },
    )?;
    let cpu = run.redis.cpu_us()? - cpu0;
    if let Some(e) = w.stopped {
        return Err(e.into());
    }
    std::thread::sleep(Duration::from_millis(300));
    let s2 = run.redis.commandstats()?;
    drop(worker);
    let recorded = count_status(&run.redis, "tp:r:*", "d")?;
    Ok(Ours {
        drain: Drain::new(n, &w, n as u64, recorded, cpu, [&s0, &s1, &s2]),
        start_secs,
        queued,
        mem_per: (mem1.saturating_sub(mem0)) as f64 / n as f64,
    })
}

/// apalis: its peer pushes the jobs, then its worker drains them.
fn apalis(run: &Run, peer: &Path, n: usize) -> Result<Apalis, BoxError> {
    run.redis.cmd::<()>(&["FLUSHALL"])?;
    let a0 = run.redis.commandstats()?;
    let push_secs = push_apalis(peer, &run.redis.url, n)?;
    let a1 = run.redis.commandstats()?;
    let done_key = format!("{QUEUE}:done");
    let cpu0 = run.redis.cpu_us()?;
    let t = Instant::now();
    let mut cmd = Command::new(peer);
    let settings = [CONCURRENCY, BATCH, POLL_MS].map(|v| v.to_string());
    cmd.args(["work", &run.redis.url, QUEUE]).args(&settings);
    let mut worker = run.spawn(cmd, "apalis")?;
    worker.expect("READY")?;
    let limit = Duration::from_secs(if run.quick { 40 } else { 120 });
    let mut last = 0;
    let done = || {
        last = count(&run.redis, &done_key).unwrap_or(last);
        Ok(last)
    };
    let w = watch(t, n as u64, done, |done| match worker.child.try_wait() {
        Ok(Some(status)) => Some(format!("apalis worker exited ({status}) after {done} jobs")),
        _ => (t.elapsed() > limit)
            .then(|| format!("apalis finished {done} of {n} jobs in the time allowed")),
    })?;
    let cpu = run.redis.cpu_us()? - cpu0;
    std::thread::sleep(Duration::from_millis(300));
    let a2 = run.redis.commandstats()?;
    drop(worker);
    let recorded = count_status(&run.redis, "st:*", "done")?;
    Ok(Apalis {
        drain: Drain::new(n, &w, w.done, recorded, cpu, [&a0, &a1, &a2]),
        push_secs,
        error: w.stopped,
    })
}

impl Drain {
    /// `jobs` done in the watched time, redis-server using `cpu_us` meanwhile; commandstats
    /// before the enqueueing, after it, and after the drain.
    fn new(
        n: usize,
        w: &Watched,
        jobs: u64,
        recorded: usize,
        cpu_us: f64,
        stats: [&Stats; 3],
    ) -> Drain {
        let [s0, s1, s2] = stats;
        Drain {
            redis_us: cpu_us / jobs.max(1) as f64,
            steady: w.steady,
            rate: jobs as f64 / w.secs,
            secs: w.secs,
            recorded,
            enqueue: per(&delta(s0, s1), n),
            run: per(&delta(s1, s2), n),
            total: (delta(s0, s2).values().sum::<u64>()) as f64 / n as f64,
        }
    }
}

/// Checks `done()` every 10 ms until it reaches `n`, or `give_up(done)` says why it stops
/// earlier. Times are from `t`; the steady rate counts from the first job seen done.
fn watch(
    t: Instant,
    n: u64,
    mut done: impl FnMut() -> Result<u64, BoxError>,
    mut give_up: impl FnMut(u64) -> Option<String>,
) -> Result<Watched, BoxError> {
    let mut first: Option<(Instant, u64)> = None;
    let (d, stopped) = loop {
        let d = done()?;
        if first.is_none() && d > 0 {
            first = Some((Instant::now(), d));
        }
        if d >= n {
            break (d, None);
        }
        if let Some(why) = give_up(d) {
            break (d, Some(why));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let secs = t.elapsed().as_secs_f64();
    let steady = first.map_or(f64::NAN, |(at, d0)| {
        (d - d0) as f64 / at.elapsed().as_secs_f64()
    });
    Ok(Watched {
        done: d,
        secs,
        steady,
        stopped,
    })
}

/// The peer pushes `n` jobs one by one; returns the seconds it says that took.
fn push_apalis(peer: &Path, url: &str, n: usize) -> Result<f64, BoxError> {
    let out = Command::new(peer)
        .args(["push", url, QUEUE, &n.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "apalis push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN))
}

/// Keys matching `pattern` whose hash field `s` is `value`.
fn count_status(redis: &Redis, pattern: &str, value: &str) -> Result<usize, BoxError> {
    Ok(redis
        .keys(pattern)?
        .iter()
        .filter(|k| {
            let s = redis.cmd::<Option<String>>(&["HGET", k, "s"]);
            s.ok().flatten().as_deref() == Some(value)
        })
        .count())
}

/// Members of a collection key of any type (0 when it does not exist).
fn count(redis: &Redis, key: &str) -> Result<u64, BoxError> {
    let kind: String = redis.cmd(&["TYPE", key])?;
    let c = match kind.as_str() {
        "zset" => "ZCARD",
        "set" => "SCARD",
        "list" => "LLEN",
        "hash" => "HLEN",
        "none" => return Ok(0),
        other => return Err(format!("{key} is a {other}").into()),
    };
    redis.cmd(&[c, key])
}

/// Builds the apalis peer into the workspace's `target/apalis-peer` (the latency item runs it
/// too: whichever item runs first builds it).
pub(super) fn build_apalis() -> Result<PathBuf, BoxError> {
    crate::procs::build_peer(
        "apalis-peer",
        "apalis",
        &workspace_root().join("target/apalis-peer"),
    )
}

/// The section of one backlog: its table from all rounds (`measured`), its notes, its figures
/// and its goal.
fn write_backlog(run: &mut Run, n: usize, measured: &[(Ours, Apalis)], first_size: bool) {
    let Some((ours, apalis)) = measured.last() else {
        return;
    };
    let rounds = measured.len();
    let steady = |f: fn(&(Ours, Apalis)) -> f64| -> (f64, String) {
        let each: Vec<String> = measured.iter().map(|r| format!("{:.0}", f(r))).collect();
        (median(measured.iter().map(f).collect()), each.join(", "))
    };
    let (ours_steady, ours_each) = steady(|r| r.0.drain.steady);
    let (apalis_steady, apalis_each) = steady(|r| r.1.drain.steady);
    let (ratio, _) = steady(|r| r.0.drain.steady / r.1.drain.steady);
    let md = &mut run.md;
    if first_size {
        let _ = writeln!(md, "\n## 2. Job throughput\n");
    }
    let _ = writeln!(md, "\n### Backlog of {n} jobs\n");
    let _ = writeln!(
        md,
        "{n} trivial jobs (double a number) are queued first, then ONE worker process drains them; rate = jobs / \
         time from the worker process's start until the last job is recorded; steady = jobs / time from the first \
         recorded job to the last, which leaves process start and connection set-up out; redis-server CPU = its `utime + stime` (`/proc`, 10 ms ticks) from the worker process's start until the last job is recorded, per job (ours: the stream is empty, every \
         entry being acknowledged and deleted by the finishing script; apalis: its `done` set holds {n}). \
         Backlog {n}: below the ≈ 8,000 queued jobs at which apalis-redis's worker dies (\"too many results to \
         unpack\", DESIGN.md §6), on purpose. {rounds} round(s), alternating the systems: the steady rate is the \
         median (each round's in brackets); the other columns are the last round's.\n"
    );
    let _ = writeln!(
        md,
        "| system | jobs/s, steady | jobs/s incl. worker start | drain time s | jobs recorded done | redis-server CPU per job, drain | Redis commands per job, enqueue | per job, run + record | total per job |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---|---:|");
    let d = &ours.drain;
    let _ = writeln!(
        md,
        "| async-endpoint (Redis backend, 1 worker process, concurrency 64) | {ours_steady:.0} ({ours_each}) | {:.0} | {:.2} | {} / {n} | {:.1} µs | {} | {} | {:.2} |",
        d.rate, d.secs, d.recorded, d.redis_us, d.enqueue, d.run, d.total
    );
    let d = &apalis.drain;
    let _ = writeln!(
        md,
        "| apalis 1.0.0 + apalis-redis 1.0.0 + hand-written status | {apalis_steady:.0} ({apalis_each}) | {:.0} | {:.2} | {} / {n} (status `done`) | {:.1} µs | {} | {} | {:.2} |",
        d.rate, d.secs, d.recorded, d.redis_us, d.enqueue, d.run, d.total
    );
    write_notes(md, n, ours, apalis);
    run.figures.throughput.extend([
        (format!("async-endpoint, {n} jobs"), ours_steady),
        (format!("apalis, {n} jobs"), apalis_steady),
    ]);
    run.queued_mem_per = Some(ours.mem_per);
    run.goal(
        &format!("throughput ≥ 2 × apalis (steady, backlog {n})"),
        format!("{ratio:.2} × (median of rounds; {ours_steady:.0} vs {apalis_steady:.0} jobs/s)"),
        ratio >= 2.0,
    );
}

/// Below the table: how the backlog was queued, apalis's configuration, Redis memory.
fn write_notes(md: &mut String, n: usize, ours: &Ours, apalis: &Apalis) {
    if let Some(e) = &apalis.error {
        let _ = writeln!(md, "\n**apalis did not finish: {e}.**");
    }
    let _ = writeln!(
        md,
        "\nStarting: ours {n} HTTP starts (16 connections) took {:.2} s; {} entries were queued. \
         apalis: the peer pushed {n} jobs one by one (each after its `HSET`+`EXPIRE` status write, one \
         `MULTI` pipeline) in {:.2} s.\n\n\
         apalis configuration (apalis has no throughput guide; these follow its README and its own tests): \
         `RedisStorage::new(ConnectionManager).with_config(Config::default().queue(\"{QUEUE}\").batch_size({BATCH}))`, \
         `.poll_with_interval({POLL_MS} ms)` (without it a job pushed by another process waits for the next \
         heartbeat), worker `.concurrency({CONCURRENCY})` (ours: `concurrency` 64, the default) and \
         `.parallelize(tokio::spawn)`; JSON codec, task locking, result persistence and pub/sub events left at \
         their defaults. The handler writes the hand-written status record (`HSET st:<id> s done o <output>` + \
         `EXPIRE 3600` in one `MULTI` pipeline), which is what a status route would read (`HGETALL st:<id>`).",
        ours.start_secs, ours.queued, apalis.push_secs
    );
    let _ = writeln!(
        md,
        "\nRedis memory per queued request (ours, `used_memory` Δ / {n}, record + stream entry): {:.0} bytes.",
        ours.mem_per
    );
}
