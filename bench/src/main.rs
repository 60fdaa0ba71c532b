//! The benchmark runner of async-endpoint.
//!
//! ```sh
//! cargo run --release -p bench            # full run (~ 12.5 min on 2 cores): writes bench/results.md + PNGs
//! cargo run --release -p bench -- --quick # quick run (< 3 min)
//! cargo run --release -p bench -- --only 1,3   # some items only
//! cargo run --release -p bench -- --only 6 --out results-load.md   # …written to another file
//! cargo run --release -p bench -- --only flood --out results-flood.md   # push-back under a flood
//! cargo run --release -p bench -- --only growth --out results-growth.md   # memory backend to 1M records
//! cargo run --release -p bench -- --only cpu --out results-cpu.md   # CPU and instructions per request
//! cargo run --release -p bench -- --only latency,takeover --out results-lat.md   # across processes
//! cargo run --release -p bench -- --only drain --out results-drain.md   # a 1M-request Redis backlog drained
//! ```
//!
//! The same binary is the server under test (`bench serve <kind> …`) and the load generator
//! (`bench load <kind> …`), so every measured party is a process of its own. Nothing here is a
//! test: figures are ratios measured in one run on one machine.

mod client;
mod items;
mod load;
mod plots;
mod procs;
mod report;
mod runner;
mod servers;

use std::io::Write as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => servers::main(&args[1..]),
        Some("load") => load::main(&args[1..]),
        _ => runner::main(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "bench: {e}");
            ExitCode::FAILURE
        }
    }
}
