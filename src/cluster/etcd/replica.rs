//! The replica of the prefix: read whole, then followed by a watch from the revision after the
//! one it was read at; every change publishes the view it makes.

use std::sync::Arc;

use etcd_client::{EventType, GetOptions, WatchOptions, WatchStream};
use tracing::{debug, warn};

use super::keys::{view_of, Entry};
use super::session::{Session, StepError};

impl Session {
    fn publish(&self) {
        let view = view_of(&self.kv);
        self.view_tx.send_if_modified(|current| {
            if **current == view {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
    }

    /// Replaces the replica with a fresh read of the prefix.
    pub(super) async fn reload(&mut self) -> Result<(), StepError> {
        let root = self.root.clone();
        let response = self
            .retried("read", |mut c| {
                let root = root.clone();
                async move { c.get(root, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let header = response
            .header()
            .ok_or_else(|| "read: no header in the answer".to_owned())?;
        self.revision = header.revision();
        self.etcd_cluster = Some(header.cluster_id());
        self.kv = response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().ok()?.to_owned();
                let entry = serde_json::from_slice(kv.value()).ok()?;
                Some((key, entry))
            })
            .collect();
        self.needs_reload = false;
        debug!(
            revision = self.revision,
            keys = self.kv.len(),
            "prefix reloaded"
        );
        self.publish();
        Ok(())
    }

    /// Watches the prefix from the revision after the replica's.
    pub(super) async fn start_watch(&mut self) -> Result<(), StepError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(self.revision + 1);
        let mut stream = self
            .retried("watch", |mut c| {
                let (root, options) = (self.root.clone(), options.clone());
                async move { c.watch(root, Some(options)).await }
            })
            .await?;
        // The first answer says whether the watch exists and where etcd's history stands.
        let created = self
            .timed("watch", stream.message())
            .await?
            .ok_or_else(|| "watch: the stream closed at once".to_owned())?;
        if created.canceled() || created.compact_revision() > 0 {
            self.needs_reload = true;
            return Err(format!(
                "watch from revision {} refused (compacted to {}): {}",
                self.revision + 1,
                created.compact_revision(),
                created.cancel_reason()
            ));
        }
        if let Some(header) = created.header() {
            if header.revision() < self.revision
                || self.etcd_cluster.is_some_and(|c| c != header.cluster_id())
            {
                self.needs_reload = true;
                return Err(format!(
                    "etcd's history is not the replica's (revision {} < {}, or another cluster)",
                    header.revision(),
                    self.revision
                ));
            }
        }
        self.apply(&created);
        self.watch = Some(stream);
        Ok(())
    }

    /// Applies a watch answer to the replica. Notices when this node's own lease is gone.
    pub(super) fn apply(&mut self, response: &etcd_client::WatchResponse) {
        if response.events().is_empty() {
            return;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Put => match serde_json::from_slice::<Entry>(kv.value()) {
                    Ok(entry) => {
                        self.kv.insert(key.to_owned(), entry);
                    }
                    Err(e) => debug!(key, error = %e, "ignoring a key that is not meshage's"),
                },
                EventType::Delete => {
                    self.kv.remove(key);
                    let lost = key == self.member_key
                        && event
                            .prev_kv()
                            .is_some_and(|prev| Some(prev.lease()) == self.lease);
                    if lost && !self.left {
                        warn!(lease = ?self.lease, "this node's lease is gone; granting a new one");
                        self.lease = None;
                        self.keeper = None;
                    }
                }
            }
            // Only events move the revision: a header's revision may be ahead of events still
            // to come while the watch catches up.
            self.revision = self.revision.max(kv.mod_revision());
        }
        self.publish();
    }
}

pub(super) async fn next_watch(
    watch: &mut Option<WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match watch {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}
