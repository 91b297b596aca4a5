//! What an orchestrator sees of a node: the host it advertises (`--advertise-host`, a pod's
//! IP), and its probes, `/livez` (the process serves) and `/readyz` (joined, table built, not
//! leaving), through real sockets.

use std::time::Duration;

use http::{Method, StatusCode};
use meshage::{GossipCluster, GossipConfig, Message, Node, NodeConfig, NO_SEEDS};
use serde_json::json;

use crate::api::bounded;
use crate::common::proc::Proc;
use crate::common::{echo_by, meshage_command, wait_converged, wait_until_async, Answer, Http};
use crate::openapi::Description;

async fn probe(node: &Node, path: &str) -> Result<Answer, String> {
    let url = format!("http://{}{path}", node.local_addr());
    Http::default().request(Method::GET, &url, &[], "").await
}

fn text(answer: &Answer) -> &str {
    std::str::from_utf8(&answer.body).expect("a text body")
}

/// A node on all interfaces that advertises `127.0.0.1`, joining through `seeds`.
async fn advertising_node(seeds: &[String]) -> Node {
    let cluster = if seeds.is_empty() {
        GossipCluster::new("0.0.0.0:0", NO_SEEDS)
    } else {
        GossipCluster::new("0.0.0.0:0", seeds)
    };
    meshage::init(cluster.unwrap(), "0.0.0.0:0")
        .register("echo", echo_by)
        .config(NodeConfig::default().advertise_host(Some("127.0.0.1".into())))
        .start()
        .await
        .expect("node starts")
}

/// Nodes bound on all interfaces advertise the given host, with their bound ports, in their
/// HTTP endpoint and their gossip address; peers learn those, and forwards reach them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_advertise_the_host_they_are_given_and_forward_through_it() {
    bounded(async {
        let a = advertising_node(&[]).await;
        assert!(a.local_addr().ip().is_unspecified(), "{}", a.local_addr());
        let http_port = a.local_addr().port();
        assert_eq!(a.endpoint(), format!("http://127.0.0.1:{http_port}"));
        let seed = a.seed_address().unwrap();
        assert!(seed.starts_with("127.0.0.1:"), "gossip advertises {seed}");
        let b = advertising_node(&[seed]).await;
        let nodes = [a, b];
        wait_converged(&nodes, 2).await;
        let (a, b) = (&nodes[0], &nodes[1]);
        let members = Http::default()
            .get(&format!("http://{}/api/members", a.local_addr()))
            .await
            .json();
        let endpoints: Vec<&str> = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["endpoint"].as_str().unwrap())
            .collect();
        assert_eq!(endpoints.len(), 2, "{members}");
        for node in [a, b] {
            assert!(endpoints.contains(&node.endpoint()), "{members}");
        }
        // Keys that b owns, sent to a: forwarded to b's advertised endpoint.
        let b_service = b.router().local_services()[0].id.to_string();
        let mut forwarded = 0;
        for i in 0..32 {
            let key = format!("key-{i}");
            let answer = a
                .router()
                .send(Message::new("echo", key.as_str(), json!(i)))
                .await
                .expect("answered");
            if answer["by"] == b_service.as_str() {
                forwarded += 1;
            }
        }
        assert!(forwarded > 0, "no key of 32 went to b");
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    })
    .await;
}

/// The binary takes the host from `--advertise-host` and from `MESHAGE_ADVERTISE_HOST`, says
/// it in its start line, and refuses a host no peer can reach in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_advertises_the_host_of_its_flag() {
    bounded(async {
        // Bare ports: all interfaces, which would advertise the machine's hostname.
        let mut command = meshage_command();
        command.args(["node", "--http-port", "0", "--cluster-port", "0"]);
        command.args(["--advertise-host", "127.0.0.1"]);
        let node = Proc::spawn("advertising node", command);
        // "meshage node <id> serving <endpoint> (bound <addr>), gossip on <seed>"
        let line = node.wait_line(Duration::from_secs(20), |l| l.starts_with("meshage node "));
        let words: Vec<&str> = line.split_whitespace().collect();
        let (endpoint, bound, seed) = (words[4], words[6], words[9]);
        assert!(endpoint.starts_with("http://127.0.0.1:"), "{line}");
        assert!(bound.starts_with("0.0.0.0:"), "{line}");
        assert!(seed.starts_with("127.0.0.1:"), "{line}");
        // Without seeds, ready as soon as its first view lists it (the first gossip round).
        let url = format!("{endpoint}/readyz");
        wait_until_async(Duration::from_secs(5), "ready", || async {
            Http::default().get(&url).await.status == StatusCode::OK
        })
        .await;
        let mut refused = meshage_command();
        refused.args(["node", "--http-port", "0", "--cluster-port", "0"]);
        let refused = refused
            .env("MESHAGE_ADVERTISE_HOST", "0.0.0.0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{stderr}");
        assert!(
            stderr.contains("invalid advertise host `0.0.0.0`"),
            "{stderr}"
        );
    })
    .await;
}

/// `/readyz` is 503 `joining` until a peer answers (while `/livez` and the original's
/// `/api/health` say up), 200 once one has, 503 `leaving` while the node drains; a node
/// without seeds is ready on its own, and so is one whose seeds never answer, after the join
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_joining_ready_and_leaving() {
    bounded(async {
        // A seed that exists but never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = silent.local_addr().unwrap().to_string();
        let slow_leaving = GossipConfig::default().leave_announce(Duration::from_secs(2));
        let cluster = GossipCluster::new("127.0.0.1:0", [&silent])
            .unwrap()
            .with_config(slow_leaving);
        let a = meshage::init(cluster, "127.0.0.1:0")
            .register("echo", echo_by)
            .start()
            .await
            .unwrap();
        let joining = probe(&a, "/readyz").await.unwrap();
        assert_eq!(joining.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text(&joining).contains("joining"), "{}", text(&joining));
        assert_eq!(joining.headers["retry-after"], "1");
        assert_eq!(joining.headers["cache-control"], "no-store");
        Description::of(&a)
            .await
            .check("/readyz", &Method::GET, &joining);
        let live = probe(&a, "/livez").await.unwrap();
        assert_eq!((live.status, text(&live)), (StatusCode::OK, "live\n"));
        let health = probe(&a, "/api/health").await.unwrap();
        assert_eq!(health.status, StatusCode::OK);

        // A peer that joins through a: both are ready.
        let b = meshage::init(
            GossipCluster::new("127.0.0.1:0", [a.seed_address().unwrap()]).unwrap(),
            "127.0.0.1:0",
        )
        .register("echo", echo_by)
        .start()
        .await
        .unwrap();
        for node in [&a, &b] {
            wait_until_async(
                Duration::from_secs(5),
                "ready once a peer answered",
                || async {
                    probe(node, "/readyz")
                        .await
                        .is_ok_and(|r| r.status == StatusCode::OK && text(&r) == "ready\n")
                },
            )
            .await;
        }

        // A node without seeds is ready on its own; one whose seed never answers, after the
        // join timeout.
        let alone = meshage::init(GossipCluster::new("127.0.0.1:0", NO_SEEDS).unwrap(), 0)
            .start()
            .await
            .unwrap();
        let impatient = GossipConfig::default().join_timeout(Duration::from_millis(500));
        let cluster = GossipCluster::new("127.0.0.1:0", [&silent])
            .unwrap()
            .with_config(impatient);
        let first = meshage::init(cluster, "127.0.0.1:0").start().await.unwrap();
        let joining = probe(&first, "/readyz").await.unwrap();
        assert_eq!(joining.status, StatusCode::SERVICE_UNAVAILABLE);
        for node in [&alone, &first] {
            wait_until_async(Duration::from_secs(5), "ready alone", || async {
                probe(node, "/readyz")
                    .await
                    .is_ok_and(|r| r.status == StatusCode::OK)
            })
            .await;
        }

        // a leaves: not ready while it announces it and drains, and still live.
        let addr = a.local_addr();
        let leaving = tokio::spawn(a.shutdown());
        let url = |path: &str| format!("http://{addr}{path}");
        wait_until_async(
            Duration::from_secs(3),
            "503 leaving while draining",
            || async {
                let answer = Http::default()
                    .request(Method::GET, &url("/readyz"), &[], "")
                    .await
                    .expect("a leaving node still answers while it announces it");
                answer.status == StatusCode::SERVICE_UNAVAILABLE
                    && text(&answer).contains("leaving")
            },
        )
        .await;
        let live = Http::default().get(&url("/livez")).await;
        assert_eq!(live.status, StatusCode::OK);
        leaving.await.unwrap().unwrap();
        for node in [b, alone, first] {
            node.shutdown().await.unwrap();
        }
    })
    .await;
}
