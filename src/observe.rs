//! Observing the node: its event feed of membership and ownership changes (`feed`), its
//! Prometheus metrics (`metrics`), and each request's trace id (`trace`),
//! span and count by route and outcome (`scope`).
//!
//! A request that enters a node (over HTTP, over a peer link, or through the library's router)
//! gets a [`RequestScope`]. The scope runs the request's future inside a `debug`-level span
//! (`request` with `trace`, `stream`, `key_hash`, then `route` and `owner`) and inside a
//! task-local `Current` context. The deep ends of routing, where a handler runs or a forward
//! leaves, read that context instead of taking more arguments: they record their latency on the
//! stream's histogram and say which way the request went, and the forwarders copy the trace id
//! into the `X-Meshage-Trace` header or the link frame, so that the owner's logs of the request
//! carry the same id as the sender's.
//!
//! The trace id is 64 bits, written as 16 hex digits. A client may choose it by sending
//! `X-Meshage-Trace` (1 to 16 hex digits); otherwise the node makes one. Every message answer
//! carries it back in the same header.
//!
//! Imports nothing above the pure core (the ring, the table, the cluster's types): every room
//! above may report here.

mod feed;
mod metrics;
mod scope;
mod trace;

pub(crate) use feed::Feed;
pub use feed::MeshEvents;
pub(crate) use metrics::{ClusterGauges, Histogram, Metrics, Outcome, Route, StreamMetrics};
pub(crate) use scope::{current_trace, forwarded, handled, rerouted, RequestScope};
pub(crate) use trace::TraceId;
