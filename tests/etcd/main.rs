//! The etcd backend against real etcd processes: a three-member etcd losing a member, etcd
//! restarting (with its data, and empty) under running nodes, a watch that falls behind a
//! compaction, and a lease that etcd drops; a secured etcd (TLS with client certificates, and
//! users with passwords) and the password never showing. The behaviour every backend shares is
//! the conformance suite (`tests/common/conformance.rs`), run here as `conformance::*` against
//! a plain etcd, `conformance_tls::*` against one over TLS and `conformance_auth::*` against
//! one with auth enabled.
#![cfg(feature = "etcd")]

/// The parts of the shared harness (`tests/common/`) this suite uses, each file whole.
#[path = "../common"]
mod common {
    mod certs;
    mod command;
    pub mod conformance;
    mod echo;
    mod http_client;
    mod http_shortcuts;
    mod proc;
    mod service_id;
    mod wait;

    pub use certs::*;
    pub use command::*;
    pub use echo::*;
    pub use http_client::*;
    pub use proc::*;
    pub use wait::*;
}
mod server;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use common::conformance::{conformance_tests, Backend};
use common::*;
use meshage::{Cluster, EtcdCluster, EtcdConfig, EtcdCredentials, EtcdTls, HashRing, Node};
use server::{Etcd, ServerTls};

const STREAM: &str = "echo";

/// Bounds every test. Logs go to the test's output when `RUST_LOG` is set.
async fn bounded(test: impl Future<Output = ()>) {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the test finishes within 120 s");
}

fn cluster(urls: &[String], ttl: Duration) -> EtcdCluster {
    EtcdCluster::new(urls)
        .unwrap()
        .with_config(EtcdConfig::default().lease_ttl(ttl))
}

async fn node(urls: &[String], ttl: Duration) -> Node {
    meshage::init(cluster(urls, ttl), "127.0.0.1:0")
        .register(STREAM, echo_by)
        .start()
        .await
        .expect("node starts")
}

fn ids(node: &Node) -> BTreeSet<String> {
    node.router()
        .table()
        .services_of(STREAM)
        .map(|s| s.id.to_string())
        .collect()
}

fn own(node: &Node) -> Vec<String> {
    node.router()
        .local_services()
        .iter()
        .map(|s| s.id.to_string())
        .collect()
}

/// Waits until every node routes to exactly the services the nodes run.
async fn wait_exact(nodes: &[&Node], within: Duration, what: &str) -> Duration {
    let expected: BTreeSet<String> = nodes.iter().flat_map(|n| own(n)).collect();
    wait_until(within, what, || nodes.iter().all(|n| ids(n) == expected)).await
}

/// Every key sent through each node is answered by the ring's owner.
async fn assert_routes_by_the_ring(nodes: &[&Node]) {
    let all: Vec<String> = ids(nodes[0]).into_iter().collect();
    let ring = HashRing::new(&all);
    let http = Http::default();
    for i in 0..30 {
        let key = format!("k{i}");
        let node = nodes[i % nodes.len()];
        let answer = http
            .post(&format!("{}/api/{STREAM}/{key}", node.endpoint()), "{}")
            .await;
        assert_eq!(answer.status, 200, "{key}: {:?}", answer.body);
        assert_eq!(answer.service_id().as_deref(), ring.get(&key), "{key}");
    }
}

/// The lease that holds a node's member key.
async fn lease_of(url: &str, node: &Node) -> Option<i64> {
    let mut client = etcd_client::Client::connect([url], None).await.ok()?;
    let key = format!("/meshage/meshage/members/{}", node.id());
    let answer = client.get(key, None).await.ok()?;
    answer.kvs().first().map(|kv| kv.lease())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_carry_on_when_one_of_three_etcd_members_stops() {
    bounded(async {
        let Some(mut etcd) = Etcd::start(3).await else {
            return;
        };
        let urls = etcd.urls();
        let ttl = Duration::from_secs(2);
        let a = node(&urls, ttl).await;
        let b = node(&[urls[1].clone(), urls[2].clone(), urls[0].clone()], ttl).await;
        wait_exact(
            &[&a, &b],
            Duration::from_secs(10),
            "two nodes see each other",
        )
        .await;

        etcd.member(0).stop();
        // Both nodes keep registering through the members that are left...
        a.router()
            .register(STREAM, meshage::handler_fn(echo_by))
            .await
            .expect("register with one etcd member down");
        b.router()
            .register(STREAM, meshage::handler_fn(echo_by))
            .await
            .expect("register with one etcd member down");
        // ...and a node whose first endpoint is the stopped member joins.
        let c = node(&urls, ttl).await;
        let took = wait_exact(
            &[&a, &b, &c],
            Duration::from_secs(15),
            "all services, one member down",
        )
        .await;
        eprintln!("converged {took:?} with one etcd member down");
        assert_routes_by_the_ring(&[&a, &b, &c]).await;

        // A node crashing is still noticed: its lease expires in the two members left.
        let gone = own(&b);
        b.kill();
        let took = wait_exact(
            &[&a, &c],
            Duration::from_secs(10),
            "the crashed node's lease expires",
        )
        .await;
        eprintln!("crashed node dropped after {took:?}");
        assert!(gone.iter().all(|id| !ids(&a).contains(id)));
        a.shutdown().await.unwrap();
        c.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_again_when_etcd_restarts_empty() {
    bounded(async {
        let Some(mut etcd) = Etcd::start(1).await else {
            return;
        };
        let urls = etcd.urls();
        let ttl = Duration::from_secs(2);
        let a = node(&urls, ttl).await;
        let b = node(&urls, ttl).await;
        wait_exact(
            &[&a, &b],
            Duration::from_secs(10),
            "two nodes see each other",
        )
        .await;

        etcd.member(0).stop();
        // While etcd is away a registration cannot be written; it is kept and written later.
        let late = a
            .router()
            .register(STREAM, meshage::handler_fn(echo_by))
            .await;
        assert!(late.is_err(), "a registration with etcd down reports it");
        // The last known view stays in force meanwhile.
        assert_eq!(ids(&b).len(), 2);

        etcd.member(0).restart_empty().await;
        let took = wait_exact(
            &[&a, &b],
            Duration::from_secs(20),
            "both nodes are registered in the new etcd",
        )
        .await;
        eprintln!("re-registered {took:?} after etcd came back empty");
        assert_eq!(
            ids(&a).len(),
            3,
            "the registration made while etcd was down is there"
        );
        assert!(lease_of(&urls[0], &a).await.is_some());
        assert_routes_by_the_ring(&[&a, &b]).await;
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_resume_when_etcd_restarts_with_its_data() {
    bounded(async {
        let Some(mut etcd) = Etcd::start(1).await else {
            return;
        };
        let urls = etcd.urls();
        // A long TTL: the leases outlive the restart, so the nodes must resume, not re-register.
        let ttl = Duration::from_secs(10);
        let a = node(&urls, ttl).await;
        let b = node(&urls, ttl).await;
        wait_exact(
            &[&a, &b],
            Duration::from_secs(10),
            "two nodes see each other",
        )
        .await;
        let lease = lease_of(&urls[0], &a).await.expect("a's lease");

        etcd.member(0).stop();
        etcd.member(0).restart().await;
        // A node that joins after the restart is seen through the resumed watches.
        let c = node(&urls, ttl).await;
        wait_exact(
            &[&a, &b, &c],
            Duration::from_secs(15),
            "the watches resumed",
        )
        .await;
        assert_eq!(
            lease_of(&urls[0], &a).await,
            Some(lease),
            "a kept its lease"
        );
        // And so is one that leaves.
        c.shutdown().await.unwrap();
        wait_exact(
            &[&a, &b],
            Duration::from_secs(5),
            "the leaving node is gone",
        )
        .await;
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_fell_behind_a_compaction_reloads() {
    bounded(async {
        let Some(mut etcd) = Etcd::start(3).await else {
            return;
        };
        let urls = etcd.urls();
        let ttl = Duration::from_secs(10);
        // x talks to the first member only; the others to the second and third.
        let x = node(&urls[..1], ttl).await;
        let rest = [urls[1].clone(), urls[2].clone()];
        let y = node(&rest, ttl).await;
        wait_exact(&[&x, &y], Duration::from_secs(10), "x and y see each other").await;

        etcd.member(0).stop();
        // Changes x cannot see: a service added, a node that comes and goes, then the history
        // of all of it compacted away.
        y.router()
            .register(STREAM, meshage::handler_fn(echo_by))
            .await
            .unwrap();
        let z = node(&rest, ttl).await;
        let z_services = own(&z);
        // (x's keys stay until its lease expires: x is cut off, not gone.)
        wait_until(Duration::from_secs(10), "y sees z", || {
            z_services.iter().all(|id| ids(&y).contains(id))
        })
        .await;
        z.shutdown().await.unwrap();
        wait_until(Duration::from_secs(10), "y sees z leave", || {
            z_services.iter().all(|id| !ids(&y).contains(id))
        })
        .await;
        let mut client = etcd_client::Client::connect(&rest, None).await.unwrap();
        let revision = client
            .get("/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        client
            .compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
            .unwrap();

        etcd.member(0).restart().await;
        let took = wait_exact(
            &[&x, &y],
            Duration::from_secs(20),
            "x catches up after the compaction",
        )
        .await;
        eprintln!("x caught up {took:?} after its etcd member came back");
        assert_routes_by_the_ring(&[&x, &y]).await;
        x.shutdown().await.unwrap();
        y.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_lease_is_dropped_registers_again() {
    bounded(async {
        let Some(etcd) = Etcd::start(1).await else {
            return;
        };
        let urls = etcd.urls();
        let ttl = Duration::from_secs(5);
        let a = node(&urls, ttl).await;
        let b = node(&urls, ttl).await;
        wait_exact(
            &[&a, &b],
            Duration::from_secs(10),
            "two nodes see each other",
        )
        .await;
        let lease = lease_of(&urls[0], &a).await.expect("a's lease");

        // As if the lease had expired while a was cut off: etcd deletes a's keys.
        let mut client = etcd_client::Client::connect(&urls, None).await.unwrap();
        client.lease_revoke(lease).await.unwrap();
        let took = wait_until_async(
            Duration::from_secs(5),
            "a writes its keys under a new lease",
            || async { lease_of(&urls[0], &a).await.is_some_and(|l| l != lease) },
        )
        .await;
        eprintln!("registered again {took:?} after the lease was revoked");
        wait_exact(
            &[&a, &b],
            Duration::from_secs(5),
            "b sees a's service again",
        )
        .await;
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_fails_when_etcd_is_out_of_reach() {
    bounded(async {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let result = meshage::init(
            cluster(&[format!("127.0.0.1:{port}")], Duration::from_secs(2)),
            "127.0.0.1:0",
        )
        .start()
        .await;
        let error = result.err().expect("the node does not start");
        eprintln!("join failed after {:?}: {error}", started.elapsed());
        assert!(
            format!("{error:#}").contains("etcd"),
            "the error names etcd: {error}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meshage_binary_runs_on_etcd() {
    bounded(async {
        let Some(etcd) = Etcd::start(1).await else {
            return;
        };
        let port = etcd.members[0].client_port.to_string();
        let start = |name: &str| {
            let mut command = common::meshage_command();
            command
                .args(["node", "--http-host", "127.0.0.1", "--http-port", "0"])
                .args(["--echo", STREAM])
                .env("CLUSTER_TYPE", "etcd")
                .env("CLUSTER_HOST", "127.0.0.1")
                .env("CLUSTER_PORT", &port)
                .env("MESHAGE_LEASE_TTL", "2");
            let proc = common::Proc::spawn(name, command);
            let line = proc.wait_line(Duration::from_secs(20), |l| l.starts_with("meshage node "));
            assert!(line.ends_with("etcd membership"), "{line}");
            let endpoint = line
                .split_whitespace()
                .skip_while(|w| *w != "serving")
                .nth(1)
                .unwrap()
                .to_owned();
            (proc, endpoint)
        };
        let (_a, a) = start("node a");
        let (mut b_proc, b) = start("node b");
        let http = Http::default();
        let services = |endpoint: String| {
            let http = http.clone();
            async move {
                let answer = http.get(&format!("{endpoint}/api/services")).await;
                answer.json().as_array().map_or(0, Vec::len)
            }
        };
        wait_until_async(
            Duration::from_secs(10),
            "each node lists both services",
            || async { services(a.clone()).await == 2 && services(b.clone()).await == 2 },
        )
        .await;
        let answer = http
            .post(&format!("{b}/api/{STREAM}/some-key"), r#"{"x":1}"#)
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json(), serde_json::json!({"echoed": {"x": 1}}));

        b_proc.kill();
        let took = wait_until_async(
            Duration::from_secs(8),
            "the killed node's lease expires",
            || async { services(a.clone()).await == 1 },
        )
        .await;
        eprintln!("a killed meshage process was dropped after {took:?}");
    })
    .await;
}

/// The user meshage authenticates as, whose role may read and write under `/meshage/` only,
/// and its password: what the tests look for in everything a node shows.
const USER: &str = "meshage";
const PASSWORD: &str = "Pw-4b1c9e-never-shown";

/// The CA of a TLS etcd, and the files its clients use. Keep it while the etcd runs: the
/// files go with it.
struct EtcdCerts {
    ca: TestCa,
    /// The CA file, the client certificate and its key.
    files: (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf),
}

impl EtcdCerts {
    /// A single-member etcd whose clients must speak TLS and present a certificate of its CA.
    async fn start() -> Option<(Etcd, EtcdCerts)> {
        let ca = TestCa::new("meshage etcd test CA");
        let server = ca.issue(&["127.0.0.1", "localhost"]);
        let client = ca.issue(&["meshage-node"]);
        let ca_file = ca.write("ca.pem", &ca.pem);
        let tls = ServerTls {
            cert: ca.write("etcd.pem", &server.cert_pem),
            key: ca.write("etcd-key.pem", &server.key_pem),
            client_ca: ca_file.clone(),
        };
        let files = (
            ca_file,
            ca.write("client.pem", &client.cert_pem),
            ca.write("client-key.pem", &client.key_pem),
        );
        let etcd = Etcd::start_with(1, Some(tls), &[]).await?;
        Some((etcd, EtcdCerts { ca, files }))
    }

    /// The node's TLS settings: the CA, and the client certificate.
    fn tls(&self) -> EtcdTls {
        let (ca, cert, key) = &self.files;
        EtcdTls::new(Some(ca), Some((cert, key))).expect("the test's files")
    }

    /// etcd-client's own TLS options, for the test's direct calls.
    fn options(&self) -> etcd_client::ConnectOptions {
        let (_, cert, key) = &self.files;
        let identity = etcd_client::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        );
        etcd_client::ConnectOptions::new().with_tls(
            etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&self.ca.pem))
                .identity(identity),
        )
    }
}

/// Turns auth on: a root user (etcd wants one), and [`USER`] with [`PASSWORD`] and a role
/// that may read and write `/meshage/...` only.
async fn enable_auth(urls: &[String], options: Option<etcd_client::ConnectOptions>) {
    use etcd_client::Permission;
    let mut client = etcd_client::Client::connect(urls, options).await.unwrap();
    client
        .user_add("root", "root-password", None)
        .await
        .unwrap();
    client.user_grant_role("root", "root").await.unwrap();
    client.role_add(USER).await.unwrap();
    client
        .role_grant_permission(USER, Permission::read_write("/meshage/").with_prefix())
        .await
        .unwrap();
    client.user_add(USER, PASSWORD, None).await.unwrap();
    client.user_grant_role(USER, USER).await.unwrap();
    client.auth_enable().await.unwrap();
}

fn credentials(password: &str) -> Option<EtcdCredentials> {
    Some(EtcdCredentials::new(USER, password))
}

/// Starts a node on `cluster`; the error's whole chain when it does not start.
async fn try_node(cluster: EtcdCluster) -> Result<Node, String> {
    meshage::init(cluster, "127.0.0.1:0")
        .register(STREAM, echo_by)
        .start()
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_etcd_takes_only_nodes_that_trust_it_and_that_it_trusts() {
    bounded(async {
        let Some((etcd, secured)) = EtcdCerts::start().await else {
            return;
        };
        let urls = etcd.urls();
        assert!(urls[0].starts_with("https://"), "{urls:?}");
        let with = |tls: Option<EtcdTls>| {
            EtcdCluster::new(&urls).unwrap().with_config(
                EtcdConfig::default()
                    .tls(tls)
                    .request_timeout(Duration::from_secs(2)),
            )
        };
        let a = try_node(with(Some(secured.tls())))
            .await
            .expect("a node with the CA and a client certificate joins");
        let b = try_node(with(Some(secured.tls()))).await.unwrap();
        wait_exact(
            &[&a, &b],
            Duration::from_secs(10),
            "two nodes see each other over TLS",
        )
        .await;
        assert_routes_by_the_ring(&[&a, &b]).await;

        // A node that trusts another CA does not accept etcd's certificate.
        let other = TestCa::new("another CA");
        let other_ca = other.write("ca.pem", &other.pem);
        let (_, cert, key) = &secured.files;
        let untrusting = EtcdTls::new(Some(&other_ca), Some((cert, key))).unwrap();
        let error = try_node(with(Some(untrusting)))
            .await
            .err()
            .expect("etcd's certificate is not trusted");
        eprintln!("with another CA: {error}");
        assert!(error.contains("etcd at"), "{error}");
        assert!(
            error.to_lowercase().contains("certificate"),
            "the error says why: {error}"
        );

        // A node without a client certificate is refused by etcd.
        let (ca, _, _) = &secured.files;
        let anonymous = EtcdTls::new(Some(ca), None).unwrap();
        let error = try_node(with(Some(anonymous)))
            .await
            .err()
            .expect("no client certificate, no etcd");
        eprintln!("without a client certificate: {error}");

        // Nor does plain HTTP reach it.
        let plain = EtcdCluster::new([etcd.members[0].client_addr()]).unwrap();
        assert!(try_node(
            plain.with_config(EtcdConfig::default().request_timeout(Duration::from_secs(2)))
        )
        .await
        .is_err());

        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_a_wrong_password_fails_clearly_and_never_shows() {
    bounded(async {
        let Some(etcd) = Etcd::start(1).await else {
            return;
        };
        let urls = etcd.urls();
        enable_auth(&urls, None).await;
        let with = |credentials: Option<EtcdCredentials>| {
            EtcdCluster::new(&urls).unwrap().with_config(
                EtcdConfig::default()
                    .credentials(credentials)
                    .request_timeout(Duration::from_secs(2)),
            )
        };
        let wrong = "Wr0ng-pa55word-8d2f";
        let error = try_node(with(credentials(wrong)))
            .await
            .err()
            .expect("a wrong password is refused");
        eprintln!("with a wrong password: {error}");
        assert!(
            error.contains("authentication failed"),
            "the error says why: {error}"
        );
        assert!(
            !error.contains(wrong),
            "the error shows the password: {error}"
        );
        let cluster = with(credentials(wrong));
        assert!(
            !format!("{cluster:?}").contains(wrong),
            "Debug shows the password: {cluster:?}"
        );

        let error = try_node(with(None)).await.err().expect("no user, no etcd");
        eprintln!("without a user: {error}");

        let node = try_node(with(credentials(PASSWORD)))
            .await
            .expect("the right password opens etcd");
        assert_eq!(ids(&node).len(), 1);
        node.shutdown().await.unwrap();
    })
    .await;
}

/// etcd's auth tokens expire (after 5 idle minutes by default, here 1 s), and an etcd that
/// restarts forgets them: nodes authenticate again and carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_nodes_authenticate_again_when_their_token_expires() {
    bounded(async {
        let Some(mut etcd) = Etcd::start_with(1, None, &["--auth-token-ttl", "1"]).await else {
            return;
        };
        let urls = etcd.urls();
        enable_auth(&urls, None).await;
        let cluster = || {
            EtcdCluster::new(&urls).unwrap().with_config(
                EtcdConfig::default()
                    .credentials(credentials(PASSWORD))
                    .lease_ttl(Duration::from_secs(10)),
            )
        };
        let a = try_node(cluster()).await.unwrap();
        // The expiry itself is what is tested: let the token's TTL pass.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        a.router()
            .register(STREAM, meshage::handler_fn(echo_by))
            .await
            .expect("a registers with a new token");
        etcd.member(0).stop();
        etcd.member(0).restart().await;
        let b = try_node(cluster()).await.unwrap();
        a.router()
            .register(STREAM, meshage::handler_fn(echo_by))
            .await
            .expect("a registers after the restart");
        let took = wait_exact(&[&a, &b], Duration::from_secs(15), "a and b see each other").await;
        eprintln!("converged {took:?} after etcd restarted with auth on");
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meshage_binary_runs_on_a_tls_etcd_with_auth_and_never_shows_the_password() {
    bounded(async {
        let Some((etcd, secured)) = EtcdCerts::start().await else {
            return;
        };
        enable_auth(&etcd.urls(), Some(secured.options())).await;
        let (ca, cert, key) = &secured.files;
        let port = etcd.members[0].client_port.to_string();
        let start = |name: &str| {
            let mut command = common::meshage_command();
            command
                .args(["node", "--http-host", "127.0.0.1", "--http-port", "0"])
                .args(["--echo", STREAM, "--cluster-type", "etcd"])
                .args(["--cluster-host", "127.0.0.1", "--cluster-port", &port])
                .arg("--etcd-ca")
                .arg(ca)
                .arg("--etcd-cert")
                .arg(cert)
                .arg("--etcd-key")
                .arg(key)
                .args(["--etcd-user", USER])
                .env("MESHAGE_ETCD_PASSWORD", PASSWORD)
                .env("MESHAGE_LEASE_TTL", "2")
                // Everything the node and its libraries log, to look for the password in.
                .env("RUST_LOG", "trace,chitchat=warn");
            let proc = common::Proc::spawn(name, command);
            let line = proc.wait_line(Duration::from_secs(20), |l| l.starts_with("meshage node "));
            assert!(line.ends_with("etcd membership"), "{line}");
            let endpoint = line
                .split_whitespace()
                .skip_while(|w| *w != "serving")
                .nth(1)
                .unwrap()
                .to_owned();
            (proc, endpoint)
        };
        let (a_proc, a) = start("node a");
        let (b_proc, b) = start("node b");
        let http = Http::default();
        let services = |endpoint: String| {
            let http = http.clone();
            async move {
                let answer = http.get(&format!("{endpoint}/api/services")).await;
                answer.json().as_array().map_or(0, Vec::len)
            }
        };
        wait_until_async(
            Duration::from_secs(10),
            "each node lists both services",
            || async { services(a.clone()).await == 2 && services(b.clone()).await == 2 },
        )
        .await;
        let answer = http
            .post(&format!("{b}/api/{STREAM}/some-key"), r#"{"x":1}"#)
            .await;
        assert_eq!(answer.status, 200);

        // The password is nowhere a node shows anything.
        for path in ["/api/status", "/metrics", "/", "/api/members"] {
            let answer = http.get(&format!("{a}{path}")).await;
            assert_eq!(answer.status, 200, "{path}");
            assert!(
                !String::from_utf8_lossy(&answer.body).contains(PASSWORD),
                "{path} shows the password"
            );
        }
        for proc in [&a_proc, &b_proc] {
            assert!(
                !proc.output().contains(PASSWORD),
                "the log shows the password"
            );
        }

        // A wrong password stops the binary with a clear error that does not quote it.
        let wrong = "Wr0ng-pa55word-8d2f";
        let output = common::meshage_command()
            .args(["node", "--http-host", "127.0.0.1", "--http-port", "0"])
            .args([
                "--cluster-type",
                "etcd",
                "--cluster-host",
                "127.0.0.1",
                "--cluster-port",
                &port,
            ])
            .arg("--etcd-ca")
            .arg(ca)
            .arg("--etcd-cert")
            .arg(cert)
            .arg("--etcd-key")
            .arg(key)
            .args(["--etcd-user", USER])
            .env("MESHAGE_ETCD_PASSWORD", wrong)
            .env("RUST_LOG", "trace,chitchat=warn")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success());
        assert!(
            text.contains("meshage: error:") && text.contains("authentication failed"),
            "{text}"
        );
        assert!(
            !text.contains(wrong),
            "the output shows the password: {text}"
        );
    })
    .await;
}

/// The shared conformance suite's backend: a single-member etcd of the test's own, with a 2 s
/// lease TTL; over TLS, or with auth on, for the suites of those names.
struct EtcdBackend {
    etcd: Etcd,
    config: EtcdConfig,
    /// The TLS etcd's CA and files, kept while the etcd runs.
    _certs: Option<EtcdCerts>,
}

impl EtcdBackend {
    async fn start() -> Option<Self> {
        Some(EtcdBackend {
            etcd: Etcd::start(1).await?,
            config: EtcdConfig::default(),
            _certs: None,
        })
    }

    async fn start_tls() -> Option<Self> {
        let (etcd, certs) = EtcdCerts::start().await?;
        Some(EtcdBackend {
            etcd,
            config: EtcdConfig::default().tls(Some(certs.tls())),
            _certs: Some(certs),
        })
    }

    async fn start_auth() -> Option<Self> {
        let etcd = Etcd::start(1).await?;
        enable_auth(&etcd.urls(), None).await;
        Some(EtcdBackend {
            etcd,
            config: EtcdConfig::default().credentials(credentials(PASSWORD)),
            _certs: None,
        })
    }
}

impl Backend for EtcdBackend {
    fn cluster(&self, _seeds: &[String]) -> Box<dyn Cluster> {
        Box::new(
            EtcdCluster::new(self.etcd.urls())
                .unwrap()
                .with_config(self.config.clone().lease_ttl(Duration::from_secs(2))),
        )
    }
    fn failure_deadline(&self) -> Duration {
        Duration::from_secs(8)
    }
}

conformance_tests!(conformance, EtcdBackend::start());
conformance_tests!(conformance_tls, EtcdBackend::start_tls());
conformance_tests!(conformance_auth, EtcdBackend::start_auth());
