//! Everything that arrives on a node's port: the accept loop and drain, protocol detection,
//! each connection's lifecycle, admission, the HTTP routes, and the peer link's server.
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/{stream}/{key}` | the owner's answer, with `X-Service-ID` naming it |
//! | `POST /api/broadcast/{stream}/{key}` | an array, one entry per service of the stream |
//! | anything else | the read-only endpoints of [`crate::admin`], or a 404 |
//!
//! The key is everything after `/api/{stream}/`, percent-decoded, so it may hold `/`. Other
//! methods on the message routes are 405. Every error is JSON `{"error": "..."}`
//! ([`crate::answer`]). `broadcast`, `locate` and `members` are reserved words: a stream with one
//! of these names cannot be sent to over HTTP (`/api/members/...` is a 404), though the
//! library's router reaches it and `/api/broadcast/{stream}/...` broadcasts to it. `health`,
//! `services`, `status` and `openapi.json` are reserved only as whole paths: `/api/health/{key}`
//! is a send to the stream `health`. Every message answer carries the request's trace context in
//! `traceparent` and its trace id's low 64 bits in `X-Meshage-Trace`. `GET /api/openapi.json` describes all of it (`src/admin/openapi.json`),
//! and the routes' tests fail while a route the table finds is not described there. A node
//! with API tokens refuses a request without a valid one (401) or whose token may not use the
//! stream (403) before reading its body (`guard`).
//!
//! On a node with a cluster key the port also takes TLS (told by its first byte), and links
//! and forwards are taken only over mutual TLS from a peer whose certificate a member
//! published (`peer`): a link from anyone else is closed at once, a forward answered 401,
//! before anything runs. Under the operator's PKI the port takes TLS only (a plaintext HTTP/1.1
//! request is answered 400, anything else closed), and a peer is a client whose certificate
//! chains to the operator's CA.
//!
//! The edge of the node: depends on the router, the link, the admin endpoints and the rooms
//! below them; nothing but the node depends on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::admin::{Admin, Load};
use crate::router::Router;
use crate::security::{PeerTls, Tokens};
use crate::wire::Budget;

mod admission;
mod connection;
mod guard;
mod message;
mod peer;
mod routes;
mod server;
mod sniff;

use admission::Admission;
#[cfg(feature = "fuzzing")]
pub(crate) use routes::{find, Endpoint};
pub(crate) use server::{serve, Limits};

/// What the inbound side needs of the node.
pub(crate) struct Inbound {
    router: Router,
    admin: Admin,
    admission: Admission,
    /// Largest request body accepted.
    body_limit: usize,
    /// Bounds what the node holds of request bodies and link frames still arriving.
    budget: Arc<Budget>,
    /// The bearer tokens clients must send, if the node asks for any (see `guard`).
    tokens: Option<Tokens>,
    /// The node's TLS, when it has a cluster key: the port then takes TLS, and links and
    /// forwards only from peers over it.
    tls: Option<Arc<PeerTls>>,
    /// Connections accepted and not yet closed (HTTP and links): the drain waits for them, and
    /// `/metrics` reports them.
    connections: Arc<AtomicUsize>,
}

impl Inbound {
    pub(crate) fn new(
        router: Router,
        admin: Admin,
        body_limit: usize,
        max_in_flight: usize,
        max_buffered: usize,
        tokens: Option<Tokens>,
        tls: Option<Arc<PeerTls>>,
    ) -> Arc<Inbound> {
        Arc::new(Inbound {
            router,
            admin,
            admission: Admission::new(max_in_flight),
            body_limit,
            budget: Arc::new(Budget::new(max_buffered)),
            tokens,
            tls,
            connections: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Messages in flight and open connections, now.
    fn load(&self) -> Load {
        let (in_flight, max_in_flight) = self.admission.in_flight();
        Load {
            in_flight,
            max_in_flight,
            connections: self.connections.load(Ordering::Relaxed),
        }
    }

    /// Whether the node has a cluster key: links and forwards then come from peers only.
    fn keyed(&self) -> bool {
        self.tls.is_some()
    }
}
