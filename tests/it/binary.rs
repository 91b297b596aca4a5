//! The built `meshage` binary as users run it, in real processes: nodes configured by the
//! original's environment variables, graceful stop on SIGTERM, clear errors on bad
//! configuration, and `meshage demo`.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{wait_until, wait_until_async, Http};

const BIN: &str = env!("CARGO_BIN_EXE_meshage");

/// No test runs longer than this, whatever hangs; its processes are killed as it fails.
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// Runs a test body, failing it when it takes longer than [`TEST_LIMIT`].
async fn bounded(test: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {TEST_LIMIT:?}"));
}

/// Settings the binary reads from the environment; cleared for every child so that the test
/// runner's environment cannot change what a test means.
const CONFIG_VARS: &[&str] = &[
    "CLUSTER_TYPE",
    "CLUSTER_HOST",
    "CLUSTER_PORT",
    "SEEDS",
    "SEED",
    "HTTP_HOST",
    "HTTP_PORT",
    "SERVICE_PORT",
    "MESHAGE_REQUEST_TIMEOUT",
    "MESHAGE_BODY_LIMIT",
    "MESHAGE_DRAIN_TIMEOUT",
    "RUST_LOG",
];

/// A running `meshage` process. Dropping it kills the process, so that no test leaves one
/// behind, even when it panics.
struct Meshage {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Collects the lines of `pipe` into `lines` until it closes.
fn collect_lines(
    pipe: impl Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            match line {
                Ok(line) => lines.lock().unwrap().push(line),
                Err(_) => return,
            }
        }
    })
}

impl Meshage {
    fn spawn(args: &[&str], env: &[(&str, String)]) -> Meshage {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for var in CONFIG_VARS {
            command.env_remove(var);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect_lines(child.stdout.take().unwrap(), stdout.clone()),
            collect_lines(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Meshage {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// `meshage node --echo echo` with `env`.
    fn echo_node(env: &[(&str, String)]) -> Meshage {
        Meshage::spawn(&["node", "--echo", "echo"], env)
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Sends `signal` (`TERM`, `INT`) with `kill`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; panics after `timeout`.
    async fn exit_within(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > timeout {
                panic!(
                    "still running after {timeout:?}; stderr:\n{}",
                    self.stderr.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// After exit: everything the process wrote to stderr, without empty lines.
    fn stderr_after_exit(&mut self) -> Vec<String> {
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.trim().is_empty())
            .cloned()
            .collect()
    }

    /// Waits for the line `meshage node <id> serving http://<host>:<port> (bound <addr>),
    /// gossip on <ip:port>` and parses it.
    async fn serving(&self) -> Serving {
        let mut found = None;
        wait_until(
            Duration::from_secs(10),
            "the node prints its serving line",
            || {
                found = self.stdout().iter().find_map(|l| Serving::parse(l));
                found.is_some()
            },
        )
        .await;
        found.unwrap()
    }
}

impl Drop for Meshage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a node prints once it serves.
#[derive(Debug)]
struct Serving {
    id: String,
    endpoint: String,
    bound: String,
    gossip: String,
}

impl Serving {
    fn parse(line: &str) -> Option<Serving> {
        let rest = line.strip_prefix("meshage node ")?;
        let (id, rest) = rest.split_once(" serving ")?;
        let (endpoint, rest) = rest.split_once(" (bound ")?;
        let (bound, gossip) = rest.split_once("), gossip on ")?;
        endpoint.strip_prefix("http://")?;
        Some(Serving {
            id: id.to_owned(),
            endpoint: endpoint.to_owned(),
            bound: bound.to_owned(),
            gossip: gossip.to_owned(),
        })
    }

    fn port(addr: &str) -> u16 {
        addr.rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {addr}"))
    }
}

/// A TCP port that was free a moment ago.
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port that was free a moment ago.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The number of services `GET /api/services` lists on 127.0.0.1:`port`, or `None` while the
/// node does not answer.
async fn services_on(http: &Http, port: u16) -> Option<usize> {
    let answer = http
        .request(
            Method::GET,
            &format!("http://127.0.0.1:{port}/api/services"),
            &[],
            "",
        )
        .await
        .ok()?;
    (answer.status == StatusCode::OK)
        .then(|| answer.json().as_array().map(Vec::len))
        .flatten()
}

/// Waits until both nodes list `n` services.
async fn wait_both_list(http: &Http, ports: [u16; 2], n: usize) {
    wait_until_async(
        Duration::from_secs(10),
        &format!("both nodes list {n} services"),
        || async move {
            services_on(http, ports[0]).await == Some(n)
                && services_on(http, ports[1]).await == Some(n)
        },
    )
    .await;
}

/// A number like the original README's `$RANDOM`.
fn random_key() -> String {
    (uuid::Uuid::new_v4().as_u128() % 1_000_000).to_string()
}

/// Sends the README's request for `key` through 127.0.0.1:`port`; returns the serving service.
async fn readme_request(http: &Http, port: u16, key: &str) -> String {
    let answer = http
        .post(
            &format!("http://127.0.0.1:{port}/api/echo/{key}"),
            r#"{"hello":"world"}"#,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "key {key} via {port}");
    assert_eq!(answer.json(), json!({"echoed": {"hello": "world"}}));
    answer.service_id().expect("X-Service-ID names the service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_from_the_originals_env_vars_agree_on_every_key() {
    bounded(async {
        let (g1, g2) = (free_udp_port(), free_udp_port());
        let (h1, h2) = (free_tcp_port(), free_tcp_port());
        let first = Meshage::echo_node(&[
            ("CLUSTER_PORT", g1.to_string()),
            ("HTTP_PORT", h1.to_string()),
        ]);
        let second = Meshage::echo_node(&[
            ("CLUSTER_PORT", g2.to_string()),
            ("SEEDS", format!("127.0.0.1:{g1}")),
            ("HTTP_PORT", h2.to_string()),
        ]);
        // Each prints where it serves, on the ports it was given.
        for (node, http_port, gossip_port) in [(&first, h1, g1), (&second, h2, g2)] {
            let serving = node.serving().await;
            assert_eq!(Serving::port(&serving.endpoint), http_port, "{serving:?}");
            assert_eq!(Serving::port(&serving.bound), http_port, "{serving:?}");
            assert_eq!(Serving::port(&serving.gossip), gossip_port, "{serving:?}");
        }
        let http = Http::default();
        wait_both_list(&http, [h1, h2], 2).await;

        let mut services = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let key = random_key();
            let via_first = readme_request(&http, h1, &key).await;
            let via_second = readme_request(&http, h2, &key).await;
            assert_eq!(via_first, via_second, "the nodes disagree on key {key}");
            services.insert(via_first);
        }
        assert_eq!(services.len(), 2, "20 keys all went to one service");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_and_service_port_aliases_work() {
    bounded(async {
        let (g1, g2) = (free_udp_port(), free_udp_port());
        let (h1, h2) = (free_tcp_port(), free_tcp_port());
        let _first = Meshage::echo_node(&[
            ("CLUSTER_PORT", g1.to_string()),
            ("HTTP_PORT", h1.to_string()),
        ]);
        let _second = Meshage::echo_node(&[
            ("CLUSTER_PORT", g2.to_string()),
            ("SEED", format!("127.0.0.1:{g1}")),
            ("SERVICE_PORT", h2.to_string()),
        ]);
        let http = Http::default();
        wait_both_list(&http, [h1, h2], 2).await;
        let key = random_key();
        assert_eq!(
            readme_request(&http, h1, &key).await,
            readme_request(&http, h2, &key).await
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_the_cluster_and_exits_0() {
    bounded(async {
        let (g1, g2) = (free_udp_port(), free_udp_port());
        let (h1, h2) = (free_tcp_port(), free_tcp_port());
        let _first = Meshage::echo_node(&[
            ("CLUSTER_PORT", g1.to_string()),
            ("HTTP_PORT", h1.to_string()),
        ]);
        let mut second = Meshage::echo_node(&[
            ("CLUSTER_PORT", g2.to_string()),
            ("SEEDS", format!("127.0.0.1:{g1}")),
            ("HTTP_PORT", h2.to_string()),
        ]);
        let http = Http::default();
        wait_both_list(&http, [h1, h2], 2).await;

        second.signal("TERM");
        let http_ref = &http;
        wait_until_async(
            Duration::from_secs(3),
            "the first node drops the stopping node's service",
            || async move { services_on(http_ref, h1).await == Some(1) },
        )
        .await;
        let status = second.exit_within(Duration::from_secs(15)).await;
        assert!(status.success(), "exit after SIGTERM: {status}");
        // The remaining node answers every key by itself.
        for _ in 0..5 {
            readme_request(&http, h1, &random_key()).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_ports_are_printed_on_stdout() {
    bounded(async {
        let node = Meshage::echo_node(&[
            ("HTTP_HOST", "127.0.0.1".into()),
            ("HTTP_PORT", "find".into()),
            ("CLUSTER_HOST", "127.0.0.1".into()),
            ("CLUSTER_PORT", "find".into()),
        ]);
        let serving = node.serving().await;
        let port = Serving::port(&serving.bound);
        assert_eq!(serving.endpoint, format!("http://127.0.0.1:{port}"));
        assert_ne!(Serving::port(&serving.gossip), 0);
        let answer = Http::default()
            .get(&format!("http://127.0.0.1:{port}/api/health"))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["node"], json!(serving.id));
    })
    .await;
}

/// Runs `meshage node` with `args` and `env` to its exit (within 10 s); returns its status and
/// its non-empty stderr lines.
async fn run_failing_node(args: &[&str], env: &[(&str, String)]) -> (ExitStatus, Vec<String>) {
    let mut all_args = vec!["node"];
    all_args.extend_from_slice(args);
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "CLUSTER_PORT") {
        env.push(("CLUSTER_PORT", free_udp_port().to_string()));
    }
    let mut process = Meshage::spawn(&all_args, &env);
    let status = process.exit_within(Duration::from_secs(10)).await;
    let stderr = process.stderr_after_exit();
    assert!(!status.success(), "{args:?} {env:?} exited 0");
    (status, stderr)
}

#[track_caller]
fn assert_one_error_line(stderr: &[String], mentions: &str) {
    assert_eq!(stderr.len(), 1, "one line on stderr, got {stderr:#?}");
    assert!(stderr[0].starts_with("meshage: error:"), "{stderr:?}");
    assert!(stderr[0].contains(mentions), "{stderr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_non_zero_with_a_clear_error() {
    bounded(async {
        // An unknown flag: clap's usage error.
        let (_, stderr) = run_failing_node(&["--bogus"], &[]).await;
        assert!(stderr.join("\n").contains("--bogus"), "{stderr:#?}");

        // A busy HTTP port: the last line says which address.
        let held = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let (_, stderr) =
            run_failing_node(&["--echo", "echo"], &[("HTTP_PORT", port.to_string())]).await;
        let last = stderr.last().expect("something on stderr");
        assert!(last.starts_with("meshage: error:"), "{stderr:#?}");
        assert!(last.contains(&port.to_string()), "{stderr:#?}");
        drop(held);

        let (_, stderr) = run_failing_node(&[], &[("CLUSTER_TYPE", "zookeeper".into())]).await;
        assert_one_error_line(&stderr, "zookeeper");

        let (_, stderr) = run_failing_node(&[], &[("HTTP_PORT", "notaport".into())]).await;
        assert_one_error_line(&stderr, "notaport");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_its_routing_serves_curl_and_stops_on_sigint() {
    bounded(async {
        let mut demo = Meshage::spawn(&["demo"], &[]);
        wait_until(
            Duration::from_secs(20),
            "the demo prints its keys and a curl line",
            || {
                let out = demo.stdout();
                out.iter()
                    .filter(|l| l.contains("handled by service"))
                    .count()
                    == 6
                    && out.iter().any(|l| l.contains("curl -s -X POST http://"))
            },
        )
        .await;
        let out = demo.stdout();
        // Every key names one of the three services the demo lists.
        let services: Vec<String> = out
            .iter()
            .filter(|l| l.trim_start().starts_with("node "))
            .filter_map(|l| {
                l.rsplit_once(" service ")
                    .map(|(_, id)| id.trim().to_owned())
            })
            .collect();
        assert_eq!(services.len(), 3, "{out:#?}");
        for line in out.iter().filter(|l| l.contains("handled by service")) {
            let (_, rest) = line.split_once("handled by service ").unwrap();
            let (id, answer) = rest.split_once(": ").unwrap();
            assert!(services.iter().any(|s| s == id), "{line}");
            assert!(answer.starts_with("{\"echoed\":"), "{line}");
        }

        // The curl line's URL works.
        let curl = out
            .iter()
            .find(|l| l.contains("curl -s -X POST http://"))
            .unwrap();
        let url = curl
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("no http://127.0.0.1:<port> URL in {curl:?}"));
        let first = url
            .split_once("/api/")
            .map_or(url, |(base, _)| base)
            .to_owned();
        let http = Http::default();
        let answer = http
            .post(
                &format!("{first}/api/echo/{}", random_key()),
                r#"{"hello":"world"}"#,
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json(), json!({"echoed": {"hello": "world"}}));
        // As curl -d sends it: form-urlencoded content type, JSON text.
        let answer = http
            .request(
                Method::POST,
                &format!("{first}/api/broadcast/echo/x"),
                &[("content-type", "application/x-www-form-urlencoded")],
                r#"{"hello":"all"}"#,
            )
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        let entries: Value = answer.json();
        assert_eq!(
            entries,
            json!([{"echoed": {"hello": "all"}}, {"echoed": {"hello": "all"}}, {"echoed": {"hello": "all"}}])
        );
        let answer = http.get(&format!("{first}/api/services")).await;
        assert_eq!(answer.json().as_array().map(Vec::len), Some(3));

        demo.signal("INT");
        let status = demo.exit_within(Duration::from_secs(15)).await;
        assert!(status.success(), "demo exit after SIGINT: {status}");
    })
    .await;
}

/// The parts of an error line (`a: b: c`) that appear more than once.
fn repeated_parts(line: &str) -> Vec<&str> {
    let parts: Vec<&str> = line.split(": ").collect();
    let mut repeated: Vec<&str> = parts
        .iter()
        .enumerate()
        .filter(|(i, p)| parts[..*i].contains(p))
        .map(|(_, p)| *p)
        .collect();
    repeated.dedup();
    repeated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_state_their_cause_once() {
    bounded(async {
        let held_tcp = TcpListener::bind("0.0.0.0:0").unwrap();
        let held_udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        let cases: [(&str, Vec<(&str, String)>); 3] = [
            (
                "a busy HTTP port",
                vec![(
                    "HTTP_PORT",
                    held_tcp.local_addr().unwrap().port().to_string(),
                )],
            ),
            (
                "a busy gossip port",
                vec![
                    ("HTTP_PORT", "0".into()),
                    (
                        "CLUSTER_PORT",
                        held_udp.local_addr().unwrap().port().to_string(),
                    ),
                ],
            ),
            ("a bad HTTP port", vec![("HTTP_PORT", "notaport".into())]),
        ];
        for (what, env) in cases {
            let (_, stderr) = run_failing_node(&[], &env).await;
            let last = stderr.last().expect("something on stderr");
            assert!(
                repeated_parts(last).is_empty(),
                "BUG (src/node.rs, src/cluster.rs): with {what} the error repeats its cause {:?}: \
                 {last:?}. StartError::Bind / ClusterError::Bind put `{{source}}` in their message \
                 and also mark it #[source], and StartError::Address / ClusterError::Address put \
                 `{{0}}` in theirs with #[from]; main prints the whole chain ({{e:#}}), so the cause \
                 shows twice. Drop the `: {{source}}` / `: {{0}}` from those #[error] strings.",
                repeated_parts(last)
            );
        }
    })
    .await;
}
