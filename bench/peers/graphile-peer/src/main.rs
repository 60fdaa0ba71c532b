//! The graphile_worker peer of async-endpoint's PostgreSQL benchmark, run by the benchmark runner.
//!
//! * `graphile-peer push <url> <n>`: applies graphile_worker's migrations, then adds `n` trivial
//!   jobs one by one (as a web handler would); prints `PUSHED <n> <seconds>`.
//! * `graphile-peer drain <url> <concurrency> <n>`: runs one worker until it has run `n` jobs;
//!   prints `DRAINED <n> <seconds>` (from just before `init`, so its migrations check and
//!   connection set-up count, as async-endpoint's do). Tuned as graphile_worker's own perf test
//!   is (local queue, batched completions, 5 ms poll).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use graphile_worker::{
    IntoTaskHandlerResult, JobSpec, LocalQueueConfig, TaskHandler, WorkerContext, WorkerOptions,
};
use serde::{Deserialize, Serialize};

static RAN: AtomicU64 = AtomicU64::new(0);

#[derive(Deserialize, Serialize)]
struct Noop {
    n: u64,
}

impl TaskHandler for Noop {
    const IDENTIFIER: &'static str = "noop";

    async fn run(self, _ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        std::hint::black_box(self.n);
        RAN.fetch_add(1, Ordering::Relaxed);
        Ok::<(), String>(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().ok_or("missing argument");
    let url = arg(1)?;
    match arg(0)?.as_str() {
        "push" => {
            let n: u64 = arg(2)?.parse()?;
            let worker = WorkerOptions::default()
                .database_url(&url)
                .define_job::<Noop>()
                .init()
                .await?;
            let utils = worker.create_utils();
            let started = Instant::now();
            for n in 0..n {
                utils.add_job(Noop { n }, JobSpec::default()).await?;
            }
            println!("PUSHED {n} {:.3}", started.elapsed().as_secs_f64());
        }
        "drain" => {
            let concurrency: usize = arg(2)?.parse()?;
            let n: u64 = arg(3)?.parse()?;
            let started = Instant::now();
            // graphile_worker's own throughput settings (its benches/perf_test.rs): a local
            // queue fetching in batches, completions batched over 5 ms, a 5 ms fallback poll.
            // With its defaults it ran 64 jobs/s here (one job per fetch, 1 s poll).
            let worker = WorkerOptions::default()
                .database_url(&url)
                .concurrency(concurrency)
                .poll_interval(Duration::from_millis(5))
                .complete_job_batch_delay(Duration::from_millis(5))
                .local_queue(LocalQueueConfig::default().with_size(500))
                .define_job::<Noop>()
                .init()
                .await?;
            tokio::spawn(async move {
                let _ = worker.run().await;
            });
            while RAN.load(Ordering::Relaxed) < n {
                if started.elapsed() > Duration::from_secs(300) {
                    return Err("the backlog did not drain in 300 s".into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            println!("DRAINED {n} {:.3}", started.elapsed().as_secs_f64());
            std::process::exit(0);
        }
        other => return Err(format!("unknown command {other}").into()),
    }
    Ok(())
}
