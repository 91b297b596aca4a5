//! A lab of network namespaces, one host per node: a bridge in the test's namespace with the
//! address 10.77.S.1/24 (S picked free), and per node a namespace joined to the bridge by a veth
//! pair, with the address 10.77.S.(10+i) on its `eth0`. Only these addresses are ever used.
//!
//! Names carry the test process's id, so that parallel or aborted runs do not collide, and a
//! new lab removes what runs that are no longer alive left behind. Everything a lab made is
//! removed when it drops, processes first, whatever path the test took.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::proc::Proc;

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);

/// Port of every node's HTTP API, gossip and counting handler, each in its own namespace.
pub const HTTP_PORT: u16 = 7000;
pub const GOSSIP_PORT: u16 = 7946;
pub const HANDLER_PORT: u16 = 8000;

/// Runs a command to its end; its stdout, or why it failed.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) {
    run("ip", args).unwrap_or_else(|e| panic!("{e}"));
}

/// Why the lab cannot run on this machine, if it cannot.
fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!(
            "network namespaces need root (effective uid {euid})"
        ));
    }
    if let Err(e) = run("ip", &["-V"]) {
        return Some(format!("no `ip` command (Debian package iproute2): {e}"));
    }
    if let Err(e) = run("nft", &["--version"]) {
        return Some(format!("no `nft` command (Debian package nftables): {e}"));
    }
    if let Err(e) = run("python3", &["--version"]) {
        return Some(format!("no python3 for the counting handler: {e}"));
    }
    let probe = format!("meshage-probe-{}", std::process::id());
    if let Err(e) = run("ip", &["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = run("ip", &["netns", "del", &probe]);
    None
}

/// Whether the lab can run here. When it cannot, says why and returns false, so that the test
/// skips; under CI (`CI=true`) it panics instead, since there the tests must run.
pub fn available() -> bool {
    // Probed once per test binary: the tests run on parallel threads of one process, and two
    // probes at once would race on the same namespace name.
    static PROBE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(why) = PROBE.get_or_init(unavailable).clone() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("the network-namespace tests must run under CI, but: {why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and bridges of earlier runs whose process is gone.
fn remove_leftovers() {
    let own = std::process::id();
    for line in run("ip", &["netns", "list"]).unwrap_or_default().lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let pid = name
            .strip_prefix("meshage-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != own && !alive(pid) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
    let links = run("ip", &["-o", "link", "show", "type", "bridge"]).unwrap_or_default();
    for line in links.lines() {
        // "12: mb1a2b-0: <...>"
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        let pid = name
            .strip_prefix("mb")
            .and_then(|rest| rest.split_once('-'))
            .filter(|(_, n)| n.chars().all(|c| c.is_ascii_digit()))
            .and_then(|(pid, _)| u32::from_str_radix(pid, 16).ok());
        if let Some(pid) = pid {
            if pid != own && !alive(pid) {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
}

/// A /24 in 10.77.0.0/16 that no interface of this namespace uses.
fn free_subnet() -> u8 {
    let addrs = run("ip", &["-4", "-o", "addr", "show"]).unwrap_or_default();
    let used: HashSet<u8> = addrs
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("10.77."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    let start = (std::process::id() % 250) as u8;
    (0..250u8)
        .map(|i| (start.wrapping_add(i) % 250) + 1)
        .find(|s| !used.contains(s))
        .expect("a free subnet in 10.77.0.0/16")
}

/// The namespaces, the bridge and their addresses. Removed on drop.
pub struct Lab {
    pub subnet: u8,
    bridge: String,
    namespaces: Vec<String>,
}

impl Lab {
    /// Makes a bridge and `nodes` namespaces joined to it. Panics when a step fails (after
    /// removing what it made).
    pub fn new(nodes: usize) -> Lab {
        remove_leftovers();
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{pid:x}-{n}");
        let subnet = free_subnet();
        let bridge = format!("mb{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let mut lab = Lab {
            subnet,
            bridge: bridge.clone(),
            namespaces: Vec::new(),
        };
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.host_ip()),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..nodes {
            let ns = format!("meshage-{pid}-{n}-{i}");
            ip(&["netns", "add", &ns]);
            lab.namespaces.push(ns.clone());
            let (host, peer) = (format!("mv{tag}-{i}"), format!("mp{tag}-{i}"));
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", &ns]);
            ip(&["-n", &ns, "link", "set", &peer, "name", "eth0"]);
            let addr = format!("{}/24", lab.ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["link", "set", &host, "master", &bridge]);
            ip(&["link", "set", &host, "up"]);
        }
        lab
    }

    /// The test's own address on the bridge.
    pub fn host_ip(&self) -> String {
        format!("10.77.{}.1", self.subnet)
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, 10 + i)
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{HTTP_PORT}", self.ip(i))
    }

    pub fn gossip(&self, i: usize) -> String {
        format!("{}:{GOSSIP_PORT}", self.ip(i))
    }

    pub fn ns(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// A command that runs `program` inside node `i`'s namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.ns(i), program]);
        command
    }

    /// Runs `program args` inside node `i`'s namespace to its end.
    pub fn run_in(&self, i: usize, program: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", self.ns(i), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // Deleting the namespace deletes its end of the veth pair, and so the pair.
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// The python3 executable itself (not a shim), so that signals reach the handler.
pub fn python() -> String {
    run("python3", &["-c", "import sys; print(sys.executable)"])
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "python3".to_owned())
}

/// How the network of a node is made worse.
pub enum Impairment {
    /// `tc netem`: delay and loss on the node's egress.
    Netem,
    /// The kernel has no netem: `netns/delay_line.py` does the same in user space. The node's
    /// packets to the lab's subnet go through a TUN device into that program, which drops the
    /// same share at random and sends the rest on through `eth0` after the same delay. A
    /// stand-in for netem, which this machine's kernel lacks; the kernels' TCP and UDP stacks on
    /// both ends are the real ones.
    DelayLine,
}

/// A node's network made worse; [`Lab::unimpair`] undoes it.
pub struct Impaired {
    node: usize,
    /// The delay line's process, for [`Impairment::DelayLine`].
    line: Option<Proc>,
}

impl Lab {
    /// Whether this kernel has `sch_netem` (a probe on a throwaway interface in node 0's
    /// namespace).
    pub fn has_netem(&self) -> bool {
        let ns = self.ns(0);
        if run(
            "ip",
            &[
                "-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
            ],
        )
        .is_err()
        {
            return false;
        }
        let ok = self
            .run_in(
                0,
                "tc",
                &[
                    "qdisc", "add", "dev", "probe0", "root", "netem", "delay", "1ms",
                ],
            )
            .is_ok();
        let _ = run("ip", &["-n", ns, "link", "del", "probe0"]);
        ok
    }

    /// Makes node `i`'s egress lose `loss_percent` of packets and delays each by `delay_ms`.
    pub fn impair(&self, i: usize, how: &Impairment, loss_percent: u32, delay_ms: u32) -> Impaired {
        let line = match how {
            Impairment::Netem => {
                let (delay, loss) = (format!("{delay_ms}ms"), format!("{loss_percent}%"));
                self.run_in(
                    i,
                    "tc",
                    &[
                        "qdisc", "add", "dev", "eth0", "root", "netem", "delay", &delay, "loss",
                        &loss,
                    ],
                )
                .unwrap_or_else(|e| panic!("{e}"));
                None
            }
            Impairment::DelayLine => {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netns/delay_line.py");
                let mut command = self.command(i, &python());
                command.args([
                    script,
                    "delay0",
                    &format!("10.77.{}.0/24", self.subnet),
                    &self.ip(i),
                    &delay_ms.to_string(),
                    &loss_percent.to_string(),
                ]);
                let line = Proc::spawn(&format!("delay line {i}"), command);
                line.wait_line(Duration::from_secs(20), |l| l == "ready");
                Some(line)
            }
        };
        Impaired { node: i, line }
    }

    /// Undoes [`Lab::impair`].
    pub fn unimpair(&self, impaired: Impaired) {
        let i = impaired.node;
        match impaired.line {
            None => self
                .run_in(i, "tc", &["qdisc", "del", "dev", "eth0", "root"])
                .map(drop)
                .unwrap_or_else(|e| panic!("{e}")),
            Some(mut line) => {
                // It removes its routing rules as it exits; its device and route go with it.
                line.signal("TERM");
                let exited = line.wait_exit(Duration::from_secs(10));
                assert!(
                    exited.is_some(),
                    "delay line {i} did not exit:\n{}",
                    line.output()
                );
            }
        }
    }

    /// Cuts node `i` off from every other node (not from the test's address): its namespace
    /// drops their packets both ways.
    pub fn cut(&self, i: usize) {
        let (net, host) = (format!("10.77.{}.0/24", self.subnet), self.host_ip());
        let rules = format!(
            "table inet meshage_cut {{\n  chain in {{\n    type filter hook input priority 0; policy accept;\n    ip saddr {net} ip saddr != {host} drop\n  }}\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    ip daddr {net} ip daddr != {host} drop\n  }}\n}}\n"
        );
        self.nft(i, &rules);
    }

    /// Undoes [`Lab::cut`].
    pub fn heal(&self, i: usize) {
        self.run_in(i, "nft", &["delete", "table", "inet", "meshage_cut"])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn nft(&self, i: usize, rules: &str) {
        let path = std::env::temp_dir().join(format!(
            "meshage-nft-{}-{}.conf",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, rules).expect("write the nft rules");
        let result = self.run_in(i, "nft", &["-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        result.unwrap_or_else(|e| panic!("{e}\nrules:\n{rules}"));
    }
}
