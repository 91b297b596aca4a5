//! Waiting on conditions with deadlines, never sleep-then-assert.

use std::future::Future;
use std::time::{Duration, Instant};

/// Waits until `condition` holds, checking every 10 ms; panics with `what` after `timeout`.
pub async fn wait_until<F: FnMut() -> bool>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> Duration {
    let start = Instant::now();
    loop {
        if condition() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`] with an async condition.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
