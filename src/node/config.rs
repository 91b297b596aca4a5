//! A node's settings: [`NodeConfig`], with a setter for each field.

use std::time::Duration;

use crate::outbound::PeerProtocol;
use crate::router::RouterConfig;
use crate::security::{Keys, OperatorTls, Tokens};

/// Settings of a node beyond its cluster and address.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Bounds every request, forwarded or handled here.
    pub request_timeout: Duration,
    /// Bounds connecting to a peer.
    pub connect_timeout: Duration,
    /// Largest request body accepted (413 above it).
    pub body_limit: usize,
    /// How long a stopping node lets open requests finish.
    pub drain_timeout: Duration,
    /// How long a client's HTTP connection may start no request before the node closes it: an
    /// idle keep-alive connection, or a client that never finishes its request head. Checked
    /// once per period, so such a connection lasts between one and two periods. A peer link
    /// that carries nothing for as long gets the go-away and closes (its peer opens another
    /// when it needs one).
    pub idle_timeout: Duration,
    /// How forwards travel between nodes. Every meshage node accepts all of them; a peer that
    /// does not speak the link (an original node) is reached over HTTP/1.1 whatever this says.
    pub peer_protocol: PeerProtocol,
    /// Messages this node answers at once (from clients and from peers); above it, new ones get
    /// a 503 with `Retry-After` instead of a place in an unbounded queue.
    pub max_in_flight: usize,
    /// Messages sent without waiting (`?wait=false`) that the node delivers at once in the
    /// background; above it, such sends get a 503 (see [`RouterConfig::background_limit`]).
    pub background_limit: usize,
    /// Connections open at once, from clients and peers; above it, new ones are closed at once
    /// while those open keep being served.
    pub max_connections: usize,
    /// Bytes of request bodies and peer-link frames still arriving that the node holds at
    /// once, over every connection; above it, new bodies are refused with 503 and link frames
    /// wait, while requests already read go on.
    pub max_buffered: usize,
    /// How long a peer whose connection failed stays off this node's rings, unless gossip
    /// confirms it gone first (see [`RouterConfig::suspect_timeout`]).
    pub suspect_timeout: Duration,
    /// The cluster's secrets. With them, gossip is sealed and peers talk over mutual TLS;
    /// without them, the node trusts whatever reaches its ports (see the README's "Security").
    pub keys: Option<Keys>,
    /// The bearer tokens clients must send (`Authorization: Bearer TOKEN`); `None` lets every
    /// client in. Tokens made from a file ([`Tokens::from_file`]) are reread every second
    /// while the node runs, so they rotate without a restart.
    pub api_tokens: Option<Tokens>,
    /// The operator's certificates ([`OperatorTls`]): with them the node serves HTTPS only,
    /// advertises `https://`, and takes as peers whoever holds a certificate of the CA (over
    /// any cluster key's pinning; gossip stays sealed by the key). The files are reread every
    /// second while the node runs, so certificates rotate without a restart.
    pub tls: Option<OperatorTls>,
    /// The host peers reach this node at, advertised with the bound ports in its HTTP
    /// endpoint and its gossip address, in place of the bound host (or, for a bare port, the
    /// machine's hostname, which peers in other containers cannot resolve). In Kubernetes, the
    /// pod's IP. Checked by [`parse_advertise_host`] when the node starts.
    ///
    /// [`parse_advertise_host`]: crate::address::parse_advertise_host
    pub advertise_host: Option<String>,
    /// The node's stable name (a StatefulSet pod's name, say). With it, every service id is
    /// derived from the name, the stream and the registration's index among the stream's
    /// registrations on this node (handlers first, then health-checked upstreams, in the order
    /// registered), so a node restarted under the same name owns the same keys. A node whose
    /// ids another live node advertises is refused ([`StartError::NameTaken`]). `None`: random
    /// ids (UUID v4), as the original's.
    ///
    /// [`StartError::NameTaken`]: super::StartError::NameTaken
    pub node_name: Option<String>,
    /// How long a named node waits, before it advertises, to hear from the cluster (at most 2
    /// seconds) and for another live node that advertises its ids at another address (an
    /// earlier run of it that crashed) to be declared dead, before it gives up.
    pub name_wait: Duration,
    /// Events ([`Node::events`], `GET /api/events`) kept for subscribers that have not read
    /// them yet; one that falls further behind loses the oldest and is told so.
    ///
    /// [`Node::events`]: super::Node::events
    pub event_buffer: usize,
    /// `GET /api/events` streams open at once; above it, new ones get a 503.
    pub max_event_streams: usize,
    /// How long after a key moved to a local service its handler is told the service that
    /// owned it before ([`crate::Header::previous_owner`]); zero: never, and a leaving node
    /// does not wait for new owners to take state from it. See the README's "Stateful
    /// handlers".
    pub handoff_window: Duration,
    /// Refuse a forward for a key this node's table gives to another service (see
    /// [`RouterConfig::strict_ownership`]).
    pub strict_ownership: bool,
}

setters!(NodeConfig {
    request_timeout: Duration,
    connect_timeout: Duration,
    body_limit: usize,
    drain_timeout: Duration,
    idle_timeout: Duration,
    peer_protocol: PeerProtocol,
    max_in_flight: usize,
    background_limit: usize,
    max_connections: usize,
    max_buffered: usize,
    suspect_timeout: Duration,
    keys: Option<Keys>,
    api_tokens: Option<Tokens>,
    tls: Option<OperatorTls>,
    advertise_host: Option<String>,
    node_name: Option<String>,
    name_wait: Duration,
    event_buffer: usize,
    max_event_streams: usize,
    handoff_window: Duration,
    strict_ownership: bool,
});

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            body_limit: 1024 * 1024,
            drain_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            peer_protocol: PeerProtocol::Link,
            max_in_flight: 10_000,
            background_limit: RouterConfig::default().background_limit,
            max_connections: 10_000,
            max_buffered: 256 * 1024 * 1024,
            suspect_timeout: RouterConfig::default().suspect_timeout,
            keys: None,
            api_tokens: None,
            tls: None,
            advertise_host: None,
            node_name: None,
            name_wait: Duration::from_secs(10),
            event_buffer: 1024,
            max_event_streams: 64,
            handoff_window: RouterConfig::default().handoff_window,
            strict_ownership: false,
        }
    }
}
