//! The runner: starts redis-server, runs the measured items (`crate::items`, which start the
//! servers and the load processes), and writes `bench/results.md` with its plots.

use std::cell::Cell;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::items::{self, Item};
use crate::plots;
use crate::procs::{BoxError, Proc, Redis, workspace_root};

/// The command line: `[--quick] [--only 1,3] [--out FILE]`.
struct Options {
    quick: bool,
    /// Items to run (all when empty).
    only: Vec<String>,
    /// File name of the report under `bench/`.
    out: String,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let value = |flag: &str| args.iter().skip_while(|a| *a != flag).nth(1);
        Options {
            quick: args.iter().any(|a| a == "--quick"),
            only: value("--only")
                .map(|s| s.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            // `--out results-load.md`: write the report under another name (a partial run with
            // `--only` then leaves results.md alone).
            out: value("--out")
                .cloned()
                .unwrap_or_else(|| "results.md".to_owned()),
        }
    }

    fn wants(&self, item: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == item)
    }
}

/// The shared context of the items: settings of the run, its processes, and what was measured.
pub(crate) struct Run {
    pub(crate) quick: bool,
    exe: PathBuf,
    /// Logs of the processes, and files the items write for them.
    pub(crate) tmp: PathBuf,
    pub(crate) redis: Redis,
    /// Seconds per wrk measurement.
    pub(crate) secs: u64,
    /// Connections per wrk measurement of poll cost.
    pub(crate) conns: u32,
    logs: Cell<u32>,
    pub(crate) md: String,
    pub(crate) figures: plots::Figures,
    /// Goal lines for the summary: (goal, measured, met).
    pub(crate) goals: Vec<(String, String, bool)>,
    /// `MEMORY USAGE` of a queued, a running and a done record (item 1, used by item 4).
    pub(crate) footprint_redis: Option<(u64, u64, u64)>,
    /// Redis `used_memory` per queued request (item 2, used by item 4).
    pub(crate) queued_mem_per: Option<f64>,
}

pub(crate) fn log(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "[bench] {msg}");
}

pub(crate) fn main(args: &[String]) -> Result<(), BoxError> {
    let opts = Options::parse(args);
    let started = Instant::now();
    let mut run = Run::new(opts.quick)?;
    for (name, item) in items::ALL {
        if opts.wants(name) {
            run.item(name, item);
        }
    }
    run.write_report(&opts.out, started.elapsed())?;
    let _ = std::fs::remove_dir_all(&run.tmp);
    Ok(())
}

impl Run {
    fn new(quick: bool) -> Result<Run, BoxError> {
        let tmp = std::env::temp_dir().join(format!("async-endpoint-bench-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        let redis = Redis::start(&tmp)?;
        log(&format!(
            "redis-server on port {}, logs in {}",
            redis.port,
            tmp.display()
        ));
        Ok(Run {
            quick,
            exe: std::env::current_exe()?,
            tmp,
            redis,
            secs: if quick { 2 } else { 4 },
            conns: 32,
            logs: Cell::new(0),
            md: String::new(),
            figures: plots::Figures::default(),
            goals: Vec::new(),
            footprint_redis: None,
            queued_mem_per: None,
        })
    }

    /// Runs one item; a failure is logged and noted in the report, and the run goes on.
    fn item(&mut self, name: &str, item: Item) {
        let t = Instant::now();
        log(&format!("item {name} …"));
        if let Err(e) = item(self) {
            log(&format!("item {name} FAILED: {e}"));
            let _ = writeln!(self.md, "\n**Item {name} could not be measured: {e}**\n");
        }
        log(&format!(
            "item {name} took {:.0} s",
            t.elapsed().as_secs_f64()
        ));
    }

    fn write_report(&self, out_name: &str, elapsed: Duration) -> Result<(), BoxError> {
        let out_dir = workspace_root().join("bench");
        let pngs = plots::draw(&self.figures, &out_dir);
        let report = crate::report::render(self, elapsed, &pngs);
        std::fs::write(out_dir.join(out_name), report)?;
        log(&format!(
            "wrote {} in {:.0} s",
            out_dir.join(out_name).display(),
            elapsed.as_secs_f64()
        ));
        Ok(())
    }

    /// Spawns `cmd` with its stderr in the next numbered log file, `<n>-<name>.log`.
    pub(crate) fn spawn(&self, cmd: Command, name: &str) -> Result<Proc, BoxError> {
        self.logs.set(self.logs.get() + 1);
        Proc::spawn(
            cmd,
            &self.tmp.join(format!("{}-{name}.log", self.logs.get())),
        )
    }

    /// The log file of the process spawned last.
    pub(crate) fn last_log(&self) -> PathBuf {
        std::fs::read_dir(&self.tmp)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{}-", self.logs.get())))
            })
            .unwrap_or_default()
    }

    /// Starts `bench serve <args>` and waits for its `READY <port>`; returns it and its address.
    pub(crate) fn serve(&self, args: &[&str]) -> Result<(Proc, String), BoxError> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("serve").args(args);
        let mut p = self.spawn(cmd, args[0])?;
        let port = p.expect("READY")?;
        Ok((p, format!("127.0.0.1:{port}")))
    }

    /// `bench serve <kind>` on the Redis backend of this run's redis-server, keys under `prefix`.
    pub(crate) fn serve_redis(
        &self,
        kind: &str,
        prefix: &str,
        extra: &[&str],
    ) -> Result<(Proc, String), BoxError> {
        let url = self.redis.url.clone();
        let mut args = vec![
            kind,
            "--backend",
            "redis",
            "--redis",
            &url,
            "--prefix",
            prefix,
        ];
        args.extend_from_slice(extra);
        self.serve(&args)
    }

    /// Starts `bench load <args>`.
    pub(crate) fn load(&self, args: &[&str]) -> Result<Proc, BoxError> {
        let mut cmd = Command::new(&self.exe);
        cmd.arg("load").args(args);
        self.spawn(cmd, "load")
    }

    pub(crate) fn goal(&mut self, goal: &str, measured: String, met: bool) {
        self.goals.push((goal.to_owned(), measured, met));
    }
}
