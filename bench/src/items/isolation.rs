//! Item 3: isolation under a slow upstream. wrk measures a fast handler idle, then while 50
//! clients use a slow feature on the same server.

use std::fmt::Write as _;
use std::time::Duration;

use crate::procs::{BoxError, Wrk, wrk};
use crate::runner::Run;

/// wrk connections on the fast handler.
const FAST_CONNS: u32 = 8;
/// `bench serve` arguments of the async-endpoint variants.
const AE: &[&str] = &["ae", "--backend", "memory", "--concurrency", "64"];

/// (name, `bench serve` arguments, slow path, `bench load slow --mode`).
const VARIANTS: [(&str, &[&str], &str, &str); 4] = [
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
        AE,
        "/slow",
        "async",
    ),
    (
        "async-endpoint, task calls the blocking client",
        AE,
        "/slow-blocking",
        "async",
    ),
];

/// One variant: the fast handler idle and loaded, and the slow feature's results per second.
struct Measured {
    name: &'static str,
    idle: Wrk,
    loaded: Wrk,
    slow_rate: f64,
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let (up_srv, upstream) = run.serve(&["upstream", "--delay-ms", "1000"])?;
    let secs = if run.quick { 2 } else { 6 };
    let mut rows = Vec::new();
    for (name, args, slow_path, mode) in VARIANTS {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--upstream", &upstream]);
        rows.push(variant(run, name, &a, slow_path, mode, secs)?);
    }
    drop(up_srv);
    write_table(&mut run.md, &rows, secs);
    if let Some(m) = rows.get(2) {
        let r = m.loaded.p99_ms / m.idle.p99_ms;
        run.goal(
            "async-endpoint: fast p99 under load ≤ 1.5 × idle",
            format!("{r:.2} ×"),
            r <= 1.5,
        );
    }
    run.figures.isolation = rows
        .iter()
        .map(|m| {
            // No answer at all within the run: draw it at the run's length, the least it took.
            if m.loaded.requests == 0 {
                let label = format!("{} (no answer under load: drawn at {secs} s)", m.name);
                return (label, m.idle.p99_ms, (secs * 1000) as f64);
            }
            (m.name.to_owned(), m.idle.p99_ms, m.loaded.p99_ms)
        })
        .collect();
    Ok(())
}

fn variant(
    run: &Run,
    name: &'static str,
    args: &[&str],
    slow_path: &str,
    mode: &str,
    secs: u64,
) -> Result<Measured, BoxError> {
    let (srv, addr) = run.serve(args)?;
    let fast = format!("http://{addr}/fast");
    let idle = wrk(&fast, &[], FAST_CONNS, secs)?;
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
    let loaded = wrk(&fast, &[], FAST_CONNS, secs)?;
    let out = load.finish()?;
    drop(srv);
    Ok(Measured {
        name,
        idle,
        loaded,
        slow_rate: completed_per_second(&out),
    })
}

/// From the load process's `COMPLETED <n> <secs>`: results per second.
fn completed_per_second(out: &str) -> f64 {
    let completed: Vec<f64> = out
        .split_whitespace()
        .skip_while(|w| *w != "COMPLETED")
        .skip(1)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    match completed.as_slice() {
        [n, s] => n / s,
        _ => f64::NAN,
    }
}

fn write_table(md: &mut String, rows: &[Measured], secs: u64) {
    let _ = writeln!(md, "\n## 3. Isolation under a slow upstream\n");
    let _ = writeln!(
        md,
        "A fake upstream answers after 1 s. 50 concurrent clients use the slow feature ({} s) while wrk \
         (1 thread, {FAST_CONNS} connections, {secs} s) measures a fast JSON handler on the same server: first \
         idle, then under that load. Direct variants: one GET that lasts as long as the upstream call. \
         async-endpoint variants: start, then waiting polls (`Prefer: wait=20`) until the answer (memory \
         backend, in-process workers, concurrency 64). The blocking client is a GET that blocks the calling \
         thread until the whole answer is in, made right in the handler / task as a blocking SDK would be. The server has the default Tokio runtime \
         (2 worker threads on this machine).\n",
        secs + 3
    );
    let _ = writeln!(
        md,
        "| variant | fast p50 idle ms | fast p99 idle ms | fast p50 loaded ms | fast p99 loaded ms | p99 loaded / idle | fast req/s loaded | slow results/s |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in rows {
        let _ = writeln!(md, "{}", line(m, secs));
    }
}

fn line(m: &Measured, secs: u64) -> String {
    let (name, idle, loaded, slow) = (m.name, &m.idle, &m.loaded, m.slow_rate);
    if loaded.requests == 0 {
        return format!(
            "| {name} | {:.2} | {:.2} | no answer in {secs} s | no answer in {secs} s | ∞ | 0 | {slow:.1} |",
            idle.p50_ms, idle.p99_ms
        );
    }
    let bad = if loaded.bad > 0 || idle.bad > 0 {
        format!(" ⚠ {} errors/timeouts", loaded.bad + idle.bad)
    } else {
        String::new()
    };
    format!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.2}{bad} | {:.1} × | {:.0} | {slow:.1} |",
        idle.p50_ms,
        idle.p99_ms,
        loaded.p50_ms,
        loaded.p99_ms,
        loaded.p99_ms / idle.p99_ms,
        loaded.rps
    )
}
