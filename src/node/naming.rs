//! A named node's check, before it advertises, that no other live node has its name.

use std::time::Duration;

use tracing::info;

use super::StartError;
use crate::cluster::Membership;

/// How long, at most, a named node waits to hear from the cluster before it checks its name.
const NAME_LEARN: Duration = Duration::from_secs(2);

/// Checks that no other live node advertises `ids` (the ids of this node's name). Waits to hear
/// from some other member first (up to [`NAME_LEARN`] and `wait`), then, while another live node
/// at another address advertises one of them, for that node to leave or be declared dead, up to
/// `wait` in all. A node at this node's own endpoint is an earlier run of it, not a rival.
pub(super) async fn claim_name(
    membership: &dyn Membership,
    name: &str,
    node_id: &str,
    endpoint: &str,
    ids: &[String],
    wait: Duration,
) -> Result<(), StartError> {
    let started = tokio::time::Instant::now();
    let (learn, deadline) = (started + wait.min(NAME_LEARN), started + wait);
    let mut view = membership.view();
    loop {
        let heard = view
            .borrow_and_update()
            .members
            .iter()
            .any(|m| m.id != node_id);
        let changed = tokio::time::timeout_at(learn, view.changed()).await;
        if heard || !matches!(changed, Ok(Ok(()))) {
            break;
        }
    }
    let mut waited = false;
    loop {
        let holder = crate::router::name_holder(&view.borrow_and_update(), node_id, endpoint, ids);
        let Some(holder) = holder else {
            return Ok(());
        };
        if !waited {
            waited = true;
            info!(name, node = %holder.node, endpoint = %holder.endpoint,
                "another live node advertises this name's service ids; waiting for it to go");
        }
        let changed = tokio::time::timeout_at(deadline, view.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            return Err(StartError::NameTaken {
                name: name.to_owned(),
                node: holder.node,
                endpoint: holder.endpoint,
            });
        }
    }
}
