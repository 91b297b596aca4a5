//! The node's lease: granting it with every key written under it, and the keep-alive task that
//! renews it apart from the session's task and reports when etcd no longer has it.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{DeleteOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, TxnOp};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use super::session::{Session, StepError};

impl Session {
    /// etcd no longer has this node's lease: it expired while the node was cut off, or etcd
    /// lost its data. Either way the replica may have missed changes, so the prefix is read
    /// again too.
    pub(super) fn lease_lost(&mut self) {
        self.lease = None;
        self.keeper = None;
        self.watch = None;
        self.needs_reload = true;
    }

    /// Grants a new lease and writes the member key and every service under it, deleting any
    /// of this node's service keys that it no longer advertises.
    pub(super) async fn grant(&mut self) -> Result<(), StepError> {
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
}

/// Why a keep-alive task ended.
pub(super) enum KeepAliveEnd {
    /// etcd does not have the lease any more.
    Lost,
    /// The stream failed, or etcd stopped acknowledging; the lease may still be alive.
    Broken(String),
}

/// A task that renews one lease every third of its TTL, apart from the session's task so that
/// a slow write never delays a renewal. Aborted when dropped.
pub(super) struct KeepAlive {
    end: oneshot::Receiver<KeepAliveEnd>,
    task: JoinHandle<()>,
}

impl KeepAlive {
    pub(super) fn start(
        keeper: LeaseKeeper,
        stream: LeaseKeepAliveStream,
        ttl: Duration,
    ) -> KeepAlive {
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

pub(super) async fn next_keep_alive_end(keeper: &mut Option<KeepAlive>) -> KeepAliveEnd {
    match keeper {
        Some(k) => (&mut k.end)
            .await
            .unwrap_or_else(|_| KeepAliveEnd::Broken("the keep-alive task ended".into())),
        None => std::future::pending().await,
    }
}
