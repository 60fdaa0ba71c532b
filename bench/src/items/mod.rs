//! The measured items of the issue, one module each, and what they share: requests the runner
//! makes itself, and small statistics.

mod cluster;
mod cpu;
pub(crate) mod cross;
pub(crate) mod flood;
mod growth;

mod drain;
mod footprint;
mod isolation;
mod js_delay;
mod latency;
mod poll_cost;
mod postgres;
mod takeover;
mod throughput;

use std::collections::BTreeMap;

use tokio::runtime::Runtime;

use crate::client::Conn;
use crate::procs::{BoxError, Redis};
use crate::runner::Run;

/// One measured item of the issue.
pub(crate) type Item = fn(&mut Run) -> Result<(), BoxError>;

/// The items in the order of results.md, each with its number for `--only`.
pub(crate) const ALL: [(&str, Item); 14] = [
    ("1", poll_cost::measure),
    ("2", throughput::measure),
    ("3", isolation::measure),
    ("4", footprint::measure),
    ("5", js_delay::measure),
    ("6", cross::measure),
    ("flood", flood::measure),
    ("growth", growth::measure),
    ("drain", drain::measure),
    ("postgres", postgres::measure),
    ("cluster", cluster::measure),
    ("cpu", cpu::measure),
    ("latency", latency::measure),
    ("takeover", takeover::measure),
];

/// A request's `(async_request_id, async_request_token)`.
type Creds = (String, String);

/// The runtime of the runner's own requests.
fn runtime() -> Result<Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The headers of a poll: the request's credentials.
fn poll_headers((id, token): &Creds) -> [(&'static str, &str); 2] {
    [("Async-Request-Id", id), ("Async-Request-Token", token)]
}

/// Starts a request and returns its credentials.
fn start(rt: &Runtime, addr: &str, path: &str) -> Result<Creds, BoxError> {
    rt.block_on(async {
        let mut c = Conn::connect(addr).await?;
        let r = c.get(path, &[]).await?;
        Ok(r.credentials()?)
    })
}

/// Polls until the request is no longer 202; returns the final status.
fn settle(rt: &Runtime, addr: &str, path: &str, creds: &Creds) -> Result<u16, BoxError> {
    let [id, token] = poll_headers(creds);
    rt.block_on(async {
        let mut c = Conn::connect(addr).await?;
        for _ in 0..200 {
            let r = c.get(path, &[id, token, ("Prefer", "wait=5")]).await?;
            if r.status != 202 {
                return Ok(r.status);
            }
        }
        Err("request did not settle".into())
    })
}

/// `n` sequential GETs (starts when `creds` is None, polls otherwise) on one connection.
fn sequential(
    rt: &Runtime,
    addr: &str,
    path: &str,
    creds: Option<&Creds>,
    n: usize,
) -> Result<(), BoxError> {
    let headers = creds.map(poll_headers);
    let headers: &[(&str, &str)] = headers.as_ref().map_or(&[], |h| h);
    rt.block_on(async {
        let mut c = Conn::connect(addr).await?;
        for _ in 0..n {
            let r = c.get(path, headers).await?;
            if !(200..300).contains(&r.status) {
                return Err(format!("unexpected {} from {path}", r.status).into());
            }
        }
        Ok(())
    })
}

/// `n` starts over `conns` concurrent connections.
fn starts(addr: &str, path: &str, n: usize, conns: usize) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let per = n.div_ceil(conns);
        for i in 0..conns {
            let count = per.min(n.saturating_sub(i * per));
            let (addr, path) = (addr.to_owned(), path.to_owned());
            set.spawn(async move {
                let mut c = Conn::connect(&addr).await?;
                for _ in 0..count {
                    let r = c.get(&path, &[]).await?;
                    if r.status != 202 {
                        return Err::<(), BoxError>(format!("start answered {}", r.status).into());
                    }
                }
                Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok(())
    })
}

/// Calls per operation: `**total** (command calls, …)`, each divided by `n`.
fn per(map: &BTreeMap<String, u64>, n: usize) -> String {
    let total: u64 = map.values().sum();
    let parts: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k} {:.2}", *v as f64 / n as f64))
        .collect();
    format!("**{:.2}** ({})", total as f64 / n as f64, parts.join(", "))
}

/// Each key as `` `key` (type, length L, PTTL P ms) ``, the length of a stream only (-1 otherwise).
fn describe_keys(redis: &Redis, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            let kind: String = redis.cmd(&["TYPE", k]).unwrap_or_default();
            let pttl: i64 = redis.cmd(&["PTTL", k]).unwrap_or(-3);
            let len: i64 = if kind == "stream" {
                redis.cmd(&["XLEN", k]).unwrap_or(-1)
            } else {
                -1
            };
            format!("`{k}` ({kind}, length {len}, PTTL {pttl} ms)")
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    quantile(&mut v, 0.5)
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}
