//! W3C Trace Context through real sockets: a request's `traceparent` and `tracestate` are kept
//! across the forward (over the peer link and over HTTP), reach the HTTP handler that runs it,
//! and come back in the answer; a malformed one starts a new trace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshage::{HttpUpstream, Node, NodeConfig, PeerProtocol, UpstreamConfig};
use tokio::net::TcpListener;

use crate::common::{gossip, wait_until, Http};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// The trace headers each call to the handler brought: `(traceparent, tracestate)`, each
/// value of a header sent more than once joined with ` | `.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// An HTTP handler that answers `{}` and remembers the trace headers of each message.
async fn handler(seen: Seen) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        // Every value, so that a header sent twice (the client's and the
                        // node's) shows: the handler gets one of each.
                        let header = |name: &str| {
                            let values: Vec<&str> = request
                                .headers()
                                .get_all(name)
                                .iter()
                                .map(|v| v.to_str().unwrap())
                                .collect();
                            (!values.is_empty()).then(|| values.join(" | "))
                        };
                        if request.method() == Method::POST {
                            seen.lock()
                                .unwrap()
                                .push((header("traceparent"), header("tracestate")));
                        }
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, task)
}

/// A node with no service that forwards by `protocol`, and one whose only service, `traced`,
/// is the handler at `url`; once the first routes to it.
async fn two_nodes(protocol: PeerProtocol, url: &str) -> (Node, Node) {
    let config = NodeConfig::default().peer_protocol(protocol);
    let sender = meshage::init(gossip(&[]), "127.0.0.1:0")
        .config(config)
        .start()
        .await
        .unwrap();
    let upstream = HttpUpstream::new(url, UpstreamConfig::default().health(None)).unwrap();
    let owner = meshage::init(gossip(&[sender.seed_address().unwrap()]), "127.0.0.1:0")
        .register_upstream("traced", upstream)
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the sender sees the service",
        || sender.router().table().owner("traced", "k").is_some(),
    )
    .await;
    (sender, owner)
}

/// `(version, trace id, parent id, flags)` of a `traceparent`, checked for W3C's form.
fn parts(traceparent: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    let hex = |s: &str, len: usize| {
        assert!(
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{traceparent}"
        );
        assert!(s.bytes().any(|b| b != b'0'), "{traceparent}: not all zero");
        s.to_owned()
    };
    assert_eq!(parts[0], "00", "{traceparent}");
    (
        parts[0].to_owned(),
        hex(parts[1], 32),
        hex(parts[2], 16),
        parts[3].to_owned(),
    )
}

async fn a_traceparent_is_kept_across_the_forward(protocol: PeerProtocol) {
    let seen = Seen::default();
    let (url, task) = handler(seen.clone()).await;
    let (sender, owner) = two_nodes(protocol, &url).await;
    let http = Http::default();
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let answer = http
        .request(
            Method::POST,
            &format!("{}/api/traced/k", sender.endpoint()),
            &[("traceparent", &traceparent), ("tracestate", STATE)],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let (_, trace, parent, flags) = parts(answer.headers["traceparent"].to_str().unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(
        parent, PARENT,
        "the answer names the node's span, not the caller's"
    );
    assert_eq!(
        answer.headers["x-meshage-trace"],
        &TRACE[16..],
        "X-Meshage-Trace shows the low 64 bits"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (handler_parent, handler_state) = &seen[0];
    let (_, trace, handler_span, flags) = parts(handler_parent.as_deref().expect("a traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(handler_span, PARENT);
    assert_ne!(handler_span, parent, "the owner's span, not the sender's");
    assert_eq!(handler_state.as_deref(), Some(STATE));
    owner.shutdown().await.unwrap();
    sender.shutdown().await.unwrap();
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_is_kept_over_the_link_and_reaches_the_handler() {
    a_traceparent_is_kept_across_the_forward(PeerProtocol::Link).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_is_kept_over_http_and_reaches_the_handler() {
    a_traceparent_is_kept_across_the_forward(PeerProtocol::Http1).await;
}

/// A request without a trace context, or with one that is not W3C's, starts a new trace: the
/// answer and the handler see the same new id. An `X-Meshage-Trace` is the low 64 bits of the
/// trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let seen = Seen::default();
    let (url, task) = handler(seen.clone()).await;
    let (sender, owner) = two_nodes(PeerProtocol::Link, &url).await;
    let http = Http::default();
    let cases: [&[(&str, &str)]; 5] = [
        &[],
        &[(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        )],
        &[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
        &[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            ),
            ("tracestate", STATE),
        ],
        &[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        )],
    ];
    let mut traces = Vec::new();
    for (n, headers) in cases.iter().enumerate() {
        let answer = http
            .request(
                Method::POST,
                &format!("{}/api/traced/k", sender.endpoint()),
                headers,
                "{}",
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let (_, trace, _, flags) = parts(answer.headers["traceparent"].to_str().unwrap());
        assert_ne!(trace, TRACE, "case {n}");
        assert_eq!(flags, "01", "a new trace is sampled");
        let (handler_parent, handler_state) = seen.lock().unwrap()[n].clone();
        assert_eq!(parts(&handler_parent.unwrap()).1, trace, "case {n}");
        assert_eq!(
            handler_state, None,
            "a tracestate without a valid traceparent is dropped"
        );
        traces.push(trace);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), cases.len(), "each a trace of its own");

    let answer = http
        .request(
            Method::POST,
            &format!("{}/api/traced/k", sender.endpoint()),
            &[("x-meshage-trace", "c0ffee")],
            "{}",
        )
        .await
        .unwrap();
    let (_, trace, _, _) = parts(answer.headers["traceparent"].to_str().unwrap());
    assert_eq!(trace, "00000000000000000000000000c0ffee");
    assert_eq!(answer.headers["x-meshage-trace"], "0000000000c0ffee");
    assert_eq!(
        parts(seen.lock().unwrap()[cases.len()].0.as_deref().unwrap()).1,
        trace
    );
    owner.shutdown().await.unwrap();
    sender.shutdown().await.unwrap();
    task.abort();
}
