//! What a send can ask for beyond its key, as clients of the original 0.4.x ask it (issue 21):
//! no key at all (round-robin), not waiting (`?wait=false`), a timeout in the query, a message
//! name (query or body) with handlers per name, and the client's headers for the handler and
//! the handler's headers for the client. Each through real nodes, entering a node that is not
//! the owner, over the peer link and over HTTP forwards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshage::{
    BoxFuture, Handler, HandlerError, Header, HttpUpstream, Message, Node, NodeConfig, Payload,
    PeerProtocol, Reply, SendOptions, UpstreamConfig,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::common::{gossip, wait_converged, wait_until_async, Answer, Http};

const PROTOCOLS: [PeerProtocol; 2] = [PeerProtocol::Link, PeerProtocol::Http1];

fn config(protocol: PeerProtocol) -> NodeConfig {
    NodeConfig::default().peer_protocol(protocol)
}

/// A node with no services, through which requests enter and are forwarded.
async fn entry(protocol: PeerProtocol) -> Node {
    meshage::init(gossip(&[]), "127.0.0.1:0")
        .config(config(protocol))
        .start()
        .await
        .expect("entry node starts")
}

fn seed(node: &Node) -> Vec<String> {
    vec![node.seed_address().expect("gossip has a seed address")]
}

async fn post(node: &Node, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    Http::default()
        .request(
            Method::POST,
            &format!("http://{}{path}", node.local_addr()),
            &all,
            body.to_owned(),
        )
        .await
        .unwrap()
}

/// What a handler saw, as JSON: its service, key, name and a few of the client's headers.
async fn seen(_data: Value, header: Header) -> Result<Value, HandlerError> {
    let get = |name: &str| {
        header
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Ok(json!({
        "service": &*header.service_id,
        "key": &*header.partition_key,
        "name": header.name.as_deref(),
        "acceptLanguage": get("accept-language"),
        "authorization": get("authorization"),
        "private": get("x-private"),
        "host": get("host"),
        "trace": get("x-meshage-trace"),
    }))
}

/// A Rust handler that sets its answer's status and headers.
struct Created;

impl Handler for Created {
    fn handle(
        &self,
        _: Payload,
        header: Header,
    ) -> BoxFuture<'static, Result<Reply, HandlerError>> {
        let name = header.name.as_deref().unwrap_or("").to_owned();
        Box::pin(async move {
            Reply::json(&json!({ "created": name }))?
                .with_status(StatusCode::CREATED)
                .with_header("location", "/orders/7")?
                .with_header("connection", "close")
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_without_a_key_take_the_services_in_turn() {
    for protocol in PROTOCOLS {
        let entry = entry(protocol).await;
        let seeds = seed(&entry);
        let mut all = vec![entry];
        for _ in 0..2 {
            all.push(
                meshage::init(gossip(&seeds), "127.0.0.1:0")
                    .register("work", seen)
                    .config(config(protocol))
                    .start()
                    .await
                    .unwrap(),
            );
        }
        wait_converged(&all, 2).await;
        let entry = &all[0];
        let mut by_service: BTreeMap<String, usize> = BTreeMap::new();
        // `/api/work`, `/api/work/` and the library: all without a key, in one turn.
        for path in ["/api/work", "/api/work/", "/api/work", "/api/work/"] {
            let answer = post(entry, path, &[], "{}").await;
            assert_eq!(answer.status, StatusCode::OK, "{protocol:?} {path}");
            assert_eq!(answer.json()["key"], "");
            *by_service
                .entry(answer.json()["service"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        assert_eq!(
            by_service.values().copied().collect::<Vec<_>>(),
            [2, 2],
            "round-robin over both services ({protocol:?}): {by_service:?}"
        );
        let mut library = std::collections::BTreeSet::new();
        for _ in 0..2 {
            let answer = entry
                .router()
                .send(Message::keyless("work", json!({})))
                .await
                .unwrap();
            library.insert(answer["service"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            library.len(),
            2,
            "the library's keyless sends take turns too"
        );
        // A key in the query, as the original took it, is a key.
        let keyed = post(entry, "/api/work?partitionKey=alice", &[], "{}").await;
        assert_eq!(keyed.json()["key"], "alice");
        let missing = post(entry, "/api/nowhere", &[], "{}").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_headers_reach_rust_handlers_across_a_forward() {
    for protocol in PROTOCOLS {
        let entry = entry(protocol).await;
        let owner = meshage::init(gossip(&seed(&entry)), "127.0.0.1:0")
            .register("orders", seen)
            .register_named_handler("orders", "create", Arc::new(Created))
            .config(config(protocol))
            .start()
            .await
            .unwrap();
        let nodes = [entry, owner];
        wait_converged(&nodes, 1).await;
        let entry = &nodes[0];

        // The stream's handler sees the client's headers, without hop-by-hop ones (and those
        // `Connection` names) or meshage's own.
        let headers = [
            ("accept-language", "fr-CH"),
            ("authorization", "Bearer handler-secret"),
            ("connection", "x-private"),
            ("x-private", "hop"),
            ("x-meshage-trace", "00c0ffee00c0ffee"),
        ];
        let answer = post(entry, "/api/orders/k1", &headers, r#"{"a":1}"#).await;
        assert_eq!(answer.status, StatusCode::OK, "{protocol:?}");
        let body = answer.json();
        assert_eq!(body["acceptLanguage"], "fr-CH", "{protocol:?}: {body}");
        assert_eq!(body["authorization"], "Bearer handler-secret");
        assert_eq!(body["private"], Value::Null, "named in Connection");
        assert_eq!(body["host"], Value::Null);
        assert_eq!(body["trace"], Value::Null, "meshage's own");
        assert_eq!(body["name"], Value::Null);

        // A name in the query or in the body: the named handler, its status and headers.
        for (path, data) in [
            ("/api/orders/k2?messageName=create", "{}"),
            (
                "/api/orders/k2",
                r#"{"x":[1,{"name":"inner"}],"name":"create"}"#,
            ),
        ] {
            let answer = post(entry, path, &[], data).await;
            assert_eq!(answer.status, StatusCode::CREATED, "{protocol:?} {path}");
            assert_eq!(answer.json(), json!({"created": "create"}));
            assert_eq!(answer.headers["location"], "/orders/7");
            assert_ne!(
                answer
                    .headers
                    .get("connection")
                    .map(|v| v.to_str().unwrap()),
                Some("close"),
                "a handler's hop-by-hop header stays behind"
            );
        }
        // Another name, or a name that is no string, falls back to the stream's handler.
        let other = post(entry, "/api/orders/k3?messageName=other%20name", &[], "{}").await;
        assert_eq!(other.json()["name"], "other name", "{protocol:?}");
        let number = post(entry, "/api/orders/k3", &[], r#"{"name": 5}"#).await;
        assert_eq!(number.json()["name"], Value::Null);
        // The query wins over the body, and a keyless send carries its name too.
        let both = post(entry, "/api/orders?messageName=q", &[], r#"{"name":"b"}"#).await;
        assert_eq!(both.json()["name"], "q");
        // The library's names.
        let answer = entry
            .router()
            .send(Message::new("orders", "k4", json!({})).named("create"))
            .await
            .unwrap();
        assert_eq!(answer, json!({"created": "create"}));
    }
}

/// An HTTP handler that answers what it saw of the message's name and the client's headers,
/// and sets headers of its own.
async fn http_handler() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                    };
                    let body = json!({
                        "name": header("x-message-name"),
                        "acceptLanguage": header("accept-language"),
                        "stream": header("x-stream"),
                        "hop": header("x-meshage-hop"),
                    });
                    let _ = request.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(202)
                            .header("content-type", "application/json")
                            .header("x-handler", "python-ish")
                            .header("keep-alive", "timeout=1")
                            .body(Full::new(Bytes::from(body.to_string())))
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_headers_reach_http_handlers_across_a_forward() {
    let (url, task) = http_handler().await;
    for protocol in PROTOCOLS {
        let entry = entry(protocol).await;
        let upstream = HttpUpstream::new(&url, UpstreamConfig::default()).unwrap();
        let owner = meshage::init(gossip(&seed(&entry)), "127.0.0.1:0")
            .register_upstream("py", upstream)
            .config(config(protocol))
            .start()
            .await
            .unwrap();
        let nodes = [entry, owner];
        wait_converged(&nodes, 1).await;
        let answer = post(
            &nodes[0],
            "/api/py/k",
            &[("accept-language", "de")],
            r#"{"name":"läuft"}"#,
        )
        .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{protocol:?}");
        assert_eq!(
            answer.json(),
            json!({"name": "l%C3%A4uft", "acceptLanguage": "de", "stream": "py", "hop": null}),
            "{protocol:?}: the name percent-encoded, as the stream and key are"
        );
        assert_eq!(answer.headers["x-handler"], "python-ish");
        assert!(!answer.headers.contains_key("keep-alive"));
    }
    task.abort();
}

/// A handler that counts its messages and holds each until `open` is set.
fn gated(count: Arc<AtomicUsize>, open: Arc<tokio::sync::Notify>) -> impl Handler {
    struct Gated(Arc<AtomicUsize>, Arc<tokio::sync::Notify>);
    impl Handler for Gated {
        fn handle(&self, _: Payload, _: Header) -> BoxFuture<'static, Result<Reply, HandlerError>> {
            let (count, open) = (self.0.clone(), self.1.clone());
            Box::pin(async move {
                open.notified().await;
                count.fetch_add(1, Ordering::SeqCst);
                Reply::json(&json!({}))
            })
        }
    }
    Gated(count, open)
}

/// The value of the metric line that starts with `series`.
async fn metric(node: &Node, series: &str) -> u64 {
    let text = Http::default()
        .get(&format!("http://{}/metrics", node.local_addr()))
        .await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_answers_202_delivers_later_and_is_bounded() {
    for protocol in PROTOCOLS {
        let entry = meshage::init(gossip(&[]), "127.0.0.1:0")
            .config(config(protocol).background_limit(2))
            .start()
            .await
            .unwrap();
        let (count, open) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(tokio::sync::Notify::new()),
        );
        let owner = meshage::init(gossip(&seed(&entry)), "127.0.0.1:0")
            .register_handler("jobs", Arc::new(gated(count.clone(), open.clone())))
            .config(config(protocol))
            .start()
            .await
            .unwrap();
        let nodes = [entry, owner];
        wait_converged(&nodes, 1).await;
        let entry = &nodes[0];

        // Two are taken at once, with their trace ids; the third is above the bound.
        for n in 0..2 {
            let answer = post(entry, &format!("/api/jobs/k{n}?wait=false"), &[], "{}").await;
            assert_eq!(answer.status, StatusCode::ACCEPTED, "{protocol:?}");
            let trace = answer.json()["trace"].as_str().unwrap().to_owned();
            assert_eq!(answer.headers["x-meshage-trace"], trace.as_str());
        }
        let refused = post(entry, "/api/jobs/k3?wait=false", &[], "{}").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers["retry-after"], "1");
        assert_eq!(count.load(Ordering::SeqCst), 0, "held by the handler");
        // Released: both delivered, and counted.
        let until = Instant::now() + Duration::from_secs(10);
        while count.load(Ordering::SeqCst) < 2 && Instant::now() < until {
            open.notify_waiters();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count.load(Ordering::SeqCst), 2, "{protocol:?}");
        let delivered = r#"meshage_background_total{outcome="delivered"}"#;
        wait_until_async(Duration::from_secs(5), "both counted delivered", || async {
            metric(entry, delivered).await == 2
        })
        .await;
        assert_eq!(
            metric(entry, r#"meshage_background_total{outcome="refused"}"#).await,
            1
        );

        // A message nobody can take fails in the background, counted, within its deadline.
        let answer = post(entry, "/api/nowhere/k?wait=false&timeout=300", &[], "{}").await;
        assert_eq!(answer.status, StatusCode::ACCEPTED);
        let failed = r#"meshage_background_total{outcome="failed"}"#;
        wait_until_async(Duration::from_secs(5), "the failure counted", || async {
            metric(entry, failed).await == 1
        })
        .await;

        // The library's fire and forget, then a graceful shutdown that waits for it.
        let options = SendOptions::default().no_wait(true);
        let before = count.load(Ordering::SeqCst);
        let answer = entry
            .router()
            .send_with(Message::keyless("jobs", json!({})), options)
            .await
            .unwrap();
        assert!(answer["trace"].is_string(), "{answer}");
        let [entry, owner] = nodes;
        let opener = tokio::spawn({
            let open = open.clone();
            async move {
                loop {
                    open.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        entry.shutdown().await.unwrap();
        assert_eq!(
            count.load(Ordering::SeqCst),
            before + 1,
            "drained at shutdown"
        );
        opener.abort();
        owner.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_in_the_query_bounds_the_request_as_the_header_does() {
    let entry = entry(PeerProtocol::Link).await;
    let never = Arc::new(tokio::sync::Notify::new());
    let owner = meshage::init(gossip(&seed(&entry)), "127.0.0.1:0")
        .register_handler(
            "slow",
            Arc::new(gated(Arc::new(AtomicUsize::new(0)), never.clone())),
        )
        .start()
        .await
        .unwrap();
    let nodes = [entry, owner];
    wait_converged(&nodes, 1).await;
    for (path, headers) in [
        ("/api/slow/k?timeout=200", &[][..]),
        (
            "/api/slow/k?timeout=200",
            &[("x-request-timeout", "5000")][..],
        ),
        (
            "/api/slow/k?timeout=5000",
            &[("x-request-timeout", "200")][..],
        ),
    ] {
        let started = Instant::now();
        let answer = post(&nodes[0], path, headers, "{}").await;
        assert_eq!(
            answer.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{path} {headers:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the smaller wins: {:?}",
            started.elapsed()
        );
    }
    let bad = post(&nodes[0], "/api/slow/k?timeout=soon", &[], "{}").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

/// What a handler saw of the client's `x-big-*` headers: how many, and their bytes.
async fn big_headers(_data: Value, header: Header) -> Result<Value, HandlerError> {
    let big: Vec<usize> = header
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-big-"))
        .map(|(_, value)| value.len())
        .collect();
    Ok(json!({ "count": big.len(), "bytes": big.iter().sum::<usize>() }))
}

/// Headers past what a link frame holds (64 KiB) reach the owner's handler whole: such a
/// request goes over HTTP instead of the link, and the next, small one is served as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_past_a_link_frames_bound_reach_the_handler_whole() {
    let entry = entry(PeerProtocol::Link).await;
    let owner = meshage::init(gossip(&seed(&entry)), "127.0.0.1:0")
        .register("big", big_headers)
        .start()
        .await
        .unwrap();
    let nodes = [entry, owner];
    wait_converged(&nodes, 1).await;
    let value = "v".repeat(2000);
    let names: Vec<String> = (0..40).map(|n| format!("x-big-{n}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    let answer = post(&nodes[0], "/api/big/k", &headers, "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"count": 40, "bytes": 40 * 2000}));
    let small = post(&nodes[0], "/api/big/k", &headers[..2], "{}").await;
    assert_eq!(small.json(), json!({"count": 2, "bytes": 2 * 2000}));
}
