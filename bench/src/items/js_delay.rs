//! Item 5: notification delay of the JS client under Node (`js_delay.mjs`), against a plain
//! poller with the original jQuery schedule.

use std::fmt::Write as _;
use std::process::Command;

use super::quantile;
use crate::procs::BoxError;
use crate::runner::Run;

/// Job lengths, milliseconds.
const DURATIONS: &str = "500,2000,10000";
/// The clients of `js_delay.mjs`: (key in its output, label).
const CLIENTS: [(&str, &str); 3] = [
    (
        "stream",
        "async-endpoint JS client (defaults: shared event stream)",
    ),
    (
        "waiting",
        "async-endpoint JS client, waiting polls (no stream)",
    ),
    ("jquery", "original jQuery schedule"),
];

pub(super) fn measure(run: &mut Run) -> Result<(), BoxError> {
    let Some(version) = node_version() else {
        let _ = writeln!(
            run.md,
            "\n## 5. Notification delay\n\nSKIPPED: node not found."
        );
        return Ok(());
    };
    let count = if run.quick { 6 } else { 20 };
    let v = run_node(run, count)?;
    let md = &mut run.md;
    let _ = writeln!(md, "\n## 5. Notification delay (JS client under Node)\n");
    let _ = writeln!(
        md,
        "Node {version} runs the bundled client (`async_endpoint::js::SOURCE`, default options; only `fetch` is wrapped to \
         count requests) against the real server (memory backend), {count} requests per job length per client, \
         all concurrently. With the defaults, every pending request of the process shares one event stream and \
         is polled once, when the stream says it finished; \"waiting polls\" turns the stream off (`stream: false`) \
         and lifts the per-origin budget of waiting polls (`maxWaitingPolls: Infinity`; Node has no connection limit), \
         so each request holds its own `Prefer: wait` poll, as before the stream. Delay = client resolved − job finished (the task returns its wall-clock finish time; \
         same machine clock). Reference in the same run: a plain poller with the original jQuery schedule \
         (re-poll after 1 s, then 1 s + 40 % of the elapsed time; no waiting polls).\n"
    );
    let _ = writeln!(
        md,
        "| job | client | median delay ms | p90 delay ms | requests per async request (median / max) |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---|");
    let mut fig = Vec::new();
    for ms in DURATIONS.split(',') {
        for (client, label) in CLIENTS {
            let samples = v[client][ms].as_array().cloned().unwrap_or_default();
            let field =
                |f: &str| -> Vec<f64> { samples.iter().filter_map(|s| s[f].as_f64()).collect() };
            let (mut delays, mut reqs) = (field("delay"), field("requests"));
            let (d50, d90) = (quantile(&mut delays, 0.5), quantile(&mut delays, 0.9));
            let r50 = quantile(&mut reqs, 0.5);
            let rmax = reqs.iter().copied().fold(0.0, f64::max);
            let secs = ms.parse::<f64>().unwrap_or(0.0) / 1000.0;
            let _ = writeln!(
                md,
                "| {secs} s | {label} | {d50:.1} | {d90:.1} | {r50:.0} / {rmax:.0} |"
            );
            fig.push((format!("{secs} s"), client.to_owned(), d50));
            if ms == "2000" && client == "stream" {
                run.goals.push((
                    "JS client over the stream, 2 s job: median delay ≤ 20 ms with ≤ 3 requests"
                        .into(),
                    format!("{d50:.1} ms, {r50:.0} requests (max {rmax:.0})"),
                    d50 <= 20.0 && rmax <= 3.0,
                ));
            }
        }
    }
    let streams = v["streams"].as_u64().unwrap_or(0);
    let total = DURATIONS.split(',').count() * count;
    let _ = writeln!(
        md,
        "\nThe shared stream was opened {streams} times in all for the {total} streamed requests \
         (re-opened as requests join; not counted in the per-request column)."
    );
    run.figures.js = fig;
    Ok(())
}

/// `node --version`, or None when there is no node.
fn node_version() -> Option<String> {
    let out = Command::new("node").arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `js_delay.mjs` against a server (memory backend), `count` requests per job length per
/// client; returns its output: client → job length → samples.
fn run_node(run: &Run, count: usize) -> Result<serde_json::Value, BoxError> {
    let (srv, addr) = run.serve(&["ae", "--backend", "memory", "--concurrency", "256"])?;
    let module = run.tmp.join("async_endpoint.js");
    std::fs::write(&module, async_endpoint::js::SOURCE)?;
    let script = run.tmp.join("js_delay.mjs");
    std::fs::write(&script, include_str!("js_delay.mjs"))?;
    let out = Command::new("node")
        .arg(&script)
        .arg(&module)
        .arg(format!("http://{addr}"))
        .arg(count.to_string())
        .arg(DURATIONS)
        .output()?;
    drop(srv);
    if !out.status.success() {
        return Err(format!("node failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
