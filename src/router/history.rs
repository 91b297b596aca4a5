//! Who owned a key before: this node's earlier tables, kept for the handoff window, so that a
//! service that became a key's owner is told which service owned it before
//! ([`crate::Header::previous_owner`]) and its handler can take the key's state from there.
//!
//! An immutable snapshot, swapped in with each table and emptied once the window has passed: a
//! request reads it without a lock, and while no table changed within the window it costs one
//! load and one check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::table::ServiceTable;

/// The most earlier tables kept: membership that flaps cannot grow the history past it.
const MAX_EARLIER: usize = 32;

/// This node's earlier tables that still count for hints.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// The tables current before the current one, the latest first, each with the instant it
    /// stopped being current; none older than the window.
    earlier: Vec<(Instant, Arc<ServiceTable>)>,
    /// While this node is younger than the window: its latest table without its own services,
    /// that is, how the cluster placed keys before it joined.
    before_joining: Option<Arc<ServiceTable>>,
}

impl History {
    /// Whether no table can give a hint.
    pub(crate) fn is_empty(&self) -> bool {
        self.earlier.is_empty() && self.before_joining.is_none()
    }

    /// The table before this node joined, once taken.
    pub(crate) fn before_joining(&self) -> Option<Arc<ServiceTable>> {
        self.before_joining.clone()
    }

    /// The history once `replaced` stopped being current at `now`, with `before_joining` as
    /// the table before this node joined (`None` once the node is older than the window).
    pub(crate) fn after(
        &self,
        replaced: Arc<ServiceTable>,
        now: Instant,
        window: Duration,
        before_joining: Option<Arc<ServiceTable>>,
    ) -> History {
        let mut earlier = Vec::with_capacity((self.earlier.len() + 1).min(MAX_EARLIER));
        earlier.push((now, replaced));
        earlier.extend(
            self.recent(now, window)
                .take(MAX_EARLIER - 1)
                .map(|(at, table)| (*at, table.clone())),
        );
        History {
            earlier,
            before_joining,
        }
    }

    /// The history at `now` without the tables that left it more than `window` ago, and
    /// without the table before joining when `young` is false.
    pub(crate) fn pruned(&self, now: Instant, window: Duration, young: bool) -> History {
        History {
            earlier: self
                .recent(now, window)
                .map(|(at, table)| (*at, table.clone()))
                .collect(),
            before_joining: self.before_joining.clone().filter(|_| young),
        }
    }

    fn recent(
        &self,
        now: Instant,
        window: Duration,
    ) -> impl Iterator<Item = &(Instant, Arc<ServiceTable>)> {
        self.earlier
            .iter()
            .take_while(move |(at, _)| now.saturating_duration_since(*at) < window)
    }

    /// The service that owned the key of `stream` with this [`crate::HashRing::hash`] before service
    /// `me`, as this node knows it:
    /// the owner its current table names if that is another service (its table and the
    /// sender's disagree), else the latest owner other than `me` in the tables of the last
    /// `window`, else, for a node that joined within it, the owner before it joined. Only a
    /// service that the current table can still reach counts: a live one, or one on a node
    /// that is leaving and drains.
    pub(crate) fn previous_owner(
        &self,
        current: &ServiceTable,
        stream: &str,
        hash: u32,
        me: &str,
        now: Instant,
        window: Duration,
    ) -> Option<Arc<str>> {
        let other = |table: &ServiceTable| {
            table
                .owner_of_hash(stream, hash)
                .map(|s| s.id.clone())
                .filter(|id| **id != *me)
        };
        let candidate = other(current)
            .or_else(|| self.recent(now, window).find_map(|(_, table)| other(table)))
            .or_else(|| self.before_joining.as_deref().and_then(other))?;
        let reachable =
            current.service(&candidate).is_some() || current.draining(&candidate).is_some();
        reachable.then_some(candidate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterView, Member, MemberState, ServiceEntry};
    use crate::ring::HashRing;

    fn h(key: &str) -> u32 {
        HashRing::hash(key)
    }

    fn table(members: &[(&str, MemberState, &[&str])]) -> Arc<ServiceTable> {
        let members = members
            .iter()
            .map(|(node, state, services)| Member {
                id: (*node).into(),
                endpoint: format!("http://{node}:80"),
                state: *state,
                services: services
                    .iter()
                    .map(|id| ServiceEntry {
                        id: Arc::from(*id),
                        stream: Arc::from("counter"),
                    })
                    .collect(),
                last_heard: None,
                fingerprint: None,
            })
            .collect();
        Arc::new(ServiceTable::build(1, &ClusterView { members }))
    }

    /// A key that `owner` owns among the services `ids` and `owner_before` among `without`.
    fn key_owned(ids: &[&str], owner: &str, without: &[&str], owner_before: &str) -> String {
        let with = HashRing::new(ids.iter().copied());
        let before = HashRing::new(without.iter().copied());
        (0..10_000)
            .map(|i| format!("key-{i}"))
            .find(|k| with.get(k) == Some(owner) && before.get(k) == Some(owner_before))
            .expect("some key moved")
    }

    const LIVE: MemberState = MemberState::Live;
    const WINDOW: Duration = Duration::from_secs(30);

    #[test]
    fn a_key_taken_on_a_join_names_the_service_that_had_it() {
        let before = table(&[("a", LIVE, &["sa"]), ("b", LIVE, &["sb"])]);
        let after = table(&[
            ("a", LIVE, &["sa"]),
            ("b", LIVE, &["sb"]),
            ("c", LIVE, &["sc"]),
        ]);
        let key = key_owned(&["sa", "sb", "sc"], "sc", &["sa", "sb"], "sb");
        let t0 = Instant::now();
        let history = History::default().after(before, t0, WINDOW, None);
        let hint = history.previous_owner(&after, "counter", h(&key), "sc", t0, WINDOW);
        assert_eq!(hint.as_deref(), Some("sb"));
        // A key that did not move has no hint: its owner is the same in every table.
        let stayed = key_owned(&["sa", "sb", "sc"], "sa", &["sa", "sb"], "sa");
        assert_eq!(
            history.previous_owner(&after, "counter", h(&stayed), "sa", t0, WINDOW),
            None
        );
        // Once the window has passed, nothing.
        let late = t0 + WINDOW;
        assert_eq!(
            history.previous_owner(&after, "counter", h(&key), "sc", late, WINDOW),
            None
        );
        assert!(history.pruned(late, WINDOW, false).is_empty());
    }

    #[test]
    fn a_joining_node_names_the_owner_before_it_joined() {
        let without_me = table(&[("a", LIVE, &["sa"]), ("b", LIVE, &["sb"])]);
        let now = table(&[
            ("a", LIVE, &["sa"]),
            ("b", LIVE, &["sb"]),
            ("c", LIVE, &["sc"]),
        ]);
        // Its own first tables knew only itself: they name no one else.
        let alone = table(&[("c", LIVE, &["sc"])]);
        let key = key_owned(&["sa", "sb", "sc"], "sc", &["sa", "sb"], "sa");
        let t0 = Instant::now();
        let history = History::default().after(alone, t0, WINDOW, Some(without_me));
        assert_eq!(
            history
                .previous_owner(&now, "counter", h(&key), "sc", t0, WINDOW)
                .as_deref(),
            Some("sa")
        );
        assert_eq!(
            history.pruned(t0, WINDOW, false).previous_owner(
                &now,
                "counter",
                h(&key),
                "sc",
                t0,
                WINDOW
            ),
            None,
            "an old node has no table before joining"
        );
    }

    #[test]
    fn a_leaving_owner_is_named_while_it_drains_and_a_dead_one_never() {
        let before = table(&[("a", LIVE, &["sa"]), ("b", LIVE, &["sb"])]);
        // `key` is sb's among both; with b leaving, it goes to sa.
        let key = key_owned(&["sa", "sb"], "sb", &["sa"], "sa");
        let leaving = table(&[("a", LIVE, &["sa"]), ("b", MemberState::Leaving, &["sb"])]);
        let dead = table(&[("a", LIVE, &["sa"]), ("b", MemberState::Dead, &["sb"])]);
        let t0 = Instant::now();
        let history = History::default().after(before, t0, WINDOW, None);
        assert_eq!(
            history
                .previous_owner(&leaving, "counter", h(&key), "sa", t0, WINDOW)
                .as_deref(),
            Some("sb")
        );
        assert_eq!(
            history.previous_owner(&dead, "counter", h(&key), "sa", t0, WINDOW),
            None
        );
    }

    #[test]
    fn a_node_behind_the_sender_names_the_owner_it_knows() {
        // The sender already routes `key` to sc; this node still has sb as its owner.
        let current = table(&[
            ("a", LIVE, &["sa"]),
            ("b", LIVE, &["sb"]),
            ("c", LIVE, &["sc"]),
        ]);
        let key = (0..10_000)
            .map(|i| format!("key-{i}"))
            .find(|k| current.owner("counter", k).is_some_and(|s| &*s.id == "sb"))
            .unwrap();
        let hint = History::default().previous_owner(
            &current,
            "counter",
            h(&key),
            "sc",
            Instant::now(),
            WINDOW,
        );
        assert_eq!(hint.as_deref(), Some("sb"));
    }

    #[test]
    fn the_latest_other_owner_wins_and_the_history_is_bounded() {
        // sb had the key, then sc, now sb again: sc had the latest state.
        let t0 = Instant::now();
        let first = table(&[("b", LIVE, &["sb"])]);
        let second = table(&[("c", LIVE, &["sc"]), ("b", LIVE, &["sb"])]);
        let key = key_owned(&["sb", "sc"], "sc", &["sb"], "sb");
        let current = table(&[("b", LIVE, &["sb"]), ("c", LIVE, &["sc"])]);
        let history = History::default().after(first, t0, WINDOW, None).after(
            second,
            t0 + Duration::from_secs(1),
            WINDOW,
            None,
        );
        // In `current` sc owns it too; as seen from sb (a node behind), the current owner.
        assert_eq!(
            history
                .previous_owner(&current, "counter", h(&key), "sb", t0, WINDOW)
                .as_deref(),
            Some("sc")
        );
        let mut history = History::default();
        for i in 0..100 {
            history = history.after(
                table(&[("b", LIVE, &["sb"])]),
                t0 + Duration::from_millis(i),
                WINDOW,
                None,
            );
        }
        assert_eq!(history.earlier.len(), MAX_EARLIER);
        assert_eq!(history.earlier[0].0, t0 + Duration::from_millis(99));
    }
}
