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
//!
//! A secured etcd is reached over TLS (a CA, and a client certificate for
//! `--client-cert-auth`) and with a user and password (`access`).
//!
//! This file holds the configuration, joining and the handle that sends commands to the
//! session's task. The session itself is in `session` (its state, the loop that repairs it,
//! advertising and leaving), `lease` (granting the lease and keeping it alive), `replica`
//! (reading and watching the prefix) and `keys` (the key layout and the view a replica makes).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::info;

use super::{Cluster, ClusterError, ClusterView, LocalNode, Membership, ServiceEntry};
use crate::address::parse_seed;
use crate::wire::error_chain;
pub use access::{EtcdCredentials, EtcdTls};
use session::Session;

mod access;
mod keys;
mod lease;
mod replica;
mod session;

/// Tuning of the etcd backend.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// TLS to etcd; with it every endpoint is dialed as `https://`.
    pub tls: Option<EtcdTls>,
    /// The user to authenticate as, when etcd runs with `auth enable`.
    pub credentials: Option<EtcdCredentials>,
}

setters!(EtcdConfig {
    prefix: String,
    cluster_id: String,
    lease_ttl: Duration,
    request_timeout: Duration,
    max_backoff: Duration,
    tls: Option<EtcdTls>,
    credentials: Option<EtcdCredentials>,
});

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            prefix: "/meshage".into(),
            cluster_id: "meshage".into(),
            lease_ttl: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
            max_backoff: Duration::from_secs(1),
            tls: None,
            credentials: None,
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
    /// An etcd cluster reached through `endpoints` (`host:port`, `http://host:port`,
    /// `https://host:port`, or a bare port on 127.0.0.1). Endpoints are dialed over TLS when
    /// they say `https://` (verified against the system's CA bundle unless the config gives
    /// [`EtcdTls`]), or all of them when the config gives [`EtcdTls`]. Fails when there is no
    /// endpoint or one does not parse.
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
                let scheme = if s.trim().starts_with("https://") {
                    "https"
                } else {
                    "http"
                };
                Ok::<_, ClusterError>(format!("{scheme}://{}", parse_seed(&s)?))
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

    /// Replaces the tuning. With [`EtcdConfig::tls`] every endpoint becomes `https://`.
    pub fn with_config(mut self, config: EtcdConfig) -> Self {
        if config.tls.is_some() {
            for endpoint in &mut self.endpoints {
                if let Some(rest) = endpoint.strip_prefix("http://") {
                    *endpoint = format!("https://{rest}");
                }
            }
        }
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
        let fail = |e: String| ClusterError::Backend(format!("etcd at {endpoints:?}: {e}"));
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != endpoints.len() {
            return Err(fail("the endpoints mix http:// and https://".into()));
        }
        // https:// endpoints without TLS settings: verified against the system's CA bundle.
        let system = (https != 0 && config.tls.is_none()).then(|| EtcdTls::new(None, None));
        let tls = match system {
            Some(tls) => Some(tls.map_err(|e| fail(e.to_string()))?),
            None => config.tls.clone(),
        };
        // HTTP/2 pings find a dead connection that TCP does not report; etcd refuses pings more
        // often than every 5 s.
        let options = ConnectOptions::new()
            .with_connect_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), config.request_timeout)
            .with_keep_alive_while_idle(true);
        let options = access::secure(options, tls.as_ref(), config.credentials.as_ref())
            .map_err(|e| fail(e.to_string()))?;
        // Errors name the endpoints and etcd's reason, never the password (etcd-client sends
        // it only in its `Authenticate` call, and no error carries a request).
        let client = tokio::time::timeout(
            config.request_timeout,
            Client::connect(&endpoints, Some(options)),
        )
        .await
        .map_err(|_| fail("connect timed out".into()))?
        .map_err(|e| fail(error_chain(&e)))?;

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

enum Command {
    Advertise(Vec<ServiceEntry>, oneshot::Sender<Result<(), ClusterError>>),
    Leave(oneshot::Sender<Result<(), ClusterError>>),
    Stop(oneshot::Sender<()>),
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
    use keys::view_of;
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
        assert!(EtcdCluster::new(Vec::<String>::new()).is_err());
        assert!(EtcdCluster::new(["x:find"]).is_err());
    }

    #[test]
    fn tls_makes_every_endpoint_https_and_debug_hides_the_password() {
        let cluster = EtcdCluster::new(["https://etcd-1:2379"]).unwrap();
        assert_eq!(cluster.endpoints(), ["https://etcd-1:2379"]);
        let config = EtcdConfig {
            tls: Some(EtcdTls::new(None, None).unwrap()),
            credentials: Some(EtcdCredentials {
                user: "meshage".into(),
                password: "hunter2".into(),
            }),
            ..EtcdConfig::default()
        };
        let cluster = EtcdCluster::new(["127.0.0.1:2379", "http://etcd-2:2379"])
            .unwrap()
            .with_config(config);
        assert_eq!(
            cluster.endpoints(),
            ["https://127.0.0.1:2379", "https://etcd-2:2379"]
        );
        let debug = format!("{cluster:?}");
        assert!(debug.contains("user: \"meshage\""), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
