//! The services registered on this node: active ones (on the request path, as an immutable
//! snapshot) and withdrawn ones (an unhealthy upstream, kept under their ids), and advertising
//! the active ones to the cluster.

use std::collections::HashMap;
use std::sync::Arc;

use super::Router;
use crate::cluster::{ClusterError, ServiceEntry};
use crate::message::SharedHandler;
use crate::FastMap;

/// A service registered on this node.
#[derive(Clone)]
pub(crate) struct LocalService {
    pub stream: Arc<str>,
    pub handler: SharedHandler,
}

impl Router {
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

    /// Registers a handler on `stream` as a new service and advertises it to the cluster;
    /// returns the id: a fresh UUID v4, or on a named node the id derived from the name, the
    /// stream and how many services were registered on the stream here before (see
    /// [`crate::NodeConfig::node_name`]). Fails when the cluster backend cannot advertise it.
    pub async fn register(
        &self,
        stream: impl Into<String>,
        handler: SharedHandler,
    ) -> Result<String, ClusterError> {
        let stream: Arc<str> = Arc::from(stream.into());
        let id = self.new_service_id(&stream);
        self.add_local(vec![(
            Arc::from(id.as_str()),
            LocalService { stream, handler },
        )]);
        self.advertise_local().await?;
        Ok(id)
    }

    /// The id of the next service registered on `stream`: random, or on a named node the
    /// `index`th id of the stream, where `index` counts the stream's registrations so far.
    pub(crate) fn new_service_id(&self, stream: &Arc<str>) -> String {
        let Some(name) = &self.inner.name else {
            return uuid::Uuid::new_v4().to_string();
        };
        let mut counts = self
            .inner
            .registrations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(stream.clone()).or_default();
        let index = *count;
        *count += 1;
        super::naming::service_id(name, stream, index)
    }

    /// Removes a local service and withdraws it from the cluster. Returns whether it existed.
    pub async fn unregister(&self, service_id: &str) -> Result<bool, ClusterError> {
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
    pub async fn withdraw(&self, service_id: &str) -> Result<bool, ClusterError> {
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
    pub async fn restore(&self, service_id: &str) -> Result<bool, ClusterError> {
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
    pub(crate) async fn advertise_local(&self) -> Result<(), ClusterError> {
        self.rebuild();
        let _turn = self.inner.advertising.lock().await;
        self.inner
            .membership
            .advertise(&self.local_services())
            .await
    }
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
