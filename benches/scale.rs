//! Run with: cargo bench --bench scale
//!
//! An in-process simulation of 50 and 100 gossip nodes on loopback with the shipped defaults:
//! start to convergence, time to detect a dead node, gossip bytes per node per second, and the
//! share of keys that move when one node joins or leaves (expected about 1/N); each size runs
//! once with plain gossip and once sealed with a cluster key, with the process's CPU time over
//! the steady-state window. These guide the
//! defaults in `GossipConfig`. Under `cargo test` (no `--bench` argument) it runs a 5-node smoke
//! version, so the simulation itself stays tested.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meshage::{
    Cluster, ClusterKey, ClusterView, GossipCluster, HashRing, Keyring, Keys, LocalNode,
    MemberState, Membership, ServiceEntry, NO_SEEDS,
};

fn live_services(view: &ClusterView) -> usize {
    view.members
        .iter()
        .filter(|m| m.state == MemberState::Live)
        .map(|m| m.services.len())
        .sum()
}

async fn wait_all(
    nodes: &[Arc<dyn Membership>],
    timeout: Duration,
    cond: impl Fn(&ClusterView) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if nodes.iter().all(|n| cond(&n.view().borrow())) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// CPU time of this process so far (user and system), from /proc/self/stat, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime and stime are the 12th
    // and 13th of them, in clock ticks (100 a second on Linux).
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

async fn simulate(n: usize, sealed: bool) {
    let keys = Keys::new(Keyring::new(ClusterKey::generate()));
    let started = Instant::now();
    let mut nodes: Vec<Arc<dyn Membership>> = Vec::with_capacity(n);
    let mut seed = None;
    for i in 0..n {
        let cluster = match &seed {
            None => GossipCluster::new("127.0.0.1:0", NO_SEEDS),
            Some(seed) => GossipCluster::new("127.0.0.1:0", [seed]),
        }
        .expect("valid address");
        let mut local = LocalNode::new(
            format!("node-{i:03}"),
            format!("http://127.0.0.1:{}", 20000 + i),
        );
        if sealed {
            local = local.with_keys(keys.clone());
        }
        let membership = Box::new(cluster).join(local).await.expect("gossip starts");
        membership
            .advertise(&[ServiceEntry {
                id: Arc::from(format!("service-{i:03}").as_str()),
                stream: Arc::from("echo"),
            }])
            .await
            .expect("advertise");
        if seed.is_none() {
            seed = membership.seed_address();
        }
        nodes.push(membership);
    }
    let converged = wait_all(&nodes, Duration::from_secs(60), |v| live_services(v) == n).await;
    let convergence = converged.map(|_| started.elapsed());

    // Steady-state gossip traffic over 3 s.
    let before: u64 = nodes
        .iter()
        .map(|m| m.traffic().unwrap_or_default().bytes_sent)
        .sum();
    let window = Duration::from_secs(3);
    let cpu_before = cpu_seconds();
    tokio::time::sleep(window).await;
    let cpu = (cpu_seconds() - cpu_before) / window.as_secs_f64();
    let after: u64 = nodes
        .iter()
        .map(|m| m.traffic().unwrap_or_default().bytes_sent)
        .sum();
    let per_node = (after - before) as f64 / n as f64 / window.as_secs_f64();

    // Kill one node without leaving; time until every other node stops routing to it.
    let dead = nodes.pop().expect("n > 0");
    dead.abort();
    let detected = wait_all(&nodes, Duration::from_secs(60), |v| {
        live_services(v) == n - 1
    })
    .await;

    println!(
        "{n:>4} nodes {} | convergence {} | dead node detected by all in {} | gossip sent {:.1} KB/s per node | CPU {:.1}% of a core per node",
        if sealed { "sealed" } else { "plain " },
        convergence.map_or("not within 60 s".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        detected.map_or("not within 60 s".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        per_node / 1024.0,
        cpu * 100.0 / n as f64,
    );
    for node in nodes {
        let _ = node.shutdown().await;
    }
}

/// The share of 10,000 keys whose owner changes when one service joins or leaves a ring of n.
fn key_movement(n: usize) {
    let ids: Vec<String> = (0..=n).map(uuid_like).collect();
    let before = HashRing::new(&ids[..n]);
    let joined = HashRing::new(&ids[..=n]);
    let left = HashRing::new(&ids[..n - 1]);
    let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
    let moved = |a: &HashRing, b: &HashRing| {
        keys.iter().filter(|k| a.get(k) != b.get(k)).count() as f64 / keys.len() as f64
    };
    println!(
        "{n:>4} services | keys moved on a join {:.3}, on a leave {:.3} (1/N = {:.3})",
        moved(&before, &joined),
        moved(&before, &left),
        1.0 / n as f64
    );
}

fn uuid_like(i: usize) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        i * 2_654_435_761 % 0xffff_ffff,
        i % 0xffff,
        i % 0xfff,
        (i * 7) % 0xfff,
        i * 104_729
    )
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes: &[usize] = if bench { &[50, 100] } else { &[5] };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!("gossip scale simulation on loopback, shipped GossipConfig defaults");
    for &n in sizes {
        runtime.block_on(simulate(n, false));
        runtime.block_on(simulate(n, true));
    }
    for &n in if bench {
        &[3usize, 10, 50, 100][..]
    } else {
        &[3usize][..]
    } {
        key_movement(n);
    }
}
