//! The task that owns one node's etcd session: its state, the loop that repairs whatever part
//! broke while it serves the handle's commands, advertising and leaving, and the bounded,
//! retried calls that every part of the session makes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, DeleteOptions, PutOptions, Txn, TxnOp, WatchStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::keys::Entry;
use super::lease::{next_keep_alive_end, KeepAlive, KeepAliveEnd};
use super::replica::next_watch;
use super::{Command, EtcdConfig};
use crate::cluster::{ClusterError, ClusterView, LocalNode, ServiceEntry};

/// Why a step of the session failed; the loop logs it and repairs.
pub(super) type StepError = String;

/// The state of one node's etcd session, owned by its task.
pub(super) struct Session {
    pub(super) client: Client,
    /// `<prefix>/<cluster_id>/`.
    pub(super) root: String,
    pub(super) member_key: String,
    pub(super) local: LocalNode,
    pub(super) config: EtcdConfig,
    /// What the node advertises: id to stream.
    pub(super) desired: BTreeMap<Arc<str>, Arc<str>>,
    /// Service keys written under the current lease.
    pub(super) written: BTreeSet<String>,
    pub(super) lease: Option<i64>,
    pub(super) keeper: Option<KeepAlive>,
    pub(super) watch: Option<WatchStream>,
    /// The replica may have missed changes: read the prefix again before watching.
    pub(super) needs_reload: bool,
    /// The replica of the prefix, as of `revision`.
    pub(super) kv: BTreeMap<String, Entry>,
    pub(super) revision: i64,
    /// The etcd cluster the replica came from; another one means its history is not ours.
    pub(super) etcd_cluster: Option<u64>,
    pub(super) view_tx: watch::Sender<Arc<ClusterView>>,
    /// The lease was revoked on purpose: do not grant another.
    pub(super) left: bool,
}

impl Session {
    pub(super) async fn timed<T, E: std::fmt::Display>(
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
    /// When time runs out, the error says why the last attempt failed (etcd's certificate not
    /// trusted, say), if it did.
    pub(super) async fn retried<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, StepError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.config.request_timeout;
        let attempt = (self.config.request_timeout / 3).max(Duration::from_millis(200));
        let pause = Duration::from_millis(20);
        let mut last: Option<etcd_client::Error> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let budget = if left > attempt * 2 { attempt } else { left };
            match tokio::time::timeout(budget, call(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if not_sent(&e) && Instant::now() + pause < deadline => {
                    debug!(what, error = %e, "an etcd endpoint is out of reach; trying again");
                    last = Some(e);
                    tokio::time::sleep(pause).await;
                }
                Ok(Err(e)) => return Err(format!("{what}: {e}")),
                Err(_) if Instant::now() < deadline => {
                    debug!(what, after = ?budget, "no answer from etcd yet; asking again");
                }
                Err(_) => {
                    let why = last.map_or(String::new(), |e| format!(" (last error: {e})"));
                    return Err(format!(
                        "{what}: no answer within {:?}{why}",
                        self.config.request_timeout
                    ));
                }
            }
        }
    }

    /// Brings every broken part of the session back: the lease and its keys, the keep-alive,
    /// the replica and the watch. Stops at the first failure.
    pub(super) async fn repair(&mut self) -> Result<(), StepError> {
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

    /// Runs `ops` in transactions of at most 64 operations (etcd allows 128 by default).
    pub(super) async fn commit(&self, ops: Vec<TxnOp>) -> Result<(), StepError> {
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

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
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
