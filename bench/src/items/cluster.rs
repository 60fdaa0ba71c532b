//! Item `cluster` (`--only cluster`): one Redis against a 3-master Redis Cluster (no replicas,
//! so both sides run the same number of copies of each write), at the backend level inside the
//! runner's process (no HTTP): job throughput (a backlog started with `create`, then drained by
//! the engine's worker, `concurrency` 64, one process) and poll rate (64 tasks calling `poll`
//! for a few seconds), plus Redis memory per queued request. Rounds alternate the two, so
//! background load hits both alike; medians are reported.
//!
//! On this machine every server and the runner share 2 cores, so the cluster's three masters
//! cannot run in parallel with each other and the client: the figures show the cost of the
//! layout (more commands to route, reads of every shard), not the gain of separate hosts.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_endpoint::backend::{Backend, NewRequest, RedisBackend};
use async_endpoint::{AsyncEndpoint, AsyncTask, Failure, RequestId, TaskContext};
use test_support::redis::RedisServer;
use test_support::redis_cluster::RedisCluster;

use super::median;
use crate::procs::BoxError;
use crate::runner::{Run, log};

/// Counts the jobs it ran.
struct Count(Arc<AtomicU64>);

impl AsyncTask for Count {
    const NAME: &'static str = "bench_count";
    type Params = u64;
    type Output = u64;

    async fn execute_task(&self, n: u64, _ctx: TaskContext) -> Result<u64, Failure> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }
}

struct Measured {
    starts_per_s: f64,
    jobs_per_s: f64,
    polls_per_s: f64,
    bytes_per_queued: f64,
}

/// `used_memory` summed over the given servers.
fn used_memory(servers: &[&RedisServer]) -> u64 {
    servers
        .iter()
        .map(|s| {
            s.bulk("INFO memory")
                .ok()
                .flatten()
                .and_then(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("used_memory:"))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

async fn one(
    backend: RedisBackend,
    servers: &[&RedisServer],
    n: usize,
    poll_secs: u64,
) -> Result<Measured, BoxError> {
    backend.ping().await?;
    // Starts: 64 at a time.
    let mem0 = used_memory(servers);
    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let batch = (n - next).min(64);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let b = backend.clone();
            set.spawn(async move {
                let now = crate::servers::wall_ms() as u64;
                let mut r = NewRequest::new(
                    RequestId::random(),
                    Count::NAME,
                    "1",
                    now,
                    now + 600_000,
                    Duration::from_secs(900),
                );
                b.place(&mut r);
                let id = r.id;
                b.create(r).await.map(|_| id)
            });
        }
        while let Some(id) = set.join_next().await {
            ids.push(id??);
        }
        next += batch;
    }
    let starts_per_s = n as f64 / t.elapsed().as_secs_f64();
    let bytes_per_queued = used_memory(servers).saturating_sub(mem0) as f64 / n as f64;
    // Drain with the engine's worker.
    let ran = Arc::new(AtomicU64::new(0));
    let endpoint = AsyncEndpoint::builder()
        .secret(b"bench-cluster-secret-0123456789abcdef")
        .backend(backend.clone())
        .task(Count(ran.clone()))
        .in_process_workers(false)
        .concurrency(64)
        .deadline(Duration::from_secs(600))
        .ttl(Duration::from_secs(900))
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = Instant::now();
    let worker = tokio::spawn(async move {
        endpoint
            .run_worker(async move {
                let _ = stopped.await;
            })
            .await;
    });
    let limit = t + Duration::from_secs(180);
    while ran.load(Ordering::Relaxed) < n as u64 {
        if Instant::now() > limit {
            return Err(format!(
                "only {} of {n} jobs ran in 180 s",
                ran.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let jobs_per_s = n as f64 / t.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = worker.await;
    // Polls: 64 tasks over the finished requests.
    let ids = Arc::new(ids);
    let polled = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(poll_secs);
    let mut set = tokio::task::JoinSet::new();
    for k in 0..64 {
        let (b, ids, polled) = (backend.clone(), ids.clone(), polled.clone());
        set.spawn(async move {
            let mut i = k;
            while Instant::now() < until {
                let now = crate::servers::wall_ms() as u64;
                b.poll(ids[i % ids.len()], now).await?;
                polled.fetch_add(1, Ordering::Relaxed);
                i += 64;
            }
            Ok::<(), async_endpoint::Error>(())
        });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    let polls_per_s = polled.load(Ordering::Relaxed) as f64 / poll_secs as f64;
    Ok(Measured {
        starts_per_s,
        jobs_per_s,
        polls_per_s,
        bytes_per_queued,
    })
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let n = if run.quick { 5_000 } else { 20_000 };
    let rounds = if run.quick { 1 } else { 3 };
    let poll_secs = if run.quick { 2 } else { 4 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let single = RedisServer::try_start(false)?;
    let cluster = RedisCluster::start(3, 0).ok_or("redis-server or redis-cli missing")?;
    let masters: Vec<u16> = cluster.masters();
    let mut results: Vec<(Measured, Measured)> = Vec::new();
    for round in 0..rounds {
        let prefix = format!("bc{round}");
        let one_server = rt.block_on(one(
            RedisBackend::builder(single.url())
                .prefix(&prefix)
                .build()?,
            &[&single],
            n,
            poll_secs,
        ))?;
        let nodes: Vec<&RedisServer> = masters.iter().map(|p| cluster.node(*p)).collect();
        let on_cluster = rt.block_on(one(
            RedisBackend::cluster_builder(cluster.urls())
                .prefix(&prefix)
                .build()?,
            &nodes,
            n,
            poll_secs,
        ))?;
        log(&format!(
            "cluster round {round}: one Redis {:.0} jobs/s, {:.0} polls/s; cluster {:.0} jobs/s, {:.0} polls/s",
            one_server.jobs_per_s,
            one_server.polls_per_s,
            on_cluster.jobs_per_s,
            on_cluster.polls_per_s
        ));
        results.push((one_server, on_cluster));
    }
    let med = |f: &dyn Fn(&(Measured, Measured)) -> f64| median(results.iter().map(f).collect());
    let rows = [
        (
            "starts/s (`create`, 64 at a time)",
            med(&|r| r.0.starts_per_s),
            med(&|r| r.1.starts_per_s),
        ),
        (
            "jobs/s (engine worker, one process, concurrency 64)",
            med(&|r| r.0.jobs_per_s),
            med(&|r| r.1.jobs_per_s),
        ),
        (
            "polls/s (`poll`, 64 tasks)",
            med(&|r| r.0.polls_per_s),
            med(&|r| r.1.polls_per_s),
        ),
        (
            "Redis memory per queued request (B)",
            med(&|r| r.0.bytes_per_queued),
            med(&|r| r.1.bytes_per_queued),
        ),
    ];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let md = &mut run.md;
    let _ = writeln!(
        md,
        "## Redis Cluster: one Redis vs 3 masters (`--only cluster`)\n\n\
         One Redis vs a 3-master Redis Cluster (no replicas, 16 shards), backend level in one \
         process, {n} requests, medians of {rounds} interleaved rounds; load average at the end: \
         {}.\n\n| measured | one Redis | cluster | cluster / one |\n|---|---|---|---|",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (what, one, cl) in rows {
        let _ = writeln!(md, "| {what} | {one:.0} | {cl:.0} | {:.2} × |", cl / one);
    }
    let _ = writeln!(
        md,
        "\nAll servers, the worker and the client share 2 cores here, so this shows the cost of \
         the cluster layout, not its gain: on separate hosts each master has a core of its own, \
         and one Redis's single core is the bound a cluster lifts.\n"
    );
    Ok(())
}
