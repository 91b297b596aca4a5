//! The membership event log: how each view the backend publishes differs from the one before
//! (joined, leaving, dead, back, removed, services), the last [`RECENT_EVENTS`] of them, and
//! counts by kind. The node feeds it; the status page and `/metrics` read it. Never touched on
//! the request path, so a mutex is fine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{ClusterView, Member, MemberState};

/// Membership events kept for the page.
pub(crate) const RECENT_EVENTS: usize = 50;
/// Kinds of membership events, as they are named on the page and in metrics.
const KINDS: [&str; 6] = ["joined", "leaving", "dead", "back", "removed", "services"];

/// One change of membership, as this node saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Event {
    /// Unix time in milliseconds.
    pub(crate) at: u64,
    pub(crate) node: String,
    /// One of [`KINDS`].
    pub(crate) kind: &'static str,
    pub(crate) detail: String,
}

/// Recent membership events and counts by kind. Fed by the node's membership follower, read
/// by the page and `/metrics`; never touched on the request path, so a mutex is fine.
#[derive(Default)]
pub(crate) struct EventLog {
    inner: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    last: Arc<ClusterView>,
    /// Members seen live, so that a member's first turn to live is "joined", a later one "back".
    seen_live: HashSet<String>,
    recent: VecDeque<Event>,
    counts: [u64; KINDS.len()],
}

impl EventLog {
    /// Records how `view` differs from the view before it; returns the new events.
    pub(crate) fn observe(&self, view: &Arc<ClusterView>) -> Vec<Event> {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let mut log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let events = changes(&log.last, view, &log.seen_live);
        for member in &view.members {
            if member.state == MemberState::Live {
                log.seen_live.insert(member.id.clone());
            }
        }
        let present: HashSet<&str> = view.members.iter().map(|m| &*m.id).collect();
        log.seen_live.retain(|id| present.contains(id.as_str()));
        let mut new = Vec::with_capacity(events.len());
        for (kind, node, detail) in events {
            if let Some(i) = KINDS.iter().position(|k| *k == kind) {
                log.counts[i] += 1;
            }
            if log.recent.len() == RECENT_EVENTS {
                log.recent.pop_front();
            }
            let event = Event {
                at,
                node,
                kind,
                detail,
            };
            log.recent.push_back(event.clone());
            new.push(event);
        }
        log.last = view.clone();
        new
    }

    /// The recent events, newest first.
    pub(crate) fn recent(&self) -> Vec<Event> {
        let log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        log.recent.iter().rev().cloned().collect()
    }

    /// Events seen so far, by kind.
    pub(crate) fn counts(&self) -> Vec<(&'static str, u64)> {
        let log = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        KINDS.iter().copied().zip(log.counts).collect()
    }
}

fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Live => "live",
        MemberState::Leaving => "leaving",
        MemberState::Dead => "dead",
    }
}

/// The first 8 characters of an id, as the page shows it.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn describe_services(member: &Member) -> String {
    let mut streams: Vec<&str> = member.services.iter().map(|s| &*s.stream).collect();
    streams.sort_unstable();
    match streams.len() {
        0 => "no services".into(),
        1 => format!("1 service ({})", streams[0]),
        n => format!("{n} services ({})", streams.join(", ")),
    }
}

/// The membership events between two views: `(kind, node, detail)`. `seen_live` holds the
/// members seen live before. Gossip lists a node it has not heard enough from yet as dead, so a
/// member's first turn to live is "joined" whatever came before it, and a member never seen
/// live is not reported dead or removed. Pure.
pub(crate) fn changes(
    before: &ClusterView,
    after: &ClusterView,
    seen_live: &HashSet<String>,
) -> Vec<(&'static str, String, String)> {
    let old: HashMap<&str, &Member> = before.members.iter().map(|m| (&*m.id, m)).collect();
    let new: HashMap<&str, &Member> = after.members.iter().map(|m| (&*m.id, m)).collect();
    let mut events = Vec::new();
    for m in &after.members {
        match old.get(&*m.id) {
            None if m.state == MemberState::Dead => {}
            Some(was) if was.state == MemberState::Dead && m.state == MemberState::Dead => {}
            None | Some(_) if m.state == MemberState::Live && !seen_live.contains(&m.id) => {
                let detail = format!("{} with {}", m.endpoint, describe_services(m));
                events.push(("joined", m.id.clone(), detail));
            }
            None => {
                let kind = if m.state == MemberState::Leaving {
                    "leaving"
                } else {
                    "joined"
                };
                let detail = format!("{} with {}", m.endpoint, describe_services(m));
                events.push((kind, m.id.clone(), detail));
            }
            Some(was) if was.state != m.state => {
                let kind = match m.state {
                    MemberState::Leaving => "leaving",
                    MemberState::Dead => "dead",
                    MemberState::Live => "back",
                };
                let detail = format!("{} → {}", state_name(was.state), state_name(m.state));
                events.push((kind, m.id.clone(), detail));
            }
            Some(was) if was.services != m.services => {
                let mut parts = Vec::new();
                for s in m.services.iter().filter(|s| !was.services.contains(s)) {
                    parts.push(format!("+{} {}", s.stream, short(&s.id)));
                }
                for s in was.services.iter().filter(|s| !m.services.contains(s)) {
                    parts.push(format!("−{} {}", s.stream, short(&s.id)));
                }
                events.push(("services", m.id.clone(), parts.join(", ")));
            }
            Some(_) => {}
        }
    }
    for m in &before.members {
        if !new.contains_key(&*m.id) && seen_live.contains(&m.id) {
            events.push(("removed", m.id.clone(), "forgotten".into()));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ServiceEntry;

    fn member(id: &str, state: MemberState, streams: &[&str]) -> Member {
        Member {
            id: id.into(),
            endpoint: format!("http://{id}"),
            state,
            services: streams
                .iter()
                .map(|s| ServiceEntry {
                    id: Arc::from(format!("{id}-{s}")),
                    stream: Arc::from(*s),
                })
                .collect(),
            last_heard: None,
            fingerprint: None,
        }
    }

    fn view(members: Vec<Member>) -> ClusterView {
        ClusterView { members }
    }

    #[test]
    fn changes_name_joins_state_changes_services_and_removals() {
        let a = view(vec![
            member("a", MemberState::Live, &["echo"]),
            member("b", MemberState::Live, &["echo"]),
            member("c", MemberState::Live, &[]),
        ]);
        let b = view(vec![
            member("a", MemberState::Live, &["echo", "other"]),
            member("b", MemberState::Leaving, &["echo"]),
            member("d", MemberState::Live, &["echo"]),
        ]);
        let seen: HashSet<String> = ["a", "b", "c"].map(String::from).into();
        let kinds: Vec<(&str, String)> = changes(&a, &b, &seen)
            .into_iter()
            .map(|(k, n, _)| (k, n))
            .collect();
        assert_eq!(
            kinds,
            [
                ("services", "a".into()),
                ("leaving", "b".into()),
                ("joined", "d".into()),
                ("removed", "c".into()),
            ]
        );
        let c = view(vec![member("b", MemberState::Dead, &["echo"])]);
        let d = view(vec![member("b", MemberState::Live, &["echo"])]);
        assert_eq!(changes(&b, &c, &seen)[0].0, "dead");
        assert_eq!(
            changes(&c, &d, &seen),
            [("back", "b".into(), "dead → live".into())]
        );
        assert!(changes(&d, &d, &seen).is_empty());
    }

    #[test]
    fn a_node_gossip_has_not_heard_enough_from_yet_joins_when_it_turns_live() {
        let none = HashSet::new();
        let empty = view(vec![]);
        let unheard = view(vec![member("n", MemberState::Dead, &["echo"])]);
        let live = view(vec![member("n", MemberState::Live, &["echo"])]);
        assert!(changes(&empty, &unheard, &none).is_empty());
        let joined = changes(&unheard, &live, &none);
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].0, "joined");
        assert!(
            changes(&unheard, &empty, &none).is_empty(),
            "never live: not removed"
        );
        let log = EventLog::default();
        for v in [&unheard, &live, &unheard, &live] {
            log.observe(&Arc::new(v.clone()));
        }
        let kinds: Vec<&str> = log.recent().iter().rev().map(|e| e.kind).collect();
        assert_eq!(kinds, ["joined", "dead", "back"]);
    }

    #[test]
    fn the_log_keeps_the_latest_events_newest_first() {
        let log = EventLog::default();
        for i in 0..RECENT_EVENTS + 5 {
            log.observe(&Arc::new(view(vec![member(
                &format!("n{i}"),
                MemberState::Live,
                &[],
            )])));
        }
        let recent = log.recent();
        assert_eq!(recent.len(), RECENT_EVENTS);
        // Each view brings one node and drops the one before.
        assert_eq!(
            (recent[0].kind, recent[0].node.as_str()),
            ("removed", &*format!("n{}", RECENT_EVENTS + 3))
        );
        assert_eq!(
            (recent[1].kind, recent[1].node.as_str()),
            ("joined", &*format!("n{}", RECENT_EVENTS + 4))
        );
        let counts: HashMap<&str, u64> = log.counts().into_iter().collect();
        assert_eq!(counts["joined"], RECENT_EVENTS as u64 + 5);
        assert_eq!(counts["removed"], RECENT_EVENTS as u64 + 4);
    }
}
