//! Item 4: footprint. Redis record sizes (measured by item 1, 2), memory per pending request,
//! RSS while holding 10,000 waiting polls, and the keys left after the TTL.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use super::{describe_keys, runtime, sequential, settle, start, starts};
use crate::procs::{BoxError, Proc, rss};
use crate::runner::Run;

/// A server holding requests of a `bench load waiting` process.
struct Held {
    /// What the load process says it holds.
    held: String,
    /// RSS before and while holding, bytes.
    base: u64,
    holding: u64,
    /// Seconds from the load process's start until it held them all.
    setup: f64,
}

/// Requests with a short TTL, and the keys they leave.
struct Ttl {
    /// Done requests, and as many timed-out ones.
    k: usize,
    during: usize,
    left: Vec<String>,
    left_after_exit: usize,
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let rt = runtime()?;
    let redis_rows = redis_rows(run);
    let n = if run.quick { 5_000 } else { 20_000 };
    let mem_per = growth_per_request(run, n)?;
    // RSS with 10,000 waiting polls, both backends (web processes without workers, so requests stay queued).
    // The 10,000 in a full run; a quick run holds fewer (the per-poll figure is what matters).
    let holds = if run.quick { 4_000 } else { 10_000 };
    let mut hold_rows = bare_hold_row(run, holds)?;
    let wait = ["--workers", "off", "--max-wait-s", "120"];
    let mut memory = vec!["ae", "--backend", "memory"];
    memory.extend(wait);
    hold_rows += &waiting_row(run, &rt, "memory", run.serve(&memory)?, holds)?;
    let redis = run.serve_redis("ae", "wp", &wait)?;
    hold_rows += &waiting_row(run, &rt, "Redis", redis, holds)?;
    let ttl = ttl(run, &rt)?;
    run.goal(
        "0 library keys left after the TTL",
        format!(
            "{} left ({} after the process exited)",
            ttl.left.len(),
            ttl.left_after_exit
        ),
        ttl.left.is_empty(),
    );
    let kinds = describe_keys(&run.redis, &ttl.left);
    let md = &mut run.md;
    let _ = writeln!(md, "\n## 4. Footprint\n");
    let _ = writeln!(md, "| what | measured | note |");
    let _ = writeln!(md, "|---|---:|---|");
    md.push_str(&redis_rows);
    let _ = writeln!(
        md,
        "| memory backend, RSS growth per pending request ({n} queued `noop` starts) | {mem_per:.0} bytes | record, queue entry, expiry entry; web process without workers |"
    );
    md.push_str(&hold_rows);
    let _ = writeln!(
        md,
        "| keys under the prefix after the TTL (ttl 2 s, deadline 1 s; {k} done + {k} timed-out requests; {during} keys while live) | {} | {} |",
        ttl.left.len(),
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        },
        k = ttl.k,
        during = ttl.during,
    );
    Ok(())
}

/// The rows of the Redis record sizes (item 1) and memory per queued request (item 2), and the
/// goal on the record size.
fn redis_rows(run: &mut Run) -> String {
    let mut rows = String::new();
    if let Some((queued, running, done)) = run.footprint_redis {
        let _ = writeln!(
            rows,
            "| Redis `MEMORY USAGE` of a queued record (params `21`: 2 bytes) | {queued} bytes | {} bytes beyond params |\n\
             | Redis `MEMORY USAGE` of a running record | {running} bytes | {} bytes beyond params |\n\
             | Redis `MEMORY USAGE` of a done record (output `42`: 2 bytes; params dropped) | {done} bytes | {} bytes beyond the output |",
            queued.saturating_sub(2),
            running.saturating_sub(2),
            done.saturating_sub(2)
        );
        let worst = queued.max(running).max(done).saturating_sub(2);
        run.goal(
            "Redis record ≤ 512 bytes beyond params and result",
            format!("{worst} bytes (largest)"),
            worst <= 512,
        );
    }
    if let Some(b) = run.queued_mem_per {
        let _ = writeln!(
            rows,
            "| Redis `used_memory` per queued request (record + stream entry, item 2) | {b:.0} bytes | |"
        );
    }
    rows
}

/// Memory backend: RSS growth per pending request, over `n` starts.
fn growth_per_request(run: &Run, n: usize) -> Result<f64, BoxError> {
    let (srv, addr) = run.serve(&["ae", "--backend", "memory", "--workers", "off"])?;
    starts(&addr, "/noop", 1000, 8)?;
    std::thread::sleep(Duration::from_millis(200));
    let r0 = rss(srv.pid())?;
    starts(&addr, "/noop", n, 8)?;
    std::thread::sleep(Duration::from_millis(200));
    let r1 = rss(srv.pid())?;
    drop(srv);
    Ok((r1.saturating_sub(r0)) as f64 / n as f64)
}

/// Starts `bench load waiting <args>` against `srv`, whose RSS was `base`, and measures the RSS
/// once the load holds its requests; stops both.
fn hold(run: &Run, srv: Proc, base: u64, args: &[&str]) -> Result<Held, BoxError> {
    let t = Instant::now();
    let mut load_args = vec!["waiting"];
    load_args.extend_from_slice(args);
    let mut load = run.load(&load_args)?;
    let held = load.expect("HOLDING")?;
    let setup = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1000));
    let holding = rss(srv.pid())?;
    drop(load);
    drop(srv);
    Ok(Held {
        held,
        base,
        holding,
        setup,
    })
}

impl Held {
    /// (MiB while holding, MiB before, KiB per each of `holds` requests).
    fn figures(&self, holds: usize) -> (f64, f64, f64) {
        (
            self.holding as f64 / 1048576.0,
            self.base as f64 / 1048576.0,
            (self.holding.saturating_sub(self.base)) as f64 / holds as f64 / 1024.0,
        )
    }
}

/// The baseline: a bare axum process holding `holds` requests (handler sleeps).
fn bare_hold_row(run: &Run, holds: usize) -> Result<String, BoxError> {
    let (srv, addr) = run.serve(&["bare"])?;
    let base = rss(srv.pid())?;
    let n = holds.to_string();
    let h = hold(
        run,
        srv,
        base,
        &["--addr", &addr, "--path", "/hold", "--n", &n, "--bare", "1"],
    )?;
    let (holding, base, per) = h.figures(holds);
    Ok(format!(
        "| baseline: RSS of a bare axum process holding {} requests (handler sleeps), one per connection | {holding:.1} MiB | {base:.1} MiB before: {per:.1} KiB per held request + connection |\n",
        h.held
    ))
}

/// A web process (`name` backend, no workers) holding `holds` waiting polls.
fn waiting_row(
    run: &Run,
    rt: &Runtime,
    name: &str,
    (srv, addr): (Proc, String),
    holds: usize,
) -> Result<String, BoxError> {
    // Warm up: a few starts and polls so the baseline includes the runtime's and connections' setup.
    let warm = start(rt, &addr, "/park")?;
    sequential(rt, &addr, "/park", Some(&warm), 100)?;
    let base = rss(srv.pid())?;
    let h = hold(
        run,
        srv,
        base,
        &[
            "--addr",
            &addr,
            "--path",
            "/park",
            "--n",
            &holds.to_string(),
        ],
    )?;
    let (holding, base, per) = h.figures(holds);
    Ok(format!(
        "| RSS of a web process ({name} backend) holding {} waiting polls | {holding:.1} MiB | {base:.1} MiB before (after {holds} starts were added: {per:.1} KiB per request + poll + connection; set up in {:.1} s) |\n",
        h.held, h.setup
    ))
}

/// TTL: a short-TTL run leaves no key behind.
fn ttl(run: &Run, rt: &Runtime) -> Result<Ttl, BoxError> {
    run.redis.cmd::<()>(&["FLUSHALL"])?;
    let limits = ["--ttl-ms", "2000", "--deadline-ms", "1000"];
    let (srv, addr) = run.serve_redis("ae", "ttl", &limits)?;
    let k = 50;
    let mut last = None;
    for _ in 0..k {
        last = Some(start(rt, &addr, "/noop")?);
        start(rt, &addr, "/park")?;
    }
    if let Some(creds) = &last {
        settle(rt, &addr, "/noop", creds)?;
    }
    let during = run.redis.keys("ttl:*")?.len();
    std::thread::sleep(Duration::from_millis(4500));
    let left = run.redis.keys("ttl:*")?;
    drop(srv);
    std::thread::sleep(Duration::from_millis(300));
    let left_after_exit = run.redis.keys("ttl:*")?.len();
    Ok(Ttl {
        k,
        during,
        left,
        left_after_exit,
    })
}
