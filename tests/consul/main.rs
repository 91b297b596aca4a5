//! The Consul backend: registrations in the original's format, joining the first seed, ACL
//! tokens, and a meshage node and an original node in one Consul sending every key to the same
//! service; the agent over HTTPS, and the token never showing. Runs against the in-process
//! stand-in agent (`stand_in.rs`), or against a real agent when `CONSUL_HTTP_ADDR` is set
//! (tests that need the stand-in's records say so and skip; the HTTPS ones always use the
//! stand-in). The behaviour every backend shares is the conformance suite
//! (`tests/common/conformance.rs`), run here as `conformance::*`, and over HTTPS as
//! `conformance_https::*`.
#![cfg(feature = "consul")]

/// The parts of the shared harness (`tests/common/`) this suite uses, each file whole.
#[path = "../common"]
mod common {
    mod certs;
    mod command;
    pub mod conformance;
    mod echo;
    mod http_client;
    mod http_shortcuts;
    mod proc;
    mod tls_server;
    mod wait;

    pub use certs::*;
    pub use command::*;
    pub use echo::*;
    pub use http_client::*;
    pub use proc::*;
    pub use tls_server::*;
    pub use wait::*;
}
mod stand_in;

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::conformance::{conformance_tests, Backend};
use common::*;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshage::{ClientTls, Cluster, ConsulCluster, ConsulConfig, HashRing, Node, NO_SEEDS};
use serde_json::{json, Value};
use stand_in::{parse_go_duration, Agent, ConsulStandIn};

/// Bounds every test. Logs go to the test's output when `RUST_LOG` is set.
async fn bounded(test: impl Future<Output = ()>) {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

fn stream_name() -> String {
    format!("echo-{}", &uuid::Uuid::new_v4().to_string()[..8])
}

fn config(agent: &Agent) -> ConsulConfig {
    ConsulConfig::default()
        .token(agent.token().map(Into::into))
        .check_interval(Duration::from_secs(1))
}

async fn node(agent: &Agent, stream: &str) -> Node {
    let cluster = ConsulCluster::new(agent.addr(), NO_SEEDS)
        .unwrap()
        .with_config(config(agent));
    meshage::init(cluster, "127.0.0.1:0")
        .register(stream, echo_by)
        .start()
        .await
        .expect("node starts")
}

fn ids(node: &Node, stream: &str) -> BTreeSet<String> {
    node.router()
        .table()
        .services_of(stream)
        .map(|s| s.id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_registered_as_the_original_registers_them() {
    bounded(async {
        let agent = Agent::start(None).await;
        let stream = stream_name();
        let node = node(&agent, &stream).await;
        let id = node.router().local_services()[0].id.to_string();
        let endpoint = node.endpoint().to_owned();
        let port = node.local_addr().port();

        let (status, services) = agent.call(Method::GET, "/v1/agent/services", None).await;
        assert_eq!(status, 200);
        let service = &services[&id];
        assert_eq!(service["ID"], id.as_str());
        assert_eq!(service["Service"], stream.as_str());
        assert_eq!(service["Address"], "127.0.0.1");
        assert_eq!(service["Port"], port);
        assert_eq!(
            service["Tags"],
            json!([format!("endpoint~http~{endpoint}")])
        );
        assert_eq!(service["Meta"]["meshage-node"], node.id());

        let (_, checks) = agent.call(Method::GET, "/v1/agent/checks", None).await;
        let check = checks
            .as_object()
            .unwrap()
            .values()
            .find(|c| c["ServiceID"] == id.as_str())
            .expect("the service has a check");
        if agent.stand_in().is_some() {
            let definition = &check["Definition"];
            assert_eq!(definition["HTTP"], format!("{endpoint}/api/health"));
            assert_eq!(
                definition["Interval"].as_str().and_then(parse_go_duration),
                Some(Duration::from_secs(1))
            );
            assert_eq!(
                definition["DeregisterCriticalServiceAfter"]
                    .as_str()
                    .and_then(parse_go_duration),
                Some(Duration::from_secs(60))
            );
        }
        // The agent runs the check against the node's /api/health, and it passes.
        wait_until_async(Duration::from_secs(10), "the check passes", || async {
            let (_, checks) = agent.call(Method::GET, "/v1/agent/checks", None).await;
            checks
                .as_object()
                .unwrap()
                .values()
                .any(|c| c["ServiceID"] == id.as_str() && c["Status"] == "passing")
        })
        .await;

        node.shutdown().await.unwrap();
        let (_, services) = agent.call(Method::GET, "/v1/agent/services", None).await;
        assert!(services.get(&id).is_none(), "deregistered on shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_joins_the_first_seed() {
    bounded(async {
        let agent = Agent::start(None).await;
        let Some(stand_in) = agent.stand_in() else {
            eprintln!("SKIPPED against a real agent: joining needs the stand-in's record");
            return;
        };
        let cluster = ConsulCluster::new(agent.addr(), ["10.1.1.1:8301", "10.1.1.2:8301"])
            .unwrap()
            .with_config(config(&agent));
        let node = meshage::init(cluster, "127.0.0.1:0").start().await.unwrap();
        assert_eq!(stand_in.joins(), ["10.1.1.1:8301"]);
        node.shutdown().await.unwrap();

        // Without seeds there is nothing to join.
        let other = ConsulStandIn::start(None).await;
        let cluster = ConsulCluster::new(other.addr, NO_SEEDS).unwrap();
        let node = meshage::init(cluster, "127.0.0.1:0").start().await.unwrap();
        assert!(other.joins().is_empty());
        node.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_token_is_sent_with_every_request() {
    bounded(async {
        if std::env::var("CONSUL_HTTP_ADDR").is_ok_and(|a| !a.is_empty()) {
            eprintln!("SKIPPED against a real agent: it needs an agent whose ACLs the test sets");
            return;
        }
        let agent = ConsulStandIn::start(Some("s3cr3t")).await;
        let stream = stream_name();
        let without = meshage::init(
            ConsulCluster::new(agent.addr, ["10.1.1.1:8301"]).unwrap(),
            "127.0.0.1:0",
        )
        .register(stream.clone(), echo_by)
        .start()
        .await;
        let error = without.err().expect("no token, no join");
        assert!(
            error.to_string().contains("403"),
            "the error says why: {error}"
        );
        assert!(agent.joins().is_empty());

        let with = meshage::init(
            ConsulCluster::new(agent.addr, ["10.1.1.1:8301"])
                .unwrap()
                .with_config(
                    ConsulConfig::default()
                        .token(Some("s3cr3t".into()))
                        .check_interval(Duration::from_secs(1)),
                ),
            "127.0.0.1:0",
        )
        .register(stream.clone(), echo_by)
        .start()
        .await
        .expect("the token opens the agent");
        assert_eq!(agent.joins(), ["10.1.1.1:8301"]);
        let id = with.router().local_services()[0].id.to_string();
        wait_until(
            Duration::from_secs(10),
            "the registered service passes",
            || agent.status(&id).as_deref() == Some("passing"),
        )
        .await;
        with.shutdown().await.unwrap();
        assert_eq!(agent.status(&id), None, "deregistered with the token");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_fails_when_the_agent_is_out_of_reach() {
    bounded(async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = ConsulCluster::new(format!("127.0.0.1:{port}"), NO_SEEDS).unwrap();
        let error = meshage::init(cluster, "127.0.0.1:0")
            .start()
            .await
            .err()
            .expect("the node does not start");
        assert!(error.to_string().contains("Consul"), "{error}");
    })
    .await;
}

/// An agent that answers with more than a node will read: the node stops reading at its bound
/// and fails to join, instead of holding whatever comes. A plain TCP server stands in for a
/// broken or hostile agent, which a real Consul agent cannot be made to be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_answer_past_the_bound_is_not_read_whole() {
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = socket.read(&mut head).await;
                    let len = 1usize << 30;
                    let _ = socket
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
                        )
                        .await;
                    let chunk = vec![b' '; 1 << 20];
                    while socket.write_all(&chunk).await.is_ok() {
                        counted.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        let cluster = ConsulCluster::new(addr.to_string(), NO_SEEDS).unwrap();
        let error = meshage::init(cluster, "127.0.0.1:0")
            .start()
            .await
            .err()
            .expect("the node does not start");
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(e) = source {
            chain.push_str(&format!(": {e}"));
            source = e.source();
        }
        assert!(chain.contains("length limit exceeded"), "{chain}");
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            sent < 256 << 20,
            "the node read {sent} bytes of a 1 GiB answer"
        );
    })
    .await;
}

/// A node of the original 0.3.8 as far as other nodes see it: `/api/health`, and
/// `POST /api/{stream}/{key}` answered with what the handler returns. It records the keys it
/// was sent and the `X-Service-ID` each named.
struct OriginalNode {
    endpoint: String,
    id: String,
    received: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl OriginalNode {
    async fn start(stream: &str) -> OriginalNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let id = uuid::Uuid::new_v4().to_string();
        let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let prefix = format!("/api/{stream}/");
        let (record, me) = (received.clone(), id.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (record, me, prefix) = (record.clone(), me.clone(), prefix.clone());
                connections.spawn(async move {
                    if !node_accepts(&mut socket).await {
                        return;
                    }
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let (record, me, prefix) = (record.clone(), me.clone(), prefix.clone());
                            async move {
                                let path = request.uri().path().to_owned();
                                let target = request
                                    .headers()
                                    .get("x-service-id")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned();
                                let body = request.into_body().collect().await.unwrap().to_bytes();
                                let answer = if path == "/api/health" {
                                    json!({"status": "up"})
                                } else if let Some(key) = path.strip_prefix(&prefix) {
                                    record.lock().unwrap().push((key.to_owned(), target));
                                    let data: Value =
                                        serde_json::from_slice(&body).unwrap_or(Value::Null);
                                    json!({"echoed": data, "by": me, "key": key})
                                } else {
                                    return Ok::<_, Infallible>(
                                        hyper::Response::builder()
                                            .status(404)
                                            .body(Full::new(Bytes::from_static(b"{}")))
                                            .unwrap(),
                                    );
                                };
                                Ok(hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap())
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        OriginalNode {
            endpoint,
            id,
            received,
            task,
        }
    }

    /// Registers with the agent exactly as the original's `ConsulCluster` registers a service.
    async fn register(&self, agent: &Agent, stream: &str) {
        let url = url_parts(&self.endpoint);
        let (status, body) = agent
            .call(
                Method::PUT,
                "/v1/agent/service/register",
                Some(json!({
                    "ID": self.id,
                    "Name": stream,
                    "Address": url.0,
                    "Port": url.1,
                    "Tags": [format!("endpoint~http~{}", self.endpoint)],
                    "Check": {
                        "HTTP": format!("{}/api/health", self.endpoint),
                        "Interval": "5s",
                        "Status": "critical",
                    },
                })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// The methods Node.js's HTTP parser knows (`http.METHODS`).
const NODE_METHODS: &[&str] = &[
    "ACL",
    "BIND",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LINK",
    "LOCK",
    "M-SEARCH",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "NOTIFY",
    "OPTIONS",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "PUT",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "TRACE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// Answers a connection's first bytes as the original's server (Node.js) does: a request
/// that does not start with a method it knows gets `400 Bad Request` at once and the
/// connection closes (Node's default `clientError` answer). hyper alone would wait for the end
/// of the line instead. Whether the connection goes on to HTTP.
async fn node_accepts(socket: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut buf = [0u8; 16];
    loop {
        let Ok(n) = socket.peek(&mut buf).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        let seen = &buf[..n];
        let fits = |m: &&str| {
            let line = format!("{m} ");
            let line = line.as_bytes();
            line.starts_with(seen) || seen.starts_with(line)
        };
        if !NODE_METHODS.iter().any(fits) {
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
            return false;
        }
        if NODE_METHODS
            .iter()
            .any(|m| seen.starts_with(format!("{m} ").as_bytes()))
        {
            return true;
        }
        // Not enough bytes to tell yet.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Drop for OriginalNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn url_parts(endpoint: &str) -> (String, u16) {
    let rest = endpoint.trim_start_matches("http://");
    let (host, port) = rest.rsplit_once(':').unwrap();
    (host.to_owned(), port.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshage_and_original_nodes_in_one_consul_send_every_key_to_the_same_service() {
    bounded(async {
        let agent = Agent::start(None).await;
        let stream = stream_name();
        let original = OriginalNode::start(&stream).await;
        original.register(&agent, &stream).await;
        let a = node(&agent, &stream).await;
        let b = node(&agent, &stream).await;

        let mut all: Vec<String> = vec![original.id.clone()];
        all.extend(a.router().local_services().iter().map(|s| s.id.to_string()));
        all.extend(b.router().local_services().iter().map(|s| s.id.to_string()));
        let expected: BTreeSet<String> = all.iter().cloned().collect();
        let took = wait_until(
            Duration::from_secs(15),
            "both meshage nodes route to all three services, the original's included",
            || ids(&a, &stream) == expected && ids(&b, &stream) == expected,
        )
        .await;
        eprintln!("the mixed cluster converged after {took:?}");
        let table = a.router().table();
        let theirs = table.service(&original.id).unwrap();
        assert_eq!(
            &*theirs.endpoint, original.endpoint,
            "the endpoint comes from the tag"
        );

        // The ring over all ids, as both the original and meshage build it.
        let ring = HashRing::new(&all);
        let http = Http::default();
        let mut to_original = HashMap::new();
        for i in 0..60 {
            let key = format!("user-{i}");
            let owner = ring.get(&key).unwrap();
            let via = if i % 2 == 0 { &a } else { &b };
            let answer = http
                .post(
                    &format!("{}/api/{stream}/{key}", via.endpoint()),
                    r#"{"n":1}"#,
                )
                .await;
            assert_eq!(answer.status, 200, "{key}: {:?}", answer.body);
            assert_eq!(
                answer.json()["by"],
                owner,
                "key {key} via {}",
                via.endpoint()
            );
            assert_eq!(answer.json()["echoed"], json!({"n": 1}));
            if owner == original.id {
                to_original.insert(key, owner.to_owned());
            }
        }
        assert!(
            !to_original.is_empty(),
            "some of 60 keys are the original's"
        );
        let received: HashMap<String, String> =
            original.received.lock().unwrap().iter().cloned().collect();
        assert_eq!(
            received, to_original,
            "the original got exactly its keys, each naming it in X-Service-ID"
        );

        let (status, _) = agent
            .call(
                Method::PUT,
                &format!("/v1/agent/service/deregister/{}", original.id),
                None,
            )
            .await;
        assert_eq!(status, 200);
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meshage_binary_runs_on_consul() {
    bounded(async {
        // The stand-in asks for a token, so the binary must pass CONSUL_HTTP_TOKEN on.
        let agent = match std::env::var("CONSUL_HTTP_ADDR") {
            Ok(addr) if !addr.is_empty() => Agent::start(None).await,
            _ => Agent::StandIn(ConsulStandIn::start(Some("t0ken")).await),
        };
        let url = agent.url();
        let (host, port) = url_parts(&url);
        let stream = stream_name();
        let start = |name: &str| {
            let mut command = common::meshage_command();
            command
                .args(["node", "--http-host", "127.0.0.1", "--http-port", "0"])
                .args(["--echo", &stream, "--check-interval", "1"])
                .env("CLUSTER_TYPE", "consul")
                .env("CLUSTER_HOST", &host)
                .env("CLUSTER_PORT", port.to_string());
            if let Some(token) = agent.token() {
                command.env("CONSUL_HTTP_TOKEN", token);
            }
            let proc = common::Proc::spawn(name, command);
            let line = proc.wait_line(Duration::from_secs(20), |l| l.starts_with("meshage node "));
            assert!(line.ends_with("consul membership"), "{line}");
            let endpoint = line
                .split_whitespace()
                .skip_while(|w| *w != "serving")
                .nth(1)
                .unwrap()
                .to_owned();
            (proc, endpoint)
        };
        let (_a, a) = start("node a");
        let (mut b_proc, b) = start("node b");
        let (_, services) = agent.call(Method::GET, "/v1/agent/services", None).await;
        let tags: BTreeSet<String> = services
            .as_object()
            .unwrap()
            .values()
            .filter(|s| s["Service"] == stream.as_str())
            .map(|s| s["Tags"][0].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            tags,
            BTreeSet::from([format!("endpoint~http~{a}"), format!("endpoint~http~{b}")])
        );
        let http = Http::default();
        let listed = |endpoint: String| {
            let http = http.clone();
            async move {
                let answer = http.get(&format!("{endpoint}/api/services")).await;
                answer.json().as_array().map_or(0, Vec::len)
            }
        };
        wait_until_async(
            Duration::from_secs(10),
            "each node lists both services",
            || async { listed(a.clone()).await == 2 && listed(b.clone()).await == 2 },
        )
        .await;
        b_proc.kill();
        let took = wait_until_async(
            Duration::from_secs(10),
            "the killed node's check fails and its service leaves",
            || async { listed(a.clone()).await == 1 },
        )
        .await;
        eprintln!("a killed meshage process was dropped after {took:?}");
        // The killed node never deregistered: its service stays, critical, until the agent
        // reaps it. Clean up for a shared real agent.
        let (_, services) = agent.call(Method::GET, "/v1/agent/services", None).await;
        for (id, service) in services.as_object().unwrap() {
            if service["Service"] == stream.as_str() {
                agent
                    .call(
                        Method::PUT,
                        &format!("/v1/agent/service/deregister/{id}"),
                        None,
                    )
                    .await;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_registered_again_when_the_agent_restarts_without_them() {
    bounded(async {
        if std::env::var("CONSUL_HTTP_ADDR").is_ok_and(|a| !a.is_empty()) {
            eprintln!("SKIPPED against a real agent: the test restarts the stand-in");
            return;
        }
        let agent = ConsulStandIn::start(None).await;
        let addr = agent.addr.to_string();
        let stream = stream_name();
        let cluster = ConsulCluster::new(&addr, NO_SEEDS).unwrap().with_config(
            ConsulConfig::default()
                .check_interval(Duration::from_secs(1))
                .resync_interval(Duration::from_millis(200)),
        );
        let node = meshage::init(cluster, "127.0.0.1:0")
            .register(stream.clone(), echo_by)
            .start()
            .await
            .unwrap();
        let first = node.router().local_services()[0].id.to_string();
        wait_until(Duration::from_secs(5), "the service passes", || {
            agent.status(&first).as_deref() == Some("passing")
        })
        .await;

        // The agent goes away; a registration meanwhile fails, and says so.
        agent.stop().await;
        let late = node
            .router()
            .register(stream.clone(), meshage::handler_fn(echo_by))
            .await;
        assert!(late.is_err(), "registering with the agent away reports it");
        let second = node
            .router()
            .local_services()
            .iter()
            .map(|s| s.id.to_string())
            .find(|id| *id != first)
            .unwrap();

        // It comes back with no state: both services are registered again.
        let agent = ConsulStandIn::start_on(&addr, None).await;
        let took = wait_until(
            Duration::from_secs(10),
            "both services are registered with the new agent and pass",
            || {
                agent.status(&first).as_deref() == Some("passing")
                    && agent.status(&second).as_deref() == Some("passing")
            },
        )
        .await;
        eprintln!("registered again {took:?} after the agent came back");
        wait_until(Duration::from_secs(5), "the node routes to both", || {
            ids(&node, &stream) == BTreeSet::from([first.clone(), second.clone()])
        })
        .await;
        node.shutdown().await.unwrap();
        assert_eq!(agent.status(&first), None);
        assert_eq!(agent.status(&second), None);
    })
    .await;
}

/// The token of the HTTPS tests: what they look for in everything a node shows.
const TOKEN: &str = "t0ken-5e2a9c-never-shown";

/// A stand-in agent that serves HTTPS only (and asks for `token`, if given), with a
/// certificate for 127.0.0.1 from a CA of its own, returned with it.
async fn https_agent(token: Option<&str>) -> (ConsulStandIn, TestCa) {
    let ca = TestCa::new("meshage Consul test CA");
    let agent = ConsulStandIn::start_tls(token, acceptor(&ca.issue(&["127.0.0.1"]))).await;
    (agent, ca)
}

/// Starts a node on `cluster`; the error's whole chain when it does not start.
async fn try_node(cluster: ConsulCluster) -> Result<Node, String> {
    meshage::init(cluster, "127.0.0.1:0")
        .start()
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_agent_is_reached_only_when_its_certificate_verifies() {
    bounded(async {
        let (agent, ca) = https_agent(Some(TOKEN)).await;
        let url = format!("https://{}", agent.addr);
        let with = |tls: Option<ClientTls>| {
            ConsulCluster::new(&url, NO_SEEDS).unwrap().with_config(
                ConsulConfig::default()
                    .token(Some(TOKEN.into()))
                    .tls(tls)
                    .check_interval(Duration::from_secs(1))
                    .request_timeout(Duration::from_secs(2)),
            )
        };
        let trusted = ClientTls::from_ca_pem(ca.pem.as_bytes()).unwrap();
        let cluster = with(Some(trusted));
        assert!(
            !format!("{cluster:?}").contains(TOKEN),
            "Debug shows the token: {cluster:?}"
        );
        let stream = stream_name();
        let node = meshage::init(cluster, "127.0.0.1:0")
            .register(stream.clone(), echo_by)
            .start()
            .await
            .expect("the agent's certificate verifies against its CA");
        let id = node.router().local_services()[0].id.to_string();
        wait_until(Duration::from_secs(10), "the service passes", || {
            agent.status(&id).as_deref() == Some("passing")
        })
        .await;
        node.shutdown().await.unwrap();
        assert_eq!(agent.status(&id), None, "deregistered over HTTPS");

        // Another CA, or the system's bundle, does not vouch for the agent's certificate.
        let other = TestCa::new("another CA");
        for tls in [ClientTls::from_ca_pem(other.pem.as_bytes()).ok(), None] {
            let error = try_node(with(tls))
                .await
                .err()
                .expect("not trusted, not joined");
            eprintln!("untrusted agent: {error}");
            assert!(error.contains("Consul agent"), "{error}");
            assert!(
                error.contains("invalid peer certificate: UnknownIssuer"),
                "the error says why: {error}"
            );
            assert!(!error.contains(TOKEN), "the error shows the token: {error}");
        }
        // Plain HTTP to an HTTPS port gets no answer that passes for one.
        let plain = ConsulCluster::new(agent.addr.to_string(), NO_SEEDS)
            .unwrap()
            .with_config(ConsulConfig::default().request_timeout(Duration::from_secs(2)));
        assert!(try_node(plain).await.is_err());
    })
    .await;
}

/// An agent (or whatever answers in its place) that quotes the token in a refusal: the node's
/// error says 403 and why, and shows `***` where the token was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_quotes_the_token_does_not_bring_it_into_errors() {
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = [0u8; 4096];
                    let _ = socket.read(&mut head).await;
                    let body = format!("ACL not found: token {TOKEN} is unknown");
                    let answer = format!(
                        "HTTP/1.1 403 Forbidden\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        let cluster = ConsulCluster::new(addr.to_string(), NO_SEEDS)
            .unwrap()
            .with_config(ConsulConfig::default().token(Some(TOKEN.into())));
        let error = try_node(cluster).await.err().expect("refused");
        assert!(error.contains("403"), "{error}");
        assert!(
            error.contains("ACL not found: token *** is unknown"),
            "{error}"
        );
        assert!(!error.contains(TOKEN), "{error}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meshage_binary_reaches_an_https_agent_and_never_shows_the_token() {
    bounded(async {
        let (agent, ca) = https_agent(Some(TOKEN)).await;
        let ca_file = ca.write("consul-ca.pem", &ca.pem);
        let stream = stream_name();
        let mut command = common::meshage_command();
        command
            .args(["node", "--http-host", "127.0.0.1", "--http-port", "0"])
            .args(["--echo", &stream, "--check-interval", "1"])
            .env("CLUSTER_TYPE", "consul")
            // The Consul CLI's variables: an address without a scheme, and SSL on.
            .env("CONSUL_HTTP_ADDR", agent.addr.to_string())
            .env("CONSUL_HTTP_SSL", "true")
            .env("CONSUL_CACERT", &ca_file)
            .env("CONSUL_HTTP_TOKEN", TOKEN)
            // Everything the node and its libraries log, to look for the token in.
            .env("RUST_LOG", "trace,chitchat=warn");
        let node = common::Proc::spawn("node", command);
        let line = node.wait_line(Duration::from_secs(20), |l| l.starts_with("meshage node "));
        let endpoint = line
            .split_whitespace()
            .skip_while(|w| *w != "serving")
            .nth(1)
            .unwrap()
            .to_owned();
        let http = Http::default();
        let services = http.get(&format!("{endpoint}/api/services")).await.json();
        let id = services[0]["id"].as_str().unwrap().to_owned();
        wait_until(
            Duration::from_secs(10),
            "the service is registered over HTTPS and passes",
            || agent.status(&id).as_deref() == Some("passing"),
        )
        .await;

        // The token is nowhere a node shows anything.
        for path in ["/api/status", "/metrics", "/", "/api/members"] {
            let answer = http.get(&format!("{endpoint}{path}")).await;
            assert_eq!(answer.status, 200, "{path}");
            let body = String::from_utf8_lossy(&answer.body);
            assert!(!body.contains(TOKEN), "{path} shows the token");
        }
        assert!(!node.output().contains(TOKEN), "the log shows the token");
        let help = common::meshage_command()
            .args(["node", "--help"])
            .env("CONSUL_HTTP_TOKEN", TOKEN)
            .env("MESHAGE_ETCD_PASSWORD", TOKEN)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains("CONSUL_HTTP_TOKEN") && help.contains("MESHAGE_ETCD_PASSWORD"));
        assert!(!help.contains(TOKEN), "--help shows the token");

        // A CA file with plain HTTP is a mistake the node refuses to start with.
        let output = common::meshage_command()
            .args(["node", "--http-host", "127.0.0.1", "--http-port", "0"])
            .env("CLUSTER_TYPE", "consul")
            .env("CONSUL_HTTP_ADDR", agent.addr.to_string())
            .env("CONSUL_CACERT", &ca_file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("CONSUL_HTTP_SSL"), "{stderr}");
    })
    .await;
}

/// The shared conformance suite's backend: the stand-in agent of the test's own (or the real
/// agent at `CONSUL_HTTP_ADDR`), with checks every second; or, for `conformance_https`, a
/// stand-in that serves HTTPS only and asks for a token.
struct ConsulBackend {
    agent: Agent,
    /// The agent's URL, and its CA, when it serves HTTPS.
    https: Option<(String, TestCa)>,
}

impl ConsulBackend {
    async fn start() -> Option<Self> {
        Some(ConsulBackend {
            agent: Agent::start(None).await,
            https: None,
        })
    }

    async fn start_https() -> Option<Self> {
        let (agent, ca) = https_agent(Some(TOKEN)).await;
        Some(ConsulBackend {
            https: Some((format!("https://{}", agent.addr), ca)),
            agent: Agent::StandIn(agent),
        })
    }
}

impl Backend for ConsulBackend {
    fn cluster(&self, _seeds: &[String]) -> Box<dyn Cluster> {
        let (address, tls) = match &self.https {
            Some((url, ca)) => (
                url.clone(),
                Some(ClientTls::from_ca_pem(ca.pem.as_bytes()).unwrap()),
            ),
            None => (self.agent.addr(), None),
        };
        Box::new(
            ConsulCluster::new(address, NO_SEEDS).unwrap().with_config(
                ConsulConfig::default()
                    .token(self.agent.token().map(Into::into))
                    .tls(tls)
                    .check_interval(Duration::from_secs(1)),
            ),
        )
    }
    fn failure_deadline(&self) -> Duration {
        Duration::from_secs(8)
    }
}

conformance_tests!(conformance, ConsulBackend::start());
conformance_tests!(conformance_https, ConsulBackend::start_https());
