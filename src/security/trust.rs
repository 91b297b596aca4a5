//! What a node trusts when it dials a server over TLS (an HTTPS handler, the Consul agent):
//! [`ClientTls`], the certificate authorities it verifies servers against, built once into a
//! rustls client config; and the PEM files those authorities (and etcd's client identity) are
//! read from.
//!
//! Every config is built with ring's provider given explicitly, never the process default, so
//! that what another part of the process installs cannot change it.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where Linux distributions keep the system's CA bundle, in the order they are looked at
/// (Debian and Ubuntu; Fedora and RHEL; openSUSE; Alpine and others).
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why certificates or a key could not be used. It never contains a key's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{what}: not PEM certificates: {reason}")]
    BadCertificates { what: String, reason: String },
    #[error("{what}: no certificate in it")]
    NoCertificate { what: String },
    #[error("{path}: not a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    BadKey { path: String },
    #[error("no system CA bundle found (looked at {looked}): give a CA file")]
    NoSystemRoots { looked: String },
}

/// How a node verifies the servers it dials over TLS: the certificate authorities it trusts
/// (a CA file, or the system's bundle), with webpki's checks of the chain and of the server's
/// name against the host it dials. Built once; cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    /// Where the authorities came from, for `Debug` and errors.
    source: Arc<str>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientTls").field(&self.source).finish()
    }
}

impl ClientTls {
    /// Trusts the CA certificates of a PEM file, and nothing else. Fails when the file cannot
    /// be read or holds no certificate that parses.
    pub fn from_ca_file(path: impl AsRef<Path>) -> Result<ClientTls, TlsError> {
        let path = path.as_ref();
        let pem = read_file(path)?;
        ClientTls::from_pem(&pem, &format!("CA file {}", path.display()))
    }

    /// Trusts the CA certificates of PEM text, and nothing else. Fails when it holds no
    /// certificate that parses.
    pub fn from_ca_pem(pem: &[u8]) -> Result<ClientTls, TlsError> {
        ClientTls::from_pem(pem, "CA certificates")
    }

    /// Trusts the system's CA bundle (on Debian, `/etc/ssl/certs/ca-certificates.crt`, from the
    /// `ca-certificates` package). Read once per process. Fails when no bundle is found.
    pub fn system() -> Result<ClientTls, TlsError> {
        static SYSTEM: OnceLock<Result<ClientTls, TlsError>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| {
                let (path, pem) = system_bundle()?;
                ClientTls::from_pem(&pem, &format!("system CA bundle {}", path.display()))
            })
            .clone()
    }

    fn from_pem(pem: &[u8], what: &str) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(pem, what)? {
            // A bundle may hold a certificate webpki cannot use as an anchor; skip it, as
            // curl does, as long as one is left.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(TlsError::NoCertificate { what: what.into() });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The clients that use it speak HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            source: what.into(),
        })
    }

    /// Runs the TLS handshake over `tcp` with the server at `host` (a DNS name or an IP
    /// address), verifying its certificate. Fails with the reason rustls gives (an unknown
    /// issuer, a name that does not match, an expired certificate).
    pub(crate) async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{host}` is not a server name"),
            )
        })?;
        self.connector.connect(name, tcp).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("TLS handshake with {host} ({}): {e}", self.source),
            )
        })
    }
}

/// A connection to a server: plain TCP, or TLS over it.
pub(crate) enum MaybeTls {
    Plain(TcpStream),
    /// Boxed: a TLS session is large.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The certificates of PEM text (other sections are skipped); at least one.
pub(super) fn certificates(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificates {
            what: what.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what: what.into() });
    }
    Ok(certs)
}

/// The first system CA bundle found, and its text.
pub(crate) fn system_bundle() -> Result<(PathBuf, Vec<u8>), TlsError> {
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .map(|path| read_file(&path).map(|pem| (path, pem)))
        .unwrap_or_else(|| {
            Err(TlsError::NoSystemRoots {
                looked: SYSTEM_BUNDLES.join(", "),
            })
        })
}

/// A PEM file of certificates, checked to hold at least one, as text to hand to a client that
/// parses PEM itself (etcd's).
#[cfg(feature = "etcd")]
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read_file(path)?;
    certificates(&pem, &path.display().to_string())?;
    Ok(pem)
}

/// A PEM file holding a private key, checked to hold one, as text wiped when dropped. Its
/// errors never quote the file.
#[cfg(feature = "etcd")]
pub(crate) fn read_private_key(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, TlsError> {
    let pem = zeroize::Zeroizing::new(read_file(path)?);
    match rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(_) => Err(TlsError::BadKey {
            path: path.display().to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_that_hold_no_certificate_are_refused_with_the_reason() {
        let e = ClientTls::from_ca_pem(b"not pem at all").unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = ClientTls::from_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let tls = ClientTls::from_ca_pem(cert.cert.pem().as_bytes()).unwrap();
        assert_eq!(format!("{tls:?}"), "ClientTls(\"CA certificates\")");
    }
}
