//! A node: `init(cluster, address)`, `register`, `start` — then a [`Node`] handle that owns the
//! node's tasks and its graceful shutdown.
//!
//! The top of the library: it wires every room together (cluster, router, inbound, admin,
//! upstream monitors) and owns their tasks; nothing depends on it.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::address::{host_port, parse_advertise_host, Address, AddressError};
use crate::admin::Admin;
use crate::cluster::{Cluster, ClusterError, EventLog, LocalNode, Membership};
use crate::inbound::{self, Inbound, Limits};
use crate::message::{handler_fn, HandlerError, Header, SharedHandler};
use crate::observe::{Feed, MeshEvents};
use crate::outbound::Forwarder;
use crate::router::{LocalService, Router, RouterConfig};
use crate::security::{Identity, PeerTls};
use crate::shutdown::Shutdown;
use crate::upstream::{self, HttpUpstream};

mod config;
mod follow;
mod naming;

pub use config::NodeConfig;
use follow::{follow_membership, follow_tables};
use naming::claim_name;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("invalid HTTP address")]
    Address(#[from] AddressError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Another live node advertises the service ids this node's name gives: it runs under the
    /// same name.
    #[error(
        "the node name {name} is taken: the live node {node} at {endpoint} advertises its \
         service ids; stop that node or choose another name"
    )]
    NameTaken {
        name: String,
        node: String,
        endpoint: String,
    },
}

/// How often a node rereads its API tokens file and its TLS files.
const TOKENS_POLL: Duration = Duration::from_secs(1);

/// Starts configuring a node that joins `cluster` and serves HTTP on `address` (any form
/// [`Address`] accepts: `host:port`, a bare port, the `find` forms).
pub fn init(cluster: impl Cluster, address: impl ToString) -> NodeBuilder {
    NodeBuilder {
        cluster: Box::new(cluster),
        address: Address::parse(&address.to_string()),
        services: Vec::new(),
        named: Vec::new(),
        upstreams: Vec::new(),
        config: NodeConfig::default(),
    }
}

/// A node before it starts. See [`init`].
pub struct NodeBuilder {
    cluster: Box<dyn Cluster>,
    address: Result<Address, AddressError>,
    services: Vec<(String, SharedHandler)>,
    /// Handlers of one message name on a stream: (stream, name, handler).
    named: Vec<(String, String, SharedHandler)>,
    /// Upstreams with health checks: they start withdrawn and are advertised once healthy.
    upstreams: Vec<(String, HttpUpstream)>,
    config: NodeConfig,
}

impl NodeBuilder {
    /// Registers an async closure over the message data as a service on `stream`.
    pub fn register<F, Fut, T, E>(self, stream: impl Into<String>, handler: F) -> Self
    where
        F: Fn(serde_json::Value, Header) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
        T: serde::Serialize + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.register_handler(stream, handler_fn(handler))
    }

    /// Registers any [`crate::Handler`] as a service on `stream`.
    pub fn register_handler(mut self, stream: impl Into<String>, handler: SharedHandler) -> Self {
        self.services.push((stream.into(), handler));
        self
    }

    /// Registers an async closure for the messages named `name` on `stream` (see
    /// [`NodeBuilder::register_named_handler`]).
    pub fn register_named<F, Fut, T, E>(
        self,
        stream: impl Into<String>,
        name: impl Into<String>,
        handler: F,
    ) -> Self
    where
        F: Fn(serde_json::Value, Header) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
        T: serde::Serialize + 'static,
        E: Into<HandlerError> + 'static,
    {
        self.register_named_handler(stream, name, handler_fn(handler))
    }

    /// Registers a handler for the messages named `name` (see [`Header::name`]) on `stream`.
    /// The stream's first handler registered on this node ([`NodeBuilder::register_handler`])
    /// takes the messages of other names and those without one; without such a handler, they
    /// are answered 404. The named handlers share that one service, so its place on the ring
    /// is the same whatever the name.
    pub fn register_named_handler(
        mut self,
        stream: impl Into<String>,
        name: impl Into<String>,
        handler: SharedHandler,
    ) -> Self {
        self.named.push((stream.into(), name.into(), handler));
        self
    }

    /// Registers an HTTP handler as a service on `stream`. With health checks configured, the
    /// service is advertised only while the upstream passes them (see [`HttpUpstream`]).
    pub fn register_upstream(mut self, stream: impl Into<String>, upstream: HttpUpstream) -> Self {
        if upstream.config().health.is_some() {
            self.upstreams.push((stream.into(), upstream));
            self
        } else {
            self.register_handler(stream, Arc::new(upstream))
        }
    }

    /// Replaces the node's settings.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds the HTTP address, joins the cluster, advertises the registered services and starts
    /// serving. Fails on a bad or busy address, or when the cluster cannot be joined.
    pub async fn start(self) -> Result<Node, StartError> {
        let address = self.address?;
        let advertise_host = self
            .config
            .advertise_host
            .as_deref()
            .map(parse_advertise_host)
            .transpose()?;
        let (listener, advertised) = address.bind_tcp().map_err(|source| StartError::Bind {
            addr: address.to_string(),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: address.to_string(),
            source,
        })?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|source| StartError::Bind {
                addr: address.to_string(),
                source,
            })?;
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let advertised = match &advertise_host {
            Some(host) => host_port(host, local_addr.port()),
            None => advertised,
        };
        let endpoint = format!("{scheme}://{advertised}");
        let node_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string());

        // Under the operator's PKI, peers are whoever holds a certificate of its CA. Else, with
        // a cluster key, peers talk over mutual TLS: a certificate made for this run,
        // published (sealed) so that peers accept exactly it.
        let tls = match (&self.config.tls, &self.config.keys) {
            (Some(operator), _) => Some(Arc::new(PeerTls::Operator(operator.clone()))),
            (None, Some(_)) => Some(Arc::new(PeerTls::new(Identity::generate()))),
            (None, None) => None,
        };
        let membership = self
            .cluster
            .join(LocalNode {
                keys: self.config.keys.clone(),
                fingerprint: tls
                    .as_ref()
                    .and_then(|tls| tls.fingerprint())
                    .map(|f| f.to_string()),
                advertise_host,
                ..LocalNode::new(node_id.to_string(), endpoint.clone())
            })
            .await?;
        let config = self.config;
        let forwarder = Forwarder::new(
            config.connect_timeout,
            config.body_limit.max(16 * 1024 * 1024),
            config.peer_protocol,
            tls.clone(),
            config.idle_timeout,
        );
        let router = Router::new(
            node_id.clone(),
            Arc::from(endpoint.as_str()),
            membership.clone(),
            forwarder,
            RouterConfig {
                request_timeout: config.request_timeout,
                suspect_timeout: config.suspect_timeout,
                background_limit: config.background_limit,
                handoff_window: config.handoff_window,
                strict_ownership: config.strict_ownership,
            },
            config.node_name.as_deref().map(Arc::from),
        );
        let services = crate::message::with_named(self.services, self.named);
        let services: Vec<(Arc<str>, LocalService)> = services
            .into_iter()
            .map(|(stream, handler)| {
                let stream: Arc<str> = Arc::from(stream);
                let id = Arc::from(router.new_service_id(&stream));
                (id, LocalService { stream, handler })
            })
            .collect();
        let upstreams: Vec<(Arc<str>, Arc<str>, HttpUpstream)> = self
            .upstreams
            .into_iter()
            .map(|(stream, upstream)| {
                let stream: Arc<str> = Arc::from(stream);
                (Arc::from(router.new_service_id(&stream)), stream, upstream)
            })
            .collect();
        if let Some(name) = &config.node_name {
            let ids: Vec<String> = services
                .iter()
                .map(|(id, _)| id.to_string())
                .chain(upstreams.iter().map(|(id, _, _)| id.to_string()))
                .collect();
            let claimed = claim_name(
                &*membership,
                name,
                &node_id,
                &endpoint,
                &ids,
                config.name_wait,
            );
            if let Err(taken) = claimed.await {
                if let Err(e) = membership.shutdown().await {
                    debug!(error = %e, "membership did not stop cleanly");
                }
                return Err(taken);
            }
        }
        router.add_local(services);
        router.advertise_local().await?;

        let events = Arc::new(EventLog::default());
        let feed = Arc::new(Feed::new(node_id.clone(), config.event_buffer));
        let feed_task = tokio::spawn(follow_tables(router.tables(), feed.clone()));
        let table_task = tokio::spawn(follow_membership(
            membership.clone(),
            router.clone(),
            events.clone(),
            feed.clone(),
        ));
        let admin = Admin::new(
            router.clone(),
            membership.view(),
            events,
            config.keys.clone(),
            feed.clone(),
            config.max_event_streams,
        );
        let inbound = Inbound::new(
            router.clone(),
            admin,
            config.body_limit,
            config.max_in_flight,
            config.max_buffered,
            config.api_tokens.clone(),
            tls,
        );
        let shutdown = Shutdown::default();
        let monitors = upstreams
            .into_iter()
            .map(|(id, stream, upstream)| {
                let handler: SharedHandler = Arc::new(upstream.clone());
                let health = upstream.config().health.clone().unwrap_or_default();
                router.add_withdrawn(vec![(id.clone(), LocalService { stream, handler })]);
                tokio::spawn(upstream::monitor(
                    router.clone(),
                    id,
                    upstream,
                    health,
                    shutdown.signal().stop,
                ))
            })
            .collect();
        let server = tokio::spawn(inbound::serve(
            listener,
            inbound,
            shutdown.signal(),
            Limits {
                max_connections: config.max_connections,
                drain: config.drain_timeout,
                idle: config.idle_timeout,
            },
        ));
        let token_watch = config.api_tokens.as_ref().and_then(|tokens| {
            info!(
                tokens = tokens.current().len(),
                "clients need an API token (Authorization: Bearer)"
            );
            if config.keys.is_none() && config.tls.is_none() {
                warn!(
                    "API tokens without a cluster key or TLS certificates: peers are not authenticated, so a client \
                     that speaks the peer protocol (or sends X-Meshage-Hop) gets past the tokens"
                );
            }
            tokens.path()?;
            Some(tokio::spawn(tokens.clone().watch(TOKENS_POLL)))
        });
        let tls_watch = config.tls.as_ref().map(|tls| {
            info!(fingerprint = %tls.fingerprint(), "serving HTTPS with the operator's certificate");
            tokio::spawn(tls.clone().watch(TOKENS_POLL))
        });
        info!(node = %node_id, %endpoint, %local_addr, "node started");
        let gossip = membership.seed_address();
        let open = exposed(local_addr, gossip.as_deref()).filter(|_| config.keys.is_none());
        if let Some(open) = open {
            warn!(
                address = %open,
                "listening beyond loopback with no authentication or encryption: anyone who \
                 reaches this node's ports can join the cluster, take keys, run handlers and \
                 read every message"
            );
        }
        Ok(Node {
            router,
            membership,
            local_addr,
            endpoint,
            shutdown,
            server,
            table_task,
            feed,
            feed_task,
            monitors,
            token_watch,
            tls_watch,
            drain_timeout: config.drain_timeout,
        })
    }
}

/// The first of the node's listening addresses (HTTP, and gossip when it has one) that is not
/// loopback, if any: what a stranger on the network can reach.
fn exposed(http: std::net::SocketAddr, gossip: Option<&str>) -> Option<String> {
    if !http.ip().is_loopback() {
        return Some(http.to_string());
    }
    let gossip = gossip?;
    let ip = gossip.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
    match ip {
        Some(ip) if ip.is_loopback() => None,
        _ => Some(gossip.to_owned()),
    }
}

/// A running node. Dropping it stops its tasks abruptly; call [`Node::shutdown`] to leave the
/// cluster gracefully.
pub struct Node {
    router: Router,
    membership: Arc<dyn Membership>,
    local_addr: std::net::SocketAddr,
    endpoint: String,
    /// Stops the server gracefully, or kills every open connection at once (crash simulation,
    /// and a node dropped unstopped).
    shutdown: Shutdown,
    server: JoinHandle<()>,
    table_task: JoinHandle<()>,
    /// Membership and ownership events for subscribers.
    feed: Arc<Feed>,
    /// Turns each new table into ownership events.
    feed_task: JoinHandle<()>,
    /// Health checks of upstream handlers; they end when the node stops.
    monitors: Vec<JoinHandle<()>>,
    /// Rereads the API tokens file, if the tokens come from one.
    token_watch: Option<JoinHandle<()>>,
    /// Rereads the operator's certificate files, if the node has them.
    tls_watch: Option<JoinHandle<()>>,
    /// How long [`Node::shutdown`] waits for messages being delivered in the background.
    drain_timeout: Duration,
}

impl Node {
    /// Sends and broadcasts messages; registers services after start.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// This node's id in the cluster.
    pub fn id(&self) -> &str {
        self.router.node_id()
    }

    /// The socket address the HTTP API is bound to.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    /// A subscription to this node's events: first what each local service owns now
    /// ([`crate::MeshEvent::Ownership`] with only `gained`), then every change of membership and every
    /// change of what a local service owns, as it happens. Bounded by
    /// [`NodeConfig::event_buffer`]: a subscriber that falls behind gets [`crate::MeshEvent::Lost`]
    /// instead of what it missed, and never slows the node. Ends when the node stops.
    pub fn events(&self) -> MeshEvents {
        self.feed.subscribe()
    }

    /// Bytes this node has sent and received for membership (gossip counts them).
    pub fn membership_traffic(&self) -> Option<crate::cluster::Traffic> {
        self.membership.traffic()
    }

    /// The address other nodes can name as a seed to join through this one (gossip only).
    pub fn seed_address(&self) -> Option<String> {
        self.membership.seed_address()
    }

    /// The URL peers use to reach this node: `http://host:port` (`https://` with
    /// [`NodeConfig::tls`]).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Leaves the cluster gracefully: announces that it is leaving (peers route its keys
    /// elsewhere at once), serves on while peers still send it requests (for at most the
    /// drain timeout; not with [`NodeConfig::handoff_window`] zero or without services), so
    /// that new owners can take their keys' state from it, stops accepting connections, lets open requests finish within the
    /// drain timeout, then stops gossip. With OpenTelemetry export on (feature `otel`), it
    /// then sends the spans not yet exported.
    pub async fn shutdown(mut self) -> Result<(), ClusterError> {
        self.router.set_leaving();
        if let Err(e) = self.membership.leave().await {
            warn!(error = %e, "could not announce leaving");
        }
        // The services that took this node's keys may take their state from it by id: it
        // serves on until they have stopped asking (see `--handoff-window`).
        self.router.hand_off(self.drain_timeout).await;
        // Event streams end (after what they have not sent yet, down to the local services
        // losing everything as the node leaves), so that they do not hold their connections
        // open through the drain.
        self.feed.publish_table(self.router.table());
        self.feed.close();
        self.shutdown.stop();
        if let Err(e) = (&mut self.server).await {
            warn!(error = %e, "HTTP server task failed");
        }
        // Messages taken with a 202 get the drain timeout too; what is left then is abandoned.
        self.router.drain_background(self.drain_timeout).await;
        let result = self.membership.shutdown().await;
        self.table_task.abort();
        self.feed_task.abort();
        // The spans of the last requests, before the process may end.
        #[cfg(feature = "otel")]
        crate::otel::flush().await;
        info!(node = %self.router.node_id(), "node stopped");
        result
    }

    /// Stops everything at once without telling the cluster, as a crash would; peers notice
    /// through failure detection. For tests of failure handling.
    #[doc(hidden)]
    pub fn kill(self) {
        // Drop does the work.
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.kill();
        self.router.abandon_background();
        self.server.abort();
        self.table_task.abort();
        self.feed_task.abort();
        self.feed.close();
        for monitor in &self.monitors {
            monitor.abort();
        }
        for watch in [&self.token_watch, &self.tls_watch].into_iter().flatten() {
            watch.abort();
        }
        self.membership.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_exposed_when_any_port_is_beyond_loopback() {
        let loopback: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let all: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(exposed(loopback, None), None);
        assert_eq!(exposed(loopback, Some("[::1]:9742")), None);
        assert_eq!(exposed(all, None).as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(
            exposed(loopback, Some("10.0.0.5:9742")).as_deref(),
            Some("10.0.0.5:9742")
        );
        assert_eq!(
            exposed(loopback, Some("myhost:9742")).as_deref(),
            Some("myhost:9742"),
            "a name may resolve to anything"
        );
    }
}
