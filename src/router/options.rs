//! The options of routing: the router's timeouts and limits, and those of one send.

use std::time::Duration;

/// Timeouts and limits of routing.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RouterConfig {
    /// Bounds a whole request: handling, or forwarding and the answer, retries included.
    pub request_timeout: Duration,
    /// How long a node whose connection failed stays off this node's rings, unless gossip
    /// confirms it gone first. Longer than the failure detector takes, so that a dead node
    /// does not come back before gossip drops it.
    pub suspect_timeout: Duration,
    /// The most messages sent without waiting (`?wait=false`) being delivered at once; above
    /// it, such sends are refused (503).
    pub background_limit: usize,
    /// How long after a key moved to a local service its handler is told the service that
    /// owned it before ([`crate::Header::previous_owner`]); zero: never.
    pub handoff_window: Duration,
    /// An owner checks every forward sent to it as a key's owner against its own table, and
    /// refuses one for a key its table gives to another service: the sender routes it again
    /// once the tables agree (see the README's "Stateful handlers").
    pub strict_ownership: bool,
}

setters!(RouterConfig {
    request_timeout: Duration,
    suspect_timeout: Duration,
    background_limit: usize,
    handoff_window: Duration,
    strict_ownership: bool,
});

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            request_timeout: Duration::from_secs(10),
            suspect_timeout: Duration::from_secs(5),
            background_limit: 1024,
            handoff_window: Duration::from_secs(30),
            strict_ownership: false,
        }
    }
}

/// Options of one [`Router::send_with`](super::Router::send_with) or
/// [`Router::broadcast_with`](super::Router::broadcast_with).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SendOptions {
    /// Bounds the whole request, retries included; never longer than the node's request
    /// timeout, which is also the default.
    pub timeout: Option<Duration>,
    /// The handler may safely run twice: a forward that failed after the request may have
    /// reached the owner is sent to the next owner instead of failing with a 502.
    pub idempotent: bool,
    /// Fire and forget: [`Router::send_with`](super::Router::send_with) answers at once with
    /// `{"trace": ID}` and the message is delivered in the background (see the README's "Fire
    /// and forget"). Ignored by broadcasts.
    pub no_wait: bool,
    /// Sends the message to this service, wherever it runs (also on a node that is leaving and
    /// still drains), instead of the key's owner; it is asked once. A handler takes a key's
    /// state from its [`previous_owner`](crate::Header::previous_owner) this way.
    pub service: Option<String>,
}

setters!(SendOptions {
    timeout: Option<Duration>,
    idempotent: bool,
    no_wait: bool,
    service: Option<String>,
});
