//! A flood of hostile connections against one real `meshage node` process, all at once, while a
//! normal client sends requests with a deadline: thousands of idle connections, stalled
//! prefaces, a client that sends its request head a byte at a time, peer-link frames that
//! announce 60 MiB, and bodies past the limit sent whole before reading. The normal requests all
//! succeed within their deadlines; the node's memory and CPU stay bounded during the flood, and
//! its memory comes back after it. Bounded: about 20 s.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::process::meshage_node;
use crate::common::{wait_until_async, Http};

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// CPU time (user and system, in clock ticks) a process has used.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// How many idle connections this process may open: 5,000, or fewer under a low open-file
/// limit (this process holds one end of each, the node the other).
fn idle_connections() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024);
    5000.min(soft.saturating_sub(500) / 2)
}

/// A link request frame's head (no trace) announcing `len` bytes, as a hostile peer sends it.
fn huge_link_frame_head(len: u32) -> Vec<u8> {
    let mut head = len.to_be_bytes().to_vec();
    head.push(1);
    head.extend_from_slice(&[0u8; 8 + 16 + 8 + 1 + 4 + 2 + 4 + 2 + 2 + 2]);
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_leaves_normal_requests_served_and_memory_bounded() {
    let node = meshage_node("flood", &[], &["--echo", "echo"]);
    let pid = node.proc.child.id();
    let address = node.endpoint.trim_start_matches("http://").to_owned();
    let url = format!("{}/api/echo/k", node.endpoint);
    let mut http = Http::default();
    http.timeout = Duration::from_secs(5);
    for _ in 0..20 {
        let answer = http.post(&url, "{}").await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let idle_rss = rss_kib(pid);
    let ticks_before = cpu_ticks(pid);
    let started = Instant::now();

    // The attackers, all at once.
    let mut held = Vec::new();
    let idle = idle_connections();
    for _ in 0..idle {
        held.push(TcpStream::connect(&address).await.unwrap());
    }
    for n in 0..50 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(if n % 2 == 0 { b"M" } else { b"P" })
            .await
            .unwrap();
        held.push(stream);
    }
    let mut attacks = tokio::task::JoinSet::new();
    {
        let address = address.clone();
        attacks.spawn(async move {
            // The request head, one byte every 100 ms (some 4 s), never finished.
            let Ok(mut stream) = TcpStream::connect(&address).await else {
                return;
            };
            for byte in b"POST /api/echo/k HTTP/1.1\r\nhost: x\r\nx-slow: ".iter() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    for _ in 0..30 {
        let address = address.clone();
        attacks.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(&address).await else {
                return;
            };
            let _ = stream.write_all(b"MESHLNK6\r\n\r\n").await;
            let _ = stream.write_all(&huge_link_frame_head(60 << 20)).await;
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..20 {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
    }
    for _ in 0..10 {
        let address = address.clone();
        attacks.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(&address).await else {
                return;
            };
            let head = "POST /api/echo/k HTTP/1.1\r\nhost: x\r\ncontent-length: 2097152\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&vec![b'x'; 2 << 20]).await;
        });
    }

    // The normal client, meanwhile: every request answered within its deadline.
    let mut peak_rss = rss_kib(pid);
    for n in 0..50 {
        let sent = Instant::now();
        let answer = http
            .request(
                Method::POST,
                &url,
                &[("x-request-timeout", "5000")],
                format!("{{\"n\":{n}}}"),
            )
            .await
            .unwrap_or_else(|e| panic!("request {n} during the flood: {e}"));
        assert_eq!(answer.status, StatusCode::OK, "request {n}");
        assert!(sent.elapsed() < Duration::from_secs(5), "request {n} late");
        peak_rss = peak_rss.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while attacks.join_next().await.is_some() {}
    peak_rss = peak_rss.max(rss_kib(pid));
    let flood_time = started.elapsed();
    let ticks = cpu_ticks(pid) - ticks_before;
    eprintln!(
        "flood of {idle} idle connections and more: RSS {idle_rss} KiB idle, {peak_rss} KiB at \
         peak; {ticks} CPU ticks in {flood_time:?}"
    );
    assert!(
        peak_rss < idle_rss + 200 * 1024,
        "RSS {peak_rss} KiB at peak, {idle_rss} KiB idle"
    );
    // Two cores busy for the whole flood would be 200 ticks a second.
    let per_second = ticks as f64 / flood_time.as_secs_f64();
    assert!(per_second < 150.0, "{per_second:.0} CPU ticks a second");

    // The attackers leave; the memory comes back.
    drop(held);
    let (http, url) = (&http, &url);
    wait_until_async(
        Duration::from_secs(30),
        "RSS back near idle",
        || async move {
            let _ = http.post(url, "{}").await;
            rss_kib(pid) <= 2 * idle_rss
        },
    )
    .await;
}
