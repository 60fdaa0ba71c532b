//! The apalis 1.0 + apalis-redis peer: what a Rust user writes today for "enqueue slow work and
//! let the client look its status up", run by the benchmark runner of async-endpoint.
//!
//! * `apalis-peer push <redis-url> <queue> <n>`: pushes `n` trivial jobs one by one, each after
//!   writing its hand-written status record (`HSET st:<id> s queued` + `EXPIRE`), as a web handler
//!   would; prints `PUSHED <n> <seconds>`.
//! * `apalis-peer work <redis-url> <queue> <concurrency> <batch> <poll-ms>`: runs one worker; the
//!   job handler writes the status record `done` with the output (`HSET` + `EXPIRE`, one pipeline).
//! * `apalis-peer status <redis-url> <id>`: the hand-written status lookup (`HGETALL st:<id>`).
//! * `apalis-peer marks <redis-url> <queue> <n> <gap-ms>`: pushes `n` jobs one by one, `gap-ms`
//!   apart, each with the id `m-<i>-<wall µs just before its push>`; the worker's handler prints
//!   `STARTED <id> <wall µs> <pid>` as its first line for such ids (enqueue-to-start latency).

use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: String,
    n: u64,
}

/// Seconds a status record lives (the same 1 h as async-endpoint's default TTL).
const STATUS_TTL: i64 = 3600;

/// Wall-clock time, µs since the Unix epoch.
fn wall_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

async fn run_job(job: Job, conn: Data<ConnectionManager>) -> Result<u64, BoxDynError> {
    if job.id.starts_with("m-") {
        use std::io::Write as _;
        let line = format!("STARTED {} {} {}\n", job.id, wall_us(), std::process::id());
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
    let output = job.n * 2;
    let mut conn = (*conn).clone();
    let key = format!("st:{}", job.id);
    redis::pipe()
        .atomic()
        .hset_multiple(&key, &[("s", "done".to_owned()), ("o", output.to_string())])
        .ignore()
        .expire(&key, STATUS_TTL)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    Ok(output)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().ok_or("missing argument");
    match arg(0)?.as_str() {
        "push" => {
            let conn = apalis_redis::connect(arg(1)?).await?;
            let config = Config::default().queue(arg(2)?);
            let n: u64 = arg(3)?.parse()?;
            let mut storage = RedisStorage::<Job>::new(conn.clone()).with_config(config);
            let mut status = conn;
            let started = Instant::now();
            for n in 0..n {
                let id = format!("{:016x}{:016x}", std::process::id(), n);
                let key = format!("st:{id}");
                redis::pipe()
                    .atomic()
                    .hset(&key, "s", "queued")
                    .ignore()
                    .expire(&key, STATUS_TTL)
                    .ignore()
                    .query_async::<()>(&mut status)
                    .await?;
                storage.push(Job { id, n }).await?;
            }
            println!("PUSHED {n} {:.3}", started.elapsed().as_secs_f64());
        }
        "work" => {
            let conn = apalis_redis::connect(arg(1)?).await?;
            let batch: usize = arg(4)?.parse()?;
            let config = Config::default().queue(arg(2)?).batch_size(batch);
            let concurrency: usize = arg(3)?.parse()?;
            let poll = Duration::from_millis(arg(5)?.parse()?);
            let storage = RedisStorage::<Job>::new(conn.clone())
                .with_config(config)
                .poll_with_interval(poll);
            println!("READY");
            WorkerBuilder::new("bench-apalis-worker")
                .backend(storage)
                .data(conn)
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .build(run_job)
                .run()
                .await?;
        }
        "marks" => {
            let conn = apalis_redis::connect(arg(1)?).await?;
            let config = Config::default().queue(arg(2)?);
            let n: u64 = arg(3)?.parse()?;
            let gap = Duration::from_millis(arg(4)?.parse()?);
            let mut storage = RedisStorage::<Job>::new(conn).with_config(config);
            for i in 0..n {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                let id = format!("m-{i}-{}", wall_us());
                storage.push(Job { id, n: i }).await?;
            }
            println!("PUSHED {n}");
        }
        "status" => {
            let client = redis::Client::open(arg(1)?)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let record: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(format!("st:{}", arg(2)?))
                .query_async(&mut conn)
                .await?;
            println!("{record:?}");
        }
        other => return Err(format!("unknown command {other:?}").into()),
    }
    Ok(())
}
