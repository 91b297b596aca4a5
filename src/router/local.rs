//! Running a request on a service of this node: the handler started with its header, panics
//! caught (a panic answers 500 and ends nothing else), the answer awaited until the deadline.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::json;
use tracing::error;

use super::{Extra, LocalService, RouteError, Routed};
use crate::message::{name_in_body, BoxFuture, HandlerError, Header, Payload, Reply};
use crate::observe;
use crate::wire::Deadline;

/// Starts a local service's handler on a message: what it needs is moved into the future it
/// returns, so the caller need not hold the service.
pub(super) fn start_local(
    service_id: Arc<str>,
    local: &LocalService,
    key: &str,
    extra: Extra<'_>,
    previous_owner: Option<Arc<str>>,
    payload: Payload,
) -> BoxFuture<'static, Result<Reply, HandlerError>> {
    // The name the sender gave, else the body's top-level "name" (a JSON object's only; read
    // here, on the owner, so that no node on the way parses the body).
    let name = match extra.name {
        Some(name) => Some(Arc::from(name)),
        None if payload.text_type().is_none() => name_in_body(&payload.body).map(Arc::from),
        None => None,
    };
    let header = Header {
        service_id,
        stream: local.stream.clone(),
        partition_key: Arc::from(key),
        name,
        previous_owner,
        headers: extra.headers.clone(),
    };
    // A handler that panics answers 500, like one that fails: the panic ends neither the
    // client's connection nor a peer link with everything else it carries. One that panics
    // before it returns its future panics again inside it, where `finish_local` catches it.
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        local.handler.handle(payload, header)
    }));
    started.unwrap_or_else(|panic| Box::pin(async move { std::panic::resume_unwind(panic) }))
}

/// The error for a handler that panicked; the panic's message goes to the log, not to the
/// caller.
fn panicked(service_id: &str, panic: &(dyn std::any::Any + Send)) -> HandlerError {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    error!(service_id, panic = message, "handler panicked");
    HandlerError::internal("the handler failed unexpectedly (it panicked)")
}

/// Waits for a local handler's answer until `deadline`, and records how long it took.
pub(super) async fn finish_local(
    service_id: Arc<str>,
    answer: BoxFuture<'static, Result<Reply, HandlerError>>,
    deadline: Deadline,
) -> Result<Routed, RouteError> {
    let answer = observe::step(observe::Step::Handle, &service_id, || answer);
    let mut answer = std::panic::AssertUnwindSafe(answer)
        .catch_unwind()
        .map(|outcome| outcome.unwrap_or_else(|panic| Err(panicked(&service_id, &*panic))));
    let started = Instant::now();
    let timeout = deadline.instant().saturating_duration_since(started);
    // Most handlers answer on their first poll: only those that wait get a timer, which
    // spares the timer wheel a registration per request.
    let outcome = match (&mut answer).now_or_never() {
        Some(result) => Ok(result),
        None => tokio::time::timeout(timeout, answer).await,
    };
    observe::handled(started);
    match outcome {
        Ok(Ok(reply)) => Ok(Routed { service_id, reply }),
        // An error answer, like one that comes back from a forward: it keeps the id of the
        // service that gave it.
        Ok(Err(e)) => Ok(Routed {
            service_id,
            reply: Reply::new(
                e.status,
                Bytes::from(serde_json::to_vec(&json!({ "error": e.message })).unwrap_or_default()),
            ),
        }),
        Err(_) => Err(RouteError::Timeout {
            service_id: service_id.to_string(),
            after: timeout,
        }),
    }
}
