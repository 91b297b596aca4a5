//! Stop signals shared by every server loop and task.
//!
//! A [`Flag`] is raised once and stays raised; any number of [`Watch`]es wait for it. A node
//! owns a [`Shutdown`]: two flags, *stop* (stop accepting, let open requests finish) and *kill*
//! (drop everything at once), and hands each task a [`Signal`] to watch both. The peer link uses
//! flags of its own for a link that broke or is finishing.
//!
//! Depends on nothing of the crate.

use tokio::sync::watch;

/// A flag raised once, for good.
#[derive(Debug)]
pub(crate) struct Flag(watch::Sender<bool>);

impl Default for Flag {
    fn default() -> Self {
        Flag(watch::channel(false).0)
    }
}

impl Flag {
    pub(crate) fn raise(&self) {
        self.0.send_replace(true);
    }

    pub(crate) fn is_raised(&self) -> bool {
        *self.0.borrow()
    }

    pub(crate) fn watch(&self) -> Watch {
        Watch(self.0.subscribe())
    }
}

/// Waits for a [`Flag`].
#[derive(Debug, Clone)]
pub(crate) struct Watch(watch::Receiver<bool>);

impl Watch {
    pub(crate) fn is_raised(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the flag is raised, or dropped (its owner is gone).
    pub(crate) async fn raised(&mut self) {
        let _ = self.0.wait_for(|raised| *raised).await;
    }
}

/// A node's two ways to end: stop gracefully, or be killed.
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    stop: Flag,
    kill: Flag,
}

impl Shutdown {
    /// Stop accepting; let open requests finish within the drain timeout.
    pub(crate) fn stop(&self) {
        self.stop.raise();
    }

    /// Drop every open connection at once (a crash, or a node dropped without stopping).
    pub(crate) fn kill(&self) {
        self.kill.raise();
    }

    pub(crate) fn signal(&self) -> Signal {
        Signal {
            stop: self.stop.watch(),
            kill: self.kill.watch(),
        }
    }
}

/// What a task watches of its node's [`Shutdown`].
#[derive(Debug, Clone)]
pub(crate) struct Signal {
    pub(crate) stop: Watch,
    pub(crate) kill: Watch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_flag_wakes_every_watch_once_raised_and_stays_raised() {
        let shutdown = Shutdown::default();
        let mut signal = shutdown.signal();
        let waiting = tokio::spawn({
            let mut signal = signal.clone();
            async move { signal.stop.raised().await }
        });
        assert!(!signal.stop.is_raised());
        shutdown.stop();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the watch woke")
            .unwrap();
        signal.stop.raised().await;
        assert!(signal.stop.is_raised() && !signal.kill.is_raised());
        drop(shutdown);
        // The owner is gone: waiting for kill ends too.
        tokio::time::timeout(Duration::from_secs(5), signal.kill.raised())
            .await
            .expect("a dropped flag ends the wait");
    }
}
