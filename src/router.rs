//! Routing: a key to its owner (a local service, or a remote one to forward to), from the current
//! service table; send and broadcast.
//!
//! The router holds two snapshots behind `ArcSwap`: the service table (replaced on every
//! membership change) and the local registry (replaced on every registration). A request loads
//! them without locks and never holds anything across network I/O.
//!
//! Under failure:
//! - A forward that fails before the owner can have seen the request (no connection, a link
//!   that broke before the request was written, a 421 answer) is sent again to the key's next
//!   owner, until the request's deadline. One that may have reached the owner is sent again
//!   only when the caller marked it idempotent; otherwise the answer is a 502 naming the owner.
//! - A node whose connection failed becomes *suspect*: its services leave this node's rings at
//!   once (a new table snapshot), until gossip confirms it gone or the suspicion expires. A
//!   stream whose every service is suspect keeps them, so that it still answers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt;
use http::StatusCode;
use serde_json::{json, Value};
use tracing::{debug, error, warn};

use crate::cluster::{ClusterView, Member, MemberState, Membership, ServiceEntry};
use crate::forward::{not_executed, ForwardError, Forwarder};
use crate::link::LEAVING_BODY;
use crate::message::{BoxFuture, HandlerError, Header, Message, Payload, Reply, SharedHandler};
use crate::metrics::{Metrics, Route};
use crate::observe::{self, RequestScope};
use crate::table::ServiceTable;
use crate::FastMap;

/// A service registered on this node.
#[derive(Clone)]
pub(crate) struct LocalService {
    pub stream: Arc<str>,
    pub handler: SharedHandler,
}

/// Why a message could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("No matching services found for '{0}'")]
    UnknownStream(String),
    #[error("Service {0} not found")]
    UnknownService(String),
    /// A forwarded request named a service this node does not run (tables disagreed).
    #[error("service {0} is not on this node")]
    NotHere(String),
    #[error("owner {service_id} at {endpoint} is unreachable: {reason}")]
    Unreachable {
        service_id: String,
        endpoint: String,
        reason: String,
    },
    /// The connection to the owner failed after the request may have reached it; it was not
    /// sent again because the caller did not mark it idempotent.
    #[error(
        "owner {service_id} at {endpoint} failed after the request may have reached it ({reason}); \
         not resent, as it was not marked idempotent"
    )]
    Lost {
        service_id: String,
        endpoint: String,
        reason: String,
    },
    /// This node has as many requests in flight as it accepts.
    #[error("node is at its limit of {0} requests in flight; retry later")]
    Overloaded(usize),
    #[error("no answer from service {service_id} within {after:?}")]
    Timeout { service_id: String, after: Duration },
    #[error("{0}")]
    Handler(#[from] HandlerError),
    #[error("the answer is not JSON: {0}")]
    BadAnswer(String),
}

impl RouteError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::UnknownStream(_) | RouteError::UnknownService(_) => StatusCode::NOT_FOUND,
            RouteError::NotHere(_) => StatusCode::MISDIRECTED_REQUEST,
            RouteError::Unreachable { .. } | RouteError::Lost { .. } | RouteError::BadAnswer(_) => {
                StatusCode::BAD_GATEWAY
            }
            RouteError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouteError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            RouteError::Handler(e) => e.status,
        }
    }
}

/// What a routed request produced: the answer and the service that gave it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub service_id: Arc<str>,
    pub reply: Reply,
}

/// Timeouts and limits of routing.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Bounds a whole request: handling, or forwarding and the answer, retries included.
    pub request_timeout: Duration,
    /// How long a node whose connection failed stays off this node's rings, unless gossip
    /// confirms it gone first. Longer than the failure detector takes, so that a dead node
    /// does not come back before gossip drops it.
    pub suspect_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            request_timeout: Duration::from_secs(10),
            suspect_timeout: Duration::from_secs(5),
        }
    }
}

/// Options of one [`Router::send_with`] or [`Router::broadcast_with`].
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Bounds the whole request, retries included; never longer than the node's request
    /// timeout, which is also the default.
    pub timeout: Option<Duration>,
    /// The handler may safely run twice: a forward that failed after the request may have
    /// reached the owner is sent to the next owner instead of failing with a 502.
    pub idempotent: bool,
}

/// One request to route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteRequest<'a> {
    pub stream: &'a str,
    pub key: &'a str,
    /// A service the caller named (`X-Service-ID`), instead of the ring's choice.
    pub target: Option<&'a str>,
    /// The request was forwarded to us already: it must not be forwarded again.
    pub hop: bool,
    /// The caller allows a resend after the request may have reached the owner.
    pub idempotent: bool,
    pub deadline: Instant,
}

/// A service this node stopped choosing after a failure it saw itself.
#[derive(Debug, Clone)]
struct Suspect {
    stream: Arc<str>,
    endpoint: Arc<str>,
    /// When it comes back to the rings unless gossip confirms it gone first.
    until: Instant,
    reason: Arc<str>,
    /// It said it is leaving or no longer has the service: left out of broadcasts quietly.
    leaving: bool,
}

/// The members of `view` without the services suspected at `now`, except where that would
/// leave a stream with no service at all (it keeps its suspects then, and still answers).
fn without_suspects(
    mut members: Vec<Member>,
    suspects: &FastMap<Arc<str>, Suspect>,
    now: Instant,
) -> Vec<Member> {
    if suspects.is_empty() {
        return members;
    }
    let suspected = |id: &str| suspects.get(id).is_some_and(|s| s.until > now);
    let served: HashSet<Arc<str>> = members
        .iter()
        .filter(|m| m.state == MemberState::Live)
        .flat_map(|m| m.services.iter())
        .filter(|s| !suspected(&s.id))
        .map(|s| s.stream.clone())
        .collect();
    for member in &mut members {
        member
            .services
            .retain(|s| !suspected(&s.id) || !served.contains(&s.stream));
    }
    members
}

/// A forward attempt that got no answer.
struct Failure {
    error: RouteError,
    /// Sending the request to the key's next owner cannot run it twice, or the caller allows it.
    retry: bool,
}

/// Sends and broadcasts messages across the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    table: ArcSwap<ServiceTable>,
    local: ArcSwap<FastMap<Arc<str>, LocalService>>,
    /// Local services taken out of the cluster (an unhealthy upstream), kept under their ids so
    /// that they come back to the same place on the rings. Never touched on the request path.
    withdrawn: std::sync::Mutex<FastMap<Arc<str>, LocalService>>,
    /// Serializes advertising, so that the last list computed is the last one advertised.
    advertising: tokio::sync::Mutex<()>,
    forwarder: Forwarder,
    config: RouterConfig,
    membership: Arc<dyn Membership>,
    node_id: Arc<str>,
    /// `http://host:port` of this node, for its own entry in the table.
    endpoint: Arc<str>,
    /// Set when this node starts leaving: its own services leave its rings too.
    leaving: AtomicBool,
    /// The backend's latest view, kept to rebuild the table when local services change.
    view: ArcSwap<ClusterView>,
    /// Services off the rings after a failure seen here, by service id. Read when the table is
    /// rebuilt and by broadcasts, never by a send that goes well.
    suspects: ArcSwap<FastMap<Arc<str>, Suspect>>,
    version: AtomicU64,
    /// This node's metrics and membership events (see `metrics.rs`).
    metrics: Metrics,
}

impl Router {
    pub(crate) fn new(
        node_id: Arc<str>,
        endpoint: Arc<str>,
        membership: Arc<dyn Membership>,
        forwarder: Forwarder,
        config: RouterConfig,
    ) -> Router {
        Router {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(ServiceTable::default()),
                local: ArcSwap::from_pointee(FastMap::default()),
                withdrawn: Default::default(),
                advertising: Default::default(),
                forwarder,
                config,
                membership,
                node_id,
                endpoint,
                leaving: AtomicBool::new(false),
                view: ArcSwap::from_pointee(ClusterView::default()),
                suspects: ArcSwap::from_pointee(FastMap::default()),
                version: AtomicU64::new(0),
                metrics: Metrics::default(),
            }),
        }
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `http://host:port` of this node.
    pub(crate) fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Bytes the membership backend sent and received, where it counts them.
    pub(crate) fn membership_traffic(&self) -> Option<crate::cluster::Traffic> {
        self.inner.membership.traffic()
    }

    /// The id of this node.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The current service table.
    pub fn table(&self) -> Arc<ServiceTable> {
        self.inner.table.load_full()
    }

    /// Takes a new view from the membership backend and rebuilds the table from it. Suspects
    /// that the view confirms (no longer live) are forgotten, and links to nodes that are gone
    /// are closed, so that requests waiting on them fail now rather than at their deadlines.
    pub(crate) fn apply_view(&self, view: Arc<ClusterView>) {
        let reachable = |view: &ClusterView| -> HashSet<String> {
            view.members
                .iter()
                .filter(|m| m.state != MemberState::Dead)
                .map(|m| m.endpoint.clone())
                .collect()
        };
        let now_reachable = reachable(&view);
        for gone in reachable(&self.inner.view.load()).difference(&now_reachable) {
            debug!(endpoint = %gone, "node gone; closing its link");
            self.inner.forwarder.forget(gone);
        }
        let live: HashSet<&str> = view
            .members
            .iter()
            .filter(|m| m.state == MemberState::Live)
            .flat_map(|m| m.services.iter().map(|s| &*s.id))
            .collect();
        if self
            .inner
            .suspects
            .load()
            .keys()
            .any(|id| !live.contains(&**id))
        {
            self.inner.suspects.rcu(|current| {
                let mut next = HashMap::clone(current);
                next.retain(|id, _| live.contains(&**id));
                next
            });
        }
        self.inner.view.store(view);
        self.rebuild();
    }

    /// Takes the services of node `node_id` off the rings for a while: its connection failed
    /// (`leaving` false) or it said that it is leaving.
    fn suspect_node(&self, node_id: &str, reason: &str, leaving: bool) {
        let view = self.inner.view.load();
        let Some(member) = view.members.iter().find(|m| m.id == node_id) else {
            return;
        };
        let services: Vec<(Arc<str>, Arc<str>)> = member
            .services
            .iter()
            .map(|s| (s.id.clone(), s.stream.clone()))
            .collect();
        self.suspect(&services, &member.endpoint, reason, leaving);
    }

    /// Takes `services` (id, stream) of the node at `endpoint` off the rings for a while.
    fn suspect(
        &self,
        services: &[(Arc<str>, Arc<str>)],
        endpoint: &str,
        reason: &str,
        leaving: bool,
    ) {
        if services.is_empty() || *endpoint == *self.inner.endpoint {
            return;
        }
        let until = Instant::now() + self.inner.config.suspect_timeout;
        let (endpoint, reason): (Arc<str>, Arc<str>) = (Arc::from(endpoint), Arc::from(reason));
        self.inner.suspects.rcu(|current| {
            let mut next = HashMap::clone(current);
            for (id, stream) in services {
                next.insert(
                    id.clone(),
                    Suspect {
                        stream: stream.clone(),
                        endpoint: endpoint.clone(),
                        until,
                        reason: reason.clone(),
                        leaving,
                    },
                );
            }
            next
        });
        warn!(%endpoint, services = services.len(), %reason, leaving,
            "owner suspect: off the rings until gossip settles it or the suspicion expires");
        self.rebuild();
        // Back to the rings when the suspicion expires, unless gossip settled it first.
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        let ttl = self.inner.config.suspect_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            if let Some(inner) = inner.upgrade() {
                Router { inner }.expire_suspects();
            }
        });
    }

    /// Forgets the suspicions that have expired, and rebuilds the table when there were any.
    fn expire_suspects(&self) {
        let now = Instant::now();
        if !self.inner.suspects.load().values().any(|s| s.until <= now) {
            return;
        }
        self.inner.suspects.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.retain(|_, s| s.until > now);
            next
        });
        debug!("suspicions expired; their services are back on the rings");
        self.rebuild();
    }

    /// Whether this node is leaving.
    pub fn is_leaving(&self) -> bool {
        self.inner.leaving.load(Ordering::Acquire)
    }

    /// Marks this node as leaving: from now on its own services are off its rings too.
    pub(crate) fn set_leaving(&self) {
        self.inner.leaving.store(true, Ordering::Release);
        self.rebuild();
    }

    /// Builds and swaps in the table of the latest view, with this node's own entry taken from
    /// what it knows first-hand (its active local services, and whether it is leaving) rather
    /// than from the backend, which learns them a gossip round or a round trip later.
    pub(crate) fn rebuild(&self) {
        let view = self.inner.view.load();
        let mut members: Vec<Member> = view
            .members
            .iter()
            .filter(|m| *m.id != *self.inner.node_id)
            .cloned()
            .collect();
        members.push(Member {
            id: self.inner.node_id.to_string(),
            endpoint: self.inner.endpoint.to_string(),
            state: if self.is_leaving() {
                MemberState::Leaving
            } else {
                MemberState::Live
            },
            services: self.local_services(),
            last_heard: None,
        });
        let members = without_suspects(members, &self.inner.suspects.load(), Instant::now());
        let version = self.inner.version.fetch_add(1, Ordering::AcqRel) + 1;
        let table = ServiceTable::build(version, &ClusterView { members });
        debug!(
            version,
            services = table.services.len(),
            "service table swapped"
        );
        self.inner.table.store(Arc::new(table));
    }

    pub(crate) fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// The services registered on this node.
    pub fn local_services(&self) -> Vec<ServiceEntry> {
        sorted_entries(&self.inner.local.load())
    }

    /// Adds services to the local registry without advertising them.
    pub(crate) fn add_local(&self, services: Vec<(Arc<str>, LocalService)>) {
        self.inner.local.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.extend(services.iter().cloned());
            next
        });
    }

    /// Registers a handler on `stream` as a new service (with a fresh UUID v4 id) and advertises
    /// it to the cluster; returns the id. Fails when the cluster backend cannot advertise it.
    pub async fn register(
        &self,
        stream: impl Into<String>,
        handler: SharedHandler,
    ) -> Result<String, crate::cluster::ClusterError> {
        let id = uuid::Uuid::new_v4().to_string();
        let stream: Arc<str> = Arc::from(stream.into());
        self.add_local(vec![(
            Arc::from(id.as_str()),
            LocalService { stream, handler },
        )]);
        self.advertise_local().await?;
        Ok(id)
    }

    /// Removes a local service and withdraws it from the cluster. Returns whether it existed.
    pub async fn unregister(&self, service_id: &str) -> Result<bool, crate::cluster::ClusterError> {
        let mut existed = false;
        self.inner.local.rcu(|current| {
            let mut next = HashMap::clone(current);
            existed = next.remove(service_id).is_some();
            next
        });
        let parked = self.withdrawn().remove(service_id).is_some();
        self.advertise_local().await?;
        Ok(existed || parked)
    }

    /// Takes a local service out of the cluster without forgetting it: it is no longer
    /// advertised nor run, and [`Router::restore`] brings it back under the same id, so at the
    /// same place on the rings. Returns false when no such service is active here. Fails when
    /// the cluster backend cannot advertise the change (the service is withdrawn locally all
    /// the same).
    pub async fn withdraw(&self, service_id: &str) -> Result<bool, crate::cluster::ClusterError> {
        let moved = {
            let mut withdrawn = self.withdrawn();
            let mut removed = None;
            self.inner.local.rcu(|current| {
                let mut next = HashMap::clone(current);
                removed = next.remove_entry(service_id);
                next
            });
            match removed {
                Some((id, service)) => withdrawn.insert(id, service).is_none(),
                None => false,
            }
        };
        if moved {
            self.advertise_local().await?;
        }
        Ok(moved)
    }

    /// Advertises a service taken out by [`Router::withdraw`] again, under its id. Returns false
    /// when no such service is withdrawn. Fails as [`Router::withdraw`] does.
    pub async fn restore(&self, service_id: &str) -> Result<bool, crate::cluster::ClusterError> {
        let moved = {
            let mut withdrawn = self.withdrawn();
            match withdrawn.remove_entry(service_id) {
                Some(entry) => {
                    self.add_local(vec![entry]);
                    true
                }
                None => false,
            }
        };
        if moved {
            self.advertise_local().await?;
        }
        Ok(moved)
    }

    /// The services withdrawn from the cluster by [`Router::withdraw`].
    pub fn withdrawn_services(&self) -> Vec<ServiceEntry> {
        sorted_entries(&self.withdrawn())
    }

    /// Adds services that start withdrawn: registered, not advertised until restored.
    pub(crate) fn add_withdrawn(&self, services: Vec<(Arc<str>, LocalService)>) {
        self.withdrawn().extend(services);
    }

    fn withdrawn(&self) -> std::sync::MutexGuard<'_, FastMap<Arc<str>, LocalService>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.inner
            .withdrawn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Advertises exactly the active local services. Serialized, so that concurrent changes
    /// cannot advertise an older list last.
    pub(crate) async fn advertise_local(&self) -> Result<(), crate::cluster::ClusterError> {
        self.rebuild();
        let _turn = self.inner.advertising.lock().await;
        self.inner
            .membership
            .advertise(&self.local_services())
            .await
    }

    /// The deadline of a request that asks for `timeout`: never later than the node's own.
    fn deadline(&self, timeout: Option<Duration>) -> Instant {
        let limit = self.inner.config.request_timeout;
        Instant::now() + timeout.map_or(limit, |t| t.min(limit))
    }

    /// Starts observing a request that enters this node (see `observe.rs`).
    pub(crate) fn observe(
        &self,
        stream: &str,
        key: &str,
        route: Route,
        trace: Option<observe::TraceId>,
    ) -> RequestScope {
        let table = self.inner.table.load();
        RequestScope::new(&self.inner.metrics, &table, stream, key, route, trace)
    }

    /// Sends a message to the service that owns its partition key and returns the answer.
    pub async fn send(&self, message: Message) -> Result<Value, RouteError> {
        self.send_with(message, SendOptions::default()).await
    }

    /// [`Router::send`] with a timeout of its own, or marked idempotent.
    pub async fn send_with(
        &self,
        message: Message,
        options: SendOptions,
    ) -> Result<Value, RouteError> {
        let payload = Payload::json(&message.data);
        let mut scope = self.observe(
            &message.stream,
            &message.partition_key,
            Route::Unrouted,
            None,
        );
        let routed = std::pin::pin!(self.route(
            RouteRequest {
                stream: &message.stream,
                key: &message.partition_key,
                target: None,
                hop: false,
                idempotent: options.idempotent,
                deadline: self.deadline(options.timeout),
            },
            payload,
        ));
        let routed = scope.run(routed).await;
        match &routed {
            Ok(r) => scope.finish(r.reply.status, Some(&r.service_id)),
            Err(e) => scope.finish(e.status(), None),
        }
        answer_value(routed?.reply)
    }

    /// Sends a message to every service of its stream; one entry per service, failures as
    /// `{"error": ..., "serviceId": ..., "status": ...}` entries.
    pub async fn broadcast(&self, message: Message) -> Result<Vec<Value>, RouteError> {
        self.broadcast_with(message, SendOptions::default()).await
    }

    /// [`Router::broadcast`] with a timeout of its own. A broadcast never resends: each
    /// service is asked once.
    pub async fn broadcast_with(
        &self,
        message: Message,
        options: SendOptions,
    ) -> Result<Vec<Value>, RouteError> {
        let payload = Payload::json(&message.data);
        let mut scope = self.observe(
            &message.stream,
            &message.partition_key,
            Route::Broadcast,
            None,
        );
        let parts = std::pin::pin!(self.broadcast_payload(
            &message.stream,
            &message.partition_key,
            payload,
            self.deadline(options.timeout),
        ));
        let results = scope
            .run(parts)
            .await
            .map(|parts| parts.into_iter().map(Part::into_value).collect());
        scope.finish(
            results
                .as_ref()
                .map_or_else(|e| e.status(), |_| StatusCode::OK),
            None,
        );
        results
    }

    /// Routes one request: to the service it names, or to the ring's owner of its key. A forward
    /// that fails before the owner can have seen the request is sent to the key's next owner
    /// (an idempotent one also after), until the deadline; a service named by the caller is
    /// asked once.
    pub(crate) async fn route(
        &self,
        request: RouteRequest<'_>,
        payload: Payload,
    ) -> Result<Routed, RouteError> {
        let RouteRequest {
            stream,
            key,
            deadline,
            ..
        } = request;
        if let Some(id) = request.target {
            let locals = self.inner.local.load();
            if let Some(local) = locals.get(id) {
                let service_id: Arc<str> = Arc::from(id);
                let answer = start_local(service_id.clone(), local, key, payload);
                drop(locals);
                return finish_local(service_id, answer, deadline).await;
            }
            drop(locals);
            if request.hop {
                return Err(RouteError::NotHere(id.to_owned()));
            }
            let owner = self
                .inner
                .table
                .load()
                .service(id)
                .map(|s| (s.id.clone(), s.node_id.clone(), s.endpoint.clone()));
            let Some((service_id, node_id, endpoint)) = owner else {
                return Err(self.not_in_table(id));
            };
            return self
                .forward(&endpoint, service_id, &node_id, request, &payload)
                .await
                .map_err(|failure| failure.error);
        }

        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut last: Option<RouteError> = None;
        loop {
            // A local owner's handler starts while the snapshots are at hand. For a remote
            // owner the table is kept (one reference count) for its node and endpoint.
            let table = self.inner.table.load();
            let Some(place) = table.owner_place(stream, key) else {
                return Err(RouteError::UnknownStream(stream.to_owned()));
            };
            let owner = &table.services[place];
            let locals = self.inner.local.load();
            if let Some(local) = locals.get(&owner.id) {
                let service_id = owner.id.clone();
                let answer = start_local(service_id.clone(), local, key, payload);
                drop((locals, table));
                return finish_local(service_id, answer, deadline).await;
            }
            drop(locals);
            let table = arc_swap::Guard::into_inner(table);
            let owner = &table.services[place];
            let (service_id, node_id, endpoint) = (&owner.id, &*owner.node_id, &*owner.endpoint);
            if tried.contains(service_id) {
                // No other owner to try (every service of the stream is suspect).
                return Err(last.unwrap_or_else(|| RouteError::NotHere(service_id.to_string())));
            }
            match self
                .forward(endpoint, service_id.clone(), node_id, request, &payload)
                .await
            {
                Ok(routed) => return Ok(routed),
                Err(Failure { error, retry }) if retry && Instant::now() < deadline => {
                    debug!(%service_id, %error, "sending the request to the key's next owner");
                    observe::rerouted();
                    tried.push(service_id.clone());
                    last = Some(error);
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// Why service `id`, named by the caller, is not in the table: suspect, or unknown.
    fn not_in_table(&self, id: &str) -> RouteError {
        match self.inner.suspects.load().get(id) {
            Some(suspect) if suspect.leaving => RouteError::NotHere(id.to_owned()),
            Some(suspect) => RouteError::Unreachable {
                service_id: id.to_owned(),
                endpoint: suspect.endpoint.to_string(),
                reason: format!("suspect after: {}", suspect.reason),
            },
            None => RouteError::UnknownService(id.to_owned()),
        }
    }

    /// Forwards one request to `service_id` on node `node_id` at `endpoint`. A failure says
    /// whether the request may go to another owner; a failed connection makes the node suspect.
    async fn forward(
        &self,
        endpoint: &str,
        service_id: Arc<str>,
        node_id: &str,
        request: RouteRequest<'_>,
        payload: &Payload,
    ) -> Result<Routed, Failure> {
        let started = Instant::now();
        let result = self
            .inner
            .forwarder
            .forward(
                endpoint,
                request.stream,
                request.key,
                &service_id,
                payload,
                request.deadline,
            )
            .await;
        observe::forwarded(started);
        match result {
            Ok(reply) if not_executed(&reply) => {
                if reply.body == LEAVING_BODY {
                    self.suspect_node(node_id, "the node is leaving", true);
                } else {
                    let service = (service_id.clone(), Arc::from(request.stream));
                    self.suspect(&[service], endpoint, "the node does not run it", true);
                }
                Err(Failure {
                    error: RouteError::NotHere(service_id.to_string()),
                    retry: true,
                })
            }
            Ok(reply) => Ok(Routed { service_id, reply }),
            Err(ForwardError::Timeout(after)) => Err(Failure {
                error: RouteError::Timeout {
                    service_id: service_id.to_string(),
                    after,
                },
                retry: false,
            }),
            Err(e) => {
                warn!(%service_id, %endpoint, error = %e, "forward failed");
                if e.connection_failed() {
                    self.suspect_node(node_id, &e.to_string(), false);
                }
                let (service_id, endpoint, reason) =
                    (service_id.to_string(), endpoint.to_owned(), e.to_string());
                if e.never_delivered() {
                    Err(Failure {
                        error: RouteError::Unreachable {
                            service_id,
                            endpoint,
                            reason,
                        },
                        retry: true,
                    })
                } else {
                    Err(Failure {
                        error: RouteError::Lost {
                            service_id,
                            endpoint,
                            reason,
                        },
                        retry: request.idempotent && e.connection_failed(),
                    })
                }
            }
        }
    }

    /// Runs every service of `stream` at once; one JSON entry per service, in table order, then
    /// an error entry for each service this node suspects after a failed connection (it is not
    /// asked again until the suspicion ends).
    pub(crate) async fn broadcast_payload(
        &self,
        stream: &str,
        key: &str,
        payload: Payload,
        deadline: Instant,
    ) -> Result<Vec<Part>, RouteError> {
        let targets: Vec<Arc<str>> = self
            .inner
            .table
            .load()
            .services_of(stream)
            .map(|s| s.id.clone())
            .collect();
        let now = Instant::now();
        let mut suspects: Vec<Arc<str>> = self
            .inner
            .suspects
            .load()
            .iter()
            .filter(|(id, s)| {
                &*s.stream == stream && !s.leaving && s.until > now && !targets.contains(id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        suspects.sort();
        if targets.is_empty() && suspects.is_empty() {
            return Err(RouteError::UnknownStream(stream.to_owned()));
        }
        let error_entry = |id: &str, e: RouteError| {
            json!({
                "error": e.to_string(),
                "serviceId": id,
                "status": e.status().as_u16(),
            })
        };
        let calls = targets.iter().map(|id| {
            let payload = payload.clone();
            async move {
                let request = RouteRequest {
                    stream,
                    key,
                    target: Some(id),
                    hop: false,
                    idempotent: false,
                    deadline,
                };
                let result = self.route(request, payload).await;
                match result.and_then(|routed| answer_json(routed.reply)) {
                    Ok(json) => Part::Answer(json),
                    Err(e) => Part::Error(error_entry(id, e)),
                }
            }
        });
        let mut entries = futures_util::future::join_all(calls).await;
        entries.extend(
            suspects
                .iter()
                .map(|id| Part::Error(error_entry(id, self.not_in_table(id)))),
        );
        Ok(entries)
    }
}

/// The JSON of a successful reply, or the error it carries.
fn answer_value(reply: Reply) -> Result<Value, RouteError> {
    if !reply.status.is_success() {
        return Err(RouteError::Handler(error_of_reply(&reply)));
    }
    reply
        .to_value()
        .map_err(|e| RouteError::BadAnswer(e.to_string()))
}

/// The body of a successful reply, checked to be JSON without being parsed into a value
/// (`null` for an empty one), or the error the reply carries.
fn answer_json(reply: Reply) -> Result<Bytes, RouteError> {
    if !reply.status.is_success() {
        return Err(RouteError::Handler(error_of_reply(&reply)));
    }
    if reply.body.is_empty() {
        return Ok(Bytes::from_static(b"null"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&reply.body)
        .map_err(|e| RouteError::BadAnswer(e.to_string()))?;
    Ok(reply.body)
}

/// One service's entry in a broadcast's answer.
pub(crate) enum Part {
    /// The service's answer: valid JSON, passed on as it came.
    Answer(Bytes),
    /// `{"error", "serviceId", "status"}` for a service that failed.
    Error(Value),
}

impl Part {
    fn into_value(self) -> Value {
        match self {
            // Checked to be JSON by `answer_json`.
            Part::Answer(json) => serde_json::from_slice(&json).unwrap_or(Value::Null),
            Part::Error(entry) => entry,
        }
    }

    /// The answer of a broadcast over HTTP: the parts as a JSON array, each answer's bytes
    /// copied as they came instead of parsed and written again.
    pub(crate) fn array(parts: &[Part]) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + parts.iter().map(Part::len_hint).sum::<usize>());
        out.push(b'[');
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match part {
                Part::Answer(json) => out.extend_from_slice(json),
                Part::Error(entry) => {
                    let _ = serde_json::to_writer(&mut out, entry);
                }
            }
        }
        out.push(b']');
        out
    }

    fn len_hint(&self) -> usize {
        match self {
            Part::Answer(json) => json.len() + 1,
            Part::Error(_) => 96,
        }
    }
}

/// A failed reply as a handler error: its status and the message of its `{"error": ...}` body.
fn error_of_reply(reply: &Reply) -> HandlerError {
    let message = reply
        .to_value()
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
    HandlerError::with_status(reply.status, message)
}

/// A registry's services as entries, sorted by id.
fn sorted_entries(registry: &FastMap<Arc<str>, LocalService>) -> Vec<ServiceEntry> {
    let mut services: Vec<ServiceEntry> = registry
        .iter()
        .map(|(id, s)| ServiceEntry {
            id: id.clone(),
            stream: s.stream.clone(),
        })
        .collect();
    services.sort();
    services
}

/// Starts a local service's handler on a message: what it needs is moved into the future it
/// returns, so the caller need not hold the service.
fn start_local(
    service_id: Arc<str>,
    local: &LocalService,
    key: &str,
    payload: Payload,
) -> BoxFuture<'static, Result<Reply, HandlerError>> {
    let header = Header {
        service_id,
        stream: local.stream.clone(),
        partition_key: Arc::from(key),
    };
    // A handler that panics answers 500, like one that fails: the panic ends neither the
    // client's connection nor a peer link with everything else it carries. One that panics
    // before it returns its future panics again inside it, where `finish_local` catches it.
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        local.handler.handle(payload, header)
    }));
    started.unwrap_or_else(|panic| Box::pin(async move { std::panic::resume_unwind(panic) }))
}

/// The error for a handler that panicked; the panic's message goes to the log, not to the
/// caller.
fn panicked(service_id: &str, panic: &(dyn std::any::Any + Send)) -> HandlerError {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    error!(service_id, panic = message, "handler panicked");
    HandlerError::internal("the handler failed unexpectedly (it panicked)")
}

/// Waits for a local handler's answer until `deadline`, and records how long it took.
async fn finish_local(
    service_id: Arc<str>,
    answer: BoxFuture<'static, Result<Reply, HandlerError>>,
    deadline: Instant,
) -> Result<Routed, RouteError> {
    let mut answer = std::panic::AssertUnwindSafe(answer)
        .catch_unwind()
        .map(|outcome| outcome.unwrap_or_else(|panic| Err(panicked(&service_id, &*panic))));
    let started = Instant::now();
    let timeout = deadline.saturating_duration_since(started);
    // Most handlers answer on their first poll: only those that wait get a timer, which
    // spares the timer wheel a registration per request.
    let outcome = match (&mut answer).now_or_never() {
        Some(result) => Ok(result),
        None => tokio::time::timeout(timeout, answer).await,
    };
    observe::handled(started);
    match outcome {
        Ok(Ok(reply)) => Ok(Routed { service_id, reply }),
        // An error answer, like one that comes back from a forward: it keeps the id of the
        // service that gave it.
        Ok(Err(e)) => Ok(Routed {
            service_id,
            reply: Reply {
                status: e.status,
                body: Bytes::from(
                    serde_json::to_vec(&json!({ "error": e.message })).unwrap_or_default(),
                ),
            },
        }),
        Err(_) => Err(RouteError::Timeout {
            service_id: service_id.to_string(),
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &'static str) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn a_broadcast_array_passes_answers_through_and_writes_errors() {
        let answered = answer_json(ok(r#"{"n": 1, "s": "é"}"#)).unwrap();
        let empty = answer_json(ok("")).unwrap();
        let bad = answer_json(ok("{not json")).unwrap_err();
        assert!(matches!(bad, RouteError::BadAnswer(_)), "{bad}");
        let failed = answer_json(Reply {
            status: StatusCode::CONFLICT,
            body: Bytes::from_static(br#"{"error":"taken"}"#),
        })
        .unwrap_err();
        assert_eq!(failed.to_string(), "taken");
        let parts = [
            Part::Answer(answered),
            Part::Answer(empty),
            Part::Error(json!({"error": "taken", "serviceId": "b", "status": 409})),
        ];
        let array: Value = serde_json::from_slice(&Part::array(&parts)).unwrap();
        assert_eq!(
            array,
            json!([{"n": 1, "s": "é"}, null, {"error": "taken", "serviceId": "b", "status": 409}])
        );
        let values: Vec<Value> = parts.into_iter().map(Part::into_value).collect();
        assert_eq!(
            Value::Array(values),
            array,
            "the library sees the same entries"
        );
        assert_eq!(Part::array(&[]), b"[]");
    }
}
