//! `bench/results.md`: the machine, the goals, the tables, the plots.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use crate::runner::Run;

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            if s.trim().is_empty() {
                s = String::from_utf8_lossy(&o.stderr).into_owned();
            }
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not found".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn os() -> String {
    let pretty = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{pretty}, Linux {}", first_line("uname", &["-r"]))
}

pub(crate) fn render(
    run: &Run,
    elapsed: Duration,
    pngs: &Result<Vec<(String, String)>, String>,
) -> String {
    let mut md = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(md, "# async-endpoint benchmark results\n");
    let _ = writeln!(
        md,
        "Written by `cargo run --release -p bench{}` ({} mode) in {:.0} s. Figures are ratios measured in one \
         run on one machine, every party (servers, wrk and load clients, redis-server) sharing its cores; \
         nothing here is a test. On this shared machine single rows moved by up to ±20 % between two runs, \
         so a ratio within that distance of its goal is not conclusive either way.\n",
        if run.quick { " -- --quick" } else { "" },
        if run.quick { "quick" } else { "full" },
        elapsed.as_secs_f64()
    );
    let _ = writeln!(md, "| machine | |\n|---|---|");
    let _ = writeln!(
        md,
        "| date | {} |",
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    let _ = writeln!(md, "| cores | {cores} |");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let _ = writeln!(
        md,
        "| load average (1/5/15 min) when the run ended | {} |",
        load.join(" / ")
    );
    let _ = writeln!(md, "| CPU | {} |", cpu_model());
    let _ = writeln!(md, "| OS | {} |", os());
    let _ = writeln!(md, "| rustc | {} |", first_line("rustc", &["--version"]));
    let _ = writeln!(
        md,
        "| redis-server | {} |",
        first_line("redis-server", &["--version"])
    );
    let _ = writeln!(md, "| wrk | {} |", first_line("wrk", &["-v"]));
    let _ = writeln!(md, "| node | {} |", first_line("node", &["--version"]));
    let _ = writeln!(md, "\n## Goals\n");
    let _ = writeln!(md, "| goal | measured | met? |\n|---|---|---|");
    for (goal, measured, met) in &run.goals {
        let _ = writeln!(
            md,
            "| {goal} | {measured} | {} |",
            if *met { "yes" } else { "**NO: missed**" }
        );
    }
    md.push_str(&run.md);
    let _ = writeln!(md, "\n## Plots\n");
    match pngs {
        Ok(list) if !list.is_empty() => {
            for (title, file) in list {
                if file.is_empty() {
                    let _ = writeln!(md, "- {title}");
                } else {
                    let _ = writeln!(md, "![{title}]({file})\n");
                }
            }
        }
        Ok(_) => {
            let _ = writeln!(md, "No plot in this run.");
        }
        Err(e) => {
            let _ = writeln!(md, "No plots: {e}.");
        }
    }
    md
}
