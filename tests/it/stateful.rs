//! Stateful handlers: the previous-owner hint (`Header::previous_owner`,
//! `X-Meshage-Previous-Owner`) on joins, graceful leaves and tables that lag, and the counter of
//! `examples/stateful_counter.rs` keeping every increment exactly once while a node joins and
//! another leaves under load, where the same handler without the hint loses some.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshage::{
    HandlerError, Header, HttpUpstream, Message, Node, NodeConfig, PeerProtocol, RouteError,
    SendOptions, UpstreamConfig,
};
use serde_json::{json, Value};

use crate::common::process::{python_handler, python_handler_env};
use crate::common::{gossip, wait_until, wait_until_async, Http};

#[path = "../../examples/stateful_counter.rs"]
#[allow(dead_code)]
mod stateful_counter;
use stateful_counter::Counter;

/// Answers who ran it and the hint it got.
async fn tell(_data: Value, header: Header) -> Result<Value, HandlerError> {
    Ok(json!({ "by": &*header.service_id, "previous": header.previous_owner.as_deref() }))
}

async fn teller(seeds: &[String], config: NodeConfig) -> Node {
    meshage::init(gossip(seeds), "127.0.0.1:0")
        .config(config)
        .register("s", tell)
        .start()
        .await
        .expect("node starts")
}

fn local_service(node: &Node) -> String {
    let table = node.router().table();
    let id = table
        .services
        .iter()
        .find(|s| *s.node_id == *node.router().node_id())
        .map(|s| s.id.to_string());
    id.expect("the node lists its own service")
}

/// A key of stream `s` that `node`'s table gives to service `owner`.
fn key_of(node: &Node, owner: &str) -> String {
    let table = node.router().table();
    (0..10_000)
        .map(|i| format!("key-{i}"))
        .find(|k| table.owner("s", k).is_some_and(|s| *s.id == *owner))
        .expect("the service owns some key")
}

async fn wait_services(nodes: &[&Node], n: usize) {
    wait_until(
        Duration::from_secs(10),
        &format!("{n} services everywhere"),
        || {
            nodes
                .iter()
                .all(|node| node.router().table().services.len() == n)
        },
    )
    .await;
}

async fn previous(via: &Node, key: &str) -> Value {
    let answer = via
        .router()
        .send(Message::new("s", key, json!({})))
        .await
        .expect("answered");
    answer["previous"].clone()
}

#[tokio::test]
async fn a_key_taken_by_a_joining_node_names_its_previous_owner_until_the_window_passes() {
    let config = NodeConfig::default().handoff_window(Duration::from_secs(4));
    let a = teller(&[], config.clone()).await;
    let seeds = vec![a.seed_address().unwrap()];
    let sa = local_service(&a);
    let b = teller(&seeds, config).await;
    wait_services(&[&a, &b], 2).await;
    let sb = local_service(&b);
    let moved = key_of(&a, &sb);
    let stayed = key_of(&a, &sa);
    // Forwarded from a, and run where b is the entry: the same hint.
    assert_eq!(previous(&a, &moved).await, json!(sa));
    assert_eq!(previous(&b, &moved).await, json!(sa));
    assert_eq!(
        previous(&a, &stayed).await,
        Value::Null,
        "a key that stayed"
    );
    // A message without a key has no owner to follow.
    let keyless = b
        .router()
        .send_with(
            Message::keyless("s", json!({})),
            SendOptions::default().service(Some(sb.clone())),
        )
        .await
        .unwrap();
    assert_eq!(keyless["previous"], Value::Null);
    // The hint lasts the window, then stops.
    wait_until_async(Duration::from_secs(15), "the hint to end", || async {
        previous(&a, &moved).await.is_null()
    })
    .await;
}

#[tokio::test]
async fn the_new_owner_of_a_leaving_nodes_key_can_take_from_it_while_it_drains() {
    let a = teller(&[], NodeConfig::default()).await;
    let seeds = vec![a.seed_address().unwrap()];
    let b = teller(&seeds, NodeConfig::default()).await;
    wait_services(&[&a, &b], 2).await;
    let sa = local_service(&a);
    let sb = local_service(&b);
    let key = key_of(&a, &sb);
    let a = Arc::new(a);
    // b leaves; while it drains, it still answers by id, and keeps serving while asked.
    let leaving = tokio::spawn(b.shutdown());
    wait_until(
        Duration::from_secs(10),
        "a to route b's key to itself",
        || {
            a.router()
                .table()
                .owner("s", &key)
                .is_some_and(|s| *s.id == *sa)
        },
    )
    .await;
    assert_eq!(previous(&a, &key).await, json!(sb));
    let by_id = a
        .router()
        .send_with(
            Message::new("s", &key, json!({})),
            SendOptions::default().service(Some(sb.clone())),
        )
        .await
        .expect("the leaving node's service answers by id");
    assert_eq!(by_id["by"], json!(sb));
    leaving.await.unwrap().unwrap();
    // Gone: neither a hint to it nor a send to it.
    wait_until_async(Duration::from_secs(20), "b to be gone", || async {
        previous(&a, &key).await.is_null()
    })
    .await;
}

#[tokio::test]
async fn a_send_to_a_service_by_id_reaches_it_on_any_node_whoever_owns_the_key() {
    let a = teller(&[], NodeConfig::default()).await;
    let seeds = vec![a.seed_address().unwrap()];
    let b = teller(&seeds, NodeConfig::default()).await;
    wait_services(&[&a, &b], 2).await;
    let (sa, sb) = (local_service(&a), local_service(&b));
    let (of_a, of_b) = (key_of(&a, &sa), key_of(&a, &sb));
    let to = |service: &str| SendOptions::default().service(Some(service.to_owned()));
    // Each key to the service that does not own it, from both nodes: remote and local.
    for via in [&a, &b] {
        for (key, service) in [(&of_a, &sb), (&of_b, &sa)] {
            let answer = via
                .router()
                .send_with(Message::new("s", key, json!({})), to(service))
                .await
                .expect("the service answers by id");
            assert_eq!(answer["by"], json!(service), "{key} sent to {service}");
        }
    }
    // An id that no node runs is an error, never the key's owner.
    let unknown = a
        .router()
        .send_with(Message::new("s", &of_a, json!({})), to("no-such-service"))
        .await;
    assert!(
        matches!(unknown, Err(RouteError::UnknownService(ref id)) if id == "no-such-service"),
        "{unknown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_handler_gets_the_hint_as_a_header_and_never_a_clients() {
    let python = python_handler(0);
    let a = teller(&[], NodeConfig::default()).await;
    let seeds = vec![a.seed_address().unwrap()];
    let sa = local_service(&a);
    let upstream = HttpUpstream::new(&python.url, UpstreamConfig::default().health(None)).unwrap();
    let b = meshage::init(gossip(&seeds), "127.0.0.1:0")
        .register_upstream("s", upstream)
        .start()
        .await
        .unwrap();
    wait_services(&[&a, &b], 2).await;
    let sb = local_service(&b);
    let moved = key_of(&a, &sb);
    let http = Http::default();
    let url = |key: &str| format!("{}/api/s/{key}", a.endpoint());
    let forged = [("x-meshage-previous-owner", "forged")];
    let answer = http
        .request(http::Method::POST, &url(&moved), &forged, "{}")
        .await
        .unwrap();
    assert_eq!(answer.json()["previousOwner"], json!(sa), "{answer:?}");
    // A node with no hint to give: the client's header does not reach the handler.
    let b_only = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register_upstream(
            "s",
            HttpUpstream::new(&python.url, UpstreamConfig::default().health(None)).unwrap(),
        )
        .start()
        .await
        .unwrap();
    let alone = format!("{}/api/s/anything", b_only.endpoint());
    let answer = http
        .request(http::Method::POST, &alone, &forged, "{}")
        .await
        .unwrap();
    assert_eq!(answer.json()["previousOwner"], Value::Null, "{answer:?}");
}

/// The Python handler's counter over HTTP: a key that moves to a joining node's handler is taken
/// from the handler that had it, through the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_counter_takes_a_moved_keys_state_from_its_previous_owner() {
    python_counter_after_a_join(true).await;
}

/// The same with `COUNTER_HINTS=off`: the moved keys start over, their first count is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_hint_the_python_counter_loses_a_moved_keys_count() {
    python_counter_after_a_join(false).await;
}

/// Counts once on 40 keys with one Python counter, adds a node with a second one, and counts
/// again on the keys that moved to it: 2 with the hint, 1 without.
async fn python_counter_after_a_join(hints: bool) {
    let switch = [("COUNTER_HINTS", if hints { "on" } else { "off" })];
    let first = python_handler_env(0, &switch);
    let upstream = |url: &str| HttpUpstream::new(url, UpstreamConfig::default().health(None));
    let a = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register_upstream("counter", upstream(&first.url).unwrap())
        .start()
        .await
        .unwrap();
    // Any node routes a request to a service by id: the second handler takes through `a`.
    let second = python_handler_env(0, &[("MESHAGE_URL", a.endpoint()), switch[0]]);
    // A key that the joining node will own: the ring over both services decides.
    let http = Http::default();
    let add = |key: String, id: usize| {
        let (http, url) = (http.clone(), format!("{}/api/counter/{key}", a.endpoint()));
        async move {
            let body = json!({"op": "add", "n": 1, "id": id.to_string()}).to_string();
            http.request(http::Method::POST, &url, &[], body)
                .await
                .unwrap()
        }
    };
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(add(key.clone(), i).await.status, 200);
    }
    let b = meshage::init(gossip(&[a.seed_address().unwrap()]), "127.0.0.1:0")
        .register_upstream("counter", upstream(&second.url).unwrap())
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "2 counters on a", || {
        a.router().table().services_of("counter").count() == 2
    })
    .await;
    let sb = local_service(&b);
    let table = a.router().table();
    let moved: Vec<&String> = keys
        .iter()
        .filter(|k| table.owner("counter", k).is_some_and(|s| *s.id == *sb))
        .collect();
    assert!(
        !moved.is_empty(),
        "some of 40 keys move to the second of two services"
    );
    for key in &moved {
        let answer = add((*key).clone(), 1000).await;
        let expected = if hints { 2 } else { 1 };
        assert_eq!(
            answer.json()["count"],
            expected,
            "{key} with hints {hints}: {answer:?}"
        );
        assert_eq!(answer.headers["x-service-id"], sb.as_str());
    }
}

/// What a load of increments saw, per increment id.
#[derive(Default)]
struct Tally {
    /// Answered 200: applied once.
    acked: Vec<(String, String)>,
    /// Failed in a way that may or may not have applied it (a timeout, a node gone, refused
    /// too often): a run must have none.
    unsure: Vec<String>,
}

/// A counter cluster: nodes with the example's handler, `hints` on or off.
struct Counters {
    hints: bool,
    /// How the nodes forward to each other.
    protocol: PeerProtocol,
    nodes: Vec<Option<Arc<Node>>>,
    seeds: Vec<String>,
}

impl Counters {
    async fn start(hints: bool, protocol: PeerProtocol, n: usize) -> Counters {
        let mut counters = Counters {
            hints,
            protocol,
            nodes: Vec::new(),
            seeds: Vec::new(),
        };
        for _ in 0..n {
            counters.add().await;
        }
        counters
    }

    async fn add(&mut self) -> usize {
        let counter = Counter::new(self.hints);
        let handler = counter.clone();
        let node = meshage::init(gossip(&self.seeds), "127.0.0.1:0")
            .config(
                NodeConfig::default()
                    .drain_timeout(Duration::from_secs(5))
                    .peer_protocol(self.protocol),
            )
            .register("counter", move |data: Value, header: Header| {
                let counter = handler.clone();
                async move { counter.handle(data, header).await }
            })
            .start()
            .await
            .unwrap();
        counter.attach(node.router().clone());
        if self.seeds.is_empty() {
            self.seeds.push(node.seed_address().unwrap());
        }
        self.nodes.push(Some(Arc::new(node)));
        self.nodes.len() - 1
    }

    fn live(&self) -> Vec<Arc<Node>> {
        self.nodes.iter().flatten().cloned().collect()
    }

    async fn converge(&self) {
        let live = self.live();
        let n = live.len();
        wait_until(
            Duration::from_secs(15),
            &format!("{n} counters everywhere"),
            || {
                live.iter()
                    .all(|node| node.router().table().services_of("counter").count() == n)
            },
        )
        .await;
    }
}

/// Sends increments over `keys` through `entries` until `stop`, each sent again while refused
/// (409: the key moved under it, or its state could not be taken yet).
async fn load(
    entries: Vec<Arc<Node>>,
    keys: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..6).map(|w| {
        let (entries, stop, tally, next, progress) = (
            entries.clone(),
            stop.clone(),
            tally.clone(),
            next.clone(),
            progress.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let key = format!("k{}", n % keys);
                let id = format!("i{n}");
                let entry = &entries[w % entries.len()];
                let message = Message::new("counter", &key, json!({"op": "add", "id": id}));
                let mut tries = 0;
                loop {
                    tries += 1;
                    match entry.router().send(message.clone()).await {
                        Ok(_) => {
                            tally.lock().unwrap().acked.push((key.clone(), id.clone()));
                            progress.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(RouteError::Handler(e)) if e.status == 409 && tries < 50 => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Err(_) => tally.lock().unwrap().unsure.push(id.clone()),
                    }
                    break;
                }
            }
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        worker.await.unwrap();
    }
    Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap()
}

/// What a churn run found: increments acknowledged, lost and counted twice, keys whose final
/// count differs from their acknowledged increments, and ambiguous outcomes.
#[derive(Debug)]
struct Outcome {
    acked: usize,
    lost: usize,
    twice: usize,
    miscounted: usize,
    unsure: usize,
}

/// Runs the churn under load.
async fn churn(hints: bool, protocol: PeerProtocol) -> Outcome {
    let mut cluster = Counters::start(hints, protocol, 3).await;
    cluster.converge().await;
    let entries = vec![
        cluster.nodes[0].clone().unwrap(),
        cluster.nodes[2].clone().unwrap(),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let running = tokio::spawn(load(entries, 30, stop.clone(), progress.clone()));
    // Each step lets the load acknowledge 100 more increments first.
    let steps = || {
        let progress = progress.clone();
        async move {
            let from = progress.load(Ordering::Relaxed);
            wait_until(Duration::from_secs(20), "100 more increments", || {
                progress.load(Ordering::Relaxed) >= from + 100
            })
            .await;
        }
    };
    steps().await;
    cluster.add().await;
    cluster.converge().await;
    steps().await;
    let leaving = cluster.nodes[1].take().unwrap();
    let leaving = Arc::try_unwrap(leaving).ok().expect("no other holder");
    leaving.shutdown().await.unwrap();
    cluster.converge().await;
    steps().await;
    stop.store(true, Ordering::Relaxed);
    let tally = running.await.unwrap();
    // Every key's final state, read through its owner.
    let via = cluster.nodes[0].clone().unwrap();
    let mut applied: HashMap<String, usize> = HashMap::new();
    let mut miscounted = 0;
    for k in 0..30 {
        let key = format!("k{k}");
        let state = via
            .router()
            .send(Message::new("counter", &key, json!({"op": "get"})))
            .await
            .unwrap();
        let acked = tally.acked.iter().filter(|(of, _)| *of == key).count();
        if state["count"] != json!(acked) {
            miscounted += 1;
        }
        for id in state["applied"].as_array().unwrap() {
            *applied.entry(id.as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    let lost: Vec<&(String, String)> = tally
        .acked
        .iter()
        .filter(|(_, id)| !applied.contains_key(id))
        .collect();
    if !lost.is_empty() {
        eprintln!("lost (key, id): {:?}", &lost[..lost.len().min(40)]);
    }
    Outcome {
        acked: tally.acked.len(),
        lost: lost.len(),
        twice: applied.values().filter(|&&n| n > 1).count(),
        miscounted,
        unsure: tally.unsure.len(),
    }
}

impl Outcome {
    /// The load ran, and every key's count is its acknowledged increments, nothing ambiguous.
    fn assert_exact(&self) {
        assert!(self.acked > 100, "the load ran: {self:?}");
        assert_eq!(
            (self.lost, self.twice, self.miscounted, self.unsure),
            (0, 0, 0, 0),
            "every key's count is its acknowledged increments: {self:?}"
        );
    }
}

#[tokio::test]
async fn with_the_hint_no_increment_is_lost_or_counted_twice_while_nodes_join_and_leave() {
    let run = churn(true, PeerProtocol::Link).await;
    run.assert_exact();
}

/// The same over HTTP forwards, where the hint travels as `X-Meshage-Previous-Owner`.
#[tokio::test]
async fn over_http_forwards_no_increment_is_lost_or_counted_twice_either() {
    let run = churn(true, PeerProtocol::Http1).await;
    run.assert_exact();
}

#[tokio::test]
async fn without_the_hint_the_same_handler_loses_increments() {
    let run = churn(false, PeerProtocol::Link).await;
    assert!(run.acked > 100, "the load ran: {run:?}");
    assert_eq!(run.unsure, 0, "no ambiguous outcome: {run:?}");
    assert!(
        run.lost > 0 && run.miscounted > 0,
        "a node that joins starts its keys from nothing: {run:?}"
    );
}

/// The example's messages on one node: an add of `n`, a take that hands the count over, and an
/// increment refused once the key moved (the client sends it again to the new owner).
#[tokio::test]
async fn the_counter_adds_n_hands_its_count_over_and_then_refuses_increments() {
    let cluster = Counters::start(true, PeerProtocol::Link, 1).await;
    let node = cluster.live()[0].clone();
    let send = |data: Value| {
        let node = node.clone();
        async move {
            node.router()
                .send(Message::new("counter", "apples", data))
                .await
        }
    };
    let add = send(json!({"op": "add", "n": 3})).await.unwrap();
    assert_eq!(add, json!({"count": 3}));
    let add = send(json!({"op": "add"})).await.unwrap();
    assert_eq!(add, json!({"count": 4}), "n is 1 by default");
    let bad = send(json!({"op": "add", "n": -1})).await;
    assert!(
        matches!(bad, Err(RouteError::Handler(ref e)) if e.status == 400),
        "{bad:?}"
    );
    let take = send(json!({"op": "take"})).await.unwrap();
    assert_eq!(take, json!({"count": 4, "applied": []}));
    let late = send(json!({"op": "add", "n": 1})).await;
    assert!(
        matches!(late, Err(RouteError::Handler(ref e)) if e.status == 409),
        "{late:?}"
    );
}
