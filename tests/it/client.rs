//! The `meshage` client commands against a running cluster: what they print, what they read,
//! and their exit codes.

use std::collections::HashSet;
use std::time::Duration;

use meshage::{HandlerError, HashRing, Header, Node};
use serde_json::{json, Value};

use crate::common::process::{meshage_cli, run, CliRun};
use crate::common::{echo_cluster, gossip, wait_until_async, Http, MESHAGE};

fn cli(node: &Node, args: &[&str]) -> CliRun {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--node", node.endpoint()]);
    meshage_cli(&all, &[], None)
}

fn assert_ok(run: &CliRun) {
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
}

/// An error: the expected code and one line on stderr that names its class.
fn assert_fails(run: &CliRun, code: i32, says: &str) {
    assert_eq!(run.code, code, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
    assert!(run.stderr.contains(says), "{run:?}");
}

fn service_ids(node: &Node) -> Vec<String> {
    node.router()
        .table()
        .services_of("echo")
        .map(|s| s.id.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_broadcast_from_the_command_line() {
    let nodes = echo_cluster(3).await;
    let ring = HashRing::new(service_ids(&nodes[0]));

    let run = cli(
        &nodes[0],
        &["send", "echo", "alice", r#"{"hello": "world"}"#],
    );
    assert_ok(&run);
    assert_eq!(run.stdout.lines().count(), 1, "compact when piped: {run:?}");
    let answer = run.json();
    assert_eq!(answer["echoed"], json!({"hello": "world"}));
    assert_eq!(answer["by"], ring.get("alice").unwrap());

    // Through another node, with the node in the environment and --json.
    let run = meshage_cli(
        &["send", "echo", "a key/with ü", "[1,2]", "--json"],
        &[("MESHAGE_NODE", nodes[2].endpoint())],
        None,
    );
    assert_ok(&run);
    assert_eq!(run.json()["echoed"], json!([1, 2]));
    assert_eq!(run.json()["key"], "a key/with ü");
    assert_eq!(run.json()["by"], ring.get("a key/with ü").unwrap());

    // From a file and from stdin; no message is {}.
    let file = std::env::temp_dir().join(format!("meshage-cli-{}.json", std::process::id()));
    std::fs::write(&file, r#"{"from": "file"}"#).unwrap();
    let at_file = format!("@{}", file.display());
    let run = cli(&nodes[1], &["send", "echo", "k", &at_file]);
    std::fs::remove_file(&file).unwrap();
    assert_ok(&run);
    assert_eq!(run.json()["echoed"], json!({"from": "file"}));
    let run = meshage_cli(
        &["send", "echo", "k", "-", "--node", nodes[1].endpoint()],
        &[],
        Some(br#"{"from": "stdin"}"#),
    );
    assert_ok(&run);
    assert_eq!(run.json()["echoed"], json!({"from": "stdin"}));
    let run = cli(&nodes[1], &["send", "echo", "k"]);
    assert_ok(&run);
    assert_eq!(run.json()["echoed"], json!({}));

    let run = meshage_cli(
        &["broadcast", "echo", "k", "-", "--node", nodes[0].endpoint()],
        &[],
        Some(b"\"all\""),
    );
    assert_ok(&run);
    let entries = run.json();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e["echoed"] == "all"));
    let by: HashSet<&str> = entries.iter().map(|e| e["by"].as_str().unwrap()).collect();
    assert_eq!(by.len(), 3);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// `meshage send` without a key takes the stream's services in turn; `--name` picks a named
/// handler; `--no-wait` prints the trace id of a message delivered in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_named_and_unwaited_sends_from_the_command_line() {
    let nodes = echo_cluster(2).await;
    let by: HashSet<String> = (0..2)
        .map(|_| {
            let run = cli(&nodes[0], &["send", "echo"]);
            assert_ok(&run);
            assert_eq!(run.json()["key"], "");
            run.json()["by"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(by.len(), 2, "both services in turn: {by:?}");
    let run = cli(&nodes[1], &["send", "echo", "", "[3]"]);
    assert_ok(&run);
    assert_eq!(run.json()["echoed"], json!([3]));

    let named = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register_named(
            "greet",
            "hello",
            |_data: Value, header: Header| async move {
                Ok::<_, HandlerError>(json!({ "name": header.name.as_deref() }))
            },
        )
        .start()
        .await
        .unwrap();
    let run = cli(&named, &["send", "greet", "k", "--name", "hello"]);
    assert_ok(&run);
    assert_eq!(run.json(), json!({"name": "hello"}));
    assert_fails(
        &cli(&named, &["send", "greet", "k", "--name", "bye"]),
        3,
        "bye",
    );
    let run = cli(&nodes[0], &["send", "echo", "--no-wait"]);
    assert_ok(&run);
    let trace = run.json()["trace"].as_str().unwrap().to_owned();
    assert_eq!(trace.len(), 16, "{run:?}");
    named.shutdown().await.unwrap();
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_members_and_locate_from_the_command_line() {
    let nodes = echo_cluster(3).await;
    let ids = service_ids(&nodes[0]);
    let ring = HashRing::new(&ids);

    let run = cli(&nodes[1], &["services"]);
    assert_ok(&run);
    let listed: HashSet<String> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids.iter().cloned().collect());

    let run = cli(&nodes[1], &["members"]);
    assert_ok(&run);
    let members = run.json();
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 3);
    for node in &nodes {
        let member = members
            .iter()
            .find(|m| m["id"] == node.id())
            .expect("every node is a member");
        assert_eq!(member["endpoint"], node.endpoint());
        assert_eq!(member["state"], "live");
        assert_eq!(member["self"], node.id() == nodes[1].id());
        let service = &node.router().local_services()[0];
        assert_eq!(
            member["services"],
            json!([{"id": &*service.id, "stream": "echo"}])
        );
    }

    let http = Http::default();
    for key in ["alice", "bob", "carol", "a/b c"] {
        let run = cli(&nodes[2], &["locate", "echo", key]);
        assert_ok(&run);
        let located = run.json();
        let owner = ring.get(key).unwrap();
        assert_eq!(located["serviceId"], owner);
        assert_eq!(located["partitionKey"], key);
        assert_eq!(located["services"], 3);
        let owner_node = nodes
            .iter()
            .find(|n| n.router().local_services()[0].id.as_ref() == owner)
            .unwrap();
        assert_eq!(located["node"], owner_node.id());
        assert_eq!(located["endpoint"], owner_node.endpoint());
        assert_eq!(located["local"], owner_node.id() == nodes[2].id());
        assert!(located["tableVersion"].as_u64().unwrap() > 0);
        // The owner a send reaches.
        let sent = http
            .post(
                &format!(
                    "{}/api/echo/{}",
                    nodes[2].endpoint(),
                    crate::common::enc(key)
                ),
                "{}",
            )
            .await;
        assert_eq!(sent.service_id().as_deref(), Some(owner));
    }

    // A dead node stays listed, as dead.
    let mut nodes = nodes;
    let dead = nodes.pop().unwrap();
    let dead_id = dead.id().to_owned();
    dead.kill();
    let url = format!("{}/api/members", nodes[0].endpoint());
    wait_until_async(
        Duration::from_secs(10),
        "the killed node is listed as dead",
        || async {
            let members: Value = http.get(&url).await.json();
            members
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == dead_id.as_str() && m["state"] == "dead")
        },
    )
    .await;
    let run = cli(&nodes[0], &["members"]);
    assert_ok(&run);
    assert_eq!(run.json().as_array().unwrap().len(), 3);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_have_distinct_exit_codes() {
    let nodes = echo_cluster(2).await;
    let failing = nodes[0]
        .router()
        .register(
            "fail",
            meshage::handler_fn(|_data, _h| async move {
                Err::<Value, _>(HandlerError::internal("it broke"))
            }),
        )
        .await
        .unwrap();
    let picky = nodes[1]
        .router()
        .register(
            "picky",
            meshage::typed_handler_fn(|n: u32, _h| async move { Ok::<_, HandlerError>(n + 1) }),
        )
        .await
        .unwrap();
    crate::common::wait_until(
        Duration::from_secs(10),
        "both nodes route the new streams",
        || {
            nodes.iter().all(|n| {
                let table = n.router().table();
                table.service(&failing).is_some() && table.service(&picky).is_some()
            })
        },
    )
    .await;

    // Not found: 3.
    assert_fails(
        &cli(&nodes[0], &["send", "nope", "k", "{}"]),
        3,
        "not found",
    );
    assert_fails(&cli(&nodes[0], &["broadcast", "nope", "k"]), 3, "not found");
    assert_fails(&cli(&nodes[1], &["locate", "nope", "k"]), 3, "nope");

    // Bad input: 2, for what we send and for what a handler rejects.
    assert_fails(
        &cli(&nodes[0], &["send", "echo", "k", "{oops"]),
        2,
        "not valid JSON",
    );
    assert_fails(
        &cli(&nodes[0], &["send", "echo", "k", "@/no/such/file.json"]),
        2,
        "cannot read",
    );
    assert_fails(
        &meshage_cli(
            &["send", "echo", "k", "-", "--node", nodes[0].endpoint()],
            &[],
            Some(b"not json"),
        ),
        2,
        "stdin",
    );
    assert_fails(&cli(&nodes[0], &["send", "members", "k"]), 2, "reserved");
    assert_fails(
        &cli(&nodes[0], &["send", "picky", "k", "\"text\""]),
        2,
        "bad input",
    );
    let run = cli(&nodes[0], &["send", "picky", "k", "41"]);
    assert_ok(&run);
    assert_eq!(run.json(), json!(42));
    assert_eq!(
        meshage_cli(&["send"], &[], None).code,
        2,
        "clap's code for a bad command line"
    );

    // Cluster unreachable: 4.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let closed_url = format!("http://{closed}");
    for args in [
        vec!["services"],
        vec!["members"],
        vec!["send", "echo", "k", "{}"],
        vec!["locate", "echo", "k"],
    ] {
        let mut all = args.clone();
        all.extend(["--node", &closed_url]);
        assert_fails(&meshage_cli(&all, &[], None), 4, "unreachable");
    }
    assert_fails(
        &meshage_cli(&["services"], &[("MESHAGE_NODE", &closed_url)], None),
        4,
        "unreachable",
    );

    // Anything else: 1.
    assert_fails(&cli(&nodes[1], &["send", "fail", "k"]), 1, "it broke");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_pretty_on_a_terminal() {
    let nodes = echo_cluster(1).await;
    // `script` (util-linux, on every Debian) runs the command on a pseudo-terminal.
    let line = format!(
        "{MESHAGE} send echo k '{{\"a\":1}}' --node {}",
        nodes[0].endpoint()
    );
    let mut command = std::process::Command::new("script");
    command.args(["-qec", &line, "/dev/null"]);
    let pretty = run(command, None);
    assert_eq!(pretty.code, 0, "{pretty:?}");
    let text = pretty.stdout.replace("\r\n", "\n");
    assert!(
        text.contains("\n  \"echoed\": {\n    \"a\": 1\n  },"),
        "{text:?}"
    );

    let mut command = std::process::Command::new("script");
    command.args(["-qec", &format!("{line} --json"), "/dev/null"]);
    let compact = run(command, None);
    assert_eq!(compact.code, 0, "{compact:?}");
    assert_eq!(compact.stdout.trim_end().lines().count(), 1, "{compact:?}");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
