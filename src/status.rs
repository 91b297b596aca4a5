//! What a node shows its operators on its HTTP port:
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the live status page (`status/index.html`, built into the binary; no CDN) |
//! | `GET /api/status` | the page's data: members, ring shares, request counts, recent events |
//! | `GET /metrics` | Prometheus metrics in the text exposition format (see `metrics.rs`) |
//!
//! The page fetches `/api/status` every second and computes request rates from successive
//! counts. Membership events come from comparing each view the backend publishes with the one
//! before; the last [`RECENT_EVENTS`] are kept.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::ApiState;
use crate::cluster::{ClusterView, Member, MemberState};
use crate::metrics::{ClusterGauges, Histogram, Outcome, Route, StreamMetrics};

/// The status page.
const PAGE: &str = include_str!("status/index.html");
/// Membership events kept for the page.
pub(crate) const RECENT_EVENTS: usize = 50;
/// Kinds of membership events, as they are named on the page and in metrics.
const KINDS: [&str; 6] = ["joined", "leaving", "dead", "back", "removed", "services"];

type Body = Full<Bytes>;

/// One change of membership, as this node saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Event {
    /// Unix time in milliseconds.
    pub at: u64,
    pub node: String,
    /// One of [`KINDS`].
    pub kind: &'static str,
    pub detail: String,
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
    /// Records how `view` differs from the view before it.
    pub(crate) fn observe(&self, view: &Arc<ClusterView>) {
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
        for (kind, node, detail) in events {
            if let Some(i) = KINDS.iter().position(|k| *k == kind) {
                log.counts[i] += 1;
            }
            if log.recent.len() == RECENT_EVENTS {
                log.recent.pop_front();
            }
            log.recent.push_back(Event {
                at,
                node,
                kind,
                detail,
            });
        }
        log.last = view.clone();
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

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    response(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn get_only(method: &Method) -> Option<Response<Body>> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return None;
    }
    let mut refused = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": "method not allowed; use GET" }),
    );
    refused
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET"));
    Some(refused)
}

/// Answers every path outside `/api/`: the page, the metrics, or 404.
pub(crate) fn serve(state: &ApiState, method: &Method, path: &str) -> Response<Body> {
    match path {
        "/" | "/index.html" => get_only(method)
            .unwrap_or_else(|| response(StatusCode::OK, "text/html; charset=utf-8", PAGE)),
        "/metrics" => get_only(method).unwrap_or_else(|| {
            response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics_text(state),
            )
        }),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": format!("no route for {method} {path}") }),
        ),
    }
}

/// The members this node knows, with its own entry from first-hand knowledge: the backend
/// may not list it yet, or not know yet that it is leaving.
fn members(state: &ApiState) -> Vec<Member> {
    let view = state.view.borrow().clone();
    let own = state.router.node_id();
    let mut members: Vec<Member> = view
        .members
        .iter()
        .filter(|m| m.id != own)
        .cloned()
        .collect();
    let from_view = view.members.iter().find(|m| m.id == own);
    members.push(Member {
        id: own.to_owned(),
        endpoint: from_view
            .map(|m| m.endpoint.clone())
            .unwrap_or_else(|| state.router.endpoint().to_owned()),
        state: if state.router.is_leaving() {
            MemberState::Leaving
        } else {
            MemberState::Live
        },
        services: state.router.local_services(),
        last_heard: None,
    });
    members.sort_by(|a, b| a.id.cmp(&b.id));
    members
}

fn metrics_text(state: &ApiState) -> String {
    let table = state.router.table();
    let mut by_state = [0usize; 3];
    for m in members(state) {
        by_state[match m.state {
            MemberState::Live => 0,
            MemberState::Leaving => 1,
            MemberState::Dead => 2,
        }] += 1;
    }
    let mut services: Vec<(&str, usize)> = table
        .streams()
        .map(|s| (s, table.services_of(s).count()))
        .collect();
    services.sort_unstable();
    state.router.metrics().render(&ClusterGauges {
        node_id: state.router.node_id(),
        members: by_state,
        services,
        table_version: table.version,
        gossip: state.router.membership_traffic(),
        in_flight: state.in_flight.load(Ordering::Relaxed),
        max_in_flight: state.max_in_flight,
    })
}

fn histogram_json(h: &Histogram) -> Value {
    json!({ "count": h.count(), "sum": h.sum_seconds() })
}

fn requests_json(s: &StreamMetrics) -> Value {
    let mut routes = serde_json::Map::new();
    for route in [
        Route::Local,
        Route::Forwarded,
        Route::Broadcast,
        Route::Received,
        Route::Unrouted,
    ] {
        let mut outcomes = serde_json::Map::new();
        for outcome in [Outcome::Ok, Outcome::ClientError, Outcome::ServerError] {
            outcomes.insert(outcome.label().into(), s.requests(route, outcome).into());
        }
        routes.insert(route.label().into(), Value::Object(outcomes));
    }
    Value::Object(routes)
}

/// Rounds a fraction of the ring for the page: 5 digits are finer than any pixel.
fn frac(x: f64) -> f64 {
    (x * 100_000.0).round() / 100_000.0
}

/// `GET /api/status`: everything the page shows.
pub(crate) fn api_status(state: &ApiState, method: &Method) -> Response<Body> {
    if let Some(refused) = get_only(method) {
        return refused;
    }
    let table = state.router.table();
    let metrics = state.router.metrics();
    let own = state.router.node_id();
    let members: Vec<Value> = members(state)
        .iter()
        .map(|m| {
            json!({
                "id": &m.id,
                "endpoint": &m.endpoint,
                "state": m.state,
                "self": m.id == own,
                "services": &m.services,
            })
        })
        .collect();

    let counted: HashMap<Arc<str>, Arc<StreamMetrics>> = metrics
        .streams()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let mut names: Vec<Arc<str>> = table.streams().map(Arc::from).collect();
    for (name, s) in &counted {
        let used = s.handling.count() > 0 || s.forwarding.count() > 0 || {
            let any = |r| {
                [Outcome::Ok, Outcome::ClientError, Outcome::ServerError]
                    .iter()
                    .any(|&o| s.requests(r, o) > 0)
            };
            any(Route::Local)
                || any(Route::Forwarded)
                || any(Route::Broadcast)
                || any(Route::Received)
                || any(Route::Unrouted)
        };
        if used && !names.contains(name) {
            names.push(name.clone());
        }
    }
    names.sort();
    let streams: Vec<Value> = names
        .iter()
        .map(|name| {
            let mut entry = json!({ "name": &**name, "services": [], "arcs": [] });
            if let Some(s) = table.stream(name) {
                let shares = s.ring.shares();
                entry["services"] = s
                    .services
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| {
                        let service = &table.services[i];
                        json!({
                            "id": &*service.id,
                            "node": &*service.node_id,
                            "points": s.ring.points_of(k),
                            "share": frac(shares.get(k).copied().unwrap_or(0.0)),
                        })
                    })
                    .collect();
                entry["arcs"] = arcs(&s.ring).into();
            }
            if let Some(m) = counted.get(name) {
                entry["requests"] = requests_json(m);
                entry["handling"] = histogram_json(&m.handling);
                entry["forwarding"] = histogram_json(&m.forwarding);
                entry["reroutes"] = m.reroutes().into();
            }
            entry
        })
        .collect();

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let body = json!({
        "node": own,
        "endpoint": state.router.endpoint(),
        "leaving": state.router.is_leaving(),
        "version": env!("CARGO_PKG_VERSION"),
        "now": now,
        "tableVersion": table.version,
        "inFlight": state.in_flight.load(Ordering::Relaxed),
        "gossip": state.router.membership_traffic(),
        "members": members,
        "streams": streams,
        "events": metrics.events.recent(),
    });
    json_response(StatusCode::OK, &body)
}

/// The ring as arcs `[start, end, owner]` (fractions of the hash space; `owner` indexes the
/// ring's servers), neighbouring points of one owner merged. A point owns the hashes above the
/// point before it; the first point also owns the wrap-around past the last.
fn arcs(ring: &crate::ring::HashRing) -> Vec<Value> {
    const SPACE: f64 = (1u64 << 32) as f64;
    let points: Vec<(u32, usize)> = ring.ring_points().collect();
    let (Some(&(first, first_owner)), Some(&(last, _))) = (points.first(), points.last()) else {
        return Vec::new();
    };
    let mut runs: Vec<(f64, f64, usize)> = vec![(0.0, f64::from(first) / SPACE, first_owner)];
    for pair in points.windows(2) {
        let (start, end, owner) = (
            f64::from(pair[0].0) / SPACE,
            f64::from(pair[1].0) / SPACE,
            pair[1].1,
        );
        match runs.last_mut() {
            Some(run) if run.2 == owner => run.1 = end,
            _ => runs.push((start, end, owner)),
        }
    }
    match runs.last_mut() {
        Some(run) if run.2 == first_owner => run.1 = 1.0,
        _ => runs.push((f64::from(last) / SPACE, 1.0, first_owner)),
    }
    runs.into_iter()
        .filter(|(start, end, _)| end > start)
        .map(|(start, end, owner)| json!([frac(start), frac(end), owner]))
        .collect()
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

    #[test]
    fn arcs_tile_the_ring_with_each_owners_share() {
        let ring = crate::ring::HashRing::new(["s1", "s2", "s3"]);
        let arcs = arcs(&ring);
        let mut covered = [0.0f64; 3];
        let mut at = 0.0;
        for arc in &arcs {
            let (start, end, owner) = (
                arc[0].as_f64().unwrap(),
                arc[1].as_f64().unwrap(),
                arc[2].as_u64().unwrap(),
            );
            assert!(
                (start - at).abs() < 1e-4,
                "arcs leave no gap: {start} after {at}"
            );
            covered[owner as usize] += end - start;
            at = end;
        }
        assert!((at - 1.0).abs() < 1e-9);
        for (covered, share) in covered.iter().zip(ring.shares()) {
            assert!((covered - share).abs() < 1e-3, "{covered} vs {share}");
        }
        assert!(
            arcs.len() < ring.points(),
            "neighbouring points of one owner are merged"
        );
    }
}
