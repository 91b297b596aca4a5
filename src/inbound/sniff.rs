//! Protocol detection: what a new connection speaks (the peer link, HTTP/2 with prior
//! knowledge, or HTTP/1.1), told from its first bytes, read without taking them.

use std::time::Duration;

use crate::link;

/// What a new connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// The peer link: it opened with [`link::PREFACE`].
    Link,
    /// HTTP/2 with prior knowledge: it opened with the HTTP/2 connection preface.
    Http2,
    /// Anything else (and a connection that closes or says nothing for 10 s): HTTP/1.1, whose
    /// server answers what it cannot parse.
    Http1,
}

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells what a new connection speaks from its first bytes, read without taking them.
pub(super) async fn sniff(stream: &tokio::net::TcpStream) -> Protocol {
    let mut head = [0u8; H2_PREFACE.len()];
    let read = async {
        loop {
            let n = stream.peek(&mut head).await.unwrap_or(0);
            if n == 0 {
                return Protocol::Http1;
            }
            let seen = &head[..n];
            let link = seen.len().min(link::PREFACE.len());
            let maybe_link = seen[..link] == link::PREFACE[..link];
            let maybe_h2 = *seen == H2_PREFACE[..n];
            if maybe_link && n >= link::PREFACE.len() {
                return Protocol::Link;
            }
            if maybe_h2 && n == H2_PREFACE.len() {
                return Protocol::Http2;
            }
            if !maybe_link && !maybe_h2 {
                return Protocol::Http1;
            }
            // A partial preface: wait for the rest.
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or(Protocol::Http1)
}
