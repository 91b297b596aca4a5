//! Protocol detection: what a new connection speaks (TLS, the peer link, HTTP/2 with prior
//! knowledge, or HTTP/1.1), told from its first bytes; inside TLS, told again. The bytes are read, not peeked, so that
//! waiting for the rest of a partial preface waits for the socket to become readable instead of
//! looking at the same bytes again; whoever serves the connection reads them again first
//! ([`Rewind`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::link;

/// What a new connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// TLS: it opened with a handshake record (a ClientHello).
    Tls,
    /// The peer link: it opened with [`link::PREFACE`].
    Link,
    /// HTTP/2 with prior knowledge: it opened with the HTTP/2 connection preface.
    Http2,
    /// Anything else (and a connection that closes or says nothing for [`SNIFF_TIMEOUT`]):
    /// HTTP/1.1, whose server answers what it cannot parse.
    Http1,
}

/// The first byte of a TLS handshake record (RFC 8446, section 5.1): no HTTP method and
/// neither preface starts with it.
const TLS_HANDSHAKE: u8 = 0x16;

/// The HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a connection may take to say enough to be told apart.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a new connection's first bytes (at most 24, for at most [`SNIFF_TIMEOUT`]) and tells
/// what it speaks. Returns the bytes read, to be handed on with the connection.
pub(super) async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> (Protocol, Bytes) {
    let mut head = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    let timeout = tokio::time::sleep(SNIFF_TIMEOUT);
    tokio::pin!(timeout);
    let protocol = loop {
        let read = tokio::select! {
            read = stream.read(&mut head[n..]) => read,
            _ = &mut timeout => break Protocol::Http1,
        };
        match read {
            Ok(0) | Err(_) => break Protocol::Http1,
            Ok(read) => n += read,
        }
        if let Some(protocol) = decide(&head[..n]) {
            break protocol;
        }
    };
    (protocol, Bytes::copy_from_slice(&head[..n]))
}

/// What a connection that opened with `seen` speaks, or `None` while it may still be either
/// preface.
fn decide(seen: &[u8]) -> Option<Protocol> {
    if seen.first() == Some(&TLS_HANDSHAKE) {
        return Some(Protocol::Tls);
    }
    let n = seen.len();
    let link = n.min(link::PREFACE.len());
    let maybe_link = seen[..link] == link::PREFACE[..link];
    let maybe_h2 = n <= H2_PREFACE.len() && *seen == H2_PREFACE[..n];
    if maybe_link && n >= link::PREFACE.len() {
        Some(Protocol::Link)
    } else if maybe_h2 && n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else if !maybe_link && !maybe_h2 {
        Some(Protocol::Http1)
    } else {
        None
    }
}

/// A connection whose first bytes were read while sniffing: it reads them again first.
pub(super) struct Rewind<S> {
    head: Bytes,
    stream: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(head: Bytes, stream: S) -> Rewind<S> {
        Rewind { head, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    #[test]
    fn prefaces_are_told_apart_from_their_first_bytes() {
        assert_eq!(decide(b"M"), None);
        assert_eq!(decide(&link::PREFACE[..11]), None);
        assert_eq!(decide(link::PREFACE), Some(Protocol::Link));
        assert_eq!(decide(b"P"), None, "POST or the HTTP/2 preface");
        assert_eq!(decide(b"PO"), Some(Protocol::Http1));
        assert_eq!(decide(&H2_PREFACE[..23]), None);
        assert_eq!(decide(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(decide(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(decide(b"MESHLNK9"), Some(Protocol::Http1));
        assert_eq!(decide(&[0x16, 0x03, 0x01]), Some(Protocol::Tls));
        assert_eq!(decide(&[0x16]), Some(Protocol::Tls));
    }

    /// A preface that arrives in pieces is read as it comes, and every byte read is read again
    /// through the rewound connection.
    #[tokio::test]
    async fn a_preface_in_pieces_is_told_and_replayed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            for piece in [&H2_PREFACE[..1], &H2_PREFACE[1..10], &H2_PREFACE[10..]] {
                stream.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stream.write_all(b"rest").await.unwrap();
            stream
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let (protocol, head) = sniff(&mut stream).await;
        assert_eq!((protocol, &head[..]), (Protocol::Http2, &H2_PREFACE[..]));
        let _client = client.await.unwrap();
        let mut rewound = Rewind::new(head, stream);
        let mut again = vec![0u8; H2_PREFACE.len() + 4];
        rewound.read_exact(&mut again).await.unwrap();
        assert_eq!(&again[..24], H2_PREFACE);
        assert_eq!(&again[24..], b"rest");
    }
}
