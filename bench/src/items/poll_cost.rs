//! Item 1: poll cost. Every server runs at once and the rows are measured in interleaved rounds,
//! so a change in the machine's background load hits every row alike; the table shows medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tokio::runtime::Runtime;

use super::{Creds, median, per, poll_headers, runtime, sequential, settle, start};
use crate::procs::{BoxError, Proc, Wrk, delta, wrk};
use crate::runner::Run;
use crate::servers::FLOOR_KEY;

/// The servers of the item, all running for its whole length.
struct Servers {
    bare: String,
    /// Redis backend with in-process workers: pending = a running `park`, done = a `noop`.
    redis: String,
    /// Redis backend, web only: the job of a start stays queued, so the start is measured alone.
    redis_web: String,
    memory: String,
    memory_web: String,
    _procs: Vec<Proc>,
}

/// The requests the polls read: one pending and one done per backend.
struct Polled {
    redis_pending: Creds,
    redis_done: Creds,
    memory_pending: Creds,
    memory_done: Creds,
}

/// One measured endpoint.
struct Row {
    name: &'static str,
    short: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    /// Index of the row it is compared with.
    reference: Option<usize>,
}

/// Indices of the reference rows.
const BARE: usize = 0;
const FLOOR: usize = 1;

/// The rows and their wrk runs, one per round.
struct Table {
    rows: Vec<Row>,
    wrk: Vec<Vec<Wrk>>,
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let rt = runtime()?;
    let rounds = if run.quick { 2 } else { 5 };
    run.redis.cmd::<()>(&["HSET", FLOOR_KEY, "s", "queued"])?;
    let servers = start_servers(run)?;
    let polled = Polled {
        redis_pending: start(&rt, &servers.redis, "/park")?,
        redis_done: done(&rt, &servers.redis)?,
        memory_pending: start(&rt, &servers.memory, "/park")?,
        memory_done: done(&rt, &servers.memory)?,
    };
    // Commands and round trips per operation, and record sizes, before the load.
    let n = if run.quick { 200 } else { 1000 };
    let cmds = commands_per_op(run, &rt, &servers, &polled, n)?;
    let sizes = record_sizes(run, &rt, &servers, &polled)?;
    let rows = rows(&servers, &polled);
    let wrk = measure_rounds(run, &rows, rounds)?;
    let table = Table { rows, wrk };
    write_table(run, &table, rounds);
    write_commands(&mut run.md, n, &cmds);
    run.figures.poll = (0..table.rows.len())
        .map(|i| (table.rows[i].short.to_owned(), table.col(i, |w| w.rps)))
        .collect();
    goals(run, &table);
    run.footprint_redis = Some(sizes);
    Ok(())
}

fn start_servers(run: &Run) -> Result<Servers, BoxError> {
    let url = run.redis.url.clone();
    let mut procs = Vec::new();
    let mut keep = |server: Result<(Proc, String), BoxError>| {
        server.map(|(p, addr)| {
            procs.push(p);
            addr
        })
    };
    Ok(Servers {
        bare: keep(run.serve(&["bare", "--redis", &url]))?,
        redis: keep(run.serve_redis("ae", "bp", &[]))?,
        redis_web: keep(run.serve_redis("ae", "bs", &["--workers", "off"]))?,
        memory: keep(run.serve(&["ae", "--backend", "memory"]))?,
        memory_web: keep(run.serve(&["ae", "--backend", "memory", "--workers", "off"]))?,
        _procs: procs,
    })
}

/// A finished `noop` request.
fn done(rt: &Runtime, addr: &str) -> Result<Creds, BoxError> {
    let creds = start(rt, addr, "/noop")?;
    settle(rt, addr, "/noop", &creds)?;
    Ok(creds)
}

/// Per operation on the Redis backend, `n` of each: (operation, commands, round trips).
fn commands_per_op(
    run: &Run,
    rt: &Runtime,
    s: &Servers,
    p: &Polled,
    n: usize,
) -> Result<Vec<(&'static str, String, String)>, BoxError> {
    let mut cmds = Vec::new();
    for (what, addr, path, creds) in [
        ("start", &s.redis_web, "/noop", None),
        ("poll, pending", &s.redis, "/park", Some(&p.redis_pending)),
        ("poll, done", &s.redis, "/noop", Some(&p.redis_done)),
    ] {
        let before = run.redis.commandstats()?;
        let mon = run.redis.monitor()?;
        sequential(rt, addr, path, creds, n)?;
        let m = mon.stop();
        let after = run.redis.commandstats()?;
        cmds.push((what, per(&delta(&before, &after), n), round_trips(&m, n)));
    }
    Ok(cmds)
}

/// Commands the server process sent (MONITOR lines not from a script), per operation.
fn round_trips(m: &BTreeMap<(bool, String), u64>, n: usize) -> String {
    let client: BTreeMap<String, u64> = m
        .iter()
        .filter(|((lua, _), _)| !lua)
        .map(|((_, k), v)| (k.clone(), *v))
        .collect();
    per(&client, n)
}

/// `MEMORY USAGE` of a queued, a running and a done record.
fn record_sizes(
    run: &Run,
    rt: &Runtime,
    s: &Servers,
    p: &Polled,
) -> Result<(u64, u64, u64), BoxError> {
    let queued = start(rt, &s.redis_web, "/noop")?;
    let usage = |prefix: &str, (id, _): &Creds| -> Result<u64, BoxError> {
        let key = format!("{prefix}:r:{{{id}}}");
        run.redis.cmd(&["MEMORY", "USAGE", &key, "SAMPLES", "0"])
    };
    Ok((
        usage("bs", &queued)?,
        usage("bp", &p.redis_pending)?,
        usage("bp", &p.redis_done)?,
    ))
}

impl Row {
    fn new(name: &'static str, short: &'static str, addr: &str, path: &str) -> Row {
        Row {
            name,
            short,
            url: format!("http://{addr}{path}"),
            headers: Vec::new(),
            reference: None,
        }
    }

    /// Polls `creds` (id and token as headers).
    fn polling(mut self, creds: &Creds) -> Row {
        self.headers = poll_headers(creds)
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect();
        self
    }

    fn against(mut self, reference: usize) -> Row {
        self.reference = Some(reference);
        self
    }
}

fn rows(s: &Servers, p: &Polled) -> Vec<Row> {
    vec![
        Row::new("(a) bare axum JSON handler", "bare", &s.bare, "/bare"),
        Row::new(
            "(b) floor: handler reading one Redis hash field",
            "floor",
            &s.bare,
            "/floor",
        )
        .against(BARE),
        Row::new(
            "(c) Redis backend: poll, pending",
            "redis poll pending",
            &s.redis,
            "/park",
        )
        .polling(&p.redis_pending)
        .against(FLOOR),
        Row::new(
            "(d) Redis backend: poll, done",
            "redis poll done",
            &s.redis,
            "/noop",
        )
        .polling(&p.redis_done)
        .against(FLOOR),
        Row::new(
            "(e) Redis backend: start",
            "redis start",
            &s.redis_web,
            "/noop",
        )
        .against(FLOOR),
        Row::new(
            "(f) memory backend: poll, pending",
            "mem poll pending",
            &s.memory,
            "/park",
        )
        .polling(&p.memory_pending)
        .against(BARE),
        Row::new(
            "(f) memory backend: poll, done",
            "mem poll done",
            &s.memory,
            "/noop",
        )
        .polling(&p.memory_done)
        .against(BARE),
        Row::new(
            "(f) memory backend: start",
            "mem start",
            &s.memory_web,
            "/noop",
        )
        .against(BARE),
    ]
}

/// wrk on every row in turn, `rounds` times; per row, its run of each round.
fn measure_rounds(run: &Run, rows: &[Row], rounds: usize) -> Result<Vec<Vec<Wrk>>, BoxError> {
    let mut results: Vec<Vec<Wrk>> = vec![Vec::new(); rows.len()];
    for round in 0..rounds {
        for (i, r) in rows.iter().enumerate() {
            let hs: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            if round == 0 {
                // Warm up (connections, allocator, caches).
                wrk(&r.url, &hs, run.conns, 1)?;
            }
            let u0 = run.redis.command_usec()?;
            let mut w = wrk(&r.url, &hs, run.conns, run.secs)?;
            let u1 = run.redis.command_usec()?;
            if u1 > u0 + 1000 {
                w.redis_us = Some((u1 - u0) as f64 / w.requests.max(1) as f64);
            }
            results[i].push(w);
        }
    }
    Ok(results)
}

impl Table {
    /// The median over the rounds of (row `i` / row `j` in the same round), in req/s.
    fn ratio(&self, i: usize, j: usize) -> f64 {
        median(
            self.wrk[i]
                .iter()
                .zip(&self.wrk[j])
                .map(|(a, b)| a.rps / b.rps)
                .collect(),
        )
    }

    /// The median over the rounds of one figure of row `i`.
    fn col(&self, i: usize, f: fn(&Wrk) -> f64) -> f64 {
        median(self.wrk[i].iter().map(f).collect())
    }

    /// Row `i` of the table in results.md.
    fn line(&self, i: usize) -> String {
        let (r, runs) = (&self.rows[i], &self.wrk[i]);
        let us: Vec<f64> = runs.iter().filter_map(|w| w.redis_us).collect();
        let us = if us.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1}", median(us))
        };
        let ratio = r.reference.map_or(String::new(), |j| {
            format!("{:.2} × {}", self.ratio(i, j), self.rows[j].short)
        });
        let bad: u64 = runs.iter().map(|w| w.bad).sum();
        let bad = if bad > 0 {
            format!(" ⚠ {bad} non-2xx/errors")
        } else {
            String::new()
        };
        let each: Vec<String> = runs.iter().map(|w| format!("{:.0}", w.rps)).collect();
        format!(
            "| {} | {:.0} | {:.2} | {:.2} | {us} | {ratio}{bad} | {} |",
            r.name,
            self.col(i, |w| w.rps),
            self.col(i, |w| w.p50_ms),
            self.col(i, |w| w.p99_ms),
            each.join(", ")
        )
    }
}

fn write_table(run: &mut Run, table: &Table, rounds: usize) {
    let (conns, secs, md) = (run.conns, run.secs, &mut run.md);
    let _ = writeln!(md, "\n## 1. Poll cost\n");
    let _ = writeln!(
        md,
        "wrk, 1 thread, {conns} connections, keep-alive, on the same 2 cores as the servers and Redis. Every \
         server runs for the whole item and the rows are measured in {rounds} interleaved rounds of {secs} s \
         (after a 1 s warm-up each), so background load on this shared machine hits all rows alike; the table \
         shows medians, and each ratio is the median over the rounds of (row / reference in the same round). \
         Pending = a request whose job is running (`park` sleeps past the run); done = a finished `noop`; \
         start = a new request on a web-only process (`in_process_workers(false)`, so the job stays queued and \
         only the start is measured). Polls send id and token as headers, without `Prefer: wait`. Redis µs / \
         request: time Redis spent executing commands (commandstats `usec` Δ) per request; Redis shares the \
         cores, so its time is taken from the server and wrk (a script's time includes the commands it calls, \
         which commandstats also counts on their own, so rows that run Lua are overstated by those).\n"
    );
    let _ = writeln!(
        md,
        "| endpoint | req/s | p50 ms | p99 ms | Redis µs / request | ratio (median of rounds) | req/s per round |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---|---|");
    for i in 0..table.rows.len() {
        let _ = writeln!(md, "{}", table.line(i));
    }
}

fn write_commands(md: &mut String, n: usize, cmds: &[(&str, String, String)]) {
    let _ = writeln!(
        md,
        "\nRedis commands per operation (Redis backend, {n} sequential operations): all commands from \
         `INFO commandstats` differences (commands run inside Lua scripts included), and client round trips \
         (commands sent by the server process, counted with `MONITOR`, which tells script calls apart).\n"
    );
    let _ = writeln!(
        md,
        "| operation | commands (commandstats Δ / op) | round trips (MONITOR / op) |"
    );
    let _ = writeln!(md, "|---|---|---|");
    for (what, c, r) in cmds {
        let _ = writeln!(md, "| {what} | {c} | {r} |");
    }
}

fn goals(run: &mut Run, table: &Table) {
    let goals = [
        ("Redis poll (pending) ≥ 0.95 × floor", 2, FLOOR, 0.95),
        ("Redis poll (done) ≥ 0.95 × floor", 3, FLOOR, 0.95),
        ("Redis start ≥ 0.8 × floor", 4, FLOOR, 0.8),
        ("memory poll (pending) ≥ 0.9 × bare", 5, BARE, 0.9),
        ("memory poll (done) ≥ 0.9 × bare", 6, BARE, 0.9),
    ];
    for (goal, i, j, min) in goals {
        let r = table.ratio(i, j);
        run.goal(goal, format!("{r:.2} ×"), r >= min);
    }
}
