//! Item `takeover` (issue 15, item 7): how long after a worker process is killed with SIGKILL
//! its running jobs run again in another worker, with the default `takeover_after` (5 s).
//!
//! Real processes on the run's private redis-server: a web process (`in_process_workers(false)`)
//! starts jobs of the `mark` task, whose first line prints `STARTED <tag> <wall µs> <pid>` and
//! which then holds for two minutes. Worker A (a worker-only process) takes them all; worker B
//! is started and left running beside the live A for longer than `takeover_after` (none of A's
//! jobs may start in B meanwhile: a live worker's jobs are never taken); then A gets SIGKILL.
//! Takeover time of a job = its `STARTED` line in B − the kill (wall clock, one machine).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::{median, runtime, start};
use crate::procs::BoxError;
use crate::runner::Run;
use crate::servers::wall_us;

/// The library's default `takeover_after`.
const TAKEOVER_AFTER: Duration = Duration::from_secs(5);

/// One round: jobs A held, when each ran again in B (s after the kill), and B's starts of A's
/// jobs while A was alive.
struct Round {
    held: usize,
    again: Vec<f64>,
    while_alive: usize,
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let jobs = if run.quick { 8 } else { 20 };
    let rounds = if run.quick { 1 } else { 3 };
    let rt = runtime()?;
    let mut measured = Vec::new();
    for round in 0..rounds {
        let prefix = format!("tko{round}");
        let mark = ["--mark", "1"];
        let (_web, addr) = run.serve_redis("ae", &prefix, &["--workers", "off", "--mark", "1"])?;
        let (mut a, _) = run.serve_redis("worker", &prefix, &mark)?;
        let a_lines = a.lines();
        let tags: Vec<String> = (0..jobs).map(|i| format!("m-{round}-{i}")).collect();
        for tag in &tags {
            start(&rt, &addr, &format!("/mark?tag={tag}&hold_ms=120000"))?;
        }
        let in_a = started(&a_lines, jobs, Duration::from_secs(60))?;
        if in_a.len() < jobs {
            return Err(format!("worker A started {} of {jobs} jobs", in_a.len()).into());
        }
        let (mut b, _) = run.serve_redis("worker", &prefix, &mark)?;
        let b_lines = b.lines();
        // B beside the live A for longer than takeover_after: it must take none of A's jobs.
        let early = started(&b_lines, jobs, TAKEOVER_AFTER + Duration::from_secs(2))?;
        let killed_at = wall_us();
        a.kill()?;
        let later = started(&b_lines, jobs - early.len(), Duration::from_secs(60))?;
        let again: Vec<f64> = later
            .values()
            .map(|&at| at.saturating_sub(killed_at) as f64 / 1e6)
            .collect();
        crate::runner::log(&format!(
            "takeover round {round}: {} of {jobs} jobs ran again, last after {:.2} s",
            again.len(),
            again.iter().copied().fold(0.0, f64::max)
        ));
        measured.push(Round {
            held: in_a.len(),
            again,
            while_alive: early.len(),
        });
        drop(b);
    }
    write(run, &measured, jobs);
    Ok(())
}

/// `STARTED` lines from `lines` until `n` distinct tags have started or `within` passes: tag →
/// wall µs of its first start.
fn started(
    lines: &Receiver<String>,
    n: usize,
    within: Duration,
) -> Result<BTreeMap<String, u64>, BoxError> {
    let until = Instant::now() + within;
    let mut seen = BTreeMap::new();
    while seen.len() < n {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let Ok(line) = lines.recv_timeout(left) else {
            break;
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if let ["STARTED", tag, at, _pid] = f.as_slice() {
            let at: u64 = at.parse()?;
            seen.entry((*tag).to_owned()).or_insert(at);
        }
    }
    Ok(seen)
}

fn write(run: &mut Run, rounds: &[Round], jobs: usize) {
    let md = &mut run.md;
    let _ = writeln!(md, "\n## 11. Takeover after SIGKILL (Redis backend)\n");
    let _ = writeln!(
        md,
        "Real processes on the run's private redis-server, default settings (`takeover_after` {} s). A web \
         process starts {jobs} jobs that hold for two minutes; worker process A takes them all (each job's first \
         line prints its start with the wall-clock time). Worker process B is started and runs beside the live A \
         for {} s (longer than `takeover_after`): none of A's jobs may start in B. Then A gets SIGKILL; takeover \
         time = the job's start in B − the kill. A job counts as taken over when it runs again (the job of a \
         killed worker cannot have finished: it holds for two minutes).\n",
        TAKEOVER_AFTER.as_secs(),
        TAKEOVER_AFTER.as_secs() + 2
    );
    let _ = writeln!(
        md,
        "| round | jobs held by A | started in B while A lived | running again in B | first s | median s | all running again after s |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
    let mut worst: f64 = 0.0;
    let mut all = true;
    let mut alive_claims = 0;
    for (i, r) in rounds.iter().enumerate() {
        let first = r.again.iter().copied().fold(f64::INFINITY, f64::min);
        let last = r.again.iter().copied().fold(0.0, f64::max);
        let complete = r.again.len() + r.while_alive >= r.held && r.while_alive == 0;
        all &= complete;
        alive_claims += r.while_alive;
        worst = worst.max(last);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {first:.2} | {:.2} | {} |",
            i + 1,
            r.held,
            r.while_alive,
            r.again.len(),
            median(r.again.clone()),
            if complete {
                format!("{last:.2}")
            } else {
                format!("not all: {last:.2} for those that did")
            }
        );
    }
    run.goal(
        "Redis: a SIGKILLed worker's running jobs run again in another worker within 5 s (default takeover_after)",
        format!(
            "{worst:.2} s at worst over {} rounds of {jobs} jobs{}",
            rounds.len(),
            if all { "" } else { "; NOT every job ran again" }
        ),
        all && worst <= TAKEOVER_AFTER.as_secs_f64(),
    );
    run.goal(
        "Redis: a live worker's job is never taken (B beside the live A for longer than takeover_after)",
        format!("{alive_claims} taken"),
        alive_claims == 0,
    );
}
