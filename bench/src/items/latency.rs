//! Item `latency` (issue 15, item 5): enqueue-to-start latency across processes, ours (Redis
//! backend) beside apalis-redis: from the moment another process enqueues a job to the first line
//! of its task in a worker process, at idle and behind a 10,000-job backlog.
//!
//! Ours: the runner starts a `mark` request on a web-only process over HTTP, with the wall-clock
//! time just before the request in its tag; the task's first line in the worker-only process
//! prints `STARTED <tag> <wall µs>`. apalis: its peer pushes a job whose id carries the wall-clock
//! time just before the push; its worker's handler prints the same line first. Both workers run
//! with the settings of the throughput item (ours: concurrency 64; apalis: concurrency 64, batch
//! 100, poll interval 100 ms).
//!
//! Idle: one job at a time, each after the previous one started. Backlog: 10,000 jobs of the same
//! task are queued while no worker runs; the worker is started, and as soon as the backlog starts
//! to drain one timed job is enqueued behind what is left of it (both queues are FIFO, so its wait
//! is the time to drain the jobs ahead: this row measures draining, not a fetch delay). One timed
//! job per round.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::throughput::build_apalis;
use super::{quantile, runtime, start, starts};
use crate::procs::{BoxError, Proc};
use crate::runner::{Run, log};
use crate::servers::wall_us;

/// The backlogs: the 10,000, and 7,000, below the ≈ 8,000 queued jobs at which
/// apalis-redis's worker exits (DESIGN.md §6), so both systems have a figure.
const BACKLOGS: [usize; 2] = [10_000, 7_000];
/// apalis's settings (as in the throughput item).
const APALIS: [&str; 3] = ["64", "100", "100"];

/// One system's figures.
#[derive(Default)]
struct Figures {
    idle: Vec<f64>,
    /// Per backlog: (latency ms, jobs still queued ahead when it was enqueued) of each round.
    backlog: Vec<Vec<(f64, u64)>>,
    /// Per backlog: why its measurement stopped, if it did.
    error: Vec<Option<String>>,
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let samples = if run.quick { 50 } else { 200 };
    let rounds = if run.quick { 2 } else { 5 };
    let ours = ours(run, samples, rounds)?;
    let apalis = match build_apalis() {
        Ok(peer) => apalis(run, &peer, samples, rounds),
        Err(e) => Figures {
            error: vec![Some(format!("the apalis peer did not build: {e}")); BACKLOGS.len()],
            ..Figures::default()
        },
    };
    write(run, &ours, &apalis, samples, rounds);
    Ok(())
}

/// The `STARTED <tag> <wall µs> …` lines of a worker, kept by tag: a job that starts out of
/// order is found later.
struct Starts {
    lines: Receiver<String>,
    /// Tag → latency ms (wall µs of the start − the wall µs at the tag's end).
    seen: HashMap<String, f64>,
}

impl Starts {
    fn new(lines: Receiver<String>) -> Starts {
        Starts {
            lines,
            seen: HashMap::new(),
        }
    }

    /// The latency of the job whose tag starts with `tag`, reading lines for at most `within`.
    fn wait(&mut self, tag: &str, within: Duration) -> Result<f64, BoxError> {
        let until = Instant::now() + within;
        loop {
            if let Some((_, ms)) = self.seen.iter().find(|(t, _)| t.starts_with(tag)) {
                return Ok(*ms);
            }
            let left = until.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| format!("no start of {tag} within {} s", within.as_secs()))?;
            let f: Vec<&str> = line.split_whitespace().collect();
            if let ["STARTED", t, at, ..] = f.as_slice() {
                let enqueued: u64 = t.rsplit('-').next().unwrap_or("").parse()?;
                let at: u64 = at.parse()?;
                let ms = at.saturating_sub(enqueued) as f64 / 1000.0;
                self.seen.entry((*t).to_owned()).or_insert(ms);
            }
        }
    }
}

fn ours(run: &Run, samples: usize, rounds: usize) -> Result<Figures, BoxError> {
    let rt = runtime()?;
    let mut figures = Figures::default();
    // Idle.
    {
        let prefix = "lat";
        let (_web, addr) = run.serve_redis("ae", prefix, &["--workers", "off", "--mark", "1"])?;
        let (mut worker, _) = run.serve_redis("worker", prefix, &["--mark", "1"])?;
        let mut starts = Starts::new(worker.lines());
        for i in 0..samples + 10 {
            let tag = format!("m-{i}-");
            let path = format!("/mark?tag={tag}{}", wall_us());
            start(&rt, &addr, &path)?;
            let ms = starts.wait(&tag, Duration::from_secs(10))?;
            // The first ten warm up connections.
            if i >= 10 {
                figures.idle.push(ms);
            }
        }
    }
    // Behind a backlog.
    for backlog in BACKLOGS {
        let mut measured = Vec::new();
        for round in 0..rounds {
            measured.push(ours_behind(run, &rt, backlog, round)?);
        }
        figures.backlog.push(measured);
        figures.error.push(None);
    }
    Ok(figures)
}

/// One timed job of ours behind `backlog` queued jobs: (latency ms, jobs ahead).
fn ours_behind(
    run: &Run,
    rt: &tokio::runtime::Runtime,
    backlog: usize,
    round: usize,
) -> Result<(f64, u64), BoxError> {
    let prefix = format!("latb{backlog}r{round}");
    let stream = format!("{prefix}:q:mark");
    let (_web, addr) = run.serve_redis("ae", &prefix, &["--workers", "off", "--mark", "1"])?;
    starts(&addr, "/mark?tag=b", backlog, 16)?;
    let queued = || run.redis.cmd::<u64>(&["XLEN", &stream]);
    let (mut worker, _) = run.serve_redis("worker", &prefix, &["--mark", "1"])?;
    let mut started = Starts::new(worker.lines());
    let t = Instant::now();
    while queued()? >= backlog as u64 {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("our worker did not start draining the backlog in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let tag = format!("m-{round}-");
    let ahead = queued()?;
    start(rt, &addr, &format!("/mark?tag={tag}{}", wall_us()))?;
    let ms = started.wait(&tag, Duration::from_secs(120))?;
    Ok((ms, ahead))
}

fn apalis(run: &Run, peer: &Path, samples: usize, rounds: usize) -> Figures {
    let mut figures = Figures::default();
    if let Err(e) = apalis_idle(run, peer, samples, &mut figures) {
        log(&format!("latency: apalis at idle stopped: {e}"));
    }
    for backlog in BACKLOGS {
        let mut measured = Vec::new();
        let mut error = None;
        for round in 0..rounds {
            match apalis_behind(run, peer, backlog, round) {
                Ok(m) => measured.push(m),
                Err(e) => {
                    log(&format!("latency: apalis behind {backlog}: {e}"));
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        figures.backlog.push(measured);
        figures.error.push(error);
    }
    figures
}

/// Jobs apalis recorded done (members of its `done` key, whatever its type; 0 before it exists).
fn done_count(run: &Run, key: &str) -> Result<u64, BoxError> {
    let kind: String = run.redis.cmd(&["TYPE", key])?;
    let card = match kind.as_str() {
        "zset" => "ZCARD",
        "set" => "SCARD",
        "list" => "LLEN",
        "none" => return Ok(0),
        other => return Err(format!("{key} is a {other}").into()),
    };
    run.redis.cmd(&[card, key])
}

fn apalis_worker(run: &Run, peer: &Path, queue: &str) -> Result<Proc, BoxError> {
    let mut cmd = Command::new(peer);
    cmd.args(["work", &run.redis.url, queue]).args(APALIS);
    let mut worker = run.spawn(cmd, "apalis")?;
    worker.expect("READY")?;
    Ok(worker)
}

fn apalis_marks(
    run: &Run,
    peer: &Path,
    queue: &str,
    n: usize,
    gap_ms: u64,
) -> Result<(), BoxError> {
    let out = Command::new(peer)
        .args([
            "marks",
            &run.redis.url,
            queue,
            &n.to_string(),
            &gap_ms.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!("apalis marks: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Idle: the peer pushes one job every 250 ms (more than the poll interval, so each waits
/// alone), from a process of its own.
fn apalis_idle(
    run: &Run,
    peer: &Path,
    samples: usize,
    figures: &mut Figures,
) -> Result<(), BoxError> {
    let queue = "bench-lat";
    let mut worker = apalis_worker(run, peer, queue)?;
    let mut starts = Starts::new(worker.lines());
    let n = samples + 10;
    let pusher = {
        let (peer, url) = (peer.to_owned(), run.redis.url.clone());
        std::thread::spawn(move || {
            Command::new(peer)
                .args(["marks", &url, queue, &n.to_string(), "250"])
                .output()
        })
    };
    for i in 0..n {
        // Jobs may start out of order; a job not started 60 s after its push is missing.
        let ms = starts.wait(&format!("m-{i}-"), Duration::from_secs(60))?;
        if i >= 10 {
            figures.idle.push(ms);
        }
    }
    let _ = pusher.join();
    Ok(())
}

/// One timed apalis job behind `backlog` jobs pushed while no worker ran: (latency ms, jobs
/// ahead). An error says why there is none (its worker exits above ≈ 8,000 queued jobs).
fn apalis_behind(
    run: &Run,
    peer: &Path,
    backlog: usize,
    round: usize,
) -> Result<(f64, u64), BoxError> {
    let queue = format!("bench-latb{backlog}r{round}");
    let out = Command::new(peer)
        .args(["push", &run.redis.url, &queue, &backlog.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!("apalis push: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let done_key = format!("{queue}:done");
    let done = || done_count(run, &done_key).unwrap_or(0);
    let mut worker = apalis_worker(run, peer, &queue)?;
    let mut started = Starts::new(worker.lines());
    let exited = |worker: &mut Proc, when: &str| -> Option<String> {
        let status = worker.child.try_wait().ok().flatten()?;
        Some(format!(
            "its worker exited ({status}) {when}{}",
            last_log_line(run, "apalis")
                .map(|l| format!(": \"{l}\""))
                .unwrap_or_default()
        ))
    };
    let t = Instant::now();
    while done() == 0 {
        if let Some(e) = exited(
            &mut worker,
            &format!("with {backlog} jobs queued, before running one"),
        ) {
            return Err(e.into());
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err("its worker ran no job of the backlog in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let ahead = (backlog as u64).saturating_sub(done());
    apalis_marks(run, peer, &queue, 1, 0)?;
    match started.wait("m-0-", Duration::from_secs(120)) {
        Ok(ms) => Ok((ms, ahead)),
        Err(e) => Err(exited(
            &mut worker,
            &format!("behind a {backlog}-job backlog after {} jobs", done()),
        )
        .map_or(e, BoxError::from)),
    }
}

/// The last line of the newest log of a process named `name` in the run's directory.
fn last_log_line(run: &Run, name: &str) -> Option<String> {
    let suffix = format!("-{name}.log");
    let newest = std::fs::read_dir(&run.tmp)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let n: u32 = file.strip_suffix(&suffix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)?;
    let text = std::fs::read_to_string(newest.1).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.trim().chars().take(200).collect())
}

fn write(run: &mut Run, ours: &Figures, apalis: &Figures, samples: usize, rounds: usize) {
    let stats = |v: &[f64]| -> (String, String) {
        if v.is_empty() {
            return ("–".into(), "–".into());
        }
        let mut v = v.to_vec();
        (
            format!("{:.2}", quantile(&mut v, 0.5)),
            format!("{:.2}", quantile(&mut v, 0.99)),
        )
    };
    let md = &mut run.md;
    let _ = writeln!(
        md,
        "\n## 10. Enqueue-to-start latency across processes (Redis)\n"
    );
    let _ = writeln!(
        md,
        "From the moment another process enqueues a job to the first line of its task in a worker process \
         (wall clock, one machine). Ours: the runner starts a request over HTTP on a web-only process (the time \
         is taken just before the request, so the HTTP hop is included); a worker-only process runs it. apalis \
         1.0 + apalis-redis: its peer pushes the job from a process of its own (time taken just before \
         `push`); its worker runs with the throughput item's settings (concurrency 64, batch 100, poll interval \
         100 ms). Idle: {samples} jobs, one at a time (ours: each after the previous started; apalis: one every \
         250 ms). Behind a backlog: that many jobs of the same task are queued while no worker runs, the worker \
         is started, and as soon as it has run its first job one timed job is enqueued behind the rest; {rounds} \
         rounds, one timed job each, so p99 is the worst of {rounds}. Both queues are FIFO: behind a backlog the \
         wait is the time to drain what is ahead of the job (a measure of draining, not of a fetch delay).\n"
    );
    let _ = writeln!(
        md,
        "| system | when | median ms | p99 ms | jobs ahead when enqueued (per round) | note |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---|---|");
    for (name, f) in [
        ("async-endpoint (Redis backend)", ours),
        ("apalis 1.0 + apalis-redis", apalis),
    ] {
        let (i50, i99) = stats(&f.idle);
        let _ = writeln!(md, "| {name} | idle | {i50} | {i99} | | |");
        for (b, backlog) in BACKLOGS.iter().enumerate() {
            let measured = f.backlog.get(b).map_or(&[][..], Vec::as_slice);
            let lat: Vec<f64> = measured.iter().map(|m| m.0).collect();
            let (b50, b99) = stats(&lat);
            let ahead: Vec<String> = measured.iter().map(|m| m.1.to_string()).collect();
            let note = f.error.get(b).cloned().flatten().unwrap_or_default();
            let _ = writeln!(
                md,
                "| {name} | behind {backlog} queued jobs | {b50} | {b99} | {} | {note} |",
                ahead.join(", ")
            );
        }
    }
}
