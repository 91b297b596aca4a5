//! Peer links that carry nothing are closed as idle HTTP connections are (`--idle-timeout`):
//! a connection that opened a link holds a slot of the node's no longer than an idle client.

use std::time::Duration;

use meshage::NodeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::bounded;
use crate::common::{gossip, wait_until_async, Http};
use crate::hostile::link_request_frame;

/// The go-away frame: length 1, kind 3.
const GO_AWAY: [u8; 5] = [0, 0, 0, 1, 3];

/// One frame read whole: its length prefix and its bytes.
async fn read_frame(link: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    link.read_exact(&mut len).await.expect("a frame's length");
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    link.read_exact(&mut frame).await.expect("the frame");
    [len.to_vec(), frame].concat()
}

/// The node's `meshage_connections` gauge, read by a new client (whose connection counts too:
/// a kept-alive one of an earlier read could race the node's close of it as idle).
async fn connections(node: &meshage::Node) -> u64 {
    let text = Http::default()
        .get(&format!("http://{}/metrics", node.local_addr()))
        .await
        .body;
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("meshage_connections "))
        .expect("the gauge")
        .parse()
        .unwrap()
}

/// The status of an answer frame (kind 2: id, then the status).
fn answered(frame: &[u8]) -> u16 {
    assert_eq!(frame[4], 2, "an answer frame, not a refusal: {frame:?}");
    u16::from_be_bytes([frame[13], frame[14]])
}

/// A link idle for the node's idle timeout gets the go-away; a request its client sent before
/// it saw the go-away is still run and answered; and a client that ignores the go-away loses
/// the connection soon after (a few seconds), instead of holding it for good: the node's
/// `meshage_connections` no longer counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_gets_the_go_away_and_then_closes() {
    bounded(async {
        let node = meshage::init(gossip(&[]), "127.0.0.1:0")
            .register("echo", crate::common::echo_by)
            .config(NodeConfig::default().idle_timeout(Duration::from_millis(300)))
            .start()
            .await
            .expect("node starts");
        let service = node.router().local_services()[0].id.to_string();
        let mut link = TcpStream::connect(node.local_addr()).await.unwrap();
        link.write_all(b"MESHLNK6\r\n\r\n").await.unwrap();
        let mut ack = [0u8; 8];
        link.read_exact(&mut ack).await.unwrap();
        assert_eq!(&ack, b"MESHACK6");
        let request = |id| link_request_frame(id, "echo", "k", &service, b"{}");
        link.write_all(&request(1)).await.unwrap();
        assert_eq!(answered(&read_frame(&mut link).await), 200);
        assert_eq!(connections(&node).await, 2, "the link and the scrape");

        // Nothing more is sent: the go-away comes once the link has been idle.
        let frame = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut link))
            .await
            .expect("the go-away within a few idle timeouts");
        assert_eq!(frame, GO_AWAY);

        // A request that crossed the go-away runs as any other.
        link.write_all(&request(2)).await.unwrap();
        assert_eq!(answered(&read_frame(&mut link).await), 200);

        // This client never closes the link: the node does.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), link.read_to_end(&mut rest))
            .await
            .expect("the node closes the link")
            .ok();
        assert!(rest.is_empty(), "nothing after the go-away: {rest:?}");
        wait_until_async(
            Duration::from_secs(5),
            "the link counted closed",
            || async { connections(&node).await == 1 },
        )
        .await;
    })
    .await;
}
