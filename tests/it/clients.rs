//! The JavaScript and Python clients (`clients/js`, `clients/python`) against a live cluster:
//! their own test suites (`node --test`, `python3 -m unittest`) run here with the nodes' URLs in
//! their environment, and must pass with nothing skipped.
//!
//! The cluster: three nodes serving `echo` (answering `{"echoed", "by", "key"}`) and `work`
//! (`{"ms": N}` answers after N ms, `{"fail": STATUS, "why": TEXT}` fails so); beside it a node
//! that asks for an API token, one that serves HTTPS with certificates `meshage certs` made, and
//! a closed port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use meshage::{ApiTokens, HandlerError, Header, Node, NodeConfig, OperatorTls, Tokens};
use serde_json::{json, Value};

use crate::common::process::{meshage_cli, run, CliRun};
use crate::common::{echo_by, gossip, wait_converged};

/// The token the guarded node accepts for every stream.
const TOKEN: &str = "clients-test-token-0001";
/// A token the guarded node accepts for the stream `work` only.
const WORK_TOKEN: &str = "clients-work-token-0002";

/// The `work` stream's handler: waits `ms` milliseconds (up to 5 s) and says so, or fails with
/// the status `fail`.
async fn work(data: Value, _header: Header) -> Result<Value, HandlerError> {
    if let Some(status) = data["fail"].as_u64() {
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| HandlerError::bad_request("fail must be a status"))?;
        let why = data["why"].as_str().unwrap_or("failed as asked");
        return Err(HandlerError::with_status(status, why));
    }
    let ms = data["ms"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms.min(5_000))).await;
    Ok(json!({ "slept": ms }))
}

async fn start(seeds: &[String], config: NodeConfig) -> Node {
    meshage::init(gossip(seeds), "127.0.0.1:0")
        .register("echo", echo_by)
        .register("work", work)
        .config(config)
        .start()
        .await
        .expect("node starts")
}

/// A temporary directory (and its path as text), removed on drop.
struct TempDir(PathBuf, String);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("meshage-clients-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        let text = path.display().to_string();
        TempDir(path, text)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything the clients' suites are pointed at, alive while it is.
struct Nodes {
    cluster: Vec<Node>,
    guarded: Node,
    tls: Node,
    /// The certificates' directory, kept until the suites have run.
    _dir: TempDir,
    ca_file: String,
    dead: String,
}

impl Nodes {
    async fn start() -> Nodes {
        let first = start(&[], NodeConfig::default()).await;
        let seed = vec![first.seed_address().unwrap()];
        let mut cluster = vec![first];
        for _ in 0..2 {
            cluster.push(start(&seed, NodeConfig::default()).await);
        }
        // Two streams on each of three nodes.
        wait_converged(&cluster, 6).await;

        let tokens =
            Tokens::new(ApiTokens::parse(&format!("{TOKEN}\n{WORK_TOKEN} work\n")).unwrap());
        let guarded = start(&[], NodeConfig::default().api_tokens(Some(tokens))).await;

        // Certificates as the README makes them, with `meshage certs`.
        let dir = TempDir::new();
        let path = |name: &str| dir.0.join(name).display().to_string();
        for args in [
            vec!["certs", "ca", "--out", &dir.1],
            vec![
                "certs",
                "node",
                "--ca",
                &dir.1,
                "--name",
                "node",
                "--host",
                "127.0.0.1",
                "--out",
                &dir.1,
            ],
        ] {
            let run = meshage_cli(&args, &[], None);
            assert_eq!(run.code, 0, "{run:?}");
        }
        let (cert, key, ca_file) = (path("node.pem"), path("node-key.pem"), path("ca.pem"));
        let tls = start(
            &[],
            NodeConfig::default().tls(Some(
                OperatorTls::from_files(&cert, &key, &ca_file).unwrap(),
            )),
        )
        .await;
        wait_converged(std::slice::from_ref(&guarded), 2).await;
        wait_converged(std::slice::from_ref(&tls), 2).await;

        // A port that was free a moment ago: nothing listens there.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);

        Nodes {
            cluster,
            guarded,
            tls,
            _dir: dir,
            ca_file,
            dead,
        }
    }

    /// The variables the suites read.
    fn env(&self) -> Vec<(&'static str, String)> {
        let urls: Vec<&str> = self.cluster.iter().map(|n| n.endpoint()).collect();
        assert!(self.tls.endpoint().starts_with("https://"));
        vec![
            ("MESHAGE_NODES", urls.join(",")),
            ("MESHAGE_TOKEN_NODE", self.guarded.endpoint().to_owned()),
            ("MESHAGE_TOKEN", TOKEN.to_owned()),
            ("MESHAGE_WORK_TOKEN", WORK_TOKEN.to_owned()),
            // Named by 127.0.0.1, one of the names its certificate holds.
            ("MESHAGE_TLS_NODE", self.tls.endpoint().to_owned()),
            ("MESHAGE_TLS_CA", self.ca_file.clone()),
            ("NODE_EXTRA_CA_CERTS", self.ca_file.clone()),
            ("MESHAGE_DEAD_NODE", self.dead.clone()),
            // Leaves no __pycache__ in the checkout.
            ("PYTHONDONTWRITEBYTECODE", "1".to_owned()),
        ]
    }
}

/// Runs `program args` from the repository's root with `env` added; panics with its output
/// unless it ends well.
fn suite(program: &str, args: &[&str], env: &[(&'static str, String)]) -> CliRun {
    let mut command = Command::new(program);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v.as_str())));
    let run = run(command, None);
    assert_eq!(
        run.code, 0,
        "{program} {args:?} failed:\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout, run.stderr
    );
    run
}

/// The number after `# NAME ` (or the first of `NAMES` given) in node's test report.
fn tap_count(run: &CliRun, names: &[&str]) -> usize {
    names
        .iter()
        .find_map(|name| {
            let prefix = format!("# {name} ");
            run.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no `# {names:?}` in node's report:\n{}", run.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_and_python_clients_pass_their_suites_against_a_live_cluster() {
    let version = suite("node", &["--version"], &[]);
    let major: u32 = version
        .stdout
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 18,
        "clients/js needs Node.js 18 or later, found {}",
        version.stdout
    );
    let nodes = Nodes::start().await;
    let env = nodes.env();

    let js = suite(
        "node",
        &[
            "--test",
            "--test-reporter=tap",
            "clients/js/test/client.test.js",
        ],
        &env,
    );
    let (tests, pass) = (tap_count(&js, &["tests"]), tap_count(&js, &["pass"]));
    // Node 18 says `# skip N`, later versions `# skipped N`.
    assert!(
        tests >= 10 && pass == tests && tap_count(&js, &["skipped", "skip"]) == 0,
        "every JavaScript test ran and passed:\n{}",
        js.stdout
    );

    let py = suite(
        "python3",
        &[
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            "clients/python/tests",
        ],
        &env,
    );
    // unittest reports on stderr: `Ran N tests`, then `OK` (`OK (skipped=N)` if any skipped).
    let ran: usize = py
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("Ran "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        ran >= 10 && py.stderr.lines().any(|l| l == "OK"),
        "every Python test ran and passed, none skipped:\n{}",
        py.stderr
    );

    // The READMEs' examples, against the cluster as against `meshage demo`.
    let node = [
        ("MESHAGE_NODE", nodes.cluster[0].endpoint().to_owned()),
        ("PYTHONDONTWRITEBYTECODE", "1".to_owned()),
    ];
    for (program, example) in [
        ("node", "clients/js/example.js"),
        ("python3", "clients/python/example.py"),
    ] {
        let run = suite(program, &[example], &node);
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), 5, "{example}: {run:?}");
        assert!(
            lines[2].starts_with("broadcast: 3 answers"),
            "{example}: {run:?}"
        );
        assert_eq!(
            lines[4], "error: 404 not_found: No matching services found for 'nowhere'",
            "{example}: {run:?}"
        );
    }
}
