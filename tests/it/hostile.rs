//! Hostile and broken input: what arrives on a node's port never makes it spin, and a status a
//! handler returns is never taken for the node's own refusal.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::bounded;
use crate::common::process::meshage_node;
use crate::common::{gossip, wait_converged, Http};
use crate::flood::cpu_ticks;
use http::StatusCode;
use meshage::{HandlerError, Header, Node, NodeConfig, PeerProtocol};
use serde_json::Value;

/// Runs of each (service, key), shared by every node's handler.
type Runs = Arc<Mutex<HashMap<(String, String), usize>>>;

/// A node whose `claim` handler counts its runs and answers 421, as a handler may.
async fn misdirecting_node(seeds: &[String], runs: &Runs, protocol: PeerProtocol) -> Node {
    let runs = runs.clone();
    meshage::init(gossip(seeds), "127.0.0.1:0")
        .register("claim", move |_data: Value, header: Header| {
            let runs = runs.clone();
            async move {
                let key = (
                    header.service_id.to_string(),
                    header.partition_key.to_string(),
                );
                *runs.lock().unwrap().entry(key).or_default() += 1;
                Err::<Value, _>(HandlerError::with_status(
                    StatusCode::MISDIRECTED_REQUEST,
                    "not mine",
                ))
            }
        })
        .config(NodeConfig::default().peer_protocol(protocol))
        .start()
        .await
        .expect("node starts")
}

/// A handler's 421 is the handler's answer: it reaches the client unchanged, from the key's
/// owner, having run once there and nowhere else, and the owner stays on the ring. Over every
/// way a node forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_421_is_answered_once_and_changes_no_ring() {
    bounded(async {
        for protocol in [PeerProtocol::Link, PeerProtocol::Http1, PeerProtocol::Http2] {
            let runs = Runs::default();
            let first = misdirecting_node(&[], &runs, protocol).await;
            let seed = vec![first.seed_address().unwrap()];
            let mut nodes = vec![first];
            for _ in 0..2 {
                nodes.push(misdirecting_node(&seed, &runs, protocol).await);
            }
            wait_converged(&nodes, 3).await;
            let entry = &nodes[0];
            let own: Vec<String> = entry
                .router()
                .local_services()
                .iter()
                .map(|s| s.id.to_string())
                .collect();
            let table = entry.router().table();
            let keys: Vec<(String, String)> = (0..200)
                .map(|n| format!("k{n}"))
                .filter_map(|key| {
                    let owner = table.owner("claim", &key)?.id.to_string();
                    (!own.contains(&owner)).then_some((key, owner))
                })
                .take(10)
                .collect();
            assert_eq!(keys.len(), 10, "keys owned by the other nodes");
            let http = Http::default();
            for (key, owner) in &keys {
                let url = format!("http://{}/api/claim/{key}", entry.local_addr());
                let answer = http.post(&url, "{}").await;
                assert_eq!(
                    answer.status,
                    StatusCode::MISDIRECTED_REQUEST,
                    "{protocol:?}"
                );
                assert_eq!(answer.json(), serde_json::json!({"error": "not mine"}));
                assert_eq!(answer.service_id().as_deref(), Some(owner.as_str()));
                let ran: Vec<((String, String), usize)> = runs
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|((_, k), _)| k == key)
                    .map(|(run, n)| (run.clone(), *n))
                    .collect();
                assert_eq!(
                    ran,
                    [((owner.clone(), key.clone()), 1)],
                    "{protocol:?}: key {key} ran once, on its owner"
                );
            }
            assert_eq!(
                entry.router().table().services.len(),
                3,
                "{protocol:?}: no owner left the ring"
            );
        }
    })
    .await;
}

/// Connections that send the first byte of a preface and then nothing leave the node idle:
/// it waits for the rest without looking at the same byte again, and serves others meanwhile.
#[test]
fn stalled_prefaces_leave_the_node_idle() {
    let node = meshage_node("stalled", &[], &["--echo", "echo"]);
    let address = node.endpoint.trim_start_matches("http://").to_owned();
    let stalled: Vec<std::net::TcpStream> = (0..50)
        .map(|n| {
            let mut stream = std::net::TcpStream::connect(&address).unwrap();
            // Half of them the peer link's first byte, half HTTP/2's.
            stream
                .write_all(if n % 2 == 0 { b"M" } else { b"P" })
                .unwrap();
            stream
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{}/api/echo/k", node.endpoint);
    runtime.block_on(async {
        let answer = Http::default().post(&url, "{}").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "served beside the stalled ones"
        );
    });
    // A node spinning on them burns two cores: 2 s of that is some 400 ticks.
    let window = Duration::from_secs(2);
    let before = cpu_ticks(node.proc.child.id());
    // A measurement over a window, not a wait for a condition.
    std::thread::sleep(window);
    let used = cpu_ticks(node.proc.child.id()) - before;
    assert!(
        used < 40,
        "{used} ticks of CPU in {window:?} with 50 stalled connections"
    );
    drop(stalled);
}

/// Sends `len` bytes to `url` as Python's `urllib.request` does (the whole body, then the
/// answer) and returns what it got: `status body`, or the error it raised.
fn python_post(url: &str, len: usize) -> String {
    let script = r#"
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], data=b"x" * int(sys.argv[2]), method="POST",
                                 headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except Exception as e:
    print("error", type(e).__name__, e)
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, url, &len.to_string()])
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Writes a whole request with a body of `len` bytes over a raw socket (declared, or chunked),
/// then reads the answer's status line.
fn raw_post(address: &str, len: usize, chunked: bool) -> String {
    use std::io::{BufRead, BufReader};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = vec![b'x'; len];
    let head = if chunked {
        "POST /api/echo/k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
    } else {
        format!("POST /api/echo/k HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n")
    };
    let written = stream.write_all(head.as_bytes()).and_then(|()| {
        if chunked {
            for piece in body.chunks(64 * 1024) {
                write!(stream, "{:x}\r\n", piece.len())?;
                stream.write_all(piece)?;
                stream.write_all(b"\r\n")?;
            }
            stream.write_all(b"0\r\n\r\n")
        } else {
            stream.write_all(&body)
        }
    });
    if let Err(e) = written {
        return format!("write failed: {e}");
    }
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(_) => line.trim().to_owned(),
        Err(e) => format!("read failed: {e}"),
    }
}

/// A body over the limit is refused with a 413 that the client reads, also when the client
/// sends the whole body before it reads: the node reads and drops the rest of the body after
/// answering, instead of closing on a client that is still sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_still_gets_its_answer_read() {
    bounded(async {
        let node = crate::common::echo_node(&[]).await;
        let address = node.local_addr().to_string();
        let url = format!("http://{address}/api/echo/k");
        for len in [2 << 20, 20 << 20] {
            let (python, declared, chunked) = tokio::task::spawn_blocking({
                let (url, address) = (url.clone(), address.clone());
                move || {
                    (
                        python_post(&url, len),
                        raw_post(&address, len, false),
                        raw_post(&address, len, true),
                    )
                }
            })
            .await
            .unwrap();
            assert!(
                python.starts_with("413 {\"error\":\"request body is larger than the limit"),
                "{len} bytes from urllib: {python}"
            );
            for (how, line) in [("declared", declared), ("chunked", chunked)] {
                assert_eq!(line, "HTTP/1.1 413 Payload Too Large", "{len} bytes, {how}");
            }
        }
        // The node still serves.
        let answer = Http::default().post(&url, "{}").await;
        assert_eq!(answer.status, StatusCode::OK);
    })
    .await;
}

/// A peer-link request frame: `u32 len`, kind 1, id, no trace context, timeout, the lengths, the strings,
/// the empty extras block, the body (the protocol in `src/link.rs`).
pub(crate) fn link_request_frame(
    id: u64,
    stream: &str,
    key: &str,
    service: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.push(1u8);
    frame.extend_from_slice(&id.to_be_bytes());
    // No trace: trace id, parent span and flags all zero.
    frame.extend_from_slice(&[0u8; 16 + 8 + 1]);
    frame.extend_from_slice(&5000u32.to_be_bytes());
    // No ring checksum: a request for a service by id.
    frame.extend_from_slice(&0u64.to_be_bytes());
    frame.extend_from_slice(&(stream.len() as u16).to_be_bytes());
    frame.extend_from_slice(&(key.len() as u32).to_be_bytes());
    frame.extend_from_slice(&(service.len() as u16).to_be_bytes());
    // No content type, no tracestate, no previous owner.
    frame.extend_from_slice(&[0u8; 2 + 2 + 2]);
    // The extras block (no name, no headers), after the strings and before the body.
    let extras: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0];
    for part in [
        stream.as_bytes(),
        key.as_bytes(),
        service.as_bytes(),
        extras,
        body,
    ] {
        frame.extend_from_slice(part);
    }
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

/// The peer link keeps the node's body limit: a request frame larger than the limit allows ends
/// the link before anything runs, while one within it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_frame_past_the_body_limit_ends_the_link_unrun() {
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        let node = meshage::init(gossip(&[]), "127.0.0.1:0")
            .register("count", move |_data: Value, _header: Header| {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Ok::<_, HandlerError>(serde_json::json!({}))
                }
            })
            .start()
            .await
            .expect("node starts");
        let service = node.router().local_services()[0].id.to_string();
        let open_link = || async {
            let mut stream = tokio::net::TcpStream::connect(node.local_addr())
                .await
                .unwrap();
            stream.write_all(b"MESHLNK6\r\n\r\n").await.unwrap();
            let mut ack = [0u8; 8];
            stream.read_exact(&mut ack).await.unwrap();
            assert_eq!(&ack, b"MESHACK6");
            stream
        };
        // Within the limit: it runs, and its answer comes back on the link.
        let mut link = open_link().await;
        let body = vec![b' '; 100 * 1024];
        link.write_all(&link_request_frame(1, "count", "k", &service, &body))
            .await
            .unwrap();
        let mut head = [0u8; 4 + 1 + 8 + 2];
        link.read_exact(&mut head).await.unwrap();
        assert_eq!(head[4], 2, "a response frame");
        assert_eq!(u16::from_be_bytes([head[13], head[14]]), 200);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Five times the limit: the link ends, and nothing more runs.
        let mut link = open_link().await;
        let body = vec![b' '; 5 << 20];
        let frame = link_request_frame(2, "count", "k", &service, &body);
        let _ = link.write_all(&frame).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), link.read_to_end(&mut rest))
            .await
            .expect("the node ends the link");
        assert!(rest.is_empty(), "no answer frame: {read:?}");
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "nothing more ran"
        );
    })
    .await;
}

/// A client that sends part of a body and stalls holds its request no longer than the request's
/// deadline: it gets a 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_ends_at_the_deadline() {
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let node = crate::common::echo_node(&[]).await;
        let mut stream = tokio::net::TcpStream::connect(node.local_addr())
            .await
            .unwrap();
        stream
            .write_all(
                b"POST /api/echo/k HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\
                  x-request-timeout: 300\r\n\r\n{\"part\":",
            )
            .await
            .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
            .await
            .expect("an answer within the deadline and some")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("did not arrive within"), "{answer}");
    })
    .await;
}

/// A peer that starts a link frame and stalls loses the link (after 10 s), instead of holding
/// it and its buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_frame_that_stalls_ends_the_link() {
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let node = crate::common::echo_node(&[]).await;
        let mut link = tokio::net::TcpStream::connect(node.local_addr())
            .await
            .unwrap();
        link.write_all(b"MESHLNK6\r\n\r\n").await.unwrap();
        let mut ack = [0u8; 8];
        link.read_exact(&mut ack).await.unwrap();
        let frame = link_request_frame(1, "echo", "k", "svc", &[b' '; 1000]);
        link.write_all(&frame[..100]).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), link.read_to_end(&mut rest))
            .await
            .expect("the node ends a link whose frame stalls")
            .ok();
        assert!(rest.is_empty(), "nothing answered");
    })
    .await;
}

/// Above `max_connections`, a new connection is closed at once, while a client already
/// connected keeps being served; once one closes, there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_connection_limit_new_connections_are_closed_and_old_ones_served() {
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;
        let node = meshage::init(gossip(&[]), "127.0.0.1:0")
            .register("echo", crate::common::echo_by)
            .config(NodeConfig::default().max_connections(8))
            .start()
            .await
            .expect("node starts");
        let address = node.local_addr();
        let request = b"POST /api/echo/k HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
        async fn status_of(stream: &mut TcpStream) -> String {
            let mut answer = vec![0u8; 4096];
            let n = stream.read(&mut answer).await.unwrap_or(0);
            String::from_utf8_lossy(&answer[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        }
        let mut client = TcpStream::connect(address).await.unwrap();
        client.write_all(request).await.unwrap();
        assert_eq!(status_of(&mut client).await, "HTTP/1.1 200 OK");
        let mut idle = Vec::new();
        for _ in 0..7 {
            idle.push(TcpStream::connect(address).await.unwrap());
        }
        let mut refused = TcpStream::connect(address).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte))
            .await
            .expect("the ninth connection is closed at once");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        client.write_all(request).await.unwrap();
        assert_eq!(
            status_of(&mut client).await,
            "HTTP/1.1 200 OK",
            "still served"
        );
        drop(idle.pop());
        crate::common::wait_until_async(Duration::from_secs(10), "room again", || async {
            let Ok(mut fresh) = TcpStream::connect(address).await else {
                return false;
            };
            fresh.write_all(request).await.is_ok()
                && status_of(&mut fresh).await == "HTTP/1.1 200 OK"
        })
        .await;
    })
    .await;
}

/// What the node holds of bodies still arriving is bounded: while one client's large body
/// arrives slowly, another's is refused with 503 (not queued), and once the slow one ends (at
/// its deadline, 408), there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_still_arriving_share_a_bounded_budget() {
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let node = meshage::init(gossip(&[]), "127.0.0.1:0")
            .register("echo", crate::common::echo_by)
            .config(NodeConfig::default().max_buffered(1 << 20))
            .start()
            .await
            .expect("node starts");
        let url = format!("http://{}/api/echo/k", node.local_addr());
        let mut slow = tokio::net::TcpStream::connect(node.local_addr())
            .await
            .unwrap();
        slow.write_all(
            b"POST /api/echo/k HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\
              x-request-timeout: 3000\r\n\r\n",
        )
        .await
        .unwrap();
        slow.write_all(&vec![b' '; 900_000]).await.unwrap();
        let http = Http::default();
        let other = format!("{{\"pad\":\"{}\"}}", "x".repeat(200_000));
        crate::common::wait_until_async(
            Duration::from_secs(10),
            "a body refused while the slow one holds the budget",
            || async {
                let answer = http.post(&url, &other).await;
                answer.status == StatusCode::SERVICE_UNAVAILABLE
                    && String::from_utf8_lossy(&answer.body).contains("still arriving")
            },
        )
        .await;
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut answer))
            .await
            .expect("the slow body ends at its deadline")
            .unwrap();
        assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408"));
        crate::common::wait_until_async(Duration::from_secs(10), "room again", || async {
            http.post(&url, &other).await.status == StatusCode::OK
        })
        .await;
    })
    .await;
}

/// A node that listens beyond loopback with no key or TLS says once, at start, what anyone who
/// reaches it can do; one on loopback, or one with a cluster key, says nothing of it.
#[test]
fn an_exposed_node_warns_once_at_start() {
    const WARNING: &str = "no authentication or encryption";
    let mut command = crate::common::meshage_command();
    command.args([
        "node",
        "--http-host",
        "0.0.0.0",
        "--http-port",
        "0",
        "--cluster-host",
        "127.0.0.1",
        "--cluster-port",
        "0",
        "--echo",
        "echo",
    ]);
    let exposed = crate::common::proc::Proc::spawn("exposed", command);
    exposed.wait_line(Duration::from_secs(20), |l| l.starts_with("meshage node "));
    // Its log (stderr) may come in after its first line on stdout.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !exposed.output().contains(WARNING) {
        assert!(
            std::time::Instant::now() < deadline,
            "no warning: {}",
            exposed.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(exposed.output().matches(WARNING).count(), 1);
    let local = meshage_node("local", &[], &["--echo", "echo"]);
    assert!(
        !local.proc.output().contains(WARNING),
        "{}",
        local.proc.output()
    );
    // With a cluster key, gossip is sealed and peers authenticated: no warning either. The
    // warning would come before "node started" is followed by the stdout line.
    let key = meshage::ClusterKey::generate();
    let mut command = crate::common::meshage_command();
    command
        .args(["node", "--http-host", "0.0.0.0", "--http-port", "0"])
        .args(["--cluster-host", "127.0.0.1", "--cluster-port", "0"])
        .env("MESHAGE_CLUSTER_KEY", &*key.to_base64());
    let keyed = crate::common::proc::Proc::spawn("keyed", command);
    keyed.wait_line(Duration::from_secs(20), |l| l.starts_with("meshage node "));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !keyed.output().contains("node started") {
        assert!(std::time::Instant::now() < deadline, "{}", keyed.output());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!keyed.output().contains(WARNING), "{}", keyed.output());
}
