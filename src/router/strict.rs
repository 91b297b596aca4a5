//! One owner while the ring changes (`--strict-ownership`): an owner that checks every forward
//! sent to it as a key's owner against its own table, and a sender that, refused, routes the
//! request again once the tables agree.

use std::time::{Duration, Instant};

use super::{RouteError, Router};
use crate::wire::Deadline;

impl Router {
    /// Whether the local service `id` owns `key` of `stream` in this node's table, for a forward
    /// whose sender's ring had checksum `ring`: the same ring, or one that gives it the key.
    /// Refused otherwise, before anything runs.
    pub(super) fn check_owner(
        &self,
        stream: &str,
        key: &str,
        id: &str,
        ring: u64,
    ) -> Result<(), RouteError> {
        let table = self.inner.table.load();
        let owns = match table.stream(stream) {
            Some(services) if services.checksum == ring => true,
            Some(services) => services
                .ring
                .get_index(key)
                .is_some_and(|i| *table.services[services.services[i]].id == *id),
            None => false,
        };
        match owns {
            true => Ok(()),
            false => Err(RouteError::NotOwner(id.to_owned())),
        }
    }

    /// After an owner said its table gives the key to another service: waits until this
    /// node's table is newer than `version`, or for a pause (the owner's table may be the one
    /// behind) that starts at 10 ms and doubles with what the request has `waited`, up to
    /// 200 ms; never past the deadline.
    pub(super) async fn table_after(
        &self,
        version: u64,
        waited: &mut Duration,
        deadline: Deadline,
    ) {
        let pause = (*waited)
            .clamp(Duration::from_millis(10), Duration::from_millis(200))
            .min(deadline.remaining());
        let mut tables = self.inner.published.subscribe();
        let started = Instant::now();
        let newer = tables.wait_for(|table| table.version > version);
        let _ = tokio::time::timeout(pause, newer).await;
        *waited += started.elapsed();
    }
}
