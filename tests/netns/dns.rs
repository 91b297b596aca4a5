//! Seeds from a DNS name with many A records, as a Kubernetes headless Service gives them: a
//! real DNS server (dnsmasq, in a namespace of its own) answers one name with every node's
//! address, and each node's namespace resolves through it (`/etc/netns/NAME/resolv.conf`,
//! which `ip netns exec` mounts over `/etc/resolv.conf`). The nodes listen on all interfaces
//! and advertise their own address (`--advertise-host`): the namespaces share the machine's
//! hostname, so without it every node would advertise the same endpoint.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::proc::Proc;
use crate::common::{wait_until, wait_until_async, Http};
use crate::lab::{self, Lab};

/// The name every node is seeded with.
const SEED_NAME: &str = "meshage-seeds.test";

/// dnsmasq answering [`SEED_NAME`] from a hosts file, and the resolver files of the node
/// namespaces. Removed on drop (dnsmasq first), whatever path the test took.
pub struct Dns {
    /// Declared first, so dropped first: nothing reads the files after.
    server: Proc,
    hosts: PathBuf,
    resolvers: Vec<PathBuf>,
}

/// Whether dnsmasq is here. When it is not, says so and returns false, so that the test
/// skips; under CI (`CI=true`) it panics instead, since there the tests must run.
pub fn available() -> bool {
    let Err(e) = lab::run("dnsmasq", &["--version"]) else {
        return true;
    };
    let why = format!("no dnsmasq (Debian package dnsmasq): {e}");
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("the DNS seed test must run under CI, but: {why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// `/etc/netns/NAME`, whose files `ip netns exec NAME` mounts over those of `/etc`.
fn etc_of(ns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(ns)
}

/// Removes `/etc/netns/meshage-PID-*` of runs whose process is gone.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir("/etc/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("meshage-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
            if gone && pid != std::process::id() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Dns {
    /// Starts dnsmasq in namespace `server` of `lab`, answering [`SEED_NAME`] with the
    /// addresses of `listed`, and points the resolver of each namespace in `clients` at it.
    pub fn start(lab: &Lab, server: usize, clients: &[usize], listed: &[usize]) -> Dns {
        remove_leftovers();
        let hosts = std::env::temp_dir().join(format!("{}-hosts", lab.ns(server)));
        let mut resolvers = Vec::new();
        for &i in clients {
            let dir = etc_of(lab.ns(i));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("resolv.conf");
            let text = format!(
                "nameserver {}\noptions timeout:1 attempts:3\n",
                lab.ip(server)
            );
            std::fs::write(&file, text).unwrap();
            resolvers.push(dir);
        }
        write_hosts(&hosts, lab, listed);
        let mut command = lab.command(server, "dnsmasq");
        command.arg("--keep-in-foreground").args([
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--log-facility=-",
            "--log-queries",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--port=53",
        ]);
        command.arg(format!("--listen-address={}", lab.ip(server)));
        command.arg(format!("--addn-hosts={}", hosts.display()));
        let server = Proc::spawn("dnsmasq", command);
        Dns {
            server,
            hosts,
            resolvers,
        }
    }

    /// Answers [`SEED_NAME`] with the addresses of `listed` from now on (dnsmasq rereads its
    /// hosts files on SIGHUP).
    pub fn list(&self, lab: &Lab, listed: &[usize]) {
        write_hosts(&self.hosts, lab, listed);
        let pid = self.server.child.id().to_string();
        lab::run("kill", &["-HUP", &pid]).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn write_hosts(path: &PathBuf, lab: &Lab, listed: &[usize]) {
    let text: String = listed
        .iter()
        .map(|&i| format!("{} {SEED_NAME}\n", lab.ip(i)))
        .collect();
    std::fs::write(path, text).unwrap();
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
        let _ = std::fs::remove_file(&self.hosts);
        for dir in &self.resolvers {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The addresses [`SEED_NAME`] resolves to inside namespace `i`, sorted.
fn resolved(lab: &Lab, i: usize) -> Vec<String> {
    let out = lab
        .run_in(i, "getent", &["ahostsv4", SEED_NAME])
        .unwrap_or_default();
    let mut ips: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Waits until [`SEED_NAME`] resolves, in namespace `i`, to exactly the addresses of `listed`.
pub async fn wait_resolves(lab: &Lab, i: usize, listed: &[usize]) {
    let mut wanted: Vec<String> = listed.iter().map(|&j| lab.ip(j)).collect();
    wanted.sort();
    wait_until(
        Duration::from_secs(10),
        &format!("{SEED_NAME} resolves to {wanted:?} in namespace {i}"),
        || crate::blocking(|| resolved(lab, i)) == wanted,
    )
    .await;
}

/// Starts `meshage node` in namespace `i` on all interfaces, advertising its address, with
/// [`SEED_NAME`] as its only seed.
pub fn start_node(lab: &Lab, i: usize) -> Proc {
    let mut command = lab.command(i, env!("CARGO_BIN_EXE_meshage"));
    command
        .env_clear()
        .env("RUST_LOG", "info,chitchat=warn")
        .env("NO_COLOR", "1")
        .env("MESHAGE_ADVERTISE_HOST", lab.ip(i))
        .args(["node", "--http-port", &lab::HTTP_PORT.to_string()])
        .args(["--cluster-port", &lab::GOSSIP_PORT.to_string()])
        .args(["--seeds", &format!("{SEED_NAME}:{}", lab::GOSSIP_PORT)])
        .args(["--echo", "echo"]);
    let node = Proc::spawn(&format!("node {i}"), command);
    let line = node.wait_line(Duration::from_secs(20), |l| l.starts_with("meshage node "));
    assert!(line.contains(&lab.endpoint(i)), "{line}");
    node
}

/// Waits until each node of `nodes` is ready and lists exactly the endpoints of `nodes` as live
/// members.
pub async fn wait_members(lab: &Lab, nodes: &[usize], timeout: Duration) -> Duration {
    let mut http = Http::default();
    http.timeout = Duration::from_secs(2);
    let mut wanted: Vec<String> = nodes.iter().map(|&i| lab.endpoint(i)).collect();
    wanted.sort();
    wait_until_async(
        timeout,
        &format!("nodes {nodes:?} are ready and see {wanted:?}"),
        || async {
            for &i in nodes {
                let get = |path: &str| {
                    let url = format!("{}{path}", lab.endpoint(i));
                    let http = http.clone();
                    async move { http.request(http::Method::GET, &url, &[], "").await }
                };
                let ready = get("/readyz").await;
                if !ready.is_ok_and(|r| r.status == http::StatusCode::OK) {
                    return false;
                }
                let Ok(members) = get("/api/members").await else {
                    return false;
                };
                let members: serde_json::Value =
                    serde_json::from_slice(&members.body).unwrap_or_default();
                let mut live: Vec<String> = members
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["state"] == "live")
                    .filter_map(|m| m["endpoint"].as_str().map(str::to_owned))
                    .collect();
                live.sort();
                if live != wanted {
                    return false;
                }
            }
            true
        },
    )
    .await
}
