//! The HTTP routes: a request's path found in a table, then answered by the admin endpoints
//! or run as a message.

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;

use super::message::message;
use super::Inbound;
use crate::admin::Page;
use crate::answer::{ApiError, Body};

/// Where a path leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint<'a> {
    Admin(Page<'a>),
    /// A message to the owner of `key`, or to every service of `stream`; both still
    /// percent-encoded.
    Message {
        broadcast: bool,
        stream: &'a str,
        key: &'a str,
    },
    /// No route; the hint says where to go instead.
    NoRoute(&'static str),
}

/// The paths that are answered as they are.
const EXACT: [(&str, Page<'static>); 7] = [
    ("/", Page::Index),
    ("/index.html", Page::Index),
    ("/metrics", Page::Metrics),
    ("/api/health", Page::Health),
    ("/api/services", Page::Services),
    ("/api/status", Page::Status),
    ("/api/members", Page::Members),
];

const MESSAGES: &str = "messages go to /api/{stream}/{partitionKey}";
const LOCATE: &str = "use GET /api/locate/{stream}/{partitionKey}";
const MEMBERS: &str = "`members` is reserved: GET /api/members lists the nodes";

/// Finds where `path` leads. `broadcast`, `locate` and `members` are reserved words under
/// `/api/` (see the crate's README); `health`, `services` and `status` only as whole paths,
/// so `/api/health/{key}` is a send to the stream `health`. The key is everything after
/// `/api/{stream}/`, so it may hold `/`.
pub(crate) fn find(path: &str) -> Endpoint<'_> {
    if let Some((_, page)) = EXACT.iter().find(|(exact, _)| *exact == path) {
        return Endpoint::Admin(*page);
    }
    let Some(rest) = path.strip_prefix("/api/") else {
        return Endpoint::Admin(Page::Unknown(path));
    };
    if rest.starts_with("members/") {
        return Endpoint::NoRoute(MEMBERS);
    }
    if rest == "locate" {
        return Endpoint::NoRoute(LOCATE);
    }
    if let Some(rest) = rest.strip_prefix("locate/") {
        return match split_stream_key(rest) {
            Some((stream, key)) => Endpoint::Admin(Page::Locate { stream, key }),
            None => Endpoint::NoRoute(LOCATE),
        };
    }
    let (broadcast, rest) = match rest.strip_prefix("broadcast/") {
        Some(rest) => (true, rest),
        None => (false, rest),
    };
    match split_stream_key(rest) {
        Some((stream, key)) => Endpoint::Message {
            broadcast,
            stream,
            key,
        },
        None => Endpoint::NoRoute(MESSAGES),
    }
}

/// Splits `stream/key` (both still encoded) at the first slash.
fn split_stream_key(rest: &str) -> Option<(&str, &str)> {
    let (stream, key) = rest.split_once('/')?;
    (!stream.is_empty()).then_some((stream, key))
}

/// Answers one request. Never fails: every error is a JSON answer.
pub(super) async fn handle(
    inbound: &Inbound,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (request, body) = request.into_parts();
    let path = request.uri.path();
    Ok(match find(path) {
        Endpoint::Message {
            broadcast,
            stream,
            key,
        } => message(inbound, &request, body, broadcast, stream, key).await,
        Endpoint::Admin(page) => {
            inbound
                .admin
                .answer(page, &request.method, inbound.admission.load())
        }
        Endpoint::NoRoute(hint) => {
            let method = &request.method;
            ApiError::NotFound(format!("no route for {method} {path}; {hint}")).response()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(broadcast: bool, stream: &'static str, key: &'static str) -> Endpoint<'static> {
        Endpoint::Message {
            broadcast,
            stream,
            key,
        }
    }

    #[test]
    fn paths_find_their_endpoints() {
        let cases = [
            ("/", Endpoint::Admin(Page::Index)),
            ("/metrics", Endpoint::Admin(Page::Metrics)),
            ("/api/health", Endpoint::Admin(Page::Health)),
            ("/api/status", Endpoint::Admin(Page::Status)),
            ("/api/members", Endpoint::Admin(Page::Members)),
            (
                "/favicon.ico",
                Endpoint::Admin(Page::Unknown("/favicon.ico")),
            ),
            ("/api/echo/k", message(false, "echo", "k")),
            ("/api/echo/a/b%2Fc", message(false, "echo", "a/b%2Fc")),
            ("/api/echo/", message(false, "echo", "")),
            ("/api/health/k", message(false, "health", "k")),
            ("/api/status/k", message(false, "status", "k")),
            ("/api/broadcast/echo/k", message(true, "echo", "k")),
            (
                "/api/broadcast/broadcast/k",
                message(true, "broadcast", "k"),
            ),
            (
                "/api/locate/echo/k/2",
                Endpoint::Admin(Page::Locate {
                    stream: "echo",
                    key: "k/2",
                }),
            ),
            ("/api/locate", Endpoint::NoRoute(LOCATE)),
            ("/api/locate/echo", Endpoint::NoRoute(LOCATE)),
            ("/api/members/x", Endpoint::NoRoute(MEMBERS)),
            ("/api/echo", Endpoint::NoRoute(MESSAGES)),
            ("/api//k", Endpoint::NoRoute(MESSAGES)),
            ("/api/broadcast/echo", Endpoint::NoRoute(MESSAGES)),
        ];
        for (path, endpoint) in cases {
            assert_eq!(find(path), endpoint, "{path}");
        }
    }
}
