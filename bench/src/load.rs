//! Load processes the runner starts next to the servers (`bench load <kind> …`):
//!
//! * `slow`: `--clients` concurrent clients use the slow feature for `--secs` seconds, either
//!   directly (`--mode direct`: one GET that lasts as long as the upstream) or as async requests
//!   (`--mode async`: start, then waiting polls until the answer); prints `COMPLETED <n> <secs>`;
//! * `waiting`: starts `--n` pending requests, then holds one waiting poll per request, each on
//!   its own connection; prints `HOLDING <n>` once all are sent and keeps them until killed;
//! * `cross`: the load across processes (see `items::cross`);
//! * `flood`: one owner's flood of starts (see `items::flood`);
//! * `fixed`: exactly `--n` GETs of `--path` over `--conns` keep-alive connections, polls when
//!   `--id` and `--token` are given (CPU per request, see `items::cpu`); prints `DONE <n> <secs>`.

use std::io::Write as _;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::client::Conn;
use crate::servers::Opts;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn main(args: &[String]) -> Result<(), BoxError> {
    let kind = args.first().map(String::as_str).unwrap_or("");
    let opts = Opts::parse(args.get(1..).unwrap_or(&[]));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match kind {
            "slow" => slow(&opts).await,
            "waiting" => waiting(&opts).await,
            "cross" => crate::items::cross::load(&opts).await,
            "flood" => crate::items::flood::load(&opts).await,
            "fixed" => fixed(&opts).await,
            other => Err(format!("unknown load kind {other:?}").into()),
        }
    })
}

fn say(line: &str) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// One full async request on `conn`: start, then waiting polls until the final answer.
pub(crate) async fn async_request(
    conn: &mut Conn,
    path: &str,
    wait: &str,
) -> Result<u16, BoxError> {
    let start = conn.get(path, &[]).await?;
    if start.status != 202 {
        return Ok(start.status);
    }
    let (id, token) = start.credentials()?;
    loop {
        let r = conn
            .get(
                path,
                &[
                    ("Async-Request-Id", &id),
                    ("Async-Request-Token", &token),
                    ("Prefer", wait),
                ],
            )
            .await?;
        if r.status != 202 {
            return Ok(r.status);
        }
    }
}

async fn slow(opts: &Opts) -> Result<(), BoxError> {
    let addr = opts.get("addr").ok_or("--addr")?.to_owned();
    let path = opts.get("path").ok_or("--path")?.to_owned();
    let direct = opts.get("mode") == Some("direct");
    let clients = opts.num("clients", 50);
    let secs = opts.num("secs", 10);
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (addr, path) = (addr.clone(), path.clone());
        set.spawn(async move {
            let mut ok = 0u64;
            let mut conn = None;
            while Instant::now() < until {
                let c = match &mut conn {
                    Some(c) => c,
                    None => match Conn::connect(&addr).await {
                        Ok(c) => conn.insert(c),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let call = async {
                    if direct {
                        c.get(&path, &[])
                            .await
                            .map(|r| r.status)
                            .map_err(BoxError::from)
                    } else {
                        async_request(c, &path, "wait=20").await
                    }
                };
                // Only results that arrive within the run count; a call still waiting then is dropped.
                match tokio::time::timeout_at(until.into(), call).await {
                    Ok(Ok(200)) => ok += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => conn = None,
                }
            }
            ok
        });
    }
    let mut total = 0;
    while let Some(n) = set.join_next().await {
        total += n.unwrap_or(0);
    }
    say(&format!(
        "COMPLETED {total} {:.3}",
        started.elapsed().as_secs_f64()
    ))
}

async fn waiting(opts: &Opts) -> Result<(), BoxError> {
    let addr = opts.get("addr").ok_or("--addr")?.to_owned();
    let path = opts.get("path").unwrap_or("/park").to_owned();
    let n = opts.num("n", 10_000) as usize;
    if opts.get("bare").is_some() {
        // Plain axum baseline: `n` requests to a handler that just sleeps, one per connection.
        let creds = vec![(String::new(), String::new()); n];
        return hold(&addr, &path, &creds, false).await;
    }
    // Start the requests over a few keep-alive connections.
    let per = n.div_ceil(20);
    let mut set = JoinSet::new();
    for i in 0..20 {
        let (addr, path) = (addr.clone(), path.clone());
        let count = per.min(n.saturating_sub(i * per));
        set.spawn(async move {
            let mut conn = Conn::connect(&addr).await?;
            let mut creds = Vec::with_capacity(count);
            for _ in 0..count {
                creds.push(conn.get(&path, &[]).await?.credentials()?);
            }
            Ok::<_, BoxError>(creds)
        });
    }
    let mut creds = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        creds.extend(r??);
    }
    hold(&addr, &path, &creds, true).await
}

/// Holds one request per connection (waiting polls with credentials, or plain GETs) until killed.
async fn hold(
    addr: &str,
    path: &str,
    creds: &[(String, String)],
    poll: bool,
) -> Result<(), BoxError> {
    // One connection per request, opened at most 500 at a time.
    let mut held = Vec::with_capacity(creds.len());
    for chunk in creds.chunks(500) {
        let mut set = JoinSet::new();
        for (id, token) in chunk {
            let (id, token) = (id.clone(), token.clone());
            let (addr, path) = (addr.to_owned(), path.to_owned());
            set.spawn(async move {
                let mut conn = Conn::connect(&addr).await?;
                if poll {
                    conn.send(
                        &path,
                        &[
                            ("Async-Request-Id", &id),
                            ("Async-Request-Token", &token),
                            ("Prefer", "wait=60"),
                        ],
                    )
                    .await?;
                } else {
                    conn.send(&path, &[]).await?;
                }
                Ok::<_, BoxError>(conn)
            });
        }
        while let Some(r) = set.join_next().await {
            held.push(r??);
        }
    }
    say(&format!("HOLDING {}", held.len()))?;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    drop(held);
    Ok(())
}

/// Exactly `--n` GETs over `--conns` connections; every answer must be 2xx.
async fn fixed(opts: &Opts) -> Result<(), BoxError> {
    let addr = opts.get("addr").ok_or("--addr")?.to_owned();
    let path = opts.get("path").ok_or("--path")?.to_owned();
    let n = opts.num("n", 1000) as usize;
    let conns = (opts.num("conns", 8) as usize).max(1);
    let creds = match (opts.get("id"), opts.get("token")) {
        (Some(id), Some(token)) => Some((id.to_owned(), token.to_owned())),
        _ => None,
    };
    let started = Instant::now();
    let per = n.div_ceil(conns);
    let mut set = JoinSet::new();
    for i in 0..conns {
        let count = per.min(n.saturating_sub(i * per));
        let (addr, path, creds) = (addr.clone(), path.clone(), creds.clone());
        set.spawn(async move {
            let mut conn = Conn::connect(&addr).await?;
            let headers: Vec<(&str, &str)> = match &creds {
                Some((id, token)) => vec![("Async-Request-Id", id), ("Async-Request-Token", token)],
                None => Vec::new(),
            };
            for _ in 0..count {
                let r = conn.get(&path, &headers).await?;
                if !(200..300).contains(&r.status) {
                    return Err::<(), BoxError>(format!("{path} answered {}", r.status).into());
                }
            }
            Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    say(&format!("DONE {n} {:.3}", started.elapsed().as_secs_f64()))
}
