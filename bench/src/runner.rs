//! The runner: starts redis-server, the servers and the load processes, measures, and writes
//! `bench/results.md` with its plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::plots;
use crate::procs::{BoxError, Proc, Redis, Wrk, delta, rss, workspace_root, wrk};
use crate::servers::FLOOR_KEY;

pub(crate) mod cross;

/// One measured item of the issue.
type Item = fn(&mut Run) -> Result<(), BoxError>;

/// Settings of one run.
pub(crate) struct Run {
    pub(crate) quick: bool,
    exe: PathBuf,
    tmp: PathBuf,
    redis: Redis,
    /// Seconds per wrk measurement.
    secs: u64,
    /// Connections per wrk measurement of poll cost.
    conns: u32,
    logs: std::cell::Cell<u32>,
    pub(crate) md: String,
    pub(crate) figures: plots::Figures,
    /// Goal lines for the summary: (goal, measured, met).
    pub(crate) goals: Vec<(String, String, bool)>,
    /// `MEMORY USAGE` of a queued, a running and a done record (item 1, used by item 4).
    footprint_redis: Option<(u64, u64, u64)>,
    /// Redis `used_memory` per queued request (item 2, used by item 4).
    queued_mem_per: Option<f64>,
}

fn log(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "[bench] {msg}");
}

pub(crate) fn main(args: &[String]) -> Result<(), BoxError> {
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<String> = args
        .iter()
        .skip_while(|a| *a != "--only")
        .nth(1)
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    // `--out results-load.md`: write the report under another name (a partial run with `--only`
    // then leaves results.md alone).
    let out_name = args
        .iter()
        .skip_while(|a| *a != "--out")
        .nth(1)
        .cloned()
        .unwrap_or_else(|| "results.md".to_owned());
    let started = Instant::now();
    let tmp = std::env::temp_dir().join(format!("async-endpoint-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let redis = Redis::start(&tmp)?;
    log(&format!(
        "redis-server on port {}, logs in {}",
        redis.port,
        tmp.display()
    ));
    let mut run = Run {
        quick,
        exe: std::env::current_exe()?,
        tmp,
        redis,
        secs: if quick { 2 } else { 4 },
        conns: 32,
        logs: std::cell::Cell::new(0),
        md: String::new(),
        figures: plots::Figures::default(),
        goals: Vec::new(),
        footprint_redis: None,
        queued_mem_per: None,
    };
    let want = |item: &str| only.is_empty() || only.iter().any(|o| o == item);
    let items: [(&str, Item); 6] = [
        ("1", poll_cost),
        ("2", throughput),
        ("3", isolation),
        ("4", footprint),
        ("5", js_delay),
        ("6", cross::cross_processes),
    ];
    for (name, f) in items {
        if want(name) {
            let t = Instant::now();
            log(&format!("item {name} …"));
            if let Err(e) = f(&mut run) {
                log(&format!("item {name} FAILED: {e}"));
                let _ = writeln!(run.md, "\n**Item {name} could not be measured: {e}**\n");
            }
            log(&format!(
                "item {name} took {:.0} s",
                t.elapsed().as_secs_f64()
            ));
        }
    }
    let elapsed = started.elapsed();
    let out_dir = workspace_root().join("bench");
    let pngs = plots::draw(&run.figures, &out_dir);
    let report = crate::report::render(&run, elapsed, &pngs);
    std::fs::write(out_dir.join(&out_name), report)?;
    log(&format!(
        "wrote {} in {:.0} s",
        out_dir.join(&out_name).display(),
        elapsed.as_secs_f64()
    ));
    let _ = std::fs::remove_dir_all(&run.tmp);
    Ok(())
}

impl Run {
    /// Starts `bench <args>` and waits for its `READY <port>`.
    fn serve(&self, args: &[&str]) -> Result<(Proc, String), BoxError> {
        self.logs.set(self.logs.get() + 1);
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve").args(args);
        let mut p = Proc::spawn(
            cmd,
            &self
                .tmp
                .join(format!("{}-{}.log", self.logs.get(), args[0])),
        )?;
        let port = p.expect("READY")?;
        Ok((p, format!("127.0.0.1:{port}")))
    }

    fn load(&self, args: &[&str]) -> Result<Proc, BoxError> {
        self.logs.set(self.logs.get() + 1);
        let mut cmd = Command::new(&self.exe);
        cmd.arg("load").args(args);
        Proc::spawn(cmd, &self.tmp.join(format!("{}-load.log", self.logs.get())))
    }

    fn goal(&mut self, goal: &str, measured: String, met: bool) {
        self.goals.push((goal.to_owned(), measured, met));
    }

    fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }
}

/// Starts a request and returns its credentials.
fn start(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    path: &str,
) -> Result<(String, String), BoxError> {
    rt.block_on(async {
        let mut c = Conn::connect(addr).await?;
        let r = c.get(path, &[]).await?;
        Ok(r.credentials()?)
    })
}

/// Polls until the request is no longer 202; returns the final status.
fn settle(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    path: &str,
    id: &str,
    token: &str,
) -> Result<u16, BoxError> {
    rt.block_on(async {
        let mut c = Conn::connect(addr).await?;
        for _ in 0..200 {
            let r = c
                .get(
                    path,
                    &[
                        ("Async-Request-Id", id),
                        ("Async-Request-Token", token),
                        ("Prefer", "wait=5"),
                    ],
                )
                .await?;
            if r.status != 202 {
                return Ok(r.status);
            }
        }
        Err("request did not settle".into())
    })
}

/// `n` sequential GETs (starts when `creds` is None, polls otherwise) on one connection.
fn sequential(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    path: &str,
    creds: Option<&(String, String)>,
    n: usize,
) -> Result<(), BoxError> {
    rt.block_on(async {
        let mut c = Conn::connect(addr).await?;
        for _ in 0..n {
            let r = match creds {
                Some((id, token)) => {
                    c.get(
                        path,
                        &[("Async-Request-Id", id), ("Async-Request-Token", token)],
                    )
                    .await?
                }
                None => c.get(path, &[]).await?,
            };
            if !(200..300).contains(&r.status) {
                return Err(format!("unexpected {} from {path}", r.status).into());
            }
        }
        Ok(())
    })
}

/// `n` starts over `conns` concurrent connections.
fn starts(addr: &str, path: &str, n: usize, conns: usize) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let per = n.div_ceil(conns);
        for i in 0..conns {
            let count = per.min(n.saturating_sub(i * per));
            let (addr, path) = (addr.to_owned(), path.to_owned());
            set.spawn(async move {
                let mut c = Conn::connect(&addr).await?;
                for _ in 0..count {
                    let r = c.get(&path, &[]).await?;
                    if r.status != 202 {
                        return Err::<(), BoxError>(format!("start answered {}", r.status).into());
                    }
                }
                Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok(())
    })
}

fn per(map: &BTreeMap<String, u64>, n: usize) -> String {
    let total: u64 = map.values().sum();
    let parts: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k} {:.2}", *v as f64 / n as f64))
        .collect();
    format!("**{:.2}** ({})", total as f64 / n as f64, parts.join(", "))
}

fn round_trips(m: &BTreeMap<(bool, String), u64>, n: usize) -> String {
    let client: BTreeMap<String, u64> = m
        .iter()
        .filter(|((lua, _), _)| !lua)
        .map(|((_, k), v)| (k.clone(), *v))
        .collect();
    per(&client, n)
}

fn median(mut v: Vec<f64>) -> f64 {
    quantile(&mut v, 0.5)
}

/// Item 1: poll cost. Every server runs at once and the rows are measured in interleaved rounds,
/// so a change in the machine's background load hits every row alike; the table shows medians.
fn poll_cost(run: &mut Run) -> Result<(), BoxError> {
    let rt = Run::runtime()?;
    let url = run.redis.url.clone();
    let (secs, conns) = (run.secs, run.conns);
    let rounds = if run.quick { 2 } else { 5 };
    run.redis.cmd::<()>(&["HSET", FLOOR_KEY, "s", "queued"])?;
    let h = |(id, token): &(String, String)| -> Vec<(String, String)> {
        vec![
            ("Async-Request-Id".into(), id.clone()),
            ("Async-Request-Token".into(), token.clone()),
        ]
    };

    let (_bare_srv, bare) = run.serve(&["bare", "--redis", &url])?;
    // Redis: one server with in-process workers (pending = a running `park`, done = a `noop`),
    // one web-only server for starts (jobs stay queued, so a start is measured alone).
    let (_rw_srv, rw) = run.serve(&[
        "ae",
        "--backend",
        "redis",
        "--redis",
        &url,
        "--prefix",
        "bp",
    ])?;
    let (_rs_srv, rs) = run.serve(&[
        "ae",
        "--backend",
        "redis",
        "--redis",
        &url,
        "--prefix",
        "bs",
        "--workers",
        "off",
    ])?;
    let (_mw_srv, mw) = run.serve(&["ae", "--backend", "memory"])?;
    let (_ms_srv, ms) = run.serve(&["ae", "--backend", "memory", "--workers", "off"])?;

    let r_pending = start(&rt, &rw, "/park")?;
    let r_done = start(&rt, &rw, "/noop")?;
    settle(&rt, &rw, "/noop", &r_done.0, &r_done.1)?;
    let m_pending = start(&rt, &mw, "/park")?;
    let m_done = start(&rt, &mw, "/noop")?;
    settle(&rt, &mw, "/noop", &m_done.0, &m_done.1)?;

    // Commands and round trips per operation, and record sizes, before the load.
    let n = if run.quick { 200 } else { 1000 };
    let mut cmds = Vec::new();
    for (what, addr, path, creds) in [
        ("start", &rs, "/noop", None),
        ("poll, pending", &rw, "/park", Some(&r_pending)),
        ("poll, done", &rw, "/noop", Some(&r_done)),
    ] {
        let before = run.redis.commandstats()?;
        let mon = run.redis.monitor()?;
        sequential(&rt, addr, path, creds, n)?;
        let m = mon.stop();
        let after = run.redis.commandstats()?;
        cmds.push((what, per(&delta(&before, &after), n), round_trips(&m, n)));
    }
    let queued = start(&rt, &rs, "/noop")?;
    let usage = |prefix: &str, id: &str| -> Result<u64, BoxError> {
        run.redis.cmd(&[
            "MEMORY",
            "USAGE",
            &format!("{prefix}:r:{{{id}}}"),
            "SAMPLES",
            "0",
        ])
    };
    let mem_queued = usage("bs", &queued.0)?;
    let mem_running = usage("bp", &r_pending.0)?;
    let mem_done = usage("bp", &r_done.0)?;

    struct Row {
        name: &'static str,
        short: &'static str,
        url: String,
        headers: Vec<(String, String)>,
        /// Index of the row it is compared with.
        reference: Option<usize>,
    }
    let row = |name, short, addr: &str, path: &str, headers, reference| Row {
        name,
        short,
        url: format!("http://{addr}{path}"),
        headers,
        reference,
    };
    let rows = [
        row(
            "(a) bare axum JSON handler",
            "bare",
            &bare,
            "/bare",
            vec![],
            None,
        ),
        row(
            "(b) floor: handler reading one Redis hash field",
            "floor",
            &bare,
            "/floor",
            vec![],
            Some(0),
        ),
        row(
            "(c) Redis backend: poll, pending",
            "redis poll pending",
            &rw,
            "/park",
            h(&r_pending),
            Some(1),
        ),
        row(
            "(d) Redis backend: poll, done",
            "redis poll done",
            &rw,
            "/noop",
            h(&r_done),
            Some(1),
        ),
        row(
            "(e) Redis backend: start",
            "redis start",
            &rs,
            "/noop",
            vec![],
            Some(1),
        ),
        row(
            "(f) memory backend: poll, pending",
            "mem poll pending",
            &mw,
            "/park",
            h(&m_pending),
            Some(0),
        ),
        row(
            "(f) memory backend: poll, done",
            "mem poll done",
            &mw,
            "/noop",
            h(&m_done),
            Some(0),
        ),
        row(
            "(f) memory backend: start",
            "mem start",
            &ms,
            "/noop",
            vec![],
            Some(0),
        ),
    ];
    let mut results: Vec<Vec<Wrk>> = vec![Vec::new(); rows.len()];
    for round in 0..rounds {
        for (i, r) in rows.iter().enumerate() {
            let hs: Vec<(&str, &str)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if round == 0 {
                // Warm up (connections, allocator, caches).
                wrk(&r.url, &hs, conns, 1)?;
            }
            let u0 = run.redis.command_usec()?;
            let mut w = wrk(&r.url, &hs, conns, secs)?;
            let u1 = run.redis.command_usec()?;
            if u1 > u0 + 1000 {
                w.redis_us = Some((u1 - u0) as f64 / w.requests.max(1) as f64);
            }
            results[i].push(w);
        }
    }
    // Per row: medians, and the median over rounds of (row / reference in the same round).
    let ratio = |i: usize, j: usize| -> f64 {
        median(
            (0..rounds)
                .map(|k| results[i][k].rps / results[j][k].rps)
                .collect(),
        )
    };
    let col = |i: usize, f: fn(&Wrk) -> f64| median(results[i].iter().map(f).collect());

    let md = &mut run.md;
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
    for (i, r) in rows.iter().enumerate() {
        let us: Vec<f64> = results[i].iter().filter_map(|w| w.redis_us).collect();
        let us = if us.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1}", median(us))
        };
        let ratio_s = r.reference.map_or(String::new(), |j| {
            format!("{:.2} × {}", ratio(i, j), rows[j].short)
        });
        let bad: u64 = results[i].iter().map(|w| w.bad).sum();
        let bad = if bad > 0 {
            format!(" ⚠ {bad} non-2xx/errors")
        } else {
            String::new()
        };
        let each: Vec<String> = results[i].iter().map(|w| format!("{:.0}", w.rps)).collect();
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.2} | {us} | {ratio_s}{bad} | {} |",
            r.name,
            col(i, |w| w.rps),
            col(i, |w| w.p50_ms),
            col(i, |w| w.p99_ms),
            each.join(", ")
        );
    }
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
    for (what, c, r) in &cmds {
        let _ = writeln!(md, "| {what} | {c} | {r} |");
    }
    run.figures.poll = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.short.to_owned(), col(i, |w| w.rps)))
        .collect();
    let goals = [
        ("Redis poll (pending) ≥ 0.95 × floor", 2, 1, 0.95),
        ("Redis poll (done) ≥ 0.95 × floor", 3, 1, 0.95),
        ("Redis start ≥ 0.8 × floor", 4, 1, 0.8),
        ("memory poll (pending) ≥ 0.9 × bare", 5, 0, 0.9),
        ("memory poll (done) ≥ 0.9 × bare", 6, 0, 0.9),
    ];
    for (goal, i, j, min) in goals {
        let r = ratio(i, j);
        run.goal(goal, format!("{r:.2} ×"), r >= min);
    }
    run.footprint_redis = Some((mem_queued, mem_running, mem_done));
    Ok(())
}

/// Item 2: job throughput, ours against apalis.
fn throughput(run: &mut Run) -> Result<(), BoxError> {
    // Two backlogs in a full run: apalis's rate depends on it; both stay below its ~8,000 limit.
    let sizes: &[usize] = if run.quick { &[3000] } else { &[2000, 7000] };
    // Rounds alternate the two systems, so background load hits both alike; medians are reported.
    let rounds = if run.quick { 1 } else { 3 };
    for (i, n) in sizes.iter().enumerate() {
        let mut rates = Vec::new();
        for r in 0..rounds {
            let last_round = r + 1 == rounds;
            let (first, last) = (i == 0, i + 1 == sizes.len() && last_round);
            throughput_once(run, *n, first, last, last_round, &mut rates)?;
        }
    }
    Ok(())
}

fn throughput_once(
    run: &mut Run,
    n: usize,
    first_size: bool,
    last: bool,
    write: bool,
    rates: &mut Vec<(f64, f64)>,
) -> Result<(), BoxError> {
    let url = run.redis.url.clone();
    run.redis.cmd::<()>(&["FLUSHALL"])?;

    // Ours: prefill through HTTP starts on a web-only process, then one worker process drains.
    let (web, addr) = run.serve(&[
        "ae",
        "--backend",
        "redis",
        "--redis",
        &url,
        "--prefix",
        "tp",
        "--workers",
        "off",
    ])?;
    let mem0 = run.redis.used_memory()?;
    let s0 = run.redis.commandstats()?;
    let t = Instant::now();
    starts(&addr, "/noop", n, 16)?;
    let start_secs = t.elapsed().as_secs_f64();
    let s1 = run.redis.commandstats()?;
    let mem1 = run.redis.used_memory()?;
    drop(web);
    let queued: u64 = run.redis.cmd(&["XLEN", "tp:q:noop"])?;
    let t = Instant::now();
    let (worker, _) = run.serve(&[
        "worker",
        "--backend",
        "redis",
        "--redis",
        &url,
        "--prefix",
        "tp",
    ])?;
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let left: u64 = run.redis.cmd(&["XLEN", "tp:q:noop"])?;
        if first.is_none() && left < queued {
            first = Some((Instant::now(), left));
        }
        if left == 0 {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("our worker left {left} jobs after 120 s").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ours_secs = t.elapsed().as_secs_f64();
    let ours_steady = first.map_or(f64::NAN, |(at, left)| {
        left as f64 / at.elapsed().as_secs_f64()
    });
    std::thread::sleep(Duration::from_millis(300));
    let s2 = run.redis.commandstats()?;
    drop(worker);
    let done = run
        .redis
        .keys("tp:r:*")?
        .iter()
        .filter(|k| {
            run.redis
                .cmd::<Option<String>>(&["HGET", k, "s"])
                .ok()
                .flatten()
                .as_deref()
                == Some("d")
        })
        .count();
    let ours_start_cmds = per(&delta(&s0, &s1), n);
    let ours_job_cmds = per(&delta(&s1, &s2), n);
    let ours_total = (delta(&s0, &s2).values().sum::<u64>()) as f64 / n as f64;
    let ours_rate = n as f64 / ours_secs;
    let mem_per = (mem1.saturating_sub(mem0)) as f64 / n as f64;

    // apalis 1.0 + apalis-redis, its own crate outside the workspace, built on demand.
    let peer = build_apalis()?;
    run.redis.cmd::<()>(&["FLUSHALL"])?;
    let queue = "bench-apalis";
    let (concurrency, batch, poll_ms) = (64, 100, 100);
    let a0 = run.redis.commandstats()?;
    let out = Command::new(&peer)
        .args(["push", &url, queue, &n.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "apalis push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let push_secs: f64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    let a1 = run.redis.commandstats()?;
    let done_key = format!("{queue}:done");
    let t = Instant::now();
    let mut cmd = Command::new(&peer);
    cmd.args([
        "work",
        &url,
        queue,
        &concurrency.to_string(),
        &batch.to_string(),
        &poll_ms.to_string(),
    ]);
    run.logs.set(run.logs.get() + 1);
    let mut worker = Proc::spawn(cmd, &run.tmp.join(format!("{}-apalis.log", run.logs.get())))?;
    worker.expect("READY")?;
    let mut apalis_done = 0u64;
    let mut apalis_error = None;
    let mut first: Option<(Instant, u64)> = None;
    loop {
        apalis_done = count(&run.redis, &done_key).unwrap_or(apalis_done);
        if first.is_none() && apalis_done > 0 {
            first = Some((Instant::now(), apalis_done));
        }
        if apalis_done >= n as u64 {
            break;
        }
        if let Ok(Some(status)) = worker.child.try_wait() {
            apalis_error = Some(format!(
                "apalis worker exited ({status}) after {apalis_done} jobs"
            ));
            break;
        }
        if t.elapsed() > Duration::from_secs(if run.quick { 40 } else { 120 }) {
            apalis_error = Some(format!(
                "apalis finished {apalis_done} of {n} jobs in the time allowed"
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let apalis_secs = t.elapsed().as_secs_f64();
    let apalis_steady = first.map_or(f64::NAN, |(at, d)| {
        (apalis_done - d) as f64 / at.elapsed().as_secs_f64()
    });
    std::thread::sleep(Duration::from_millis(300));
    let a2 = run.redis.commandstats()?;
    drop(worker);
    let status_done = run
        .redis
        .keys("st:*")?
        .iter()
        .filter(|k| {
            run.redis
                .cmd::<Option<String>>(&["HGET", k, "s"])
                .ok()
                .flatten()
                .as_deref()
                == Some("done")
        })
        .count();
    let apalis_rate = apalis_done as f64 / apalis_secs;
    let apalis_total = (delta(&a0, &a2).values().sum::<u64>()) as f64 / n as f64;
    rates.push((ours_steady, apalis_steady));
    if !write {
        return Ok(());
    }
    let rounds = rates.len();
    let each = |f: fn(&(f64, f64)) -> f64| -> String {
        rates
            .iter()
            .map(|r| format!("{:.0}", f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (ours_each, apalis_each) = (each(|r| r.0), each(|r| r.1));
    let ratio = median(rates.iter().map(|r| r.0 / r.1).collect());
    let ours_steady = median(rates.iter().map(|r| r.0).collect());
    let apalis_steady = median(rates.iter().map(|r| r.1).collect());

    let md = &mut run.md;
    if first_size {
        let _ = writeln!(md, "\n## 2. Job throughput\n");
    }
    let _ = writeln!(md, "\n### Backlog of {n} jobs\n");
    let _ = writeln!(
        md,
        "{n} trivial jobs (double a number) are queued first, then ONE worker process drains them; rate = jobs / \
         time from the worker process's start until the last job is recorded; steady = jobs / time from the first \
         recorded job to the last, which leaves process start and connection set-up out (ours: the stream is empty, every \
         entry being acknowledged and deleted by the finishing script; apalis: its `done` set holds {n}). \
         Backlog {n}: below the ≈ 8,000 queued jobs at which apalis-redis's worker dies (\"too many results to \
         unpack\", DESIGN.md §6), on purpose. {rounds} round(s), alternating the systems: the steady rate is the \
         median (each round's in brackets); the other columns are the last round's.\n"
    );
    let _ = writeln!(
        md,
        "| system | jobs/s, steady | jobs/s incl. worker start | drain time s | jobs recorded done | Redis commands per job, enqueue | per job, run + record | total per job |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---|---|---:|");
    let _ = writeln!(
        md,
        "| async-endpoint (Redis backend, 1 worker process, concurrency 64) | {ours_steady:.0} ({ours_each}) | {ours_rate:.0} | {ours_secs:.2} | {done} / {n} | {ours_start_cmds} | {ours_job_cmds} | {ours_total:.2} |"
    );
    let _ = writeln!(
        md,
        "| apalis 1.0.0 + apalis-redis 1.0.0 + hand-written status | {apalis_steady:.0} ({apalis_each}) | {apalis_rate:.0} | {apalis_secs:.2} | {status_done} / {n} (status `done`) | {} | {} | {apalis_total:.2} |",
        per(&delta(&a0, &a1), n),
        per(&delta(&a1, &a2), n)
    );
    if let Some(e) = &apalis_error {
        let _ = writeln!(md, "\n**apalis did not finish: {e}.**");
    }
    let _ = writeln!(
        md,
        "\nStarting: ours {n} HTTP starts (16 connections) took {start_secs:.2} s; {queued} entries were queued. \
         apalis: the peer pushed {n} jobs one by one (each after its `HSET`+`EXPIRE` status write, one \
         `MULTI` pipeline) in {push_secs:.2} s.\n\n\
         apalis configuration (apalis has no throughput guide; these follow its README and its own tests): \
         `RedisStorage::new(ConnectionManager).with_config(Config::default().queue(\"{queue}\").batch_size({batch}))`, \
         `.poll_with_interval({poll_ms} ms)` (without it a job pushed by another process waits for the next \
         heartbeat), worker `.concurrency({concurrency})` (ours: `concurrency` 64, the default) and \
         `.parallelize(tokio::spawn)`; JSON codec, task locking, result persistence and pub/sub events left at \
         their defaults. The handler writes the hand-written status record (`HSET st:<id> s done o <output>` + \
         `EXPIRE 3600` in one `MULTI` pipeline), which is what a status route would read (`HGETALL st:<id>`)."
    );
    let _ = writeln!(
        md,
        "\nRedis memory per queued request (ours, `used_memory` Δ / {n}, record + stream entry): {mem_per:.0} bytes."
    );
    run.figures
        .throughput
        .push((format!("async-endpoint, {n} jobs"), ours_steady));
    run.figures
        .throughput
        .push((format!("apalis, {n} jobs"), apalis_steady));
    run.queued_mem_per = Some(mem_per);
    run.goal(
        &format!("throughput ≥ 2 × apalis (steady, backlog {n})"),
        format!("{ratio:.2} × (median of rounds; {ours_steady:.0} vs {apalis_steady:.0} jobs/s)"),
        ratio >= 2.0,
    );
    if !last {
        return Ok(());
    }
    run.goal(
        "fewer Redis commands per job than apalis",
        format!("{ours_total:.1} vs {apalis_total:.1}"),
        ours_total < apalis_total,
    );
    Ok(())
}

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

fn build_apalis() -> Result<PathBuf, BoxError> {
    let root = workspace_root();
    let manifest = root.join("bench/peers/apalis-peer/Cargo.toml");
    let target = root.join("target/apalis-peer");
    log("building the apalis peer (its own crate, outside the workspace) …");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()?;
    if !status.success() {
        return Err("the apalis peer did not build".into());
    }
    Ok(target.join("release/apalis-peer"))
}

/// Item 3: isolation under a slow upstream.
fn isolation(run: &mut Run) -> Result<(), BoxError> {
    let (up_srv, upstream) = run.serve(&["upstream", "--delay-ms", "1000"])?;
    let secs = if run.quick { 2 } else { 6 };
    let fast_conns = 8;
    let variants: [(&str, &[&str], &str, &str); 4] = [
        (
            "handler awaits the upstream",
            &["bare"],
            "/slow-await",
            "direct",
        ),
        (
            "handler calls a blocking client",
            &["bare"],
            "/slow-blocking",
            "direct",
        ),
        (
            "async-endpoint (task awaits the upstream)",
            &["ae", "--backend", "memory", "--concurrency", "64"],
            "/slow",
            "async",
        ),
        (
            "async-endpoint, task calls the blocking client",
            &["ae", "--backend", "memory", "--concurrency", "64"],
            "/slow-blocking",
            "async",
        ),
    ];
    let mut rows = Vec::new();
    for (name, args, slow_path, mode) in variants {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--upstream", &upstream]);
        let (srv, addr) = run.serve(&a)?;
        let idle = wrk(&format!("http://{addr}/fast"), &[], fast_conns, secs)?;
        let load_secs = (secs + 3).to_string();
        let load = run.load(&[
            "slow",
            "--addr",
            &addr,
            "--path",
            slow_path,
            "--mode",
            mode,
            "--clients",
            "50",
            "--secs",
            &load_secs,
        ])?;
        std::thread::sleep(Duration::from_millis(1500));
        let loaded = wrk(&format!("http://{addr}/fast"), &[], fast_conns, secs)?;
        let out = load.finish()?;
        let completed: Vec<f64> = out
            .split_whitespace()
            .skip_while(|w| *w != "COMPLETED")
            .skip(1)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        let slow_rate = match completed.as_slice() {
            [n, s] => n / s,
            _ => f64::NAN,
        };
        drop(srv);
        rows.push((name, idle, loaded, slow_rate));
    }
    drop(up_srv);
    let md = &mut run.md;
    let _ = writeln!(md, "\n## 3. Isolation under a slow upstream\n");
    let _ = writeln!(
        md,
        "A fake upstream answers after 1 s. 50 concurrent clients use the slow feature ({} s) while wrk \
         (1 thread, {fast_conns} connections, {secs} s) measures a fast JSON handler on the same server: first \
         idle, then under that load. Direct variants: one GET that lasts as long as the upstream call. \
         async-endpoint variants: start, then waiting polls (`Prefer: wait=20`) until the answer (memory \
         backend, in-process workers, concurrency 64). The blocking client is a plain `std::net` HTTP call, \
         made right in the handler / task as a blocking SDK would be. The server has the default Tokio runtime \
         (2 worker threads on this machine).\n",
        secs + 3
    );
    let _ = writeln!(
        md,
        "| variant | fast p50 idle ms | fast p99 idle ms | fast p50 loaded ms | fast p99 loaded ms | p99 loaded / idle | fast req/s loaded | slow results/s |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, idle, loaded, slow) in &rows {
        let bad = if loaded.bad > 0 || idle.bad > 0 {
            format!(" ⚠ {} errors/timeouts", loaded.bad + idle.bad)
        } else {
            String::new()
        };
        if loaded.requests == 0 {
            let _ = writeln!(
                md,
                "| {name} | {:.2} | {:.2} | no answer in {secs} s | no answer in {secs} s | ∞ | 0 | {slow:.1} |",
                idle.p50_ms, idle.p99_ms
            );
            continue;
        }
        let _ = writeln!(
            md,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2}{bad} | {:.1} × | {:.0} | {slow:.1} |",
            idle.p50_ms,
            idle.p99_ms,
            loaded.p50_ms,
            loaded.p99_ms,
            loaded.p99_ms / idle.p99_ms,
            loaded.rps
        );
    }
    if let Some((_, idle, loaded, _)) = rows.get(2) {
        let r = loaded.p99_ms / idle.p99_ms;
        run.goal(
            "async-endpoint: fast p99 under load ≤ 1.5 × idle",
            format!("{r:.2} ×"),
            r <= 1.5,
        );
    }
    run.figures.isolation = rows
        .iter()
        .map(|(n, i, l, _)| {
            // No answer at all within the run: draw it at the run's length, the least it took.
            if l.requests == 0 {
                let label = format!("{n} (no answer under load: drawn at {secs} s)");
                return (label, i.p99_ms, (secs * 1000) as f64);
            }
            ((*n).to_owned(), i.p99_ms, l.p99_ms)
        })
        .collect();
    Ok(())
}

/// Item 4: footprint.
fn footprint(run: &mut Run) -> Result<(), BoxError> {
    let rt = Run::runtime()?;
    let url = run.redis.url.clone();
    let md_redis = match run.footprint_redis {
        Some((queued, running, done)) => format!(
            "| Redis `MEMORY USAGE` of a queued record (params `21`: 2 bytes) | {queued} bytes | {} bytes beyond params |\n\
             | Redis `MEMORY USAGE` of a running record | {running} bytes | {} bytes beyond params |\n\
             | Redis `MEMORY USAGE` of a done record (output `42`: 2 bytes; params dropped) | {done} bytes | {} bytes beyond the output |\n",
            queued.saturating_sub(2),
            running.saturating_sub(2),
            done.saturating_sub(2)
        ),
        None => String::new(),
    };
    if let Some((queued, running, done)) = run.footprint_redis {
        let worst = queued.max(running).max(done).saturating_sub(2);
        run.goal(
            "Redis record ≤ 512 bytes beyond params and result",
            format!("{worst} bytes (largest)"),
            worst <= 512,
        );
    }
    let queued_per = run
        .queued_mem_per
        .map_or(String::new(), |b| format!("| Redis `used_memory` per queued request (record + stream entry, item 2) | {b:.0} bytes | |\n"));

    // Memory backend: RSS growth per pending request.
    let n = if run.quick { 5_000 } else { 20_000 };
    let (srv, addr) = run.serve(&["ae", "--backend", "memory", "--workers", "off"])?;
    starts(&addr, "/noop", 1000, 8)?;
    std::thread::sleep(Duration::from_millis(200));
    let r0 = rss(srv.pid())?;
    starts(&addr, "/noop", n, 8)?;
    std::thread::sleep(Duration::from_millis(200));
    let r1 = rss(srv.pid())?;
    drop(srv);
    let mem_per = (r1.saturating_sub(r0)) as f64 / n as f64;

    // RSS with 10,000 waiting polls, both backends (web processes without workers, so requests stay queued).
    // The 10,000 in a full run; a quick run holds fewer (the per-poll figure is what matters).
    let holds = if run.quick { 4_000 } else { 10_000 };
    let mut hold_rows = String::new();
    {
        let (srv, addr) = run.serve(&["bare"])?;
        let base = rss(srv.pid())?;
        let mut load = run.load(&[
            "waiting",
            "--addr",
            &addr,
            "--path",
            "/hold",
            "--n",
            &holds.to_string(),
            "--bare",
            "1",
        ])?;
        let held = load.expect("HOLDING")?;
        std::thread::sleep(Duration::from_millis(1000));
        let holding = rss(srv.pid())?;
        drop(load);
        drop(srv);
        let _ = writeln!(
            hold_rows,
            "| baseline: RSS of a bare axum process holding {held} requests (handler sleeps), one per connection | {:.1} MiB | {:.1} MiB before: {:.1} KiB per held request + connection |",
            holding as f64 / 1048576.0,
            base as f64 / 1048576.0,
            (holding.saturating_sub(base)) as f64 / holds as f64 / 1024.0
        );
    }
    for (name, args) in [
        (
            "memory",
            vec![
                "ae",
                "--backend",
                "memory",
                "--workers",
                "off",
                "--max-wait-s",
                "120",
            ],
        ),
        (
            "Redis",
            vec![
                "ae",
                "--backend",
                "redis",
                "--redis",
                &url,
                "--prefix",
                "wp",
                "--workers",
                "off",
                "--max-wait-s",
                "120",
            ],
        ),
    ] {
        let (srv, addr) = run.serve(&args)?;
        // Warm up: a few starts and polls so the baseline includes the runtime's and connections' setup.
        let warm = start(&rt, &addr, "/park")?;
        sequential(&rt, &addr, "/park", Some(&warm), 100)?;
        let base = rss(srv.pid())?;
        let t = Instant::now();
        let mut load = run.load(&[
            "waiting",
            "--addr",
            &addr,
            "--path",
            "/park",
            "--n",
            &holds.to_string(),
        ])?;
        let held = load.expect("HOLDING")?;
        let setup = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(1000));
        let holding = rss(srv.pid())?;
        drop(load);
        drop(srv);
        let _ = writeln!(
            hold_rows,
            "| RSS of a web process ({name} backend) holding {held} waiting polls | {:.1} MiB | {:.1} MiB before (after {holds} starts were added: {:.1} KiB per request + poll + connection; set up in {setup:.1} s) |",
            holding as f64 / 1048576.0,
            base as f64 / 1048576.0,
            (holding.saturating_sub(base)) as f64 / holds as f64 / 1024.0
        );
    }

    // TTL: a short-TTL run leaves no key behind.
    run.redis.cmd::<()>(&["FLUSHALL"])?;
    let (srv, addr) = run.serve(&[
        "ae",
        "--backend",
        "redis",
        "--redis",
        &url,
        "--prefix",
        "ttl",
        "--ttl-ms",
        "2000",
        "--deadline-ms",
        "1000",
    ])?;
    let k = 50;
    let mut last = None;
    for _ in 0..k {
        last = Some(start(&rt, &addr, "/noop")?);
        start(&rt, &addr, "/park")?;
    }
    if let Some((id, token)) = &last {
        settle(&rt, &addr, "/noop", id, token)?;
    }
    let during = run.redis.keys("ttl:*")?.len();
    std::thread::sleep(Duration::from_millis(4500));
    let left = run.redis.keys("ttl:*")?;
    drop(srv);
    std::thread::sleep(Duration::from_millis(300));
    let left_after_exit = run.redis.keys("ttl:*")?;
    let kinds: Vec<String> = left
        .iter()
        .map(|k| {
            let t: String = run.redis.cmd(&["TYPE", k]).unwrap_or_default();
            let ttl: i64 = run.redis.cmd(&["PTTL", k]).unwrap_or(-3);
            let len: i64 = if t == "stream" {
                run.redis.cmd(&["XLEN", k]).unwrap_or(-1)
            } else {
                -1
            };
            format!("`{k}` ({t}, length {len}, PTTL {ttl})")
        })
        .collect();
    run.goal(
        "0 library keys left after the TTL",
        format!(
            "{} left ({} after the process exited)",
            left.len(),
            left_after_exit.len()
        ),
        left.is_empty(),
    );

    let md = &mut run.md;
    let _ = writeln!(md, "\n## 4. Footprint\n");
    let _ = writeln!(md, "| what | measured | note |");
    let _ = writeln!(md, "|---|---:|---|");
    md.push_str(&md_redis);
    md.push_str(&queued_per);
    let _ = writeln!(
        md,
        "| memory backend, RSS growth per pending request ({n} queued `noop` starts) | {mem_per:.0} bytes | record, queue entry, expiry entry; web process without workers |"
    );
    md.push_str(&hold_rows);
    let _ = writeln!(
        md,
        "| keys under the prefix after the TTL (ttl 2 s, deadline 1 s; {k} done + {k} timed-out requests; {during} keys while live) | {} | {} |",
        left.len(),
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        }
    );
    Ok(())
}

/// Item 5: notification delay of the JS client under Node.
fn js_delay(run: &mut Run) -> Result<(), BoxError> {
    if Command::new("node").arg("--version").output().is_err() {
        let _ = writeln!(
            run.md,
            "\n## 5. Notification delay\n\nSKIPPED: node not found."
        );
        return Ok(());
    }
    let count = if run.quick { 6 } else { 20 };
    let durations = "500,2000,10000";
    let (srv, addr) = run.serve(&["ae", "--backend", "memory", "--concurrency", "256"])?;
    let module = run.tmp.join("async_endpoint.js");
    std::fs::write(&module, async_endpoint::js::SOURCE)?;
    let script = run.tmp.join("js_delay.mjs");
    std::fs::write(&script, include_str!("js_delay.mjs"))?;
    let out = Command::new("node")
        .arg(&script)
        .arg(&module)
        .arg(format!("http://{addr}"))
        .arg(count.to_string())
        .arg(durations)
        .output()?;
    drop(srv);
    if !out.status.success() {
        return Err(format!("node failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let md = &mut run.md;
    let _ = writeln!(md, "\n## 5. Notification delay (JS client under Node)\n");
    let _ = writeln!(
        md,
        "Node {} runs the bundled client (`async_endpoint::js::SOURCE`, default options; only `fetch` is wrapped to \
         count requests) against the real server (memory backend), {count} requests per job length per client, \
         all concurrently. Delay = client resolved − job finished (the task returns its wall-clock finish time; \
         same machine clock). Reference in the same run: a plain poller with the original jQuery schedule \
         (re-poll after 1 s, then 1 s + 40 % of the elapsed time; no waiting polls).\n",
        String::from_utf8_lossy(&Command::new("node").arg("--version").output()?.stdout).trim()
    );
    let _ = writeln!(
        md,
        "| job | client | median delay ms | p90 delay ms | requests per async request (median / max) |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---|");
    let mut fig = Vec::new();
    for ms in durations.split(',') {
        for (client, label) in [
            ("default", "async-endpoint JS client (defaults)"),
            ("jquery", "original jQuery schedule"),
        ] {
            let samples = v[client][ms].as_array().cloned().unwrap_or_default();
            let mut delays: Vec<f64> = samples.iter().filter_map(|s| s["delay"].as_f64()).collect();
            let mut reqs: Vec<f64> = samples
                .iter()
                .filter_map(|s| s["requests"].as_f64())
                .collect();
            let (d50, d90) = (quantile(&mut delays, 0.5), quantile(&mut delays, 0.9));
            let r50 = quantile(&mut reqs, 0.5);
            let rmax = reqs.iter().copied().fold(0.0, f64::max);
            let secs = ms.parse::<f64>().unwrap_or(0.0) / 1000.0;
            let _ = writeln!(
                md,
                "| {secs} s | {label} | {d50:.1} | {d90:.1} | {r50:.0} / {rmax:.0} |"
            );
            fig.push((format!("{secs} s"), client.to_owned(), d50));
            if ms == "2000" && client == "default" {
                run.goals.push((
                    "JS client, 2 s job: median delay ≤ 20 ms with ≤ 3 requests".into(),
                    format!("{d50:.1} ms, {r50:.0} requests (max {rmax:.0})"),
                    d50 <= 20.0 && rmax <= 3.0,
                ));
            }
        }
    }
    run.figures.js = fig;
    Ok(())
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}
