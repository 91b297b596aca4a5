//! Fire and forget (`?wait=false`, [`super::SendOptions::no_wait`]): a message taken with a
//! `202` and delivered by a task of its own, with the routing, resends and deadline of a send
//! that waits. What is being delivered is bounded; a failure is logged and counted, never
//! retried past the deadline. At shutdown the node waits for these deliveries within its drain
//! timeout, then abandons what is left (see [`Router::drain_background`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use tokio::sync::Notify;
use tracing::{debug, warn};

use serde_json::Value;

use super::{Extra, RouteError, RouteRequest, Router, SendOptions};
use crate::message::{Message, Payload};
use crate::observe::{Incoming, Route, TraceId, SAMPLED};
use crate::shutdown::Flag;
use crate::wire::Deadline;

/// The deliveries under way and their bound.
pub(super) struct Queue {
    count: AtomicUsize,
    limit: usize,
    /// Notified when the last delivery under way ends.
    idle: Notify,
    /// Raised when the node gives up on what is left.
    abandon: Flag,
}

impl Queue {
    pub(super) fn new(limit: usize) -> Queue {
        Queue {
            count: AtomicUsize::new(0),
            limit,
            idle: Notify::new(),
            abandon: Flag::default(),
        }
    }

    /// A place in the queue, or `None` when it holds its bound.
    fn enter(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// A message to deliver in the background: everything it needs, owned.
pub(crate) struct Delivery {
    pub stream: String,
    pub key: String,
    pub name: Option<String>,
    pub headers: HeaderMap,
    pub idempotent: bool,
    pub deadline: Deadline,
    pub payload: Payload,
    /// The trace context of the request that the `202` answered (whose trace id it gave the
    /// client): the delivery is logged and forwarded under that trace, as a child of the
    /// request's span.
    pub trace: Incoming,
}

impl Router {
    /// [`Router::send_with`] without waiting ([`SendOptions::no_wait`]): `{"trace": ID}` at once,
    /// the message delivered in the background under a trace of its own.
    pub(super) fn send_later(
        &self,
        message: Message,
        options: &SendOptions,
    ) -> Result<Value, RouteError> {
        let trace = Incoming {
            trace: TraceId::new(),
            parent: None,
            flags: SAMPLED,
            state: None,
        };
        let id = trace.trace.short_hex();
        self.deliver_later(Delivery {
            payload: Payload::json(&message.data),
            stream: message.stream,
            key: message.partition_key,
            name: message.name,
            headers: HeaderMap::new(),
            idempotent: options.idempotent,
            deadline: self.deadline(options.timeout),
            trace,
        })?;
        Ok(serde_json::json!({ "trace": String::from_utf8_lossy(&id) }))
    }

    /// Starts delivering `delivery` in the background. Fails, at once, when the node holds its
    /// bound of background deliveries.
    pub(crate) fn deliver_later(&self, delivery: Delivery) -> Result<(), RouteError> {
        let queue = &self.inner.background;
        if !queue.enter() {
            self.metrics().background.refused();
            return Err(RouteError::Backlog(queue.limit));
        }
        let router = self.clone();
        tokio::spawn(async move {
            let mut abandon = router.inner.background.abandon.watch();
            tokio::select! {
                () = router.deliver(delivery) => {}
                () = abandon.raised() => debug!("background delivery abandoned at shutdown"),
            }
            router.inner.background.leave();
        });
        Ok(())
    }

    async fn deliver(&self, delivery: Delivery) {
        let Delivery {
            stream,
            key,
            name,
            headers,
            idempotent,
            deadline,
            payload,
            trace,
        } = delivery;
        let id = trace.trace;
        let mut scope = self.observe(&stream, &key, Route::Unrouted, Some(trace));
        let request = RouteRequest {
            stream: &stream,
            key: &key,
            extra: Extra {
                previous_owner: None,
                name: name.as_deref(),
                headers: &headers,
            },
            target: None,
            hop: false,
            ring: 0,
            idempotent,
            deadline,
        };
        let routed = std::pin::pin!(self.route(request, payload));
        match scope.run(routed).await {
            Ok(routed) => {
                scope.finish(routed.reply.status, Some(&routed.service_id));
                self.metrics().background.delivered();
            }
            Err(e) => {
                scope.finish(e.status(), None);
                self.metrics().background.failed();
                warn!(%stream, trace = %id, error = %e, "background delivery failed");
            }
        }
    }

    /// Abandons every message being delivered in the background (a node killed or dropped).
    pub(crate) fn abandon_background(&self) {
        self.inner.background.abandon.raise();
    }

    /// Waits, up to `timeout`, for the messages being delivered in the background; then
    /// abandons those left (their handlers may have run or not) and says how many.
    pub(crate) async fn drain_background(&self, timeout: Duration) -> usize {
        let queue = &self.inner.background;
        let drained = tokio::time::timeout(timeout, async {
            loop {
                let idle = queue.idle.notified();
                if queue.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
        let left = queue.count.load(Ordering::Acquire);
        if drained.is_err() && left > 0 {
            warn!(left, "background deliveries abandoned at shutdown");
        }
        queue.abandon.raise();
        left
    }
}
