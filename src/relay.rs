//! Which headers a message carries from the client to its handler, and from the handler's answer
//! back to the client: everything but hop-by-hop headers (RFC 9110, section 7.6.1: `Connection`,
//! `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`, and those that
//! `Connection` names) and the ones meshage sets or reads itself.
//!
//! Pure core: depends on nothing of the crate but the header names of `wire`.

use http::header::{HeaderMap, AUTHORIZATION, CONNECTION};

use crate::wire::{
    IDEMPOTENT_HEADER, SERVICE_ID_HEADER, TIMEOUT_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER,
};

/// `X-Message-Name`: the message's name, for HTTP handlers.
pub(crate) const MESSAGE_NAME_HEADER: &str = "x-message-name";

/// Whether `name` is never relayed, in either direction: hop-by-hop (`Connection`, `Keep-Alive`,
/// `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`), `X-Meshage-*`, or named by the
/// message's `Connection` header. A `match`, not a list search: it runs for every header of
/// every request.
fn never(name: &str, connection: &[&str]) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
        || name.starts_with("x-meshage-")
        || (!connection.is_empty() && connection.iter().any(|c| c.eq_ignore_ascii_case(name)))
}

/// Headers of a request that meshage reads or sets itself: the framing of the body, the
/// headers of routing and of forwards (the original's `X-Stream` and `X-Partition-Key`
/// included), and the W3C trace context: meshage reads the client's `traceparent` and
/// `tracestate` and sends a handler (or a peer) its own, with its span as the parent, so the
/// client's are not passed on as well. `X-Meshage-Hop` and `X-Meshage-Trace` are `X-Meshage-*`.
fn own_request(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "content-type"
            | "expect"
            | "x-stream"
            | "x-partition-key"
            | MESSAGE_NAME_HEADER
            | SERVICE_ID_HEADER
            | TIMEOUT_HEADER
            | IDEMPOTENT_HEADER
            | TRACEPARENT_HEADER
            | TRACESTATE_HEADER
    )
}

/// Headers of an answer that meshage sets itself (`traceparent`: this node's span of the
/// request).
fn own_answer(name: &str) -> bool {
    matches!(
        name,
        "content-length" | "content-type" | "date" | SERVICE_ID_HEADER | TRACEPARENT_HEADER
    )
}

/// The names listed in `headers`' `Connection` values.
fn connection_names(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The headers of a client's request that its handler gets. `Authorization` is left out when
/// `strip_authorization` (the node checks API tokens: it is meshage's own credential then).
pub(crate) fn request_headers(headers: &HeaderMap, strip_authorization: bool) -> HeaderMap {
    let connection = connection_names(headers);
    let mut relayed = HeaderMap::new();
    for (name, value) in headers {
        if never(name.as_str(), &connection)
            || own_request(name.as_str())
            || (strip_authorization && name == AUTHORIZATION)
        {
            continue;
        }
        relayed.append(name.clone(), value.clone());
    }
    relayed
}

/// The headers of a handler's answer (or of a peer's answer to a forward) that reach the client.
pub(crate) fn answer_headers(headers: &HeaderMap) -> HeaderMap {
    let connection = connection_names(headers);
    let mut relayed = HeaderMap::new();
    for (name, value) in headers {
        if never(name.as_str(), &connection) || own_answer(name.as_str()) {
            continue;
        }
        relayed.append(name.clone(), value.clone());
    }
    relayed
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderName;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn requests_keep_the_clients_headers_only() {
        let client = map(&[
            ("accept-language", "fr"),
            ("authorization", "Bearer abc"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "secret"),
            ("host", "node:8080"),
            ("content-length", "2"),
            ("x-meshage-trace", "00"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-service-id", "svc"),
            ("x-request-timeout", "100"),
            ("idempotency-key", "k1"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ]);
        let relayed = request_headers(&client, false);
        let names: Vec<&str> = relayed.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "accept-language",
                "authorization",
                "idempotency-key",
                "x-custom"
            ]
        );
        assert_eq!(relayed.get_all("x-custom").iter().count(), 2);
        assert!(!request_headers(&client, true).contains_key(AUTHORIZATION));
    }

    #[test]
    fn answers_lose_hop_by_hop_and_framing_headers() {
        let answer = map(&[
            ("cache-control", "no-cache"),
            ("set-cookie", "a=1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "2"),
            ("content-type", "text/html"),
            ("x-meshage-trace", "00"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("retry-after", "3"),
        ]);
        let names: Vec<String> = answer_headers(&answer)
            .keys()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["cache-control", "set-cookie", "retry-after"]);
    }
}
