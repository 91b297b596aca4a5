//! Membership on a Consul agent (feature `consul`), registered the way the original's
//! `ConsulCluster` registers, so meshage nodes and original nodes share one Consul.
//!
//! - Joining: `PUT /v1/agent/join/<first seed>` when there are seeds (a serf LAN address).
//! - Each service: `PUT /v1/agent/service/register` with `ID` = service id, `Name` = stream,
//!   `Address`/`Port` = the node's HTTP address, `Tags` = [`endpoint~http~http://host:port`],
//!   `Meta` = {`meshage-node`: node id}, and an HTTP check on `http://host:port/api/health`
//!   every `check_interval`, deregistered by the agent after `deregister_critical_after`
//!   critical. Withdrawn services and, on leave, all of them: `PUT
//!   /v1/agent/service/deregister/<id>`.
//! - Learning: blocking queries (`index` + `wait`) on `GET /v1/catalog/services` find the streams
//!   (service names with an `endpoint~` tag; others are not meshage's), and one blocking query per
//!   stream on `GET /v1/health/service/<stream>?passing=true` lists its instances whose checks
//!   all pass. An instance's endpoint comes from its tag `endpoint~http~<url>`, exactly as the
//!   original parses it; its member is the node id in `Meta`, or for an original node (no meta)
//!   the endpoint itself.
//! - Every request carries `X-Consul-Token` when a token is configured.
//! - Every `resync_interval` the node checks that the agent still has its services and
//!   registers again what it lost (an agent restarted without its state) or what failed to
//!   register while the agent was out of reach.
//!
//! On joining, services that an earlier run at this node's address left registered (it crashed)
//! are deregistered: their checks would pass again once the address answers.
//!
//! This node's own services are in its view from the moment it advertises them: the agent lists
//! them as passing only after their first check, and a node need not ask Consul about itself.
//! A crashed node's services leave the view when their check turns critical.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::{
    Cluster, ClusterError, ClusterView, LocalNode, Member, MemberState, Membership, ServiceEntry,
};
use crate::address::parse_seed;
use crate::path::encode_segment;

/// The tag prefix the original uses for an HTTP endpoint: `endpoint~http~<url>`.
const ENDPOINT_TAG: &str = "endpoint~http~";
/// Service meta naming the meshage node that runs a service.
const NODE_META: &str = "meshage-node";

/// Tuning of the Consul backend.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// ACL token sent as `X-Consul-Token` with every request.
    pub token: Option<String>,
    /// How often the agent runs each service's HTTP health check (the original: 5 s).
    pub check_interval: Duration,
    /// How long a service may stay critical before the agent deregisters it (Consul's minimum
    /// is one minute).
    pub deregister_critical_after: Duration,
    /// How long a blocking query waits for a change before the agent answers anyway.
    pub wait: Duration,
    /// Bounds each non-blocking request (and a blocking one beyond its wait).
    pub request_timeout: Duration,
    /// Longest wait between two attempts after the agent failed to answer.
    pub max_backoff: Duration,
    /// How often the node checks that the agent still has its services (an agent that lost
    /// its state, a registration that failed) and registers them again.
    pub resync_interval: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            token: None,
            check_interval: Duration::from_secs(5),
            deregister_critical_after: Duration::from_secs(60),
            wait: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(2),
            resync_interval: Duration::from_secs(10),
        }
    }
}

/// Membership through a Consul agent, the original's `ConsulCluster`.
#[derive(Debug, Clone)]
pub struct ConsulCluster {
    agent: String,
    seeds: Vec<String>,
    config: ConsulConfig,
}

impl ConsulCluster {
    /// A Consul cluster reached through the agent's HTTP API at `agent_address` (`host:port`,
    /// `http://host:port`, or a bare port on 127.0.0.1), joining the agent to the first of
    /// `seeds` (serf LAN addresses, `host:port`) when there is one. Fails when the address does
    /// not parse or asks for TLS (`https://`), which this build does not support.
    pub fn new<A, I, S>(agent_address: A, seeds: I) -> Result<Self, ClusterError>
    where
        A: ToString,
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let address = agent_address.to_string();
        if address.trim().starts_with("https://") {
            return Err(ClusterError::Backend(format!(
                "Consul agent {address}: TLS is not supported; use http://"
            )));
        }
        Ok(ConsulCluster {
            agent: format!("http://{}", parse_seed(&address)?),
            seeds: seeds
                .into_iter()
                .map(|s| s.to_string().trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            config: ConsulConfig::default(),
        })
    }

    /// Replaces the tuning.
    pub fn with_config(mut self, config: ConsulConfig) -> Self {
        self.config = config;
        self
    }

    /// The agent's HTTP API, as a URL.
    pub fn agent(&self) -> &str {
        &self.agent
    }
}

/// The agent's HTTP API.
#[derive(Clone)]
struct Agent {
    base: String,
    token: Option<HeaderValue>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An answer of the agent: status, `X-Consul-Index`, body.
struct Answer {
    status: StatusCode,
    index: Option<u64>,
    body: Bytes,
}

impl Agent {
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path_and_query}", self.base));
        if let Some(token) = &self.token {
            builder = builder.header("x-consul-token", token.clone());
        }
        let body = match body {
            Some(v) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?)
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = response.status();
            let index = response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(Answer {
                status,
                index,
                body,
            })
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{method} {path_and_query}: no answer within {timeout:?}"))??;
        if !answer.status.is_success() {
            return Err(format!(
                "{method} {path_and_query}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body).trim()
            ));
        }
        Ok(answer)
    }
}

/// A Go duration Consul parses: whole milliseconds.
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Splits `http://host:port` into the host (without IPv6 brackets) and the port.
fn host_port(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let rest = rest.split('/').next()?;
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

/// The registration of one service, in the original's format plus the node id in `Meta`.
fn registration(local: &LocalNode, id: &str, stream: &str, config: &ConsulConfig) -> Value {
    let (host, port) = host_port(&local.endpoint).unwrap_or_default();
    json!({
        "ID": id,
        "Name": stream,
        "Address": host,
        "Port": port,
        "Tags": [format!("{ENDPOINT_TAG}{}", local.endpoint)],
        "Meta": { NODE_META: local.node_id },
        "Check": {
            "HTTP": format!("{}/api/health", local.endpoint),
            "Interval": go_duration(config.check_interval),
            "DeregisterCriticalServiceAfter": go_duration(config.deregister_critical_after),
        },
    })
}

/// The HTTP endpoint in a list of tags, parsed as the original does (`endpoint~http~<url>`).
pub(crate) fn endpoint_of(tags: &[&str]) -> Option<String> {
    tags.iter().find_map(|tag| {
        let mut parts = tag.splitn(3, '~');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("endpoint"), Some("http"), Some(url)) if !url.is_empty() => Some(url.to_owned()),
            _ => None,
        }
    })
}

/// One passing instance of a stream, as the health endpoint lists it.
#[derive(Debug, Clone, PartialEq)]
struct Instance {
    id: String,
    stream: String,
    endpoint: String,
    /// The meshage node id, or the endpoint for a service registered without one.
    member: String,
}

/// The instances in an answer of `/v1/health/service/<stream>`; those without an endpoint tag
/// are not meshage's and are skipped.
fn instances_of(body: &[u8]) -> Result<Vec<Instance>, String> {
    let entries: Vec<Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(entries
        .iter()
        .filter_map(|entry| {
            let service = entry.get("Service")?;
            let id = service.get("ID")?.as_str()?.to_owned();
            let stream = service.get("Service")?.as_str()?.to_owned();
            let tags: Vec<&str> = service
                .get("Tags")
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let endpoint = endpoint_of(&tags)?;
            let member = service
                .get("Meta")
                .and_then(|m| m.get(NODE_META))
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map_or_else(|| endpoint.clone(), str::to_owned);
            Some(Instance {
                id,
                stream,
                endpoint,
                member,
            })
        })
        .collect())
}

/// The streams in an answer of `/v1/catalog/services`: names with an endpoint tag.
fn streams_of(body: &[u8]) -> Result<Vec<String>, String> {
    let services: BTreeMap<String, Vec<String>> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(services
        .into_iter()
        .filter(|(_, tags)| tags.iter().any(|t| t.starts_with("endpoint~")))
        .map(|(name, _)| name)
        .collect())
}

/// What the watchers know, and this node's own member.
struct WatchState {
    streams: BTreeMap<String, Vec<Instance>>,
    own: Member,
}

impl WatchState {
    fn view(&self) -> ClusterView {
        let own_ids: std::collections::HashSet<&str> =
            self.own.services.iter().map(|s| &*s.id).collect();
        let mut members: BTreeMap<&str, Member> = BTreeMap::new();
        for instance in self.streams.values().flatten() {
            if instance.member == self.own.id || own_ids.contains(instance.id.as_str()) {
                continue;
            }
            members
                .entry(&instance.member)
                .or_insert_with(|| Member {
                    id: instance.member.clone(),
                    endpoint: instance.endpoint.clone(),
                    state: MemberState::Live,
                    services: Vec::new(),
                    last_heard: None,
                })
                .services
                .push(ServiceEntry {
                    id: Arc::from(instance.id.as_str()),
                    stream: Arc::from(instance.stream.as_str()),
                });
        }
        let mut members: Vec<Member> = members
            .into_values()
            .chain(std::iter::once(self.own.clone()))
            .map(|mut m| {
                m.services.sort();
                m
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        ClusterView { members }
    }
}

/// The state and the view it publishes; the view is sent under the lock so that views go out
/// in the order the state changed.
struct Shared {
    state: Mutex<WatchState>,
    view: watch::Sender<Arc<ClusterView>>,
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut WatchState)) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        change(&mut state);
        let view = state.view();
        self.view.send_if_modified(|current| {
            if **current == view {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
    }
}

/// Aborts a task when dropped, so that a watcher's children end with it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows Consul's index rules: a missing or zero index becomes 1 (a zero would make every
/// query return at once), one that went backwards starts over from 0.
fn next_index(previous: u64, answered: Option<u64>) -> u64 {
    match answered {
        Some(0) | None => 1,
        Some(i) if i < previous => 0,
        Some(i) => i,
    }
}

struct Watcher {
    agent: Agent,
    shared: Arc<Shared>,
    config: ConsulConfig,
}

impl Watcher {
    fn blocking_timeout(&self) -> Duration {
        // Consul adds up to wait/16 of jitter.
        self.config.wait + self.config.wait / 16 + self.config.request_timeout
    }

    /// Follows the catalog and keeps one watcher per stream.
    async fn catalog(self: Arc<Self>, first: Answer) {
        let mut children: HashMap<String, AbortOnDrop> = HashMap::new();
        let mut index = 0;
        let mut answer = Ok(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            match answer {
                Ok(a) => {
                    backoff = Duration::from_millis(50);
                    index = next_index(index, a.index);
                    match streams_of(&a.body) {
                        Ok(streams) => self.follow(&mut children, streams),
                        Err(e) => warn!(error = %e, "the catalog answer does not parse"),
                    }
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "reading the Consul catalog failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
            let query = format!(
                "/v1/catalog/services?index={index}&wait={}",
                go_duration(self.config.wait)
            );
            answer = self
                .agent
                .call(Method::GET, &query, None, self.blocking_timeout())
                .await;
        }
    }

    fn follow(self: &Arc<Self>, children: &mut HashMap<String, AbortOnDrop>, streams: Vec<String>) {
        let gone: Vec<String> = children
            .keys()
            .filter(|s| !streams.contains(s))
            .cloned()
            .collect();
        for stream in &gone {
            children.remove(stream);
        }
        if !gone.is_empty() {
            self.shared.update(|state| {
                for stream in &gone {
                    state.streams.remove(stream);
                }
            });
        }
        for stream in streams {
            if let std::collections::hash_map::Entry::Vacant(entry) = children.entry(stream) {
                debug!(stream = %entry.key(), "watching a stream's instances");
                let task = tokio::spawn(self.clone().stream(entry.key().clone()));
                entry.insert(AbortOnDrop(task));
            }
        }
    }

    /// Follows the passing instances of one stream.
    async fn stream(self: Arc<Self>, stream: String) {
        let mut path = String::from("/v1/health/service/");
        encode_segment(&stream, &mut path);
        let mut index = 0;
        let mut backoff = Duration::from_millis(50);
        loop {
            let query = format!(
                "{path}?passing=true&index={index}&wait={}",
                go_duration(self.config.wait)
            );
            let started = Instant::now();
            let result = self
                .agent
                .call(Method::GET, &query, None, self.blocking_timeout())
                .await
                .and_then(|a| instances_of(&a.body).map(|i| (a.index, i)));
            match result {
                Ok((answered, instances)) => {
                    backoff = Duration::from_millis(50);
                    let previous = index;
                    index = next_index(index, answered);
                    self.shared.update(|state| {
                        state.streams.insert(stream.clone(), instances);
                    });
                    // An agent that answers at once without a new index is not blocking: do
                    // not spin on it.
                    if index == previous && started.elapsed() < Duration::from_millis(10) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    warn!(%stream, error = %e, retry_in = ?backoff, "reading a stream's instances failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }
}

#[async_trait]
impl Cluster for ConsulCluster {
    async fn join(self: Box<Self>, local: LocalNode) -> Result<Arc<dyn Membership>, ClusterError> {
        let ConsulCluster {
            agent,
            seeds,
            config,
        } = *self;
        let token = match &config.token {
            Some(t) => Some(HeaderValue::from_str(t).map_err(|_| {
                ClusterError::Backend("the Consul token is not a valid header value".into())
            })?),
            None => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.request_timeout));
        connector.set_nodelay(true);
        let agent = Agent {
            base: agent,
            token,
            client: Client::builder(TokioExecutor::new()).build(connector),
        };
        let fail = |e: String| ClusterError::Backend(format!("Consul agent {}: {e}", agent.base));
        if let Some(seed) = seeds.first() {
            let mut path = String::from("/v1/agent/join/");
            encode_segment(seed, &mut path);
            agent
                .call(Method::PUT, &path, None, config.request_timeout)
                .await
                .map_err(fail)?;
            info!(%seed, "Consul agent joined");
        }
        // The first read proves the agent answers and the token is accepted.
        let first = agent
            .call(
                Method::GET,
                "/v1/catalog/services",
                None,
                config.request_timeout,
            )
            .await
            .map_err(fail)?;
        remove_leftovers(&agent, &local, &config).await;
        let own = Member {
            id: local.node_id.clone(),
            endpoint: local.endpoint.clone(),
            state: MemberState::Live,
            services: Vec::new(),
            last_heard: None,
        };
        let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView {
            members: vec![own.clone()],
        }));
        let shared = Arc::new(Shared {
            state: Mutex::new(WatchState {
                streams: BTreeMap::new(),
                own,
            }),
            view: view_tx,
        });
        let watcher = Arc::new(Watcher {
            agent: agent.clone(),
            shared: shared.clone(),
            config: config.clone(),
        });
        let watching = tokio::spawn(watcher.catalog(first));
        info!(agent = %agent.base, "Consul membership started");
        let registrar = Arc::new(Registrar {
            agent,
            local,
            config,
            shared,
            books: tokio::sync::Mutex::new(Books::default()),
        });
        let resyncing = tokio::spawn(registrar.clone().resync());
        Ok(Arc::new(ConsulMembership {
            registrar,
            view: view_rx,
            tasks: Mutex::new(vec![watching, resyncing]),
        }))
    }
}

/// Deregisters what an earlier run at this node's address left with the agent (it crashed, so
/// it never deregistered): those services' checks would pass again now that the address
/// answers, and keys would go to services that no longer exist.
async fn remove_leftovers(agent: &Agent, local: &LocalNode, config: &ConsulConfig) {
    let services = match agent
        .call(
            Method::GET,
            "/v1/agent/services",
            None,
            config.request_timeout,
        )
        .await
        .and_then(|a| {
            serde_json::from_slice::<BTreeMap<String, Value>>(&a.body).map_err(|e| e.to_string())
        }) {
        Ok(services) => services,
        Err(e) => {
            warn!(error = %e, "cannot list the agent's services to remove leftovers");
            return;
        }
    };
    for (id, service) in services {
        let tags: Vec<&str> = service
            .get("Tags")
            .and_then(Value::as_array)
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let node = service
            .get("Meta")
            .and_then(|m| m.get(NODE_META))
            .and_then(Value::as_str);
        if endpoint_of(&tags).as_deref() == Some(local.endpoint.as_str())
            && node != Some(local.node_id.as_str())
        {
            let mut path = String::from("/v1/agent/service/deregister/");
            encode_segment(&id, &mut path);
            match agent
                .call(Method::PUT, &path, None, config.request_timeout)
                .await
            {
                Ok(_) => {
                    info!(service = %id, endpoint = %local.endpoint, "deregistered a leftover of an earlier run at this address")
                }
                Err(e) => warn!(service = %id, error = %e, "cannot deregister a leftover service"),
            }
        }
    }
}

/// This node's registrations: what it wants registered and what the agent has.
#[derive(Default)]
struct Books {
    desired: BTreeMap<Arc<str>, Arc<str>>,
    registered: BTreeMap<Arc<str>, Arc<str>>,
}

/// Keeps the agent's registrations of this node equal to what the node advertises.
struct Registrar {
    agent: Agent,
    local: LocalNode,
    config: ConsulConfig,
    shared: Arc<Shared>,
    /// The lock orders advertise calls, leaving and resyncs.
    books: tokio::sync::Mutex<Books>,
}

impl Registrar {
    async fn deregister(&self, id: &str) -> Result<(), String> {
        let mut path = String::from("/v1/agent/service/deregister/");
        encode_segment(id, &mut path);
        self.agent
            .call(Method::PUT, &path, None, self.config.request_timeout)
            .await
            .map(|_| ())
    }

    /// Registers what is desired and not registered, deregisters what is registered and not
    /// desired. Stops at the first failure; what it did is in the books.
    async fn sync(&self, books: &mut Books) -> Result<(), ClusterError> {
        let fail = |e: String| ClusterError::Backend(format!("Consul: {e}"));
        let missing: Vec<(Arc<str>, Arc<str>)> = books
            .desired
            .iter()
            .filter(|(id, stream)| books.registered.get(*id) != Some(*stream))
            .map(|(id, stream)| (id.clone(), stream.clone()))
            .collect();
        for (id, stream) in missing {
            let body = registration(&self.local, &id, &stream, &self.config);
            self.agent
                .call(
                    Method::PUT,
                    "/v1/agent/service/register",
                    Some(&body),
                    self.config.request_timeout,
                )
                .await
                .map_err(fail)?;
            books.registered.insert(id, stream);
        }
        let stale: Vec<Arc<str>> = books
            .registered
            .keys()
            .filter(|id| !books.desired.contains_key(*id))
            .cloned()
            .collect();
        for id in stale {
            self.deregister(&id).await.map_err(fail)?;
            books.registered.remove(&id);
        }
        Ok(())
    }

    /// Makes `desired` this node's services, in its own view at once and with the agent.
    async fn set(&self, desired: BTreeMap<Arc<str>, Arc<str>>) -> Result<(), ClusterError> {
        let mut books = self.books.lock().await;
        let own: Vec<ServiceEntry> = desired
            .iter()
            .map(|(id, stream)| ServiceEntry {
                id: id.clone(),
                stream: stream.clone(),
            })
            .collect();
        books.desired = desired;
        self.shared.update(|state| state.own.services = own);
        self.sync(&mut books).await
    }

    /// Every `resync_interval`: registers again what the agent no longer has (it lost its
    /// state, or a registration failed) and finishes what an earlier sync left undone.
    async fn resync(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.config.resync_interval).await;
            let mut books = self.books.lock().await;
            if books.desired.is_empty() && books.registered.is_empty() {
                continue;
            }
            let listed = self
                .agent
                .call(
                    Method::GET,
                    "/v1/agent/services",
                    None,
                    self.config.request_timeout,
                )
                .await
                .and_then(|a| {
                    serde_json::from_slice::<BTreeMap<String, Value>>(&a.body)
                        .map_err(|e| e.to_string())
                });
            let agent_has = match listed {
                Ok(services) => services,
                Err(e) => {
                    debug!(error = %e, "cannot list the agent's services; resyncing later");
                    continue;
                }
            };
            let lost: Vec<Arc<str>> = books
                .registered
                .keys()
                .filter(|id| !agent_has.contains_key(&***id))
                .cloned()
                .collect();
            for id in lost {
                warn!(service = %id, "the agent lost this service; registering it again");
                books.registered.remove(&id);
            }
            if let Err(e) = self.sync(&mut books).await {
                warn!(error = %e, "resyncing with the agent failed; trying again later");
            }
        }
    }
}

struct ConsulMembership {
    registrar: Arc<Registrar>,
    view: watch::Receiver<Arc<ClusterView>>,
    /// The watchers and the resync task.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl ConsulMembership {
    fn stop_tasks(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

#[async_trait]
impl Membership for ConsulMembership {
    async fn advertise(&self, services: &[ServiceEntry]) -> Result<(), ClusterError> {
        let desired = services
            .iter()
            .map(|s| (s.id.clone(), s.stream.clone()))
            .collect();
        self.registrar.set(desired).await
    }

    fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        self.registrar
            .shared
            .update(|state| state.own.state = MemberState::Leaving);
        self.registrar.set(BTreeMap::new()).await
    }

    async fn shutdown(&self) -> Result<(), ClusterError> {
        self.stop_tasks();
        // Normally leave deregistered everything already.
        self.registrar.set(BTreeMap::new()).await
    }

    fn abort(&self) {
        self.stop_tasks();
    }
}

impl Drop for ConsulMembership {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

/// The view after one answer of `/v1/health/service/<stream>` per stream, each read as the
/// stream's watcher reads it (an answer that does not parse is skipped), and the streams a
/// `/v1/catalog/services` answer names. For the fuzz targets (`crate::fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn read_answers(
    own: Member,
    catalog: &[u8],
    health: &[&[u8]],
) -> (Result<Vec<String>, String>, ClusterView) {
    let mut state = WatchState {
        streams: BTreeMap::new(),
        own,
    };
    for (n, body) in health.iter().enumerate() {
        if let Ok(instances) = instances_of(body) {
            state.streams.insert(format!("stream-{n}"), instances);
        }
    }
    (streams_of(catalog), state.view())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_tags_parse_as_the_original_parses_them() {
        assert_eq!(
            endpoint_of(&["x", "endpoint~http~http://10.0.0.1:8080"]).as_deref(),
            Some("http://10.0.0.1:8080")
        );
        assert_eq!(endpoint_of(&["endpoint~tcp~10.0.0.1:1"]), None);
        assert_eq!(endpoint_of(&["endpoint~http~"]), None);
        assert_eq!(endpoint_of(&[]), None);
    }

    #[test]
    fn a_registration_has_the_originals_shape() {
        let local = LocalNode {
            node_id: "n1".into(),
            endpoint: "http://10.1.2.3:8080".into(),
        };
        let config = ConsulConfig::default();
        let body = registration(&local, "s1", "echo", &config);
        assert_eq!(
            body,
            json!({
                "ID": "s1",
                "Name": "echo",
                "Address": "10.1.2.3",
                "Port": 8080,
                "Tags": ["endpoint~http~http://10.1.2.3:8080"],
                "Meta": {"meshage-node": "n1"},
                "Check": {
                    "HTTP": "http://10.1.2.3:8080/api/health",
                    "Interval": "5000ms",
                    "DeregisterCriticalServiceAfter": "60000ms",
                },
            })
        );
        assert_eq!(host_port("http://[::1]:80"), Some(("::1".into(), 80)));
    }

    #[test]
    fn health_answers_become_instances_and_foreign_services_are_skipped() {
        let body = json!([
            {"Node": {"Node": "a"}, "Service": {"ID": "s1", "Service": "echo",
                "Tags": ["endpoint~http~http://h:1"], "Meta": {"meshage-node": "n1"}}},
            {"Node": {"Node": "a"}, "Service": {"ID": "s2", "Service": "echo",
                "Tags": ["endpoint~http~http://h:2"], "Meta": null}},
            {"Node": {"Node": "a"}, "Service": {"ID": "redis", "Service": "echo", "Tags": []}},
        ]);
        let instances = instances_of(body.to_string().as_bytes()).unwrap();
        assert_eq!(instances.len(), 2);
        assert_eq!(instances[0].member, "n1");
        assert_eq!(instances[1].member, "http://h:2");
        let catalog = json!({"consul": [], "echo": ["endpoint~http~http://h:1"], "redis": ["v1"]});
        assert_eq!(
            streams_of(catalog.to_string().as_bytes()).unwrap(),
            ["echo"]
        );
    }

    #[test]
    fn agent_addresses_parse_to_urls() {
        let agent = |a: &str| ConsulCluster::new(a, NO_SEEDS_HERE).map(|c| c.agent().to_owned());
        assert_eq!(agent("127.0.0.1:8500").unwrap(), "http://127.0.0.1:8500");
        assert_eq!(agent("http://consul:8500").unwrap(), "http://consul:8500");
        assert_eq!(agent("8500").unwrap(), "http://127.0.0.1:8500");
        assert!(agent("https://consul:8501").is_err());
        assert!(agent("consul:find").is_err());
    }

    const NO_SEEDS_HERE: [&str; 0] = [];

    #[test]
    fn indexes_follow_consuls_rules() {
        assert_eq!(next_index(0, Some(7)), 7);
        assert_eq!(next_index(7, Some(3)), 0);
        assert_eq!(next_index(7, Some(0)), 1);
        assert_eq!(next_index(7, None), 1);
    }

    #[test]
    fn the_view_holds_this_node_and_groups_others_by_member() {
        let instance = |id: &str, member: &str| Instance {
            id: id.into(),
            stream: "echo".into(),
            endpoint: format!("http://{member}"),
            member: member.into(),
        };
        let state = WatchState {
            streams: [(
                "echo".to_owned(),
                vec![
                    instance("s1", "me"),
                    instance("s2", "b"),
                    instance("s3", "b"),
                    instance("s4", "a"),
                ],
            )]
            .into_iter()
            .collect(),
            own: Member {
                id: "me".into(),
                endpoint: "http://me".into(),
                state: MemberState::Live,
                services: vec![ServiceEntry {
                    id: Arc::from("s0"),
                    stream: Arc::from("echo"),
                }],
                last_heard: None,
            },
        };
        let view = state.view();
        let summary: Vec<(String, usize)> = view
            .members
            .iter()
            .map(|m| (m.id.clone(), m.services.len()))
            .collect();
        assert_eq!(
            summary,
            [("a".into(), 1), ("b".into(), 2), ("me".into(), 1)]
        );
    }
}
