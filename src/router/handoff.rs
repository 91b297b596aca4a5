//! Handing keys over: the previous owner of a key that moved to a local service within the
//! handoff window (see `history`), and a leaving node's wait for its peers to take what they
//! need from it.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::info;

use super::{Inner, Router};
use crate::ring::HashRing;
use crate::table::ServiceTable;

/// A leaving node stops once no peer has sent it a request for this long.
const QUIET: Duration = Duration::from_millis(500);

impl Router {
    /// The service that owned the key of `stream` with this `hash` (none: a message without a
    /// key) before the local service `me`, the key's owner in `table`, within the handoff
    /// window, if it can still be reached (see `history`). While no table changed within the
    /// window: one load and one check.
    #[inline]
    pub(super) fn previous_owner(
        &self,
        table: &ServiceTable,
        stream: &str,
        hash: Option<u32>,
        me: &str,
    ) -> Option<Arc<str>> {
        let window = self.inner.config.handoff_window;
        let hash = hash.filter(|_| !window.is_zero())?;
        let history = self.inner.history.load();
        if history.is_empty() {
            return None;
        }
        history.previous_owner(table, stream, hash, me, Instant::now(), window)
    }

    /// [`Router::previous_owner`] of a request addressed to the local service `me` by id, so
    /// that this node's current table may name another owner. A forward (`hop`) whose sender
    /// told no hint costs one load and one check while no table of this node changed within
    /// the window: the sender tells what its own tables of the window say, and two tables that
    /// disagree with neither changed within the window are older than it. A request by
    /// `X-Service-ID` or [`crate::SendOptions::service`] is looked up in the current table too.
    pub(super) fn previous_owner_by_id(
        &self,
        stream: &str,
        key: &str,
        me: &str,
        hop: bool,
    ) -> Option<Arc<str>> {
        let window = self.inner.config.handoff_window;
        if key.is_empty() || window.is_zero() {
            return None;
        }
        let history = self.inner.history.load();
        if history.is_empty() && hop {
            return None;
        }
        let table = self.inner.table.load();
        let hash = HashRing::hash(key);
        history.previous_owner(&table, stream, hash, me, Instant::now(), window)
    }

    /// Keeps `replaced`, the table current until now, for the handoff window when `next`
    /// places keys differently. `before_joining` builds this node's view without itself, the
    /// placement before it joined, kept up to date while the node is young (gossip makes the
    /// members it joined live one after the other), but for a node that found no one there:
    /// nothing was placed before it, whoever joins later.
    pub(super) fn remember(
        &self,
        replaced: Arc<ServiceTable>,
        next: &ServiceTable,
        before_joining: impl FnOnce() -> ServiceTable,
    ) {
        let window = self.inner.config.handoff_window;
        if window.is_zero() || same_rings(&replaced, next) {
            return;
        }
        let now = Instant::now();
        let young = self.is_young(now);
        let before_joining = match self.inner.history.load().before_joining() {
            _ if !young => None,
            // A node that found no one there when it joined: no key was anyone's before it.
            Some(known) if known.services.is_empty() => Some(known),
            // Taken empty only from a node that has joined and sees no other member at all (a
            // member whose services have not reached it yet does not make it the first).
            _ => Some(Arc::new(before_joining())).filter(|table| {
                !table.services.is_empty() || (self.membership_joined() && self.alone())
            }),
        };
        self.inner
            .history
            .rcu(|history| history.after(replaced.clone(), now, window, before_joining.clone()));
        // Emptied once the window has passed, so that requests stop looking.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner: Weak<Inner> = Arc::downgrade(&self.inner);
            runtime.spawn(async move {
                tokio::time::sleep(window).await;
                if let Some(inner) = inner.upgrade() {
                    Router { inner }.prune_history();
                }
            });
        }
    }

    /// Whether this node's view lists no other member.
    fn alone(&self) -> bool {
        let view = self.inner.view.load();
        !view.members.iter().any(|m| *m.id != *self.inner.node_id)
    }

    /// Whether this node started less than a handoff window ago.
    pub(super) fn is_young(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.inner.born) < self.inner.config.handoff_window
    }

    fn prune_history(&self) {
        let now = Instant::now();
        let window = self.inner.config.handoff_window;
        let young = self.is_young(now);
        self.inner
            .history
            .rcu(|history| history.pruned(now, window, young));
    }

    /// While this node leaves: serves on until no peer has sent it a request for a moment (at
    /// most `bound`; clients' requests do not count, a load balancer may send them until the
    /// end), so that the services that took its keys can take their state from it by id.
    /// Returns at once when hints are off or it runs no service.
    pub(crate) async fn hand_off(&self, bound: Duration) {
        if self.inner.config.handoff_window.is_zero() || self.inner.local.load().is_empty() {
            return;
        }
        info!("leaving: serving requests until none has come for {QUIET:?}, so that new owners can take their keys' state");
        let until = tokio::time::Instant::now() + bound;
        let mut seen = self.inner.metrics.received_total();
        loop {
            if tokio::time::timeout_at(until, tokio::time::sleep(QUIET))
                .await
                .is_err()
            {
                return;
            }
            let now = self.inner.metrics.received_total();
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

/// Whether two tables place every key of every stream alike: the same services on each ring.
fn same_rings(a: &ServiceTable, b: &ServiceTable) -> bool {
    fn servers<'t>(table: &'t ServiceTable, stream: &str) -> Option<&'t [Arc<str>]> {
        table.stream(stream).map(|s| s.ring.servers())
    }
    a.streams().count() == b.streams().count()
        && a.streams()
            .all(|stream| servers(a, stream) == servers(b, stream))
}
