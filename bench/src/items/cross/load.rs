//! The load process of item 6 (`bench load cross …`): lanes that start requests on one web
//! process and poll each to its end on the other, tallying what they get.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::task::JoinSet;

use super::{CONCURRENCY, GIVE_UP, RETRIES, Tally};
use crate::client::{Conn, Response};
use crate::procs::BoxError;
use crate::servers::{Opts, wall_ms};

/// One GET on lane connection `k`, connecting first if needed; a failed connection is dropped.
async fn get(
    conns: &mut [Option<Conn>; 2],
    addrs: &[String; 2],
    k: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let conn = match &mut conns[k] {
        Some(c) => c,
        None => conns[k].insert(Conn::connect(&addrs[k]).await?),
    };
    let r = conn.get(path, headers).await;
    if r.is_err() {
        conns[k] = None;
    }
    r
}

/// One request: start on web process `s`, waiting polls on the other one until its end.
async fn one(
    t: &mut Tally,
    conns: &mut [Option<Conn>; 2],
    addrs: &[String; 2],
    s: usize,
    tag: &str,
) {
    let p = 1 - s;
    let began = Instant::now();
    let Ok(start) = get(conns, addrs, s, &format!("/echo?tag={tag}"), &[]).await else {
        t.start_io += 1;
        t.reconnects += 1;
        return;
    };
    if start.status == 500 {
        t.s500 += 1;
    }
    let credentials = match start.status {
        202 => start.credentials().ok(),
        _ => None,
    };
    let Some((id, token)) = credentials else {
        *t.start_refused.entry(start.status).or_default() += 1;
        return;
    };
    t.started += 1;
    let headers = [
        ("Async-Request-Id", id.as_str()),
        ("Async-Request-Token", token.as_str()),
        ("Prefer", "wait=10"),
    ];
    let mut errors = 0;
    loop {
        if began.elapsed() > GIVE_UP {
            t.gave_up += 1;
            return;
        }
        t.polls += 1;
        let Ok(r) = get(conns, addrs, p, "/echo", &headers).await else {
            errors += 1;
            t.reconnects += 1;
            if errors > RETRIES {
                t.gave_up += 1;
                return;
            }
            continue;
        };
        if r.status != 202 {
            t.answer(&r, tag, began);
            return;
        }
    }
}

impl Tally {
    /// Counts the final answer (anything but 202) of the request tagged `tag`, started at `began`.
    fn answer(&mut self, r: &Response, tag: &str, began: Instant) {
        match r.status {
            200 => match serde_json::from_slice::<(String, u32)>(&r.body) {
                Ok((got, pid)) if got == tag => {
                    self.own += 1;
                    *self.by_pid.entry(pid).or_default() += 1;
                    self.latencies.push(began.elapsed().as_secs_f64() * 1000.0);
                }
                _ => self.cross += 1,
            },
            422 => self.failed += 1,
            status => {
                if status == 500 {
                    self.s500 += 1;
                }
                *self.other.entry(status).or_default() += 1;
            }
        }
    }
}

/// The load process: `bench load cross --a ADDR --b ADDR --n N --concurrency C`; prints
/// `RESULT <json of Tally> <seconds>`.
pub(crate) async fn load(opts: &Opts) -> Result<(), BoxError> {
    let addrs = [
        opts.get("a").ok_or("--a")?.to_owned(),
        opts.get("b").ok_or("--b")?.to_owned(),
    ];
    let n = opts.num("n", 10_000) as usize;
    let lanes = opts.num("concurrency", CONCURRENCY as u64) as usize;
    // Tags unique to this run: no result of an earlier run can pass for one of ours.
    let nonce = format!("{:x}{:x}", std::process::id(), wall_ms() as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..lanes {
        let (addrs, next, nonce) = (addrs.clone(), next.clone(), nonce.clone());
        set.spawn(async move {
            let mut t = Tally::default();
            let mut conns = [None, None];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return t;
                }
                one(&mut t, &mut conns, &addrs, i % 2, &format!("{nonce}-{i}")).await;
            }
        });
    }
    let mut tally = Tally::default();
    while let Some(t) = set.join_next().await {
        tally.merge(t?);
    }
    let secs = began.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    std::io::Write::write_all(
        &mut out,
        format!("RESULT {} {secs:.3}\n", serde_json::to_string(&tally)?).as_bytes(),
    )?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}
