//! Multi-node behaviour through real sockets: placement, broadcast, leaving, crashing, rejoining.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use meshage::{HandlerError, HashRing, Message, NodeConfig};
use serde_json::json;

use crate::common::*;

fn service_ids(node: &meshage::Node) -> Vec<String> {
    node.router()
        .table()
        .services_of("echo")
        .map(|s| s.id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sends_each_key_to_the_rings_owner() {
    let nodes = echo_cluster(3).await;
    let ids = service_ids(&nodes[0]);
    assert_eq!(ids.len(), 3);
    let ring = HashRing::new(&ids);
    let http = Http::default();
    let mut owners_seen = HashSet::new();
    for i in 0..300 {
        let key = format!("user-{i}");
        let expected = ring.get(&key).unwrap();
        for node in &nodes {
            let answer = http
                .post(&format!("{}/api/echo/{key}", node.endpoint()), r#"{"n":1}"#)
                .await;
            assert_eq!(
                answer.status,
                200,
                "{key} via {}: {:?}",
                node.endpoint(),
                answer.body
            );
            assert_eq!(
                answer.service_id().as_deref(),
                Some(expected),
                "key {key} via {}",
                node.endpoint()
            );
            let body = answer.json();
            assert_eq!(body["by"], expected, "the handler that ran is the owner");
            assert_eq!(body["echoed"], json!({"n": 1}));
        }
        owners_seen.insert(expected.to_owned());
    }
    assert_eq!(owners_seen.len(), 3, "300 keys spread over the 3 services");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_send_and_broadcast_reach_every_service() {
    let nodes = echo_cluster(3).await;
    let router = nodes[1].router();
    let ids = service_ids(&nodes[1]);
    let ring = HashRing::new(&ids);
    for key in ["a", "b", "c", "d", "e", "f"] {
        let answer = router
            .send(Message::new("echo", key, json!({"k": key})))
            .await
            .unwrap();
        assert_eq!(answer["by"], ring.get(key).unwrap());
        assert_eq!(answer["echoed"], json!({"k": key}));
    }
    let entries = router
        .broadcast(Message::new("echo", "any", json!("hi")))
        .await
        .unwrap();
    assert_eq!(entries.len(), 3);
    let by: HashSet<String> = entries
        .iter()
        .map(|e| e["by"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(by, ids.iter().cloned().collect::<HashSet<_>>());

    let http = Http::default();
    let answer = http
        .post(
            &format!("{}/api/broadcast/echo/k", nodes[2].endpoint()),
            "[1,2]",
        )
        .await;
    assert_eq!(answer.status, 200);
    let body = answer.json();
    assert_eq!(body.as_array().map(Vec::len), Some(3), "{body}");
    assert!(body
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["echoed"] == json!([1, 2])));
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_converge_quickly() {
    let start = Instant::now();
    let first = echo_node(&[]).await;
    let seed = vec![first.seed_address().unwrap()];
    let second = echo_node(&seed).await;
    let third = echo_node(&seed).await;
    let nodes = vec![first, second, third];
    wait_converged(&nodes, 3).await;
    // The goal is 1 s (the original took 2.5-4 s); the benchmark reports the median. The
    // deadline here only guards against a regression to the original's pace.
    let took = start.elapsed();
    eprintln!("3-node convergence took {took:?}");
    assert!(took < Duration::from_secs(3), "convergence took {took:?}");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_is_dropped_at_once_and_its_keys_move() {
    let mut nodes = echo_cluster(3).await;
    let leaving = nodes.pop().unwrap();
    let leaving_service = leaving.router().local_services()[0].id.to_string();
    let ids = service_ids(&nodes[0]);
    let ring = HashRing::new(&ids);
    let moved: Vec<String> = (0..200)
        .map(|i| format!("k{i}"))
        .filter(|k| ring.get(k) == Some(leaving_service.as_str()))
        .collect();
    assert!(!moved.is_empty());

    let started = Instant::now();
    leaving.shutdown().await.unwrap();
    let dropped = wait_until(
        Duration::from_secs(3),
        "peers drop the leaving node",
        || {
            nodes
                .iter()
                .all(|n| n.router().table().service(&leaving_service).is_none())
        },
    )
    .await;
    eprintln!(
        "leaving node dropped {dropped:?} after shutdown returned ({:?} after it began)",
        started.elapsed()
    );

    let remaining: Vec<String> = service_ids(&nodes[0]);
    let after = HashRing::new(&remaining);
    let http = Http::default();
    for key in &moved {
        for node in &nodes {
            let answer = http
                .post(&format!("{}/api/echo/{key}", node.endpoint()), "{}")
                .await;
            assert_eq!(answer.status, 200, "{key}: {:?}", answer.body);
            assert_eq!(answer.service_id().as_deref(), after.get(key));
        }
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_node_is_dropped_after_failure_detection() {
    let mut nodes = echo_cluster(3).await;
    let crashed = nodes.pop().unwrap();
    let crashed_service = crashed.router().local_services()[0].id.to_string();
    crashed.kill();
    let took = wait_until(
        Duration::from_secs(6),
        "failure detection drops the crashed node",
        || {
            nodes
                .iter()
                .all(|n| n.router().table().service(&crashed_service).is_none())
        },
    )
    .await;
    eprintln!("crashed node dropped after {took:?}");

    let http = Http::default();
    for i in 0..50 {
        let answer = http
            .post(&format!("{}/api/echo/x{i}", nodes[0].endpoint()), "{}")
            .await;
        assert_eq!(answer.status, 200);
        assert_ne!(
            answer.service_id().as_deref(),
            Some(crashed_service.as_str())
        );
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_with_new_services() {
    let mut nodes = echo_cluster(3).await;
    let seed = vec![nodes[0].seed_address().unwrap()];
    let old = nodes.pop().unwrap();
    let old_service = old.router().local_services()[0].id.to_string();
    old.shutdown().await.unwrap();
    wait_converged(&nodes, 2).await;

    nodes.push(echo_node(&seed).await);
    wait_converged(&nodes, 3).await;
    let new_service = nodes[2].router().local_services()[0].id.to_string();
    assert_ne!(new_service, old_service);
    for node in &nodes {
        assert!(node.router().table().service(&new_service).is_some());
        assert!(node.router().table().service(&old_service).is_none());
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_registered_after_start_join_the_ring() {
    let nodes = echo_cluster(2).await;
    let id = nodes[1]
        .router()
        .register(
            "late",
            meshage::handler_fn(
                |data, _h| async move { Ok::<_, HandlerError>(json!({"late": data})) },
            ),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "both nodes see the late service",
        || {
            nodes
                .iter()
                .all(|n| n.router().table().service(&id).is_some())
        },
    )
    .await;
    let answer = Http::default()
        .post(&format!("{}/api/late/k", nodes[0].endpoint()), "7")
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!({"late": 7}));
    assert_eq!(answer.service_id(), Some(id.clone()));

    assert!(nodes[1].router().unregister(&id).await.unwrap());
    wait_until(
        Duration::from_secs(5),
        "both nodes drop the withdrawn service",
        || {
            nodes
                .iter()
                .all(|n| n.router().table().service(&id).is_none())
        },
    )
    .await;
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_ends_within_the_request_timeout() {
    let config = NodeConfig::default().request_timeout(Duration::from_millis(300));
    let slow = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register("slow", |_data, _h| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, HandlerError>(json!(null))
        })
        .config(config.clone())
        .start()
        .await
        .unwrap();
    let seed = vec![slow.seed_address().unwrap()];
    let entry = echo_node_with(&seed, config).await;
    let nodes = vec![slow, entry];
    wait_converged(&nodes, 2).await;
    let http = Http::default();
    for node in &nodes {
        let started = Instant::now();
        let answer = http
            .post(&format!("{}/api/slow/k", node.endpoint()), "{}")
            .await;
        let took = started.elapsed();
        assert_eq!(answer.status, 504, "{:?}", answer.body);
        assert!(answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("no answer"));
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let started = counter();
    let s = started.clone();
    let node = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register("work", move |_d, _h| {
            let s = s.clone();
            async move {
                s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(700)).await;
                Ok::<_, HandlerError>(json!("done"))
            }
        })
        .start()
        .await
        .unwrap();
    wait_converged(std::slice::from_ref(&node), 1).await;
    let url = format!("{}/api/work/k", node.endpoint());
    let http = Http::default();
    let in_flight = tokio::spawn(async move { http.post(&url, "{}").await });
    wait_until(
        Duration::from_secs(5),
        "the request is being handled",
        || count(&started) == 1,
    )
    .await;
    node.shutdown().await.unwrap();
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), json!("done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_evenly_enough() {
    // Not a speed goal: a sanity check that the ring spreads keys, so the placement tests above
    // exercise forwarding to every node.
    let nodes = echo_cluster(3).await;
    let ids = service_ids(&nodes[0]);
    let mut per: HashMap<String, usize> = HashMap::new();
    for i in 0..3000 {
        let owner = nodes[0]
            .router()
            .table()
            .owner("echo", &format!("{i}"))
            .unwrap()
            .id
            .to_string();
        *per.entry(owner).or_default() += 1;
    }
    for id in &ids {
        let share = per.get(id).copied().unwrap_or(0);
        assert!(
            (500..=1600).contains(&share),
            "{id} owns {share} of 3000 keys"
        );
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_idle_connections() {
    // Idle keep-alive HTTP connections from a client, and idle peer links from the other nodes,
    // must not hold a stopping node for its whole drain timeout (10 s by default).
    let mut nodes = echo_cluster(3).await;
    let http = Http::default();
    for i in 0..60 {
        for node in &nodes {
            let answer = http
                .post(&format!("{}/api/echo/idle-{i}", node.endpoint()), "{}")
                .await;
            assert_eq!(answer.status, 200);
        }
    }
    let stopping = nodes.pop().unwrap();
    let started = Instant::now();
    stopping.shutdown().await.unwrap();
    let took = started.elapsed();
    eprintln!("shutdown with idle connections took {took:?}");
    assert!(
        took < Duration::from_secs(5),
        "shutdown waited {took:?} for idle connections"
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// Opens a raw connection to `node` and writes `bytes` (maybe nothing, maybe half a request).
async fn raw_connection(node: &meshage::Node, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let authority = node.endpoint().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads until the node closes `stream` (end of file or reset); `Err` after `timeout`.
async fn closed_within(stream: &mut tokio::net::TcpStream, timeout: Duration) -> Result<(), ()> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .map_err(|_| ())
}

const HALF_A_HEAD: &[u8] = b"POST /api/echo/k HTTP/1.1\r\nHost: x\r\n";
const A_REQUEST: &[u8] =
    b"POST /api/echo/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_client_that_never_finishes_its_request() {
    // hyper's graceful shutdown would wait for such a connection to send a whole request, and
    // for one that sent nothing yet, so the node would stop only when its drain timeout (10 s
    // by default) ran out.
    let node = echo_node(&[]).await;
    let mut half = raw_connection(&node, HALF_A_HEAD).await;
    let mut silent = raw_connection(&node, b"").await;
    let http = Http::default();
    let answer = http
        .post(&format!("{}/api/echo/k", node.endpoint()), "{}")
        .await;
    assert_eq!(answer.status, 200);
    let started = Instant::now();
    node.shutdown().await.unwrap();
    let took = started.elapsed();
    eprintln!("shutdown with a half-sent request head took {took:?}");
    assert!(took < Duration::from_secs(3), "shutdown waited {took:?}");
    closed_within(&mut half, Duration::from_secs(5))
        .await
        .expect("the half-open request's connection is closed");
    closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("the silent connection is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_closed_and_busy_ones_kept() {
    let idle_timeout = Duration::from_millis(300);
    let node = echo_node_with(&[], NodeConfig::default().idle_timeout(idle_timeout)).await;
    // One connection sends a request and then nothing; one never finishes its request head.
    let mut idle = raw_connection(&node, A_REQUEST).await;
    let mut half = raw_connection(&node, HALF_A_HEAD).await;
    // One keeps sending requests, a new one well within every idle period.
    let mut busy = raw_connection(&node, b"").await;
    let started = Instant::now();
    while started.elapsed() < idle_timeout * 4 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        busy.write_all(A_REQUEST).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = busy.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "the busy connection was closed after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(idle_timeout / 6).await;
    }
    for (what, stream) in [("idle", &mut idle), ("half-sent", &mut half)] {
        let waited = Instant::now();
        closed_within(stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|_| panic!("the {what} connection is still open"));
        eprintln!(
            "{what} connection closed {:?} after the busy one's last request",
            waited.elapsed()
        );
    }
    node.shutdown().await.unwrap();
}

/// Handlers that keep a thread busy (as computing would), reached from another node: one peer
/// link carries every request, and still the owner runs them on both of its worker threads at
/// once, not one after another inside the link's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_handlers_reached_over_one_link_share_the_owners_threads() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let owner = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register("work", move |_data: serde_json::Value, _header| {
            let (running, most) = (r.clone(), m.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(json!({}))
            }
        })
        .start()
        .await
        .unwrap();
    let entry = echo_node(&[owner.seed_address().unwrap()]).await;
    wait_until(
        Duration::from_secs(10),
        "the entry sees the work service",
        || entry.router().table().services_of("work").count() == 1,
    )
    .await;
    let sends = (0..16).map(|i| {
        entry
            .router()
            .send(Message::new("work", format!("k{i}"), json!({})))
    });
    for answer in futures_util::future::join_all(sends).await {
        assert_eq!(answer.expect("every request is answered"), json!({}));
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "busy handlers ran one at a time on the owner"
    );
    entry.shutdown().await.unwrap();
    owner.shutdown().await.unwrap();
}
