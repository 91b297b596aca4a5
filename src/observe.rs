//! Observing the node: its event feed of membership and ownership changes (`feed`), its
//! Prometheus metrics (`metrics`), each request's W3C trace context (`trace`), its span and
//! count by route and outcome (`scope`), and the spans of its steps when they are exported
//! (`otel`, feature `otel`).
//!
//! A request that enters a node (over HTTP, over a peer link, or through the library's router)
//! gets a [`RequestScope`]. The scope runs the request's future inside a `debug`-level span
//! (`receive` with `trace`, `stream`, `key_hash`, then `route` and `owner`) and inside a
//! task-local `Current` context. The deep ends of routing, where a handler runs or a forward
//! leaves, read that context instead of taking more arguments: they record their latency on the
//! stream's histogram and say which way the request went, and the forwarders copy the trace
//! context into `traceparent`/`tracestate` (and `X-Meshage-Trace`) or the link frame, so that
//! the owner's logs of the request carry the same id as the sender's; calls to HTTP handlers
//! carry `traceparent` too.
//!
//! The trace id is W3C's: 128 bits, written as 32 hex digits. A client may send it in
//! `traceparent` (with `tracestate`), or as meshage's own `X-Meshage-Trace` (1 to 16 hex
//! digits: the low 64 bits); otherwise the node starts a trace. Every message answer carries
//! `traceparent` (this node's span of the request as parent) and `X-Meshage-Trace`.
//!
//! Imports nothing above the pure core (the ring, the table, the cluster's types): every room
//! above may report here.

mod feed;
mod metrics;
pub(crate) mod otel;
mod scope;
mod trace;

pub(crate) use feed::Feed;
pub use feed::MeshEvents;
pub(crate) use metrics::{ClusterGauges, Histogram, Metrics, Outcome, Route, StreamMetrics};
pub(crate) use otel::{step, Step};
pub(crate) use scope::{forwarded, handled, outgoing, rerouted, RequestScope};
pub(crate) use trace::{
    traceparent, Incoming, SpanId, TraceId, TraceState, MAX_TRACESTATE, SAMPLED,
};
