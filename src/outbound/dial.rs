//! Dialing peers for HTTP forwards over mutual TLS: a hyper-util connector that connects over
//! TCP, then runs the TLS handshake accepting exactly the certificate the peer published (or,
//! under the operator's PKI, a certificate of its CA for the host dialed).
//!
//! The pool of the HTTP client is keyed by `host:port`, and a connector sees only the URI, so
//! the forwarder tells the connector each peer's fingerprint beforehand ([`Pins`]): a peer that
//! restarts at the same address with a new certificate is dialed with the new one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::security::{Alpn, Fingerprint, PeerTls};
use crate::FastMap;

/// The fingerprint of each peer, by `host:port`, as the latest forward to it said.
#[derive(Clone, Default)]
pub(super) struct Pins(Arc<ArcSwap<FastMap<Arc<str>, Fingerprint>>>);

impl Pins {
    /// Records that `authority` presents the certificate `fingerprint`; costs a lookup when it
    /// is known already.
    pub(super) fn pin(&self, authority: &str, fingerprint: Fingerprint) {
        if self.0.load().get(authority) == Some(&fingerprint) {
            return;
        }
        self.0.rcu(|current| {
            let mut next = FastMap::clone(current);
            next.insert(Arc::from(authority), fingerprint);
            next
        });
    }

    /// Forgets `authority`: its node is gone.
    pub(super) fn forget(&self, authority: &str) {
        if !self.0.load().contains_key(authority) {
            return;
        }
        self.0.rcu(|current| {
            let mut next = FastMap::clone(current);
            next.remove(authority);
            next
        });
    }

    fn get(&self, authority: &str) -> Option<Fingerprint> {
        self.0.load().get(authority).copied()
    }
}

/// Connects to peers over TCP and then TLS, pinned to the fingerprint in [`Pins`].
#[derive(Clone)]
pub(super) struct PinnedConnector {
    pub(super) tcp: HttpConnector,
    pub(super) tls: Arc<PeerTls>,
    pub(super) alpn: Alpn,
    pub(super) pins: Pins,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Uri> for PinnedConnector {
    type Response = TokioIo<PeerStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let authority = uri.authority().map_or_else(String::new, |a| a.to_string());
        let pin = self.pins.get(&authority);
        let connecting = self.tcp.call(uri);
        let (tls, alpn) = (self.tls.clone(), self.alpn);
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let stream = tls.connect(tcp, &authority, pin, alpn).await?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(TokioIo::new(PeerStream { stream, h2 }))
        })
    }
}

/// A TLS connection to a peer, as hyper-util's client takes it.
pub(super) struct PeerStream {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    /// The peer agreed to HTTP/2 by ALPN.
    h2: bool,
}

impl Connection for PeerStream {
    fn connected(&self) -> Connected {
        let connected = self.stream.get_ref().0.connected();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
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
