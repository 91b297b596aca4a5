//! Answers of the HTTP API: JSON bodies, and the one mapping from every error the API answers
//! with ([`ApiError`]) to a status, a `{"error": "..."}` body and its headers. The HTTP routes,
//! the admin endpoints and the peer link's server all answer errors through it.
//!
//! Depends on `router` (for [`RouteError`]), `security` (for why a token is refused) and
//! nothing above them.

use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::delivery::Refusal;
use crate::router::RouteError;
use crate::security::Denied;
use crate::wire::REFUSED_HEADER;

/// `X-Meshage-Refused`, parsed once.
const REFUSED_NAME: http::HeaderName = http::HeaderName::from_static(REFUSED_HEADER);

/// The body of every HTTP answer of a node.
pub(crate) type Body = Full<Bytes>;

/// Why the API refuses or fails a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A path segment that is not valid percent-encoded UTF-8.
    #[error("bad path: {0}")]
    BadPath(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// The node holds its budget (in bytes) of bodies still arriving.
    #[error("the node holds its limit of {0} bytes of request bodies still arriving; retry later")]
    Busy(usize),
    /// The body did not arrive whole within the request's deadline.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The methods the route takes, for the `Allow` header.
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    NotFound(String),
    /// No bearer token, where the node asks for one (`Unknown`: one it does not accept).
    #[error("{}", match .0 {
        Denied::Unknown => "the API token is not valid",
        _ => "this node needs an API token: send `Authorization: Bearer TOKEN`",
    })]
    Unauthorized(Denied),
    /// A token that may not use the stream named.
    #[error("the API token may not use the stream `{0}`")]
    Forbidden(String),
    /// A forward (`X-Meshage-Hop`) to a node with a cluster key, not over mutual TLS from a
    /// peer whose certificate a member published.
    #[error("forwards are taken only over mutual TLS from a peer of the cluster")]
    NotPeer,
    /// `/api/events` streams to as many subscribers as the node allows at once.
    #[error("the node streams events to its limit of {0} subscribers; retry later")]
    EventStreams(usize),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::Route(e) => e.status(),
            ApiError::BadPath(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Busy(_) | ApiError::EventStreams(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotPeer => StatusCode::UNAUTHORIZED,
        }
    }

    /// `{"error": "..."}`.
    pub(crate) fn body(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&json!({ "error": self.to_string() })).unwrap_or_default())
    }

    /// The whole answer: status, body, and the headers that go with it (`Allow` on a 405,
    /// `Retry-After` where coming back later may succeed, the challenge of RFC 6750 on a 401
    /// and 403).
    pub(crate) fn response(&self) -> Response<Body> {
        let status = self.status();
        let mut response = json_response(status, self.body());
        let headers = response.headers_mut();
        if let ApiError::MethodNotAllowed(allow) = self {
            headers.insert(ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(challenge) = self.challenge() {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if retry_later(status) {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // The node's own refusals: nothing ran, so a forwarding peer may go elsewhere.
        let refusal = match self {
            ApiError::Route(RouteError::NotHere(_)) => Some(Refusal::NoService),
            ApiError::Route(RouteError::NotOwner(_)) => Some(Refusal::NotOwner),
            _ => None,
        };
        if let Some(refusal) = refusal {
            headers.insert(REFUSED_NAME, HeaderValue::from_static(refusal.name()));
        }
        response
    }

    /// `WWW-Authenticate` of a refusal for want of a token (RFC 6750, section 3): a bare
    /// challenge when none was sent, `invalid_token` for one the node does not accept,
    /// `insufficient_scope` for one that may not use the stream.
    fn challenge(&self) -> Option<&'static str> {
        Some(match self {
            ApiError::Unauthorized(Denied::Unknown) => {
                r#"Bearer realm="meshage", error="invalid_token""#
            }
            ApiError::Unauthorized(_) => r#"Bearer realm="meshage""#,
            ApiError::Forbidden(_) => r#"Bearer realm="meshage", error="insufficient_scope""#,
            _ => return None,
        })
    }
}

/// Whether a client that gets `status` may come back shortly and succeed: the owner was not
/// reachable, or this node or the owner shed the request.
pub(crate) fn retry_later(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MISDIRECTED_REQUEST | StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
    )
}

pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn value_response(status: StatusCode, value: &Value) -> Response<Body> {
    json_response(
        status,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}

/// An answer that no cache may keep: the status page and its data change every second.
pub(crate) fn no_store(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_status_body_and_headers() {
        let refused = ApiError::MethodNotAllowed("GET, POST").response();
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(refused.headers()[ALLOW], "GET, POST");
        assert!(!refused.headers().contains_key(RETRY_AFTER));

        let overloaded = ApiError::from(RouteError::Overloaded(5));
        assert_eq!(overloaded.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(overloaded.response().headers()[RETRY_AFTER], "1");
        let body: Value = serde_json::from_slice(&overloaded.body()).unwrap();
        assert_eq!(
            body,
            json!({"error": "node is at its limit of 5 requests in flight; retry later"})
        );

        let refused = ApiError::from(RouteError::NotHere("svc".into())).response();
        assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(refused.headers()[REFUSED_HEADER], "no-service");

        let large = ApiError::TooLarge(10).response();
        assert_eq!(large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(large.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(ApiError::BadPath("x".into()).to_string(), "bad path: x");

        let missing = ApiError::Unauthorized(Denied::Missing).response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="meshage""#
        );
        let unknown = ApiError::Unauthorized(Denied::Unknown);
        assert_eq!(
            unknown.response().headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="meshage", error="invalid_token""#
        );
        let body: Value = serde_json::from_slice(&unknown.body()).unwrap();
        assert_eq!(body, json!({"error": "the API token is not valid"}));
        let forbidden = ApiError::Forbidden("orders".into()).response();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert!(forbidden.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .ends_with(r#"error="insufficient_scope""#));
    }
}
