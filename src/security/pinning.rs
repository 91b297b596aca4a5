//! Mutual TLS between nodes with no CA: the rustls configurations of a keyed node, and the two
//! verifiers that replace the certificate-chain check by a fingerprint.
//!
//! A node dials a peer with a client configuration pinned to the fingerprint that peer
//! published ([`PinnedServer`]: the server's end-entity certificate must hash to exactly it),
//! presenting its own certificate. Its HTTP port takes TLS with a configuration that asks every
//! client for a certificate without requiring one ([`ClientCertificates`]): API clients may come
//! with none. Whether a client certificate is a peer's is decided after the handshake, against
//! the fingerprints of the current table (see `inbound`), because a node that has just joined
//! may dial a peer a gossip round before that peer has heard of it.
//!
//! Both verifiers check the handshake's signature with rustls's own helper and the `ring`
//! provider's algorithms: holding a certificate is not enough, its key must sign. TLS 1.3 only.
//! Configurations are made once (a client one per peer fingerprint and protocol, cached), so
//! that rustls resumes sessions to the same peer.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::identity::{Fingerprint, Identity, PEER_NAME};
use crate::FastMap;

/// What a connection to a peer speaks inside TLS, offered by ALPN: nothing for the peer link
/// (the node's port tells it by its preface), `h2` or `http/1.1` for HTTP forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Alpn {
    Link,
    Http1,
    Http2,
}

impl Alpn {
    pub(super) fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Link => Vec::new(),
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Http2 => vec![b"h2".to_vec()],
        }
    }
}

/// Client configurations cached at most; past it the cache starts again (fingerprints change
/// with every restart of a peer).
const MAX_CACHED: usize = 1024;

/// A keyed node's TLS: its identity, the server configuration of its HTTP port, and the client
/// configurations it dials peers with.
pub(crate) struct PinnedTls {
    identity: Identity,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
    clients: ArcSwap<FastMap<(Fingerprint, Alpn), Arc<ClientConfig>>>,
}

impl PinnedTls {
    /// The TLS of a node with `identity`.
    pub(crate) fn new(identity: Identity) -> PinnedTls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(ClientCertificates {
            algorithms: provider.signature_verification_algorithms,
        });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.certificate.clone()], identity.key())
            .expect("rcgen's P-256 key suits the ring provider");
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        PinnedTls {
            identity,
            provider,
            server: Arc::new(server),
            clients: ArcSwap::from_pointee(FastMap::default()),
        }
    }

    /// This node's certificate fingerprint, as it publishes it.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint
    }

    /// Accepts TLS on the node's port.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// The client configuration that accepts exactly the server certificate of `peer` and
    /// offers `alpn`; made once per pair.
    pub(crate) fn client(&self, peer: Fingerprint, alpn: Alpn) -> Arc<ClientConfig> {
        if let Some(config) = self.clients.load().get(&(peer, alpn)) {
            return config.clone();
        }
        let verifier = Arc::new(PinnedServer {
            expected: peer,
            algorithms: self.provider.signature_verification_algorithms,
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.identity.certificate.clone()], self.identity.key())
            .expect("rcgen's P-256 key suits the ring provider");
        config.alpn_protocols = alpn.protocols();
        let config = Arc::new(config);
        self.clients.rcu(|current| {
            let mut next = if current.len() >= MAX_CACHED {
                FastMap::default()
            } else {
                HashMap::clone(current)
            };
            next.insert((peer, alpn), config.clone());
            next
        });
        config
    }

    /// Runs the TLS handshake as a client over `stream` with the peer whose certificate has
    /// fingerprint `peer`. Fails when the peer presents another certificate.
    pub(crate) async fn connect<S>(
        &self,
        stream: S,
        peer: Fingerprint,
        alpn: Alpn,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(PEER_NAME).expect("a valid DNS name");
        tokio_rustls::TlsConnector::from(self.client(peer, alpn))
            .connect(name, stream)
            .await
    }
}

impl std::fmt::Debug for PinnedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PinnedTls").field(&self.identity).finish()
    }
}

/// The fingerprint of the certificate a TLS client presented, if it presented one.
pub(crate) fn client_fingerprint(connection: &rustls::ServerConnection) -> Option<Fingerprint> {
    let end_entity = connection.peer_certificates()?.first()?;
    Some(Fingerprint::of(end_entity))
}

/// Accepts exactly the server certificate whose SHA-256 is `expected`, and a handshake that
/// certificate's key signed. Names, dates and issuers are not looked at: the fingerprint came
/// from the peer itself, through the cluster's sealed gossip.
#[derive(Debug)]
struct PinnedServer {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.expected.matches(end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Asks every client for a certificate and requires none. A certificate is taken when its key
/// signed the handshake; whether it is a peer's is for the node to say afterwards, from its
/// table (and an operator's client CA could be checked here later).
#[derive(Debug)]
struct ClientCertificates {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientCertificates {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // None: a client sends whatever certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn tls12_refused() -> Error {
    Error::General("TLS 1.2 is not used between nodes".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(expected: Fingerprint) -> PinnedServer {
        PinnedServer {
            expected,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }

    #[test]
    fn the_pinned_certificate_is_accepted_and_any_other_refused() {
        let (peer, stranger) = (Identity::generate(), Identity::generate());
        let pinned = verifier(peer.fingerprint);
        let name = ServerName::try_from(PEER_NAME).unwrap();
        let check = |cert: &CertificateDer<'_>| {
            pinned.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        };
        assert!(check(&peer.certificate).is_ok());
        assert!(matches!(
            check(&stranger.certificate),
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            ))
        ));
    }

    /// Handshakes over an in-memory pipe: `client` dials `server` pinned to `pin`.
    async fn handshake(
        client: &PinnedTls,
        server: &PinnedTls,
        pin: Fingerprint,
    ) -> (
        std::io::Result<tokio_rustls::client::TlsStream<tokio::io::DuplexStream>>,
        std::io::Result<tokio_rustls::server::TlsStream<tokio::io::DuplexStream>>,
    ) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let acceptor = server.acceptor();
        let accepted = tokio::spawn(async move { acceptor.accept(far).await });
        let connected = client.connect(near, pin, Alpn::Link).await;
        let accepted = if connected.is_ok() {
            accepted.await.unwrap()
        } else {
            accepted.abort();
            Err(std::io::ErrorKind::Other.into())
        };
        (connected, accepted)
    }

    #[tokio::test]
    async fn nodes_handshake_when_the_pin_matches_and_the_server_sees_the_clients_fingerprint() {
        let (a, b) = (
            PinnedTls::new(Identity::generate()),
            PinnedTls::new(Identity::generate()),
        );
        let (connected, accepted) = handshake(&a, &b, b.fingerprint()).await;
        let connected = connected.expect("a accepts b's pinned certificate");
        let accepted = accepted.expect("b takes a's certificate");
        assert_eq!(
            client_fingerprint(accepted.get_ref().1),
            Some(a.fingerprint())
        );
        assert_eq!(
            connected.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert!(Arc::ptr_eq(
            &a.client(b.fingerprint(), Alpn::Link),
            &a.client(b.fingerprint(), Alpn::Link)
        ));

        let stranger = PinnedTls::new(Identity::generate());
        let (connected, _) = handshake(&a, &b, stranger.fingerprint()).await;
        assert!(connected.is_err(), "a refuses a server it did not pin");
    }
}
