//! The API tokens check: the one place where a request that arrived over HTTP is let through,
//! or refused for its token (401, 403) before anything else is read of it. A node without
//! tokens lets everything through.
//!
//! What needs a token: the message routes, `/api/services`, `/api/members`, `/api/locate`,
//! `/api/status`, `/api/events` and `/metrics`. What does not: `/api/health`, `/livez` and `/readyz` (load
//! balancers and orchestrators' probes), the API's
//! description, the status page itself (a browser cannot send a bearer token when it opens a
//! page; the page holds no data and asks for a token when `/api/status` answers 401), and paths
//! that lead nowhere (404). A token limited to some streams may send, broadcast and locate on
//! those only; the routes that name no stream are open to it.
//!
//! A forward from a peer is not checked: the entry node checked its client's token.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use tracing::debug;

use super::routes::Endpoint;
use super::Inbound;
use crate::admin::Page;
use crate::answer::ApiError;
use crate::path::decode_segment;
use crate::security::Denied;
use crate::wire::HOP_HEADER;

/// Lets `request` through to `endpoint`, or says why not.
pub(super) fn guard(
    inbound: &Inbound,
    request: &http::request::Parts,
    endpoint: &Endpoint<'_>,
) -> Result<(), ApiError> {
    let Some(tokens) = &inbound.tokens else {
        return Ok(());
    };
    let stream = match needs(endpoint) {
        Need::Nothing => return Ok(()),
        Need::Token => None,
        Need::TokenFor(stream) => Some(stream),
    };
    if matches!(endpoint, Endpoint::Message { .. }) && forwarded_by_peer(request) {
        return Ok(());
    }
    // A stream that does not decode is checked as it came; the route answers it 400 anyway.
    let stream = stream.map(|s| decode_segment(s).unwrap_or(std::borrow::Cow::Borrowed(s)));
    let checked = tokens
        .load()
        .check(bearer(&request.headers), stream.as_deref());
    checked.map_err(|denied| {
        debug!(reason = ?denied, method = %request.method, "request refused for its API token");
        match (denied, stream) {
            (Denied::Stream, Some(stream)) => ApiError::Forbidden(stream.into_owned()),
            (denied, _) => ApiError::Unauthorized(denied),
        }
    })
}

/// What a request to an endpoint needs on a node with tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need<'a> {
    Nothing,
    /// Any valid token.
    Token,
    /// A token that may use this stream (still percent-encoded).
    TokenFor(&'a str),
}

/// What a request to `endpoint` needs. Exhaustive: a new page does not compile until it says.
fn needs<'a>(endpoint: &Endpoint<'a>) -> Need<'a> {
    match *endpoint {
        Endpoint::Message { stream, .. } | Endpoint::Admin(Page::Locate { stream, .. }) => {
            Need::TokenFor(stream)
        }
        Endpoint::Admin(
            Page::Metrics | Page::Status | Page::Services | Page::Members | Page::Events,
        ) => Need::Token,
        Endpoint::Admin(
            Page::Index
            | Page::Health
            | Page::Livez
            | Page::Readyz
            | Page::OpenApi
            | Page::Unknown(_),
        )
        | Endpoint::NoRoute(_) => Need::Nothing,
    }
}

/// Whether `request` is a forward from a peer (`X-Meshage-Hop`), whose entry node checked the
/// client's token. Only messages are forwarded, so only message routes take it. On a node with
/// a cluster key, the message route then refuses (401) a hop that did not come over mutual TLS
/// from a peer (`message`); without a key anyone can send the header, which the node warns
/// about at start. Requests over the peer link never reach the guard: the link is the peers'
/// own protocol, and on a keyed node only peers may open one.
fn forwarded_by_peer(request: &http::request::Parts) -> bool {
    request.headers.contains_key(HOP_HEADER)
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case), if the
/// request has one.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::routes::find;

    /// The API description says which operations ask for a token (`security`, none for the
    /// open ones) and which may answer 403: as the guard does.
    #[test]
    fn the_api_description_says_what_needs_a_token() {
        let doc: serde_json::Value =
            serde_json::from_str(crate::admin::API_DESCRIPTION).expect("openapi.json is JSON");
        assert_eq!(doc["security"], serde_json::json!([{}, {"bearer": []}]));
        let mut checked = 0;
        for (template, item) in doc["paths"].as_object().unwrap() {
            let path = template
                .replace("{stream}", "s")
                .replace("{partitionKey}", "k");
            let need = needs(&find(&path));
            for (method, operation) in item.as_object().unwrap() {
                let Some(responses) = operation.get("responses") else {
                    continue;
                };
                let what = format!("{method} {template}: {need:?}");
                let open = operation.get("security") == Some(&serde_json::json!([]));
                assert_eq!(open, need == Need::Nothing, "{what}");
                assert_eq!(responses.get("401").is_some(), !open, "{what}");
                let stream = matches!(need, Need::TokenFor(_));
                assert_eq!(responses.get("403").is_some(), stream, "{what}");
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked} operations");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let token = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, http::HeaderValue::from_static(value));
            bearer(&headers).map(<[u8]>::to_vec)
        };
        assert_eq!(token("Bearer abc"), Some(b"abc".to_vec()));
        assert_eq!(token("bearer   abc "), Some(b"abc".to_vec()));
        assert_eq!(token("Basic abc"), None);
        assert_eq!(token("Bearer"), None);
        assert_eq!(token("Bearer  "), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
