//! Handlers in any language: [`HttpUpstream`], a [`Handler`] that relays each message to an
//! HTTP endpoint, with health checks that take it out of the cluster while it is down; and the
//! `STREAM=URL` specs of `meshage node --handler`.
//!
//! Depends on the router (health changes withdraw and restore services), `wire`, `path`,
//! `shutdown` and `message`; never on the HTTP server.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use tracing::{debug, info, warn};

use crate::message::{BoxFuture, Handler, HandlerError, Header, Payload, Reply};
use crate::path::encode_segment;
use crate::relay;
use crate::router::Router;
use crate::security::{ClientTls, TlsError};
use crate::shutdown::Watch;
use crate::wire::{
    PREVIOUS_OWNER_HEADER, RESERVED_STREAMS, SERVICE_ID_HEADER, TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
};

mod pool;
use pool::{Pool, SendError};

/// The headers that tell an upstream which message it gets, parsed once.
const STREAM_NAME: HeaderName = HeaderName::from_static("x-stream");
const PARTITION_KEY_NAME: HeaderName = HeaderName::from_static("x-partition-key");
const SERVICE_ID_NAME: HeaderName = HeaderName::from_static(SERVICE_ID_HEADER);
const MESSAGE_NAME_NAME: HeaderName = HeaderName::from_static(relay::MESSAGE_NAME_HEADER);
const PREVIOUS_OWNER_NAME: HeaderName = HeaderName::from_static(PREVIOUS_OWNER_HEADER);
const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT_HEADER);
const TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE_HEADER);

/// Settings of an [`HttpUpstream`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Bounds one call, connecting included; past it the caller gets a 502. Keep it below the
    /// node's request timeout, or the caller gets the node's 504 first.
    pub timeout: Duration,
    /// Bounds connecting to the upstream.
    pub connect_timeout: Duration,
    /// Largest answer accepted from the upstream.
    pub max_response: usize,
    /// Health checking; `None` keeps the service advertised whatever happens.
    pub health: Option<HealthConfig>,
    /// The authorities an `https` upstream's certificate is verified against; `None`: the
    /// system's CA bundle ([`ClientTls::system`]).
    pub tls: Option<ClientTls>,
}

setters!(UpstreamConfig {
    timeout: Duration,
    connect_timeout: Duration,
    max_response: usize,
    health: Option<HealthConfig>,
    tls: Option<ClientTls>,
});

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            max_response: 16 * 1024 * 1024,
            health: Some(HealthConfig::default()),
            tls: None,
        }
    }
}

/// How an upstream's health is checked (see [`HttpUpstream`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Time between checks.
    pub interval: Duration,
    /// A check without an answer within this fails.
    pub timeout: Duration,
    /// Failed checks in a row that withdraw the service.
    pub failures: u32,
}

setters!(HealthConfig {
    interval: Duration,
    timeout: Duration,
    failures: u32,
});

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures: 2,
        }
    }
}

/// Why an upstream or a handler spec is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("invalid handler URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("invalid handler `{spec}`: {reason}")]
    BadSpec { spec: String, reason: String },
    #[error("handler URL `{url}`: {error}")]
    Tls { url: String, error: TlsError },
}

/// A handler that relays each message to an HTTP endpoint over pooled keep-alive connections,
/// so that a node serves handlers written in anything that speaks HTTP. Cheap to clone.
///
/// For each message the upstream gets `POST <url>` with the message body exactly as it arrived
/// (an empty body becomes `{}`, as handlers of the original saw it), `Content-Type:
/// application/json` (a `text/*` type the sender declared is kept), and the headers `X-Stream`,
/// `X-Partition-Key` and `X-Service-ID`, `X-Message-Name` when the message has a name, and the
/// client's request headers (less hop-by-hop ones and meshage's own, the client's trace headers
/// among them). The stream, key and name are percent-encoded there as in a path segment, so any
/// key fits in a header; keys made of `A-Z a-z 0-9 - . _ ~` arrive unchanged. A message that a
/// node routes also carries its W3C `traceparent` (the node's handle step as parent) and
/// `tracestate`, so that the handler's spans join the trace. The answer's headers reach the
/// client, less hop-by-hop ones and meshage's own (`Content-Type`, `Content-Length`, `Date`,
/// `traceparent`).
///
/// Its answer is passed through: a 2xx or 4xx status with its JSON body (an empty 2xx body is
/// `null` with status 200; a 4xx body that is not JSON becomes `{"error": <its text>}`). No
/// answer, no connection, a timeout, a 5xx, another status or a 2xx body that is not JSON are a
/// 502 whose error says why.
///
/// Health: registered with [`crate::NodeBuilder::register_upstream`] and
/// [`UpstreamConfig::health`] set, the upstream is checked every interval with `GET <url>`. A
/// check fails when there is no answer within its timeout or the answer is 502, 503 or 504 (any
/// other status means a process is there and willing; a handler takes itself out by answering
/// 503). The service starts withdrawn, is advertised after the first passing check, is
/// withdrawn from the cluster after `failures` failed checks in a row, and is advertised again,
/// under the same service id (so at the same place on the rings), at the next passing check.
#[derive(Clone)]
pub struct HttpUpstream {
    inner: Arc<Inner>,
}

struct Inner {
    url: Uri,
    /// What requests carry: the URL's path and query, and its `host:port`.
    target: Uri,
    host: HeaderValue,
    pool: Pool,
    config: UpstreamConfig,
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("url", &self.inner.url)
            .field("config", &self.inner.config)
            .finish()
    }
}

fn parse_url(url: &str) -> Result<Uri, UpstreamError> {
    let bad = |reason: &str| UpstreamError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.trim().parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(bad(&format!(
                "scheme `{other}` is not supported; use http or https"
            )))
        }
        None => return Err(bad("expected http://host:port/path or https://...")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(uri)
}

impl HttpUpstream {
    /// An upstream at `url` (`http://host:port/path` or `https://...`, whose certificate is
    /// verified against [`UpstreamConfig::tls`] and its name against the URL's host). Fails on
    /// a URL that does not parse or is neither `http` nor `https`, and on an `https` URL
    /// without a CA given when the system has no CA bundle.
    pub fn new(url: &str, config: UpstreamConfig) -> Result<HttpUpstream, UpstreamError> {
        let url = parse_url(url)?;
        let bad = |reason: String| UpstreamError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let authority = url.authority().ok_or_else(|| bad("no host".into()))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| bad(e.to_string()))?;
        // The path (`/` when the URL has none, even with a query) and the query.
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        // `[::1]` in a URL is `::1` to connect to.
        let name = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tls = match url.scheme_str() {
            Some("https") => Some(match &config.tls {
                Some(tls) => tls.clone(),
                None => ClientTls::system().map_err(|error| UpstreamError::Tls {
                    url: url.to_string(),
                    error,
                })?,
            }),
            _ => None,
        };
        let default_port = if tls.is_some() { 443 } else { 80 };
        let pool = Pool::new(
            name.to_owned(),
            authority.port_u16().unwrap_or(default_port),
            tls,
            config.connect_timeout,
            // Below the keep-alive timeouts of common servers (Node's is 5 s), so that we do not
            // reuse a connection the upstream is closing, which would fail a request.
            Duration::from_secs(3),
            256,
        );
        Ok(HttpUpstream {
            inner: Arc::new(Inner {
                url,
                target,
                host,
                pool,
                config,
            }),
        })
    }

    /// A request to the upstream's URL, with its `Host`.
    fn request(&self, method: Method, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = self.inner.target.clone();
        request.headers_mut().insert(HOST, self.inner.host.clone());
        request
    }

    /// The URL messages are POSTed to.
    pub fn url(&self) -> &Uri {
        &self.inner.url
    }

    /// The settings it was made with.
    pub fn config(&self) -> &UpstreamConfig {
        &self.inner.config
    }

    /// Relays one message and returns the upstream's answer. Fails with a 502 (see
    /// [`HttpUpstream`] for when), or with the upstream's 4xx when its body is not JSON.
    pub async fn call(&self, payload: Payload, header: &Header) -> Result<Reply, HandlerError> {
        let url = &self.inner.url;
        const JSON: HeaderValue = HeaderValue::from_static("application/json");
        let (body, content_type) = if payload.body.iter().all(u8::is_ascii_whitespace) {
            (Bytes::from_static(b"{}"), JSON)
        } else {
            // The mesh reads any body but text as JSON, whatever its declared type (curl's `-d`
            // says form-urlencoded); tell the upstream what it really gets.
            let text = payload
                .text_type()
                .and_then(|ct| HeaderValue::from_str(ct).ok());
            (payload.body, text.unwrap_or(JSON))
        };
        let mut request = self.request(Method::POST, body);
        let headers = request.headers_mut();
        // The client's headers first (filtered as they entered): meshage's own replace theirs.
        headers.reserve(6 + header.headers.len());
        for (name, value) in &header.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(CONTENT_TYPE, content_type);
        if let Some(name) = &header.name {
            let mut encoded = String::with_capacity(name.len());
            encode_segment(name, &mut encoded);
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(encoded)) {
                headers.insert(MESSAGE_NAME_NAME, v);
            }
        }
        if let Some(out) = crate::observe::outgoing() {
            if let Ok(v) = HeaderValue::from_bytes(&out.traceparent()) {
                headers.insert(TRACEPARENT_NAME, v);
            }
            if let Some(state) = out.state {
                headers.insert(TRACESTATE_NAME, state.value().clone());
            }
        }
        if let Some(previous) = &header.previous_owner {
            if let Ok(v) = HeaderValue::from_str(previous) {
                headers.insert(PREVIOUS_OWNER_NAME, v);
            }
        }
        for (name, value) in [
            (STREAM_NAME, &*header.stream),
            (PARTITION_KEY_NAME, &*header.partition_key),
            (SERVICE_ID_NAME, &*header.service_id),
        ] {
            let mut encoded = String::with_capacity(value.len());
            encode_segment(value, &mut encoded);
            // The encoded text is ASCII: the header value takes its bytes without a copy.
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(encoded)) {
                headers.insert(name, v);
            }
        }

        let timeout = self.inner.config.timeout;
        let exchange = self
            .inner
            .pool
            .exchange(request, self.inner.config.max_response);
        let (status, answer_headers, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e @ SendError::Connect(_))) => {
                return Err(bad_gateway(format!("handler at {url} is unreachable: {e}")))
            }
            Ok(Err(SendError::Body(e))) => {
                return Err(bad_gateway(format!("reading the answer of {url}: {e}")))
            }
            Ok(Err(e)) => return Err(bad_gateway(format!("handler at {url} failed: {e}"))),
            Err(_) => {
                return Err(bad_gateway(format!(
                    "handler at {url} did not answer within {timeout:?}"
                )))
            }
        };
        let mut reply = answer_of(url, status, body)?;
        reply.headers = relay::answer_headers(&answer_headers);
        Ok(reply)
    }

    /// Checks the upstream once: `GET <url>`. Fails with the reason when there is no answer
    /// within the health timeout (or the call timeout when health is off) or the answer is 502,
    /// 503 or 504.
    pub async fn check(&self) -> Result<(), String> {
        let timeout = self
            .inner
            .config
            .health
            .as_ref()
            .map_or(self.inner.config.timeout, |h| h.timeout);
        let request = self.request(Method::GET, Bytes::new());
        // The (small) body is read whole, so that the connection can serve calls after it.
        let exchange = async {
            let (status, _) = self
                .inner
                .pool
                .send(request, 64 * 1024)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(status)) if is_unavailable(status) => Err(format!("GET answered {status}")),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer to GET within {timeout:?}")),
        }
    }
}

impl Handler for HttpUpstream {
    fn handle(
        &self,
        payload: Payload,
        header: Header,
    ) -> BoxFuture<'static, Result<Reply, HandlerError>> {
        let this = self.clone();
        Box::pin(async move { this.call(payload, &header).await })
    }
}

fn is_unavailable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

fn bad_gateway(message: String) -> HandlerError {
    HandlerError::with_status(StatusCode::BAD_GATEWAY, message)
}

/// The reply for an upstream's answer: pure, so that the pass-through rules are tested alone.
fn answer_of(url: &Uri, status: StatusCode, body: Bytes) -> Result<Reply, HandlerError> {
    let is_json = |body: &[u8]| serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    if status.is_success() {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Reply::new(StatusCode::OK, Bytes::from_static(b"null")));
        }
        if !is_json(&body) {
            return Err(bad_gateway(format!(
                "handler at {url} answered {status} with a body that is not JSON: {}",
                snippet(&body)
            )));
        }
        return Ok(Reply::new(status, body));
    }
    if status.is_client_error() {
        if is_json(&body) {
            return Ok(Reply::new(status, body));
        }
        let message = if body.iter().all(u8::is_ascii_whitespace) {
            format!("handler answered {status}")
        } else {
            snippet(&body)
        };
        return Err(HandlerError::with_status(status, message));
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| snippet(&body));
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    Err(bad_gateway(format!(
        "handler at {url} answered {status}{detail}"
    )))
}

/// The start of a body as one line of text, for error messages.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > MAX {
        line.push('…');
    }
    line
}

/// `STREAM=URL`, as given to `meshage node --handler` or on a line of a handlers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSpec {
    pub stream: String,
    pub url: String,
}

impl FromStr for HandlerSpec {
    type Err = UpstreamError;

    /// Parses `STREAM=URL`. Fails on a missing `=`, an empty, reserved or `/`-holding stream,
    /// or a URL that is neither `http://...` nor `https://...`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| UpstreamError::BadSpec {
            spec: s.to_owned(),
            reason,
        };
        let (stream, url) = s
            .split_once('=')
            .ok_or_else(|| bad("expected STREAM=URL".into()))?;
        let (stream, url) = (stream.trim(), url.trim());
        if stream.is_empty() {
            return Err(bad("the stream is empty".into()));
        }
        if stream.contains('/') {
            return Err(bad("a stream name cannot hold `/`".into()));
        }
        if RESERVED_STREAMS.contains(&stream) {
            return Err(bad(format!(
                "`{stream}` is reserved by the HTTP API (so are {})",
                RESERVED_STREAMS.join(", ")
            )));
        }
        parse_url(url).map_err(|e| bad(e.to_string()))?;
        Ok(HandlerSpec {
            stream: stream.to_owned(),
            url: url.to_owned(),
        })
    }
}

/// Parses a handlers file: one `STREAM=URL` a line; blank lines and lines starting with `#` are
/// skipped. Fails on the first bad line, naming it.
pub fn parse_handlers_file(text: &str) -> Result<Vec<HandlerSpec>, String> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| line.parse().map_err(|e| format!("line {n}: {e}")))
        .collect()
}

/// Checks `upstream` until `stop` turns true (or its sender goes away with the node): restores
/// `service_id` after a passing check and withdraws it after `health.failures` failed checks in
/// a row. The service starts withdrawn. Ends early when the service is unregistered.
pub(crate) async fn monitor(
    router: Router,
    service_id: Arc<str>,
    upstream: HttpUpstream,
    health: HealthConfig,
    mut stop: Watch,
) {
    let url = upstream.url().clone();
    let mut advertised = false;
    let mut failures = 0u32;
    // Set when the last change reached the registry but not the cluster: advertise again.
    let mut resync = false;
    loop {
        let checked = tokio::select! {
            result = upstream.check() => result,
            _ = stop.raised() => break,
        };
        let change = match checked {
            Ok(()) => {
                failures = 0;
                (!advertised).then_some(true)
            }
            Err(reason) => {
                failures = failures.saturating_add(1);
                if advertised && failures >= health.failures.max(1) {
                    warn!(service = %service_id, %url, %reason, failures, "handler is unhealthy; withdrawing its service");
                    Some(false)
                } else {
                    if !advertised && failures == 1 {
                        info!(service = %service_id, %url, %reason, "handler is not healthy; its service waits");
                    }
                    debug!(service = %service_id, %url, %reason, failures, "health check failed");
                    None
                }
            }
        };
        let result = match change {
            Some(true) => router.restore(&service_id).await,
            Some(false) => router.withdraw(&service_id).await,
            None if resync => router.advertise_local().await.map(|()| true),
            None => Ok(true),
        };
        match result {
            Ok(true) => {
                resync = false;
                if let Some(up) = change {
                    advertised = up;
                    if up {
                        info!(service = %service_id, %url, "handler is healthy; its service is advertised");
                    }
                }
            }
            Ok(false) => {
                info!(service = %service_id, "service was unregistered; its health checks end");
                return;
            }
            Err(e) => {
                // The registry changed; the cluster will learn it at the next advertise.
                warn!(service = %service_id, error = %e, "cannot advertise a health change; retrying");
                resync = true;
                if let Some(up) = change {
                    advertised = up;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(health.interval) => {}
            _ = stop.raised() => break,
        }
    }
    debug!(service = %service_id, "node stopping; health checks end");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Uri {
        Uri::from_static("http://127.0.0.1:1/h")
    }

    #[test]
    fn specs_parse_and_reject_what_cannot_work() {
        let spec: HandlerSpec = " orders = http://127.0.0.1:9000/handle ".parse().unwrap();
        assert_eq!(spec.stream, "orders");
        assert_eq!(spec.url, "http://127.0.0.1:9000/handle");
        for bad in [
            "orders",
            "=http://x:1/",
            "a/b=http://x:1/",
            "members=http://x:1/",
            "broadcast=http://x:1/",
            "orders=ftp://x:1/",
            "orders=x:1",
            "orders=http://",
        ] {
            assert!(
                bad.parse::<HandlerSpec>().is_err(),
                "{bad} should not parse"
            );
        }
    }

    /// Found by fuzzing (`fuzz/regressions/handlers_file/`): a URL with a query and no path
    /// parsed as a spec, but made no upstream (its request target was `?token=x`, no path).
    #[test]
    fn a_url_with_a_query_and_no_path_makes_an_upstream() {
        for (url, target) in [
            ("http://127.0.0.1:1?token=x", "/?token=x"),
            ("http://127.0.0.1:1", "/"),
            ("http://127.0.0.1:1/h?a=1&b", "/h?a=1&b"),
        ] {
            let spec: HandlerSpec = format!("echo={url}").parse().unwrap();
            let upstream = HttpUpstream::new(&spec.url, UpstreamConfig::default()).unwrap();
            assert_eq!(upstream.inner.target, target, "{url}");
        }
    }

    #[test]
    fn handlers_files_skip_comments_and_name_bad_lines() {
        let text = "# handlers\n\norders=http://127.0.0.1:9000/\n  payments=http://h:1/p  \n";
        let specs = parse_handlers_file(text).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].stream, "payments");
        let err = parse_handlers_file("a=http://h:1/\nnonsense\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
    }

    #[test]
    fn answers_pass_through_or_become_502() {
        let ok = answer_of(
            &url(),
            StatusCode::CREATED,
            Bytes::from_static(b"{\"a\":1}"),
        )
        .unwrap();
        assert_eq!(ok.status, StatusCode::CREATED);
        assert_eq!(&ok.body[..], b"{\"a\":1}");

        let empty = answer_of(&url(), StatusCode::NO_CONTENT, Bytes::new()).unwrap();
        assert_eq!(
            (empty.status, &empty.body[..]),
            (StatusCode::OK, &b"null"[..])
        );

        let rejected = answer_of(
            &url(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Bytes::from_static(b"{\"error\":\"no\"}"),
        )
        .unwrap();
        assert_eq!(rejected.status, StatusCode::UNPROCESSABLE_ENTITY);

        let text = answer_of(
            &url(),
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"Not\nFound"),
        )
        .unwrap_err();
        assert_eq!(text.status, StatusCode::NOT_FOUND);
        assert_eq!(text.message, "Not Found");

        let broken = answer_of(
            &url(),
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(b"{\"error\":\"db down\"}"),
        )
        .unwrap_err();
        assert_eq!(broken.status, StatusCode::BAD_GATEWAY);
        assert!(broken
            .message
            .ends_with("500 Internal Server Error: db down"));

        let not_json = answer_of(&url(), StatusCode::OK, Bytes::from_static(b"hello")).unwrap_err();
        assert_eq!(not_json.status, StatusCode::BAD_GATEWAY);

        let redirect = answer_of(&url(), StatusCode::FOUND, Bytes::new()).unwrap_err();
        assert_eq!(redirect.status, StatusCode::BAD_GATEWAY);
    }
}
