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
    /// Keys of requests (and their queues, idempotency keys, pending sets) left after the TTL.
    left: Vec<String>,
    /// The live worker's own heartbeat key (`ttl:w:<consumer>`): it lives as long as the process,
    /// refreshed while it runs, not a request's.
    heartbeats: usize,
    left_after_exit: usize,
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let rt = runtime()?;
    let mut redis_rows = redis_rows(run);
    redis_rows += &payload_rows(run, &rt)?;
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
            "{} left while the process ran, besides its worker's heartbeat key ({} key); {} after it exited",
            ttl.left.len(),
            ttl.heartbeats,
            ttl.left_after_exit
        ),
        ttl.left.is_empty() && ttl.left_after_exit == 0,
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
        "| keys under the prefix after the TTL (ttl 2 s, deadline 1 s; {k} done + {k} timed-out requests; {during} keys while live), besides the live worker's heartbeat key ({heartbeats} while it ran; {after} keys of any kind once it exited) | {} | {} |",
        ttl.left.len(),
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        },
        k = ttl.k,
        during = ttl.during,
        heartbeats = ttl.heartbeats,
        after = ttl.left_after_exit,
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
    }
    if let Some(b) = run.queued_mem_per {
        let _ = writeln!(
            rows,
            "| Redis `used_memory` per queued request (record + stream entry, item 2) | {b:.0} bytes | |"
        );
    }
    rows
}

/// `MEMORY USAGE` of a record and its out-of-line fields (`<record>:p|g|o|f`), and the
/// record hash's `OBJECT ENCODING`.
fn record_usage(run: &Run, key: &str) -> Result<(u64, String), BoxError> {
    let mut bytes = 0;
    for k in [
        key.to_owned(),
        format!("{key}:p"),
        format!("{key}:g"),
        format!("{key}:o"),
        format!("{key}:f"),
    ] {
        let n: Option<u64> = run.redis.cmd(&["MEMORY", "USAGE", &k])?;
        bytes += n.unwrap_or(0);
    }
    let encoding: Option<String> = run.redis.cmd(&["OBJECT", "ENCODING", key])?;
    Ok((bytes, encoding.unwrap_or_default()))
}

/// What Redis needs to hold a value of `len` bytes at all: a string key holding it less one
/// holding nothing (the allocator rounds up to its size classes: 16 KiB take 20 KiB).
fn payload_alloc(run: &Run, len: usize) -> Result<u64, BoxError> {
    let usage = |v: &str| -> Result<u64, BoxError> {
        run.redis.cmd::<()>(&["SET", "bench:probe", v])?;
        let n: u64 = run.redis.cmd(&["MEMORY", "USAGE", "bench:probe"])?;
        run.redis.cmd::<()>(&["DEL", "bench:probe"])?;
        Ok(n)
    };
    Ok(usage(&"x".repeat(len))?.saturating_sub(usage("")?))
}

/// Redis record sizes at 2 B, 100 B, 1 KiB and 16 KiB params and outputs (the library's
/// backend driven directly: create, fetch, begin, a progress write, finish), with the encoding
/// Redis reports; and the goal on the largest cost beyond the payload.
fn payload_rows(run: &mut Run, rt: &Runtime) -> Result<String, BoxError> {
    use async_endpoint::RequestId;
    use async_endpoint::backend::{Backend, Begin, NewRequest, Outcome, RedisBackend, Update};
    const TASK: &str = "footprint";
    let backend = RedisBackend::builder(run.redis.url.clone())
        .prefix("fp")
        .build()?;
    let mut rows = String::new();
    let mut worst: (u64, usize) = (0, 0);
    for size in [2usize, 100, 1024, 16 * 1024] {
        let params = format!("\"{}\"", "p".repeat(size - 2));
        let output = format!("\"{}\"", "o".repeat(size - 2));
        let alloc = payload_alloc(run, size)?;
        let id = RequestId::random();
        let key = format!("fp:r:{{{id}}}");
        let now = crate::servers::wall_ms() as u64;
        let request = NewRequest::new(
            id,
            TASK,
            params.clone(),
            now,
            now + 60_000,
            Duration::from_secs(3600),
        );
        let mut figures = Vec::new();
        rt.block_on(async {
            backend.create(request).await?;
            figures.push(("queued", record_usage(run, &key)?));
            let job = loop {
                let jobs = backend.fetch(&[TASK], 100, Duration::from_secs(1)).await?;
                if let Some(job) = jobs.into_iter().find(|j| j.id == id) {
                    break job;
                }
            };
            let now = crate::servers::wall_ms() as u64;
            match backend.begin(&job, now).await? {
                Begin::Run { params: got, .. } if got == params => {}
                _ => return Err::<(), BoxError>("begin did not return the params".into()),
            }
            backend
                .update(
                    id,
                    Update::Progress(async_endpoint::Progress::new(1, Some(2), "half way")),
                )
                .await?;
            figures.push(("running", record_usage(run, &key)?));
            let now = crate::servers::wall_ms() as u64;
            backend
                .finish(&job, Outcome::Done(output.clone()), now)
                .await?;
            let polled = backend.poll(id, now).await?.and_then(|s| s.output);
            if polled.as_deref() != Some(output.as_str()) {
                return Err("the output did not read back".into());
            }
            figures.push(("done", record_usage(run, &key)?));
            Ok(())
        })?;
        for (state, (bytes, encoding)) in figures {
            let beyond = bytes.saturating_sub(alloc);
            if beyond > worst.0 {
                worst = (beyond, size);
            }
            let what = if state == "done" {
                "output (params dropped)"
            } else {
                "params"
            };
            let _ = writeln!(
                rows,
                "| Redis `MEMORY USAGE` of a {state} record, {size}-byte {what}, out-of-line fields included | {bytes} bytes | {beyond} bytes beyond the payload's own allocation ({alloc} bytes, {} beyond its {size} bytes); hash encoding `{encoding}` |",
                bytes.saturating_sub(size as u64)
            );
        }
    }
    run.goal(
        "Redis record ≤ 512 bytes beyond params and output, at 2 B, 100 B, 1 KiB and 16 KiB",
        format!(
            "{} bytes (largest, at {} B; beyond the payload's allocation)",
            worst.0, worst.1
        ),
        worst.0 <= 512,
    );
    Ok(rows)
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
    let (heartbeats, left): (Vec<String>, Vec<String>) = run
        .redis
        .keys("ttl:*")?
        .into_iter()
        .partition(|key| key.starts_with("ttl:w:"));
    drop(srv);
    std::thread::sleep(Duration::from_millis(300));
    let left_after_exit = run.redis.keys("ttl:*")?.len();
    Ok(Ttl {
        k,
        during,
        left,
        heartbeats: heartbeats.len(),
        left_after_exit,
    })
}
