//! Forwarding to the node that runs a service: a pooled keep-alive HTTP/1.1 client.
//!
//! A forward is `POST {endpoint}/api/{stream}/{key}` naming its target in `X-Service-ID`, as the
//! original forwards, so original nodes understand ours and the reverse. It also carries
//! `X-Meshage-Hop: 1`: a node that receives it runs the named service if it has it and never
//! forwards it again, so no loop forms while tables disagree. `X-Meshage-Trace` carries the
//! request's trace id, and `X-Request-Timeout` the milliseconds left of the request's deadline,
//! so that the owner gives up when the sender does. The body bytes go as they came.
//!
//! A failed forward says whether the owner can have seen the request ([`ForwardError`]): the
//! router resends only what never left this node, unless the caller marked it idempotent.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::api::{read_body, BodyError};
use crate::link::{LinkError, Links};
use crate::message::{Payload, Reply};
use crate::path::encode_segment;

/// Header naming the service a request is for.
pub const SERVICE_ID_HEADER: &str = "x-service-id";
/// Header marking a request that was already forwarded once.
pub const HOP_HEADER: &str = "x-meshage-hop";
/// Header bounding a whole request, retries and forwarding included: milliseconds, a whole
/// number from 1 up. A node never waits longer than its own request timeout, whatever it says.
pub const TIMEOUT_HEADER: &str = "x-request-timeout";
/// Header marking a request as safe to run twice (`true` or `1`): a forward that failed after
/// the request may have reached its owner is then resent to the next owner.
pub const IDEMPOTENT_HEADER: &str = "x-idempotent";
/// A request that carries an idempotency key is idempotent too: the caller deduplicates.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The timeout a request asks for with `value`, the value of its [`TIMEOUT_HEADER`], capped at
/// `limit`; `limit` when it asks for none. Fails, with a message for the caller, on a value
/// that is not a whole number of milliseconds from 1 up.
pub(crate) fn parse_timeout(
    value: Option<&http::HeaderValue>,
    limit: Duration,
) -> Result<Duration, String> {
    let Some(value) = value else {
        return Ok(limit);
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(ms) if ms > 0 => Ok(Duration::from_millis(ms).min(limit)),
        _ => Err(format!(
            "{TIMEOUT_HEADER} must be a whole number of milliseconds from 1 up, not {value:?}"
        )),
    }
}

/// Whether a value of [`IDEMPOTENT_HEADER`] says yes (`true` or `1`). A request is idempotent
/// when it says so, or when it carries an [`IDEMPOTENCY_KEY_HEADER`] (the caller deduplicates).
pub(crate) fn is_idempotent_value(value: &http::HeaderValue) -> bool {
    let v = value.as_bytes();
    v.eq_ignore_ascii_case(b"true") || v == b"1"
}

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection could be made: the owner never saw the request.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The connection broke before the request was written: the owner never saw it.
    #[error("{0}")]
    Unsent(String),
    /// The connection broke after the request was written: the owner may have run it.
    #[error("{0}")]
    Lost(String),
    /// The request may have reached the owner, but no usable answer came back.
    #[error("{0}")]
    Failed(String),
    /// No answer before the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ForwardError {
    /// Whether the owner cannot have received the request, so that sending it to another
    /// service cannot run it twice.
    pub fn never_delivered(&self) -> bool {
        matches!(self, ForwardError::Connect(_) | ForwardError::Unsent(_))
    }

    /// Whether the connection to the node failed (rather than one answer): the node is suspect.
    pub fn connection_failed(&self) -> bool {
        matches!(
            self,
            ForwardError::Connect(_) | ForwardError::Unsent(_) | ForwardError::Lost(_)
        )
    }
}

/// How a node forwards to its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerProtocol {
    /// The multiplexed peer link (see `link.rs`), falling back to HTTP/1.1 for peers without it.
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

/// A client to peers: the peer link when they speak it, else pooled HTTP.
pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    links: Option<Links>,
    /// Largest answer accepted from a peer.
    max_response: usize,
}

impl Forwarder {
    pub fn new(connect_timeout: Duration, max_response: usize, protocol: PeerProtocol) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024);
        if protocol == PeerProtocol::Http2 {
            builder
                .http2_only(true)
                .http2_initial_stream_window_size(1 << 20)
                .http2_initial_connection_window_size(16 << 20)
                .http2_adaptive_window(false);
        }
        let client = builder.build(connector);
        let links = (protocol == PeerProtocol::Link).then(|| Links::new(connect_timeout));
        Forwarder {
            client,
            links,
            max_response,
        }
    }

    /// Ends the open peer link to the node at `endpoint` (`http://host:port`), which is gone.
    pub fn forget(&self, endpoint: &str) {
        if let (Some(links), Some(authority)) = (&self.links, endpoint.strip_prefix("http://")) {
            links.close(authority);
        }
    }

    /// Sends `payload` to `service_id` on the node at `endpoint` and returns its answer, whatever
    /// its status. Fails when no complete answer arrives before `deadline`.
    pub async fn forward(
        &self,
        endpoint: &str,
        stream: &str,
        key: &str,
        service_id: &str,
        payload: &Payload,
        deadline: Instant,
    ) -> Result<Reply, ForwardError> {
        if let (Some(links), Some(authority)) = (&self.links, endpoint.strip_prefix("http://")) {
            match links
                .send(authority, stream, key, service_id, payload, deadline)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(LinkError::Forward(e)) => return Err(e),
                Err(LinkError::Unsupported) => {}
            }
        }
        let mut uri = String::with_capacity(endpoint.len() + stream.len() + key.len() + 8);
        uri.push_str(endpoint);
        uri.push_str("/api/");
        encode_segment(stream, &mut uri);
        uri.push('/');
        encode_segment(key, &mut uri);
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(SERVICE_ID_HEADER, service_id)
            .header(HOP_HEADER, "1")
            .header(
                TIMEOUT_HEADER,
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .max(1)
                    .to_string(),
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
        // The trace id of the request, so that the owner logs it under the same id.
        if let Some(trace) = crate::observe::current_trace() {
            if let Ok(v) = HeaderValue::from_bytes(&trace.hex()) {
                builder = builder.header(crate::observe::TRACE_HEADER, v);
            }
        }
        let request = builder
            .body(Full::new(payload.body.clone()))
            .map_err(|e| ForwardError::Failed(format!("cannot build the request: {e}")))?;

        let timeout = deadline.saturating_duration_since(Instant::now());
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let canceled = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<hyper::Error>())
                    .is_some_and(hyper::Error::is_canceled);
                if e.is_connect() {
                    ForwardError::Connect(error_chain(&e))
                } else if canceled {
                    // The pooled connection closed before the request went out.
                    ForwardError::Unsent(error_chain(&e))
                } else {
                    ForwardError::Lost(error_chain(&e))
                }
            })?;
            let status = response.status();
            let body = read_body(response.into_body(), self.max_response)
                .await
                .map_err(|e| match e {
                    BodyError::TooLarge => ForwardError::Failed(format!("reading the answer: {e}")),
                    BodyError::Read(_) => ForwardError::Lost(format!("reading the answer: {e}")),
                })?;
            Ok::<_, ForwardError>(Reply { status, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::Timeout(timeout)),
        }
    }
}

/// An error and its sources on one line: hyper's top-level messages alone say little.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether a peer's answer says that it did not run the request at all (it does not have the
/// service), so sending it elsewhere cannot run it twice.
pub fn not_executed(reply: &Reply) -> bool {
    reply.status == StatusCode::MISDIRECTED_REQUEST
}
