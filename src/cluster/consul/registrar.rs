//! Registering this node's services with the agent: what it wants and what the agent has, kept
//! equal on every advertise and every `resync_interval`, and the leftovers of an earlier run at
//! this address removed on joining.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::agent::Agent;
use super::catalog::{endpoint_of, registration, NODE_META};
use super::watcher::Shared;
use super::ConsulConfig;
use crate::cluster::{ClusterError, LocalNode, ServiceEntry};
use crate::path::encode_segment;

/// Deregisters what an earlier run at this node's address left with the agent (it crashed, so
/// it never deregistered): those services' checks would pass again now that the address
/// answers, and keys would go to services that no longer exist.
pub(super) async fn remove_leftovers(agent: &Agent, local: &LocalNode, config: &ConsulConfig) {
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
pub(super) struct Books {
    desired: BTreeMap<Arc<str>, Arc<str>>,
    registered: BTreeMap<Arc<str>, Arc<str>>,
}

/// Keeps the agent's registrations of this node equal to what the node advertises.
pub(super) struct Registrar {
    pub(super) agent: Agent,
    pub(super) local: LocalNode,
    pub(super) config: ConsulConfig,
    pub(super) shared: Arc<Shared>,
    /// The lock orders advertise calls, leaving and resyncs.
    pub(super) books: tokio::sync::Mutex<Books>,
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
    pub(super) async fn set(
        &self,
        desired: BTreeMap<Arc<str>, Arc<str>>,
    ) -> Result<(), ClusterError> {
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
    pub(super) async fn resync(self: Arc<Self>) {
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
