//! Forwarding to the node that runs a service: a pooled keep-alive HTTP/1.1 client.
//!
//! A forward is `POST {endpoint}/api/{stream}/{key}` naming its target in `X-Service-ID`, as the
//! original forwards, so original nodes understand ours and the reverse. It also carries
//! `X-Meshage-Hop: 1`: a node that receives it runs the named service if it has it and never
//! forwards it again, so no loop forms while tables disagree. `X-Meshage-Trace` carries the
//! request's trace id. The body bytes go as they came.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::link::{LinkError, Links};
use crate::message::{Payload, Reply};
use crate::path::encode_segment;

/// Header naming the service a request is for.
pub const SERVICE_ID_HEADER: &str = "x-service-id";
/// Header marking a request that was already forwarded once.
pub const HOP_HEADER: &str = "x-meshage-hop";

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection could be made: the owner never saw the request.
    #[error("connect failed: {0}")]
    Connect(String),
    /// The request may have reached the owner, but no complete answer came back.
    #[error("{0}")]
    Failed(String),
    /// No answer before the deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
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
                if e.is_connect() {
                    ForwardError::Connect(error_chain(&e))
                } else {
                    ForwardError::Failed(error_chain(&e))
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), self.max_response)
                .collect()
                .await
                .map_err(|e| ForwardError::Failed(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ForwardError>(Reply { status, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::Timeout(timeout)),
        }
    }
}

/// An error and its sources on one line: hyper's top-level messages alone say little.
fn error_chain(e: &dyn std::error::Error) -> String {
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
