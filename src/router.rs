//! Routing: a key to its owner (a local service, or a remote one to forward to), from the current
//! service table; send and broadcast.
//!
//! The router holds two snapshots behind `ArcSwap`: the service table (replaced on every
//! membership change) and the local registry (replaced on every registration). A request loads
//! them without locks and never holds anything across network I/O.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::cluster::{ClusterView, Member, MemberState, Membership, ServiceEntry};
use crate::forward::{not_executed, ForwardError, Forwarder};
use crate::message::{HandlerError, Header, Message, Payload, Reply, SharedHandler};
use crate::metrics::{Metrics, Route};
use crate::observe::{self, RequestScope};
use crate::table::ServiceTable;

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
            RouteError::Unreachable { .. } | RouteError::BadAnswer(_) => StatusCode::BAD_GATEWAY,
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
    /// Bounds a whole request: handling, or forwarding and the answer.
    pub request_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Sends and broadcasts messages across the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    table: ArcSwap<ServiceTable>,
    local: ArcSwap<HashMap<Arc<str>, LocalService>>,
    /// Local services taken out of the cluster (an unhealthy upstream), kept under their ids so
    /// that they come back to the same place on the rings. Never touched on the request path.
    withdrawn: std::sync::Mutex<HashMap<Arc<str>, LocalService>>,
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
                local: ArcSwap::from_pointee(HashMap::new()),
                withdrawn: Default::default(),
                advertising: Default::default(),
                forwarder,
                config,
                membership,
                node_id,
                endpoint,
                leaving: AtomicBool::new(false),
                view: ArcSwap::from_pointee(ClusterView::default()),
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

    /// Takes a new view from the membership backend and rebuilds the table from it.
    pub(crate) fn apply_view(&self, view: Arc<ClusterView>) {
        self.inner.view.store(view);
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
        let mut services: Vec<ServiceEntry> = self
            .inner
            .local
            .load()
            .iter()
            .map(|(id, s)| ServiceEntry {
                id: id.clone(),
                stream: s.stream.clone(),
            })
            .collect();
        services.sort();
        services
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
        let mut services: Vec<ServiceEntry> = self
            .withdrawn()
            .iter()
            .map(|(id, s)| ServiceEntry {
                id: id.clone(),
                stream: s.stream.clone(),
            })
            .collect();
        services.sort();
        services
    }

    /// Adds services that start withdrawn: registered, not advertised until restored.
    pub(crate) fn add_withdrawn(&self, services: Vec<(Arc<str>, LocalService)>) {
        self.withdrawn().extend(services);
    }

    fn withdrawn(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, LocalService>> {
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

    fn deadline(&self) -> Instant {
        Instant::now() + self.inner.config.request_timeout
    }

    /// Starts observing a request that enters this node (see `observe.rs`).
    pub(crate) fn observe(
        &self,
        stream: &str,
        key: &str,
        route: Route,
        trace: Option<observe::TraceId>,
    ) -> RequestScope<'_> {
        let table = self.inner.table.load();
        RequestScope::new(&self.inner.metrics, &table, stream, key, route, trace)
    }

    /// Sends a message to the service that owns its partition key and returns the answer.
    pub async fn send(&self, message: Message) -> Result<Value, RouteError> {
        let payload = Payload::json(&message.data);
        let mut scope = self.observe(
            &message.stream,
            &message.partition_key,
            Route::Unrouted,
            None,
        );
        let routed = scope
            .run(self.route(
                &message.stream,
                &message.partition_key,
                None,
                false,
                payload,
                self.deadline(),
            ))
            .await;
        match &routed {
            Ok(r) => scope.finish(r.reply.status, Some(&r.service_id)),
            Err(e) => scope.finish(e.status(), None),
        }
        answer_value(routed?.reply)
    }

    /// Sends a message to every service of its stream; one entry per service, failures as
    /// `{"error": ..., "serviceId": ..., "status": ...}` entries.
    pub async fn broadcast(&self, message: Message) -> Result<Vec<Value>, RouteError> {
        let payload = Payload::json(&message.data);
        let mut scope = self.observe(
            &message.stream,
            &message.partition_key,
            Route::Broadcast,
            None,
        );
        let results = scope
            .run(self.broadcast_payload(
                &message.stream,
                &message.partition_key,
                payload,
                self.deadline(),
            ))
            .await;
        scope.finish(
            results
                .as_ref()
                .map_or_else(|e| e.status(), |_| StatusCode::OK),
            None,
        );
        results
    }

    /// Routes one request. `target` names a service (the `X-Service-ID` header); `hop` says the
    /// request was forwarded to us already, so it must not be forwarded again.
    pub(crate) async fn route(
        &self,
        stream: &str,
        key: &str,
        target: Option<&str>,
        hop: bool,
        payload: Payload,
        deadline: Instant,
    ) -> Result<Routed, RouteError> {
        if let Some(id) = target {
            if let Some(local) = self.inner.local.load().get(id) {
                let service_id: Arc<str> = Arc::from(id);
                return self
                    .run_local(service_id, local.clone(), stream, key, payload, deadline)
                    .await;
            }
            if hop {
                return Err(RouteError::NotHere(id.to_owned()));
            }
            let table = self.inner.table.load();
            let service = table
                .service(id)
                .ok_or_else(|| RouteError::UnknownService(id.to_owned()))?;
            let (sid, endpoint) = (service.id.clone(), service.endpoint.clone());
            drop(table);
            return self
                .forward(&endpoint, sid, stream, key, &payload, deadline)
                .await;
        }

        // At most one re-lookup, and only after an answer that proves the request never ran.
        let mut tried: Option<Arc<str>> = None;
        loop {
            let (service_id, endpoint) = {
                let table = self.inner.table.load();
                let owner = table
                    .owner(stream, key)
                    .ok_or_else(|| RouteError::UnknownStream(stream.to_owned()))?;
                (owner.id.clone(), owner.endpoint.clone())
            };
            if let Some(local) = self.inner.local.load().get(&service_id) {
                return self
                    .run_local(service_id, local.clone(), stream, key, payload, deadline)
                    .await;
            }
            if tried.as_ref() == Some(&service_id) {
                return Err(RouteError::NotHere(service_id.to_string()));
            }
            match self
                .forward(
                    &endpoint,
                    service_id.clone(),
                    stream,
                    key,
                    &payload,
                    deadline,
                )
                .await
            {
                Err(RouteError::NotHere(_)) if tried.is_none() => {
                    debug!(%service_id, "owner no longer runs the service; looking the key up again");
                    observe::rerouted();
                    tried = Some(service_id);
                }
                other => return other,
            }
        }
    }

    async fn run_local(
        &self,
        service_id: Arc<str>,
        local: LocalService,
        stream: &str,
        key: &str,
        payload: Payload,
        deadline: Instant,
    ) -> Result<Routed, RouteError> {
        let header = Header {
            service_id: service_id.clone(),
            stream: local.stream.clone(),
            partition_key: Arc::from(key),
        };
        let _ = stream;
        let timeout = deadline.saturating_duration_since(Instant::now());
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, local.handler.handle(payload, header)).await;
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

    async fn forward(
        &self,
        endpoint: &str,
        service_id: Arc<str>,
        stream: &str,
        key: &str,
        payload: &Payload,
        deadline: Instant,
    ) -> Result<Routed, RouteError> {
        let started = Instant::now();
        let result = self
            .inner
            .forwarder
            .forward(endpoint, stream, key, &service_id, payload, deadline)
            .await;
        observe::forwarded(started);
        match result {
            Ok(reply) if not_executed(&reply) => Err(RouteError::NotHere(service_id.to_string())),
            Ok(reply) => Ok(Routed { service_id, reply }),
            Err(ForwardError::Timeout(after)) => Err(RouteError::Timeout {
                service_id: service_id.to_string(),
                after,
            }),
            Err(e) => {
                warn!(%service_id, %endpoint, error = %e, "forward failed");
                Err(RouteError::Unreachable {
                    service_id: service_id.to_string(),
                    endpoint: endpoint.to_owned(),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Runs every service of `stream` at once; one JSON entry per service, in table order.
    pub(crate) async fn broadcast_payload(
        &self,
        stream: &str,
        key: &str,
        payload: Payload,
        deadline: Instant,
    ) -> Result<Vec<Value>, RouteError> {
        let targets: Vec<Arc<str>> = {
            let table = self.inner.table.load();
            let ids: Vec<Arc<str>> = table.services_of(stream).map(|s| s.id.clone()).collect();
            if ids.is_empty() {
                return Err(RouteError::UnknownStream(stream.to_owned()));
            }
            ids
        };
        let calls = targets.iter().map(|id| {
            let payload = payload.clone();
            async move {
                let result = self
                    .route(stream, key, Some(id), false, payload, deadline)
                    .await;
                match result.and_then(|routed| {
                    if routed.reply.status.is_success() {
                        answer_value(routed.reply)
                    } else {
                        Err(RouteError::Handler(error_of_reply(&routed.reply)))
                    }
                }) {
                    Ok(value) => value,
                    Err(e) => json!({
                        "error": e.to_string(),
                        "serviceId": &**id,
                        "status": e.status().as_u16(),
                    }),
                }
            }
        });
        Ok(futures_util::future::join_all(calls).await)
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

/// A failed reply as a handler error: its status and the message of its `{"error": ...}` body.
fn error_of_reply(reply: &Reply) -> HandlerError {
    let message = reply
        .to_value()
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
    HandlerError::with_status(reply.status, message)
}
