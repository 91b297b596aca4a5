//! What a node shows its operators and tools, read-only, on its HTTP port:
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the live status page |
//! | `GET /api/status` | the page's data: members, ring shares, request counts, recent events |
//! | `GET /metrics` | Prometheus metrics in the text exposition format |
//! | `GET|POST /api/health` | `{"status":"up"}` (503 `leaving` while the node stops) |
//! | `GET /livez` | `live`: the process serves |
//! | `GET /readyz` | `ready`: joined, table built, not leaving (else 503 and why) |
//! | `GET /api/services` | every routable service, in the original's shape |
//! | `GET /api/members` | every node this one knows: id, endpoint, state, services |
//! | `GET /api/events` | membership and ownership changes as Server-Sent Events (`events`) |
//! | `GET /api/locate/{stream}/{key}` | the service and node that own the key; nothing runs |
//! | `GET /api/openapi.json` | the OpenAPI 3.1 description of the whole HTTP API (`openapi.json`) |
//!
//! HEAD is answered as GET wherever GET is; another method is a 405 with `Allow`. On a node
//! with API tokens, `inbound` lets a request reach the others only with a valid token; health,
//! the probes, the description and the page itself are open (the page asks for a token on a 401).
//!
//! It reads a narrow view of the node ([`Admin`]: the router, the membership view, the event
//! log) and the load the HTTP server reports ([`Load`]); it never runs a message, and depends on
//! nothing of the HTTP server that calls it.

use std::sync::Arc;

use http::Method;
use tokio::sync::watch;

use crate::cluster::{ClusterView, EventLog};
use crate::observe::Feed;
use crate::router::Router;
use crate::security::Keys;

mod events;
mod inventory;
mod openapi;
mod probes;
mod status;

pub(crate) use events::{AdminAnswer, EventBody};
#[cfg(test)]
pub(crate) use openapi::DESCRIPTION as API_DESCRIPTION;

/// What the admin endpoints read of a node.
pub(crate) struct Admin {
    router: Router,
    /// The membership backend's latest view, for `/api/members` and the page.
    view: watch::Receiver<Arc<ClusterView>>,
    events: Arc<EventLog>,
    /// The cluster's keys, whose public ids the status shows during a rotation.
    keys: Option<Keys>,
    /// The node's events, for `/api/events`.
    feed: Arc<Feed>,
    streams: events::Streams,
}

/// Messages the node is answering now, and its limit, and its open connections; reported by
/// the HTTP server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) in_flight: usize,
    pub(crate) max_in_flight: usize,
    /// Connections open on the node's port (clients' HTTP, peers' links and forwards).
    pub(crate) connections: usize,
}

/// One admin endpoint, as the HTTP routes found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Page<'a> {
    /// `/` or `/index.html`.
    Index,
    Metrics,
    Status,
    Health,
    /// `/livez`: the process serves.
    Livez,
    /// `/readyz`: the node should get traffic.
    Readyz,
    Services,
    Members,
    /// `/api/events`: a stream, answered by [`Admin::events`].
    Events,
    /// `/api/openapi.json`: the description of the API.
    OpenApi,
    /// The stream and key, still percent-encoded.
    Locate {
        stream: &'a str,
        key: &'a str,
    },
    /// A path outside `/api/` that is none of the above.
    Unknown(&'a str),
}

impl Admin {
    pub(crate) fn new(
        router: Router,
        view: watch::Receiver<Arc<ClusterView>>,
        events: Arc<EventLog>,
        keys: Option<Keys>,
        feed: Arc<Feed>,
        max_event_streams: usize,
    ) -> Admin {
        Admin {
            router,
            view,
            events,
            keys,
            feed,
            streams: events::Streams::new(max_event_streams),
        }
    }

    /// Answers `page` (a stream for `/api/events`, else a whole body). Never fails: every error is a JSON answer.
    pub(crate) fn answer(&self, page: Page<'_>, method: &Method, load: Load) -> AdminAnswer {
        AdminAnswer::Whole(match page {
            Page::Index => status::page(method),
            Page::Metrics => status::metrics(self, method, load),
            Page::Status => status::api_status(self, method, load),
            Page::Health => inventory::health(self, method),
            Page::Livez => probes::livez(method),
            Page::Readyz => probes::readyz(self, method),
            Page::Services => inventory::services(self, method),
            Page::Members => inventory::members(self, method),
            Page::Events => return events::events(self, method),
            Page::OpenApi => openapi::description(method),
            Page::Locate { stream, key } => inventory::locate(self, method, stream, key),
            Page::Unknown(path) => status::not_found(method, path),
        })
    }
}
