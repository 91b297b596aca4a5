//! `meshage demo`: a 3-node cluster in one process.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use meshage::{GossipCluster, Message, Node, NO_SEEDS};
use serde_json::json;

use crate::{echo, wait_for_signal};

pub(crate) async fn run_demo() -> Result<()> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let seeds: Vec<String> = nodes
            .first()
            .and_then(|n| n.seed_address())
            .into_iter()
            .collect();
        let cluster = if seeds.is_empty() {
            GossipCluster::new("127.0.0.1:find", NO_SEEDS)?
        } else {
            GossipCluster::new("127.0.0.1:find", seeds)?
        };
        let node = meshage::init(cluster, "127.0.0.1:find")
            .register("echo", echo)
            .start()
            .await
            .with_context(|| format!("starting demo node {}", i + 1))?;
        nodes.push(node);
    }
    // Wait until every node sees all three services.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nodes.iter().any(|n| n.router().table().services.len() < 3) {
        if tokio::time::Instant::now() > deadline {
            bail!("the demo cluster did not converge within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("3 nodes up, each with one service on stream `echo`:");
    for (i, node) in nodes.iter().enumerate() {
        let service = node.router().local_services();
        println!(
            "  node {} at {}  service {}",
            i + 1,
            node.endpoint(),
            service[0].id
        );
    }
    println!("\nSending keys through different nodes:");
    for (i, key) in ["alice", "bob", "carol", "dave", "erin", "frank"]
        .iter()
        .enumerate()
    {
        let node = &nodes[i % 3];
        let owner = node
            .router()
            .table()
            .owner("echo", key)
            .map(|s| s.id.to_string())
            .unwrap_or_default();
        let answer = node
            .router()
            .send(Message::new("echo", *key, json!({ "hello": key })))
            .await?;
        println!(
            "  key {key:<6} sent to node {} -> handled by service {owner}: {answer}",
            i % 3 + 1
        );
    }
    let first = nodes[0].endpoint();
    println!("\nTry it (any node answers for any key):");
    println!("  curl -s -X POST {first}/api/echo/$RANDOM -H 'Content-Type: application/json' -d '{{\"hello\":\"world\"}}'");
    println!("  curl -s -X POST {first}/api/broadcast/echo/x -d '{{\"hello\":\"all\"}}'");
    println!("  curl -s {}/api/services", nodes[1].endpoint());
    println!("\nServing until Ctrl-C.");
    wait_for_signal().await?;
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(())
}
