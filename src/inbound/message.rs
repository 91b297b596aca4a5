//! Running a message that arrived: over HTTP (`POST /api/{stream}/{key}`, or
//! `/api/broadcast/...`), or over a peer link. Each takes an in-flight slot, reads what the
//! request asks for (its deadline, target, idempotency, trace), and hands it to the router.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use tracing::debug;

use super::peer::Caller;
use super::Inbound;
use crate::answer::{json_response, ApiError, Body};
use crate::delivery::Refusal;
use crate::link::{Answer, LinkRequest};
use crate::message::{Payload, Reply};
use crate::observe::{self, Route, SpanId, Step, TraceId};
use crate::path::decode_segment;
use crate::relay::{request_headers, MESSAGE_NAME_HEADER};
use crate::router::{Delivery, Extra, Part, RouteError, RouteRequest};
use crate::wire::{
    is_idempotent_value, parse_timeout, read_body, BodyError, Deadline, Held, HOP_HEADER,
    IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_HEADER, PREVIOUS_OWNER_HEADER, RING_HEADER,
    SERVICE_ID_HEADER, TIMEOUT_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER, TRACE_HEADER,
};

/// What the message routes read from a request's head, found in one pass over its headers
/// (the first value of each counts, as with `HeaderMap::get`).
#[derive(Default)]
struct MessageHead<'a> {
    /// Forwarded here by a peer over HTTP.
    hop: bool,
    trace: Option<&'a HeaderValue>,
    traceparent: Option<&'a HeaderValue>,
    tracestate: Option<&'a HeaderValue>,
    content_length: Option<&'a HeaderValue>,
    content_type: Option<&'a HeaderValue>,
    /// The service the caller names in `X-Service-ID`.
    target: Option<&'a HeaderValue>,
    timeout: Option<&'a HeaderValue>,
    idempotency_key: bool,
    idempotent: Option<&'a HeaderValue>,
    /// `X-Message-Name`, read on forwards (percent-encoded there).
    name: Option<&'a HeaderValue>,
    /// `X-Meshage-Previous-Owner`, read on forwards.
    previous_owner: Option<&'a HeaderValue>,
    /// `X-Meshage-Ring`, read on forwards.
    ring: Option<&'a HeaderValue>,
}

impl<'a> MessageHead<'a> {
    fn read(headers: &'a http::HeaderMap) -> Self {
        let mut head = MessageHead::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                "content-type" => &mut head.content_type,
                "content-length" => &mut head.content_length,
                TRACE_HEADER => &mut head.trace,
                TRACEPARENT_HEADER => &mut head.traceparent,
                TRACESTATE_HEADER => &mut head.tracestate,
                SERVICE_ID_HEADER => &mut head.target,
                TIMEOUT_HEADER => &mut head.timeout,
                IDEMPOTENT_HEADER => &mut head.idempotent,
                MESSAGE_NAME_HEADER => &mut head.name,
                PREVIOUS_OWNER_HEADER => &mut head.previous_owner,
                RING_HEADER => &mut head.ring,
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

/// What the message routes read from a request's query, as the original 0.4.x reads it:
/// `wait` (absent or `true`: wait for the answer; anything else: fire and forget), `timeout`
/// (milliseconds, as `X-Request-Timeout`), `messageName`, and `partitionKey` (a key for a path
/// without one). Other parameters are ignored; of a repeated one the first counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct MessageQuery {
    pub(crate) no_wait: bool,
    pub(crate) timeout: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) key: Option<String>,
}

impl MessageQuery {
    /// Reads `query` (the part of the URI after `?`). Fails on a value that is not
    /// percent-encoded UTF-8.
    pub(crate) fn read(query: Option<&str>) -> Result<MessageQuery, String> {
        let mut read = MessageQuery::default();
        let mut wait = None;
        for pair in query.unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "wait" => &mut wait,
                "timeout" => &mut read.timeout,
                "messageName" => &mut read.name,
                "partitionKey" => &mut read.key,
                _ => continue,
            };
            if slot.is_none() {
                // As in a form: `+` is a space.
                let value = value.replace('+', " ");
                let value = decode_segment(&value).map_err(|e| format!("query `{name}`: {e}"))?;
                *slot = Some(value.into_owned());
            }
        }
        read.no_wait = wait.is_some_and(|w| w != "true");
        Ok(read)
    }
}

/// `X-Service-ID` on answers, parsed once.
const SERVICE_ID_NAME: HeaderName = HeaderName::from_static(SERVICE_ID_HEADER);
/// `X-Meshage-Trace` and `traceparent` on answers, parsed once.
const TRACE_NAME: HeaderName = HeaderName::from_static(TRACE_HEADER);
const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT_HEADER);

/// `POST /api/{stream}/{key}` and `POST /api/broadcast/{stream}/{key}`, the stream and key
/// still percent-encoded, from `caller`. Every answer carries the request's trace id (in
/// `traceparent`, with this node's span of the request, and in `X-Meshage-Trace`). On a
/// keyed node, a forward (`X-Meshage-Hop`) from anyone but a peer over mutual TLS is answered
/// 401 before anything else is done with it.
pub(super) async fn message(
    inbound: &Inbound,
    caller: &Caller,
    request: &http::request::Parts,
    body: &mut Incoming,
    broadcast: bool,
    stream: &str,
    key: &str,
) -> Response<Body> {
    let head = MessageHead::read(&request.headers);
    let incoming = observe::Incoming::from_headers(head.traceparent, head.tracestate, head.trace);
    // Refused before it is routed: answered with its trace id all the same.
    let refuse = |e: ApiError| {
        let (trace, flags) = incoming
            .as_ref()
            .map_or((TraceId::new(), observe::SAMPLED), |i| (i.trace, i.flags));
        with_trace(e.response(), trace, SpanId::new(), flags)
    };
    if head.hop && inbound.keyed() && !caller.is_peer(inbound).await {
        debug!(remote = %caller.remote, "forward refused: not over mutual TLS from a published peer");
        inbound.router.metrics().peers.refused_forward();
        return refuse(ApiError::NotPeer);
    }
    if request.method != Method::POST {
        return refuse(ApiError::MethodNotAllowed("POST"));
    }
    let _slot = match inbound.admission.admit() {
        Ok(slot) => slot,
        Err(e) => return refuse(e.into()),
    };
    let (stream, key) = match (decode_segment(stream), decode_segment(key)) {
        (Ok(s), Ok(k)) => (s, k),
        (Err(e), _) | (_, Err(e)) => return refuse(ApiError::BadPath(e.to_string())),
    };
    let query = match MessageQuery::read(request.uri.query()) {
        Ok(query) => query,
        Err(e) => return refuse(ApiError::BadRequest(e)),
    };
    // A path without a key may name one in its query, as the original's did.
    let key = match (&*key, &query.key) {
        ("", Some(named)) => std::borrow::Cow::Owned(named.clone()),
        _ => key,
    };
    let route = if broadcast {
        Route::Broadcast
    } else if head.hop {
        Route::Received
    } else {
        Route::Unrouted
    };
    let mut scope = inbound.router.observe(&stream, &key, route, incoming);
    // A message delivered in the background is a child of this node's span of the request.
    let context = scope.context();
    let trace = observe::Incoming {
        trace: context.trace,
        parent: Some(context.span),
        flags: context.flags,
        state: context.state.clone(),
    };
    let relayed = request_headers(&request.headers, inbound.tokens.is_some());
    let asked = Asked {
        head: &head,
        query: &query,
        headers: &relayed,
        trace,
    };
    let respond = std::pin::pin!(respond(inbound, asked, body, broadcast, &stream, &key));
    let (response, owner) = match scope.run(respond).await {
        Ok(answered) => answered,
        Err(e) => {
            debug!(%stream, error = %e, "request failed");
            (e.response(), None)
        }
    };
    let context = scope.context();
    let (trace, span, flags) = (context.trace, context.span, context.flags);
    scope.finish(response.status(), owner.as_deref());
    with_trace(response, trace, span, flags)
}

/// `response` with `trace` in `X-Meshage-Trace` (its low 64 bits) and in `traceparent`, from
/// `span`.
fn with_trace(
    mut response: Response<Body>,
    trace: TraceId,
    span: SpanId,
    flags: u8,
) -> Response<Body> {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_bytes(&trace.short_hex()) {
        headers.insert(TRACE_NAME, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(&observe::traceparent(trace, span, flags)) {
        headers.insert(TRACEPARENT_NAME, v);
    }
    response
}

/// What a message's request asks for, read from its head and query.
struct Asked<'a> {
    head: &'a MessageHead<'a>,
    query: &'a MessageQuery,
    /// The client's headers for the handler (see `relay`).
    headers: &'a http::HeaderMap,
    /// The trace context of a message delivered in the background.
    trace: observe::Incoming,
}

/// Reads a message's body and routes it, or, asked not to wait, starts delivering it and
/// answers 202. Also says which service answered, if one did.
async fn respond(
    inbound: &Inbound,
    asked: Asked<'_>,
    body: &mut Incoming,
    broadcast: bool,
    stream: &str,
    key: &str,
) -> Result<(Response<Body>, Option<Arc<str>>), ApiError> {
    let head = asked.head;
    let limit = inbound.router.config().request_timeout;
    // `X-Request-Timeout` and `?timeout=`: the smaller wins.
    let in_header = parse_timeout(head.timeout).map_err(ApiError::BadRequest)?;
    let in_query = match &asked.query.timeout {
        Some(ms) => {
            let value = HeaderValue::from_str(ms)
                .map_err(|_| ApiError::BadRequest(format!("invalid timeout `{ms}`")))?;
            parse_timeout(Some(&value)).map_err(ApiError::BadRequest)?
        }
        None => None,
    };
    let wanted = match (in_header, in_query) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let deadline = Deadline::within(wanted, limit);
    let declared_too_long = head
        .content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > inbound.body_limit as u64);
    if declared_too_long {
        return Err(ApiError::TooLarge(inbound.body_limit));
    }
    let content_type = head
        .content_type
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let target = head
        .target
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    // The body arrives within the request's deadline, or the request ends there: a client
    // that stalls halfway holds a slot and a buffer no longer than any request may.
    // While it arrives, it holds part of the node's budget for bodies still arriving, given
    // back once it is read whole.
    let until = tokio::time::Instant::from_std(deadline.instant());
    let mut held = Held::new(&inbound.budget);
    let read = read_body(body, inbound.body_limit, |n| held.take(n));
    let body = match tokio::time::timeout_at(until, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(BodyError::TooLarge)) => return Err(ApiError::TooLarge(inbound.body_limit)),
        Ok(Err(BodyError::Budget)) => return Err(ApiError::Busy(inbound.budget.max())),
        Ok(Err(BodyError::Read(e))) => {
            return Err(ApiError::BadRequest(format!("cannot read the body: {e}")));
        }
        Err(_) => {
            return Err(ApiError::BodyTimeout(
                wanted.map_or(limit, |t| t.min(limit)),
            ))
        }
    };
    drop(held);
    let payload = Payload { body, content_type };
    // The name the sender gave: in the query, or (from a peer) in `X-Message-Name`.
    let forwarded_name = match head.name.map(|v| v.to_str()) {
        Some(Ok(v)) => Some(
            decode_segment(v).map_err(|e| ApiError::BadRequest(format!("X-Message-Name: {e}")))?,
        ),
        Some(Err(_)) => return Err(ApiError::BadRequest("invalid X-Message-Name".into())),
        None => None,
    };
    let name = asked.query.name.as_deref().or(forwarded_name.as_deref());
    let extra = Extra {
        name,
        headers: asked.headers,
        previous_owner: head
            .previous_owner
            .filter(|_| head.hop)
            .and_then(|v| v.to_str().ok()),
    };

    if asked.query.no_wait && !broadcast && !head.hop {
        inbound.router.deliver_later(Delivery {
            stream: stream.to_owned(),
            key: key.to_owned(),
            name: name.map(str::to_owned),
            headers: asked.headers.clone(),
            idempotent: head.idempotent(),
            deadline,
            payload,
            trace: asked.trace.clone(),
        })?;
        // The id of `X-Meshage-Trace` (its low 64 bits), which the answer carries too.
        let trace = String::from_utf8_lossy(&asked.trace.trace.short_hex()).into_owned();
        let body = serde_json::to_vec(&serde_json::json!({ "trace": trace })).unwrap_or_default();
        return Ok((json_response(StatusCode::ACCEPTED, Bytes::from(body)), None));
    }
    if broadcast {
        let parts = inbound
            .router
            .broadcast_payload(stream, key, extra, payload, deadline)
            .await?;
        let array = Bytes::from(Part::array(&parts));
        return Ok((json_response(StatusCode::OK, array), None));
    }
    let request = RouteRequest {
        stream,
        key,
        extra,
        target,
        hop: head.hop,
        ring: head
            .ring
            .filter(|_| head.hop)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
        idempotent: head.idempotent(),
        deadline,
    };
    let routed = observe::step(Step::Route, stream, || {
        inbound.router.route(request, payload)
    });
    let routed = routed.await?;
    let mut response = json_response(routed.reply.status, routed.reply.body);
    // The handler's headers (already without hop-by-hop ones); meshage's own go after them.
    if !routed.reply.headers.is_empty() {
        let headers = crate::relay::answer_headers(&routed.reply.headers);
        response.headers_mut().extend(headers);
    }
    if let Ok(v) = HeaderValue::from_str(&routed.service_id) {
        response.headers_mut().insert(SERVICE_ID_NAME, v);
    }
    if routed.reply.status == StatusCode::SERVICE_UNAVAILABLE {
        // The owner shed it (or its handler is unavailable): a client may come back.
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok((response, Some(routed.service_id)))
}

/// Runs one request that arrived over a peer link: it names its service and is never
/// forwarded again.
pub(super) async fn link_request(inbound: Arc<Inbound>, request: LinkRequest) -> Answer {
    let error = |e: ApiError| Ok(Reply::new(e.status(), e.body()));
    let _slot = match inbound.admission.admit() {
        Ok(slot) => slot,
        Err(e) => return error(e.into()),
    };
    let limit = inbound.router.config().request_timeout;
    let deadline = Deadline::within(Some(request.timeout), limit);
    let route = RouteRequest {
        stream: &request.stream,
        key: &request.key,
        extra: Extra {
            name: request.extras.name.as_deref(),
            headers: &request.extras.headers,
            previous_owner: request.previous_owner.as_deref(),
        },
        target: Some(&request.service_id),
        hop: true,
        ring: request.ring,
        idempotent: false,
        deadline,
    };
    let mut scope = inbound.router.observe(
        &request.stream,
        &request.key,
        Route::Received,
        request.trace.clone(),
    );
    let routed = scope.step(Step::Route, &request.stream, || {
        inbound.router.route(route, request.payload)
    });
    let routed = std::pin::pin!(routed);
    match scope.run(routed).await {
        Ok(routed) => {
            scope.finish(routed.reply.status, Some(&routed.service_id));
            Ok(routed.reply)
        }
        Err(e) => {
            scope.finish(e.status(), None);
            match e {
                RouteError::NotHere(_) => Err(Refusal::NoService),
                RouteError::NotOwner(_) => Err(Refusal::NotOwner),
                e => error(e.into()),
            }
        }
    }
}
