//! `HttpUpstream` as a library user sees it: what reaches the upstream, what comes back, and
//! health checks that withdraw and restore a service, against a test upstream on a real socket;
//! and upstreams over HTTPS, verified against a CA, in the library and behind `meshage node
//! --handler-ca`.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshage::{
    ClientTls, Handler, HandlerError, Header, HealthConfig, HttpUpstream, Payload, Reply,
    UpstreamConfig,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::common::process::meshage_node;
use crate::common::{acceptor, gossip, wait_until, wait_until_async, Http, TestCa};

/// A test upstream. `POST /echo` answers what it received; `/big`, [`BIG_ANSWER`]; other
/// paths answer as their names say; `GET` (the health check) answers the status in `health`.
struct TestUpstream {
    base: String,
    health: Arc<AtomicU16>,
    /// Connections accepted (TLS ones once their handshake passed).
    connections: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(request: Request<Incoming>, health: Arc<AtomicU16>) -> Response<Full<Bytes>> {
    let reply = |status: u16, body: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    };
    if request.method() == http::Method::GET {
        return reply(health.load(Ordering::SeqCst), r#"{"status":"?"}"#);
    }
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    match path.as_str() {
        "/echo" => reply(
            200,
            &json!({
                "stream": header("x-stream"),
                "key": header("x-partition-key"),
                "service": header("x-service-id"),
                "contentType": header("content-type"),
                "body": String::from_utf8_lossy(&body),
            })
            .to_string(),
        ),
        "/reject" => reply(422, r#"{"error":"nope","field":"x"}"#),
        "/text404" => Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"no such thing")))
            .unwrap(),
        "/boom" => reply(500, r#"{"error":"db down"}"#),
        "/notjson" => reply(200, "hello"),
        "/big" => reply(200, &BIG_ANSWER),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            reply(200, "{}")
        }
        _ => reply(404, r#"{"error":"unknown path"}"#),
    }
}

/// How many strings `/big` answers with.
const BIG_PIECES: usize = 64;

/// `/big`'s answer: a JSON object of [`BIG_PIECES`] strings of 1 KiB each, more than one
/// read brings in.
static BIG_ANSWER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let piece = format!("\"{}\"", "x".repeat(1024));
    format!("{{\"pieces\":[{}]}}", vec![piece; BIG_PIECES].join(","))
});

async fn test_upstream() -> TestUpstream {
    serve_upstream(None).await
}

/// A test upstream over HTTPS, presenting a certificate of `tls`.
async fn https_upstream(tls: TlsAcceptor) -> TestUpstream {
    serve_upstream(Some(tls)).await
}

async fn serve_upstream(tls: Option<TlsAcceptor>) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr().unwrap());
    let health = Arc::new(AtomicU16::new(200));
    let connections = Arc::new(AtomicU16::new(0));
    let (h, counted) = (health.clone(), connections.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (h, tls, counted) = (h.clone(), tls.clone(), counted.clone());
            tokio::spawn(async move {
                let service = service_fn(move |r| {
                    let h = h.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(r, h).await) }
                });
                let http = http1::Builder::new();
                match tls {
                    Some(tls) => {
                        // A client that does not trust the certificate hangs up here.
                        if let Ok(stream) = tls.accept(stream).await {
                            counted.fetch_add(1, Ordering::SeqCst);
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    TestUpstream {
        base,
        health,
        connections,
        task,
    }
}

fn header(key: &str) -> Header {
    Header {
        service_id: Arc::from("svc-1"),
        stream: Arc::from("orders"),
        partition_key: Arc::from(key),
        name: None,
        previous_owner: None,
        headers: Default::default(),
    }
}

fn upstream(url: &str) -> HttpUpstream {
    HttpUpstream::new(
        url,
        UpstreamConfig::default()
            .timeout(Duration::from_millis(500))
            .health(None),
    )
    .unwrap()
}

async fn call(url: &str, body: &'static [u8], key: &str) -> Result<Reply, HandlerError> {
    let payload = Payload {
        body: Bytes::from_static(body),
        // What curl's `-d` declares; the upstream is told the truth.
        content_type: Some("application/x-www-form-urlencoded".into()),
    };
    upstream(url).handle(payload, header(key)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_bytes_and_headers_and_its_answer_passes_through() {
    let up = test_upstream().await;
    let echo = format!("{}/echo", up.base);

    let reply = call(&echo, b"{\"b\": 1,   \"a\": [1,2]}", "a b/ü")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let seen: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        seen["body"], "{\"b\": 1,   \"a\": [1,2]}",
        "bytes, not re-encoded"
    );
    assert_eq!(seen["stream"], "orders");
    assert_eq!(
        seen["key"], "a%20b%2F%C3%BC",
        "percent-encoded like a path segment"
    );
    assert_eq!(seen["service"], "svc-1");
    assert_eq!(seen["contentType"], "application/json");

    let reply = call(&echo, b"", "k").await.unwrap();
    let seen: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(seen["body"], "{}", "an empty message is {{}}");

    let reply = call(&format!("{}/reject", up.base), b"{}", "k")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        serde_json::from_slice::<Value>(&reply.body).unwrap(),
        json!({"error": "nope", "field": "x"})
    );

    let e = call(&format!("{}/text404", up.base), b"{}", "k")
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.message.as_str()),
        (StatusCode::NOT_FOUND, "no such thing")
    );

    let e = call(&format!("{}/boom", up.base), b"{}", "k")
        .await
        .unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    assert!(
        e.message.contains("500") && e.message.contains("db down"),
        "{e}"
    );

    let e = call(&format!("{}/notjson", up.base), b"{}", "k")
        .await
        .unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    assert!(e.message.contains("not JSON"), "{e}");

    let started = Instant::now();
    let e = call(&format!("{}/slow", up.base), b"{}", "k")
        .await
        .unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    assert!(e.message.contains("did not answer within"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let e = call(&format!("http://{closed}/"), b"{}", "k")
        .await
        .unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    assert!(e.message.contains("unreachable"), "{e}");

    assert!(HttpUpstream::new("ftp://example.com/", UpstreamConfig::default()).is_err());
}

/// An upstream over HTTPS whose certificate verifies against `ca` (its name, too).
fn https(url: &str, ca: Option<&TestCa>) -> HttpUpstream {
    HttpUpstream::new(
        url,
        UpstreamConfig::default()
            .timeout(Duration::from_secs(2))
            .health(Some(
                HealthConfig::default().timeout(Duration::from_secs(2)),
            ))
            .tls(ca.map(|ca| ClientTls::from_ca_pem(ca.pem.as_bytes()).unwrap())),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_their_ca_and_keep_their_connections() {
    let ca = TestCa::new("meshage handler test CA");
    let up = https_upstream(acceptor(&ca.issue(&["127.0.0.1"]))).await;
    let echo = format!("{}/echo", up.base);
    let payload = || Payload {
        body: Bytes::from_static(b"{\"over\":\"tls\"}"),
        content_type: None,
    };
    let upstream = https(&echo, Some(&ca));
    for _ in 0..3 {
        let reply = upstream.handle(payload(), header("k")).await.unwrap();
        let seen: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(seen["body"], "{\"over\":\"tls\"}");
    }
    upstream
        .check()
        .await
        .expect("the health check passes over TLS");
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one TLS connection, handshaken once, serves every call"
    );

    // Another CA, the system's bundle, or a certificate for another name: no call goes out,
    // and the error says why.
    let other = TestCa::new("another CA");
    let misnamed = https_upstream(acceptor(&ca.issue(&["handlers.example"]))).await;
    let cases = [
        (https(&echo, Some(&other)), "UnknownIssuer"),
        (https(&echo, None), "UnknownIssuer"),
        (
            https(&format!("{}/echo", misnamed.base), Some(&ca)),
            "certificate not valid for name \"127.0.0.1\"",
        ),
    ];
    for (upstream, why) in cases {
        let e = upstream.handle(payload(), header("k")).await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert!(
            e.message.contains("is unreachable") && e.message.contains(why),
            "{e}"
        );
        let reason = upstream.check().await.unwrap_err();
        assert!(
            reason.contains("invalid peer certificate") && reason.contains(why),
            "{reason}"
        );
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    assert_eq!(misnamed.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meshage_binary_serves_https_handlers_that_verify_and_withdraws_those_that_do_not() {
    let ca = TestCa::new("meshage handler test CA");
    let good = https_upstream(acceptor(&ca.issue(&["127.0.0.1"]))).await;
    let other = TestCa::new("a CA the node does not trust");
    let bad = https_upstream(acceptor(&other.issue(&["127.0.0.1"]))).await;
    let ca_file = ca.write("handlers-ca.pem", &ca.pem);
    let orders = format!("orders={}/echo", good.base);
    let refunds = format!("refunds={}/echo", bad.base);
    let node = meshage_node(
        "node",
        &[],
        &[
            "--handler",
            &orders,
            "--handler",
            &refunds,
            "--handler-ca",
            ca_file.to_str().unwrap(),
            "--health-interval",
            "0.1",
        ],
    );
    let http = Http::default();
    let send = |stream: &'static str| {
        let (http, url) = (http.clone(), format!("{}/api/{stream}/k", node.endpoint));
        async move { http.post(&url, r#"{"n":1}"#).await }
    };
    wait_until_async(
        Duration::from_secs(10),
        "the verified handler is advertised",
        || async { send("orders").await.status == 200 },
    )
    .await;
    let answer = send("orders").await;
    assert_eq!(answer.json()["body"], r#"{"n":1}"#);

    // The handler whose certificate does not verify never passes a check: its service stays
    // withdrawn, and the log says why.
    wait_until(
        Duration::from_secs(10),
        "the log says why refunds waits",
        || {
            node.proc.output().lines().any(|l| {
                l.contains("handler is not healthy")
                    && l.contains(&bad.base)
                    && l.contains("invalid peer certificate: UnknownIssuer")
            })
        },
    )
    .await;
    assert_eq!(send("refunds").await.status, 404);
    assert_eq!(bad.connections.load(Ordering::SeqCst), 0);
}

/// An answer larger than one read is put back together whole; one larger than
/// `max_response` is a 502 that says so, not a truncated body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_read_whole_up_to_the_limit() {
    let up = test_upstream().await;
    let limited = |max_response| {
        HttpUpstream::new(
            &format!("{}/big", up.base),
            UpstreamConfig::default()
                .timeout(Duration::from_secs(5))
                .health(None)
                .max_response(max_response),
        )
        .unwrap()
    };
    let payload = || Payload {
        body: Bytes::from_static(b"{}"),
        content_type: None,
    };
    let reply = limited(BIG_ANSWER.len())
        .handle(payload(), header("k"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), BIG_ANSWER.len());
    let seen: Value = serde_json::from_slice(&reply.body).expect("the whole answer");
    assert_eq!(seen["pieces"].as_array().map(Vec::len), Some(BIG_PIECES));

    let e = limited(BIG_ANSWER.len() - 1)
        .handle(payload(), header("k"))
        .await
        .unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_GATEWAY);
    assert!(e.message.contains("length limit exceeded"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_upstream_is_withdrawn_and_restored_under_its_id() {
    let up = test_upstream().await;
    let config = UpstreamConfig::default().health(Some(
        HealthConfig::default()
            .interval(Duration::from_millis(100))
            .timeout(Duration::from_millis(500))
            .failures(2),
    ));
    let handler = HttpUpstream::new(&format!("{}/echo", up.base), config).unwrap();
    let first = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register_upstream("orders", handler)
        .start()
        .await
        .unwrap();
    let seed = vec![first.seed_address().unwrap()];
    let second = meshage::init(gossip(&seed), "127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let nodes = [first, second];
    let routable = |nodes: &[meshage::Node]| -> Vec<usize> {
        nodes
            .iter()
            .map(|n| n.router().table().services_of("orders").count())
            .collect()
    };
    wait_until(
        Duration::from_secs(10),
        "both nodes route to the upstream",
        || routable(&nodes) == [1, 1],
    )
    .await;
    let id = nodes[0].router().local_services()[0].id.to_string();
    let http = Http::default();
    let answer = http
        .post(&format!("{}/api/orders/k", nodes[1].endpoint()), "[7]")
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["body"], "[7]");

    up.health.store(503, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(5),
        "a 503 check withdraws the service",
        || routable(&nodes) == [0, 0],
    )
    .await;
    assert!(nodes[0].router().local_services().is_empty());
    assert_eq!(&*nodes[0].router().withdrawn_services()[0].id, id);
    let answer = http
        .post(&format!("{}/api/orders/k", nodes[1].endpoint()), "{}")
        .await;
    assert_eq!(answer.status, 404, "a withdrawn stream has no service");

    // Any status but 502-504 is healthy: the process is there.
    up.health.store(405, Ordering::SeqCst);
    wait_until(Duration::from_secs(5), "the service comes back", || {
        routable(&nodes) == [1, 1]
    })
    .await;
    for node in &nodes {
        assert!(node.router().table().service(&id).is_some(), "same id");
    }

    // Shutting down ends the health checks with the node.
    let [first, second] = nodes;
    tokio::time::timeout(Duration::from_secs(10), async {
        second.shutdown().await.unwrap();
        first.shutdown().await.unwrap();
    })
    .await
    .expect("nodes with health checks stop");
}
