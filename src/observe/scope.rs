//! One request's scope: its span, and the task-local context that the deep ends of routing
//! report to (see [`super`]).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use tracing::field::Empty;
use tracing::{debug, debug_span, Instrument, Span};

use super::metrics::{Metrics, Outcome, Route, StreamMetrics};
use super::otel;
use super::trace::{traceparent, Incoming, SpanId, TraceId, TraceState};
use crate::ring::HashRing;
use crate::table::ServiceTable;

/// What the deep ends of routing know about the request they serve.
struct Current {
    context: Context,
    stream: Arc<StreamMetrics>,
    route: Cell<Route>,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// A request's trace context on this node: its trace, this node's span of it (the receive
/// step), the sampling flags and the `tracestate` it came with.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) trace: TraceId,
    pub(crate) span: SpanId,
    pub(crate) flags: u8,
    pub(crate) state: Option<TraceState>,
}

/// What a request leaving this node (a forward, a call to an HTTP handler) carries: the trace,
/// the span it leaves from, the flags and the `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) trace: TraceId,
    pub(crate) parent: SpanId,
    pub(crate) flags: u8,
    pub(crate) state: Option<TraceState>,
}

impl Outgoing {
    /// The `traceparent` header's value, without allocating.
    pub(crate) fn traceparent(&self) -> [u8; 55] {
        traceparent(self.trace, self.parent, self.flags)
    }
}

impl From<Outgoing> for Incoming {
    /// The context as the receiving end sees it.
    fn from(out: Outgoing) -> Incoming {
        Incoming {
            trace: out.trace,
            parent: Some(out.parent),
            flags: out.flags,
            state: out.state,
        }
    }
}

/// The context a request leaving this task carries, if the task serves one. Its parent is the
/// step it leaves from when spans are exported (the forward, the handle), else this node's
/// span of the request.
pub(crate) fn outgoing() -> Option<Outgoing> {
    CURRENT
        .try_with(|c| Outgoing {
            trace: c.context.trace,
            parent: otel::current_span().unwrap_or(c.context.span),
            flags: c.context.flags,
            state: c.context.state.clone(),
        })
        .ok()
}

/// The trace id of the request this task is serving, if any.
#[cfg(test)]
pub(crate) fn current_trace() -> Option<TraceId> {
    CURRENT.try_with(|c| c.context.trace).ok()
}

/// Whether `route` may replace `current`: broadcast and received are fixed by the entry; a
/// send is local or forwarded according to what happened last (a forward answered 421 and
/// then run here is local).
fn settle(current: &Cell<Route>, route: Route) {
    if !matches!(current.get(), Route::Broadcast | Route::Received) {
        current.set(route);
    }
}

/// A local handler ran for `since` until now.
pub(crate) fn handled(since: Instant) {
    let _ = CURRENT.try_with(|c| {
        c.stream.handling.observe(since.elapsed());
        settle(&c.route, Route::Local);
    });
}

/// A forward took from `since` until now.
pub(crate) fn forwarded(since: Instant) {
    let _ = CURRENT.try_with(|c| {
        c.stream.forwarding.observe(since.elapsed());
        settle(&c.route, Route::Forwarded);
    });
}

/// A forward failed and the request goes to the key's next owner.
pub(crate) fn rerouted() {
    let _ = CURRENT.try_with(|c| c.stream.rerouted());
}

/// Hex of the key's place on the ring: enough to tell keys apart in logs without the key.
struct KeyHash<'a>(&'a str);

impl fmt::Display for KeyHash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", HashRing::position(self.0))
    }
}

/// One request entering this node; see the module docs.
pub(crate) struct RequestScope {
    /// The stream's series; lent to the request's context while it runs.
    stream: Option<Arc<StreamMetrics>>,
    context: Context,
    route: Route,
    span: Span,
}

impl RequestScope {
    /// Starts observing a request for `key` on `stream`. `route` is `Broadcast` or `Received`
    /// when the entry knows it, else `Unrouted` until a handler or a forward settles it.
    /// `incoming` is the trace context it arrived with, if any; without one it starts a new
    /// trace (sampled, unless the exporter's sampler says otherwise).
    pub(crate) fn new(
        metrics: &Metrics,
        table: &ServiceTable,
        stream: &str,
        key: &str,
        route: Route,
        incoming: Option<Incoming>,
    ) -> Self {
        let stream_metrics = Some(metrics.stream(stream, || table.stream(stream).is_some()));
        if otel::enabled() {
            return Self::exported(stream_metrics, stream, key, route, incoming);
        }
        let context = otel::own_context(incoming);
        let span = debug_span!(
            "receive",
            trace = %context.trace,
            stream = %stream,
            key_hash = %KeyHash(key),
            route = Empty,
            owner = Empty,
        );
        RequestScope {
            stream: stream_metrics,
            context,
            route,
            span,
        }
    }

    /// [`RequestScope::new`] when spans are exported: the `receive` span joins the incoming
    /// trace through the exporter. Out of line, so that a request's futures are compiled as
    /// without the feature (see [`otel`]).
    #[cold]
    #[inline(never)]
    fn exported(
        stream_metrics: Option<Arc<StreamMetrics>>,
        stream: &str,
        key: &str,
        route: Route,
        incoming: Option<Incoming>,
    ) -> Self {
        let span = debug_span!(
            "receive",
            trace = Empty,
            stream = %stream,
            key_hash = %KeyHash(key),
            route = Empty,
            owner = Empty,
            otel.kind = "server",
        );
        let context = otel::join(&span, incoming);
        span.record("trace", tracing::field::display(context.trace));
        RequestScope {
            stream: stream_metrics,
            context,
            route,
            span,
        }
    }

    /// Runs the future `make` makes as `step` of this request (see [`otel::step`]), whether or
    /// not the request runs yet.
    #[inline(always)]
    pub(crate) fn step<F: Future>(
        &self,
        step: otel::Step,
        service: &str,
        make: impl FnOnce() -> F,
    ) -> otel::Stepped<F> {
        // As in otel::step: the span first, then the future, straight into its place.
        let span = if otel::enabled() {
            Some(otel::step_span(self.span.id(), step, service))
        } else {
            None
        };
        otel::Stepped::new(make(), span)
    }

    /// The context an answer reports: the trace and this node's span of it.
    pub(crate) fn context(&self) -> &Context {
        &self.context
    }

    /// Runs the request inside its span and context. The request is pinned by the caller, so
    /// that this future holds a reference to it, not a second copy (a message's future is
    /// a few kilobytes, and each copy is moved along with the future that holds it).
    pub(crate) async fn run<F: Future>(&mut self, request: Pin<&mut F>) -> F::Output {
        let Some(stream) = self.stream.take() else {
            return request.await;
        };
        let current = Current {
            context: self.context.clone(),
            stream,
            route: Cell::new(self.route),
        };
        let mut scoped = std::pin::pin!(CURRENT.scope(current, request));
        let output = scoped.as_mut().instrument(self.span.clone()).await;
        if let Some(current) = scoped.as_mut().take_value() {
            self.route = current.route.get();
            self.stream = Some(current.stream);
        }
        output
    }

    /// Counts the request by its route and `status`, and logs it at `debug` with the service
    /// that answered.
    pub(crate) fn finish(self, status: StatusCode, owner: Option<&str>) {
        if let Some(stream) = &self.stream {
            stream.count(self.route, Outcome::of(status));
        }
        if !self.span.is_disabled() {
            self.span.record("route", self.route.label());
            if let Some(owner) = owner {
                self.span.record("owner", owner);
            }
            debug!(parent: &self.span, status = status.as_u16(), "request done");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_counts_its_request_by_what_routing_did() {
        let metrics = Metrics::default();
        let table = ServiceTable::default();
        let mut scope = RequestScope::new(&metrics, &table, "echo", "k", Route::Unrouted, None);
        let trace = scope.context().trace;
        let seen = scope
            .run(std::pin::pin!(async {
                forwarded(Instant::now());
                rerouted();
                handled(Instant::now());
                current_trace()
            }))
            .await;
        assert_eq!(seen, Some(trace));
        scope.finish(StatusCode::OK, Some("svc"));
        // "echo" is not in the (empty) table: it counts under the catch-all.
        let other = metrics.stream("echo", || false);
        assert_eq!(
            other.requests(Route::Local, Outcome::Ok),
            1,
            "rerouted, then ran here"
        );
        assert_eq!(
            (
                other.handling.count(),
                other.forwarding.count(),
                other.reroutes()
            ),
            (1, 1, 1)
        );
        assert_eq!(current_trace(), None, "outside a scope there is no trace");

        let mut scope = RequestScope::new(&metrics, &table, "echo", "k", Route::Broadcast, None);
        scope
            .run(std::pin::pin!(async { handled(Instant::now()) }))
            .await;
        scope.finish(StatusCode::BAD_GATEWAY, None);
        assert_eq!(other.requests(Route::Broadcast, Outcome::ServerError), 1);
    }
}
