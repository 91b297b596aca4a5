//! Membership on etcd v3 (feature `etcd`).
//!
//! Every node writes its own keys under `<prefix>/<cluster_id>/`, all bound to one lease that it
//! keeps alive:
//!
//! - `members/<node id>` = `{"node_id", "endpoint"}`
//! - `services/<stream, percent-encoded>/<service id>` = `{"node_id", "endpoint", "stream", "id"}`
//!
//! and watches the whole prefix, so its view is a replica of those keys. A node that crashes
//! stops renewing its lease and etcd deletes its keys when the lease expires (`lease_ttl`); a
//! node that leaves revokes its lease and its keys vanish at once.
//!
//! One task owns the session and repairs whatever part of it breaks: a lost connection (the
//! keep-alive or the watch stream ends) is reopened, and the watch resumes from the last revision
//! it applied; a lease that etcd no longer knows (it expired while the node was cut off, or etcd
//! lost its data) is granted again and every key written again; a watch whose revision was
//! compacted, or an etcd whose history went backwards, is met with a full reload of the prefix.
//! While etcd is out of reach the last known view stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, DeleteOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    Cluster, ClusterError, ClusterView, LocalNode, Member, MemberState, Membership, ServiceEntry,
};
use crate::address::parse_seed;
use crate::path::encode_segment;

/// Tuning of the etcd backend.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Root of every key meshage writes.
    pub prefix: String,
    /// Nodes with another cluster id (another subtree of `prefix`) ignore each other.
    pub cluster_id: String,
    /// Time-to-live of the node's lease: how long a crashed node's services stay listed.
    /// Renewed every third of it. etcd rounds it up to whole seconds.
    pub lease_ttl: Duration,
    /// Bounds each etcd request (and joining).
    pub request_timeout: Duration,
    /// Longest wait between two attempts to repair a broken session.
    pub max_backoff: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            prefix: "/meshage".into(),
            cluster_id: "meshage".into(),
            lease_ttl: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// Membership kept in etcd. See the module documentation for the key layout.
#[derive(Debug, Clone)]
pub struct EtcdCluster {
    endpoints: Vec<String>,
    config: EtcdConfig,
}

impl EtcdCluster {
    /// An etcd cluster reached through `endpoints` (`host:port`, `http://host:port`, or a bare
    /// port on 127.0.0.1). Fails when there is no endpoint, when one does not parse, or when one
    /// asks for TLS (`https://`), which this build does not support.
    pub fn new<I, S>(endpoints: I) -> Result<Self, ClusterError>
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let endpoints = endpoints
            .into_iter()
            .map(|s| s.to_string())
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                if s.trim().starts_with("https://") {
                    return Err(ClusterError::Backend(format!(
                        "etcd endpoint {s}: TLS is not supported; use http://"
                    )));
                }
                Ok(format!("http://{}", parse_seed(&s)?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ClusterError::Backend("no etcd endpoint given".into()));
        }
        Ok(EtcdCluster {
            endpoints,
            config: EtcdConfig::default(),
        })
    }

    /// Replaces the tuning.
    pub fn with_config(mut self, config: EtcdConfig) -> Self {
        self.config = config;
        self
    }

    /// The endpoints, as URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }
}

#[async_trait]
impl Cluster for EtcdCluster {
    async fn join(self: Box<Self>, local: LocalNode) -> Result<Arc<dyn Membership>, ClusterError> {
        let EtcdCluster { endpoints, config } = *self;
        // HTTP/2 pings find a dead connection that TCP does not report; etcd refuses pings more
        // often than every 5 s.
        let options = ConnectOptions::new()
            .with_connect_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), config.request_timeout)
            .with_keep_alive_while_idle(true);
        let client = tokio::time::timeout(
            config.request_timeout,
            Client::connect(&endpoints, Some(options)),
        )
        .await
        .map_err(|_| ClusterError::Backend(format!("etcd at {endpoints:?}: connect timed out")))?
        .map_err(|e| ClusterError::Backend(format!("etcd at {endpoints:?}: {e}")))?;

        let root = format!(
            "{}/{}/",
            config.prefix.trim_end_matches('/'),
            config.cluster_id
        );
        let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
        let mut session = Session {
            client,
            member_key: format!("{root}members/{}", local.node_id),
            root,
            local,
            config,
            desired: BTreeMap::new(),
            written: BTreeSet::new(),
            lease: None,
            keeper: None,
            watch: None,
            needs_reload: true,
            kv: BTreeMap::new(),
            revision: 0,
            etcd_cluster: None,
            view_tx,
            left: false,
        };
        session
            .repair()
            .await
            .map_err(|e| ClusterError::Backend(format!("etcd at {endpoints:?}: {e}")))?;
        info!(?endpoints, root = %session.root, lease = ?session.lease, "etcd membership started");
        let (commands, rx) = mpsc::channel(16);
        let task = tokio::spawn(session.run(rx));
        Ok(Arc::new(EtcdMembership {
            commands,
            view: view_rx,
            task: std::sync::Mutex::new(Some(task)),
        }))
    }
}

/// The value of every key: a member key has no `stream` and `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    node_id: String,
    endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

/// The view of a replica of the prefix: one member per node id.
fn view_of(kv: &BTreeMap<String, Entry>) -> ClusterView {
    let mut members: BTreeMap<&str, Member> = BTreeMap::new();
    for entry in kv.values() {
        let member = members.entry(&entry.node_id).or_insert_with(|| Member {
            id: entry.node_id.clone(),
            endpoint: entry.endpoint.clone(),
            state: MemberState::Live,
            services: Vec::new(),
            last_heard: None,
        });
        if let (Some(stream), Some(id)) = (&entry.stream, &entry.id) {
            member.services.push(ServiceEntry {
                id: Arc::from(id.as_str()),
                stream: Arc::from(stream.as_str()),
            });
        }
    }
    let members = members
        .into_values()
        .map(|mut m| {
            m.services.sort();
            m
        })
        .collect();
    ClusterView { members }
}

enum Command {
    Advertise(Vec<ServiceEntry>, oneshot::Sender<Result<(), ClusterError>>),
    Leave(oneshot::Sender<Result<(), ClusterError>>),
    Stop(oneshot::Sender<()>),
}

/// Why a step of the session failed; the loop logs it and repairs.
type StepError = String;

/// The state of one node's etcd session, owned by its task.
struct Session {
    client: Client,
    /// `<prefix>/<cluster_id>/`.
    root: String,
    member_key: String,
    local: LocalNode,
    config: EtcdConfig,
    /// What the node advertises: id to stream.
    desired: BTreeMap<Arc<str>, Arc<str>>,
    /// Service keys written under the current lease.
    written: BTreeSet<String>,
    lease: Option<i64>,
    keeper: Option<KeepAlive>,
    watch: Option<WatchStream>,
    /// The replica may have missed changes: read the prefix again before watching.
    needs_reload: bool,
    /// The replica of the prefix, as of `revision`.
    kv: BTreeMap<String, Entry>,
    revision: i64,
    /// The etcd cluster the replica came from; another one means its history is not ours.
    etcd_cluster: Option<u64>,
    view_tx: watch::Sender<Arc<ClusterView>>,
    /// The lease was revoked on purpose: do not grant another.
    left: bool,
}

impl Session {
    fn service_key(&self, stream: &str, id: &str) -> String {
        let mut key = format!("{}services/", self.root);
        encode_segment(stream, &mut key);
        key.push('/');
        key.push_str(id);
        key
    }

    fn entry(&self, service: Option<(&str, &str)>) -> String {
        let entry = Entry {
            node_id: self.local.node_id.clone(),
            endpoint: self.local.endpoint.clone(),
            stream: service.map(|(stream, _)| stream.to_owned()),
            id: service.map(|(_, id)| id.to_owned()),
        };
        serde_json::to_string(&entry).unwrap_or_default()
    }

    async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, StepError> {
        match tokio::time::timeout(self.config.request_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!(
                "{what}: no answer within {:?}",
                self.config.request_timeout
            )),
        }
    }

    /// Runs a call on a clone of the client within the request timeout, again while it fails
    /// for want of a connection: with several endpoints the client picks one per call, and a
    /// call that met a stopped member was never sent, so it is safe to send again. A call that
    /// gets no answer within a third of the timeout is sent again too, while time is left: it
    /// may wait on the connection to a member that has just stopped, and every call made here
    /// can be repeated (a second lease that is granted and not used expires with its TTL).
    async fn retried<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, StepError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let attempt = (self.config.request_timeout / 3).max(Duration::from_millis(200));
        let pause = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = if left > attempt * 2 { attempt } else { left };
            match tokio::time::timeout(budget, call(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if not_sent(&e) && Instant::now() + pause < deadline => {
                    debug!(what, error = %e, "an etcd endpoint is out of reach; trying again");
                    tokio::time::sleep(pause).await;
                }
                Ok(Err(e)) => return Err(format!("{what}: {e}")),
                Err(_) if Instant::now() < deadline => {
                    debug!(what, after = ?budget, "no answer from etcd yet; asking again");
                }
                Err(_) => {
                    return Err(format!(
                        "{what}: no answer within {:?}",
                        self.config.request_timeout
                    ))
                }
            }
        }
    }

    fn publish(&self) {
        let view = view_of(&self.kv);
        self.view_tx.send_if_modified(|current| {
            if **current == view {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
    }

    /// Brings every broken part of the session back: the lease and its keys, the keep-alive,
    /// the replica and the watch. Stops at the first failure.
    async fn repair(&mut self) -> Result<(), StepError> {
        if self.lease.is_none() && !self.left {
            self.grant().await?;
        }
        if let (Some(lease), None) = (self.lease, &self.keeper) {
            // Opening the keep-alive renews the lease once and says whether etcd still has it.
            let opened = self
                .retried("lease keep-alive", |mut c| async move {
                    match c.lease_keep_alive(lease).await {
                        // etcd answered that it does not have the lease: not an error to retry.
                        Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(None),
                        other => other.map(Some),
                    }
                })
                .await?;
            match opened {
                Some((keeper, stream)) => {
                    self.keeper = Some(KeepAlive::start(keeper, stream, self.config.lease_ttl))
                }
                None => {
                    self.lease_lost();
                    return Err(format!(
                        "etcd no longer has lease {lease}; granting a new one"
                    ));
                }
            }
        }
        if self.watch.is_none() {
            if self.needs_reload {
                self.reload().await?;
            }
            self.start_watch().await?;
        }
        Ok(())
    }

    /// etcd no longer has this node's lease: it expired while the node was cut off, or etcd
    /// lost its data. Either way the replica may have missed changes, so the prefix is read
    /// again too.
    fn lease_lost(&mut self) {
        self.lease = None;
        self.keeper = None;
        self.watch = None;
        self.needs_reload = true;
    }

    /// Grants a new lease and writes the member key and every service under it, deleting any
    /// of this node's service keys that it no longer advertises.
    async fn grant(&mut self) -> Result<(), StepError> {
        let ttl = self.config.lease_ttl.as_secs_f64().ceil().max(1.0) as i64;
        let lease = self
            .retried("lease grant", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?
            .id();
        self.keeper = None;
        self.written.clear();
        let mut ops = vec![TxnOp::put(
            self.member_key.clone(),
            self.entry(None),
            Some(PutOptions::new().with_lease(lease)),
        )];
        let wanted: BTreeSet<String> = self
            .desired
            .iter()
            .map(|(id, stream)| self.service_key(stream, id))
            .collect();
        for (key, entry) in &self.kv {
            if entry.node_id == self.local.node_id && entry.id.is_some() && !wanted.contains(key) {
                ops.push(TxnOp::delete(key.clone(), None::<DeleteOptions>));
            }
        }
        for (id, stream) in &self.desired {
            ops.push(TxnOp::put(
                self.service_key(stream, id),
                self.entry(Some((stream, id))),
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        // Until every write is in, the lease is not this node's: a failure grants another, and
        // this one expires with whatever it holds.
        self.commit(ops).await?;
        self.lease = Some(lease);
        self.written = wanted;
        debug!(
            lease,
            services = self.desired.len(),
            "lease granted and keys written"
        );
        Ok(())
    }

    /// Runs `ops` in transactions of at most 64 operations (etcd allows 128 by default).
    async fn commit(&self, ops: Vec<TxnOp>) -> Result<(), StepError> {
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let chunk: Vec<TxnOp> = ops.by_ref().take(64).collect();
            self.retried("write", |mut c| {
                let txn = Txn::new().and_then(chunk.clone());
                async move { c.txn(txn).await }
            })
            .await?;
        }
        Ok(())
    }

    /// Replaces the replica with a fresh read of the prefix.
    async fn reload(&mut self) -> Result<(), StepError> {
        let root = self.root.clone();
        let response = self
            .retried("read", |mut c| {
                let root = root.clone();
                async move { c.get(root, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let header = response
            .header()
            .ok_or_else(|| "read: no header in the answer".to_owned())?;
        self.revision = header.revision();
        self.etcd_cluster = Some(header.cluster_id());
        self.kv = response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?.to_owned();
                let entry = serde_json::from_slice(kv.value()).ok()?;
                Some((key, entry))
            })
            .collect();
        self.needs_reload = false;
        debug!(
            revision = self.revision,
            keys = self.kv.len(),
            "prefix reloaded"
        );
        self.publish();
        Ok(())
    }

    /// Watches the prefix from the revision after the replica's.
    async fn start_watch(&mut self) -> Result<(), StepError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(self.revision + 1);
        let mut stream = self
            .retried("watch", |mut c| {
                let (root, options) = (self.root.clone(), options.clone());
                async move { c.watch(root, Some(options)).await }
            })
            .await?;
        // The first answer says whether the watch exists and where etcd's history stands.
        let created = self
            .timed("watch", stream.message())
            .await?
            .ok_or_else(|| "watch: the stream closed at once".to_owned())?;
        if created.canceled() || created.compact_revision() > 0 {
            self.needs_reload = true;
            return Err(format!(
                "watch from revision {} refused (compacted to {}): {}",
                self.revision + 1,
                created.compact_revision(),
                created.cancel_reason()
            ));
        }
        if let Some(header) = created.header() {
            if header.revision() < self.revision
                || self.etcd_cluster.is_some_and(|c| c != header.cluster_id())
            {
                self.needs_reload = true;
                return Err(format!(
                    "etcd's history is not the replica's (revision {} < {}, or another cluster)",
                    header.revision(),
                    self.revision
                ));
            }
        }
        self.apply(&created);
        self.watch = Some(stream);
        Ok(())
    }

    /// Applies a watch answer to the replica. Notices when this node's own lease is gone.
    fn apply(&mut self, response: &etcd_client::WatchResponse) {
        if response.events().is_empty() {
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Put => match serde_json::from_slice::<Entry>(kv.value()) {
                    Ok(entry) => {
                        self.kv.insert(key.to_owned(), entry);
                    }
                    Err(e) => debug!(key, error = %e, "ignoring a key that is not meshage's"),
                },
                EventType::Delete => {
                    self.kv.remove(key);
                    let lost = key == self.member_key
                        && event
                            .prev_kv()
                            .is_some_and(|prev| Some(prev.lease()) == self.lease);
                    if lost && !self.left {
                        warn!(lease = ?self.lease, "this node's lease is gone; granting a new one");
                        self.lease = None;
                        self.keeper = None;
                    }
                }
            }
            // Only events move the revision: a header's revision may be ahead of events still
            // to come while the watch catches up.
            self.revision = self.revision.max(kv.mod_revision());
        }
        self.publish();
    }

    /// Makes `services` this node's: writes the difference, or when that fails (or the session
    /// is broken) everything under a new lease. When even that fails the services are kept and
    /// written once etcd answers again.
    async fn advertise(&mut self, services: Vec<ServiceEntry>) -> Result<(), ClusterError> {
        self.desired = services.into_iter().map(|s| (s.id, s.stream)).collect();
        if let Some(lease) = self.lease {
            match self.write_difference(lease).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Whether it applied is unknown: write everything again under a new lease.
                    // The old one expires by itself once no key is left on it.
                    warn!(error = %e, "advertising failed; writing everything under a new lease");
                    self.lease = None;
                    self.keeper = None;
                }
            }
        }
        self.repair().await.map_err(|e| {
            ClusterError::Backend(format!(
                "etcd: {e}; the services are written when etcd answers again"
            ))
        })
    }

    /// Writes the difference between what was written under `lease` and what is desired.
    async fn write_difference(&mut self, lease: i64) -> Result<(), StepError> {
        let wanted: BTreeSet<String> = self
            .desired
            .iter()
            .map(|(id, stream)| self.service_key(stream, id))
            .collect();
        let mut ops: Vec<TxnOp> = self
            .written
            .difference(&wanted)
            .map(|key| TxnOp::delete(key.clone(), None::<DeleteOptions>))
            .collect();
        for (id, stream) in &self.desired {
            let key = self.service_key(stream, id);
            if !self.written.contains(&key) {
                ops.push(TxnOp::put(
                    key,
                    self.entry(Some((stream, id))),
                    Some(PutOptions::new().with_lease(lease)),
                ));
            }
        }
        self.commit(ops).await?;
        self.written = wanted;
        Ok(())
    }

    async fn leave(&mut self) -> Result<(), ClusterError> {
        self.left = true;
        self.keeper = None;
        let Some(lease) = self.lease.take() else {
            return Ok(());
        };
        self.retried("revoke", |mut c| async move { c.lease_revoke(lease).await })
            .await
            .map(|_| info!(lease, "lease revoked: left the cluster"))
            .map_err(|e| ClusterError::Backend(format!("etcd: {e}")))
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if let Err(e) = self.repair().await {
                warn!(error = %e, retry_in = ?backoff, "etcd session broken");
                let sleep = tokio::time::sleep(backoff);
                tokio::pin!(sleep);
                backoff = (backoff * 2).min(self.config.max_backoff);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        command = commands.recv() => {
                            if !self.handle(command).await {
                                return;
                            }
                        }
                    }
                }
                continue;
            }
            backoff = Duration::from_millis(50);
            tokio::select! {
                command = commands.recv() => {
                    if !self.handle(command).await {
                        return;
                    }
                }
                end = next_keep_alive_end(&mut self.keeper) => match end {
                    KeepAliveEnd::Lost => {
                        warn!(lease = ?self.lease, "etcd no longer knows this node's lease; granting a new one");
                        self.lease_lost();
                    }
                    KeepAliveEnd::Broken(e) => {
                        debug!(error = %e, "lease keep-alive broken; reopening");
                        self.keeper = None;
                    }
                },
                answer = next_watch(&mut self.watch) => match answer {
                    Ok(Some(answer)) if answer.canceled() || answer.compact_revision() > 0 => {
                        warn!(reason = answer.cancel_reason(), compacted = answer.compact_revision(), "watch canceled; reloading");
                        self.watch = None;
                        self.needs_reload = true;
                    }
                    Ok(Some(answer)) => self.apply(&answer),
                    Ok(None) => {
                        debug!(revision = self.revision, "watch stream ended; resuming");
                        self.watch = None;
                    }
                    Err(e) => {
                        debug!(error = %e, revision = self.revision, "watch failed; resuming");
                        self.watch = None;
                    }
                },
            }
        }
    }

    /// Handles one command; false when the task must end.
    async fn handle(&mut self, command: Option<Command>) -> bool {
        match command {
            Some(Command::Advertise(services, reply)) => {
                let _ = reply.send(self.advertise(services).await);
                true
            }
            Some(Command::Leave(reply)) => {
                let _ = reply.send(self.leave().await);
                true
            }
            Some(Command::Stop(reply)) => {
                if !self.left {
                    if let Err(e) = self.leave().await {
                        warn!(error = %e, "could not revoke the lease; it expires by itself");
                    }
                }
                debug!("etcd session stopped");
                let _ = reply.send(());
                false
            }
            None => {
                debug!("the membership handle is gone; etcd session ends");
                false
            }
        }
    }
}

/// Whether a call failed before it was sent: no connection to the endpoint it went to.
fn not_sent(e: &etcd_client::Error) -> bool {
    const UNAVAILABLE: i32 = 14;
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(status) => status.code() as i32 == UNAVAILABLE,
        _ => false,
    }
}

/// Why a keep-alive task ended.
enum KeepAliveEnd {
    /// etcd does not have the lease any more.
    Lost,
    /// The stream failed, or etcd stopped acknowledging; the lease may still be alive.
    Broken(String),
}

/// A task that renews one lease every third of its TTL, apart from the session's task so that
/// a slow write never delays a renewal. Aborted when dropped.
struct KeepAlive {
    end: oneshot::Receiver<KeepAliveEnd>,
    task: JoinHandle<()>,
}

impl KeepAlive {
    fn start(keeper: LeaseKeeper, stream: LeaseKeepAliveStream, ttl: Duration) -> KeepAlive {
        let (tx, end) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = tx.send(keep_alive(keeper, stream, ttl).await);
        });
        KeepAlive { end, task }
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep_alive(
    mut keeper: LeaseKeeper,
    mut stream: LeaseKeepAliveStream,
    ttl: Duration,
) -> KeepAliveEnd {
    let mut renew = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acked = Instant::now();
    loop {
        tokio::select! {
            _ = renew.tick() => {
                // A connection can die without an error; etcd's silence says so.
                if acked.elapsed() > ttl {
                    return KeepAliveEnd::Broken("no renewal acknowledged for a whole TTL".into());
                }
                if let Err(e) = keeper.keep_alive().await {
                    return KeepAliveEnd::Broken(e.to_string());
                }
            }
            answer = stream.message() => match answer {
                Ok(Some(answer)) if answer.ttl() <= 0 => return KeepAliveEnd::Lost,
                Ok(Some(_)) => acked = Instant::now(),
                Ok(None) => return KeepAliveEnd::Broken("the keep-alive stream ended".into()),
                Err(e) => return KeepAliveEnd::Broken(e.to_string()),
            },
        }
    }
}

async fn next_keep_alive_end(keeper: &mut Option<KeepAlive>) -> KeepAliveEnd {
    match keeper {
        Some(k) => (&mut k.end)
            .await
            .unwrap_or_else(|_| KeepAliveEnd::Broken("the keep-alive task ended".into())),
        None => std::future::pending().await,
    }
}

async fn next_watch(
    watch: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match watch {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

struct EtcdMembership {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<ClusterView>>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl EtcdMembership {
    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .await
            .map_err(|_| ClusterError::Backend("etcd session already stopped".into()))?;
        rx.await
            .map_err(|_| ClusterError::Backend("etcd session already stopped".into()))
    }
}

#[async_trait]
impl Membership for EtcdMembership {
    async fn advertise(&self, services: &[ServiceEntry]) -> Result<(), ClusterError> {
        self.call(|tx| Command::Advertise(services.to_vec(), tx))
            .await?
    }

    fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        self.call(Command::Leave).await?
    }

    async fn shutdown(&self) -> Result<(), ClusterError> {
        if self.call(Command::Stop).await.is_err() {
            return Ok(());
        }
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        Ok(())
    }

    fn abort(&self) {
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

impl Drop for EtcdMembership {
    fn drop(&mut self) {
        Membership::abort(self);
    }
}

/// The view of a prefix holding these keys and values, each read as `Session::reload` reads
/// it: a key that is not UTF-8 or a value that is not an entry is skipped. For the fuzz targets
/// (`crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn view_of_values<'a>(
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> ClusterView {
    let kv = kvs
        .into_iter()
        .filter_map(|(key, value)| {
            let key = std::str::from_utf8(key).ok()?.to_owned();
            let entry = serde_json::from_slice(value).ok()?;
            Some((key, entry))
        })
        .collect();
    view_of(&kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, service: Option<(&str, &str)>) -> Entry {
        Entry {
            node_id: node.into(),
            endpoint: format!("http://{node}:80"),
            stream: service.map(|s| s.0.into()),
            id: service.map(|s| s.1.into()),
        }
    }

    #[test]
    fn the_view_groups_keys_by_node() {
        let kv: BTreeMap<String, Entry> = [
            ("m/a", entry("a", None)),
            ("s/echo/2", entry("a", Some(("echo", "2")))),
            ("s/echo/1", entry("a", Some(("echo", "1")))),
            // A service whose member key is not there yet still names its node.
            ("s/other/3", entry("b", Some(("other", "3")))),
            ("m/c", entry("c", None)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let view = view_of(&kv);
        let ids: Vec<&str> = view.members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let a: Vec<&str> = view.members[0].services.iter().map(|s| &*s.id).collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(view.members[1].endpoint, "http://b:80");
        assert!(view.members[2].services.is_empty());
        assert!(view.members.iter().all(|m| m.state == MemberState::Live));
    }

    #[test]
    fn entries_round_trip_and_member_keys_have_no_service() {
        let json = serde_json::to_string(&entry("a", None)).unwrap();
        assert_eq!(json, r#"{"node_id":"a","endpoint":"http://a:80"}"#);
        let service = entry("a", Some(("echo", "1")));
        let back: Entry = serde_json::from_str(&serde_json::to_string(&service).unwrap()).unwrap();
        assert_eq!(back, service);
    }

    #[test]
    fn endpoints_parse_to_urls() {
        let cluster = EtcdCluster::new(["127.0.0.1:2379", "http://etcd-2:2379", "2380"]).unwrap();
        assert_eq!(
            cluster.endpoints(),
            [
                "http://127.0.0.1:2379",
                "http://etcd-2:2379",
                "http://127.0.0.1:2380"
            ]
        );
        assert!(EtcdCluster::new(["https://x:2379"]).is_err());
        assert!(EtcdCluster::new(Vec::<String>::new()).is_err());
        assert!(EtcdCluster::new(["x:find"]).is_err());
    }
}
