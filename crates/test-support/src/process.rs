//! A child process's stdout, read line by line on a thread.
//!
//! Tests wait for marker lines (`LISTENING 41234`, `READY`, `RUN …`) and, once the child has
//! exited, check what it printed last: [`ChildOutput::join`] first reads the pipe to EOF, so
//! such a check never races the reader thread.

use std::io::{BufRead, BufReader, Read};
use std::ops::Deref;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The lines a child printed so far (newline trimmed), shared with the thread that reads them.
/// Derefs to the `Mutex<Vec<String>>` of lines.
#[derive(Debug)]
pub struct ChildOutput {
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl ChildOutput {
    /// Takes `child`'s stdout (which must be piped) and reads it on a new thread.
    pub fn capture(child: &mut Child) -> ChildOutput {
        let out = child
            .stdout
            .take()
            .expect("the child's stdout is piped and not taken yet");
        ChildOutput::read(out)
    }

    /// Reads any pipe (stdout or stderr) on a new thread.
    pub fn read(pipe: impl Read + Send + 'static) -> ChildOutput {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.trim_end().to_owned());
                line.clear();
            }
        });
        ChildOutput {
            lines,
            reader: Some(reader),
        }
    }

    /// A copy of the lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a line containing `marker` shows up; returns that line from `marker` on (the
    /// test harness may print its own text before ours on the same line). Panics after
    /// `within`.
    pub fn wait_line(&self, marker: &str, within: Duration) -> String {
        wait_line(&self.lines, marker, within)
    }

    /// Waits for the reader to reach EOF: call it after the child exited (its pipe then closes),
    /// before checking its last lines. Idempotent.
    pub fn join(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the stdout reader thread panicked");
        }
    }
}

impl Deref for ChildOutput {
    type Target = Mutex<Vec<String>>;

    fn deref(&self) -> &Mutex<Vec<String>> {
        &self.lines
    }
}

/// Reads a child's stdout lines on a thread (see [`ChildOutput::capture`]).
pub fn collect_lines(child: &mut Child) -> ChildOutput {
    ChildOutput::capture(child)
}

/// Waits until a line containing `marker` shows up in `lines`; returns it from `marker` on.
/// Panics after `within`.
pub fn wait_line(lines: &Mutex<Vec<String>>, marker: &str, within: Duration) -> String {
    let until = Instant::now() + within;
    loop {
        if let Some(at) = lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find_map(|l| l.find(marker).map(|i| l[i..].to_owned()))
        {
            return at;
        }
        assert!(
            Instant::now() < until,
            "no line containing {marker:?} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn waits_for_a_line_and_joins_to_eof() {
        let mut child = Command::new("sh")
            .args(["-c", "echo 'noise READY 7'; sleep 0.2; echo STOPPED"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut out = ChildOutput::capture(&mut child);
        assert_eq!(out.wait_line("READY ", Duration::from_secs(10)), "READY 7");
        assert!(child.wait().unwrap().success());
        out.join();
        assert_eq!(out.lines(), ["noise READY 7", "STOPPED"]);
        assert!(out.lock().unwrap().iter().any(|l| l == "STOPPED"));
    }
}
