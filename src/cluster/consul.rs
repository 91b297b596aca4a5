//! Membership on a Consul agent (feature `consul`), registered the way the original's
//! `ConsulCluster` registers, so meshage nodes and original nodes share one Consul.
//!
//! - Joining: `PUT /v1/agent/join/<first seed>` when there are seeds (a serf LAN address).
//! - Each service: `PUT /v1/agent/service/register` with `ID` = service id, `Name` = stream,
//!   `Address`/`Port` = the node's HTTP address, `Tags` = \[`endpoint~http~http://host:port`\],
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
//! - An agent reached by `https://` is dialed over TLS, its certificate verified against the
//!   configured CA (the system's bundle when none is given) and its name against the host.
//! - Every `resync_interval` the node checks that the agent still has its services and
//!   registers again what it lost (an agent restarted without its state) or what failed to
//!   register while the agent was out of reach.
//!
//! On joining, services that an earlier run at this node's address left registered (it crashed)
//! are deregistered: their checks would pass again once the address answers.
//!
//! This node's own services are in its view from the moment it advertises them: the agent lists
//! them as passing only after their first check, and a node need not ask Consul about itself.
//!
//! This file holds the configuration, joining and the handle. The parts are `agent` (calls to the
//! agent's HTTP API), `catalog` (the records meshage registers and reads there; no I/O),
//! `watcher` (follows the catalog and each stream, and publishes the view) and `registrar`
//! (keeps the agent's registrations of this node equal to what it advertises).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::header::HeaderValue;
use http::Method;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use super::{
    Cluster, ClusterError, ClusterView, LocalNode, Member, MemberState, Membership, ServiceEntry,
};
use crate::address::parse_seed;
use crate::path::encode_segment;
use crate::security::dialer::Dialer;
use crate::security::{ClientTls, Secret};
use agent::Agent;
use registrar::{remove_leftovers, Books, Registrar};
use watcher::{Shared, WatchState, Watcher};

mod agent;
mod catalog;
mod registrar;
mod watcher;

/// Tuning of the Consul backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// ACL token sent as `X-Consul-Token` with every request (`Debug` shows `***`).
    pub token: Option<Secret>,
    /// The authorities an agent reached by `https://` is verified against; `None`: the
    /// system's CA bundle.
    pub tls: Option<ClientTls>,
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

setters!(ConsulConfig {
    token: Option<Secret>,
    tls: Option<ClientTls>,
    check_interval: Duration,
    deregister_critical_after: Duration,
    wait: Duration,
    request_timeout: Duration,
    max_backoff: Duration,
    resync_interval: Duration,
});

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            token: None,
            tls: None,
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
    /// `http://host:port`, `https://host:port` for TLS, or a bare port on 127.0.0.1), joining
    /// the agent to the first of `seeds` (serf LAN addresses, `host:port`) when there is one.
    /// Fails when the address does not parse.
    pub fn new<A, I, S>(agent_address: A, seeds: I) -> Result<Self, ClusterError>
    where
        A: ToString,
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let address = agent_address.to_string();
        let scheme = if address.trim().starts_with("https://") {
            "https"
        } else {
            "http"
        };
        Ok(ConsulCluster {
            agent: format!("{scheme}://{}", parse_seed(&address)?),
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

#[async_trait]
impl Cluster for ConsulCluster {
    async fn join(self: Box<Self>, local: LocalNode) -> Result<Arc<dyn Membership>, ClusterError> {
        let ConsulCluster {
            agent,
            seeds,
            config,
        } = *self;
        let fail = |e: String| ClusterError::Backend(format!("Consul agent {agent}: {e}"));
        let token = match &config.token {
            Some(t) => {
                let mut value = HeaderValue::from_str(t.expose())
                    .map_err(|_| fail("the token is not a valid header value".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let tls = match (agent.starts_with("https://"), &config.tls) {
            (true, Some(tls)) => Some(tls.clone()),
            (true, None) => Some(ClientTls::system().map_err(|e| fail(e.to_string()))?),
            (false, _) => None,
        };
        let dialer = Dialer {
            tls,
            connect_timeout: config.request_timeout,
        };
        let agent = Agent {
            base: agent,
            token,
            client: Client::builder(TokioExecutor::new()).build(dialer),
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
            fingerprint: local.fingerprint.clone(),
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
    use catalog::{instances_of, streams_of};
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
    fn agent_addresses_parse_to_urls() {
        let agent = |a: &str| ConsulCluster::new(a, NO_SEEDS_HERE).map(|c| c.agent().to_owned());
        assert_eq!(agent("127.0.0.1:8500").unwrap(), "http://127.0.0.1:8500");
        assert_eq!(agent("http://consul:8500").unwrap(), "http://consul:8500");
        assert_eq!(agent("8500").unwrap(), "http://127.0.0.1:8500");
        assert_eq!(agent("https://consul:8501").unwrap(), "https://consul:8501");
        assert!(agent("consul:find").is_err());
    }

    const NO_SEEDS_HERE: [&str; 0] = [];
}
