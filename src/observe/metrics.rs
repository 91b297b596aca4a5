//! A node's Prometheus metrics: counters and histograms in atomics, written out in the text
//! exposition format at `GET /metrics`.
//!
//! Hand-written rather than on `prometheus-client` or `metrics`: the former's histogram takes a
//! mutex on every observation and its label families a lock and a hash per lookup, the latter's
//! exporter brings a large dependency tree, and what a node needs is small and fixed. Every
//! label set is resolved once: a request finds its stream's [`StreamMetrics`] in a map published
//! with `arc-swap` (no lock, no allocation), and route and outcome index fixed arrays. A stream
//! gets its own series only while it is one the service table knows, and at most
//! [`MAX_STREAMS`] of them; any other name counts under [`OTHER_STREAM`], so request paths can
//! not create series without bound.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;

use crate::cluster::Traffic;
use crate::FastMap;

/// Streams with series of their own; any further stream counts under [`OTHER_STREAM`].
pub(crate) const MAX_STREAMS: usize = 64;
/// The stream label of requests for streams without series of their own.
pub(crate) const OTHER_STREAM: &str = "_other";

/// Where a request went from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// No service was chosen: an unknown stream, a bad request.
    Unrouted,
    /// Ran by a service of this node.
    Local,
    /// Sent to the node that owns the key.
    Forwarded,
    /// Sent to every service of its stream.
    Broadcast,
    /// Forwarded here by a peer, and ran (or refused) here.
    Received,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::Unrouted,
        Route::Local,
        Route::Forwarded,
        Route::Broadcast,
        Route::Received,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Route::Unrouted => "unrouted",
            Route::Local => "local",
            Route::Forwarded => "forwarded",
            Route::Broadcast => "broadcast",
            Route::Received => "received",
        }
    }
}

/// A request's outcome, by the class of its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    ClientError,
    ServerError,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::ClientError, Outcome::ServerError];

    pub(crate) fn of(status: StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::ServerError
        } else if status.is_client_error() {
            Outcome::ClientError
        } else {
            Outcome::Ok
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// The same bounds in nanoseconds, for bucketing without floating point.
const BUCKET_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram: one counter per bucket (the last is `+Inf`) and the sum.
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Sum of the observations, in seconds.
    pub(crate) fn sum_seconds(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// The series of one stream.
pub(crate) struct StreamMetrics {
    pub(crate) name: Arc<str>,
    requests: [[AtomicU64; Outcome::ALL.len()]; Route::ALL.len()],
    /// Time a local handler took.
    pub(crate) handling: Histogram,
    /// Time a forward took, to the owner's answer.
    pub(crate) forwarding: Histogram,
    /// Requests sent again to the key's next owner after a forward that failed (a 421, a
    /// failed connection, or any failure of an idempotent request).
    reroutes: AtomicU64,
}

impl StreamMetrics {
    fn new(name: &str) -> Self {
        StreamMetrics {
            name: Arc::from(name),
            requests: Default::default(),
            handling: Histogram::default(),
            forwarding: Histogram::default(),
            reroutes: AtomicU64::new(0),
        }
    }

    pub(crate) fn count(&self, route: Route, outcome: Outcome) {
        self.requests[route as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn requests(&self, route: Route, outcome: Outcome) -> u64 {
        self.requests[route as usize][outcome as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn rerouted(&self) {
        self.reroutes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reroutes(&self) -> u64 {
        self.reroutes.load(Ordering::Relaxed)
    }
}

/// What `/metrics` reports about the cluster, read from the node's snapshots when scraped.
pub(crate) struct ClusterGauges<'a> {
    pub(crate) node_id: &'a str,
    /// Members by state: live, leaving, dead.
    pub(crate) members: [usize; 3],
    /// Routable services per stream, sorted by stream.
    pub(crate) services: Vec<(&'a str, usize)>,
    pub(crate) table_version: u64,
    pub(crate) gossip: Option<Traffic>,
    /// Messages the node is answering now (over HTTP and peer links), and its limit.
    pub(crate) in_flight: usize,
    pub(crate) max_in_flight: usize,
    /// Connections open on the node's port.
    pub(crate) connections: usize,
    /// Membership events seen so far, by kind.
    pub(crate) events: Vec<(&'static str, u64)>,
}

/// What a keyed node took and refused from peers.
#[derive(Default)]
pub(crate) struct PeerMetrics {
    /// Connections that carried links or forwards over mutual TLS from a published peer.
    authenticated: AtomicU64,
    /// Link prefaces refused: not over mutual TLS from a published peer.
    refused_links: AtomicU64,
    /// Forwards (`X-Meshage-Hop`) refused with a 401, for the same reason.
    refused_forwards: AtomicU64,
}

impl PeerMetrics {
    pub(crate) fn authenticated(&self) {
        self.authenticated.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_link(&self) {
        self.refused_links.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused_forward(&self) {
        self.refused_forwards.fetch_add(1, Ordering::Relaxed);
    }
}

/// Messages sent without waiting (`?wait=false`), delivered in the background.
#[derive(Default)]
pub(crate) struct BackgroundMetrics {
    /// Delivered: the handler answered, whatever its status.
    delivered: AtomicU64,
    /// Not delivered by their deadline (the owner unreachable, the request lost or late).
    failed: AtomicU64,
    /// Refused at once: the node held its bound of background deliveries.
    refused: AtomicU64,
}

impl BackgroundMetrics {
    pub(crate) fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every request metric of one node.
pub(crate) struct Metrics {
    streams: ArcSwap<FastMap<Arc<str>, Arc<StreamMetrics>>>,
    other: Arc<StreamMetrics>,
    pub(crate) peers: PeerMetrics,
    pub(crate) background: BackgroundMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            streams: ArcSwap::from_pointee(FastMap::default()),
            other: Arc::new(StreamMetrics::new(OTHER_STREAM)),
            peers: PeerMetrics::default(),
            background: BackgroundMetrics::default(),
        }
    }
}

impl Metrics {
    /// The series of `stream`. `known` says whether the service table has the stream; only
    /// then, and while fewer than [`MAX_STREAMS`] have their own, does a new stream get series.
    pub(crate) fn stream(&self, stream: &str, known: impl FnOnce() -> bool) -> Arc<StreamMetrics> {
        if let Some(found) = self.streams.load().get(stream) {
            return found.clone();
        }
        if !known() {
            return self.other.clone();
        }
        let mut found = None;
        self.streams.rcu(|current| {
            if let Some(existing) = current.get(stream) {
                found = Some(existing.clone());
                return Arc::clone(current);
            }
            if current.len() >= MAX_STREAMS {
                found = Some(self.other.clone());
                return Arc::clone(current);
            }
            let created = Arc::new(StreamMetrics::new(stream));
            found = Some(created.clone());
            let mut next = HashMap::clone(current);
            next.insert(created.name.clone(), created);
            Arc::new(next)
        });
        found.unwrap_or_else(|| self.other.clone())
    }

    /// Every stream with series, sorted by name, then the catch-all.
    pub(crate) fn streams(&self) -> Vec<Arc<StreamMetrics>> {
        let mut streams: Vec<Arc<StreamMetrics>> = self.streams.load().values().cloned().collect();
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        streams.push(self.other.clone());
        streams
    }

    /// Requests received from peers so far (forwarded here), of every stream and outcome.
    pub(crate) fn received_total(&self) -> u64 {
        self.streams()
            .iter()
            .flat_map(|s| &s.requests[Route::Received as usize])
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self, cluster: &ClusterGauges<'_>) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let streams = self.streams();

        header(&mut out, "meshage_info", "gauge", "This node; always 1.");
        let _ = writeln!(
            out,
            "meshage_info{{node=\"{}\",version=\"{}\"}} 1",
            escape(cluster.node_id),
            env!("CARGO_PKG_VERSION")
        );

        header(
            &mut out,
            "meshage_requests_total",
            "counter",
            "Requests this node took, by stream, where they went (local, forwarded, broadcast, \
             received from a peer, unrouted) and outcome (by status class).",
        );
        for s in &streams {
            for route in Route::ALL {
                if Outcome::ALL.iter().all(|&o| s.requests(route, o) == 0) {
                    continue;
                }
                for outcome in Outcome::ALL {
                    let _ = writeln!(
                        out,
                        "meshage_requests_total{{stream=\"{}\",route=\"{}\",outcome=\"{}\"}} {}",
                        escape(&s.name),
                        route.label(),
                        outcome.label(),
                        s.requests(route, outcome)
                    );
                }
            }
        }

        header(
            &mut out,
            "meshage_requests_in_flight",
            "gauge",
            "Messages this node is answering now, from clients and from peers.",
        );
        let _ = writeln!(out, "meshage_requests_in_flight {}", cluster.in_flight);
        header(
            &mut out,
            "meshage_requests_in_flight_limit",
            "gauge",
            "Messages this node answers at once; above it, new ones get a 503.",
        );
        let _ = writeln!(
            out,
            "meshage_requests_in_flight_limit {}",
            cluster.max_in_flight
        );
        header(
            &mut out,
            "meshage_connections",
            "gauge",
            "Connections open on this node's port: clients' HTTP, peers' links and forwards.",
        );
        let _ = writeln!(out, "meshage_connections {}", cluster.connections);

        histograms(
            &mut out,
            "meshage_handling_duration_seconds",
            "Time local handlers took, by stream.",
            &streams,
            |s| &s.handling,
        );
        histograms(
            &mut out,
            "meshage_forwarding_duration_seconds",
            "Time forwards took until the owner's answer, by stream.",
            &streams,
            |s| &s.forwarding,
        );

        header(
            &mut out,
            "meshage_reroutes_total",
            "counter",
            "Requests sent again to the key's next owner after a forward failed (the owner \
             answered 421, could not be reached, or failed an idempotent request).",
        );
        for s in streams.iter().filter(|s| s.reroutes() > 0) {
            let _ = writeln!(
                out,
                "meshage_reroutes_total{{stream=\"{}\"}} {}",
                escape(&s.name),
                s.reroutes()
            );
        }

        header(
            &mut out,
            "meshage_members",
            "gauge",
            "Nodes this node knows, by state.",
        );
        for (state, n) in ["live", "leaving", "dead"].iter().zip(cluster.members) {
            let _ = writeln!(out, "meshage_members{{state=\"{state}\"}} {n}");
        }

        header(
            &mut out,
            "meshage_services",
            "gauge",
            "Routable services, by stream.",
        );
        for (stream, n) in &cluster.services {
            let _ = writeln!(out, "meshage_services{{stream=\"{}\"}} {n}", escape(stream));
        }

        header(
            &mut out,
            "meshage_table_rebuilds_total",
            "counter",
            "Service tables built: one per membership change and per local registration.",
        );
        let _ = writeln!(
            out,
            "meshage_table_rebuilds_total {}",
            cluster.table_version
        );

        header(
            &mut out,
            "meshage_membership_events_total",
            "counter",
            "Membership changes seen, by kind (joined, leaving, dead, back, removed, services).",
        );
        for (kind, n) in &cluster.events {
            let _ = writeln!(
                out,
                "meshage_membership_events_total{{kind=\"{kind}\"}} {n}"
            );
        }

        header(
            &mut out,
            "meshage_peer_tls_connections_total",
            "counter",
            "Connections on which this node took links or forwards over mutual TLS from a peer \
             whose certificate a member published (nodes with a cluster key).",
        );
        let peers = &self.peers;
        let _ = writeln!(
            out,
            "meshage_peer_tls_connections_total {}",
            peers.authenticated.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "meshage_peer_refusals_total",
            "counter",
            "Links and forwards this node refused before running anything because they did not \
             come over mutual TLS from a published peer, by kind (link, forward).",
        );
        for (kind, n) in [
            ("link", &peers.refused_links),
            ("forward", &peers.refused_forwards),
        ] {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "meshage_peer_refusals_total{{kind=\"{kind}\"}} {n}");
        }

        header(
            &mut out,
            "meshage_background_total",
            "counter",
            "Messages sent without waiting (?wait=false) by outcome: delivered (the handler \
             answered), failed (not delivered by the deadline; logged), refused (above the \
             node's bound of background deliveries, answered 503).",
        );
        let background = &self.background;
        for (outcome, n) in [
            ("delivered", &background.delivered),
            ("failed", &background.failed),
            ("refused", &background.refused),
        ] {
            let n = n.load(Ordering::Relaxed);
            let _ = writeln!(out, "meshage_background_total{{outcome=\"{outcome}\"}} {n}");
        }

        if let Some(traffic) = cluster.gossip {
            header(
                &mut out,
                "meshage_gossip_bytes_total",
                "counter",
                "Bytes of gossip this node sent and received.",
            );
            let _ = writeln!(
                out,
                "meshage_gossip_bytes_total{{direction=\"sent\"}} {}",
                traffic.bytes_sent
            );
            let _ = writeln!(
                out,
                "meshage_gossip_bytes_total{{direction=\"received\"}} {}",
                traffic.bytes_received
            );
            header(
                &mut out,
                "meshage_gossip_rejected_total",
                "counter",
                "Gossip datagrams dropped because no key of this node's keyring opened them.",
            );
            let _ = writeln!(
                out,
                "meshage_gossip_rejected_total {}",
                traffic.datagrams_rejected
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One histogram per stream that has observations.
fn histograms(
    out: &mut String,
    name: &str,
    help: &str,
    streams: &[Arc<StreamMetrics>],
    which: impl Fn(&StreamMetrics) -> &Histogram,
) {
    header(out, name, "histogram", help);
    for s in streams {
        let h = which(s);
        let stream = escape(&s.name);
        let mut cumulative = 0u64;
        let counts: Vec<u64> = h
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        if counts.iter().all(|&c| c == 0) {
            continue;
        }
        for (bound, count) in BUCKETS.iter().zip(&counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{stream=\"{stream}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += counts[BUCKETS.len()];
        let _ = writeln!(
            out,
            "{name}_bucket{{stream=\"{stream}\",le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{stream=\"{stream}\"}} {}",
            h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{stream=\"{stream}\"}} {cumulative}");
    }
}

/// A label value as the exposition format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> ClusterGauges<'static> {
        ClusterGauges {
            node_id: "n1",
            members: [2, 1, 0],
            services: vec![("echo", 2)],
            table_version: 5,
            gossip: Some(Traffic {
                bytes_sent: 10,
                bytes_received: 20,
                datagrams_rejected: 3,
            }),
            in_flight: 1,
            max_in_flight: 100,
            connections: 3,
            events: vec![("joined", 2), ("dead", 0)],
        }
    }

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // exactly on the first bound
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60)); // above every bound
        let counts: Vec<u64> = h
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!((counts[0], counts[1], counts[BUCKETS.len()]), (1, 1, 1));
        assert_eq!(h.count(), 3);
        assert!((h.sum_seconds() - 60.000201).abs() < 1e-9);
    }

    #[test]
    fn unknown_and_excess_streams_share_one_series() {
        let metrics = Metrics::default();
        assert_eq!(&*metrics.stream("nope", || false).name, OTHER_STREAM);
        let echo = metrics.stream("echo", || true);
        assert!(Arc::ptr_eq(&echo, &metrics.stream("echo", || false)));
        for i in 0..MAX_STREAMS * 2 {
            metrics.stream(&format!("s{i}"), || true);
        }
        assert_eq!(metrics.streams().len(), MAX_STREAMS + 1);
        assert_eq!(&*metrics.stream("one-too-many", || true).name, OTHER_STREAM);
    }

    #[test]
    fn exposition_has_counts_buckets_and_escaped_labels() {
        let metrics = Metrics::default();
        let odd = metrics.stream("a\"b\\c", || true);
        odd.count(Route::Forwarded, Outcome::ServerError);
        odd.forwarding.observe(Duration::from_millis(3));
        odd.rerouted();
        let text = metrics.render(&gauges());
        let stream = r#"stream="a\"b\\c""#;
        for line in [
            format!(
                r#"meshage_requests_total{{{stream},route="forwarded",outcome="server_error"}} 1"#
            ),
            format!(r#"meshage_requests_total{{{stream},route="forwarded",outcome="ok"}} 0"#),
            format!(r#"meshage_forwarding_duration_seconds_bucket{{{stream},le="0.0025"}} 0"#),
            format!(r#"meshage_forwarding_duration_seconds_bucket{{{stream},le="0.005"}} 1"#),
            format!(r#"meshage_forwarding_duration_seconds_bucket{{{stream},le="+Inf"}} 1"#),
            format!(r#"meshage_forwarding_duration_seconds_count{{{stream}}} 1"#),
            format!(r#"meshage_reroutes_total{{{stream}}} 1"#),
            "meshage_requests_in_flight 1".into(),
            "meshage_requests_in_flight_limit 100".into(),
            "meshage_connections 3".into(),
            r#"meshage_members{state="leaving"} 1"#.into(),
            r#"meshage_services{stream="echo"} 2"#.into(),
            "meshage_table_rebuilds_total 5".into(),
            r#"meshage_gossip_bytes_total{direction="received"} 20"#.into(),
            "meshage_gossip_rejected_total 3".into(),
            r#"meshage_membership_events_total{kind="joined"} 2"#.into(),
            r#"meshage_membership_events_total{kind="dead"} 0"#.into(),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(
            !text.contains("route=\"local\""),
            "unused routes stay out:\n{text}"
        );
        assert!(!text.contains("meshage_handling_duration_seconds_bucket"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line `{line}`");
        }
    }
}
