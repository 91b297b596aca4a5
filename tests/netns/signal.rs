//! Stopping a harness [`Proc`] by signal and waiting for it to exit: only this suite kills,
//! stops and restarts processes, so these controls live here rather than in `tests/common/`.

use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::common::proc::Proc;

impl Proc {
    /// Sends `signal` (`TERM`, `KILL`, ...) to it.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("{}: cannot run kill: {e}", self.name));
        assert!(status.success(), "{}: kill -{signal} failed", self.name);
    }

    /// Waits (blocking, polling) until it exits; `None` after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
