//! The memory backend timed in-process while it grows to 1,000,000 records: one task creates
//! records, another polls one record, on a 2-thread runtime; every call is timed, and the calls
//! slower than 0.5 ms are listed with the record count at which they happened. A stall of the
//! backend (a lock held while a map grows) shows at the points where the shard maps double; a
//! thread descheduled by other processes shows anywhere, in multiples of the scheduler's tick.
//!
//! ```sh
//! cargo run --release -p bench --example growth_probe
//! ```

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_endpoint::RequestId;
use async_endpoint::backend::{Backend, MemoryBackend, NewRequest};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const RECORDS: u64 = 1_000_000;
const SLOW: Duration = Duration::from_micros(500);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn request(id: RequestId) -> NewRequest {
    let now = now_ms();
    NewRequest::new(
        id,
        "noop",
        "21",
        now,
        now + 3_000_000,
        Duration::from_secs(3600),
    )
}

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(probe())
}

async fn probe() -> Result<(), BoxError> {
    let backend = MemoryBackend::new();
    let polled = RequestId::random();
    backend.create(request(polled)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (backend, stop) = (backend.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut calls, mut slow, mut worst) = (0u64, 0u64, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                backend.poll(polled, now_ms()).await?;
                let took = t.elapsed();
                calls += 1;
                slow += u64::from(took > SLOW);
                worst = worst.max(took);
                if calls % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok::<_, BoxError>((calls, slow, worst))
        })
    };
    let started = Instant::now();
    let (mut slow, mut worst) = (Vec::new(), Duration::ZERO);
    for i in 0..RECORDS {
        let t = Instant::now();
        backend.create(request(RequestId::random())).await?;
        let took = t.elapsed();
        if took > SLOW {
            slow.push((i, took));
        }
        worst = worst.max(took);
        if i % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (polls, slow_polls, worst_poll) = poller.await??;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "creates: {RECORDS} in {:.2} s, worst {:.2} ms, {} slower than 0.5 ms",
        started.elapsed().as_secs_f64(),
        worst.as_secs_f64() * 1e3,
        slow.len()
    )?;
    for (at, took) in slow.iter().take(40) {
        write!(out, "{at}:{:.2}ms ", took.as_secs_f64() * 1e3)?;
    }
    writeln!(out)?;
    // The record counts at which the shard maps double: hashbrown grows a table of 2^k buckets
    // past 7/8 of them, and random ids fill the (power-of-two many) shards evenly, so they all
    // grow near 7/8 × 2^k records in all. Slow calls near these are the backend's, elsewhere the
    // machine's.
    let window = 5_000;
    let expected = slow.len() as f64 * (2 * window) as f64 / RECORDS as f64;
    for total_buckets in [1u64 << 18, 1 << 19, 1 << 20] {
        let at = total_buckets * 7 / 8;
        let near: Vec<&(u64, Duration)> = slow
            .iter()
            .filter(|(i, _)| i.abs_diff(at) <= window)
            .collect();
        let worst_near = near.iter().map(|(_, d)| *d).max().unwrap_or_default();
        writeln!(
            out,
            "within {window} records of {at} (the maps double): {} slow calls (evenly spread: \
             {expected:.1}), worst {:.2} ms",
            near.len(),
            worst_near.as_secs_f64() * 1e3
        )?;
    }
    writeln!(
        out,
        "polls: {polls}, worst {:.2} ms, {slow_polls} slower than 0.5 ms",
        worst_poll.as_secs_f64() * 1e3
    )?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    if let Some(rss) = status.lines().find(|l| l.starts_with("VmRSS")) {
        writeln!(out, "{rss}")?;
    }
    Ok(())
}
