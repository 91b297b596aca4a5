//! The HTTP routes: a request's path found in a table, then answered by the admin endpoints
//! or run as a message.

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

use super::connection::Started;
use super::guard::guard;
use super::message::message;
use super::peer::Caller;
use super::Inbound;
use crate::admin::{AdminAnswer, EventBody, Page};
use crate::answer::{ApiError, Body};

/// The body of every answer over HTTP: whole, or an event stream (`/api/events`).
pub(super) type Outgoing = http_body_util::Either<Body, EventBody>;

/// Where a path leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint<'a> {
    Admin(Page<'a>),
    /// A message to the owner of `key`, or to every service of `stream`; both still
    /// percent-encoded. An empty key (`/api/{stream}`, or `/api/{stream}/`): a message without
    /// a key, which goes to the stream's services in turn.
    Message {
        broadcast: bool,
        stream: &'a str,
        key: &'a str,
    },
    /// No route; the hint says where to go instead.
    NoRoute(&'static str),
}

/// The paths that are answered as they are. `src/admin/openapi.json` describes each of them
/// (the tests below check it).
const EXACT: [(&str, Page<'static>); 11] = [
    ("/", Page::Index),
    ("/index.html", Page::Index),
    ("/metrics", Page::Metrics),
    ("/livez", Page::Livez),
    ("/readyz", Page::Readyz),
    ("/api/health", Page::Health),
    ("/api/services", Page::Services),
    ("/api/status", Page::Status),
    ("/api/members", Page::Members),
    ("/api/events", Page::Events),
    ("/api/openapi.json", Page::OpenApi),
];

const MESSAGES: &str = "messages go to /api/{stream}/{partitionKey} or /api/{stream}";
const LOCATE: &str = "use GET /api/locate/{stream}/{partitionKey}";
const MEMBERS: &str = "`members` is reserved: GET /api/members lists the nodes";

/// Finds where `path` leads. `broadcast`, `locate` and `members` are reserved words under
/// `/api/` (see the crate's README); `health`, `services`, `status` and `openapi.json` only as
/// whole paths, so `/api/health/{key}` is a send to the stream `health`. The key is everything after
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
        // `/api/{stream}`: no key.
        None if !rest.is_empty() && !rest.contains('/') && rest != "broadcast" => {
            Endpoint::Message {
                broadcast,
                stream: rest,
                key: "",
            }
        }
        None => Endpoint::NoRoute(MESSAGES),
    }
}

/// Splits `stream/key` (both still encoded) at the first slash.
fn split_stream_key(rest: &str) -> Option<(&str, &str)> {
    let (stream, key) = rest.split_once('/')?;
    (!stream.is_empty()).then_some((stream, key))
}

/// Answers one request. Never fails: every error is a JSON answer. A body the answer left
/// unread (a refusal before reading it) is read and dropped after the answer ([`linger`]).
/// `started` counts the request on its connection until the answer is given, or, for an event
/// stream, until the stream ends (so that the connection is not closed as idle meanwhile).
pub(super) async fn handle(
    started: Started,
    request: Request<Incoming>,
) -> Result<Response<Outgoing>, Infallible> {
    let (inbound, caller) = (started.inbound(), started.caller());
    let (request, mut body) = request.into_parts();
    let response = answer(inbound, caller, &request, &mut body).await;
    if !body.is_end_stream() {
        linger(body, inbound.body_limit);
    }
    Ok(response.map(|body| match body {
        Outgoing::Left(whole) => Outgoing::Left(whole),
        Outgoing::Right(stream) => Outgoing::Right(stream.holding(started)),
    }))
}

/// How long, at most, the rest of a refused request's body is read and dropped.
const LINGER_TIME: Duration = Duration::from_secs(5);
/// How much of it, at most: a few times the body limit, and enough for a client that sends tens
/// of megabytes before it reads.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// Reads and drops what is left of a request's body, in a task of its own, for at most
/// [`LINGER_TIME`] and [`LINGER_BYTES`] (or 8 times `body_limit`, if more). A client that writes
/// its whole body before it reads (Python's `urllib`, for one) then reads the answer the node
/// gave before the body was read, instead of a reset connection, as nginx's lingering close
/// does. If the body ends, the connection stays open for the next request.
fn linger(mut body: Incoming, body_limit: usize) {
    let bound = LINGER_BYTES.max(body_limit.saturating_mul(8));
    tokio::spawn(async move {
        let drain = async {
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |data| data.len());
                if read > bound {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

async fn answer(
    inbound: &Inbound,
    caller: &Caller,
    request: &http::request::Parts,
    body: &mut Incoming,
) -> Response<Outgoing> {
    let path = request.uri.path();
    let endpoint = find(path);
    if let Err(refused) = guard(inbound, request, &endpoint) {
        return refused.response().map(Outgoing::Left);
    }
    match endpoint {
        Endpoint::Message {
            broadcast,
            stream,
            key,
        } => message(inbound, caller, request, body, broadcast, stream, key)
            .await
            .map(Outgoing::Left),
        Endpoint::Admin(page) => {
            let load = inbound.load();
            match inbound.admin.answer(page, &request.method, load) {
                AdminAnswer::Whole(response) => response.map(Outgoing::Left),
                AdminAnswer::Stream(response) => response.map(Outgoing::Right),
            }
        }
        Endpoint::NoRoute(hint) => {
            let method = &request.method;
            ApiError::NotFound(format!("no route for {method} {path}; {hint}"))
                .response()
                .map(Outgoing::Left)
        }
    }
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
            ("/livez", Endpoint::Admin(Page::Livez)),
            ("/readyz", Endpoint::Admin(Page::Readyz)),
            ("/api/status", Endpoint::Admin(Page::Status)),
            ("/api/members", Endpoint::Admin(Page::Members)),
            ("/api/events", Endpoint::Admin(Page::Events)),
            ("/api/events/k", message(false, "events", "k")),
            ("/api/openapi.json", Endpoint::Admin(Page::OpenApi)),
            (
                "/favicon.ico",
                Endpoint::Admin(Page::Unknown("/favicon.ico")),
            ),
            ("/api/echo/k", message(false, "echo", "k")),
            ("/api/echo/a/b%2Fc", message(false, "echo", "a/b%2Fc")),
            ("/api/echo/", message(false, "echo", "")),
            ("/api/health/k", message(false, "health", "k")),
            ("/api/status/k", message(false, "status", "k")),
            ("/api/openapi.json/k", message(false, "openapi.json", "k")),
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
            ("/api/echo", message(false, "echo", "")),
            ("/api//k", Endpoint::NoRoute(MESSAGES)),
            ("/api/", Endpoint::NoRoute(MESSAGES)),
            ("/api/broadcast", Endpoint::NoRoute(MESSAGES)),
            ("/api/broadcast/echo", message(true, "echo", "")),
        ];
        for (path, endpoint) in cases {
            assert_eq!(find(path), endpoint, "{path}");
        }
    }

    /// The path the API description names for where `path` leads; `None` for no route. The
    /// match is exhaustive: a new kind of page or endpoint does not compile here until it says
    /// where it is described.
    fn described(path: &str) -> Option<&str> {
        Some(match find(path) {
            Endpoint::Admin(
                Page::Index
                | Page::Metrics
                | Page::Status
                | Page::Health
                | Page::Livez
                | Page::Readyz
                | Page::Services
                | Page::Members
                | Page::Events
                | Page::OpenApi,
            ) => path,
            Endpoint::Admin(Page::Locate { .. }) => "/api/locate/{stream}/{partitionKey}",
            Endpoint::Message {
                broadcast: true,
                key: "",
                ..
            } => "/api/broadcast/{stream}",
            Endpoint::Message {
                broadcast: true, ..
            } => "/api/broadcast/{stream}/{partitionKey}",
            Endpoint::Message {
                broadcast: false,
                key: "",
                ..
            } => "/api/{stream}",
            Endpoint::Message {
                broadcast: false, ..
            } => "/api/{stream}/{partitionKey}",
            Endpoint::Admin(Page::Unknown(_)) | Endpoint::NoRoute(_) => return None,
        })
    }

    #[test]
    fn the_api_description_describes_every_route_and_only_routes() {
        let doc: serde_json::Value =
            serde_json::from_str(crate::admin::API_DESCRIPTION).expect("openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("the description has paths");
        // Every path of the table, and one of each shape the parser above finds.
        let shapes = [
            "/api/locate/s/k",
            "/api/broadcast/s/k",
            "/api/broadcast/s",
            "/api/s/k",
            "/api/s/a/b",
            "/api/s",
        ];
        let mut reached = std::collections::BTreeSet::new();
        for path in EXACT.iter().map(|(path, _)| *path).chain(shapes) {
            let described = described(path).unwrap_or_else(|| panic!("{path} is no route"));
            assert!(
                paths.contains_key(described),
                "{path} (as {described}) is not in src/admin/openapi.json"
            );
            reached.insert(described);
        }
        let documented: std::collections::BTreeSet<&str> =
            paths.keys().map(String::as_str).collect();
        assert_eq!(documented, reached, "documented paths that lead nowhere");
    }
}
