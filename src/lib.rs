//! meshage: a peer-to-peer service mesh for message handlers.
//!
//! Nodes register handlers on named streams. Any node accepts `POST /api/{stream}/{key}`; a
//! consistent-hash ring over the stream's services (placement identical to the npm `hashring`
//! 3.2.0 package that the original `@github1/meshage` uses) picks the one service that owns the
//! key, and the request is handled there, forwarded at most once. Membership comes from built-in
//! gossip ([`GossipCluster`]) or from any [`Cluster`] implementation.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use meshage::{GossipCluster, HandlerError, Message, NO_SEEDS};
//! use serde_json::json;
//!
//! let node = meshage::init(GossipCluster::new("127.0.0.1:9742", NO_SEEDS)?, "127.0.0.1:8080")
//!     .register("echo", |data, _header| async move {
//!         Ok::<_, HandlerError>(json!({ "echoed": data }))
//!     })
//!     .start()
//!     .await?;
//! let answer = node.router().send(Message::new("echo", "some-key", json!({"hello": "world"}))).await?;
//! assert_eq!(answer, json!({"echoed": {"hello": "world"}}));
//! node.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! One request, from HTTP in to answer:
//!
//! 1. `inbound` accepts the connection, tells a peer link from HTTP (and, with a cluster key,
//!    TLS, inside which it tells them apart again; with the operator's TLS, only TLS) by its first bytes, finds the route
//!    (`POST /api/{stream}/{key}`), checks the client's API token if the node asks for one
//!    (`security`), takes an in-flight slot, reads the bounded body and the request's deadline
//!    (`wire`), and opens its trace scope (`observe`).
//! 2. `router` looks the key up in the current `table` snapshot (rings from `ring`; a message
//!    without a key takes the stream's services in turn, and one sent with `?wait=false` is
//!    delivered by a task of its own). A local
//!    owner runs its handler (`message`) here; a remote one gets the request through
//!    `outbound`, over the peer `link` or HTTP, at most once more.
//! 3. On the owner, `inbound` receives the forward (a link frame or an HTTP request marked as a
//!    hop) and its `router` runs the named service, never forwarding it again. With a cluster
//!    key, forwards travel over mutual TLS (`security`: each side accepts exactly the
//!    certificate the other published; under the operator's PKI, any certificate of its CA),
//!    and a link or hop from anyone but a peer is refused before it runs.
//! 4. The answer travels back the same way. A forward that brought no answer says, in
//!    `delivery` terms, whether the owner can have run it; `router`'s retry rule sends only what
//!    cannot have run to the next owner (anything, if the caller marked it idempotent), and
//!    errors become JSON answers in one place (`answer`).
//!
//! The rooms, from the edges down to the pure core (each imports only rooms below it):
//!
//! - edges: `node` (start, the handle, graceful shutdown) and the binary (`src/bin/meshage/`); `inbound`
//!   (accept, sniff, connections, admission, routes, the link's entry); `admin` (status page,
//!   `/metrics`, health and the probes, members, locate, the event stream, the API's OpenAPI
//!   description: read-only); `answer` (errors to JSON answers);
//!   `upstream` (handlers in any language over HTTP, with health checks); `client` (the
//!   `meshage` command's client of a node's API); `otel` (feature `otel`: the OTLP exporter of
//!   the request spans, configured by OpenTelemetry's standard variables).
//! - `router`: owner choice, the local registry and its service ids (random, or stable from the
//!   node's name), placement and suspects, retries, broadcast, and the handoff (the tables of
//!   the last moments, for the previous owner of a key that moved).
//! - `outbound` (the forwarder), over `link` (the peer protocol: frames, client, server).
//! - `observe` (the event feed, metrics, W3C trace contexts, request scopes and their spans),
//!   `wire` (header names, deadlines, body reading), `shutdown` (stop signals), `delivery` (what
//!   a failed forward says).
//! - `cluster`: the membership traits, the event log, and the gossip, etcd and Consul backends.
//! - `security`: the cluster key and its keyring, sealed datagrams, mutual TLS between nodes
//!   (each node's certificate, the pinning verifiers and rustls configurations), the client API
//!   tokens (parsed, compared in constant time, reloaded live), and the TLS and secrets of the
//!   engines and handlers a node reaches.
//! - the pure core: `table` (an immutable snapshot of routable services with one ring per
//!   stream), `ownership` (what a table change moved for each local service), `ring`
//!   (identical to npm `hashring` 3.2.0), `address`, `path`, `message` (and the named handlers
//!   of a stream), `relay` (which headers go from clients to handlers and back).
//!
//! Beside the rooms, `fuzzing` (feature `fuzzing`, hidden) hands the decoders of everything
//! that arrives from outside to the fuzz targets in `fuzz/` and to `tests/fuzz_corpus.rs`.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

/// Chainable setters for a `#[non_exhaustive]` configuration struct, one per public field and
/// named after it, so that users outside the crate build it from its `Default`:
/// `NodeConfig::default().request_timeout(Duration::from_secs(5))`.
macro_rules! setters {
    ($ty:ty { $($field:ident: $fty:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets the field `", stringify!($field), "` (see its documentation).")]
                #[must_use]
                pub fn $field(mut self, value: $fty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

mod address;
mod admin;
mod answer;
pub mod client;
pub mod cluster;
mod delivery;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod inbound;
mod link;
mod message;
mod node;
mod observe;
#[cfg(feature = "otel")]
pub mod otel;
mod outbound;
mod ownership;
mod path;
mod relay;
mod ring;
mod router;
pub mod security;
mod shutdown;
mod table;
mod upstream;
mod wire;

/// The maps looked up on every request (streams, services, peers, metrics), keyed by short
/// strings: hashed with foldhash, seeded per process, which costs a fraction of SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use address::{hostname, parse_advertise_host, parse_seed, Address, AddressError, PortSpec};
pub use cluster::{
    Cluster, ClusterError, ClusterView, GossipCluster, GossipConfig, LocalNode, Member,
    MemberState, Membership, ServiceEntry, Traffic, NO_SEEDS,
};
#[cfg(feature = "consul")]
pub use cluster::{ConsulCluster, ConsulConfig};
#[cfg(feature = "etcd")]
pub use cluster::{EtcdCluster, EtcdConfig, EtcdCredentials, EtcdTls};
pub use message::{
    handler_fn, typed_handler_fn, BoxFuture, Handler, HandlerError, Header, Message, Payload,
    Reply, SharedHandler,
};
pub use node::{init, Node, NodeBuilder, NodeConfig, StartError};
pub use observe::MeshEvents;
pub use outbound::PeerProtocol;
pub use ownership::{MembershipChange, MeshEvent, OwnershipChange};
pub use ring::{HashRange, HashRing};
pub use router::{RouteError, Routed, Router, RouterConfig, SendOptions};
pub use security::{
    ApiTokens, ClientTls, ClusterKey, Fingerprint, KeyError, Keyring, Keys, OperatorTls, Secret,
    TlsError, TokenError, TokenFileError, Tokens,
};
pub use table::{ServiceInfo, ServiceTable};
pub use upstream::{
    parse_handlers_file, HandlerSpec, HealthConfig, HttpUpstream, UpstreamConfig, UpstreamError,
};
pub use wire::{
    HOP_HEADER, IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_HEADER, SERVICE_ID_HEADER, TIMEOUT_HEADER,
    TRACEPARENT_HEADER, TRACESTATE_HEADER, TRACE_HEADER,
};

/// The README's Rust examples compile as doctests, so that what it shows keeps working.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
