//! Observability through real sockets and processes: Prometheus metrics at `/metrics`, the
//! status data at `/api/status`, trace ids across the forward hop, and JSON logs.

use std::collections::HashMap;
use std::time::Duration;

use meshage::{HandlerError, Node};
use serde_json::Value;

use crate::common::process::{meshage_node_env, NodeProc};
use crate::common::*;

/// The samples of a text exposition: `name{labels}` to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

async fn metrics(http: &Http, node: &Node) -> HashMap<String, f64> {
    let answer = http.get(&format!("{}/metrics", node.endpoint())).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    samples(std::str::from_utf8(&answer.body).unwrap())
}

fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

async fn fail(_data: Value, _header: meshage::Header) -> Result<Value, HandlerError> {
    Err(HandlerError::internal("always fails"))
}

/// Three echo nodes; the first also serves `fail`, whose handler always fails.
async fn cluster() -> Vec<Node> {
    let first = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register("echo", echo_by)
        .register("fail", fail)
        .start()
        .await
        .expect("node starts");
    let seed = vec![first.seed_address().unwrap()];
    let mut nodes = vec![first];
    for _ in 0..2 {
        nodes.push(echo_node(&seed).await);
    }
    wait_converged(&nodes, 4).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_stream_route_and_outcome() {
    let nodes = cluster().await;
    let http = Http::default();
    let own: Vec<String> = nodes[0]
        .router()
        .local_services()
        .iter()
        .map(|s| s.id.to_string())
        .collect();
    let (mut local, mut forwarded) = (0.0, 0.0);
    for i in 0..40 {
        let answer = http
            .post(&format!("{}/api/echo/key-{i}", nodes[0].endpoint()), "{}")
            .await;
        assert_eq!(answer.status, 200);
        let trace = answer.headers["x-meshage-trace"].to_str().unwrap();
        assert!(
            trace.len() == 16 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
            "{trace}"
        );
        if own.contains(&answer.service_id().unwrap()) {
            local += 1.0;
        } else {
            forwarded += 1.0;
        }
    }
    assert!(
        local > 0.0 && forwarded > 0.0,
        "40 keys land here and elsewhere"
    );
    // A key node 1 runs itself, so that the counts of the others stay as they are.
    let node1 = nodes[1].router();
    let mine = (0..)
        .map(|i| format!("chosen-{i}"))
        .find(|k| {
            let owner = node1.table().owner("echo", k).unwrap().id.clone();
            node1.local_services().iter().any(|s| s.id == owner)
        })
        .unwrap();
    let chosen = http
        .request(
            http::Method::POST,
            &format!("{}/api/echo/{mine}", nodes[1].endpoint()),
            &[("x-meshage-trace", "00c0ffee")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(
        chosen.headers["x-meshage-trace"], "0000000000c0ffee",
        "a client's id is kept"
    );
    // Answers refused before routing carry it too: a wrong method, a bad path.
    for (method, path) in [
        (http::Method::GET, "/api/echo/k".to_owned()),
        (http::Method::POST, "/api/echo/%zz".to_owned()),
    ] {
        let refused = http
            .request(
                method.clone(),
                &format!("{}{path}", nodes[1].endpoint()),
                &[("x-meshage-trace", "00c0ffee")],
                "{}",
            )
            .await
            .unwrap();
        assert!(refused.status.is_client_error(), "{method} {path}");
        assert_eq!(
            refused.headers["x-meshage-trace"], "0000000000c0ffee",
            "{method} {path}"
        );
    }

    assert_eq!(
        http.post(&format!("{}/api/fail/k", nodes[1].endpoint()), "{}")
            .await
            .status,
        500
    );
    assert_eq!(
        http.post(&format!("{}/api/nope/k", nodes[0].endpoint()), "{}")
            .await
            .status,
        404
    );
    let broadcast = http
        .post(
            &format!("{}/api/broadcast/echo/k", nodes[0].endpoint()),
            "{}",
        )
        .await;
    assert_eq!(broadcast.status, 200);

    let m = metrics(&http, &nodes[0]).await;
    let series = |route: &str, outcome: &str| {
        format!(r#"meshage_requests_total{{stream="echo",route="{route}",outcome="{outcome}"}}"#)
    };
    assert_eq!(get(&m, &series("local", "ok")), local);
    assert_eq!(get(&m, &series("forwarded", "ok")), forwarded);
    assert_eq!(get(&m, &series("broadcast", "ok")), 1.0);
    // The catch-all keeps unknown streams from making series of their own.
    assert_eq!(
        get(
            &m,
            r#"meshage_requests_total{stream="_other",route="unrouted",outcome="client_error"}"#
        ),
        1.0
    );
    assert!(
        !m.keys().any(|k| k.contains("nope")),
        "no series for an unknown stream"
    );
    // Each local run and each forward is timed; the broadcast ran here once and went out twice.
    assert_eq!(
        get(
            &m,
            r#"meshage_handling_duration_seconds_count{stream="echo"}"#
        ),
        local + 1.0
    );
    assert_eq!(
        get(
            &m,
            r#"meshage_forwarding_duration_seconds_count{stream="echo"}"#
        ),
        forwarded + 2.0
    );
    assert_eq!(
        get(
            &m,
            r#"meshage_forwarding_duration_seconds_bucket{stream="echo",le="+Inf"}"#
        ),
        forwarded + 2.0
    );
    assert_eq!(get(&m, r#"meshage_members{state="live"}"#), 3.0);
    assert_eq!(get(&m, r#"meshage_services{stream="echo"}"#), 3.0);
    assert_eq!(get(&m, r#"meshage_services{stream="fail"}"#), 1.0);
    assert!(get(&m, "meshage_table_rebuilds_total") >= 3.0);
    assert!(
        get(&m, r#"meshage_membership_events_total{kind="joined"}"#) >= 3.0,
        "{:?}",
        m.iter()
            .filter(|(k, _)| k.contains("events"))
            .collect::<Vec<_>>()
    );
    assert!(get(&m, r#"meshage_gossip_bytes_total{direction="sent"}"#) > 0.0);
    assert!(get(&m, r#"meshage_gossip_bytes_total{direction="received"}"#) > 0.0);
    assert_eq!(get(&m, "meshage_requests_in_flight"), 0.0);
    assert_eq!(get(&m, "meshage_requests_in_flight_limit"), 10_000.0);

    // What node 0 forwarded, the others received; node 0 ran the failing handler for node 1.
    let mut received = 0.0;
    for node in &nodes[1..] {
        let m = metrics(&http, node).await;
        received += get(&m, &series("received", "ok"));
    }
    assert_eq!(received, forwarded + 2.0);
    let m = metrics(&http, &nodes[1]).await;
    assert_eq!(
        get(
            &m,
            r#"meshage_requests_total{stream="fail",route="forwarded",outcome="server_error"}"#
        ),
        1.0
    );
    let m = metrics(&http, &nodes[0]).await;
    assert_eq!(
        get(
            &m,
            r#"meshage_requests_total{stream="fail",route="received",outcome="server_error"}"#
        ),
        1.0
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_sends_are_counted_too() {
    let nodes = echo_cluster(2).await;
    let router = nodes[0].router();
    for i in 0..10 {
        router
            .send(meshage::Message::new("echo", format!("k{i}"), Value::Null))
            .await
            .unwrap();
    }
    router
        .broadcast(meshage::Message::new("echo", "b", Value::Null))
        .await
        .unwrap();
    let m = metrics(&Http::default(), &nodes[0]).await;
    let ok = |route: &str| {
        get(
            &m,
            &format!(r#"meshage_requests_total{{stream="echo",route="{route}",outcome="ok"}}"#),
        )
    };
    assert_eq!(ok("local") + ok("forwarded"), 10.0);
    assert_eq!(ok("broadcast"), 1.0);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_members_ring_shares_and_a_node_leaving() {
    let mut nodes = echo_cluster(3).await;
    let http = Http::default();
    let url = format!("{}/api/status", nodes[0].endpoint());
    let status = http.get(&url).await.json();
    assert_eq!(status["node"], nodes[0].id());
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["state"] == "live"), "{status}");
    assert_eq!(members.iter().filter(|m| m["self"] == true).count(), 1);
    let echo = &status["streams"][0];
    assert_eq!(echo["name"], "echo");
    let shares: Vec<f64> = echo["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["share"].as_f64().unwrap())
        .collect();
    assert_eq!(shares.len(), 3);
    assert!(
        (shares.iter().sum::<f64>() - 1.0).abs() < 1e-3,
        "{shares:?}"
    );
    assert!(shares.iter().all(|&s| s > 0.1), "{shares:?}");
    assert!(!echo["arcs"].as_array().unwrap().is_empty());

    let gone = nodes.pop().unwrap();
    let gone_id = gone.id().to_owned();
    gone.shutdown().await.unwrap();
    wait_until_async(Duration::from_secs(10), "node 0 sees node 2 leave", || {
        let (http, url, gone_id) = (http.clone(), url.clone(), gone_id.clone());
        async move {
            let status = http.get(&url).await.json();
            let state = status["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == gone_id.as_str())
                .map(|m| m["state"].as_str().unwrap().to_owned());
            let event = status["events"].as_array().unwrap().iter().any(|e| {
                e["node"] == gone_id.as_str()
                    && matches!(e["kind"].as_str(), Some("leaving" | "dead"))
            });
            matches!(state.as_deref(), Some("leaving" | "dead") | None) && event
        }
    })
    .await;
    let m = metrics(&http, &nodes[0]).await;
    assert_eq!(get(&m, r#"meshage_members{state="live"}"#), 2.0);
    assert_eq!(get(&m, r#"meshage_services{stream="echo"}"#), 2.0);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_metrics_are_get_only_and_other_paths_are_404() {
    let node = echo_node(&[]).await;
    let http = Http::default();
    let page = http.get(&format!("{}/", node.endpoint())).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = std::str::from_utf8(&page.body).unwrap();
    // Nothing from elsewhere: the only URL in the page is the SVG namespace.
    let elsewhere = html.replace("http://www.w3.org/2000/svg", "");
    assert!(html.contains("/api/status"));
    assert!(
        !elsewhere.contains("http:")
            && !elsewhere.contains("https:")
            && !elsewhere.contains("//cdn")
    );
    for path in ["/", "/metrics", "/api/status"] {
        let answer = http
            .request(
                http::Method::POST,
                &format!("{}{path}", node.endpoint()),
                &[],
                "",
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 405, "POST {path}");
    }
    let missing = http.get(&format!("{}/nothing", node.endpoint())).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "no route for GET /nothing");
    node.shutdown().await.unwrap();
}

/// Lines of a node's JSON log about the request with `trace`.
fn request_lines(node: &NodeProc, trace: &str) -> Vec<Value> {
    node.proc
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        // Logs show the W3C trace id: 32 digits, the last 16 of them X-Meshage-Trace's.
        .filter(|l| {
            l["span"]["trace"] == format!("{trace:0>32}").as_str()
                && l["fields"]["message"] == "request done"
        })
        .collect()
}

/// Two `meshage node` processes with JSON logs; a request sent to one and owned by the other
/// is logged by both under one trace id, with the key's hash and not the key.
fn one_trace_on_both_nodes(protocol: &str) {
    let args = [
        "--echo",
        "echo",
        "--log-format",
        "json",
        "--peer-protocol",
        protocol,
    ];
    let debug = [("RUST_LOG", "info,chitchat=warn,meshage=debug")];
    let a = meshage_node_env("node a", &[], &args, &debug);
    let b = meshage_node_env("node b", &[&a.seed], &args, &debug);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let http = Http::default();
        wait_until_async(
            Duration::from_secs(10),
            "both nodes list both services",
            || {
                let http = http.clone();
                let urls = [a.endpoint.clone(), b.endpoint.clone()];
                async move {
                    for url in urls {
                        let answer = http.get(&format!("{url}/api/services")).await;
                        if answer.json().as_array().map(Vec::len) != Some(2) {
                            return false;
                        }
                    }
                    true
                }
            },
        )
        .await;
        let services = http
            .get(&format!("{}/api/services", a.endpoint))
            .await
            .json();
        let on_b: Vec<String> = services
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["node"] == b.id.as_str())
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        let mut sent = None;
        for i in 0..64 {
            let key = format!("secret-key-{i}");
            let trace = format!("{:016x}", 0xfeed_0000_u64 + i);
            let answer = http
                .request(
                    http::Method::POST,
                    &format!("{}/api/echo/{key}", a.endpoint),
                    &[
                        ("x-meshage-trace", &trace),
                        ("content-type", "application/json"),
                    ],
                    "{}",
                )
                .await
                .unwrap();
            assert_eq!(answer.status, 200);
            if on_b.contains(&answer.service_id().unwrap()) {
                sent = Some((key, trace, answer.service_id().unwrap()));
                break;
            }
        }
        let (key, trace, owner) = sent.expect("some key of 64 is owned by node b");
        wait_until(
            Duration::from_secs(10),
            "both nodes log the request",
            || !request_lines(&a, &trace).is_empty() && !request_lines(&b, &trace).is_empty(),
        )
        .await;
        let (on_a, on_b) = (&request_lines(&a, &trace)[0], &request_lines(&b, &trace)[0]);
        assert_eq!(on_a["span"]["route"], "forwarded", "{on_a}");
        assert_eq!(on_b["span"]["route"], "received", "{on_b}");
        for line in [on_a, on_b] {
            assert_eq!(line["span"]["owner"], owner.as_str(), "{line}");
            assert_eq!(line["span"]["stream"], "echo");
            assert_eq!(line["fields"]["status"], 200);
        }
        assert_eq!(on_a["span"]["key_hash"], on_b["span"]["key_hash"]);
        for node in [&a, &b] {
            assert!(
                !node.proc.output().contains(&key),
                "the raw key stays out of the logs"
            );
        }
    });
}

#[test]
fn a_forward_over_the_link_keeps_its_trace_id() {
    one_trace_on_both_nodes("link");
}

#[test]
fn a_forward_over_http_keeps_its_trace_id() {
    one_trace_on_both_nodes("http1");
}

/// Peers that forward over HTTP/2 (prior knowledge): the owner tells it from HTTP/1.1 and from
/// the link by the connection's first bytes.
#[test]
fn a_forward_over_http2_keeps_its_trace_id() {
    one_trace_on_both_nodes("http2");
}
