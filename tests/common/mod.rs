//! Shared harness for multi-node tests: real nodes on 127.0.0.1 port 0, a real HTTP client,
//! and waiting on conditions with deadlines.
#![allow(dead_code)]

pub mod process;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshage::{GossipCluster, GossipConfig, HandlerError, Header, Node, NodeConfig, NO_SEEDS};
use serde_json::{json, Value};

/// Waits until `condition` holds, checking every 10 ms; panics with `what` after `timeout`.
pub async fn wait_until<F: FnMut() -> bool>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> Duration {
    let start = Instant::now();
    loop {
        if condition() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`wait_until`] with an async condition.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts how many times each service ran, for assertions on where requests went.
#[derive(Clone, Default)]
pub struct Counter(Arc<std::sync::Mutex<HashMap<String, usize>>>);

impl Counter {
    pub fn hit(&self, service: &str) {
        *self
            .0
            .lock()
            .unwrap()
            .entry(service.to_owned())
            .or_default() += 1;
    }
    pub fn get(&self, service: &str) -> usize {
        self.0.lock().unwrap().get(service).copied().unwrap_or(0)
    }
    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

/// An echo handler that also names the service that ran it: `{"echoed": data, "by": id}`.
pub async fn echo_by(data: Value, header: Header) -> Result<Value, HandlerError> {
    Ok(json!({ "echoed": data, "by": &*header.service_id, "key": &*header.partition_key }))
}

/// Gossip tuned as the defaults are; tests rely on the shipped defaults.
pub fn gossip(seeds: &[String]) -> GossipCluster {
    if seeds.is_empty() {
        GossipCluster::new("127.0.0.1:0", NO_SEEDS).unwrap()
    } else {
        GossipCluster::new("127.0.0.1:0", seeds).unwrap()
    }
}

pub fn gossip_with(seeds: &[String], config: GossipConfig) -> GossipCluster {
    gossip(seeds).with_config(config)
}

/// Starts one node with the `echo` stream served by [`echo_by`].
pub async fn echo_node(seeds: &[String]) -> Node {
    meshage::init(gossip(seeds), "127.0.0.1:0")
        .register("echo", echo_by)
        .start()
        .await
        .expect("node starts")
}

pub async fn echo_node_with(seeds: &[String], config: NodeConfig) -> Node {
    meshage::init(gossip(seeds), "127.0.0.1:0")
        .register("echo", echo_by)
        .config(config)
        .start()
        .await
        .expect("node starts")
}

/// Starts `n` echo nodes seeded through the first, and waits until every node routes to all
/// `n` services.
pub async fn echo_cluster(n: usize) -> Vec<Node> {
    let first = echo_node(&[]).await;
    let seed = vec![first.seed_address().expect("gossip has a seed address")];
    let mut nodes = vec![first];
    for _ in 1..n {
        nodes.push(echo_node(&seed).await);
    }
    wait_converged(&nodes, n).await;
    nodes
}

/// Waits until every node's table lists `services` services.
pub async fn wait_converged(nodes: &[Node], services: usize) -> Duration {
    wait_until(
        Duration::from_secs(10),
        &format!("every node sees {services} services"),
        || {
            nodes
                .iter()
                .all(|n| n.router().table().services.len() == services)
        },
    )
    .await
}

/// A response as the tests see it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn service_id(&self) -> Option<String> {
        self.headers
            .get("x-service-id")
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// A plain HTTP client with a per-request timeout, so that no test request hangs.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    pub timeout: Duration,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout: Duration::from_secs(20),
        }
    }
}

impl Http {
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, String> {
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?} from {url}", self.timeout))?
    }

    /// POSTs JSON and panics on transport errors.
    pub async fn post(&self, url: &str, body: &str) -> Answer {
        self.request(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body.to_owned(),
        )
        .await
        .unwrap()
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.request(Method::GET, url, &[], Bytes::new())
            .await
            .unwrap()
    }
}

/// A counter shared by handlers across nodes.
pub fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

pub fn count(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

/// Percent-encodes a path segment (every byte outside the unreserved set).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
