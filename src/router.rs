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
//!
//! Layout: this file holds the [`Router`] handle and the request path (route, send, forward);
//! `registry` the local services and advertising; `placement` the table rebuilds and the
//! suspects; `retry` the pure rule that reads a failed forward; `local` running a handler here;
//! `broadcast` the answers of a broadcast. Depends on `outbound`, `observe`, `table`,
//! `cluster`, `delivery`, `wire` and `message`; never on the HTTP server above it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::StatusCode;
use serde_json::Value;
use tracing::{debug, warn};

use crate::cluster::{ClusterView, Membership};
use crate::delivery::{MayHaveRun, NotRun, Undelivered};
use crate::message::{Message, Payload, Reply};
use crate::observe::{self, Metrics, RequestScope, Route};
use crate::outbound::Forwarder;
use crate::ring::HashRing;
use crate::security::Fingerprint;
use crate::table::ServiceTable;
use crate::wire::Deadline;
use crate::FastMap;

mod background;
mod broadcast;
mod error;
mod handoff;
mod history;
mod local;
mod naming;
mod options;
mod placement;
mod registry;
mod retry;
mod strict;
mod target;

pub(crate) use background::Delivery;
use broadcast::answer_value;
pub(crate) use broadcast::Part;
pub use error::RouteError;
use local::{finish_local, start_local};
pub(crate) use naming::holder as name_holder;
pub use options::{RouterConfig, SendOptions};
use placement::Suspect;
pub(crate) use registry::LocalService;
use retry::{classify, Suspicion};

/// What a routed request produced: the answer and the service that gave it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub service_id: Arc<str>,
    pub reply: Reply,
}

/// What a message carries to its handler beside its body: its name and the client's headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extra<'a> {
    /// The name the sender gave (`?messageName=`); without one, the owner reads a top-level
    /// `"name"` of a JSON object body.
    pub name: Option<&'a str>,
    /// The client's headers, already filtered (see `relay`).
    pub headers: &'a http::HeaderMap,
    /// On a forward: the service that owned the key before, as the sender knows it (a node
    /// that joined a moment ago may not know the members it joined yet).
    pub previous_owner: Option<&'a str>,
}

/// No headers.
static NO_HEADERS: std::sync::LazyLock<http::HeaderMap> =
    std::sync::LazyLock::new(http::HeaderMap::new);

/// One request to route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteRequest<'a> {
    pub stream: &'a str,
    /// Empty: the message has no key and goes to the stream's services in turn.
    pub key: &'a str,
    pub extra: Extra<'a>,
    /// A service the caller named (`X-Service-ID`), instead of the ring's choice.
    pub target: Option<&'a str>,
    /// The request was forwarded to us already: it must not be forwarded again.
    pub hop: bool,
    /// On a forward to a key's owner: the checksum of the sender's ring of the stream (0:
    /// none, a request sent to a service by id), which an owner with `--strict-ownership`
    /// checks against its own.
    pub ring: u64,
    /// The caller allows a resend after the request may have reached the owner.
    pub idempotent: bool,
    pub deadline: Deadline,
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
    /// The turn of the next message without a key: the service it goes to is this modulo the
    /// stream's services.
    turn: AtomicUsize,
    /// Messages being delivered in the background (`?wait=false`), and their bound.
    background: background::Queue,
    /// Every table swapped in, for those that follow them off the request path (the event
    /// feed).
    published: tokio::sync::watch::Sender<Arc<ServiceTable>>,
    /// The node's name (`--node-name`): service ids derive from it. `None`: random ids.
    name: Option<Arc<str>>,
    /// Registrations so far on each stream, whose count numbers the next named id.
    registrations: std::sync::Mutex<FastMap<Arc<str>, usize>>,
    /// This node's request metrics (see [`crate::observe`]), counted by the scopes it opens.
    metrics: Metrics,
    /// The tables of the handoff window, for the previous owner of a key (see `handoff`).
    history: ArcSwap<history::History>,
    /// When this router started: within the handoff window after it, keys it took by joining
    /// get a hint too.
    born: Instant,
}

impl Router {
    pub(crate) fn new(
        node_id: Arc<str>,
        endpoint: Arc<str>,
        membership: Arc<dyn Membership>,
        forwarder: Forwarder,
        config: RouterConfig,
        name: Option<Arc<str>>,
    ) -> Router {
        Router {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(ServiceTable::default()),
                local: ArcSwap::from_pointee(FastMap::default()),
                withdrawn: Default::default(),
                advertising: Default::default(),
                forwarder,
                membership,
                node_id,
                endpoint,
                leaving: AtomicBool::new(false),
                view: ArcSwap::from_pointee(ClusterView::default()),
                suspects: ArcSwap::from_pointee(FastMap::default()),
                version: AtomicU64::new(0),
                turn: AtomicUsize::new(0),
                background: background::Queue::new(config.background_limit),
                published: tokio::sync::watch::Sender::new(Arc::default()),
                name,
                registrations: Default::default(),
                metrics: Metrics::default(),
                history: ArcSwap::from_pointee(history::History::default()),
                born: Instant::now(),
                config,
            }),
        }
    }

    /// The tables this router swaps in, the latest first: a follower may skip some, never the
    /// last.
    pub(crate) fn tables(&self) -> tokio::sync::watch::Receiver<Arc<ServiceTable>> {
        self.inner.published.subscribe()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `http://host:port` of this node.
    pub(crate) fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Whether the membership backend has heard from the cluster (see `Membership::joined`).
    pub(crate) fn membership_joined(&self) -> bool {
        self.inner.membership.joined()
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

    pub(crate) fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    /// The deadline of a request that asks for `timeout`: never later than the node's own.
    fn deadline(&self, timeout: Option<Duration>) -> Deadline {
        Deadline::within(timeout, self.inner.config.request_timeout)
    }

    /// Starts observing a request that enters this node (see `observe.rs`).
    pub(crate) fn observe(
        &self,
        stream: &str,
        key: &str,
        route: Route,
        incoming: Option<observe::Incoming>,
    ) -> RequestScope {
        let table = self.inner.table.load();
        RequestScope::new(&self.inner.metrics, &table, stream, key, route, incoming)
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
        if options.no_wait {
            return self.send_later(message, &options);
        }
        let payload = Payload::json(&message.data);
        let mut scope = self.observe(
            &message.stream,
            &message.partition_key,
            Route::Unrouted,
            None,
        );
        let request = RouteRequest {
            stream: &message.stream,
            key: &message.partition_key,
            extra: Extra {
                name: message.name.as_deref(),
                headers: &NO_HEADERS,
                previous_owner: None,
            },
            target: options.service.as_deref(),
            hop: false,
            ring: 0,
            idempotent: options.idempotent,
            deadline: self.deadline(options.timeout),
        };
        let routed = scope.step(observe::Step::Route, &message.stream, || {
            self.route(request, payload)
        });
        let routed = std::pin::pin!(routed);
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
            Extra {
                name: message.name.as_deref(),
                headers: &NO_HEADERS,
                previous_owner: None,
            },
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
            return self.route_to(id, request, payload).await;
        }

        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut last: Option<RouteError> = None;
        // How long this request has waited so far for tables to agree (see `table_after`).
        let mut waited = Duration::ZERO;
        // The key is hashed once, for every owner tried and for its previous owner.
        let hash = (!key.is_empty()).then(|| HashRing::hash(key));
        loop {
            // A local owner's handler starts while the snapshots are at hand. For a remote
            // owner the table is kept (one reference count) for its node and endpoint.
            let table = self.inner.table.load();
            let entry = table.stream(stream);
            let place = match hash {
                None => self.next_in_turn(&table, stream, &tried),
                Some(hash) => entry.and_then(|e| Some(e.services[e.ring.get_index_of_hash(hash)?])),
            };
            // A forward to a key's owner says which ring chose it, for an owner that checks.
            let ring = match hash {
                Some(_) => entry.map_or(0, |e| e.checksum),
                None => 0,
            };
            let Some(place) = place else {
                if let Some(last) = last {
                    return Err(last);
                }
                return Err(RouteError::UnknownStream(stream.to_owned()));
            };
            let owner = &table.services[place];
            let locals = self.inner.local.load();
            if let Some(local) = locals.get(&owner.id) {
                let service_id = owner.id.clone();
                let previous = self.previous_owner(&table, stream, hash, &service_id);
                let answer = start_local(
                    service_id.clone(),
                    local,
                    key,
                    request.extra,
                    previous,
                    payload,
                );
                drop((locals, table));
                return finish_local(service_id, answer, deadline).await;
            }
            drop(locals);
            let table = arc_swap::Guard::into_inner(table);
            let owner = &table.services[place];
            let service_id = &owner.id;
            // The key's previous owner as this node knows it goes with the forward, for an
            // owner that has not heard of it yet.
            let told = self.previous_owner(&table, stream, hash, service_id);
            let to = Owner {
                endpoint: &owner.endpoint,
                node_id: &owner.node_id,
                fingerprint: owner.fingerprint,
            };
            if tried.contains(service_id) {
                // No other owner to try (every service of the stream is suspect).
                return Err(last.unwrap_or_else(|| RouteError::NotHere(service_id.to_string())));
            }
            let version = table.version;
            match self
                .forward(
                    to,
                    service_id.clone(),
                    RouteRequest { ring, ..request },
                    &payload,
                    told,
                )
                .await
            {
                Ok(routed) => return Ok(routed),
                Err(Failure {
                    error,
                    look_again: true,
                    ..
                }) if !deadline.has_passed() => {
                    debug!(%service_id, "the owner's table gives the key to another service; routing again once the tables agree");
                    self.table_after(version, &mut waited, deadline).await;
                    last = Some(error);
                }
                Err(Failure { error, retry, .. }) if retry && !deadline.has_passed() => {
                    debug!(%service_id, %error, "sending the request to the key's next owner");
                    observe::rerouted();
                    tried.push(service_id.clone());
                    last = Some(error);
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    /// The place, in `table`, of the service of `stream` whose turn it is for a message without
    /// a key (round-robin over the stream's services, lock-free: one atomic counter over the
    /// immutable table), skipping those already `tried`; `None` when there is none left.
    fn next_in_turn(
        &self,
        table: &ServiceTable,
        stream: &str,
        tried: &[Arc<str>],
    ) -> Option<usize> {
        let services = &table.stream(stream)?.services;
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        (0..services.len())
            .map(|n| services[(turn + n) % services.len()])
            .find(|&place| !tried.contains(&table.services[place].id))
    }

    /// Forwards one request to `service_id` on the node `to`. A failure says whether the
    /// request may go to another owner; a failed connection or a refusal makes the owner
    /// suspect (see `retry`).
    async fn forward(
        &self,
        to: Owner<'_>,
        service_id: Arc<str>,
        request: RouteRequest<'_>,
        payload: &Payload,
        told: Option<Arc<str>>,
    ) -> Result<Routed, Failure> {
        let Owner {
            endpoint,
            node_id,
            fingerprint,
        } = to;
        let started = Instant::now();
        let forward = || {
            self.inner.forwarder.forward(
                endpoint,
                fingerprint,
                request.stream,
                request.key,
                &service_id,
                (request.ring, told.as_deref()),
                (request.extra.name, request.extra.headers),
                payload,
                request.deadline,
            )
        };
        let result = observe::step(observe::Step::Forward, &service_id, forward).await;
        observe::forwarded(started);
        let failure = match result {
            Ok(reply) => return Ok(Routed { service_id, reply }),
            Err(failure) => failure,
        };
        let refused_or_late = matches!(
            failure,
            Undelivered::NotRun(NotRun::Refused(_))
                | Undelivered::MayHaveRun(MayHaveRun::TimedOut(_))
        );
        if !refused_or_late {
            warn!(%service_id, %endpoint, error = %failure, "forward failed");
        }
        let decision = classify(&failure, request.idempotent);
        match decision.suspect {
            Some(Suspicion::Node { leaving }) => {
                self.suspect_node(node_id, &failure.to_string(), leaving);
            }
            Some(Suspicion::Service) => {
                let service = (service_id.clone(), Arc::from(request.stream));
                self.suspect(&[service], endpoint, &failure.to_string(), true);
            }
            None => {}
        }
        Err(Failure {
            error: retry::error(failure, &service_id, endpoint),
            retry: decision.retry,
            look_again: decision.look_again,
        })
    }
}

/// The node that runs a service to forward to, as the table has it.
#[derive(Clone, Copy)]
struct Owner<'a> {
    /// `http://host:port`.
    endpoint: &'a str,
    node_id: &'a str,
    /// Its certificate's fingerprint, if it published one.
    fingerprint: Option<Fingerprint>,
}

/// A forward attempt that got no answer.
struct Failure {
    error: RouteError,
    /// Sending the request to the key's next owner cannot run it twice, or the caller allows it.
    retry: bool,
    /// The owner's table gives the key to another service (see `Refusal::NotOwner`).
    look_again: bool,
}
