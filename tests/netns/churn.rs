//! (h) One owner while the ring changes: how often a key runs on two services at about the same
//! time while nodes leave and come back under load through two entry nodes, without and with
//! `--strict-ownership`. A measurement (printed, and in BENCHMARKS.md), not a pass mark: a key
//! that moves runs on its old and its new owner within a second anyway.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{failures, in_lab, more_records, wait_until, Mesh, DEADLINE, HANDLER_PORT};

/// When each key ran on each node: key → node → unix times.
type Ran = HashMap<String, HashMap<usize, Vec<f64>>>;

impl Mesh {
    async fn ran(&self) -> Ran {
        let mut ran: Ran = HashMap::new();
        for i in 0..self.handlers.len() {
            let url = format!("http://{}:{HANDLER_PORT}/ran", self.lab.ip(i));
            let answer = self
                .http
                .request(http::Method::GET, &url, &[], bytes::Bytes::new())
                .await
                .unwrap_or_else(|e| panic!("runs of handler {i}: {e}"));
            let json = answer.json();
            for (key, times) in json["ran"].as_object().expect("ran").iter() {
                let times = times.as_array().expect("times").iter();
                let times = times.filter_map(serde_json::Value::as_f64).collect();
                ran.entry(key.clone()).or_default().insert(i, times);
            }
        }
        ran
    }
}

/// What the churn showed: keys that ran on two services within one second, and runs on a
/// service that had run the key, then another had, all within one second (a key going back).
struct Overlap {
    keys_in_one_second: usize,
    back_and_forth: usize,
}

fn overlap(ran: &Ran) -> Overlap {
    let mut keys_in_one_second = 0;
    let mut back_and_forth = 0;
    for by_node in ran.values() {
        let mut runs: Vec<(f64, usize)> = by_node
            .iter()
            .flat_map(|(&node, times)| times.iter().map(move |&t| (t, node)))
            .collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut seconds: HashMap<i64, Vec<usize>> = HashMap::new();
        for &(t, node) in &runs {
            let nodes = seconds.entry(t as i64).or_default();
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        if seconds.values().any(|nodes| nodes.len() > 1) {
            keys_in_one_second += 1;
        }
        // A, then B, then A again, within one second.
        for (i, &(t, node)) in runs.iter().enumerate() {
            let earlier = runs[..i].iter().rev().take_while(|(u, _)| t - u < 1.0);
            let mut others = false;
            for &(_, before) in earlier {
                if before != node {
                    others = true;
                } else if others {
                    back_and_forth += 1;
                    break;
                }
            }
        }
    }
    Overlap {
        keys_in_one_second,
        back_and_forth,
    }
}

/// Four nodes; the load enters through nodes 0 and 1; nodes 3, 2 and 3 again leave
/// (SIGTERM) and come back, one after the other.
async fn churn(flags: &[&str]) -> (Overlap, usize, usize) {
    let mut mesh = Mesh::start_with(4, flags).await;
    let loads = [
        mesh.load(0, "churn-a", 4, DEADLINE),
        mesh.load(1, "churn-b", 4, DEADLINE),
    ];
    wait_until(Duration::from_secs(20), "the load is under way", || {
        loads.iter().all(|l| l.successes() >= 100)
    })
    .await;
    for victim in [3, 2, 3] {
        mesh.terminate(victim);
        mesh.wait_services(&[0, 1], 3, Duration::from_secs(20))
            .await;
        more_records(&loads[0], Instant::now(), 50).await;
        mesh.restart(victim);
        mesh.wait_services(&[0, 1, victim], 4, Duration::from_secs(20))
            .await;
        more_records(&loads[0], Instant::now(), 50).await;
    }
    let mut records = Vec::new();
    for load in loads {
        records.extend(load.stop().await);
    }
    let failed = failures(&records).len();
    (overlap(&mesh.ran().await), records.len(), failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement of about 25 s: cargo test --test netns h_ -- --ignored --nocapture"]
async fn h_strict_ownership_narrows_the_time_a_key_runs_on_two_services() {
    in_lab(async {
        for flags in [&[][..], &["--strict-ownership"][..]] {
            let (overlap, requests, failed) = churn(flags).await;
            println!(
                "CHURN | {} | {requests} requests, {failed} failed | keys run on two services within one second: {} of 48 | runs back on a service within a second of another's: {} |",
                if flags.is_empty() { "default" } else { "--strict-ownership" },
                overlap.keys_in_one_second,
                overlap.back_and_forth,
            );
        }
    })
    .await;
}
