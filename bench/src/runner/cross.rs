//! Item 6: load across processes. Two web processes (`in_process_workers(false)`) and two
//! worker-only processes share one private Redis; a load process (`bench load cross …`) starts
//! requests on one web process and polls each to its end on the other, checking that every one
//! gets its own result. Afterwards the processes are stopped, the TTL is let pass, and the
//! library's keys left under its prefix are listed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{Run, log, quantile};
use crate::client::{Conn, Response};
use crate::procs::{BoxError, Proc};
use crate::servers::{Opts, wall_ms};

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

/// One GET on lane connection `k`, connecting first if needed; a failed connection is dropped.
async fn get(
    conns: &mut [Option<Conn>; 2],
    addrs: &[String; 2],
    k: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let conn = match &mut conns[k] {
        Some(c) => c,
        None => conns[k].insert(Conn::connect(&addrs[k]).await?),
    };
    let r = conn.get(path, headers).await;
    if r.is_err() {
        conns[k] = None;
    }
    r
}

/// One request: start on web process `s`, waiting polls on the other one until its end.
async fn one(
    t: &mut Tally,
    conns: &mut [Option<Conn>; 2],
    addrs: &[String; 2],
    s: usize,
    tag: &str,
) {
    let p = 1 - s;
    let began = Instant::now();
    let Ok(start) = get(conns, addrs, s, &format!("/echo?tag={tag}"), &[]).await else {
        t.start_io += 1;
        t.reconnects += 1;
        return;
    };
    if start.status == 500 {
        t.s500 += 1;
    }
    let credentials = match start.status {
        202 => start.credentials().ok(),
        _ => None,
    };
    let Some((id, token)) = credentials else {
        *t.start_refused.entry(start.status).or_default() += 1;
        return;
    };
    t.started += 1;
    let headers = [
        ("Async-Request-Id", id.as_str()),
        ("Async-Request-Token", token.as_str()),
        ("Prefer", "wait=10"),
    ];
    let mut errors = 0;
    loop {
        if began.elapsed() > GIVE_UP {
            t.gave_up += 1;
            return;
        }
        t.polls += 1;
        let Ok(r) = get(conns, addrs, p, "/echo", &headers).await else {
            errors += 1;
            t.reconnects += 1;
            if errors > RETRIES {
                t.gave_up += 1;
                return;
            }
            continue;
        };
        match r.status {
            202 => continue,
            200 => {
                match serde_json::from_slice::<(String, u32)>(&r.body) {
                    Ok((got, pid)) if got == tag => {
                        t.own += 1;
                        *t.by_pid.entry(pid).or_default() += 1;
                        t.latencies.push(began.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => t.cross += 1,
                }
                return;
            }
            422 => {
                t.failed += 1;
                return;
            }
            status => {
                if status == 500 {
                    t.s500 += 1;
                }
                *t.other.entry(status).or_default() += 1;
                return;
            }
        }
    }
}

/// The load process: `bench load cross --a ADDR --b ADDR --n N --concurrency C`; prints
/// `RESULT <json of Tally> <seconds>`.
pub(crate) async fn load(opts: &Opts) -> Result<(), BoxError> {
    let addrs = [
        opts.get("a").ok_or("--a")?.to_owned(),
        opts.get("b").ok_or("--b")?.to_owned(),
    ];
    let n = opts.num("n", 10_000) as usize;
    let lanes = opts.num("concurrency", CONCURRENCY as u64) as usize;
    // Tags unique to this run: no result of an earlier run can pass for one of ours.
    let nonce = format!("{:x}{:x}", std::process::id(), wall_ms() as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..lanes {
        let (addrs, next, nonce) = (addrs.clone(), next.clone(), nonce.clone());
        set.spawn(async move {
            let mut t = Tally::default();
            let mut conns = [None, None];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return t;
                }
                one(&mut t, &mut conns, &addrs, i % 2, &format!("{nonce}-{i}")).await;
            }
        });
    }
    let mut tally = Tally::default();
    while let Some(t) = set.join_next().await {
        tally.merge(t?);
    }
    let secs = began.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(
        &mut out,
        format!("RESULT {} {secs:.3}\n", serde_json::to_string(&tally)?).as_bytes(),
    )?;
    std::io::Write::flush(&mut out)?;
    Ok(())
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

/// Item 6: the runner's side.
pub(super) fn cross_processes(run: &mut Run) -> Result<(), BoxError> {
    let n: usize = if run.quick { 2_000 } else { 10_000 };
    let url = run.redis.url.clone();
    run.redis.cmd::<()>(&["FLUSHALL"])?;
    let (ttl, deadline) = (TTL_MS.to_string(), DEADLINE_MS.to_string());
    let common: [&str; 12] = [
        "--backend",
        "redis",
        "--redis",
        &url,
        "--prefix",
        PREFIX,
        "--ttl-ms",
        &ttl,
        "--deadline-ms",
        &deadline,
        "--echo",
        "1",
    ];
    let with = |first: &str, extra: &[&'static str]| -> Vec<String> {
        std::iter::once(first)
            .chain(common.iter().copied())
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    let serve = |args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run.serve(&a)
    };
    let (mut w1, _) = serve(with("worker", &[]))?;
    let (mut w2, _) = serve(with("worker", &[]))?;
    let (mut web1, a) = serve(with("ae", &["--workers", "off"]))?;
    let (mut web2, b) = serve(with("ae", &["--workers", "off"]))?;
    let s0 = run.redis.commandstats()?;
    let load = run.load(&[
        "cross",
        "--a",
        &a,
        "--b",
        &b,
        "--n",
        &n.to_string(),
        "--concurrency",
        &CONCURRENCY.to_string(),
    ])?;
    let out = load.finish()?;
    let s1 = run.redis.commandstats()?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("the load process printed no RESULT: {out:?}"))?;
    let (json, secs) = line.rsplit_once(' ').ok_or("bad RESULT line")?;
    let mut t: Tally = serde_json::from_str(json)?;
    let secs: f64 = secs.parse()?;
    let commands = crate::procs::delta(&s0, &s1).values().sum::<u64>() as f64 / n as f64;
    let live = run.redis.keys(&format!("{PREFIX}:*"))?.len();

    // Stop everything (SIGTERM; workers shut down gracefully), then let the TTL pass.
    let stopped_at = Instant::now();
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
    let pids = [(w1.pid(), "worker 1"), (w2.pid(), "worker 2")];
    drop((w1, w2, web1, web2));
    let wait = Duration::from_millis(TTL_MS + 2_000);
    std::thread::sleep(wait.saturating_sub(stopped_at.elapsed()));
    let left = run.redis.keys(&format!("{PREFIX}:*"))?;
    let dbsize: u64 = run.redis.cmd(&["DBSIZE"])?;
    let kinds: Vec<String> = left
        .iter()
        .map(|k| {
            let kind: String = run.redis.cmd(&["TYPE", k]).unwrap_or_default();
            let pttl: i64 = run.redis.cmd(&["PTTL", k]).unwrap_or(-3);
            let len: i64 = if kind == "stream" {
                run.redis.cmd(&["XLEN", k]).unwrap_or(-1)
            } else {
                -1
            };
            format!("`{k}` ({kind}, length {len}, PTTL {pttl} ms)")
        })
        .collect();
    log(&format!(
        "cross: {} own, {} lost, {} cross, {} × 500 of {n} in {secs:.1} s; {} keys left",
        t.own,
        t.lost(),
        t.cross,
        t.s500,
        left.len()
    ));

    let split: Vec<String> = t
        .by_pid
        .iter()
        .map(|(pid, c)| {
            let name = pids.iter().find(|(p, _)| p == pid).map_or_else(
                || format!("pid {pid} (not a worker!)"),
                |(_, n)| (*n).to_owned(),
            );
            format!("{name}: {c}")
        })
        .collect();
    let statuses = |m: &BTreeMap<u16, u64>| -> String {
        if m.is_empty() {
            "0".to_owned()
        } else {
            m.iter()
                .map(|(s, c)| format!("{c} × {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let (p50, p99) = (
        quantile(&mut t.latencies, 0.5),
        quantile(&mut t.latencies, 0.99),
    );
    let lost = t.lost();
    let md = &mut run.md;
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
    let _ = writeln!(md, "| what | measured |\n|---|---|");
    let _ = writeln!(md, "| requests | {n} ({} started with 202) |", t.started);
    let _ = writeln!(
        md,
        "| starts refused / without an answer | {} / {} |",
        statuses(&t.start_refused),
        t.start_io
    );
    let _ = writeln!(md, "| answered 200 with their own result | {} |", t.own);
    let _ = writeln!(
        md,
        "| answered with another request's result (or an unreadable one) | {} |",
        t.cross
    );
    let _ = writeln!(md, "| answered 422 | {} |", t.failed);
    let _ = writeln!(
        md,
        "| **lost** | **{lost}** (other final statuses: {}; given up: {}) |",
        statuses(&t.other),
        t.gave_up
    );
    let _ = writeln!(md, "| answers of 500 | {} |", t.s500);
    let _ = writeln!(
        md,
        "| total time | {secs:.2} s: **{:.0} requests/s** (start to final answer, {CONCURRENCY} in flight) |",
        n as f64 / secs
    );
    let _ = writeln!(
        md,
        "| start → result, p50 / p99 | {p50:.1} ms / {p99:.1} ms |"
    );
    let _ = writeln!(
        md,
        "| polls per request | {:.2} ({} reconnects) |",
        t.polls as f64 / t.started.max(1) as f64,
        t.reconnects
    );
    let _ = writeln!(
        md,
        "| Redis commands per request (commandstats Δ) | {commands:.1} |"
    );
    let _ = writeln!(md, "| jobs per worker process | {} |", split.join(", "));
    let _ = writeln!(
        md,
        "| keys under the prefix while live (right after the load) | {live} |"
    );
    let _ = writeln!(md, "| stop (SIGTERM) | {} |", stops.join("; "));
    let _ = writeln!(
        md,
        "| keys under the prefix after the TTL, processes stopped | **{}** {} (`DBSIZE` {dbsize}) |",
        left.len(),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(": {}", kinds.join(", "))
        }
    );
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
            n as f64 / secs
        ),
        ok,
    );
    run.goal(
        "across processes: 0 library keys left after the TTL (processes stopped)",
        {
            let records = left.iter().filter(|k| k.contains(":r:")).count();
            let streams: Vec<&str> = left
                .iter()
                .filter(|k| k.contains(":q:"))
                .map(String::as_str)
                .collect();
            format!(
                "{} left: {records} request records, {} queue streams{}",
                left.len(),
                streams.len(),
                if streams.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", streams.join(", "))
                }
            )
        },
        left.is_empty(),
    );
    Ok(())
}
