//! Ownership changes: which ranges of a stream's ring each of this node's services gained and
//! lost between two service tables, and the events a node publishes about them and about
//! membership ([`MeshEvent`]).
//!
//! A service owns the ranges of the hash space its ring gives it ([`HashRing::ranges`]); a key
//! belongs to the range that contains its [`HashRing::hash`]. When a table replaces another,
//! every local service whose ranges differ is told what it gained and what it lost, with the new
//! table's version: a handler that keeps state per key can then drop or hand over what it lost,
//! and knows which keys it may now be asked for.
//!
//! Pure core: depends on the table and the ring only.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::ring::{HashRange, HashRing};
use crate::table::ServiceTable;

/// What one of this node's services gained and lost of its stream's ring when the node's table
/// changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnershipChange {
    /// The version of the table that made the change (it increases with every table).
    pub version: u64,
    pub stream: String,
    pub service_id: String,
    /// Ranges it owns now and did not before, ascending.
    pub gained: Vec<HashRange>,
    /// Ranges it owned before and does not now, ascending.
    pub lost: Vec<HashRange>,
}

/// A change of membership, as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MembershipChange {
    /// Unix time in milliseconds.
    pub at: u64,
    /// The member's node id.
    pub node: String,
    /// `joined`, `leaving`, `dead`, `back`, `removed` or `services`.
    pub kind: String,
    /// What changed, in words: the endpoint and the streams served.
    pub detail: String,
}

/// An event of a node ([`crate::Node::events`], `GET /api/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum MeshEvent {
    Membership(MembershipChange),
    Ownership(OwnershipChange),
    /// This subscriber fell behind: `count` events were dropped for it, never for others.
    /// Ownership since then is best read again (a new subscription starts with a snapshot).
    Lost {
        count: u64,
    },
}

impl MeshEvent {
    /// Its name as an event of `GET /api/events`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            MeshEvent::Membership(_) => "membership",
            MeshEvent::Ownership(_) => "ownership",
            MeshEvent::Lost { .. } => "lost",
        }
    }
}

/// One stream's ring as owners over the hash space: each range with its owner's service id.
fn owned(table: &ServiceTable, stream: &str) -> Vec<(HashRange, Arc<str>)> {
    let Some(services) = table.stream(stream) else {
        return Vec::new();
    };
    let ring: &HashRing = &services.ring;
    ring.ranges()
        .into_iter()
        .map(|(range, index)| (range, ring.servers()[index].clone()))
        .collect()
}

/// Who owns `hash` in `ranges` (ascending, covering), from position `*at` on.
fn owner_at<'a>(
    ranges: &'a [(HashRange, Arc<str>)],
    at: &mut usize,
    hash: u32,
) -> Option<&'a Arc<str>> {
    while *at < ranges.len() && ranges[*at].0.end < hash {
        *at += 1;
    }
    ranges.get(*at).map(|(_, owner)| owner)
}

/// Appends `range` to `ranges`, merged with the last one if they touch.
fn add(ranges: &mut Vec<HashRange>, range: HashRange) {
    match ranges.last_mut() {
        Some(last) if u64::from(last.end) + 1 == u64::from(range.start) => last.end = range.end,
        _ => ranges.push(range),
    }
}

/// What each service of node `node_id` gained and lost from `before` to `after`, one change per
/// service whose ranges differ, by stream then service id. `before` may be an empty table: then
/// every service is told all it owns (a subscriber's starting snapshot).
pub(crate) fn changes(
    before: &ServiceTable,
    after: &ServiceTable,
    node_id: &str,
) -> Vec<OwnershipChange> {
    let local =
        |table: &ServiceTable, id: &str| table.service(id).is_some_and(|s| &*s.node_id == node_id);
    let mut streams: Vec<&str> = before.streams().chain(after.streams()).collect();
    streams.sort_unstable();
    streams.dedup();
    let mut out = Vec::new();
    for stream in streams {
        let (old, new) = (owned(before, stream), owned(after, stream));
        let mut bounds: Vec<u32> = old.iter().chain(&new).map(|(r, _)| r.start).collect();
        bounds.sort_unstable();
        bounds.dedup();
        // (gained, lost) by service id.
        let mut moved: BTreeMap<Arc<str>, (Vec<HashRange>, Vec<HashRange>)> = BTreeMap::new();
        let (mut at_old, mut at_new) = (0, 0);
        for (i, &start) in bounds.iter().enumerate() {
            let end = bounds.get(i + 1).map_or(u32::MAX, |next| next - 1);
            let was = owner_at(&old, &mut at_old, start);
            let is = owner_at(&new, &mut at_new, start);
            if was == is {
                continue;
            }
            let piece = HashRange { start, end };
            if let Some(was) = was.filter(|id| local(before, id)) {
                add(&mut moved.entry(was.clone()).or_default().1, piece);
            }
            if let Some(is) = is.filter(|id| local(after, id)) {
                add(&mut moved.entry(is.clone()).or_default().0, piece);
            }
        }
        out.extend(
            moved
                .into_iter()
                .map(|(id, (gained, lost))| OwnershipChange {
                    version: after.version,
                    stream: stream.to_owned(),
                    service_id: id.to_string(),
                    gained,
                    lost,
                }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterView, Member, MemberState, ServiceEntry};

    fn member(node: &str, services: &[(&str, &str)]) -> Member {
        Member {
            id: node.into(),
            endpoint: format!("http://{node}:80"),
            state: MemberState::Live,
            services: services
                .iter()
                .map(|(id, stream)| ServiceEntry {
                    id: Arc::from(*id),
                    stream: Arc::from(*stream),
                })
                .collect(),
            last_heard: None,
            fingerprint: None,
        }
    }

    fn table(version: u64, members: Vec<Member>) -> ServiceTable {
        ServiceTable::build(version, &ClusterView { members })
    }

    fn union(ranges: impl IntoIterator<Item = HashRange>) -> Vec<HashRange> {
        let mut all: Vec<HashRange> = ranges.into_iter().collect();
        all.sort();
        let mut merged = Vec::new();
        for range in all {
            add(&mut merged, range);
        }
        merged
    }

    #[test]
    fn a_joining_node_takes_exactly_its_ranges_from_the_local_services() {
        let a = member("a", &[("a1", "s"), ("a2", "s"), ("a3", "t")]);
        let before = table(1, vec![a.clone()]);
        let after = table(2, vec![a.clone(), member("b", &[("b1", "s"), ("b2", "s")])]);
        let changes = changes(&before, &after, "a");
        assert!(changes
            .iter()
            .all(|c| c.version == 2 && c.stream == "s" && c.gained.is_empty()));
        let lost = union(changes.iter().flat_map(|c| c.lost.clone()));
        let ring = HashRing::new(["a1", "a2", "b1", "b2"]);
        let b_owns = union((2..4).flat_map(|i| ring.ranges_of(i)));
        assert_eq!(lost, b_owns, "a lost what b's services own now");
        // Each service lost only ranges it owned.
        let old = HashRing::new(["a1", "a2"]);
        for change in &changes {
            let index = old
                .servers()
                .iter()
                .position(|s| **s == *change.service_id)
                .unwrap();
            let had = old.ranges_of(index);
            for range in &change.lost {
                assert!(had
                    .iter()
                    .any(|h| h.start <= range.start && range.end <= h.end));
            }
        }
        // And b, seen from b: every service gained what it owns, from an empty table.
        let gained = super::changes(&ServiceTable::default(), &after, "b");
        assert_eq!(gained.len(), 2);
        assert_eq!(union(gained.iter().flat_map(|c| c.gained.clone())), b_owns);
        assert!(gained.iter().all(|c| c.lost.is_empty()));
    }

    #[test]
    fn nothing_moves_nothing_is_told() {
        let a = member("a", &[("a1", "s")]);
        let b = member("b", &[("b1", "s"), ("b2", "t")]);
        let before = table(1, vec![a.clone(), b.clone()]);
        assert!(changes(&before, &table(2, vec![a.clone(), b.clone()]), "a").is_empty());
        // Another stream's change is not this stream's.
        let b_more = member("b", &[("b1", "s"), ("b2", "t"), ("b3", "t")]);
        assert!(changes(&before, &table(3, vec![a.clone(), b_more]), "a").is_empty());
        // a's service leaving the stream: it loses all it owned.
        let after = table(4, vec![b.clone()]);
        let changes = changes(&before, &after, "a");
        assert_eq!(changes.len(), 1);
        let expected = HashRing::new(["a1", "b1"]).ranges_of(0);
        assert_eq!(changes[0].lost, expected);
    }

    #[test]
    fn events_serialize_with_their_type() {
        let event = MeshEvent::Lost { count: 3 };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"type": "lost", "count": 3})
        );
        assert_eq!(event.name(), "lost");
    }
}
