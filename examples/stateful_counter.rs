//! Run with: cargo run --example stateful_counter -- HTTP_ADDR GOSSIP_ADDR [SEED...]
//! (for example `127.0.0.1:8080 127.0.0.1:9742`, then `127.0.0.1:8081 127.0.0.1:9743
//! 127.0.0.1:9742` for a second node; `COUNTER_HINTS=off` makes it ignore the hint).
//!
//! A stateful handler whose state follows its keys: on stream `counter`, each key holds a count
//! (and the ids of the increments that came with one). When a key moves to this node (a node joined or left), the
//! handler has no state for it, and [`Header::previous_owner`] names the service that had it:
//! the handler takes the state from there through the mesh before it answers. Messages:
//!
//! - `{"op": "add", "n": 1}` adds `n` (default 1) and answers `{"count": n}`; with `"id": "..."`
//!   it also records the increment's id;
//! - `{"op": "get"}` answers `{"count": n, "applied": [ids]}`;
//! - `{"op": "take"}` (sent by a new owner) answers `{"count": n, "applied": [ids]}`, or nulls
//!   when it held nothing, and marks the key as moved: an increment that still reaches this node
//!   for it (from a node whose table is behind) is refused with 409, and the client sends it again.
//!
//! A real counter would keep only the number; the ids let a test see every increment land once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::StatusCode;
use meshage::{HandlerError, Header, Message, Router, SendOptions};
use serde_json::{json, Value};

/// The counter handler: one slot per key, each behind its own lock, so that two first requests
/// for a key do not both take its state.
#[derive(Default)]
pub struct Counter {
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// The node's router, to take state from other services (set once the node has started).
    router: OnceLock<Router>,
    /// Whether the handler uses [`Header::previous_owner`]; without it, moved keys start over.
    hints: bool,
}

#[derive(Default)]
enum Slot {
    /// Nothing known here about the key.
    #[default]
    Empty,
    /// The key's state.
    Held(State),
    /// Handed to a new owner.
    Moved,
}

/// A key's count, and the ids of the increments that came with one.
#[derive(Default)]
struct State {
    count: u64,
    applied: Vec<String>,
}

impl Counter {
    pub fn new(hints: bool) -> Arc<Counter> {
        Arc::new(Counter {
            hints,
            ..Counter::default()
        })
    }

    /// Gives the handler its node's router.
    pub fn attach(&self, router: Router) {
        let _ = self.router.set(router);
    }

    pub async fn handle(&self, data: Value, header: Header) -> Result<Value, HandlerError> {
        let key = &*header.partition_key;
        let slot = self
            .keys
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        match data["op"].as_str() {
            Some("take") => Ok(match std::mem::replace(&mut *slot, Slot::Moved) {
                Slot::Held(state) => json!({ "count": state.count, "applied": state.applied }),
                _ => json!({ "count": null, "applied": null }),
            }),
            Some(op @ ("add" | "get")) => {
                if !matches!(*slot, Slot::Held(_)) {
                    let taken = match &header.previous_owner {
                        Some(previous) if self.hints => self.take(&header, previous).await?,
                        _ => None,
                    };
                    *slot = match (taken, &*slot) {
                        (Some(state), _) => Slot::Held(state),
                        (None, Slot::Moved) => {
                            return Err(HandlerError::with_status(
                                StatusCode::CONFLICT,
                                "this key moved to another service; send it again",
                            ))
                        }
                        (None, _) => Slot::Held(State::default()),
                    };
                }
                let Slot::Held(state) = &mut *slot else {
                    unreachable!("held above")
                };
                if op == "get" {
                    return Ok(json!({ "count": state.count, "applied": state.applied }));
                }
                let n = match &data["n"] {
                    Value::Null => 1,
                    n => n.as_u64().ok_or_else(|| {
                        HandlerError::bad_request("\"n\" is a whole number of at least 0")
                    })?,
                };
                match &data["id"] {
                    Value::Null => {}
                    Value::String(id) => state.applied.push(id.clone()),
                    _ => return Err(HandlerError::bad_request("\"id\" is a string")),
                }
                state.count = state.count.saturating_add(n);
                Ok(json!({ "count": state.count }))
            }
            _ => Err(HandlerError::bad_request(
                "expected {\"op\": \"add\" | \"get\" | \"take\"}",
            )),
        }
    }

    /// Takes the key's state from the service that had it: `None` when it had none.
    async fn take(&self, header: &Header, from: &str) -> Result<Option<State>, HandlerError> {
        let router = self
            .router
            .get()
            .ok_or_else(|| HandlerError::internal("the node has not started"))?;
        let message = Message::new(
            &*header.stream,
            &*header.partition_key,
            json!({"op": "take"}),
        );
        let options = SendOptions::default()
            .service(Some(from.to_owned()))
            .timeout(Some(Duration::from_secs(2)));
        let answer = router.send_with(message, options).await.map_err(|e| {
            HandlerError::with_status(
                StatusCode::CONFLICT,
                format!("could not take this key's state from {from} ({e}); send it again"),
            )
        })?;
        let Some(count) = answer["count"].as_u64() else {
            return Ok(None);
        };
        let applied = serde_json::from_value(answer["applied"].clone()).unwrap_or_default();
        Ok(Some(State { count, applied }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(http), Some(gossip)) = (args.next(), args.next()) else {
        return Err("usage: stateful_counter HTTP_ADDR GOSSIP_ADDR [SEED...]".into());
    };
    let seeds: Vec<String> = args.collect();
    let hints = std::env::var("COUNTER_HINTS").map_or(true, |v| v != "off");
    let counter = Counter::new(hints);
    let handler = counter.clone();
    let node = meshage::init(meshage::GossipCluster::new(&gossip, seeds)?, &http)
        .register("counter", move |data: Value, header: Header| {
            let counter = handler.clone();
            async move { counter.handle(data, header).await }
        })
        .start()
        .await?;
    counter.attach(node.router().clone());
    println!("serving stream counter at {}", node.endpoint());
    tokio::signal::ctrl_c().await?;
    node.shutdown().await?;
    Ok(())
}
