//! Which services are on this node's rings: the table rebuilt from the backend's latest view,
//! this node's own entry from first-hand knowledge, minus the services it suspects after a
//! failure it saw itself.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use tracing::{debug, warn};

use super::{Inner, RouteError, Router};
use crate::cluster::{ClusterView, Member, MemberState};
use crate::table::ServiceTable;
use crate::FastMap;

/// A service this node stopped choosing after a failure it saw itself.
#[derive(Debug, Clone)]
pub(super) struct Suspect {
    stream: Arc<str>,
    endpoint: Arc<str>,
    /// When it comes back to the rings unless gossip confirms it gone first.
    until: Instant,
    reason: Arc<str>,
    /// It said it is leaving or no longer has the service: left out of broadcasts quietly.
    leaving: bool,
}

/// The members of `view` without the services suspected at `now`, except where that would
/// leave a stream with no service at all (it keeps its suspects then, and still answers).
fn without_suspects(
    mut members: Vec<Member>,
    suspects: &FastMap<Arc<str>, Suspect>,
    now: Instant,
) -> Vec<Member> {
    if suspects.is_empty() {
        return members;
    }
    let suspected = |id: &str| suspects.get(id).is_some_and(|s| s.until > now);
    let served: HashSet<Arc<str>> = members
        .iter()
        .filter(|m| m.state == MemberState::Live)
        .flat_map(|m| m.services.iter())
        .filter(|s| !suspected(&s.id))
        .map(|s| s.stream.clone())
        .collect();
    for member in &mut members {
        member
            .services
            .retain(|s| !suspected(&s.id) || !served.contains(&s.stream));
    }
    members
}

impl Router {
    /// Takes a new view from the membership backend and rebuilds the table from it. Suspects
    /// that the view confirms (no longer live) are forgotten, and links to nodes that are gone
    /// take no new requests and close once the requests on them end (see `Links::close`).
    pub(crate) fn apply_view(&self, view: Arc<ClusterView>) {
        let reachable = |view: &ClusterView| -> HashSet<String> {
            view.members
                .iter()
                .filter(|m| m.state != MemberState::Dead)
                .map(|m| m.endpoint.clone())
                .collect()
        };
        let now_reachable = reachable(&view);
        for gone in reachable(&self.inner.view.load()).difference(&now_reachable) {
            debug!(endpoint = %gone, "node gone; closing its link");
            self.inner.forwarder.forget(gone);
        }
        let live: HashSet<&str> = view
            .members
            .iter()
            .filter(|m| m.state == MemberState::Live)
            .flat_map(|m| m.services.iter().map(|s| &*s.id))
            .collect();
        if self
            .inner
            .suspects
            .load()
            .keys()
            .any(|id| !live.contains(&**id))
        {
            self.inner.suspects.rcu(|current| {
                let mut next = HashMap::clone(current);
                next.retain(|id, _| live.contains(&**id));
                next
            });
        }
        self.inner.view.store(view);
        self.rebuild();
    }

    /// Takes the services of node `node_id` off the rings for a while: its connection failed
    /// (`leaving` false) or it said that it is leaving.
    pub(super) fn suspect_node(&self, node_id: &str, reason: &str, leaving: bool) {
        let view = self.inner.view.load();
        let Some(member) = view.members.iter().find(|m| m.id == node_id) else {
            return;
        };
        let services: Vec<(Arc<str>, Arc<str>)> = member
            .services
            .iter()
            .map(|s| (s.id.clone(), s.stream.clone()))
            .collect();
        self.suspect(&services, &member.endpoint, reason, leaving);
    }

    /// Takes `services` (id, stream) of the node at `endpoint` off the rings for a while.
    pub(super) fn suspect(
        &self,
        services: &[(Arc<str>, Arc<str>)],
        endpoint: &str,
        reason: &str,
        leaving: bool,
    ) {
        if services.is_empty() || *endpoint == *self.inner.endpoint {
            return;
        }
        let now = Instant::now();
        let until = now + self.inner.config.suspect_timeout;
        let (endpoint, reason): (Arc<str>, Arc<str>) = (Arc::from(endpoint), Arc::from(reason));
        // Requests in flight to a broken peer all fail at once: the first makes it suspect, the
        // others find it so, and cost no rebuild, warning or timer of their own.
        let mut added = false;
        self.inner.suspects.rcu(|current| {
            added = false;
            let mut next = HashMap::clone(current);
            for (id, stream) in services {
                let already = current
                    .get(id)
                    .is_some_and(|s| s.until > now && s.leaving == leaving);
                if already {
                    continue;
                }
                added = true;
                next.insert(
                    id.clone(),
                    Suspect {
                        stream: stream.clone(),
                        endpoint: endpoint.clone(),
                        until,
                        reason: reason.clone(),
                        leaving,
                    },
                );
            }
            next
        });
        if !added {
            return;
        }
        warn!(%endpoint, services = services.len(), %reason, leaving,
            "owner suspect: off the rings until gossip settles it or the suspicion expires");
        self.rebuild();
        // Back to the rings when the suspicion expires, unless gossip settled it first.
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        let ttl = self.inner.config.suspect_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            if let Some(inner) = inner.upgrade() {
                Router { inner }.expire_suspects();
            }
        });
    }

    /// Forgets the suspicions that have expired, and rebuilds the table when there were any.
    fn expire_suspects(&self) {
        let now = Instant::now();
        if !self.inner.suspects.load().values().any(|s| s.until <= now) {
            return;
        }
        self.inner.suspects.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.retain(|_, s| s.until > now);
            next
        });
        debug!("suspicions expired; their services are back on the rings");
        self.rebuild();
    }

    /// Whether the membership view the table was last built from lists this node: the
    /// backend has published this node's own registration.
    pub(crate) fn lists_itself(&self) -> bool {
        let view = self.inner.view.load();
        view.members.iter().any(|m| *m.id == *self.inner.node_id)
    }

    /// Whether this node is leaving.
    pub fn is_leaving(&self) -> bool {
        self.inner.leaving.load(Ordering::Acquire)
    }

    /// Marks this node as leaving: from now on its own services are off its rings too.
    pub(crate) fn set_leaving(&self) {
        self.inner.leaving.store(true, Ordering::Release);
        self.rebuild();
    }

    /// Builds and swaps in the table of the latest view, with this node's own entry taken from
    /// what it knows first-hand (its active local services, and whether it is leaving) rather
    /// than from the backend, which learns them a gossip round or a round trip later.
    pub(crate) fn rebuild(&self) {
        let view = self.inner.view.load();
        let mut members: Vec<Member> = view
            .members
            .iter()
            .filter(|m| *m.id != *self.inner.node_id)
            .cloned()
            .collect();
        // How the cluster placed keys before this node joined, for the hints of a young node.
        let others = self.is_young(Instant::now()).then(|| {
            without_suspects(members.clone(), &self.inner.suspects.load(), Instant::now())
        });
        members.push(Member {
            id: self.inner.node_id.to_string(),
            endpoint: self.inner.endpoint.to_string(),
            state: if self.is_leaving() {
                MemberState::Leaving
            } else {
                MemberState::Live
            },
            services: self.local_services(),
            last_heard: None,
            fingerprint: None,
        });
        let members = without_suspects(members, &self.inner.suspects.load(), Instant::now());
        let version = self.inner.version.fetch_add(1, Ordering::AcqRel) + 1;
        let table = ServiceTable::build(version, &ClusterView { members });
        debug!(
            version,
            services = table.services.len(),
            "service table swapped"
        );
        let table = Arc::new(table);
        let replaced = self.inner.table.swap(table.clone());
        self.remember(replaced, &table, || {
            let members = others.unwrap_or_default();
            ServiceTable::build(version, &ClusterView { members })
        });
        self.inner.published.send_replace(table);
    }

    /// The services of `stream` off the rings after a failed connection (not those that said
    /// they are leaving), but for `except`; sorted.
    pub(super) fn suspects_of(&self, stream: &str, except: &[Arc<str>]) -> Vec<Arc<str>> {
        let now = Instant::now();
        let mut suspects: Vec<Arc<str>> = self
            .inner
            .suspects
            .load()
            .iter()
            .filter(|(id, s)| {
                &*s.stream == stream && !s.leaving && s.until > now && !except.contains(id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        suspects.sort();
        suspects
    }

    /// Why service `id`, named by the caller, is not in the table: suspect, or unknown.
    pub(super) fn not_in_table(&self, id: &str) -> RouteError {
        match self.inner.suspects.load().get(id) {
            Some(suspect) if suspect.leaving => RouteError::NotHere(id.to_owned()),
            Some(suspect) => RouteError::Unreachable {
                service_id: id.to_owned(),
                endpoint: suspect.endpoint.to_string(),
                reason: format!("suspect after: {}", suspect.reason),
            },
            None => RouteError::UnknownService(id.to_owned()),
        }
    }
}
