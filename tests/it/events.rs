//! Ownership and membership events: `Node::events()` and `GET /api/events` (Server-Sent
//! Events). A node joining takes ranges from the services already there, and each node's
//! services are told exactly what they gained and lost; the stream reaches a real HTTP client;
//! a subscriber that does not keep up is told how many events it lost, while requests go on.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshage::{
    HandlerError, HashRange, HashRing, MeshEvent, MeshEvents, Message, Node, NodeConfig,
    OwnershipChange,
};
use serde_json::{json, Value};

use crate::common::{gossip, wait_until, Http};

async fn node_with(seeds: &[String], services: usize, config: NodeConfig) -> Node {
    let echo = |data: Value, _| async move { Ok::<_, HandlerError>(json!({ "echo": data })) };
    let mut builder = meshage::init(gossip(seeds), "127.0.0.1:0").config(config);
    for _ in 0..services {
        builder = builder.register("s", echo);
    }
    builder.start().await.expect("node starts")
}

/// What each service owns, as the events it was told say: applied in order, sampled at every
/// edge any range has.
#[derive(Default)]
struct Ownership {
    changes: Vec<OwnershipChange>,
}

impl Ownership {
    fn take(&mut self, events: &mut MeshEvents, others: &mut Vec<MeshEvent>) {
        while let Some(event) = events.try_recv() {
            match event {
                MeshEvent::Ownership(change) => self.changes.push(change),
                other => others.push(other),
            }
        }
    }

    /// Whether `service` owns `hash` after every change told.
    fn owns(&self, service: &str, hash: u32) -> bool {
        let mut owns = false;
        for change in self.changes.iter().filter(|c| c.service_id == service) {
            if change.gained.iter().any(|r| r.contains(hash)) {
                owns = true;
            }
            if change.lost.iter().any(|r| r.contains(hash)) {
                owns = false;
            }
        }
        owns
    }

    fn edges(&self) -> impl Iterator<Item = u32> + '_ {
        self.changes
            .iter()
            .flat_map(|c| c.gained.iter().chain(&c.lost))
            .flat_map(|r| [r.start, r.end])
    }
}

/// Whether the services of every node own, as told, exactly what `ring` gives them: at each
/// edge of any range told or of the ring, and just around it, one owner, the ring's.
fn matches_ring(told: &[&Ownership], ring: &HashRing) -> bool {
    let ranges = ring.ranges();
    let mut points = BTreeSet::new();
    let edges = told
        .iter()
        .flat_map(|o| o.edges())
        .chain(ranges.iter().flat_map(|(r, _)| [r.start, r.end]));
    for edge in edges {
        points.extend([edge.saturating_sub(1), edge, edge.saturating_add(1)]);
    }
    points.iter().all(|&hash| {
        let (_, owner) = ranges.iter().find(|(r, _)| r.contains(hash)).unwrap();
        let owner = &*ring.servers()[*owner];
        ring.servers().iter().all(|service| {
            let owns = told.iter().any(|o| o.owns(service, hash));
            owns == (**service == *owner)
        })
    })
}

fn ids(node: &Node) -> Vec<String> {
    node.router()
        .local_services()
        .into_iter()
        .map(|s| s.id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_ranges_and_every_service_is_told_what_it_gained_and_lost() {
    let a = node_with(&[], 2, NodeConfig::default()).await;
    let mut a_events = a.events();
    let mut a_told = Ownership::default();
    let mut a_other = Vec::new();
    let alone = HashRing::new({
        let mut ids = ids(&a);
        ids.sort();
        ids
    });
    wait_until(
        Duration::from_secs(5),
        "a is told it owns everything",
        || {
            a_told.take(&mut a_events, &mut a_other);
            matches_ring(&[&a_told], &alone)
        },
    )
    .await;
    let snapshot = a_told.changes.len();

    let b = node_with(&[a.seed_address().unwrap()], 2, NodeConfig::default()).await;
    let mut b_events = b.events();
    let (mut b_told, mut b_other) = (Ownership::default(), Vec::new());
    let mut all: Vec<String> = ids(&a).into_iter().chain(ids(&b)).collect();
    all.sort();
    let ring = HashRing::new(&all);
    wait_until(
        Duration::from_secs(10),
        "a's and b's services own the ring between them",
        || {
            a_told.take(&mut a_events, &mut a_other);
            b_told.take(&mut b_events, &mut b_other);
            matches_ring(&[&a_told, &b_told], &ring)
        },
    )
    .await;

    // a's services only lost, exactly the ranges b's services own now, with a newer table.
    let after: Vec<&OwnershipChange> = a_told.changes[snapshot..].iter().collect();
    assert!(!after.is_empty());
    assert!(after.iter().all(|c| c.gained.is_empty() && c.stream == "s"));
    assert!(after[0].version > a_told.changes[0].version);
    let lost: BTreeSet<HashRange> = after.iter().flat_map(|c| c.lost.clone()).collect();
    let b_ranges: Vec<HashRange> = ring
        .ranges()
        .into_iter()
        .filter(|(_, owner)| ids(&b).contains(&ring.servers()[*owner].to_string()))
        .map(|(r, _)| r)
        .collect();
    let lost_hashes = |hash: u32| lost.iter().any(|r| r.contains(hash));
    for range in &b_ranges {
        assert!(
            lost_hashes(range.start) && lost_hashes(range.end),
            "{range:?}"
        );
    }
    // And a key in one of those ranges is b's now.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| lost_hashes(HashRing::hash(k)))
        .unwrap();
    let owner = ring.get(&key).unwrap();
    assert!(ids(&b).iter().any(|id| id == owner));
    assert!(
        a_other.iter().any(
            |e| matches!(e, MeshEvent::Membership(m) if m.node == b.id() && m.kind == "joined")
        ),
        "a is told b joined: {a_other:?}"
    );
    for node in [b, a] {
        node.shutdown().await.unwrap();
    }
}

/// A raw HTTP/1.1 `GET /api/events` on a socket with a small receive buffer; returns it.
fn open_stream(node: &Node, headers: &str) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&node.local_addr().into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    let request = format!("GET /api/events HTTP/1.1\r\nHost: test\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// Reads `stream` until `done` holds for all read so far and that ends between events (or
/// heads, or the chunked body's end), for at most `timeout`: a read may stop inside an event's
/// `data:` line, which would not parse.
fn read_until(
    stream: &mut std::net::TcpStream,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut text = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let whole = |t: &str| {
        ["\n\n", "\n\n\r\n", "\r\n\r\n"]
            .iter()
            .any(|end| t.ends_with(end))
    };
    loop {
        let read = String::from_utf8_lossy(&text);
        if done(&read) && whole(&read) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not within {timeout:?}: {}",
            String::from_utf8_lossy(&text)
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("the stream ended: {}", String::from_utf8_lossy(&text)),
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The JSON `data:` of each event named `name` in a stream's text.
fn data_of(text: &str, name: &str) -> Vec<Value> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == format!("event: {name}"))
        .map(|w| serde_json::from_str(w[1].strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_reach_an_http_client() {
    let a = node_with(&[], 1, NodeConfig::default()).await;
    let a_id = ids(&a).remove(0);
    let mut stream = tokio::task::block_in_place(|| open_stream(&a, ""));
    let text = tokio::task::block_in_place(|| {
        read_until(&mut stream, Duration::from_secs(5), |t| {
            t.contains("event: ownership")
        })
    });
    let head = text.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{text}");
    assert!(head.contains("content-type: text/event-stream"), "{text}");
    let first = &data_of(&text, "ownership")[0];
    assert_eq!(first["serviceId"], a_id.as_str());
    assert_eq!(first["gained"], json!([{ "start": 0, "end": u32::MAX }]));

    let b = node_with(&[a.seed_address().unwrap()], 1, NodeConfig::default()).await;
    let text = tokio::task::block_in_place(|| {
        read_until(&mut stream, Duration::from_secs(10), |t| {
            t.contains("\"kind\":\"joined\"") && t.contains("\"lost\":[{")
        })
    });
    let joined = data_of(&text, "membership");
    assert!(
        joined
            .iter()
            .any(|m| m["node"] == b.id() && m["kind"] == "joined"),
        "{text}"
    );
    let lost = data_of(&text, "ownership");
    assert!(lost
        .iter()
        .any(|c| c["serviceId"] == a_id.as_str() && !c["lost"].as_array().unwrap().is_empty()));

    // A node that stops ends its streams.
    a.shutdown().await.unwrap();
    tokio::task::block_in_place(|| {
        read_until(&mut stream, Duration::from_secs(10), |t| {
            t.ends_with("0\r\n\r\n")
        })
    });
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_limited_and_need_a_token_where_the_node_asks_for_one() {
    let tokens =
        meshage::Tokens::new(meshage::ApiTokens::parse("secret-token-0123456789\n").unwrap());
    let config = NodeConfig::default()
        .api_tokens(Some(tokens))
        .max_event_streams(1);
    let a = node_with(&[], 1, config).await;
    let http = Http::default();
    let url = format!("http://{}/api/events", a.local_addr());
    let refused = http.get(&url).await;
    assert_eq!(refused.status, 401);
    let mut open = tokio::task::block_in_place(|| {
        open_stream(&a, "Authorization: Bearer secret-token-0123456789\r\n")
    });
    tokio::task::block_in_place(|| {
        read_until(&mut open, Duration::from_secs(5), |t| {
            t.contains("event: ownership")
        })
    });
    let busy = http
        .request(
            http::Method::GET,
            &url,
            &[("authorization", "Bearer secret-token-0123456789")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(busy.status, 503, "{:?}", busy.body);
    assert!(busy.json()["error"]
        .as_str()
        .unwrap()
        .contains("limit of 1 subscribers"));
    drop(open);
    // The closed stream gives its place back.
    let head = http
        .request(
            http::Method::HEAD,
            &url,
            &[("authorization", "Bearer secret-token-0123456789")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(head.status, 200);
    crate::common::wait_until(Duration::from_secs(5), "the place is given back", || {
        tokio::task::block_in_place(|| {
            let mut again = open_stream(&a, "Authorization: Bearer secret-token-0123456789\r\n");
            let head = read_until(&mut again, Duration::from_secs(5), |t| {
                t.contains("\r\n\r\n")
            });
            head.starts_with("HTTP/1.1 200")
        })
    })
    .await;
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_what_it_lost_while_requests_go_on() {
    let config = NodeConfig::default().event_buffer(16);
    let echo = |data: Value, _| async move { Ok::<_, HandlerError>(json!({ "echo": data })) };
    let mut builder = meshage::init(gossip(&[]), "127.0.0.1:0").config(config);
    for _ in 0..16 {
        builder = builder.register("s", echo);
    }
    let a = Arc::new(builder.register("t", echo).start().await.unwrap());
    let mut slow = a.events();
    // An HTTP/2 client that opens the stream and reads none of it: its flow-control window
    // (4 KiB) lets the node send a few events, then none, until it reads.
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(4096)
        .build_http::<Full<Bytes>>();
    let url = format!("http://{}/api/events", a.local_addr());
    let response = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();

    // Requests all along, through the router, on a stream whose services stay.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let load = {
        let (a, stop, answered) = (a.clone(), stop.clone(), answered.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let message = Message::new("t", format!("key-{i}"), json!(i));
                a.router()
                    .send(message)
                    .await
                    .expect("requests are answered");
                answered.fetch_add(1, Ordering::Relaxed);
                // A local handler answers without waiting: let the churn have the threads too.
                tokio::task::yield_now().await;
            }
        })
    };
    // Services leave and come back, each time moving ranges of the others, until the node has
    // published many times what the subscribers' buffer and window hold.
    let churned: Vec<String> = a
        .router()
        .local_services()
        .into_iter()
        .filter(|s| &*s.stream == "s")
        .map(|s| s.id.to_string())
        .take(4)
        .collect();
    let mut watcher = a.events();
    let mut published = 0;
    let started = Instant::now();
    while published < 500 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{published} events"
        );
        for id in &churned {
            assert!(a.router().withdraw(id).await.unwrap());
            assert!(a.router().restore(id).await.unwrap());
        }
        // A watcher that reads as events come, to count them (its own losses included).
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(50), watcher.recv()).await
        {
            published += match event {
                MeshEvent::Lost { count } => count as usize,
                _ => 1,
            };
        }
    }
    let during = answered.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(
        during > 0,
        "requests were answered while {published} events were published"
    );

    // The Rust subscriber that never read: its snapshot, then the notice.
    let mut lost = None;
    while let Some(event) = slow.try_recv() {
        if let MeshEvent::Lost { count } = event {
            lost = Some(count);
            break;
        }
    }
    assert!(
        lost.is_some_and(|n| n > 0),
        "the subscriber that never read is told it lost events"
    );
    // The HTTP client, reading now: the notice, in its stream.
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !text.contains("event: lost")
            || !text[text.find("event: lost").unwrap()..].contains("\n\n")
        {
            let frame = body.frame().await.expect("the stream goes on").unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&data));
            }
        }
    });
    read.await
        .unwrap_or_else(|_| panic!("no lost event: {text}"));
    let count = &data_of(&text, "lost")[0]["count"];
    assert!(count.as_u64().unwrap() > 0, "{count}");
    drop(body);
    Arc::into_inner(a).unwrap().shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_not_closed_as_an_idle_connection() {
    let idle_timeout = Duration::from_millis(200);
    let config = NodeConfig::default().idle_timeout(idle_timeout);
    let a = node_with(&[], 1, config).await;
    let mut stream = tokio::task::block_in_place(|| open_stream(&a, ""));
    tokio::task::block_in_place(|| {
        read_until(&mut stream, Duration::from_secs(5), |t| {
            t.contains("event: ownership")
        })
    });
    // Several idle periods with nothing to send (a plain connection would be closed after two),
    // then an event still arrives.
    let quiet = Instant::now();
    tokio::task::block_in_place(|| {
        let mut buf = [0u8; 1024];
        stream.set_read_timeout(Some(idle_timeout)).unwrap();
        while quiet.elapsed() < idle_timeout * 5 {
            match stream.read(&mut buf) {
                Ok(0) => panic!("the stream was closed after {:?}", quiet.elapsed()),
                Ok(_) => {}
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "{e}"
                ),
            }
        }
    });
    let b = node_with(&[a.seed_address().unwrap()], 1, NodeConfig::default()).await;
    tokio::task::block_in_place(|| {
        read_until(&mut stream, Duration::from_secs(10), |t| {
            t.contains("\"kind\":\"joined\"")
        })
    });
    drop(stream);
    for node in [b, a] {
        node.shutdown().await.unwrap();
    }
}
