//! Stable service ids (`--node-name`, [`NodeConfig::node_name`]): a named node restarted under
//! load owns exactly the keys it owned before, and a second live node with the same name is
//! refused.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshage::{HandlerError, NodeConfig, StartError};
use serde_json::{json, Value};

use crate::common::process::{meshage_node, NodeProc};
use crate::common::{gossip, wait_until_async, Http};

const KEYS: usize = 300;

/// The services of `stream` node `endpoint` routes to: (service id, endpoint), sorted.
async fn services(http: &Http, endpoint: &str, stream: &str) -> Vec<(String, String)> {
    let Ok(answer) = http
        .request(
            http::Method::GET,
            &format!("{endpoint}/api/services"),
            &[],
            "",
        )
        .await
    else {
        return Vec::new();
    };
    let mut list: Vec<(String, String)> = answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stream"] == stream)
        .map(|s| {
            let id = s["id"].as_str().unwrap().to_owned();
            (
                id,
                s["endpoints"][0]["description"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    list.sort();
    list
}

/// The owner of each of [`KEYS`] keys on `s`, as node `endpoint` locates it.
async fn owners(http: &Http, endpoint: &str) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for i in 0..KEYS {
        let key = format!("key-{i}");
        let answer = http.get(&format!("{endpoint}/api/locate/s/{key}")).await;
        let id = answer.json()["serviceId"].as_str().unwrap().to_owned();
        owners.insert(key, id);
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_node_restarted_under_load_owns_the_same_keys() {
    let http = Http::default();
    let a = meshage_node("a", &[], &["--echo", "s"]);
    let named = ["--echo", "s", "--echo", "s", "--node-name", "pod-0"];
    let mut b = meshage_node("b", &[&a.seed], &named);
    let b_services = |list: &[(String, String)], b: &NodeProc| {
        list.iter()
            .filter(|(_, endpoint)| *endpoint == b.endpoint)
            .map(|(id, _)| id.clone())
            .collect::<Vec<_>>()
    };
    wait_until_async(
        Duration::from_secs(10),
        "a routes to b's two services",
        || async { b_services(&services(&http, &a.endpoint, "s").await, &b).len() == 2 },
    )
    .await;
    let before_ids = b_services(&services(&http, &a.endpoint, "s").await, &b);
    let before = owners(&http, &a.endpoint).await;
    assert!(
        before.values().any(|id| before_ids.contains(id)),
        "some keys are b's"
    );

    // A steady load over every key, through a, for the whole restart.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let answers = Arc::new(std::sync::Mutex::new(Vec::<(usize, String, String)>::new()));
    let load = {
        let (http, url) = (http.clone(), a.endpoint.clone());
        let (stop, sent, answered, answers) = (
            stop.clone(),
            sent.clone(),
            answered.clone(),
            answers.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("key-{}", i % KEYS);
                i += 1;
                let round = sent.fetch_add(1, Ordering::Relaxed);
                let url = format!("{url}/api/s/{key}");
                let answer = http
                    .request(http::Method::POST, &url, &[], r#"{"n":1}"#)
                    .await;
                if let Ok(answer) = answer {
                    if let Some(id) = answer.status.is_success().then(|| answer.service_id()) {
                        answered.fetch_add(1, Ordering::Relaxed);
                        answers.lock().unwrap().push((round, key, id.unwrap()));
                    }
                }
            }
        })
    };
    wait_until_async(Duration::from_secs(10), "the load is answered", || async {
        answered.load(Ordering::Relaxed) > 50
    })
    .await;

    // A crash, and the same name on new ports: the old run stays live in a's view until gossip
    // declares it dead, and the new one waits for that instead of being refused.
    b.proc.kill();
    let b2 = meshage_node("b again", &[&a.seed], &named);
    assert_ne!(b2.endpoint, b.endpoint);
    wait_until_async(
        Duration::from_secs(15),
        "a routes to the restarted b",
        || async {
            let list = services(&http, &a.endpoint, "s").await;
            b_services(&list, &b2).len() == 2 && b_services(&list, &b).is_empty()
        },
    )
    .await;
    assert_eq!(
        b_services(&services(&http, &a.endpoint, "s").await, &b2),
        before_ids,
        "the restarted node advertises the ids it had"
    );
    let back = sent.load(Ordering::Relaxed);
    assert_eq!(
        owners(&http, &a.endpoint).await,
        before,
        "no key changed owner"
    );
    assert_eq!(owners(&http, &b2.endpoint).await, before, "b agrees");
    wait_until_async(Duration::from_secs(10), "the load goes on", || async {
        answered.load(Ordering::Relaxed) > 0 && sent.load(Ordering::Relaxed) > back + KEYS
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let answers = answers.lock().unwrap();
    let after: Vec<_> = answers
        .iter()
        .filter(|(round, ..)| *round >= back)
        .collect();
    assert!(
        after.len() >= KEYS / 2,
        "answers after the restart: {}",
        after.len()
    );
    for (_, key, id) in after {
        assert_eq!(&before[key], id, "{key} was answered by its old owner");
    }
}

#[tokio::test]
async fn a_second_live_node_with_the_same_name_is_refused() {
    let echo = |data: Value, _| async move { Ok::<_, HandlerError>(json!({ "echo": data })) };
    let named = |name: &str| {
        NodeConfig::default()
            .node_name(Some(name.into()))
            .name_wait(Duration::from_millis(800))
    };
    let first = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register("s", echo)
        .config(named("pod-0"))
        .start()
        .await
        .unwrap();
    let seed = vec![first.seed_address().unwrap()];
    let refused = meshage::init(gossip(&seed), "127.0.0.1:0")
        .register("s", echo)
        .config(named("pod-0"))
        .start()
        .await;
    match refused {
        Err(e @ StartError::NameTaken { .. }) => {
            let message = e.to_string();
            assert!(message.contains("name pod-0 is taken"), "{message}");
            assert!(message.contains(first.endpoint()), "{message}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a second node named pod-0 started"),
    }
    // Another name on the same stream starts, with other ids; so does a node with no name.
    let other = meshage::init(gossip(&seed), "127.0.0.1:0")
        .register("s", echo)
        .config(named("pod-1"))
        .start()
        .await
        .unwrap();
    let ids = |node: &meshage::Node| -> HashSet<String> {
        node.router()
            .local_services()
            .into_iter()
            .map(|s| s.id.to_string())
            .collect()
    };
    assert!(ids(&first).is_disjoint(&ids(&other)));
    for node in [first, other] {
        node.shutdown().await.unwrap();
    }
}
