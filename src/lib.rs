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
//! - `address`: `host:port`, bare ports and the `find` forms; pure parsing, binding at the edge.
//! - `ring`: the consistent-hash ring, identical to npm `hashring` 3.2.0; pure.
//! - `table`: an immutable snapshot of routable services with one ring per stream; pure.
//! - `message`: messages, headers, handlers.
//! - `cluster`: the membership traits; `cluster/gossip` the built-in backend on chitchat;
//!   `cluster/etcd` and `cluster/consul` backends on those engines (features `etcd`, `consul`).
//! - `router`: key to owner from the current table; send and broadcast; safe retries with
//!   re-lookup, suspect owners.
//! - `forward`: the pooled HTTP client to peers, the single-hop rule, and what a failed forward
//!   says about delivery; `link`: the multiplexed binary link between meshage nodes.
//! - `path`: strict percent-encoding of path segments.
//! - `api`: the HTTP API; `node`: start and graceful shutdown.
//! - `upstream`: handlers in any language: an HTTP endpoint as a handler, with health checks.
//! - `client`: a client of a node's HTTP API, behind the `meshage` command's client commands.
//! - `metrics`: the node's Prometheus metrics in atomics, and their text exposition.
//! - `observe`: one request's trace id, span, and count by route and outcome.
//! - `status`: the live status page (`GET /`), its data (`GET /api/status`), membership events.

mod address;
mod api;
pub mod client;
pub mod cluster;
mod forward;
mod link;
mod message;
mod metrics;
mod node;
mod observe;
mod path;
mod ring;
mod router;
mod status;
mod table;
mod upstream;

/// The maps looked up on every request (streams, services, peers, metrics), keyed by short
/// strings: hashed with foldhash, seeded per process, which costs a fraction of SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use address::{hostname, parse_seed, Address, AddressError, PortSpec};
pub use cluster::{
    Cluster, ClusterError, ClusterView, GossipCluster, GossipConfig, LocalNode, Member,
    MemberState, Membership, ServiceEntry, Traffic, NO_SEEDS,
};
#[cfg(feature = "consul")]
pub use cluster::{ConsulCluster, ConsulConfig};
#[cfg(feature = "etcd")]
pub use cluster::{EtcdCluster, EtcdConfig};
pub use forward::{
    PeerProtocol, HOP_HEADER, IDEMPOTENCY_KEY_HEADER, IDEMPOTENT_HEADER, SERVICE_ID_HEADER,
    TIMEOUT_HEADER,
};
pub use message::{
    handler_fn, typed_handler_fn, BoxFuture, Handler, HandlerError, Header, Message, Payload,
    Reply, SharedHandler,
};
pub use node::{init, Node, NodeBuilder, NodeConfig, StartError};
pub use observe::TRACE_HEADER;
pub use ring::HashRing;
pub use router::{RouteError, Routed, Router, RouterConfig, SendOptions};
pub use table::{ServiceInfo, ServiceTable};
pub use upstream::{
    parse_handlers_file, HandlerSpec, HealthConfig, HttpUpstream, UpstreamConfig, UpstreamError,
};

/// The README's Rust examples compile as doctests, so that what it shows keeps working.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
