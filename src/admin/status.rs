//! The live status page (`GET /`, `status/index.html`, built into the binary; no CDN), its data
//! (`GET /api/status`: members, ring shares, request counts, recent events) and Prometheus
//! metrics (`GET /metrics`). The page fetches `/api/status` every second and computes request
//! rates from successive counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::{Admin, Load};
use crate::answer::{no_store, value_response, ApiError, Body};
use crate::cluster::{Member, MemberState};
use crate::observe::{ClusterGauges, Histogram, Outcome, Route, StreamMetrics};
use crate::ring::HashRing;

/// The status page.
const PAGE: &str = include_str!("status/index.html");

fn response(content_type: &'static str, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::new(body.into()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_store(response)
}

/// Every answer here is GET-only and kept by no cache.
fn get_only(method: &Method, answer: impl FnOnce() -> Response<Body>) -> Response<Body> {
    if matches!(*method, Method::GET | Method::HEAD) {
        answer()
    } else {
        no_store(ApiError::MethodNotAllowed("GET, HEAD").response())
    }
}

/// `GET /`: the page.
pub(super) fn page(method: &Method) -> Response<Body> {
    get_only(method, || response("text/html; charset=utf-8", PAGE))
}

/// `GET /metrics`.
pub(super) fn metrics(admin: &Admin, method: &Method, load: Load) -> Response<Body> {
    get_only(method, || {
        response(
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(admin, load),
        )
    })
}

/// Any other path outside `/api/`.
pub(super) fn not_found(method: &Method, path: &str) -> Response<Body> {
    no_store(ApiError::NotFound(format!("no route for {method} {path}")).response())
}

/// The members this node knows, with its own entry from first-hand knowledge: the backend
/// may not list it yet, or not know yet that it is leaving.
fn members(admin: &Admin) -> Vec<Member> {
    let view = admin.view.borrow().clone();
    let own = admin.router.node_id();
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
            .unwrap_or_else(|| admin.router.endpoint().to_owned()),
        state: if admin.router.is_leaving() {
            MemberState::Leaving
        } else {
            MemberState::Live
        },
        services: admin.router.local_services(),
        last_heard: None,
        fingerprint: None,
    });
    members.sort_by(|a, b| a.id.cmp(&b.id));
    members
}

fn metrics_text(admin: &Admin, load: Load) -> String {
    let table = admin.router.table();
    let mut by_state = [0usize; 3];
    for m in members(admin) {
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
    admin.router.metrics().render(&ClusterGauges {
        node_id: admin.router.node_id(),
        members: by_state,
        services,
        table_version: table.version,
        gossip: admin.router.membership_traffic(),
        in_flight: load.in_flight,
        max_in_flight: load.max_in_flight,
        connections: load.connections,
        events: admin.events.counts(),
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
pub(super) fn api_status(admin: &Admin, method: &Method, load: Load) -> Response<Body> {
    get_only(method, || {
        no_store(value_response(StatusCode::OK, &status(admin, load)))
    })
}

/// What `GET /api/status` answers.
fn status(admin: &Admin, load: Load) -> Value {
    let table = admin.router.table();
    let metrics = admin.router.metrics();
    let own = admin.router.node_id();
    let members: Vec<Value> = members(admin)
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
    json!({
        "node": own,
        "endpoint": admin.router.endpoint(),
        "leaving": admin.router.is_leaving(),
        "version": env!("CARGO_PKG_VERSION"),
        "now": now,
        "tableVersion": table.version,
        "inFlight": load.in_flight,
        "gossip": admin.router.membership_traffic(),
        "keyring": admin.keys.as_ref().map(|keys| keys.current().ids()),
        "members": members,
        "streams": streams,
        "events": admin.events.recent(),
    })
}

/// The ring as arcs `[start, end, owner]` (fractions of the hash space; `owner` indexes the
/// ring's servers), neighbouring points of one owner merged. A point owns the hashes above the
/// point before it; the first point also owns the wrap-around past the last.
fn arcs(ring: &HashRing) -> Vec<Value> {
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

    #[test]
    fn arcs_tile_the_ring_with_each_owners_share() {
        let ring = HashRing::new(["s1", "s2", "s3"]);
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
