//! The request path's side of OpenTelemetry export (feature `otel`; see [`crate::otel`]): is
//! export on, the spans of a request's steps, and this node's span ids as the exporter chose
//! them.
//!
//! Export is off until [`crate::otel`] installs an exporter, and then on for the process. While
//! it is off, each function here is one relaxed atomic load (none at all without the feature):
//! no span is made that would not be made anyway, and the ids are meshage's own. What runs only
//! while it is on sits in functions of its own, `#[cold]` and never inlined, so that the
//! request's futures are compiled as in a build without the feature.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::{debug_span, Span};

use super::scope::Context as TraceContext;
use super::trace::{Incoming, SpanId, TraceId, SAMPLED};

/// One step of a request on a node, exported as a span of its own, a child of the node's
/// `receive` span.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    /// Choosing the owner and getting its answer (the steps below happen inside).
    Route,
    /// Sending the request to the owner on another node.
    Forward,
    /// Running a handler of this node.
    Handle,
}

pin_project_lite::pin_project! {
    /// A step's future, inside its span when spans are exported. The future sits at the same
    /// place whether or not there is a span, so that making one moves it no more than without
    /// the feature (a request's futures are kilobytes; an `Either` of the future and the future
    /// in a span costs a copy of it in each step of each request, span or none).
    pub(crate) struct Stepped<F> {
        #[pin]
        future: F,
        span: Option<Span>,
    }
}

impl<F: Future> Future for Stepped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.as_ref().map(Span::enter);
        this.future.poll(cx)
    }
}

/// Runs the future `make` makes as `step` of the current request, for `service`: inside a
/// span of its own when spans are exported, as it is otherwise. The span's parent is the
/// current span: call it while the request runs (see [`super::RequestScope::step`] for the
/// first step).
///
/// The span (if any) is made first and the future after, straight into its place: a call
/// between making the future and placing it makes the compiler build it aside and copy it (a
/// request's futures are kilobytes), which cost the `otel` build without an endpoint 3-7% more
/// instructions per request (BENCHMARKS.md).
#[inline(always)]
pub(crate) fn step<F: Future>(step: Step, service: &str, make: impl FnOnce() -> F) -> Stepped<F> {
    let span = if enabled() {
        Some(current_step_span(step, service))
    } else {
        None
    };
    Stepped::new(make(), span)
}

/// The span of `step` for `service`, a child of the current span. Out of line, as is every
/// body that runs only when spans are exported: inlined into a request's futures, such code
/// cost those futures about 6% more instructions per request with export off (BENCHMARKS.md).
#[cold]
#[inline(never)]
fn current_step_span(step: Step, service: &str) -> Span {
    step_span(Span::current().id(), step, service)
}

impl<F> Stepped<F> {
    #[inline(always)]
    pub(super) fn new(future: F, span: Option<Span>) -> Self {
        Stepped { future, span }
    }
}

/// The span of `step` for `service`, a child of `parent`.
#[cold]
#[inline(never)]
pub(super) fn step_span(parent: Option<tracing::Id>, step: Step, service: &str) -> Span {
    match step {
        Step::Route => debug_span!(parent: parent, "route", stream = service),
        Step::Forward => debug_span!(parent: parent, "forward", service, otel.kind = "client"),
        Step::Handle => debug_span!(parent: parent, "handle", service),
    }
}

#[cfg(feature = "otel")]
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns export on for the process; called once an exporter is installed.
#[cfg(feature = "otel")]
pub(crate) fn enable() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether spans are exported.
#[inline]
pub(crate) fn enabled() -> bool {
    #[cfg(feature = "otel")]
    {
        ENABLED.load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

/// The exported id of the current span (a step's, or the `receive` span's) when spans are
/// exported.
#[inline]
pub(crate) fn current_span() -> Option<SpanId> {
    if !enabled() {
        return None;
    }
    exported_current_span()
}

/// [`current_span`] when spans are exported; out of line (see [`current_step_span`]).
#[cold]
#[inline(never)]
fn exported_current_span() -> Option<SpanId> {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let context = Span::current().context();
        let id = context.span().span_context().span_id();
        SpanId::from_u64(u64::from_be_bytes(id.to_bytes()))
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Makes `span` (a request's `receive` span) the child of the span the request came from, and
/// returns the request's context as the exporter set it: the trace id it kept or chose, the
/// span's id, and the sampler's decision (which follows the parent's `sampled` flag unless
/// `OTEL_TRACES_SAMPLER` says otherwise). A request that came with only `X-Meshage-Trace`
/// has that id as its trace id and, since it names no span, as its parent span id too.
#[cold]
#[inline(never)]
pub(crate) fn join(span: &Span, incoming: Option<Incoming>) -> TraceContext {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::trace::{
            SpanContext, SpanId as OtelSpanId, TraceContextExt, TraceFlags, TraceId as OtelTraceId,
            TraceState as OtelTraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let state = incoming.as_ref().and_then(|i| i.state.clone());
        if let Some(incoming) = &incoming {
            let parent = incoming
                .parent
                .map_or(incoming.trace.as_u128() as u64, SpanId::as_u64);
            let otel_state = incoming
                .state
                .as_ref()
                .and_then(|s| s.value().to_str().ok())
                .and_then(|s| s.parse::<OtelTraceState>().ok())
                .unwrap_or_default();
            let remote = SpanContext::new(
                OtelTraceId::from_bytes(incoming.trace.as_u128().to_be_bytes()),
                OtelSpanId::from_bytes(parent.to_be_bytes()),
                TraceFlags::new(incoming.flags),
                true,
                otel_state,
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        let context = span.context();
        let own = context.span().span_context().clone();
        let trace = TraceId::from_u128(u128::from_be_bytes(own.trace_id().to_bytes()));
        let id = SpanId::from_u64(u64::from_be_bytes(own.span_id().to_bytes()));
        if let (Some(trace), Some(id)) = (trace, id) {
            return TraceContext {
                trace,
                span: id,
                flags: if own.is_sampled() { SAMPLED } else { 0 },
                state,
            };
        }
        // No exporter on this subscriber after all: meshage's own ids.
        own_context(incoming)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = span;
        own_context(incoming)
    }
}

/// A request's context with meshage's own ids: the trace it came with, or a new one (sampled).
pub(crate) fn own_context(incoming: Option<Incoming>) -> TraceContext {
    match incoming {
        Some(incoming) => TraceContext {
            trace: incoming.trace,
            span: SpanId::new(),
            flags: incoming.flags,
            state: incoming.state,
        },
        None => TraceContext {
            trace: TraceId::new(),
            span: SpanId::new(),
            flags: SAMPLED,
            state: None,
        },
    }
}
