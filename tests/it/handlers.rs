//! Handlers in any language, in real processes: the example Python and Node handlers behind
//! `meshage node --handler` in a 3-node cluster; health checks withdraw a handler that goes down
//! and advertise it again when it is back.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::process::{meshage_node, node_handler, python_handler, HandlerProc, NodeProc};
use crate::common::{enc, wait_until_async, Http};

const STREAM: &str = "work";

/// Node 1 serves `work` with the Python handler (`--handler`), node 2 with the Node one (from
/// a handlers file), node 3 has no handler of its own.
struct Cluster {
    nodes: Vec<NodeProc>,
    python: HandlerProc,
    // Kept for its guard: the Node handler lives as long as the cluster.
    _js: HandlerProc,
    handlers_file: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.handlers_file);
    }
}

impl Cluster {
    async fn start(extra: &[&str]) -> Cluster {
        let python = python_handler(0);
        let js = node_handler(0);
        let py_arg = format!("{STREAM}={}", python.url);
        let handlers_file = std::env::temp_dir().join(format!(
            "meshage-handlers-{}-{}.conf",
            std::process::id(),
            js.port
        ));
        std::fs::write(
            &handlers_file,
            format!("# the Node.js example\n\n{STREAM}={}\n", js.url),
        )
        .unwrap();
        let with = |flag: &str, value: &str| -> Vec<String> {
            let mut args = vec![flag.to_owned(), value.to_owned()];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let args1 = with("--handler", &py_arg);
        let first = meshage_node(
            "node 1 (python)",
            &[],
            &args1.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let seed = first.seed.clone();
        let args2 = with("--handlers-file", handlers_file.to_str().unwrap());
        let second = meshage_node(
            "node 2 (node.js)",
            &[&seed],
            &args2.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let third = meshage_node("node 3", &[&seed], extra);
        let cluster = Cluster {
            nodes: vec![first, second, third],
            python,
            _js: js,
            handlers_file,
        };
        let http = Http::default();
        wait_until_async(
            Duration::from_secs(15),
            "every node lists both handlers",
            || cluster.all_see(&http, 2),
        )
        .await;
        cluster
    }

    /// Whether every node's `/api/services` lists `n` services of the stream.
    async fn all_see(&self, http: &Http, n: usize) -> bool {
        for node in &self.nodes {
            if services(http, node).await.len() != n {
                return false;
            }
        }
        true
    }

    /// The id of the service node `i` runs.
    async fn service_of(&self, http: &Http, i: usize) -> String {
        services(http, &self.nodes[0])
            .await
            .into_iter()
            .find(|(_, node)| *node == self.nodes[i].id)
            .map(|(id, _)| id)
            .unwrap_or_else(|| panic!("node {} runs no `{STREAM}` service", i + 1))
    }
}

/// `(service id, node id)` of each `work` service in the node's `/api/services`.
async fn services(http: &Http, node: &NodeProc) -> Vec<(String, String)> {
    let Ok(answer) = http
        .request(
            http::Method::GET,
            &format!("{}/api/services", node.endpoint),
            &[],
            bytes::Bytes::new(),
        )
        .await
    else {
        return Vec::new();
    };
    let list: Vec<Value> = serde_json::from_slice(&answer.body).unwrap_or_default();
    list.iter()
        .filter(|s| s["stream"] == STREAM)
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_node_handlers_answer_through_every_node() {
    let cluster = Cluster::start(&[]).await;
    let http = Http::default();
    let python_service = cluster.service_of(&http, 0).await;
    let js_service = cluster.service_of(&http, 1).await;

    let mut handled_by = HashSet::new();
    let keys: Vec<String> = (0..30)
        .map(|i| format!("user-{i}"))
        .chain(["a b/ü%?".to_owned()])
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let mut owners = HashSet::new();
        for node in &cluster.nodes {
            let answer = http
                .post(
                    &format!("{}/api/{STREAM}/{}", node.endpoint, enc(key)),
                    &format!(r#"{{"i": {i}}}"#),
                )
                .await;
            assert_eq!(answer.status, 200, "{key}: {:?}", answer.body);
            let service = answer.service_id().expect("X-Service-ID");
            let body = answer.json();
            let expected = if service == python_service {
                "python"
            } else {
                assert_eq!(service, js_service);
                "node"
            };
            assert_eq!(body["handledBy"], expected, "{body}");
            assert_eq!(body["serviceId"], service.as_str(), "{body}");
            assert_eq!(body["stream"], STREAM);
            assert_eq!(body["key"], key.as_str(), "the key survives the headers");
            assert_eq!(body["data"], json!({ "i": i }));
            handled_by.insert(expected);
            owners.insert(service);
        }
        assert_eq!(
            owners.len(),
            1,
            "{key} has one owner, whichever node is asked"
        );
    }
    assert_eq!(
        handled_by,
        HashSet::from(["python", "node"]),
        "the keys reach both handlers"
    );

    // A handler's 4xx comes back as it was.
    let answer = http
        .post(
            &format!("{}/api/{STREAM}/k", cluster.nodes[2].endpoint),
            "{oops",
        )
        .await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert!(answer.json()["error"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));

    // A broadcast reaches both.
    let answer = http
        .post(
            &format!("{}/api/broadcast/{STREAM}/k", cluster.nodes[2].endpoint),
            "[1]",
        )
        .await;
    assert_eq!(answer.status, 200);
    let by: HashSet<String> = answer
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["handledBy"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(by, HashSet::from(["python".into(), "node".into()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_goes_down_is_withdrawn_and_comes_back() {
    let mut cluster = Cluster::start(&["--health-interval", "0.2", "--health-failures", "2"]).await;
    let http = Http::default();
    let python_service = cluster.service_of(&http, 0).await;
    let js_service = cluster.service_of(&http, 1).await;
    // Keys the Python handler owns, as node 3 locates them.
    let mut placement = HashMap::new();
    for i in 0..40 {
        let key = format!("k{i}");
        let located = http
            .get(&format!(
                "{}/api/locate/{STREAM}/{key}",
                cluster.nodes[2].endpoint
            ))
            .await
            .json();
        placement.insert(key, located["serviceId"].as_str().unwrap().to_owned());
    }
    let python_keys: Vec<&String> = placement
        .iter()
        .filter(|(_, s)| **s == python_service)
        .map(|(k, _)| k)
        .collect();
    assert!(!python_keys.is_empty());

    let port = cluster.python.port;
    cluster.python.proc.kill();
    let killed = Instant::now();
    wait_until_async(
        Duration::from_secs(5),
        "every node withdraws the Python handler",
        || async {
            for node in &cluster.nodes {
                if services(&http, node)
                    .await
                    .iter()
                    .any(|(id, _)| *id == python_service)
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!("withdrawn everywhere {:?} after the kill", killed.elapsed());

    for key in &python_keys {
        for node in &cluster.nodes {
            let answer = http
                .post(&format!("{}/api/{STREAM}/{key}", node.endpoint), "{}")
                .await;
            assert_eq!(answer.status, 200, "{key}: {:?}", answer.body);
            assert_eq!(answer.service_id(), Some(js_service.clone()));
            assert_eq!(answer.json()["handledBy"], "node");
        }
    }
    let members = http
        .get(&format!("{}/api/members", cluster.nodes[0].endpoint))
        .await
        .json();
    let own = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["self"] == true)
        .unwrap();
    assert_eq!(own["withdrawnServices"][0]["id"], python_service.as_str());

    cluster.python = python_handler(port);
    let restarted = Instant::now();
    wait_until_async(
        Duration::from_secs(5),
        "every node lists the Python handler again, under its old id",
        || async {
            for node in &cluster.nodes {
                if !services(&http, node)
                    .await
                    .iter()
                    .any(|(id, _)| *id == python_service)
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    eprintln!(
        "advertised again {:?} after the restart",
        restarted.elapsed()
    );
    for (key, owner) in &placement {
        let answer = http
            .post(
                &format!("{}/api/{STREAM}/{key}", cluster.nodes[2].endpoint),
                "{}",
            )
            .await;
        assert_eq!(answer.status, 200, "{key}: {:?}", answer.body);
        assert_eq!(
            answer.service_id().as_ref(),
            Some(owner),
            "{key} is back on its owner"
        );
    }
}

#[test]
fn handlers_that_cannot_work_are_refused_at_start() {
    use crate::common::process::meshage_cli;
    let run = meshage_cli(&["node", "--handler", "no-url-here"], &[], None);
    assert_eq!(run.code, 2, "clap refuses the flag: {run:?}");
    assert!(run.stderr.contains("STREAM=URL"), "{run:?}");
    let run = meshage_cli(
        &["node", "--handler", "members=http://127.0.0.1:1/"],
        &[],
        None,
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("reserved"), "{run:?}");

    let file = std::env::temp_dir().join(format!("meshage-bad-{}.conf", std::process::id()));
    std::fs::write(&file, "ok=http://127.0.0.1:1/\nwork=ftp://x/\n").unwrap();
    let run = meshage_cli(
        &["node", "--handlers-file", file.to_str().unwrap()],
        &[],
        None,
    );
    std::fs::remove_file(&file).unwrap();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("line 2"), "{run:?}");
    let run = meshage_cli(
        &["node", "--handlers-file", "/no/such/handlers.conf"],
        &[],
        None,
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("cannot read the handlers file"),
        "{run:?}"
    );
}
