//! The built-in membership backend: gossip over UDP with the `chitchat` crate (scuttlebutt
//! reconciliation and a phi-accrual failure detector), so nothing else needs installing.
//!
//! Each node's gossip state holds its HTTP endpoint (`http`), its state (`status`: `live` or
//! `leaving`), one key per service (`service:<id>` = stream) and, in a cluster with a key, the
//! fingerprint of its peer certificate (`tls`). Whenever chitchat's set of live
//! nodes or their states change, a task turns them into a [`ClusterView`] and publishes it.
//! The defaults suit a LAN: a gossip round every 150 ms and a phi threshold of 10 notice a
//! killed node within about two seconds.
//!
//! A seed may be a DNS name with many A records (a Kubernetes headless Service): chitchat
//! resolves it to every address when it starts and again every 60 seconds, and gossips with
//! those addresses but its own. A node with a seed that names another node (or a name that
//! resolves to nothing yet) has joined once it has heard from a live peer, or once
//! [`GossipConfig::join_timeout`] has passed without one (it is then the first node of its
//! cluster); a node without seeds, or whose seeds name only itself, has joined at once.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::ChitchatEnvelope;
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

mod sealed;

use super::{
    Cluster, ClusterError, ClusterView, LocalNode, Member, MemberState, Membership, ServiceEntry,
    Traffic,
};
use crate::address::{host_port, parse_seed, Address};

const KEY_HTTP: &str = "http";
const KEY_STATUS: &str = "status";
/// The SHA-256 fingerprint of the node's peer certificate, when the cluster has a key.
const KEY_TLS: &str = "tls";
const SERVICE_PREFIX: &str = "service:";

/// No seeds: `GossipCluster::new(9742, NO_SEEDS)` starts a new cluster.
pub const NO_SEEDS: [&str; 0] = [];

/// Tuning of the gossip backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GossipConfig {
    /// Nodes with another cluster id ignore each other.
    pub cluster_id: String,
    /// Time between gossip rounds; it sets the pace of convergence and failure detection.
    pub gossip_interval: Duration,
    /// Phi above which a silent node is declared dead; detection takes about
    /// `phi_threshold * gossip_interval`.
    pub phi_threshold: f64,
    /// How long a leaving node keeps gossiping so that peers learn it is leaving.
    pub leave_announce: Duration,
    /// How long dead nodes are remembered (and listed as dead) before they are forgotten.
    pub dead_node_grace_period: Duration,
    /// How long a node with seeds waits to hear from a peer before it counts as joined
    /// alone (the first node of a cluster whose seed name lists only itself, or nothing yet).
    pub join_timeout: Duration,
}

setters!(GossipConfig {
    cluster_id: String,
    gossip_interval: Duration,
    phi_threshold: f64,
    leave_announce: Duration,
    dead_node_grace_period: Duration,
    join_timeout: Duration,
});

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            cluster_id: "meshage".into(),
            gossip_interval: Duration::from_millis(150),
            phi_threshold: 10.0,
            leave_announce: Duration::from_millis(600),
            dead_node_grace_period: Duration::from_secs(120),
            join_timeout: Duration::from_secs(10),
        }
    }
}

/// The built-in gossip cluster, the original's `GrapevineCluster`.
#[derive(Debug, Clone)]
pub struct GossipCluster {
    address: Address,
    seeds: Vec<String>,
    config: GossipConfig,
}

impl GossipCluster {
    /// A gossip cluster listening on `address` (any form [`Address`] accepts: `host:port`, a bare
    /// port, the `find` forms) that joins through `seeds` (`host:port`, or a bare port on
    /// 127.0.0.1). Fails on an address or seed that does not parse.
    pub fn new<A, I, S>(address: A, seeds: I) -> Result<Self, ClusterError>
    where
        A: ToString,
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let address = Address::parse(&address.to_string())?;
        let seeds = seeds
            .into_iter()
            .map(|s| s.to_string())
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_seed(&s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GossipCluster {
            address,
            seeds,
            config: GossipConfig::default(),
        })
    }

    /// Replaces the tuning.
    pub fn with_config(mut self, config: GossipConfig) -> Self {
        self.config = config;
        self
    }
}

/// Resolves `host:port` to one socket address, preferring IPv4.
fn resolve(host_port: &str) -> Option<SocketAddr> {
    let addrs = resolve_all(host_port);
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}

/// Every socket address `host:port` resolves to (none if it does not).
fn resolve_all(host_port: &str) -> Vec<SocketAddr> {
    host_port
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default()
}

#[async_trait]
impl Cluster for GossipCluster {
    async fn join(self: Box<Self>, local: LocalNode) -> Result<Arc<dyn Membership>, ClusterError> {
        let GossipCluster {
            address,
            seeds,
            config,
        } = *self;
        // chitchat binds its own socket, so find the port here and let go of it.
        let (socket, advertised) = address.bind_udp().map_err(|source| ClusterError::Bind {
            addr: address.to_string(),
            source,
        })?;
        let listen_addr = socket.local_addr().map_err(|source| ClusterError::Bind {
            addr: address.to_string(),
            source,
        })?;
        drop(socket);
        let advertised = match &local.advertise_host {
            Some(host) => host_port(host, listen_addr.port()),
            None => advertised,
        };
        let advertise_addr = resolve(&advertised).unwrap_or_else(|| {
            warn!(%advertised, "cannot resolve the advertised gossip address; advertising 127.0.0.1");
            SocketAddr::from(([127, 0, 0, 1], listen_addr.port()))
        });
        let own: HashSet<SocketAddr> = [advertise_addr, listen_addr].into_iter().collect();
        // A seed that is this node's own address goes. A name stays whatever it lists now:
        // chitchat resolves it again every 60 s (and skips its own address), so nodes that
        // each found only themselves under a headless Service's name still meet. The node
        // waits for a peer only when some seed names another address, or none yet.
        let mut expects_peer = false;
        let seed_nodes: Vec<String> = seeds
            .into_iter()
            .filter(|seed| {
                let addrs = resolve_all(seed);
                let own_only = !addrs.is_empty() && addrs.iter().all(|a| own.contains(a));
                let literal = seed.parse::<SocketAddr>().is_ok();
                expects_peer |= !own_only && seed != &advertised;
                !(seed == &advertised || (own_only && literal))
            })
            .collect();

        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let chitchat_id = ChitchatId::new(local.node_id.clone(), generation, advertise_addr);
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr,
            seed_nodes: seed_nodes.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: 1000,
                max_interval: config.gossip_interval * 20,
                initial_interval: config.gossip_interval,
                dead_node_grace_period: config.dead_node_grace_period,
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let mut initial = vec![
            (KEY_HTTP.to_string(), local.endpoint.clone()),
            (KEY_STATUS.to_string(), "live".to_string()),
        ];
        if let Some(fingerprint) = &local.fingerprint {
            initial.push((KEY_TLS.to_string(), fingerprint.clone()));
        }
        let traffic = Arc::new(TrafficCounters::default());
        let sealed = local.keys.is_some();
        let handle = match local.keys {
            Some(keys) => {
                let transport =
                    sealed::SealedTransport::new(keys, &config.cluster_id, traffic.clone());
                spawn_chitchat(chitchat_config, initial, &transport).await
            }
            None => {
                let transport = CountingTransport {
                    counters: traffic.clone(),
                };
                spawn_chitchat(chitchat_config, initial, &transport).await
            }
        }
        .map_err(|e| ClusterError::Backend(format!("gossip on {listen_addr}: {e}")))?;
        info!(%listen_addr, %advertise_addr, seeds = ?seed_nodes, sealed, "gossip started");

        let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
        let peer_heard = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(watch_members(
            handle.chitchat(),
            view_tx,
            local.node_id.clone(),
            peer_heard.clone(),
        ));
        let join_by = if expects_peer {
            Instant::now() + config.join_timeout
        } else {
            Instant::now()
        };
        Ok(Arc::new(GossipMembership {
            handle: tokio::sync::Mutex::new(Some(handle)),
            view: view_rx,
            watcher,
            config,
            seed_address: advertise_addr.to_string(),
            traffic,
            peer_heard,
            join_by,
        }))
    }
}

/// Publishes a new view whenever chitchat's live set or any live node's state changes, and
/// sets `peer_heard` once a live node other than `own_id` shows. Ends when chitchat stops
/// (its watch sender is dropped) or the view has no receivers.
async fn watch_members(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    view_tx: watch::Sender<Arc<ClusterView>>,
    own_id: String,
    peer_heard: Arc<AtomicBool>,
) {
    let mut live = chitchat.lock().await.live_nodes_watcher();
    loop {
        let view = {
            let live_nodes = live.borrow_and_update().clone();
            if live_nodes.keys().any(|id| *id.node_id != *own_id) {
                peer_heard.store(true, Ordering::Release);
            }
            let guard = chitchat.lock().await;
            let mut members: Vec<Member> = live_nodes
                .iter()
                .filter_map(|(id, state)| member_of(id, state, true))
                .collect();
            for id in guard.dead_nodes() {
                if live_nodes.contains_key(id) {
                    continue;
                }
                if let Some(member) = guard.node_state(id).and_then(|s| member_of(id, s, false)) {
                    members.push(member);
                }
            }
            members.sort_by(|a, b| a.id.cmp(&b.id));
            ClusterView { members }
        };
        debug!(members = view.members.len(), "gossip view changed");
        if view_tx.send(Arc::new(view)).is_err() {
            debug!("no one watches the gossip view any more; watcher ends");
            return;
        }
        if live.changed().await.is_err() {
            debug!("gossip stopped; watcher ends");
            return;
        }
    }
}

pub(crate) fn member_of(id: &ChitchatId, state: &NodeState, live: bool) -> Option<Member> {
    let endpoint = state.get(KEY_HTTP)?.to_string();
    let state_kind = if !live {
        MemberState::Dead
    } else if state.get(KEY_STATUS) == Some("leaving") {
        MemberState::Leaving
    } else {
        MemberState::Live
    };
    let mut services: Vec<ServiceEntry> = state
        .key_values()
        .filter_map(|(k, v)| {
            k.strip_prefix(SERVICE_PREFIX).map(|sid| ServiceEntry {
                id: Arc::from(sid),
                stream: Arc::from(v),
            })
        })
        .collect();
    services.sort();
    Some(Member {
        id: id.node_id.to_string(),
        endpoint,
        state: state_kind,
        services,
        last_heard: None,
        fingerprint: state.get(KEY_TLS).map(str::to_owned),
    })
}

struct GossipMembership {
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    view: watch::Receiver<Arc<ClusterView>>,
    watcher: JoinHandle<()>,
    config: GossipConfig,
    seed_address: String,
    traffic: Arc<TrafficCounters>,
    /// Set once a live peer has been heard from.
    peer_heard: Arc<AtomicBool>,
    /// When the node counts as joined even if no peer answered: at once without seeds.
    join_by: Instant,
}

impl GossipMembership {
    async fn with_state<T>(&self, f: impl FnOnce(&mut NodeState) -> T) -> Result<T, ClusterError> {
        let guard = self.handle.lock().await;
        let handle = guard
            .as_ref()
            .ok_or_else(|| ClusterError::Backend("gossip already stopped".into()))?;
        let chitchat = handle.chitchat();
        let mut chitchat = chitchat.lock().await;
        Ok(f(chitchat.self_node_state()))
    }
}

#[async_trait]
impl Membership for GossipMembership {
    async fn advertise(&self, services: &[ServiceEntry]) -> Result<(), ClusterError> {
        self.with_state(|state| {
            let wanted: HashSet<String> = services
                .iter()
                .map(|s| format!("{SERVICE_PREFIX}{}", s.id))
                .collect();
            let stale: Vec<String> = state
                .key_values()
                .filter(|(k, _)| k.starts_with(SERVICE_PREFIX) && !wanted.contains(*k))
                .map(|(k, _)| k.to_string())
                .collect();
            for key in stale {
                state.delete(&key);
            }
            for service in services {
                state.set(format!("{SERVICE_PREFIX}{}", service.id), &*service.stream);
            }
        })
        .await
    }

    fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        self.with_state(|state| state.set(KEY_STATUS, "leaving"))
            .await?;
        // Keep gossiping for a few rounds so that peers learn it before we go quiet.
        tokio::time::sleep(self.config.leave_announce).await;
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ClusterError> {
        let handle = self.handle.lock().await.take();
        if let Some(handle) = handle {
            handle
                .shutdown()
                .await
                .map_err(|e| ClusterError::Backend(format!("gossip shutdown: {e}")))?;
        }
        self.watcher.abort();
        Ok(())
    }

    fn seed_address(&self) -> Option<String> {
        Some(self.seed_address.clone())
    }

    fn traffic(&self) -> Option<Traffic> {
        Some(Traffic {
            bytes_sent: self.traffic.sent.load(Ordering::Relaxed),
            bytes_received: self.traffic.received.load(Ordering::Relaxed),
            datagrams_rejected: self.traffic.rejected.load(Ordering::Relaxed),
        })
    }

    fn joined(&self) -> bool {
        self.peer_heard.load(Ordering::Acquire) || Instant::now() >= self.join_by
    }

    fn abort(&self) {
        self.watcher.abort();
        if let Ok(mut guard) = self.handle.try_lock() {
            if let Some(handle) = guard.take() {
                handle.abort();
            }
        }
    }
}

impl Drop for GossipMembership {
    fn drop(&mut self) {
        Membership::abort(self);
    }
}

/// Bytes of gossip sent and received, counted at the UDP socket, and datagrams dropped
/// because no key opened them.
#[derive(Debug, Default)]
struct TrafficCounters {
    sent: AtomicU64,
    received: AtomicU64,
    rejected: AtomicU64,
}

/// chitchat's UDP transport, counting bytes.
struct CountingTransport {
    counters: Arc<TrafficCounters>,
}

#[async_trait]
impl Transport for CountingTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(CountingSocket {
            inner: UdpTransport.open(listen_addr).await?,
            counters: self.counters.clone(),
        }))
    }
}

struct CountingSocket {
    inner: Box<dyn Socket>,
    counters: Arc<TrafficCounters>,
}

#[async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let outcome = self.inner.send(to, envelope).await?;
        self.counters
            .sent
            .fetch_add(outcome.num_bytes_sent as u64, Ordering::Relaxed);
        Ok(outcome)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let outcome = self.inner.recv().await?;
        self.counters
            .received
            .fetch_add(outcome.num_bytes_received as u64, Ordering::Relaxed);
        Ok(outcome)
    }
}
