//! Behaviour under failure on one host (no root needed): the owner of a key dies and its keys
//! go elsewhere at once, requests that may have reached it are resent only when marked
//! idempotent, the deadline header bounds a request, a node sheds load above its in-flight cap,
//! and a broadcast reports the node that failed. `tests/netns/` runs the same failures across
//! network namespaces, in real processes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshage::{HandlerError, Message, Node, NodeConfig, SendOptions};
use serde_json::{json, Value};

use crate::common::*;

/// Three nodes on stream `work`, whose handler counts its runs in `runs`, names its service,
/// and sleeps `sleep_ms` from the message first.
async fn work_cluster(runs: Arc<AtomicUsize>, config: NodeConfig) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for _ in 0..3 {
        let seeds: Vec<String> = nodes
            .first()
            .and_then(|n| n.seed_address())
            .into_iter()
            .collect();
        let runs = runs.clone();
        let node = meshage::init(gossip(&seeds), "127.0.0.1:0")
            .register("work", move |data: Value, header: meshage::Header| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let sleep = data["sleep_ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(sleep)).await;
                    Ok::<_, HandlerError>(json!({ "by": &*header.service_id }))
                }
            })
            .config(config.clone())
            .start()
            .await
            .expect("node starts");
        nodes.push(node);
    }
    wait_converged(&nodes, 3).await;
    nodes
}

/// A key that `owner` owns, as `via` sees the ring.
fn key_owned_by(via: &Node, owner: &Node) -> String {
    let service = owner.router().local_services()[0].id.to_string();
    (0..1000)
        .map(|i| format!("key-{i}"))
        .find(|k| via.router().table().owner("work", k).map(|s| &*s.id) == Some(&*service))
        .expect("the owner owns one of 1000 keys")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_keys_answer_at_once_without_waiting_for_gossip() {
    let runs = counter();
    let mut nodes = work_cluster(runs.clone(), NodeConfig::default()).await;
    let dead = nodes.pop().unwrap();
    let dead_service = dead.router().local_services()[0].id.to_string();
    let key = key_owned_by(&nodes[0], &dead);
    dead.kill();

    // Gossip takes seconds to notice; the first failed connection is enough here.
    let http = Http::default();
    let started = Instant::now();
    let answer = http
        .post(&format!("{}/api/work/{key}", nodes[0].endpoint()), "{}")
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_ne!(answer.service_id().as_deref(), Some(dead_service.as_str()));
    assert!(
        nodes[0].router().table().service(&dead_service).is_none(),
        "the dead owner is off the entry's rings"
    );
    for i in 0..100 {
        let answer = http
            .post(&format!("{}/api/work/k{i}", nodes[0].endpoint()), "{}")
            .await;
        assert_eq!(answer.status, 200, "k{i}: {:?}", answer.body);
    }
    eprintln!("101 keys answered {:?} after the kill", started.elapsed());
    assert_eq!(count(&runs), 101, "each request ran once");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// Requests in flight to an owner that dies all fail at once; the first makes it suspect and
/// the others find it so: one table rebuild for the suspicion, not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_to_a_dead_owner_make_it_suspect_once() {
    let runs = counter();
    let mut nodes = work_cluster(runs.clone(), NodeConfig::default()).await;
    let dead = nodes.pop().unwrap();
    let dead_service = dead.router().local_services()[0].id.to_string();
    let table = nodes[0].router().table();
    let keys: Vec<String> = (0..2000)
        .map(|i| format!("key-{i}"))
        .filter(|k| table.owner("work", k).map(|s| &*s.id) == Some(&*dead_service))
        .take(20)
        .collect();
    assert_eq!(keys.len(), 20);
    let http = Http::default();
    let sends = keys.iter().map(|key| {
        let url = format!("{}/api/work/{key}", nodes[0].endpoint());
        let http = &http;
        async move { http.post(&url, r#"{"sleep_ms": 20000}"#).await }
    });
    let answers = futures_util::future::join_all(sends);
    let kill = async {
        wait_until(
            Duration::from_secs(10),
            "20 requests running on the owner",
            || count(&runs) == 20,
        )
        .await;
        let before = nodes[0].router().table().version;
        dead.kill();
        before
    };
    let (answers, before) = tokio::join!(answers, kill);
    for answer in answers {
        assert_eq!(answer.status, 502, "{:?}", answer.body);
    }
    let rebuilds = nodes[0].router().table().version - before;
    // One for the suspicion; gossip may yet report the death within the test.
    assert!(
        rebuilds <= 2,
        "{rebuilds} table rebuilds for one dead owner"
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_may_have_run_is_resent_only_when_idempotent() {
    let runs = counter();
    let mut nodes = work_cluster(runs.clone(), NodeConfig::default()).await;
    let owner = nodes.pop().unwrap();
    let owner_service = owner.router().local_services()[0].id.to_string();
    let key = key_owned_by(&nodes[0], &owner);

    // Not idempotent: the owner dies while it runs the request; the answer is a 502 that
    // names it, and nothing runs the request again.
    let url = format!("{}/api/work/{key}", nodes[0].endpoint());
    let http = Http::default();
    let sending = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { http.post(&url, r#"{"sleep_ms": 3000}"#).await })
    };
    wait_until(Duration::from_secs(5), "the owner runs the request", || {
        count(&runs) == 1
    })
    .await;
    owner.kill();
    let answer = sending.await.unwrap();
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    let error = answer.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains(&owner_service), "{error}");
    assert!(error.contains("not resent"), "{error}");
    assert_eq!(count(&runs), 1);

    // Idempotent: the same loss is resent to the key's next owner.
    let restarted = {
        let seeds = vec![nodes[0].seed_address().unwrap()];
        let runs = runs.clone();
        meshage::init(gossip(&seeds), "127.0.0.1:0")
            .register("work", move |data: Value, header: meshage::Header| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let sleep = data["sleep_ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(sleep)).await;
                    Ok::<_, HandlerError>(json!({ "by": &*header.service_id }))
                }
            })
            .start()
            .await
            .unwrap()
    };
    wait_until(
        Duration::from_secs(10),
        "the new node is on every ring",
        || {
            nodes.iter().all(|n| {
                n.router()
                    .table()
                    .service(&restarted.router().local_services()[0].id)
                    .is_some()
            })
        },
    )
    .await;
    let key = key_owned_by(&nodes[0], &restarted);
    let url = format!("{}/api/work/{key}", nodes[0].endpoint());
    let before = count(&runs);
    let sending = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            http.request(
                http::Method::POST,
                &url,
                &[
                    ("content-type", "application/json"),
                    ("x-idempotent", "true"),
                ],
                r#"{"sleep_ms": 3000}"#,
            )
            .await
            .unwrap()
        })
    };
    wait_until(Duration::from_secs(5), "the owner runs the request", || {
        count(&runs) == before + 1
    })
    .await;
    let gone = restarted.router().local_services()[0].id.to_string();
    restarted.kill();
    let answer = sending.await.unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_ne!(answer.service_id().as_deref(), Some(gone.as_str()));
    assert_eq!(
        count(&runs),
        before + 2,
        "it ran again elsewhere, as allowed"
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_header_bounds_a_request_and_its_forward() {
    let runs = counter();
    let nodes = work_cluster(runs.clone(), NodeConfig::default()).await;
    let http = Http::default();
    let local_key = key_owned_by(&nodes[0], &nodes[0]);
    let remote_key = key_owned_by(&nodes[0], &nodes[1]);
    for key in [&local_key, &remote_key] {
        let started = Instant::now();
        let answer = http
            .request(
                http::Method::POST,
                &format!("{}/api/work/{key}", nodes[0].endpoint()),
                &[("x-request-timeout", "300")],
                r#"{"sleep_ms": 5000}"#,
            )
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(answer.status, 504, "{key}: {:?}", answer.body);
        assert!(took < Duration::from_secs(3), "{key} took {took:?}");
    }
    for bad in ["0", "soon", "-5"] {
        let answer = http
            .request(
                http::Method::POST,
                &format!("{}/api/work/x", nodes[0].endpoint()),
                &[("x-request-timeout", bad)],
                "{}",
            )
            .await
            .unwrap();
        assert_eq!(answer.status, 400, "{bad}: {:?}", answer.body);
        assert!(answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("x-request-timeout"));
    }
    // The library's option does the same.
    let started = Instant::now();
    let error = nodes[0]
        .router()
        .send_with(
            Message::new("work", &*remote_key, json!({"sleep_ms": 5000})),
            SendOptions::default().timeout(Some(Duration::from_millis(300))),
        )
        .await
        .unwrap_err();
    assert_eq!(error.status(), 504, "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_its_in_flight_cap_a_node_answers_503_with_retry_after() {
    let running = counter();
    let started = running.clone();
    let node = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register("slow", move |_data: Value, _h| {
            started.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Ok::<_, HandlerError>(json!("done"))
            }
        })
        .config(NodeConfig::default().max_in_flight(2))
        .start()
        .await
        .unwrap();
    wait_converged(std::slice::from_ref(&node), 1).await;
    let http = Http::default();
    let url = format!("{}/api/slow/k", node.endpoint());
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.post(&url, "{}").await })
        })
        .collect();
    wait_until(Duration::from_secs(5), "both slots are taken", || {
        count(&running) == 2
    })
    .await;
    let refused = http.post(&url, "{}").await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(count(&running), 2, "the refused request did not run");
    assert_eq!(
        refused
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("limit of 2"));
    for request in busy {
        assert_eq!(request.await.unwrap().status, 200);
    }
    // The slots come back.
    assert_eq!(http.post(&url, "{}").await.status, 200);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_during_a_failure_reports_the_node_that_failed() {
    let runs = counter();
    let mut nodes = work_cluster(runs.clone(), NodeConfig::default()).await;
    let dead = nodes.pop().unwrap();
    let dead_service = dead.router().local_services()[0].id.to_string();
    let key = key_owned_by(&nodes[0], &dead);
    dead.kill();
    // A send notices the failure first; the broadcast after it reports the node.
    let http = Http::default();
    assert_eq!(
        http.post(&format!("{}/api/work/{key}", nodes[0].endpoint()), "{}")
            .await
            .status,
        200
    );
    let answer = http
        .post(
            &format!("{}/api/broadcast/work/x", nodes[0].endpoint()),
            "{}",
        )
        .await;
    assert_eq!(answer.status, 200);
    let entries = answer.json();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 3, "{entries:?}");
    let answered: Vec<&Value> = entries.iter().filter(|e| e.get("by").is_some()).collect();
    assert_eq!(answered.len(), 2, "{entries:?}");
    let failed: Vec<&Value> = entries
        .iter()
        .filter(|e| e.get("error").is_some())
        .collect();
    assert_eq!(failed.len(), 1, "{entries:?}");
    assert_eq!(failed[0]["serviceId"], dead_service.as_str());
    assert_eq!(failed[0]["status"], 502);

    // Without a send first, the broadcast tries the dead node itself and says so too.
    let runs2 = counter();
    let mut others = work_cluster(runs2, NodeConfig::default()).await;
    let dead = others.pop().unwrap();
    let dead_service = dead.router().local_services()[0].id.to_string();
    dead.kill();
    let entries = others[0]
        .router()
        .broadcast(Message::new("work", "x", json!({})))
        .await
        .unwrap();
    assert_eq!(entries.len(), 3, "{entries:?}");
    let failed: Vec<&Value> = entries
        .iter()
        .filter(|e| e.get("error").is_some())
        .collect();
    assert_eq!(failed.len(), 1, "{entries:?}");
    assert_eq!(failed[0]["serviceId"], dead_service.as_str());
    for node in nodes.into_iter().chain(others) {
        node.shutdown().await.unwrap();
    }
}

/// A handler that panics, whether while it runs or before it returns its future, answers 500
/// with a JSON error, locally and through a forward; the client's connection, the peer link and
/// the node all carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_answers_500_and_nothing_else_breaks() {
    let owner = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register("boom", |data: Value, _header: meshage::Header| async move {
            if data["now"] == json!(true) {
                panic!("handler bug");
            }
            Ok::<_, HandlerError>(json!({}))
        })
        .register("early", |_data: Value, _header: meshage::Header| {
            panic!("handler bug before its future");
            #[allow(unreachable_code)]
            std::future::ready(Ok::<_, HandlerError>(json!({})))
        })
        .register("echo", echo_by)
        .start()
        .await
        .unwrap();
    let entry = meshage::init(gossip(&[owner.seed_address().unwrap()]), "127.0.0.1:0")
        .start()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the entry sees the owner's 3 services",
        || entry.router().table().services.len() == 3,
    )
    .await;
    let http = Http::default();
    for node in [&owner, &entry] {
        for (stream, body) in [("boom", r#"{"now":true}"#), ("early", "{}")] {
            let url = format!("{}/api/{stream}/k", node.endpoint());
            let answer = http.post(&url, body).await;
            assert_eq!(answer.status, 500, "{url}: {:?}", answer.body);
            assert!(
                answer.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("panicked")),
                "{url}: {:?}",
                answer.body
            );
            // The same client, and through the entry the same link, still work.
            let after = http
                .post(&format!("{}/api/echo/k", node.endpoint()), r#"{"a":1}"#)
                .await;
            assert_eq!(after.status, 200, "after {url}: {:?}", after.body);
            assert_eq!(after.json()["echoed"], json!({"a": 1}));
            let fine = http
                .post(&format!("{}/api/boom/k", node.endpoint()), "{}")
                .await;
            assert_eq!(fine.status, 200, "after {url}: {:?}", fine.body);
        }
    }
    entry.shutdown().await.unwrap();
    owner.shutdown().await.unwrap();
}

/// A node that membership declares dead while it is answering requests over the link (a false
/// suspicion: a busy or lossy network can make a live node look dead) still delivers those
/// answers: the link takes no new requests but is not cut under the ones it carries. Uses the
/// in-memory membership of `mtls.rs`, to declare the death at a chosen moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_the_link_to_a_node_declared_dead_still_get_their_answers() {
    let cluster = crate::mtls::SharedCluster::new();
    let runs = counter();
    let start = |cluster: crate::mtls::SharedCluster, runs: Arc<AtomicUsize>| async move {
        meshage::init(cluster, "127.0.0.1:0")
            .register("slow", move |data: Value, _header| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    Ok::<_, HandlerError>(data)
                }
            })
            .start()
            .await
            .expect("node starts")
    };
    let a = start(cluster.clone(), runs.clone()).await;
    let b = start(cluster.clone(), runs.clone()).await;
    wait_until(Duration::from_secs(5), "both tables list both", || {
        [&a, &b]
            .iter()
            .all(|n| n.router().table().services.len() == 2)
    })
    .await;
    let b_service = b.router().local_services()[0].id.to_string();
    let table = a.router().table();
    let keys: Vec<String> = (0..500)
        .map(|i| format!("k{i}"))
        .filter(|k| table.owner("slow", k).map(|s| &*s.id) == Some(&*b_service))
        .take(5)
        .collect();
    let http = Http::default();
    let sends = keys.iter().map(|key| {
        let url = format!("{}/api/slow/{key}", a.endpoint());
        let http = &http;
        async move { http.post(&url, r#"{"n":1}"#).await }
    });
    let declare = async {
        // While B runs the requests, A's membership says B is dead.
        wait_until(Duration::from_secs(10), "B runs the 5 requests", || {
            count(&runs) == 5
        })
        .await;
        cluster.declare_dead(b.endpoint());
    };
    let (answers, ()) = tokio::join!(futures_util::future::join_all(sends), declare);
    for answer in answers {
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert_eq!(answer.headers["x-service-id"], b_service.as_str());
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
