//! One client connection's lifecycle: its requests counted, its graceful shutdown when the
//! node stops, and the watch that closes it when idle, stopping or killed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::task::AtomicWaker;

use super::peer::Caller;
use super::Inbound;
use crate::shutdown::Signal;

/// While the node stops, how often it looks for connections that have no request running.
const STOPPING_CHECK: Duration = Duration::from_millis(50);

/// A connection counted as open until dropped; wakes the drain when the last one closes.
pub(super) struct Open {
    open: Arc<AtomicUsize>,
    closed: Arc<tokio::sync::Notify>,
}

impl Open {
    pub(super) fn count(open: &Arc<AtomicUsize>, closed: &Arc<tokio::sync::Notify>) -> Open {
        open.fetch_add(1, Ordering::AcqRel);
        Open {
            open: open.clone(),
            closed: closed.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.closed.notify_waiters();
        }
    }
}

/// One HTTP connection: the node's state, and what the connection is doing: requests started
/// (high 32 bits, wrapping) and requests running (low 32 bits), in one atomic that only its own
/// requests and its watcher touch.
pub(super) struct Activity {
    inbound: Arc<Inbound>,
    /// Who is at the other end, as the connection's TLS handshake said.
    caller: Caller,
    requests: AtomicU64,
    /// The node is stopping: the connection finishes the request it runs and closes.
    stopping: AtomicBool,
    /// The task driving the connection, woken when `stopping` is set.
    waker: AtomicWaker,
}

/// A request running on a connection; counted off when dropped.
pub(super) struct Started(Arc<Activity>);

impl Started {
    pub(super) fn inbound(&self) -> &Inbound {
        &self.0.inbound
    }

    pub(super) fn caller(&self) -> &Caller {
        &self.0.caller
    }
}

impl Activity {
    /// Each request clones this connection's own reference to the node's state, not the node's
    /// shared one, so that two cores serving requests do not pass one reference count back and
    /// forth.
    pub(super) fn new(inbound: Arc<Inbound>, caller: Caller) -> Arc<Activity> {
        Arc::new(Activity {
            inbound,
            caller,
            requests: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        })
    }

    pub(super) fn start(this: &Arc<Activity>) -> Started {
        this.requests.fetch_add((1 << 32) | 1, Ordering::AcqRel);
        Started(this.clone())
    }

    pub(super) fn load(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// Tells the connection's task to shut the connection down gracefully.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Drives `connection` to its end, calling `shutdown` on it (hyper's graceful shutdown:
    /// finish the request running, take no new one) once [`Activity::stop`] is called. A
    /// wake-up costs one flag check; hyper-util's `GracefulShutdown` polled a channel shared by
    /// every connection of the node instead.
    pub(super) async fn drive<C: Future>(
        &self,
        connection: C,
        shutdown: impl Fn(Pin<&mut C>),
    ) -> C::Output {
        let mut connection = std::pin::pin!(connection);
        let mut shutting = false;
        std::future::poll_fn(|cx| {
            if !shutting {
                self.waker.register(cx.waker());
                if self.stopping.load(Ordering::Acquire) {
                    shutdown(connection.as_mut());
                    shutting = true;
                }
            }
            connection.as_mut().poll(cx)
        })
        .await
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Completes when an HTTP connection should be dropped: the node is killed; it started no
/// request for a whole `idle` period and runs none (an idle keep-alive connection,
/// or a client that never finishes its request head); or the node is stopping and the
/// connection has run nothing for two checks in a row. When the node stops it also starts the
/// connection's graceful shutdown ([`Activity::stop`]), which closes an idle keep-alive
/// connection and lets a busy one finish its request, but would wait for a connection that was
/// opened and has not sent a request yet.
pub(super) async fn watch_connection(activity: &Activity, idle: Duration, mut signal: Signal) {
    let mut stopping = signal.stop.is_raised();
    if stopping {
        activity.stop();
    }
    let mut last = activity.load();
    loop {
        let period = if stopping { STOPPING_CHECK } else { idle };
        tokio::select! {
            _ = signal.kill.raised() => return,
            _ = signal.stop.raised(), if !stopping => {
                stopping = true;
                activity.stop();
                last = activity.load();
                continue;
            }
            _ = tokio::time::sleep(period) => {}
        }
        let now = activity.load();
        let running = now & u64::from(u32::MAX);
        if now == last && running == 0 {
            return;
        }
        last = now;
    }
}
