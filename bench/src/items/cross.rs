//! Item 6: load across processes. Two web processes (`in_process_workers(false)`) and two
//! worker-only processes share one private Redis; a load process (`bench load cross …`) starts
//! requests on one web process and polls each to its end on the other, checking that every one
//! gets its own result. Afterwards the processes are stopped, the TTL is let pass, and the
//! library's keys left under its prefix are listed.

mod load;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{describe_keys, quantile};
use crate::procs::{BoxError, Proc, delta};
use crate::runner::{Run, log};

pub(crate) use load::load;

const PREFIX: &str = "xp";
const TTL_MS: u64 = 5_000;
const DEADLINE_MS: u64 = 4_000;
const CONCURRENCY: usize = 64;
/// A request that has no final answer this long after its start counts as lost.
const GIVE_UP: Duration = Duration::from_secs(30);
/// Connection errors tolerated on one request's polls (each followed by a reconnect).
const RETRIES: u32 = 3;

/// What the load process saw.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Tally {
    /// Starts answered 202.
    started: u64,
    /// Starts answered with something else: status → count.
    start_refused: BTreeMap<u16, u64>,
    /// Starts that failed on the connection (no answer at all).
    start_io: u64,
    /// Final 200 carrying this request's own tag.
    own: u64,
    /// Final 200 carrying another request's tag (or an unreadable body).
    cross: u64,
    /// Final 422.
    failed: u64,
    /// Answers of 500 (starts and polls).
    s500: u64,
    /// Started requests that ended with another status (404, 410, 503 …): status → count.
    other: BTreeMap<u16, u64>,
    /// Started requests given up on the client (connection errors or no final answer in time).
    gave_up: u64,
    /// Polls sent (all, including those answered 202).
    polls: u64,
    /// Reconnects after a connection error.
    reconnects: u64,
    /// Jobs per process id that ran them (from the results).
    by_pid: BTreeMap<u32, u64>,
    /// Milliseconds from start to final answer, for the requests answered 200.
    latencies: Vec<f64>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.started += o.started;
        for (k, v) in o.start_refused {
            *self.start_refused.entry(k).or_default() += v;
        }
        self.start_io += o.start_io;
        self.own += o.own;
        self.cross += o.cross;
        self.failed += o.failed;
        self.s500 += o.s500;
        for (k, v) in o.other {
            *self.other.entry(k).or_default() += v;
        }
        self.gave_up += o.gave_up;
        self.polls += o.polls;
        self.reconnects += o.reconnects;
        for (k, v) in o.by_pid {
            *self.by_pid.entry(k).or_default() += v;
        }
        self.latencies.extend(o.latencies);
    }

    /// Started requests without a final answer of their own (200 with their tag, or 422).
    fn lost(&self) -> u64 {
        self.started - self.own - self.failed - self.cross
    }
}

/// The four processes of the item.
struct Procs {
    workers: [Proc; 2],
    webs: [Proc; 2],
    /// The web processes' addresses.
    addrs: [String; 2],
}

/// What the item measured.
struct Outcome {
    n: usize,
    tally: Tally,
    /// Seconds the load took.
    secs: f64,
    /// Redis commands per request.
    commands: f64,
    /// Keys under the prefix right after the load.
    live: usize,
    /// How each process ended on SIGTERM.
    stops: Vec<String>,
    /// Jobs per worker process.
    split: String,
    /// Keys under the prefix after the TTL, and all keys.
    left: Vec<String>,
    dbsize: u64,
    /// How long after the stop the keys were listed.
    wait: Duration,
}

/// Item 6: the runner's side.
pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let n: usize = if run.quick { 2_000 } else { 10_000 };
    run.redis.cmd::<()>(&["FLUSHALL"])?;
    let procs = start_processes(run)?;
    let s0 = run.redis.commandstats()?;
    let (tally, secs) = drive(run, &procs.addrs, n)?;
    let s1 = run.redis.commandstats()?;
    let commands = delta(&s0, &s1).values().sum::<u64>() as f64 / n as f64;
    let live = run.redis.keys(&format!("{PREFIX}:*"))?.len();

    // Stop everything (SIGTERM; workers shut down gracefully), then let the TTL pass.
    let stopped_at = Instant::now();
    let split = worker_split(&tally, &procs.workers);
    let stops = stop(procs)?;
    let wait = Duration::from_millis(TTL_MS + 2_000);
    std::thread::sleep(wait.saturating_sub(stopped_at.elapsed()));
    let left = run.redis.keys(&format!("{PREFIX}:*"))?;
    let dbsize: u64 = run.redis.cmd(&["DBSIZE"])?;
    log(&format!(
        "cross: {} own, {} lost, {} cross, {} × 500 of {n} in {secs:.1} s; {} keys left",
        tally.own,
        tally.lost(),
        tally.cross,
        tally.s500,
        left.len()
    ));
    let mut o = Outcome {
        n,
        tally,
        secs,
        commands,
        live,
        stops,
        split,
        left,
        dbsize,
        wait,
    };
    write_table(run, &mut o);
    goals(run, &o);
    Ok(())
}

/// Two worker-only processes, then two web processes (`in_process_workers(false)`).
fn start_processes(run: &Run) -> Result<Procs, BoxError> {
    let (ttl, deadline) = (TTL_MS.to_string(), DEADLINE_MS.to_string());
    let common = ["--ttl-ms", &ttl, "--deadline-ms", &deadline, "--echo", "1"];
    let web: Vec<&str> = common.iter().copied().chain(["--workers", "off"]).collect();
    let (w1, _) = run.serve_redis("worker", PREFIX, &common)?;
    let (w2, _) = run.serve_redis("worker", PREFIX, &common)?;
    let (web1, a) = run.serve_redis("ae", PREFIX, &web)?;
    let (web2, b) = run.serve_redis("ae", PREFIX, &web)?;
    Ok(Procs {
        workers: [w1, w2],
        webs: [web1, web2],
        addrs: [a, b],
    })
}

/// Runs the load process on the web processes at `addrs`: what it saw, and how long it took.
fn drive(run: &Run, addrs: &[String; 2], n: usize) -> Result<(Tally, f64), BoxError> {
    let load = run.load(&[
        "cross",
        "--a",
        &addrs[0],
        "--b",
        &addrs[1],
        "--n",
        &n.to_string(),
        "--concurrency",
        &CONCURRENCY.to_string(),
    ])?;
    let out = load.finish()?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("the load process printed no RESULT: {out:?}"))?;
    let (json, secs) = line.rsplit_once(' ').ok_or("bad RESULT line")?;
    Ok((serde_json::from_str(json)?, secs.parse()?))
}

/// Jobs per worker process: `worker 1: …, worker 2: …` (by the process ids in the results).
fn worker_split(t: &Tally, workers: &[Proc; 2]) -> String {
    let split: Vec<String> = t
        .by_pid
        .iter()
        .map(
            |(pid, c)| match workers.iter().position(|w| w.pid() == *pid) {
                Some(i) => format!("worker {}: {c}", i + 1),
                None => format!("pid {pid} (not a worker!): {c}"),
            },
        )
        .collect();
    split.join(", ")
}

/// SIGTERM to each process: how each ended.
fn stop(procs: Procs) -> Result<Vec<String>, BoxError> {
    let [mut w1, mut w2] = procs.workers;
    let [mut web1, mut web2] = procs.webs;
    let mut stops = Vec::new();
    for (name, p) in [
        ("worker 1", &mut w1),
        ("worker 2", &mut w2),
        ("web 1", &mut web1),
        ("web 2", &mut web2),
    ] {
        let how = match terminate(p, Duration::from_secs(15))? {
            Some(s) if s.success() => "exited 0".to_owned(),
            Some(s) => format!("exited: {s}"),
            None => "still running after 15 s (killed)".to_owned(),
        };
        stops.push(format!("{name} {how}"));
    }
    Ok(stops)
}

/// Sends SIGTERM and waits up to `patience` for the process to end.
fn terminate(p: &mut Proc, patience: Duration) -> Result<Option<ExitStatus>, BoxError> {
    Command::new("kill")
        .args(["-TERM", &p.pid().to_string()])
        .status()?;
    let until = Instant::now() + patience;
    loop {
        if let Some(status) = p.child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > until {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status → count, as `3 × 404, 1 × 410` (or `0`).
fn statuses(m: &BTreeMap<u16, u64>) -> String {
    if m.is_empty() {
        return "0".to_owned();
    }
    m.iter()
        .map(|(s, c)| format!("{c} × {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_table(run: &mut Run, o: &mut Outcome) {
    let kinds = describe_keys(&run.redis, &o.left);
    let (n, secs) = (o.n, o.secs);
    let (p50, p99) = (
        quantile(&mut o.tally.latencies, 0.5),
        quantile(&mut o.tally.latencies, 0.99),
    );
    let t = &o.tally;
    let md = &mut run.md;
    write_intro(md, o.wait);
    let _ = writeln!(md, "| what | measured |\n|---|---|");
    let mut row = |what: &str, measured: String| {
        let _ = writeln!(md, "| {what} | {measured} |");
    };
    row("requests", format!("{n} ({} started with 202)", t.started));
    let refused = statuses(&t.start_refused);
    row(
        "starts refused / without an answer",
        format!("{refused} / {}", t.start_io),
    );
    row("answered 200 with their own result", t.own.to_string());
    let cross = "answered with another request's result (or an unreadable one)";
    row(cross, t.cross.to_string());
    row("answered 422", t.failed.to_string());
    let other = statuses(&t.other);
    row(
        "**lost**",
        format!(
            "**{}** (other final statuses: {other}; given up: {})",
            t.lost(),
            t.gave_up
        ),
    );
    row("answers of 500", t.s500.to_string());
    let rate = n as f64 / secs;
    row(
        "total time",
        format!(
            "{secs:.2} s: **{rate:.0} requests/s** (start to final answer, {CONCURRENCY} in flight)"
        ),
    );
    row(
        "start → result, p50 / p99",
        format!("{p50:.1} ms / {p99:.1} ms"),
    );
    let polls = t.polls as f64 / t.started.max(1) as f64;
    row(
        "polls per request",
        format!("{polls:.2} ({} reconnects)", t.reconnects),
    );
    let commands = "Redis commands per request (commandstats Δ)";
    row(commands, format!("{:.1}", o.commands));
    row("jobs per worker process", o.split.clone());
    let live = "keys under the prefix while live (right after the load)";
    row(live, o.live.to_string());
    row("stop (SIGTERM)", o.stops.join("; "));
    let kinds = if kinds.is_empty() {
        String::new()
    } else {
        format!(": {}", kinds.join(", "))
    };
    row(
        "keys under the prefix after the TTL, processes stopped",
        format!("**{}** {kinds} (`DBSIZE` {})", o.left.len(), o.dbsize),
    );
}

fn write_intro(md: &mut String, wait: Duration) {
    let _ = writeln!(md, "\n## 6. Load across processes\n");
    let _ = writeln!(
        md,
        "One private redis-server, 2 worker-only processes (`endpoint.run_worker(…)`, concurrency 64 each) and 2 \
         web processes (`in_process_workers(false)`), all on the Redis backend with ttl {} s and deadline {} s. \
         The task `echo` answers its params (a tag unique to the request and the run) with the id of the process \
         that ran it. A load process runs {CONCURRENCY} lanes, each with one keep-alive connection per web \
         process: request *i* is started on web process *i* mod 2 and polled to its end on the other one \
         (waiting polls, `Prefer: wait=10`); a request with no final answer {} s after its start, or after {RETRIES} \
         connection errors on its polls, is given up. Lost = started (202) without a final answer of its own (200 \
         or 422). Afterwards the four processes get SIGTERM, the TTL is let pass ({:.0} s after the stop), and \
         the keys under the prefix `{PREFIX}:` are listed (`SCAN`).\n",
        TTL_MS / 1000,
        DEADLINE_MS / 1000,
        GIVE_UP.as_secs(),
        wait.as_secs_f64()
    );
}

fn goals(run: &mut Run, o: &Outcome) {
    let (t, n, lost) = (&o.tally, o.n, o.tally.lost());
    let ok = lost == 0 && t.cross == 0 && t.s500 == 0 && t.started == n as u64;
    run.goal(
        &format!(
            "across processes (2 web + 2 workers): {n} requests, 0 lost, 0 cross answers, 0 × 500"
        ),
        format!(
            "{} started, {lost} lost, {} cross, {} × 500, {} × 422 ({:.0} req/s)",
            t.started,
            t.cross,
            t.s500,
            t.failed,
            n as f64 / o.secs
        ),
        ok,
    );
    let records = o.left.iter().filter(|k| k.contains(":r:")).count();
    let streams: Vec<&str> = o
        .left
        .iter()
        .filter(|k| k.contains(":q:"))
        .map(String::as_str)
        .collect();
    let named = if streams.is_empty() {
        String::new()
    } else {
        format!(" ({})", streams.join(", "))
    };
    run.goal(
        "across processes: 0 library keys left after the TTL (processes stopped)",
        format!(
            "{} left: {records} request records, {} queue streams{named}",
            o.left.len(),
            streams.len()
        ),
        o.left.is_empty(),
    );
}
