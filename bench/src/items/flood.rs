//! Item flood: push-back. Owner A floods starts of a 300 ms job for a few seconds (a load process,
//! `bench load flood …`, which ignores 429 and `Retry-After` as a hostile or buggy client would);
//! meanwhile owner B starts the same job at a fixed interval and waits for each result. B's
//! start→result latency is measured without a per-owner limit and with the default one, on the
//! memory backend with in-process workers (concurrency 64). Owners come from an `X-Owner` header
//! (the bench server's owner hook).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::quantile;
use crate::client::Conn;
use crate::procs::BoxError;
use crate::runner::Run;
use crate::servers::Opts;

/// The job both owners start: it sleeps this long.
const JOB_MS: u64 = 300;
/// B starts one job this often while A floods.
const B_EVERY: Duration = Duration::from_millis(250);
/// Concurrent connections of the flooding owner.
const FLOOD_CLIENTS: u32 = 32;

/// (variant, `--max-pending-per-owner` of the server).
const VARIANTS: [(&str, &str); 2] = [
    ("no per-owner limit", "off"),
    ("per-owner limit 200 (the default)", "200"),
];

/// One variant: the flood's starts, and B's latencies.
struct Measured {
    name: &'static str,
    accepted: u64,
    refused: u64,
    flood_secs: f64,
    /// Start→result of B's jobs that finished in time, ms.
    latencies: Vec<f64>,
    /// B's jobs with no result within the bound.
    late: usize,
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let flood_secs = if run.quick { 3 } else { 5 };
    let give_up = Duration::from_secs(if run.quick { 15 } else { 30 });
    let mut rows = Vec::new();
    for (name, limit) in VARIANTS {
        let (srv, addr) = run.serve(&[
            "ae",
            "--backend",
            "memory",
            "--concurrency",
            "64",
            "--max-pending-per-owner",
            limit,
        ])?;
        let path = format!("/timed?ms={JOB_MS}");
        let load = run.load(&[
            "flood",
            "--addr",
            &addr,
            "--path",
            &path,
            "--owner",
            "A",
            "--clients",
            &FLOOD_CLIENTS.to_string(),
            "--secs",
            &flood_secs.to_string(),
        ])?;
        // B starts while A floods: from half a second in to the flood's end.
        std::thread::sleep(Duration::from_millis(500));
        let samples = ((flood_secs * 1000 - 500) / B_EVERY.as_millis() as u64) as usize;
        let (latencies, late) = owner_b(&addr, &path, samples, give_up)?;
        let out = load.finish()?;
        drop(srv);
        let (accepted, refused, secs) = flood_tally(&out)?;
        rows.push(Measured {
            name,
            accepted,
            refused,
            flood_secs: secs,
            latencies,
            late,
        });
    }
    write_table(&mut run.md, &rows, flood_secs, give_up);
    if let [off, on] = rows.as_slice() {
        let (mut off_l, mut on_l) = (off.latencies.clone(), on.latencies.clone());
        let off_p95 = quantile(&mut off_l, 0.95);
        let on_p95 = quantile(&mut on_l, 0.95);
        let p95 = |v: f64| {
            if v.is_nan() {
                "no result".to_owned()
            } else {
                format!("{v:.0} ms")
            }
        };
        run.goal(
            "flood: B's 300 ms job p95 with the default per-owner limit ≤ 2 s, all in time",
            format!(
                "{} ({} of {} late); without the limit {} ({} of {} late)",
                p95(on_p95),
                on.late,
                on.late + on.latencies.len(),
                p95(off_p95),
                off.late,
                off.late + off.latencies.len()
            ),
            on_p95 <= 2000.0 && on.late == 0,
        );
    }
    Ok(())
}

/// Owner B: `samples` jobs started every `B_EVERY`, each polled (waiting polls) to its result on
/// a connection of its own; returns the start→result times (ms) and how many had none in time.
fn owner_b(
    addr: &str,
    path: &str,
    samples: usize,
    give_up: Duration,
) -> Result<(Vec<f64>, usize), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut set = JoinSet::new();
        let first = tokio::time::Instant::now();
        for i in 0..samples {
            let (addr, path) = (addr.to_owned(), path.to_owned());
            set.spawn(async move {
                tokio::time::sleep_until(first + B_EVERY * i as u32).await;
                let started = Instant::now();
                let job = tokio::time::timeout(give_up, one_job(&addr, &path, "B"));
                match job.await {
                    Ok(Ok(200)) => Ok(Some(started.elapsed().as_secs_f64() * 1000.0)),
                    Ok(Ok(status)) => Err(format!("B's job answered {status}").into()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Ok(None),
                }
            });
        }
        let (mut latencies, mut late) = (Vec::new(), 0);
        while let Some(r) = set.join_next().await {
            match r?? {
                Some(ms) => latencies.push(ms),
                None => late += 1,
            }
        }
        Ok((latencies, late))
    })
}

/// One job of `owner`: the start, then waiting polls until the final answer; its status.
async fn one_job(addr: &str, path: &str, owner: &str) -> Result<u16, BoxError> {
    let mut conn = Conn::connect(addr).await?;
    let start = conn.get(path, &[("X-Owner", owner)]).await?;
    if start.status != 202 {
        return Ok(start.status);
    }
    let (id, token) = start.credentials()?;
    loop {
        let r = conn
            .get(
                path,
                &[
                    ("X-Owner", owner),
                    ("Async-Request-Id", &id),
                    ("Async-Request-Token", &token),
                    ("Prefer", "wait=5"),
                ],
            )
            .await?;
        if r.status != 202 {
            return Ok(r.status);
        }
    }
}

/// `bench load flood`: `--clients` connections start `--path` as owner `--owner` back to back
/// for `--secs` seconds, never polling and ignoring 429s; prints `FLOOD <202s> <429s> <secs>`.
pub(crate) async fn load(opts: &Opts) -> Result<(), BoxError> {
    let addr = opts.get("addr").ok_or("--addr")?.to_owned();
    let path = opts.get("path").ok_or("--path")?.to_owned();
    let owner = opts.get("owner").unwrap_or("A").to_owned();
    let clients = opts.num("clients", 32);
    let until = Instant::now() + Duration::from_secs(opts.num("secs", 5));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (addr, path, owner) = (addr.clone(), path.clone(), owner.clone());
        set.spawn(async move {
            let (mut accepted, mut refused) = (0u64, 0u64);
            let mut conn = Conn::connect(&addr).await?;
            while Instant::now() < until {
                match conn.get(&path, &[("X-Owner", &owner)]).await?.status {
                    202 => accepted += 1,
                    429 => refused += 1,
                    other => return Err(format!("flood start answered {other}").into()),
                }
            }
            Ok::<_, BoxError>((accepted, refused))
        });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (a, r) = r??;
        accepted += a;
        refused += r;
    }
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(
        &mut out,
        format!(
            "FLOOD {accepted} {refused} {:.3}\n",
            started.elapsed().as_secs_f64()
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// From the load process's `FLOOD <202s> <429s> <secs>`.
fn flood_tally(out: &str) -> Result<(u64, u64, f64), BoxError> {
    let words: Vec<&str> = out
        .split_whitespace()
        .skip_while(|w| *w != "FLOOD")
        .skip(1)
        .take(3)
        .collect();
    match words.as_slice() {
        [a, r, s] => Ok((a.parse()?, r.parse()?, s.parse()?)),
        _ => Err(format!("no FLOOD line from the load process: {out:?}").into()),
    }
}

fn write_table(md: &mut String, rows: &[Measured], flood_secs: u64, give_up: Duration) {
    let _ = writeln!(md, "\n## 7. Push-back under a flood\n");
    let _ = writeln!(
        md,
        "Owner A floods starts of a {JOB_MS} ms job for {flood_secs} s over {FLOOD_CLIENTS} keep-alive \
         connections, back to back, never polling and ignoring 429 and `Retry-After` (a hostile or buggy \
         client). Meanwhile owner B starts the same job every {} ms (from 0.5 s into the flood to its end) \
         and polls each to its result (waiting polls, `Prefer: wait=5`); a B job without a result within \
         {} s counts as late. Memory backend, in-process workers, concurrency 64; owners from an \
         `X-Owner` header (the bench server's owner hook). Each variant is a fresh server.\n",
        B_EVERY.as_millis(),
        give_up.as_secs()
    );
    let _ = writeln!(
        md,
        "| variant | A's starts accepted | A's starts refused (429) | B jobs | B p50 ms | B p95 ms | B max ms | B late |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for m in rows {
        let mut l = m.latencies.clone();
        let ms = |v: f64| {
            if v.is_nan() {
                format!("none in {} s", give_up.as_secs())
            } else {
                format!("{v:.0}")
            }
        };
        let (p50, p95) = (ms(quantile(&mut l, 0.5)), ms(quantile(&mut l, 0.95)));
        let max = ms(l.iter().copied().fold(f64::NAN, f64::max));
        let _ = writeln!(
            md,
            "| {} | {} ({:.0}/s) | {} | {} | {p50} | {p95} | {max} | {} |",
            m.name,
            m.accepted,
            m.accepted as f64 / m.flood_secs,
            m.refused,
            m.latencies.len() + m.late,
            m.late
        );
    }
}
