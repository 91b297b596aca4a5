//! The HTTP API of a node, compatible with clients of the original:
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/{stream}/{key}` | the owner's answer, with `X-Service-ID` naming it |
//! | `POST /api/broadcast/{stream}/{key}` | an array, one entry per service of the stream |
//! | `GET /api/services` | every routable service, in the original's shape |
//! | `GET|POST /api/health` | `{"status":"up"}` (503 `leaving` while the node stops) |
//! | `GET /api/members` | every node this one knows: id, endpoint, state, services |
//! | `GET /api/locate/{stream}/{key}` | the service and node that own the key; nothing runs |
//! | `GET /api/status` | what the status page shows (see `status.rs`) |
//! | `GET /` and `GET /metrics` | the status page; Prometheus metrics |
//!
//! The key is everything after `/api/{stream}/`, percent-decoded, so it may hold `/`.
//! Other methods on the message routes are 405. Every error is JSON `{"error": "..."}`.
//!
//! `broadcast`, `locate` and `members` are reserved words: a stream with one of these names
//! cannot be sent to over HTTP (`/api/members/...` is a 404), though the library's router
//! reaches it and `/api/broadcast/{stream}/...` broadcasts to it. `health` and `services` are
//! reserved only as whole paths: `/api/health/{key}` is a send to the stream `health`; so is
//! `status`. Every message answer carries the request's trace id in `X-Meshage-Trace`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cluster::ClusterView;
use crate::forward::{
    is_idempotent_value, parse_timeout, HOP_HEADER, IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_HEADER,
    SERVICE_ID_HEADER, TIMEOUT_HEADER,
};
use crate::link;
use crate::message::Payload;
use crate::metrics::Route;
use crate::observe::{TraceId, TRACE_HEADER};
use crate::path::decode_segment;
use crate::router::{Part, RouteError, RouteRequest, Router};
use crate::status;

/// What the HTTP layer needs besides the router.
pub(crate) struct ApiState {
    pub router: Router,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// The membership view, for `/api/members`.
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// Messages being answered now, over HTTP and peer links.
    pub in_flight: AtomicUsize,
    /// Above this many messages in flight, new ones are answered 503 at once, so that a node
    /// under more load than it can take sheds it instead of queueing without bound.
    pub max_in_flight: usize,
}

/// One of the node's in-flight slots, given back on drop.
pub(crate) struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ApiState {
    /// Takes an in-flight slot for one message, or fails when the node is at its limit.
    pub(crate) fn admit(&self) -> Result<Slot<'_>, RouteError> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(RouteError::Overloaded(self.max_in_flight));
        }
        Ok(Slot(&self.in_flight))
    }
}

/// Stream names the HTTP API keeps for itself; see the module docs.
pub(crate) const RESERVED_STREAMS: [&str; 3] = ["broadcast", "locate", "members"];

type Body = Full<Bytes>;

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&json!({ "error": message })).unwrap_or_default();
    json_response(status, Bytes::from(body))
}

fn value_response(status: StatusCode, value: &Value) -> Response<Body> {
    json_response(
        status,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; use {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn route_error_response(e: &RouteError) -> Response<Body> {
    let mut response = error_response(e.status(), &e.to_string());
    if matches!(
        e.status(),
        StatusCode::MISDIRECTED_REQUEST | StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Splits `stream/key` (both still encoded) at the first slash.
fn split_stream_key(rest: &str) -> Option<(&str, &str)> {
    let (stream, key) = rest.split_once('/')?;
    (!stream.is_empty()).then_some((stream, key))
}

/// Answers one request. Never fails: every error is a JSON response.
pub(crate) async fn handle(
    state: &ApiState,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (request, body) = request.into_parts();
    let path = request.uri.path();
    let Some(rest) = path.strip_prefix("/api/") else {
        // The status page, the metrics, or 404.
        return Ok(status::serve(state, &request.method, path));
    };
    let response = match rest {
        "health" => health(state, &request.method),
        "services" => services(state, &request.method),
        "status" => status::api_status(state, &request.method),
        "members" => members(state, &request.method),
        r if r.starts_with("members/") => error_response(
            StatusCode::NOT_FOUND,
            &format!(
                "no route for {} {path}; `members` is reserved: GET /api/members lists the nodes",
                &request.method
            ),
        ),
        r if r == "locate" || r.starts_with("locate/") => {
            match r.strip_prefix("locate/").and_then(split_stream_key) {
                Some((stream, key)) => locate(state, &request.method, stream, key),
                None => error_response(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "no route for {} {path}; use GET /api/locate/{{stream}}/{{partitionKey}}",
                        &request.method
                    ),
                ),
            }
        }
        _ => {
            let (broadcast, rest) = match rest.strip_prefix("broadcast/") {
                Some(rest) => (true, rest),
                None => (false, rest),
            };
            match split_stream_key(rest) {
                Some((stream, key)) => message(state, &request, body, broadcast, stream, key).await,
                None => error_response(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "no route for {} {path}; messages go to /api/{{stream}}/{{partitionKey}}",
                        &request.method
                    ),
                ),
            }
        }
    };
    Ok(response)
}

fn health(state: &ApiState, method: &Method) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::POST | Method::HEAD) {
        return method_not_allowed("GET, POST");
    }
    let table = state.router.table();
    let leaving = state.router.is_leaving();
    let body = json!({
        "status": if leaving { "leaving" } else { "up" },
        "node": state.router.node_id(),
        "services": table.services.len(),
        "localServices": state.router.local_services().len(),
        "tableVersion": table.version,
    });
    let status = if leaving {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    value_response(status, &body)
}

fn services(state: &ApiState, method: &Method) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return method_not_allowed("GET");
    }
    let table = state.router.table();
    let list: Vec<Value> = table
        .services
        .iter()
        .map(|s| {
            json!({
                "id": &*s.id,
                "stream": &*s.stream,
                "node": &*s.node_id,
                "endpoints": [ { "endpointType": "http", "description": &*s.endpoint } ],
            })
        })
        .collect();
    value_response(StatusCode::OK, &Value::Array(list))
}

fn members(state: &ApiState, method: &Method) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return method_not_allowed("GET");
    }
    let view = state.view.borrow().clone();
    let own_id = state.router.node_id();
    let list: Vec<Value> = view
        .members
        .iter()
        .map(|m| {
            let mut entry = json!({
                "id": &m.id,
                "endpoint": &m.endpoint,
                "state": m.state,
                "self": m.id == own_id,
                "services": &m.services,
            });
            if let Some(ms) = m
                .last_heard
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            {
                entry["lastHeardMs"] = json!(ms.as_millis() as u64);
            }
            if m.id == own_id {
                let withdrawn = state.router.withdrawn_services();
                if !withdrawn.is_empty() {
                    entry["withdrawnServices"] = json!(withdrawn);
                }
            }
            entry
        })
        .collect();
    value_response(StatusCode::OK, &Value::Array(list))
}

fn locate(state: &ApiState, method: &Method, stream: &str, key: &str) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return method_not_allowed("GET");
    }
    let (stream, key) = match (decode_segment(stream), decode_segment(key)) {
        (Ok(s), Ok(k)) => (s, k),
        (Err(e), _) | (_, Err(e)) => {
            return error_response(StatusCode::BAD_REQUEST, &format!("bad path: {e}"));
        }
    };
    let table = state.router.table();
    let Some(owner) = table.owner(&stream, &key) else {
        return route_error_response(&RouteError::UnknownStream(stream.into_owned()));
    };
    let body = json!({
        "stream": &stream,
        "partitionKey": &key,
        "serviceId": &*owner.id,
        "node": &*owner.node_id,
        "endpoint": &*owner.endpoint,
        "local": &*owner.node_id == state.router.node_id(),
        "services": table.services_of(&stream).count(),
        "tableVersion": table.version,
    });
    value_response(StatusCode::OK, &body)
}

/// What the message routes read from a request's head, found in one pass over its headers
/// (the first value of each counts, as with `HeaderMap::get`).
#[derive(Default)]
struct MessageHead<'a> {
    /// Forwarded here by a peer over HTTP.
    hop: bool,
    trace: Option<&'a HeaderValue>,
    content_length: Option<&'a HeaderValue>,
    content_type: Option<&'a HeaderValue>,
    /// The service the caller names in `X-Service-ID`.
    target: Option<&'a HeaderValue>,
    timeout: Option<&'a HeaderValue>,
    idempotency_key: bool,
    idempotent: Option<&'a HeaderValue>,
}

impl<'a> MessageHead<'a> {
    fn read(headers: &'a http::HeaderMap) -> Self {
        let mut head = MessageHead::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                "content-type" => &mut head.content_type,
                "content-length" => &mut head.content_length,
                TRACE_HEADER => &mut head.trace,
                SERVICE_ID_HEADER => &mut head.target,
                TIMEOUT_HEADER => &mut head.timeout,
                IDEMPOTENT_HEADER => &mut head.idempotent,
                HOP_HEADER => {
                    head.hop = true;
                    continue;
                }
                IDEMPOTENCY_KEY_HEADER => {
                    head.idempotency_key = true;
                    continue;
                }
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        head
    }

    /// Whether the caller marked the request safe to run twice; see [`is_idempotent_value`].
    fn idempotent(&self) -> bool {
        self.idempotency_key || self.idempotent.is_some_and(is_idempotent_value)
    }
}

/// `X-Service-ID` on answers, parsed once.
const SERVICE_ID_NAME: HeaderName = HeaderName::from_static(SERVICE_ID_HEADER);
/// `X-Meshage-Trace` on answers, parsed once.
const TRACE_NAME: HeaderName = HeaderName::from_static(TRACE_HEADER);

async fn message(
    state: &ApiState,
    request: &http::request::Parts,
    body: Incoming,
    broadcast: bool,
    stream: &str,
    key: &str,
) -> Response<Body> {
    if request.method != Method::POST {
        return method_not_allowed("POST");
    }
    let _slot = match state.admit() {
        Ok(slot) => slot,
        Err(e) => return route_error_response(&e),
    };
    let (stream, key) = match (decode_segment(stream), decode_segment(key)) {
        (Ok(s), Ok(k)) => (s, k),
        (Err(e), _) | (_, Err(e)) => {
            return error_response(StatusCode::BAD_REQUEST, &format!("bad path: {e}"));
        }
    };
    let head = MessageHead::read(&request.headers);
    let route = if broadcast {
        Route::Broadcast
    } else if head.hop {
        Route::Received
    } else {
        Route::Unrouted
    };
    let trace = head.trace.and_then(|v| TraceId::parse(v.as_bytes()));
    let mut scope = state.router.observe(&stream, &key, route, trace);
    let trace = scope.trace();
    let respond = std::pin::pin!(respond(state, &head, body, broadcast, &stream, &key));
    let (mut response, owner) = scope.run(respond).await;
    scope.finish(response.status(), owner.as_deref());
    if let Ok(v) = HeaderValue::from_bytes(&trace.hex()) {
        response.headers_mut().insert(TRACE_NAME, v);
    }
    response
}

/// Reads a message's body and routes it. Also says which service answered, if one did.
async fn respond(
    state: &ApiState,
    head: &MessageHead<'_>,
    body: Incoming,
    broadcast: bool,
    stream: &str,
    key: &str,
) -> (Response<Body>, Option<Arc<str>>) {
    let limit = state.router.config().request_timeout;
    let deadline = match parse_timeout(head.timeout, limit) {
        Ok(timeout) => Instant::now() + timeout,
        Err(message) => return (error_response(StatusCode::BAD_REQUEST, &message), None),
    };
    let declared_too_long = head
        .content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > state.body_limit as u64);
    if declared_too_long {
        return (too_large(state.body_limit), None);
    }
    let content_type = head
        .content_type
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let target = head
        .target
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let body = match read_body(body, state.body_limit).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return (too_large(state.body_limit), None),
        Err(BodyError::Read(e)) => {
            let message = format!("cannot read the body: {e}");
            return (error_response(StatusCode::BAD_REQUEST, &message), None);
        }
    };
    let payload = Payload { body, content_type };

    if broadcast {
        let response = match state
            .router
            .broadcast_payload(stream, key, payload, deadline)
            .await
        {
            Ok(parts) => json_response(StatusCode::OK, Bytes::from(Part::array(&parts))),
            Err(e) => route_error_response(&e),
        };
        return (response, None);
    }
    let request = RouteRequest {
        stream,
        key,
        target,
        hop: head.hop,
        idempotent: head.idempotent(),
        deadline,
    };
    match state.router.route(request, payload).await {
        Ok(routed) => {
            let mut response = json_response(routed.reply.status, routed.reply.body);
            if let Ok(v) = HeaderValue::from_str(&routed.service_id) {
                response.headers_mut().insert(SERVICE_ID_NAME, v);
            }
            if routed.reply.status == StatusCode::SERVICE_UNAVAILABLE {
                // The owner shed it (or its handler is unavailable): a client may come back.
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            (response, Some(routed.service_id))
        }
        Err(e) => {
            debug!(%stream, error = %e, "request failed");
            (route_error_response(&e), None)
        }
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    Read(hyper::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => f.write_str("length limit exceeded"),
            BodyError::Read(e) => write!(f, "{e}"),
        }
    }
}

/// Reads a whole body (of a request, or of an answer from a peer or a handler) of at most
/// `limit` bytes. A body that comes in one piece (most do) is handed on as it came, without a
/// copy or a buffer list.
pub(crate) async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    let mut first = Bytes::new();
    // The pieces joined, once a second one comes.
    let mut joined = bytes::BytesMut::new();
    while !hyper::body::Body::is_end_stream(&body) {
        let Some(frame) = body.frame().await else {
            break;
        };
        // Trailers carry nothing a message uses.
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue;
        };
        let len = first.len() + joined.len() + data.len();
        if len > limit {
            return Err(BodyError::TooLarge);
        }
        if first.is_empty() && joined.is_empty() {
            first = data;
            continue;
        }
        if joined.is_empty() {
            joined.reserve(len);
            joined.extend_from_slice(&std::mem::take(&mut first));
        }
        joined.extend_from_slice(&data);
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.freeze()
    })
}

fn too_large(limit: usize) -> Response<Body> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body is larger than the limit of {limit} bytes"),
    )
}

/// Serves the API on `listener` until `stop` turns true, then stops accepting and lets open
/// requests (HTTP and peer links) finish for at most `drain`. `killed` drops everything at once.
/// A client connection that starts no request for `idle` is closed (see [`watch_connection`]).
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    idle: Duration,
    killed: watch::Receiver<bool>,
) {
    // HTTP/1.1 for clients; HTTP/2 with prior knowledge for peers configured to forward over it.
    // Which one a connection speaks is known from its first bytes (see `sniff`), so each is
    // served by its own builder, with no detection layer around every read.
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(4096)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20);
    let http = Arc::new((http1, http2));
    // Connections accepted and not yet closed (HTTP and links): the drain waits for them.
    let open = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(tokio::sync::Notify::new());
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        link::tune(&stream);
        let state = state.clone();
        let mut killed = killed.clone();
        let http = http.clone();
        let stop = stop.clone();
        let counted = Open::count(&open, &closed);
        tokio::spawn(async move {
            let _counted = counted;
            // A connection that has sent nothing by the time the node stops is closed: it
            // would keep the drain waiting.
            let mut stopping = stop.clone();
            let protocol = tokio::select! {
                protocol = sniff(&stream) => protocol,
                _ = stopped(&mut stopping) => return,
                _ = stopped(&mut killed) => return,
            };
            if protocol == Protocol::Link {
                let serve = link::serve(
                    stream,
                    move |request| link_request(state.clone(), request),
                    stop,
                );
                tokio::select! {
                    _ = serve => {}
                    _ = stopped(&mut killed) => debug!(%peer, "node killed; link dropped"),
                }
                return;
            }
            // Each request clones this connection's own reference, not the node's shared one,
            // so that two cores serving requests do not pass one reference count back and forth.
            let activity = Arc::new(Activity {
                state,
                requests: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
                waker: AtomicWaker::new(),
            });
            let (counted, driving) = (activity.clone(), activity.clone());
            let service = service_fn(move |request| {
                let started = Activity::start(&counted);
                async move { handle(&started.0.state, request).await }
            });
            let io = TokioIo::new(stream);
            // The connection runs in a task of its own, with one flag to look at on each
            // wake-up; this one watches it, and ends it when idle, stopping or killed.
            let mut serving = if protocol == Protocol::Http2 {
                let connection = http.1.serve_connection(io, service);
                spawn_driven(driving, connection, |c| c.graceful_shutdown(), peer)
            } else {
                let connection = http.0.serve_connection(io, service);
                spawn_driven(driving, connection, |c| c.graceful_shutdown(), peer)
            };
            tokio::select! {
                _ = &mut serving => {}
                _ = watch_connection(&activity, idle, stop, &mut killed) => {
                    serving.abort();
                    debug!(%peer, "connection dropped");
                }
            }
        });
    }
    drop(listener);
    info!("HTTP server stopped accepting; draining open requests");
    let drained = async {
        loop {
            let notified = closed.notified();
            if open.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        warn!(?drain, "drain timed out; dropping open connections");
    }
}

/// Runs an HTTP connection in a task of its own, driven by [`Activity::drive`].
fn spawn_driven<C>(
    activity: Arc<Activity>,
    connection: C,
    shutdown: impl Fn(Pin<&mut C>) + Send + Sync + 'static,
    peer: SocketAddr,
) -> tokio::task::JoinHandle<()>
where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = activity.drive(connection, shutdown).await {
            debug!(%peer, error = %e, "connection ended with an error");
        }
    })
}

/// While the node stops, how often it looks for connections that have no request running.
const STOPPING_CHECK: Duration = Duration::from_millis(50);

/// A connection counted as open until dropped; wakes the drain when the last one closes.
struct Open {
    open: Arc<AtomicUsize>,
    closed: Arc<tokio::sync::Notify>,
}

impl Open {
    fn count(open: &Arc<AtomicUsize>, closed: &Arc<tokio::sync::Notify>) -> Open {
        open.fetch_add(1, Ordering::AcqRel);
        Open {
            open: open.clone(),
            closed: closed.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.closed.notify_waiters();
        }
    }
}

/// One HTTP connection: the node's state, and what the connection is doing: requests started
/// (high 32 bits, wrapping) and requests running (low 32 bits), in one atomic that only its own
/// requests and its watcher touch.
struct Activity {
    state: Arc<ApiState>,
    requests: AtomicU64,
    /// The node is stopping: the connection finishes the request it runs and closes.
    stopping: AtomicBool,
    /// The task driving the connection, woken when `stopping` is set.
    waker: AtomicWaker,
}

/// A request running on a connection; counted off when dropped.
struct Started(Arc<Activity>);

impl Activity {
    fn start(this: &Arc<Activity>) -> Started {
        this.requests.fetch_add((1 << 32) | 1, Ordering::AcqRel);
        Started(this.clone())
    }

    fn load(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// Tells the connection's task to shut the connection down gracefully.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Drives `connection` to its end, calling `shutdown` on it (hyper's graceful shutdown:
    /// finish the request running, take no new one) once [`Activity::stop`] is called. A
    /// wake-up costs one flag check; hyper-util's `GracefulShutdown` polled a channel shared by
    /// every connection of the node instead.
    async fn drive<C: Future>(&self, connection: C, shutdown: impl Fn(Pin<&mut C>)) -> C::Output {
        let mut connection = std::pin::pin!(connection);
        let mut shutting = false;
        std::future::poll_fn(|cx| {
            if !shutting {
                self.waker.register(cx.waker());
                if self.stopping.load(Ordering::Acquire) {
                    shutdown(connection.as_mut());
                    shutting = true;
                }
            }
            connection.as_mut().poll(cx)
        })
        .await
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Completes when an HTTP connection should be dropped: the node is killed; it started no
/// request for a whole `idle` period and runs none (an idle keep-alive connection,
/// or a client that never finishes its request head); or the node is stopping and the
/// connection has run nothing for two checks in a row. When the node stops it also starts the
/// connection's graceful shutdown ([`Activity::stop`]), which closes an idle keep-alive
/// connection and lets a busy one finish its request, but would wait for a connection that was
/// opened and has not sent a request yet.
async fn watch_connection(
    activity: &Activity,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
    killed: &mut watch::Receiver<bool>,
) {
    let mut stopping = *stop.borrow();
    if stopping {
        activity.stop();
    }
    let mut last = activity.load();
    loop {
        let period = if stopping { STOPPING_CHECK } else { idle };
        tokio::select! {
            _ = stopped(killed) => return,
            _ = stopped(&mut stop), if !stopping => {
                stopping = true;
                activity.stop();
                last = activity.load();
                continue;
            }
            _ = tokio::time::sleep(period) => {}
        }
        let now = activity.load();
        let running = now & u64::from(u32::MAX);
        if now == last && running == 0 {
            return;
        }
        last = now;
    }
}

/// Completes when `flag` turns true (or its sender is gone).
pub(crate) async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// What a new connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// The peer link: it opened with [`link::PREFACE`].
    Link,
    /// HTTP/2 with prior knowledge: it opened with the HTTP/2 connection preface.
    Http2,
    /// Anything else (and a connection that closes or says nothing for 10 s): HTTP/1.1, whose
    /// server answers what it cannot parse.
    Http1,
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells what a new connection speaks from its first bytes, read without taking them.
async fn sniff(stream: &tokio::net::TcpStream) -> Protocol {
    let mut head = [0u8; H2_PREFACE.len()];
    let read = async {
        loop {
            let n = stream.peek(&mut head).await.unwrap_or(0);
            if n == 0 {
                return Protocol::Http1;
            }
            let seen = &head[..n];
            let link = seen.len().min(link::PREFACE.len());
            let maybe_link = seen[..link] == link::PREFACE[..link];
            let maybe_h2 = *seen == H2_PREFACE[..n];
            if maybe_link && n >= link::PREFACE.len() {
                return Protocol::Link;
            }
            if maybe_h2 && n == H2_PREFACE.len() {
                return Protocol::Http2;
            }
            if !maybe_link && !maybe_h2 {
                return Protocol::Http1;
            }
            // A partial preface: wait for the rest.
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or(Protocol::Http1)
}

/// Runs one request that arrived over a peer link: it names its service and is never
/// forwarded again.
async fn link_request(state: Arc<ApiState>, request: link::LinkRequest) -> (StatusCode, Bytes) {
    let error = |e: RouteError| {
        let body = serde_json::to_vec(&json!({ "error": e.to_string() })).unwrap_or_default();
        (e.status(), Bytes::from(body))
    };
    let _slot = match state.admit() {
        Ok(slot) => slot,
        Err(e) => return error(e),
    };
    let timeout = request.timeout.min(state.router.config().request_timeout);
    let deadline = Instant::now() + timeout;
    let route = RouteRequest {
        stream: &request.stream,
        key: &request.key,
        target: Some(&request.service_id),
        hop: true,
        idempotent: false,
        deadline,
    };
    let trace = TraceId::from_u64(request.trace);
    let mut scope = state
        .router
        .observe(&request.stream, &request.key, Route::Received, trace);
    let routed = std::pin::pin!(state.router.route(route, request.payload));
    match scope.run(routed).await {
        Ok(routed) => {
            scope.finish(routed.reply.status, Some(&routed.service_id));
            (routed.reply.status, routed.reply.body)
        }
        Err(e) => {
            scope.finish(e.status(), None);
            error(e)
        }
    }
}
