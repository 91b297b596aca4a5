//! Forwarding to the node that runs a service: over the peer link when the peer speaks it,
//! else over pooled HTTP (keep-alive HTTP/1.1, or HTTP/2).
//!
//! A forward is `POST {endpoint}/api/{stream}/{key}` naming its target in `X-Service-ID`, as the
//! original forwards, so original nodes understand ours and the reverse. It also carries
//! `X-Meshage-Hop: 1`: a node that receives it runs the named service if it has it and never
//! forwards it again, so no loop forms while tables disagree. `traceparent` and `tracestate`
//! carry the request's W3C trace context (the forward's span as parent), `X-Meshage-Trace` the
//! trace id's low 64 bits for nodes of earlier versions, and `X-Request-Timeout` the
//! milliseconds left of the request's deadline, so that the owner gives up when the sender
//! does; `X-Message-Name` the message's name (percent-encoded), and the client's headers go
//! along (see `relay`; the client's own trace headers are not among them, meshage sends its
//! own). The body bytes go as they came; the answer's headers come back, less meshage's own.
//!
//! What comes back is an answer to pass on, or an [`Undelivered`] that says whether the owner
//! can have run the request. The owner node's own refusal (it is leaving, or does not run the
//! service) comes as a link frame of its own or a 421 with `X-Meshage-Refused` (a 503 with
//! `X-Meshage-Refused: not-owner` from an owner with `--strict-ownership`; handlers cannot set
//! `X-Meshage-*` headers); a handler's status, 421 and 503 included, is always an answer. The router resends only
//! what cannot have run, unless the caller marked it idempotent.
//!
//! A node with a cluster key forwards over mutual TLS only (links and HTTP alike): it dials a
//! peer accepting exactly the certificate that peer published (`dial` for HTTP), and does not
//! send at all to a node that published none, which is no peer of a keyed mesh. Under the
//! operator's PKI, peers' endpoints are `https://` and the same connections verify them against
//! the operator's CA instead (see `security`).
//!
//! Depends on `link`, `wire`, `delivery`, `message`, `path`, `security`, and `observe` for the
//! trace context.

mod dial;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use self::dial::{PinnedConnector, Pins};
use crate::delivery::{Refusal, Undelivered};
use crate::link::{LinkError, Links};
use crate::message::{Payload, Reply};
use crate::path::encode_segment;
use crate::relay::{answer_headers, MESSAGE_NAME_HEADER};
use crate::security::{Alpn, Fingerprint, PeerTls};
use crate::wire::{
    error_chain, read_body, BodyError, Deadline, HOP_HEADER, PREVIOUS_OWNER_HEADER, REFUSED_HEADER,
    RING_HEADER, SERVICE_ID_HEADER, TIMEOUT_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER,
    TRACE_HEADER,
};

/// How a node forwards to its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerProtocol {
    /// The multiplexed peer link (see the crate's `link` module), falling back to HTTP/1.1 for peers without it.
    #[default]
    Link,
    /// Pooled HTTP/1.1 connections.
    Http1,
    /// One multiplexed HTTP/2 connection per peer (prior knowledge).
    Http2,
}

impl std::str::FromStr for PeerProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "link" => Ok(PeerProtocol::Link),
            "http1" => Ok(PeerProtocol::Http1),
            "http2" => Ok(PeerProtocol::Http2),
            other => Err(format!(
                "unknown peer protocol `{other}` (link, http1, http2)"
            )),
        }
    }
}

/// Pooled HTTP to peers: plain, or over mutual TLS pinned to each peer's certificate.
enum Http {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Pinned {
        client: Client<PinnedConnector, Full<Bytes>>,
        pins: Pins,
    },
}

/// A client to peers: the peer link when they speak it, else pooled HTTP.
pub(crate) struct Forwarder {
    http: Http,
    links: Option<Links>,
    /// Largest answer accepted from a peer.
    max_response: usize,
    /// Peers are dialed pinned to the fingerprint they published: one that published none is
    /// no peer.
    pins: bool,
}

impl Forwarder {
    /// A forwarder that connects within `connect_timeout`; over mutual TLS with `tls`. Its HTTP
    /// connections are kept idle for less than `peer_idle` (see [`pool_idle`]).
    pub(crate) fn new(
        connect_timeout: Duration,
        max_response: usize,
        protocol: PeerProtocol,
        tls: Option<Arc<PeerTls>>,
        peer_idle: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(pool_idle(peer_idle))
            .pool_max_idle_per_host(1024);
        if protocol == PeerProtocol::Http2 {
            builder
                .http2_only(true)
                .http2_initial_stream_window_size(1 << 20)
                .http2_initial_connection_window_size(16 << 20)
                .http2_adaptive_window(false);
        }
        let http = match &tls {
            None => Http::Plain(builder.build(connector)),
            Some(tls) => {
                // Under the operator's PKI, endpoints are `https://`.
                connector.enforce_http(false);
                let pins = Pins::default();
                let connector = PinnedConnector {
                    tcp: connector,
                    tls: tls.clone(),
                    alpn: if protocol == PeerProtocol::Http2 {
                        Alpn::Http2
                    } else {
                        Alpn::Http1
                    },
                    pins: pins.clone(),
                };
                Http::Pinned {
                    client: builder.build(connector),
                    pins,
                }
            }
        };
        let pins = tls.as_ref().is_some_and(|tls| tls.pins());
        let links = (protocol == PeerProtocol::Link)
            .then(|| Links::new(connect_timeout, max_response, tls));
        Forwarder {
            http,
            links,
            max_response,
            pins,
        }
    }

    /// Ends the open peer link to the node at `endpoint` (`http://host:port`, or `https://`),
    /// which is gone.
    pub(crate) fn forget(&self, endpoint: &str) {
        let Some(authority) = authority_of(endpoint) else {
            return;
        };
        if let Some(links) = &self.links {
            links.close(authority);
        }
        if let Http::Pinned { pins, .. } = &self.http {
            pins.forget(authority);
        }
    }

    /// Sends `payload` to `service_id` on the node at `endpoint` (whose certificate has
    /// `fingerprint`, if it published one) and returns its answer, whatever its status, unless
    /// the node refused it without running it. Fails when no complete answer arrives before
    /// `deadline`, and at once, as not run, when this node has a key and that node published no
    /// certificate.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward(
        &self,
        endpoint: &str,
        fingerprint: Option<Fingerprint>,
        stream: &str,
        key: &str,
        service_id: &str,
        (ring, previous_owner): (u64, Option<&str>),
        (name, headers): (Option<&str>, &HeaderMap),
        payload: &Payload,
        deadline: Deadline,
    ) -> Result<Reply, Undelivered> {
        if self.pins && fingerprint.is_none() {
            return Err(Undelivered::connect(
                "the node published no certificate: a keyed node forwards only to keyed peers",
            ));
        }
        if let (Some(links), Some(authority)) = (&self.links, authority_of(endpoint)) {
            match links
                .send_with(
                    authority,
                    fingerprint,
                    stream,
                    key,
                    service_id,
                    (ring, previous_owner),
                    (name, headers),
                    payload,
                    deadline,
                )
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(LinkError::Undelivered(e)) => return Err(e),
                Err(LinkError::Unsupported) => {}
            }
        }
        let mut uri = String::with_capacity(endpoint.len() + stream.len() + key.len() + 8);
        uri.push_str(endpoint);
        uri.push_str("/api/");
        encode_segment(stream, &mut uri);
        uri.push('/');
        encode_segment(key, &mut uri);
        let mut builder = Request::builder();
        // The client's headers first (already filtered, see `relay`): meshage's own go after.
        if let Some(map) = builder.headers_mut() {
            map.extend(headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        }
        let mut builder = builder
            .method(Method::POST)
            .uri(uri)
            .header(SERVICE_ID_HEADER, service_id)
            .header(HOP_HEADER, "1")
            .header(
                TIMEOUT_HEADER,
                deadline.remaining().as_millis().max(1).to_string(),
            )
            .header(
                CONTENT_TYPE,
                payload
                    .content_type
                    .as_deref()
                    .unwrap_or("application/json"),
            );
        // The original's forwarding headers, for original nodes; values percent-encoded so that
        // any key fits in a header.
        let mut encoded = String::new();
        encode_segment(stream, &mut encoded);
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            builder = builder.header("x-stream", v);
        }
        encoded.clear();
        encode_segment(key, &mut encoded);
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            builder = builder.header("x-partition-key", v);
        }
        if let Some(name) = name {
            encoded.clear();
            encode_segment(name, &mut encoded);
            if let Ok(v) = HeaderValue::from_str(&encoded) {
                builder = builder.header(MESSAGE_NAME_HEADER, v);
            }
        }
        if ring != 0 {
            builder = builder.header(RING_HEADER, HeaderValue::from(ring));
        }
        if let Some(v) = previous_owner.and_then(|p| HeaderValue::from_str(p).ok()) {
            builder = builder.header(PREVIOUS_OWNER_HEADER, v);
        }
        // The request's trace context, so that the owner logs it under the same id and its
        // span is a child of this forward; `X-Meshage-Trace` too, for nodes of earlier versions.
        if let Some(out) = crate::observe::outgoing() {
            if let Ok(v) = HeaderValue::from_bytes(&out.traceparent()) {
                builder = builder.header(TRACEPARENT_HEADER, v);
            }
            if let Some(state) = out.state {
                builder = builder.header(TRACESTATE_HEADER, state.value().clone());
            }
            if let Ok(v) = HeaderValue::from_bytes(&out.trace.short_hex()) {
                builder = builder.header(TRACE_HEADER, v);
            }
        }
        let request = builder
            .body(Full::new(payload.body.clone()))
            .map_err(|e| Undelivered::failed(format!("cannot build the request: {e}")))?;

        if let (Http::Pinned { pins, .. }, Some(fingerprint), Some(authority)) =
            (&self.http, fingerprint, authority_of(endpoint))
        {
            pins.pin(authority, fingerprint);
        }
        let timeout = deadline.remaining();
        let exchange = async {
            let response = match &self.http {
                Http::Plain(client) => client.request(request),
                Http::Pinned { client, .. } => client.request(request),
            };
            let response = response.await.map_err(|e| {
                let canceled = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<hyper::Error>())
                    .is_some_and(hyper::Error::is_canceled);
                if e.is_connect() {
                    Undelivered::connect(error_chain(&e))
                } else if canceled {
                    // The pooled connection closed before the request went out.
                    Undelivered::unsent(error_chain(&e))
                } else {
                    Undelivered::lost(error_chain(&e))
                }
            })?;
            let status = response.status();
            if let Some(why) = refusal(&response) {
                return Err(Undelivered::refused(why));
            }
            let headers = answer_headers(response.headers());
            let body = read_body(&mut response.into_body(), self.max_response, |_| true)
                .await
                .map_err(|e| match e {
                    BodyError::TooLarge | BodyError::Budget => {
                        Undelivered::failed(format!("reading the answer: {e}"))
                    }
                    BodyError::Read(_) => Undelivered::lost(format!("reading the answer: {e}")),
                })?;
            Ok::<_, Undelivered>(Reply {
                status,
                body,
                headers,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Undelivered::timed_out(timeout)),
        }
    }
}

/// How long an HTTP connection to a peer is kept idle for reuse: half of `peer_idle`, how long
/// peers (configured as this node is) keep an idle connection before closing it, and at most
/// 4 s, below the 5 s an original node's server (Node.js) keeps one. A connection reused just as
/// its peer closes it loses the request written on it (which may then have run); one the
/// client gives up first is never reused.
fn pool_idle(peer_idle: Duration) -> Duration {
    (peer_idle / 2).min(Duration::from_secs(4))
}

/// The `host:port` of an endpoint, `http://` or `https://`.
fn authority_of(endpoint: &str) -> Option<&str> {
    endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
}

/// The node's own refusal to run the request, if `response` is one: a 421 that says why in
/// `X-Meshage-Refused`, or a 503 that says `not-owner`. Any other answer, a handler's 421 or
/// 503 included, is passed on.
fn refusal<B>(response: &http::Response<B>) -> Option<Refusal> {
    let why = Refusal::from_name(response.headers().get(REFUSED_HEADER)?.as_bytes())?;
    // An owner with `--strict-ownership` refuses a key its table gives elsewhere with a 503
    // (what a client gets when the tables never agree), the other refusals with a 421.
    match (response.status(), why) {
        (StatusCode::MISDIRECTED_REQUEST, _)
        | (StatusCode::SERVICE_UNAVAILABLE, Refusal::NotOwner) => Some(why),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// An HTTP server that answers every request 200 `{}`; its endpoint, and how many
    /// connections it took.
    async fn counting_peer() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"{}"),
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (endpoint, accepted)
    }

    async fn forward(forwarder: &Forwarder, endpoint: &str) {
        let payload = Payload {
            body: Bytes::from_static(b"{}"),
            content_type: None,
        };
        let deadline = Deadline::at(Instant::now() + Duration::from_secs(5));
        let headers = HeaderMap::new();
        let reply = forwarder
            .forward(
                endpoint,
                None,
                "s",
                "k",
                "svc",
                (0, None),
                (None, &headers),
                &payload,
                deadline,
            )
            .await;
        assert_eq!(reply.ok().unwrap().status, StatusCode::OK);
    }

    /// An HTTP connection to a peer is reused while idle for less than the pool's time, and
    /// not after: the client gives it up before a peer configured alike would close it.
    #[tokio::test]
    async fn an_http_connection_idle_past_half_the_peers_idle_timeout_is_not_reused() {
        assert_eq!(pool_idle(Duration::from_secs(30)), Duration::from_secs(4));
        assert_eq!(pool_idle(Duration::from_secs(2)), Duration::from_secs(1));
        let (endpoint, accepted) = counting_peer().await;
        let peer_idle = Duration::from_millis(400);
        let forwarder = Forwarder::new(
            Duration::from_secs(2),
            1 << 20,
            PeerProtocol::Http1,
            None,
            peer_idle,
        );
        forward(&forwarder, &endpoint).await;
        forward(&forwarder, &endpoint).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused while fresh");
        // The scenario is time passing: past the pool's 200 ms.
        tokio::time::sleep(pool_idle(peer_idle) + Duration::from_millis(100)).await;
        forward(&forwarder, &endpoint).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection");
    }
}
