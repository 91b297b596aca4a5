//! A child process for tests, killed when its guard drops, whose output lines can be awaited
//! with a deadline; a failing test prints what it wrote.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs blocking test code from an async test without stalling the runtime's other tasks
/// (in-process nodes); a plain call outside a runtime. Inside one, it must be a multi-thread
/// runtime (`#[tokio::test(flavor = "multi_thread")]`): `block_in_place` panics otherwise.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(f),
        Err(_) => f(),
    }
}

/// A child process, killed on drop; its stdout lines can be awaited. `name` and `child` are
/// crate-wide so that a suite can add controls only it needs (`tests/netns/signal.rs`).
pub struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    output: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                out.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                out.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            lines,
            output,
        }
    }

    /// Waits for a stdout line that satisfies `wanted`; panics after `timeout` or when the
    /// process ends first.
    pub fn wait_line(&self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        blocking(|| {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(line) if wanted(&line) => return line,
                    Ok(_) => continue,
                    Err(RecvTimeoutError::Timeout) => panic!(
                        "{}: no expected line within {timeout:?}; output:\n{}",
                        self.name,
                        self.output()
                    ),
                    Err(RecvTimeoutError::Disconnected) => panic!(
                        "{} ended before printing the expected line; output:\n{}",
                        self.name,
                        self.output()
                    ),
                }
            }
        })
    }

    /// Everything it printed so far, stdout and stderr.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Kills it (SIGKILL, as a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- output of {} -----\n{}", self.name, self.output());
        }
    }
}
