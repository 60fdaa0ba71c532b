//! Item 8 (`--only growth`): the memory backend as it grows to 1,000,000 live records. A web
//! process without workers (so every start stays pending) is filled by wrk starts in rounds;
//! after each round wrk polls one pending request. Each round's start and poll p99 is set beside
//! the first round's (the idle figure), with live records and RSS, so stalls show as spikes.

use std::fmt::Write as _;

use super::{poll_headers, runtime, start};
use crate::procs::{BoxError, Wrk, rss, wrk};

/// One round: live records after it, the starts', the polls' and the control's wrk, RSS.
type Row = (u64, Wrk, Wrk, u64, Wrk);
use crate::runner::Run;

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let rt = runtime()?;
    let target: u64 = if run.quick { 200_000 } else { 1_000_000 };
    let (srv, addr) = run.serve(&["ae", "--backend", "memory", "--workers", "off"])?;
    let pending = start(&rt, &addr, "/park")?;
    let headers = poll_headers(&pending);
    let poll_url = format!("http://{addr}/park");
    let start_url = format!("http://{addr}/noop");
    let bare_url = format!("http://{addr}/bare");
    // Warm-up, then the idle figures (few records).
    wrk(&poll_url, &headers, run.conns, 1)?;
    let base_rss = rss(srv.pid())?;
    let mut live: u64 = 1;
    let mut rows = Vec::new();
    while live < target && rows.len() < 60 {
        // All at once: a poll that waits on a lock held while a map grows shows here; the bare
        // handler of the same process (no backend, no lock) is the control: when the machine
        // descheduled the process, its p99 rises too.
        let (poll, starts, control) = std::thread::scope(|s| {
            let poll = s.spawn(|| wrk(&poll_url, &headers, 16, 2).map_err(|e| e.to_string()));
            let control = s.spawn(|| wrk(&bare_url, &[], 8, 2).map_err(|e| e.to_string()));
            let starts = wrk(&start_url, &[], 16, 2).map_err(|e| e.to_string());
            (
                poll.join().unwrap_or_else(|_| Err("wrk thread".into())),
                starts,
                control.join().unwrap_or_else(|_| Err("wrk thread".into())),
            )
        });
        let (poll, starts, control) = (poll?, starts?, control?);
        live += starts.requests.saturating_sub(starts.bad);
        let rss_now = rss(srv.pid())?;
        rows.push((live, starts, poll, rss_now, control));
    }
    let final_poll = wrk(&poll_url, &headers, run.conns, 1)?;
    let end_rss = rss(srv.pid())?;
    drop(srv);
    let (idle_start, idle_poll) = (rows[0].1.p99_ms, rows[0].2.p99_ms);
    // Each round's p99 over the control's in the same round: a stall of the backend that the
    // bare handler of the same process did not see. (round, ratio) at worst.
    let beside = |f: fn(&Row) -> f64| {
        rows.iter()
            .enumerate()
            .map(|(i, r)| (i + 1, f(r) / r.4.p99_ms))
            .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a })
    };
    let (start_round, start_beside) = beside(|r| r.1.p99_ms);
    let (poll_round, poll_beside) = beside(|r| r.2.p99_ms);
    let worst_start = rows.iter().map(|r| r.1.p99_ms).fold(0.0, f64::max);
    let worst_poll = rows
        .iter()
        .map(|r| r.2.p99_ms)
        .chain([final_poll.p99_ms])
        .fold(0.0, f64::max);
    // noop's params (`21`) and no output: nothing to subtract beyond 2 bytes.
    let per = end_rss.saturating_sub(base_rss) as f64 / live as f64 - 2.0;
    run.goal(
        "memory backend: start p99 ≤ 3 × idle while growing to 1,000,000 live records",
        format!(
            "{:.1} × (worst {worst_start:.1} ms vs {idle_start:.1} ms; {live} records)",
            worst_start / idle_start
        ),
        worst_start <= 3.0 * idle_start && live >= target,
    );
    run.goal(
        "memory backend: poll p99 ≤ 3 × idle while growing to 1,000,000 live records",
        format!(
            "{:.1} × (worst {worst_poll:.1} ms vs {idle_poll:.1} ms)",
            worst_poll / idle_poll
        ),
        worst_poll <= 3.0 * idle_poll && live >= target,
    );
    run.goal(
        "memory backend: ≤ 400 bytes per live record beyond params and output",
        format!("{per:.0} bytes (RSS growth / live records)"),
        per <= 400.0,
    );
    let md = &mut run.md;
    let _ = writeln!(
        md,
        "\n## 8. Memory backend growing to {target} live records\n"
    );
    let _ = writeln!(
        md,
        "One web process on the memory backend without workers (every start stays pending; TTL 1 h). Rounds of 2 s: one wrk starts `noop` requests (16 connections) while another polls one pending request (id and token headers, 16 connections) and a third loads the same process's bare JSON handler (8 connections; the control: it takes no lock of the backend), all at once, until {target} requests are live; a poll or start that waits on a lock held while a map grows shows in its p99, and a round where the machine descheduled the process shows in the control's p99 too. The first round (from 1 live record) is the reference (idle: the least grown). The machine is shared with other builds, so a single round's p99 can jump from a descheduled process. RSS from `/proc`. The last poll row is measured after the last round.\n"
    );
    let _ = writeln!(
        md,
        "| round | live records after it | start req/s | start p99 ms | poll req/s | poll p99 ms | control (bare handler) p99 ms | RSS MiB |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (live, s, p, r, c)) in rows.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {live} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.0} |",
            i + 1,
            s.rps,
            s.p99_ms,
            p.rps,
            p.p99_ms,
            c.p99_ms,
            *r as f64 / 1048576.0
        );
    }
    let _ = writeln!(
        md,
        "| end | {live} | | | {:.0} | {:.2} | | {:.0} |",
        final_poll.rps,
        final_poll.p99_ms,
        end_rss as f64 / 1048576.0
    );
    let _ = writeln!(
        md,
        "\nAgainst the control of the same round, at worst: starts' p99 {start_beside:.1} × the control's \
         (round {start_round}), polls' {poll_beside:.1} × (round {poll_round})."
    );
    let _ = writeln!(
        md,
        "\nMemory per live record: {per:.0} bytes (RSS growth {:.0} MiB over {live} records, params `21`).",
        end_rss.saturating_sub(base_rss) as f64 / 1048576.0
    );
    Ok(())
}
