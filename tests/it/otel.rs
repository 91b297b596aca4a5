//! OpenTelemetry export (feature `otel`) against a real OTLP/HTTP receiver: two `meshage node`
//! processes export a forwarded request's spans; they share the trace id, the caller's
//! `traceparent` is their root's parent, and the owner's `receive` is the child of the sender's
//! `forward`. The batch delay is a minute, so the spans arrive only because a stopping node
//! flushes them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use tokio::net::TcpListener;

use crate::common::process::{meshage_node_env, NodeProc};
use crate::common::{wait_until, wait_until_async, Http};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace: String,
    span: String,
    /// Empty for a root span.
    parent: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver on a port of its own: `POST /v1/traces` with protobuf bodies.
async fn receiver() -> (
    String,
    Arc<Mutex<Vec<Exported>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let got = spans.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let got = got.clone();
                    async move {
                        assert_eq!(request.uri().path(), "/v1/traces");
                        assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                        let body = request.into_body().collect().await?.to_bytes();
                        let export =
                            ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                        for resource in export.resource_spans {
                            let service = resource
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|a| a.key == "service.name")
                                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                                    AnyValue::StringValue(s) => Some(s.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                                got.lock().unwrap().push(Exported {
                                    service: service.clone(),
                                    name: span.name,
                                    trace: hex(&span.trace_id),
                                    span: hex(&span.span_id),
                                    parent: hex(&span.parent_span_id),
                                });
                            }
                        }
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, spans, task)
}

/// Stops `node` as an operator does (SIGTERM): it drains, flushes its spans and exits.
fn stop(node: &NodeProc) {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(node.proc.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_requests_spans_on_two_nodes_form_one_trace() {
    let (url, spans, task) = receiver().await;
    let env = |service: &'static str| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_SERVICE_NAME", service),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ]
    };
    let args = ["--echo", "echo"];
    let a = meshage_node_env("node a", &[], &args, &env("node-a"));
    let b = meshage_node_env("node b", &[&a.seed], &args, &env("node-b"));
    let http = Http::default();
    let services = |url: String| {
        let http = http.clone();
        async move {
            let answer = http.get(&format!("{url}/api/services")).await.json();
            answer.as_array().cloned().unwrap_or_default()
        }
    };
    wait_until_async(
        Duration::from_secs(10),
        "node a lists both services",
        || {
            let list = services(a.endpoint.clone());
            async move { list.await.len() == 2 }
        },
    )
    .await;
    let b_services: Vec<String> = services(a.endpoint.clone())
        .await
        .iter()
        .filter(|s| s["node"] == b.id.as_str())
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    // A key that node b owns, asked of node a with the caller's trace context.
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let mut forwarded = None;
    for i in 0..64 {
        let answer = http
            .request(
                Method::POST,
                &format!("{}/api/echo/key-{i}", a.endpoint),
                &[("traceparent", &traceparent)],
                "{}",
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        let owner = answer.headers["x-service-id"].to_str().unwrap();
        if b_services.iter().any(|s| s == owner) {
            forwarded = Some(answer);
            break;
        }
    }
    let answer = forwarded.expect("some key of 64 is owned by node b");
    let answered = answer.headers["traceparent"].to_str().unwrap().to_owned();
    // One request with no trace context: the trace is the one the answer names.
    let fresh = http
        .request(
            Method::POST,
            &format!("{}/api/echo/k", b.endpoint),
            &[],
            "{}",
        )
        .await
        .unwrap();
    let fresh_trace = fresh.headers["traceparent"].to_str().unwrap()[3..35].to_owned();
    // The caller did not sample this one: neither node exports it (parent-based sampling).
    let unsampled = http
        .request(
            Method::POST,
            &format!("{}/api/echo/k", a.endpoint),
            &[("traceparent", &format!("00-{UNSAMPLED}-{PARENT}-00"))],
            "{}",
        )
        .await
        .unwrap();
    assert!(unsampled.headers["traceparent"]
        .to_str()
        .unwrap()
        .ends_with("-00"));

    stop(&a);
    stop(&b);
    wait_until(
        Duration::from_secs(15),
        "both nodes' spans are exported",
        || {
            let spans = spans.lock().unwrap();
            let on = |service: &str| {
                spans
                    .iter()
                    .filter(|s| s.trace == TRACE && s.service == service)
                    .count()
            };
            on("node-a") >= 3 && on("node-b") >= 3 && spans.iter().any(|s| s.trace == fresh_trace)
        },
    )
    .await;
    let spans = spans.lock().unwrap().clone();
    // Node a ran some of the keys tried before itself: the one forward is the request's.
    let forwards: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.trace == TRACE && s.name == "forward")
        .collect();
    assert_eq!(forwards.len(), 1, "{spans:#?}");
    let a_forward = forwards[0].clone();
    let by_id: HashMap<&str, &Exported> = spans.iter().map(|s| (s.span.as_str(), s)).collect();
    let parent_of = |span: &Exported| -> Exported {
        (*by_id
            .get(span.parent.as_str())
            .unwrap_or_else(|| panic!("no parent of {span:?}: {spans:#?}")))
        .clone()
    };
    let child_of = |span: &Exported| -> Exported {
        let children: Vec<&Exported> = spans.iter().filter(|s| s.parent == span.span).collect();
        assert_eq!(children.len(), 1, "one child of {span:?}: {spans:#?}");
        children[0].clone()
    };
    let a_route = parent_of(&a_forward);
    let a_receive = parent_of(&a_route);
    let b_receive = child_of(&a_forward);
    let b_route = child_of(&b_receive);
    let b_handle = child_of(&b_route);
    let chain = [
        &a_receive, &a_route, &a_forward, &b_receive, &b_route, &b_handle,
    ];
    let names: Vec<(&str, &str)> = chain
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("node-a", "receive"),
            ("node-a", "route"),
            ("node-a", "forward"),
            ("node-b", "receive"),
            ("node-b", "route"),
            ("node-b", "handle"),
        ],
        "receive -> route -> forward on node a, then receive -> route -> handle on node b"
    );
    assert!(
        chain.iter().all(|s| s.trace == TRACE),
        "one trace: {chain:#?}"
    );
    assert_eq!(a_receive.parent, PARENT, "the caller's span is the parent");
    assert_eq!(
        answered,
        format!("00-{TRACE}-{}-01", a_receive.span),
        "the answer names node a's span"
    );
    // It may have been forwarded too: its root is node b's `receive`, the one the answer names.
    let roots: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.trace == fresh_trace && s.parent.is_empty())
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "a request without a trace context starts one: {spans:#?}"
    );
    assert_eq!(
        (roots[0].service.as_str(), roots[0].name.as_str()),
        ("node-b", "receive")
    );
    assert_eq!(
        &fresh.headers["traceparent"].to_str().unwrap()[36..52],
        roots[0].span
    );
    assert!(
        !spans.iter().any(|s| s.trace == UNSAMPLED),
        "a request its caller did not sample is not exported"
    );
    task.abort();
}

/// A protocol meshage cannot export over is refused at start, with the variable named.
#[test]
fn an_unsupported_protocol_is_refused_at_start() {
    let run = crate::common::process::meshage_cli(
        &["node", "--http-port", "0", "--cluster-port", "0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
        None,
    );
    assert_ne!(run.code, 0);
    assert!(
        run.stderr
            .contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"),
        "{}",
        run.stderr
    );
}
