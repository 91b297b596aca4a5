//! In-process nodes on 127.0.0.1 port 0: echo handlers, gossip seeded through the first node,
//! and waiting until a cluster has converged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshage::{GossipCluster, Node, NodeConfig, NO_SEEDS};

use super::echo::echo_by;
use super::wait::wait_until;

/// Gossip tuned as the defaults are; tests rely on the shipped defaults.
pub fn gossip(seeds: &[String]) -> GossipCluster {
    if seeds.is_empty() {
        GossipCluster::new("127.0.0.1:0", NO_SEEDS).unwrap()
    } else {
        GossipCluster::new("127.0.0.1:0", seeds).unwrap()
    }
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
