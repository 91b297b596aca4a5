//! A node's TLS with its peers, whichever way it trusts them: pinned to the certificates
//! members publish, under a cluster key with no CA (`pinning`), or verified against the
//! operator's CA (`operator`). Links, forwards and the node's port go through [`PeerTls`] and
//! need not know which.

use std::io;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use super::identity::{Fingerprint, Identity};
use super::operator::OperatorTls;
use super::pinning::{Alpn, PinnedTls};

/// How a node authenticates its peers, and itself to them.
#[derive(Debug)]
pub(crate) enum PeerTls {
    /// A certificate made at start, published with the node's membership; peers accept exactly
    /// the certificates members published.
    Pinned(PinnedTls),
    /// The operator's certificates: peers are whoever holds a certificate of the CA.
    Operator(OperatorTls),
}

impl PeerTls {
    /// Pinned TLS with a certificate made for this run.
    pub(crate) fn new(identity: Identity) -> PeerTls {
        PeerTls::Pinned(PinnedTls::new(identity))
    }

    /// The fingerprint this node publishes for its peers to pin; none under the operator's
    /// PKI.
    pub(crate) fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            PeerTls::Pinned(tls) => Some(tls.fingerprint()),
            PeerTls::Operator(_) => None,
        }
    }

    /// Whether a peer can be dialed only with the fingerprint it published.
    pub(crate) fn pins(&self) -> bool {
        matches!(self, PeerTls::Pinned(_))
    }

    /// Accepts TLS on the node's port (with the current certificate, under the operator's PKI).
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        match self {
            PeerTls::Pinned(tls) => tls.acceptor(),
            PeerTls::Operator(tls) => tls.acceptor(),
        }
    }

    /// Runs the TLS handshake as a client over `stream` with the peer at `authority`
    /// (`host:port`), which published `pin`. Pinned, the peer must present the certificate of
    /// `pin` (and fails without one); under the operator's PKI, a certificate of the CA valid
    /// for the host.
    pub(crate) async fn connect<S>(
        &self,
        stream: S,
        authority: &str,
        pin: Option<Fingerprint>,
        alpn: Alpn,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match self {
            PeerTls::Pinned(tls) => {
                let pin = pin.ok_or_else(|| {
                    io::Error::other("no certificate fingerprint is known for the peer")
                })?;
                tls.connect(stream, pin, alpn).await
            }
            PeerTls::Operator(tls) => {
                let host = host_of(authority);
                let name = ServerName::try_from(host.to_owned()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("`{host}` is not a server name"),
                    )
                })?;
                tokio_rustls::TlsConnector::from(tls.client(alpn))
                    .connect(name, stream)
                    .await
            }
        }
    }

    /// Whether the client of `connection` is a peer by its certificate alone: under the
    /// operator's PKI, one that presented a certificate (the handshake took it only if it
    /// chains to the CA). Pinned, that is for the node's table to say.
    pub(crate) fn peer_by_certificate(&self, connection: &rustls::ServerConnection) -> bool {
        matches!(self, PeerTls::Operator(_)) && connection.peer_certificates().is_some()
    }
}

/// The host of `host:port` (`[v6]:port` too), without the brackets.
fn host_of(authority: &str) -> &str {
    let host = authority
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(authority, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_authority_is_what_certificates_name() {
        assert_eq!(host_of("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("node-1.internal:9"), "node-1.internal");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
