//! The node's followers: the membership view into tables and the event log, and tables into
//! ownership events.

use std::sync::Arc;

use tracing::debug;

use crate::cluster::{EventLog, Membership};
use crate::observe::Feed;
use crate::ownership::{MembershipChange, MeshEvent};
use crate::router::Router;
use crate::table::ServiceTable;

/// Rebuilds the service table on every membership change, and logs what changed. Ends when
/// the backend's view closes.
pub(super) async fn follow_membership(
    membership: Arc<dyn Membership>,
    router: Router,
    events: Arc<EventLog>,
    feed: Arc<Feed>,
) {
    let mut view = membership.view();
    loop {
        let current = view.borrow_and_update().clone();
        let changes = events.observe(&current);
        feed.publish(changes.into_iter().map(|e| {
            MeshEvent::Membership(MembershipChange {
                at: e.at,
                node: e.node,
                kind: e.kind.to_owned(),
                detail: e.detail,
            })
        }));
        router.apply_view(current);
        if view.changed().await.is_err() {
            debug!("membership view closed; table follower ends");
            return;
        }
    }
}

/// Publishes what each table the router swaps in changes of the local services' ownership.
/// Ends when the router is gone.
pub(super) async fn follow_tables(
    mut tables: tokio::sync::watch::Receiver<Arc<ServiceTable>>,
    feed: Arc<Feed>,
) {
    loop {
        let table = tables.borrow_and_update().clone();
        feed.publish_table(table);
        if tables.changed().await.is_err() {
            return;
        }
    }
}
