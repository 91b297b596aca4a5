//! Run with: cargo run --example echo_cluster
//!
//! The library API end to end: two nodes in one process join through gossip, each registers a
//! handler on the `echo` stream, and messages sent through either node reach the one service
//! that owns their key.

use meshage::{GossipCluster, HandlerError, Header, Message, NO_SEEDS};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Greeting {
    hello: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The first node starts a cluster; `find` picks free ports.
    let first = meshage::init(
        GossipCluster::new("127.0.0.1:find", NO_SEEDS)?,
        "127.0.0.1:find",
    )
    .register("echo", |data: Value, header: Header| async move {
        Ok::<_, HandlerError>(json!({ "echoed": data, "by": &*header.service_id }))
    })
    .start()
    .await?;

    // The second joins through the first one's gossip address.
    let seeds = first.seed_address().into_iter().collect::<Vec<_>>();
    let second = meshage::init(
        GossipCluster::new("127.0.0.1:find", seeds)?,
        "127.0.0.1:find",
    )
    .register("echo", |data: Value, header: Header| async move {
        Ok::<_, HandlerError>(json!({ "echoed": data, "by": &*header.service_id }))
    })
    .register_handler(
        "greet",
        meshage::typed_handler_fn(|greeting: Greeting, _header: Header| async move {
            Ok::<_, HandlerError>(format!("hello, {}!", greeting.hello))
        }),
    )
    .start()
    .await?;

    // Wait until both nodes know all three services.
    while first.router().table().services.len() < 3 || second.router().table().services.len() < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    for key in ["alice", "bob", "carol"] {
        let answer = first
            .router()
            .send(Message::new("echo", key, json!({ "hello": key })))
            .await?;
        println!("{key}: {answer}");
    }
    let all = second
        .router()
        .broadcast(Message::new("echo", "any", json!("to everyone")))
        .await?;
    println!("broadcast: {}", Value::Array(all));
    let greeting = first
        .router()
        .send(Message::new("greet", "k", json!({ "hello": "world" })))
        .await?;
    println!("greet: {greeting}");

    second.shutdown().await?;
    first.shutdown().await?;
    Ok(())
}
