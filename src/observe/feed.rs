//! The node's event feed: membership and ownership changes ([`MeshEvent`]) to every subscriber
//! ([`crate::Node::events`], `GET /api/events`).
//!
//! One bounded broadcast buffer holds the latest events for all subscribers; a subscriber that
//! falls more than the buffer behind loses the oldest, is told how many (`MeshEvent::Lost`), and
//! goes on from there. Publishing never waits for a subscriber. Ownership is computed here, from
//! each table the router publishes and the one before it, off the request path; a new
//! subscriber first gets what each local service owns in the last table published, then every
//! change after it, with nothing missed or counted twice in between.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::ownership::{changes, MeshEvent};
use crate::table::ServiceTable;

/// The feed of one node. Never touched on the request path, so a mutex is fine.
pub(crate) struct Feed {
    node_id: Arc<str>,
    state: Mutex<State>,
}

struct State {
    /// `None` once the node stops: every subscription ends.
    sender: Option<broadcast::Sender<MeshEvent>>,
    /// The last table whose changes were published.
    table: Arc<ServiceTable>,
}

impl Feed {
    /// A feed of `node_id`'s events that keeps the latest `capacity` (at least 1) for its
    /// subscribers.
    pub(crate) fn new(node_id: Arc<str>, capacity: usize) -> Feed {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Feed {
            node_id,
            state: Mutex::new(State {
                sender: Some(sender),
                table: Arc::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `events` to the subscribers there are (none is fine).
    pub(crate) fn publish(&self, events: impl IntoIterator<Item = MeshEvent>) {
        if let Some(sender) = &self.state().sender {
            for event in events {
                let _ = sender.send(event);
            }
        }
    }

    /// Publishes what `table` changed for the local services since the last table published.
    pub(crate) fn publish_table(&self, table: Arc<ServiceTable>) {
        let mut state = self.state();
        let moved = changes(&state.table, &table, &self.node_id);
        if let Some(sender) = &state.sender {
            for change in moved {
                let _ = sender.send(MeshEvent::Ownership(change));
            }
        }
        state.table = table;
    }

    /// A new subscription: what each local service owns now, then every event after it.
    pub(crate) fn subscribe(&self) -> MeshEvents {
        let state = self.state();
        let Some(sender) = &state.sender else {
            return MeshEvents::closed();
        };
        let receiver = sender.subscribe();
        let now = changes(&ServiceTable::default(), &state.table, &self.node_id);
        MeshEvents {
            pending: now.into_iter().map(MeshEvent::Ownership).collect(),
            receiver,
        }
    }

    /// Ends every subscription (after the events it has not read yet); later ones end at once.
    pub(crate) fn close(&self) {
        self.state().sender = None;
    }
}

/// A subscription to a node's events (see [`crate::Node::events`]): bounded; a subscriber that
/// falls behind gets [`MeshEvent::Lost`] instead of the events it missed, and never slows the
/// node.
pub struct MeshEvents {
    /// The starting snapshot, given before anything received.
    pending: VecDeque<MeshEvent>,
    receiver: broadcast::Receiver<MeshEvent>,
}

impl MeshEvents {
    fn closed() -> MeshEvents {
        let (_, receiver) = broadcast::channel(1);
        MeshEvents {
            pending: VecDeque::new(),
            receiver,
        }
    }

    /// The next event; `None` once the node has stopped.
    pub async fn recv(&mut self) -> Option<MeshEvent> {
        if let Some(event) = self.pending.pop_front() {
            return Some(event);
        }
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(count)) => Some(MeshEvent::Lost { count }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<MeshEvent> {
        if let Some(event) = self.pending.pop_front() {
            return Some(event);
        }
        match self.receiver.try_recv() {
            Ok(event) => Some(event),
            Err(broadcast::error::TryRecvError::Lagged(count)) => Some(MeshEvent::Lost { count }),
            Err(_) => None,
        }
    }
}

impl std::fmt::Debug for MeshEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshEvents")
            .field("pending", &self.pending.len())
            .field("queued", &self.receiver.len())
            .finish()
    }
}
