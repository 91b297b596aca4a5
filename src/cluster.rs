//! Membership: the [`Cluster`] trait a backend implements, and the view it publishes.
//!
//! A backend learns which nodes exist and which services each advertises; the node turns every
//! published [`ClusterView`] into an immutable service table (see `table.rs`). The built-in
//! backend is [`GossipCluster`]; the features `etcd` and `consul` add `EtcdCluster` and
//! `ConsulCluster` on those engines. Custom ones implement [`Cluster`] and [`Membership`], as the
//! original let users implement its `Cluster` interface. `events` keeps the log of membership
//! changes that the node feeds and the status page reads.
//!
//! Depends only on the pure core (`address`, `path`) and on `wire` for bounded reads; the
//! table, the router and everything above depend on it.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::watch;

use crate::security::Keys;

#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "etcd")]
pub mod etcd;
mod events;
pub mod gossip;

#[cfg(feature = "consul")]
pub use consul::{ConsulCluster, ConsulConfig};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdCluster, EtcdConfig, EtcdCredentials, EtcdTls};
pub(crate) use events::EventLog;
pub use gossip::{GossipCluster, GossipConfig, NO_SEEDS};

/// What a node tells its cluster about itself when it joins.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LocalNode {
    /// A unique id for this run of the node.
    pub node_id: String,
    /// Where peers send HTTP requests: `http://host:port`.
    pub endpoint: String,
    /// The cluster's secrets, when it runs with them: the gossip backend seals every datagram
    /// with them.
    pub keys: Option<Keys>,
    /// The SHA-256 fingerprint (hex) of the certificate this node's peer links and forwards
    /// present, published so that peers accept exactly it.
    pub fingerprint: Option<String>,
    /// The host peers reach this node at, in place of the one its membership socket binds
    /// (the gossip backend advertises it with the bound port; a pod's IP in Kubernetes).
    pub advertise_host: Option<String>,
}

impl LocalNode {
    /// A node with no keys and no certificate.
    pub fn new(node_id: impl Into<String>, endpoint: impl Into<String>) -> LocalNode {
        LocalNode {
            node_id: node_id.into(),
            endpoint: endpoint.into(),
            keys: None,
            fingerprint: None,
            advertise_host: None,
        }
    }

    /// The same node with the cluster's keys: the gossip backend seals with them.
    pub fn with_keys(mut self, keys: Keys) -> LocalNode {
        self.keys = Some(keys);
        self
    }
}

/// Membership traffic of one node since it joined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Datagrams dropped because no key of the node's keyring opened them (sealed gossip).
    pub datagrams_rejected: u64,
}

/// One service a node advertises: a registered handler on a stream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceEntry {
    pub id: Arc<str>,
    pub stream: Arc<str>,
}

/// Whether a member takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Reachable and serving: its services are on the rings.
    Live,
    /// Announced that it is stopping: off the rings, finishing what it has.
    Leaving,
    /// The failure detector gave up on it: off the rings.
    Dead,
}

/// One node as a backend sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub id: String,
    /// `http://host:port` of the node's HTTP API.
    pub endpoint: String,
    pub state: MemberState,
    pub services: Vec<ServiceEntry>,
    /// When this node last heard from the member, where the backend knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heard: Option<SystemTime>,
    /// The SHA-256 fingerprint (hex) of the member's peer certificate, when it published one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// Everything a backend knows at one moment. Services of members that are not
/// [`MemberState::Live`] are never routed to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterView {
    pub members: Vec<Member>,
}

/// Errors of a membership backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("invalid cluster address")]
    Address(#[from] crate::address::AddressError),
    #[error("cannot bind the cluster address {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster backend failed: {0}")]
    Backend(String),
}

/// A membership backend before it joins: configuration only.
#[async_trait]
pub trait Cluster: Send + 'static {
    /// Joins the cluster as `local`. Fails when the backend cannot start (an address in use,
    /// an engine out of reach).
    async fn join(self: Box<Self>, local: LocalNode) -> Result<Arc<dyn Membership>, ClusterError>;
}

/// A backend chosen at run time (from configuration) is a cluster too.
#[async_trait]
impl Cluster for Box<dyn Cluster> {
    async fn join(self: Box<Self>, local: LocalNode) -> Result<Arc<dyn Membership>, ClusterError> {
        (*self).join(local).await
    }
}

/// A joined membership backend.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Advertises exactly `services` as this node's (replacing what was advertised before).
    async fn advertise(&self, services: &[ServiceEntry]) -> Result<(), ClusterError>;
    /// The current view and its changes. The view includes this node itself.
    fn view(&self) -> watch::Receiver<Arc<ClusterView>>;
    /// Announces that this node is leaving, so peers stop routing to it at once.
    async fn leave(&self) -> Result<(), ClusterError>;
    /// Stops the backend's tasks. Called after [`Membership::leave`] on a graceful stop.
    async fn shutdown(&self) -> Result<(), ClusterError>;
    /// The address peers use to join through this node (a gossip seed), when there is one.
    fn seed_address(&self) -> Option<String> {
        None
    }
    /// Bytes this node has sent and received for membership, where the backend counts them.
    fn traffic(&self) -> Option<Traffic> {
        None
    }
    /// Stops at once without telling anyone, as a crash would (tests of failure detection).
    fn abort(&self) {}
    /// Whether this node has joined: it has heard from the cluster, so its view is the
    /// cluster's and not only its own. The node is ready (`GET /readyz`) only once it has and
    /// its view lists it. Backends whose first view comes from a read of the engine (etcd,
    /// Consul) have joined once that read is done, so the default is `true`.
    fn joined(&self) -> bool {
        true
    }
}
