//! Item `cpu` (issue 15, item 4): the web process's CPU per poll beside a bare axum handler's,
//! over the same HTTP stack with the same client load.
//!
//! Every server runs for the whole item. Each row sends exactly `n` GETs (`bench load fixed`, a
//! process of its own, 8 keep-alive connections) and reads the server's CPU time before and
//! after: the sum over its threads of `/proc/<pid>/task/*/schedstat` (time on a CPU, ns). Rows
//! are measured in interleaved rounds, so background load hits them alike; CPU time is what the
//! server itself ran, so it moves far less with the machine's load than req/s does.
//!
//! Where valgrind is installed, each row is also counted in instructions: the server runs under
//! callgrind, is warmed up, its counters are dumped and zeroed (`callgrind_control -d`), `n_cg`
//! GETs are sent, and the second dump's total is divided by `n_cg`. Instruction counts do not
//! depend on the machine's load at all. Valgrind does not run the CPU's SHA extensions, so the
//! token's HMAC-SHA256 runs in software under callgrind; its share (the `compress256` function)
//! is shown apart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Creds, median, runtime, settle, start};
use crate::procs::{BoxError, Proc};
use crate::runner::{Run, log};
use crate::servers::FLOOR_KEY;

/// One measured endpoint: which server, which path, polled with which credentials.
struct Row {
    name: &'static str,
    /// Index into the servers.
    server: usize,
    path: &'static str,
    creds: Option<Creds>,
    /// Index of the row it is compared with.
    reference: Option<usize>,
}

/// A server of the item: its arguments to `bench serve`, and its process while it runs.
struct Server {
    args: Vec<String>,
    proc: Option<Proc>,
    addr: String,
}

const BARE: usize = 0;
const FLOOR: usize = 1;

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let n: usize = if run.quick { 5_000 } else { 20_000 };
    let rounds = if run.quick { 2 } else { 3 };
    run.redis.cmd::<()>(&["HSET", FLOOR_KEY, "s", "queued"])?;
    let url = run.redis.url.clone();
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let redis = |prefix: &str, extra: &[&str]| {
        let mut v = args(&[
            "ae",
            "--backend",
            "redis",
            "--redis",
            &url,
            "--prefix",
            prefix,
        ]);
        v.extend(args(extra));
        v
    };
    let mut servers = vec![
        Server::new(args(&["bare", "--redis", &url])),
        Server::new(redis("cpu", &[])),
        Server::new(redis("cpus", &["--workers", "off"])),
        Server::new(args(&["ae", "--backend", "memory"])),
        Server::new(args(&["ae", "--backend", "memory", "--workers", "off"])),
    ];
    for s in &mut servers {
        s.start(run, false)?;
    }
    let rt = runtime()?;
    let mut rows = rows(&rt, &servers)?;

    // Wall-clock CPU, interleaved rounds.
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    // Redis's own time per request (commandstats `usec` Δ), per round.
    let mut redis_us: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for round in 0..rounds {
        for (i, row) in rows.iter().enumerate() {
            let server = &servers[row.server];
            let pid = server.proc.as_ref().ok_or("server not running")?.pid();
            if round == 0 {
                fixed(run, &server.addr, row, n / 4)?;
            }
            let (before, usec0) = (cpu_ns(pid)?, run.redis.command_usec()?);
            fixed(run, &server.addr, row, n)?;
            let (after, usec1) = (cpu_ns(pid)?, run.redis.command_usec()?);
            cpu[i].push(after.saturating_sub(before) as f64 / n as f64 / 1000.0);
            redis_us[i].push(usec1.saturating_sub(usec0) as f64 / n as f64);
        }
    }
    for s in &mut servers {
        s.proc = None;
    }

    // Instruction counts under callgrind, when valgrind is there.
    let n_cg = if run.quick { 1_000 } else { 3_000 };
    let counted = if has_valgrind() {
        match count_instructions(run, &mut servers, &mut rows, n_cg) {
            Ok(c) => Some(c),
            Err(e) => {
                log(&format!("cpu: instruction counts not measured: {e}"));
                None
            }
        }
    } else {
        log("cpu: valgrind not found, instruction counts not measured");
        None
    };
    write(
        run,
        &rows,
        &cpu,
        &redis_us,
        counted.as_deref(),
        n,
        n_cg,
        rounds,
    );
    Ok(())
}

impl Server {
    fn new(args: Vec<String>) -> Server {
        Server {
            args,
            proc: None,
            addr: String::new(),
        }
    }

    /// Starts it (under callgrind when `counted`), waiting for its `READY`.
    fn start(&mut self, run: &Run, counted: bool) -> Result<(), BoxError> {
        let exe = std::env::current_exe()?;
        let mut cmd = if counted {
            let mut c = Command::new("valgrind");
            c.args([
                "--tool=callgrind",
                "--compress-strings=no",
                "--compress-pos=no",
            ])
            .arg(format!(
                "--callgrind-out-file={}",
                run.tmp.join("callgrind.%p.out").display()
            ))
            .arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.arg("serve").args(&self.args);
        let mut p = run.spawn(cmd, &self.args[0])?;
        let port = p.expect("READY")?;
        self.addr = format!("127.0.0.1:{port}");
        self.proc = Some(p);
        Ok(())
    }
}

/// The rows, with the requests they poll (started on the servers now running).
fn rows(rt: &tokio::runtime::Runtime, s: &[Server]) -> Result<Vec<Row>, BoxError> {
    let done = |addr: &str| -> Result<Creds, BoxError> {
        let creds = start(rt, addr, "/noop")?;
        settle(rt, addr, "/noop", &creds)?;
        Ok(creds)
    };
    let row = |name, server, path, creds, reference| Row {
        name,
        server,
        path,
        creds,
        reference,
    };
    Ok(vec![
        row("(a) bare axum JSON handler", 0, "/bare", None, None),
        row(
            "(b) floor: axum handler reading one Redis hash field",
            0,
            "/floor",
            None,
            Some(BARE),
        ),
        row(
            "(c) Redis backend: poll, pending",
            1,
            "/park",
            Some(start(rt, &s[1].addr, "/park")?),
            Some(FLOOR),
        ),
        row(
            "(d) Redis backend: poll, done",
            1,
            "/noop",
            Some(done(&s[1].addr)?),
            Some(FLOOR),
        ),
        row("(e) Redis backend: start", 2, "/noop", None, Some(FLOOR)),
        row(
            "(f) memory backend: poll, pending",
            3,
            "/park",
            Some(start(rt, &s[3].addr, "/park")?),
            Some(BARE),
        ),
        row(
            "(g) memory backend: poll, done",
            3,
            "/noop",
            Some(done(&s[3].addr)?),
            Some(BARE),
        ),
        row("(h) memory backend: start", 4, "/noop", None, Some(BARE)),
    ])
}

/// Exactly `n` GETs of the row from a load process of its own.
fn fixed(run: &Run, addr: &str, row: &Row, n: usize) -> Result<(), BoxError> {
    let n = n.to_string();
    let mut args = vec![
        "fixed", "--addr", addr, "--path", row.path, "--n", &n, "--conns", "8",
    ];
    if let Some((id, token)) = &row.creds {
        args.extend(["--id", id, "--token", token]);
    }
    let load = run.load(&args)?;
    let out = load.finish()?;
    if !out.contains("DONE") {
        return Err(format!("load on {} did not finish: {out}", row.path).into());
    }
    Ok(())
}

/// Time the process's threads have run on a CPU, ns (`/proc/<pid>/task/*/schedstat`).
fn cpu_ns(pid: u32) -> Result<u64, BoxError> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

fn has_valgrind() -> bool {
    ["valgrind", "callgrind_control"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Per row: (instructions per request, of which SHA-256 compression).
type Counted = Vec<(f64, f64)>;

fn count_instructions(
    run: &Run,
    servers: &mut [Server],
    rows: &mut [Row],
    n: usize,
) -> Result<Counted, BoxError> {
    let rt = runtime()?;
    let mut counted = Vec::new();
    for (i, server) in servers.iter_mut().enumerate() {
        server.start(run, true)?;
        // The polled requests live in the server's process (memory) or under its prefix: start
        // them again on this run's server.
        for row in rows
            .iter_mut()
            .filter(|r| r.server == i && r.creds.is_some())
        {
            row.creds = Some(if row.path == "/park" {
                start(&rt, &server.addr, "/park")?
            } else {
                let creds = start(&rt, &server.addr, "/noop")?;
                settle(&rt, &server.addr, "/noop", &creds)?;
                creds
            });
        }
        let pid = server.proc.as_ref().ok_or("server not running")?.pid();
        for (r, row) in rows.iter().enumerate().filter(|(_, r)| r.server == i) {
            fixed(run, &server.addr, row, n / 4)?;
            dump(&run.tmp, pid)?;
            fixed(run, &server.addr, row, n)?;
            let file = dump(&run.tmp, pid)?;
            let (total, sha) = totals(&file)?;
            counted.push((r, (total as f64 / n as f64, sha as f64 / n as f64)));
        }
        server.proc = None;
    }
    counted.sort_by_key(|(r, _)| *r);
    Ok(counted.into_iter().map(|(_, c)| c).collect())
}

/// Dumps and zeroes the callgrind counters of `pid`; returns the new dump's file (in `dir`).
fn dump(dir: &Path, pid: u32) -> Result<PathBuf, BoxError> {
    let prefix = format!("callgrind.{pid}.out.");
    let newest = || -> Result<Option<(u32, PathBuf)>, BoxError> {
        Ok(std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let k: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
                Some((k, e.path()))
            })
            .max_by_key(|(k, _)| *k))
    };
    let last = newest()?.map_or(0, |(k, _)| k);
    let out = Command::new("callgrind_control")
        .args(["-d", &pid.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "callgrind_control -d {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let t = Instant::now();
    loop {
        // A dump is complete once its closing `totals:` line is written.
        if let Some((k, path)) = newest()? {
            if k > last && totals(&path).is_ok() {
                return Ok(path);
            }
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err(format!("no callgrind dump of {pid}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A callgrind dump's total instructions, and those spent in SHA-256's compression function
/// (self cost of every function whose name has `sha256::compress256`).
fn totals(file: &Path) -> Result<(u64, u64), BoxError> {
    let text = std::fs::read_to_string(file)?;
    let mut total = None;
    let mut sha = 0u64;
    let (mut in_sha, mut call_line) = (false, false);
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("totals:") {
            total = v.trim().parse::<u64>().ok();
        } else if let Some(name) = line.strip_prefix("fn=") {
            in_sha = name.contains("sha256::compress256");
            call_line = false;
        } else if line.starts_with("calls=") {
            // The next cost line is the call's inclusive cost, not the function's own.
            call_line = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            if call_line {
                call_line = false;
            } else if in_sha {
                sha += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Ok((total.ok_or("no total in the callgrind dump")?, sha))
}

#[allow(clippy::too_many_arguments)]
fn write(
    run: &mut Run,
    rows: &[Row],
    cpu: &[Vec<f64>],
    redis_us: &[Vec<f64>],
    counted: Option<&[(f64, f64)]>,
    n: usize,
    n_cg: usize,
    rounds: usize,
) {
    let ratio =
        |i: usize, j: usize| median(cpu[i].iter().zip(&cpu[j]).map(|(a, b)| a / b).collect());
    let md = &mut run.md;
    let _ = writeln!(md, "\n## 9. CPU per request (web process)\n");
    let _ = writeln!(
        md,
        "Each row: exactly {n} GETs over 8 keep-alive connections from a load process of its own, and the \
         server's CPU time over them (sum of its threads' `/proc/<pid>/task/*/schedstat` run time), in {rounds} \
         interleaved rounds (median shown; ratio = median of the rounds' ratios). Redis rows are set beside the \
         floor (a bare axum handler reading one Redis hash field over the same `redis` connection kind), memory \
         rows beside the bare JSON handler. Redis µs / request: Redis's own time executing commands \
         (`INFO commandstats` `usec` Δ / requests; a script's time includes the commands it runs, which \
         commandstats also counts on their own, so rows that run Lua are overstated by those). \
         Instructions: the same server under callgrind, {n_cg} GETs after a warm-up, total instructions \
         of the process / {n_cg} (independent of the machine's load); valgrind runs no SHA extension, \
         so the token's HMAC-SHA256 runs in software there (its `compress256` share is the next column; \
         natively, on a CPU with SHA extensions, the `sha2` crate uses them and that work costs far \
         less).\n"
    );
    let _ = writeln!(
        md,
        "| endpoint | CPU µs / request | ratio (median of rounds) | per round µs | Redis µs / request | instructions / request | of which SHA-256 (software) | instructions ratio | instructions ratio without SHA-256 |"
    );
    let _ = writeln!(md, "|---|---:|---|---|---:|---:|---:|---|---|");
    for (i, row) in rows.iter().enumerate() {
        let each: Vec<String> = cpu[i].iter().map(|v| format!("{v:.1}")).collect();
        let r = row.reference.map_or(String::new(), |j| {
            format!("{:.2} × {}", ratio(i, j), short(rows[j].name))
        });
        let (ir, sha, ir_ratio, ir_ratio_no_sha) = match counted {
            Some(c) => {
                let (ir, sha) = c[i];
                let rr = row
                    .reference
                    .map_or(String::new(), |j| format!("{:.2} ×", ir / c[j].0));
                let rn = row.reference.map_or(String::new(), |j| {
                    format!("{:.2} ×", (ir - sha) / (c[j].0 - c[j].1))
                });
                (format!("{ir:.0}"), format!("{sha:.0}"), rr, rn)
            }
            None => ("–".into(), "–".into(), String::new(), String::new()),
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {r} | {} | {:.2} | {ir} | {sha} | {ir_ratio} | {ir_ratio_no_sha} |",
            row.name,
            median(cpu[i].clone()),
            each.join(", "),
            median(redis_us[i].clone())
        );
    }
    let goals = [
        ("memory poll (pending)", 5, BARE),
        ("memory poll (done)", 6, BARE),
        ("Redis poll (pending)", 2, FLOOR),
        ("Redis poll (done)", 3, FLOOR),
    ];
    for (what, i, j) in goals {
        let r = ratio(i, j);
        let reference = short(rows[j].name);
        let counted = counted.map_or(String::new(), |c| {
            format!("; instructions {:.2} ×", c[i].0 / c[j].0)
        });
        run.goal(
            &format!("CPU per request: {what} ≤ 1.1 × {reference}"),
            format!(
                "{r:.2} × ({:.1} vs {:.1} µs{counted})",
                median(cpu[i].clone()),
                median(cpu[j].clone())
            ),
            r <= 1.1,
        );
    }
}

/// `bare` or `floor`, for the ratio column.
fn short(name: &str) -> &'static str {
    if name.contains("floor") {
        "floor"
    } else {
        "bare"
    }
}
