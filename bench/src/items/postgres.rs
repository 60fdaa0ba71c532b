//! Item `postgres` (issue 14): the PostgreSQL backend on a private server. Poll against a floor
//! (an axum handler reading one row by primary key through the same pool), start, job throughput
//! and enqueue-to-start latency. The endpoints run in this process on a runtime of their own;
//! the load comes from `wrk` (a separate process) or from sequential starts.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_endpoint::backend::PostgresBackend;
use async_endpoint::{AsyncEndpoint, AsyncRequest, AsyncTask, Failure, TaskContext};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::{Creds, median, poll_headers, runtime, settle, start};
use crate::procs::{BoxError, wrk};
use crate::runner::Run;

const SECRET: &str = "bench-postgres-secret-0123456789abcdefghijkl";

/// Does nothing; when `enqueued_us` is set, records the time from enqueue to start.
struct Stamp;

static LATENCIES: Mutex<Vec<f64>> = Mutex::new(Vec::new());

fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(serde::Serialize, Deserialize, Default)]
#[serde(default)]
struct StampParams {
    enqueued_us: u64,
}

impl AsyncTask for Stamp {
    const NAME: &'static str = "stamp";
    type Params = StampParams;
    type Output = u64;

    async fn execute_task(&self, p: StampParams, _: TaskContext) -> Result<u64, Failure> {
        if p.enqueued_us > 0 {
            let ms = wall_us().saturating_sub(p.enqueued_us) as f64 / 1000.0;
            LATENCIES.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
        }
        Ok(1)
    }
}

async fn stamp(Query(p): Query<StampParams>, r: AsyncRequest<Stamp>) -> Response {
    r.init(p)
        .handle(Json, |f| Json(f.message().to_owned()))
        .await
}

#[derive(Deserialize)]
struct FloorQuery {
    id: String,
}

/// The floor: one row by primary key through the backend's own pool, as JSON.
async fn floor(
    State(pool): State<deadpool_postgres::Pool>,
    Query(q): Query<FloorQuery>,
) -> Response {
    use axum::response::IntoResponse;
    let Ok(client) = pool.get().await else {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let Ok(statement) = client
        .prepare_cached("SELECT status, output FROM bench.requests WHERE id = $1")
        .await
    else {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match client.query_opt(&statement, &[&q.id]).await {
        Ok(Some(row)) => {
            let status: i16 = row.get(0);
            let output: Option<String> = row.get(1);
            Json(serde_json::json!({ "status": status, "output": output })).into_response()
        }
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

/// The endpoints of the item, served on a runtime of their own.
struct Served {
    addr: String,
    pool: deadpool_postgres::Pool,
}

fn serve(
    rt: &tokio::runtime::Runtime,
    url: &str,
    schema: &str,
    workers: bool,
) -> Result<(Served, AsyncEndpoint), BoxError> {
    rt.block_on(async {
        let backend = PostgresBackend::builder(url)
            .schema(schema)
            .pool_size(8)
            .build()?;
        backend.migrate().await?;
        let pool = backend.pool().clone();
        let endpoint = AsyncEndpoint::builder()
            .secret(SECRET)
            .backend(backend)
            .task(Stamp)
            .in_process_workers(workers)
            .concurrency(64)
            .build()?;
        let app = Router::new()
            .route("/stamp", get(stamp))
            .layer(endpoint.layer())
            .merge(
                Router::new()
                    .route("/floor", get(floor))
                    .with_state(pool.clone()),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok::<_, BoxError>((Served { addr, pool }, endpoint))
    })
}

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let Some(server) = test_support::postgres::start() else {
        return Err("PostgreSQL is not installed".into());
    };
    let url = server.url();
    let served_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rt = runtime()?;
    // The web endpoint (workers on) in schema `bench`: starts, polls, the floor.
    let (web, _endpoint) = serve(&served_rt, &url, "bench", true)?;
    let done = start(&rt, &web.addr, "/stamp")?;
    settle(&rt, &web.addr, "/stamp", &done)?;
    let [id, token] = poll_headers(&done);
    let poll_url = format!("http://{}/stamp", web.addr);
    let floor_url = format!("http://{}/floor?id={}", web.addr, done.0);
    let (secs, conns) = (run.secs, run.conns);
    let count = |sql: &str| -> Result<u64, BoxError> { Ok(server.psql(sql)?.trim().parse()?) };
    // Interleaved rounds (floor, poll, start in each), and the ratio as the median over the
    // rounds of poll / floor in the same round, so load from others on this shared machine
    // hits both sides alike.
    let rounds = if run.quick { 3 } else { 5 };
    let (mut polls, mut floors, mut starts, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let floor_round = wrk(&floor_url, &[], conns, secs)?.rps;
        let poll_round = wrk(&poll_url, &[id, token], conns, secs)?.rps;
        ratios.push(poll_round / floor_round);
        polls.push(poll_round);
        floors.push(floor_round);
        starts.push(wrk(&poll_url, &[], conns, secs)?.rps);
        // The starts leave jobs for the in-process workers: let them drain before the next
        // round, so they load neither side of its poll / floor.
        let drained = Instant::now();
        while count("SELECT count(*) FROM bench.requests WHERE job_open")? > 0 {
            if drained.elapsed() > Duration::from_secs(120) {
                return Err("the started jobs did not drain in 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let per_round = ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    let ratio = median(ratios);
    let (poll, floor_rps, start_rps) = (median(polls), median(floors), median(starts));
    drop(web.pool);

    // Throughput: a backlog enqueued by a web-only endpoint, drained by a worker endpoint.
    let n = if run.quick { 2_000 } else { 10_000 };
    let (backlog, web_only) = serve(&served_rt, &url, "bench_tp", false)?;
    super::starts(&backlog.addr, "/stamp", n, 16)?;
    drop(web_only);
    // Watched through one connection made beforehand (a `psql` started every 20 ms would cost
    // the server a backend start each time, while the peer counts in its own process); the
    // look stops at the first unfinished row.
    let (watcher, watcher_conn) = rt.block_on(deadpool_postgres::tokio_postgres::connect(
        &url,
        deadpool_postgres::tokio_postgres::NoTls,
    ))?;
    rt.spawn(watcher_conn);
    let unfinished = || -> Result<bool, BoxError> {
        let row = rt.block_on(watcher.query_one(
            "SELECT EXISTS (SELECT 1 FROM bench_tp.requests WHERE status < 3)",
            &[],
        ))?;
        Ok(row.try_get(0)?)
    };
    let t = Instant::now();
    let (_workers, worker_endpoint) = serve(&served_rt, &url, "bench_tp", true)?;
    while unfinished()? {
        if t.elapsed() > Duration::from_secs(300) {
            return Err("the backlog did not drain in 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(watcher);
    let throughput = n as f64 / t.elapsed().as_secs_f64();
    drop(worker_endpoint);

    // The peer on the same server: the same backlog, one worker process, the same concurrency.
    let peer = build_graphile().and_then(|bin| graphile_throughput(&bin, &url, n));
    if let Err(error) = &peer {
        crate::runner::log(&format!("graphile_worker peer not measured: {error}"));
    }

    // Enqueue-to-start: one request at a time on an idle worker (in the web process).
    LATENCIES.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let samples = if run.quick { 100 } else { 300 };
    for _ in 0..samples {
        let creds: Creds = start(&rt, &web.addr, &format!("/stamp?enqueued_us={}", wall_us()))?;
        settle(&rt, &web.addr, "/stamp", &creds)?;
    }
    let latencies = std::mem::take(&mut *LATENCIES.lock().unwrap_or_else(|e| e.into_inner()));
    let latency = median(latencies);

    let _ = writeln!(
        run.md,
        "\n## PostgreSQL backend (issue 14)\n\nA private PostgreSQL 15 (fsync off), endpoints in the \
         runner's process on 2 threads, `wrk -c {conns}` for {secs} s, median of {rounds} rounds.\n\n\
         | measured | value |\n|---|---|\n\
         | poll (done request), req/s | {poll:.0} |\n\
         | floor: axum handler reading the row by primary key through the same pool, req/s | {floor_rps:.0} |\n\
         | poll / floor (median of the rounds' ratios; per round: {per_round}) | {ratio:.2} × |\n\
         | start (store + enqueue + NOTIFY, workers running), req/s | {start_rps:.0} |\n\
         | job throughput ({n} queued no-op jobs drained by one worker process, concurrency 64), jobs/s | {throughput:.0} |\n\
         | enqueue-to-start, median of {samples} (idle worker, same host) | {latency:.2} ms |\n\n\
         {peer_row}",
        peer_row = match &peer {
            Ok(rate) => format!(
                "Peer, same server and backlog: `graphile_worker` 0.14.1 (tokio-postgres driver, \
                 `concurrency(64)`, tuned as its own perf test is: `local_queue` of 500, \
                 `complete_job_batch_delay` 5 ms, `poll_interval` 5 ms (with its defaults it \
                 ran 64 jobs/s in a trial run here); jobs added one by one with \
                 `add_job`, then one worker process `init` + `run` until all {n} ran): \
                 {rate:.0} jobs/s, so ours is {:.2} × the peer.\n",
                throughput / rate
            ),
            Err(error) => format!("Peer `graphile_worker`: not measured in this run ({error}).\n"),
        }
    );
    run.goal(
        "PostgreSQL poll ≥ 0.9 × floor",
        format!("{ratio:.2} ×"),
        ratio >= 0.9,
    );
    run.goal(
        "PostgreSQL median enqueue-to-start ≤ 5 ms",
        format!("{latency:.2} ms"),
        latency <= 5.0,
    );
    match peer {
        Ok(rate) => run.goal(
            "PostgreSQL throughput ≥ 1.5 × graphile_worker",
            format!(
                "{:.2} × ({throughput:.0} vs {rate:.0} jobs/s)",
                throughput / rate
            ),
            throughput >= 1.5 * rate,
        ),
        Err(_) => run.goal(
            "PostgreSQL throughput ≥ 1.5 × graphile_worker",
            format!("{throughput:.0} jobs/s; peer not measured"),
            false,
        ),
    }
    Ok(())
}

/// Builds the graphile_worker peer (its own crate outside the workspace) into the runner's
/// target directory.
fn build_graphile() -> Result<std::path::PathBuf, BoxError> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || crate::procs::workspace_root().join("target"),
            std::path::PathBuf::from,
        )
        .join("graphile-peer");
    crate::procs::build_peer("graphile-peer", "graphile_worker", &target)
}

/// Queues `n` jobs with the peer, then drains them with one peer worker process; jobs/s.
fn graphile_throughput(bin: &std::path::Path, url: &str, n: usize) -> Result<f64, BoxError> {
    let run = |args: &[&str], expect: &str| -> Result<f64, BoxError> {
        let out = std::process::Command::new(bin).args(args).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with(expect))
            .ok_or_else(|| {
                format!(
                    "graphile-peer {}: {}",
                    args[0],
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })?;
        Ok(line.rsplit(' ').next().unwrap_or("").parse()?)
    };
    let n_text = n.to_string();
    run(&["push", url, &n_text], "PUSHED")?;
    let secs = run(&["drain", url, "64", &n_text], "DRAINED")?;
    Ok(n as f64 / secs)
}
