//! The operator's own PKI: a node certificate and key, and the CA that signed every node's
//! ([`OperatorTls`]), read from PEM files and read again when they change.
//!
//! With it the node's port serves TLS with that certificate (to API clients, HTTP/1.1 and
//! HTTP/2 by ALPN, with no client certificate asked of them), and peers are whoever presents a
//! client certificate that chains to the CA: a client certificate that does not is refused in
//! the handshake. The node dials its peers verifying their certificate against the CA and the
//! host it dials (webpki), presenting its own as the client certificate.
//!
//! A reload builds new rustls configurations and swaps them in: new handshakes use them, open
//! connections keep the session they have. Files that do not make a usable configuration (a key
//! that does not match the certificate, one file written and not yet the other) leave the one
//! in force.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::identity::Fingerprint;
use super::pinning::Alpn;
use super::trust::{certificates, TlsError};

/// Where the operator's certificate, key and CA are read from.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// The configurations made from one version of the files.
struct Loaded {
    server: Arc<ServerConfig>,
    /// One per [`Alpn`], in the order `Link`, `Http1`, `Http2`.
    clients: [Arc<ClientConfig>; 3],
    /// The fingerprint of the node's certificate (the first of its chain).
    fingerprint: Fingerprint,
}

struct Inner {
    files: Files,
    loaded: ArcSwap<Loaded>,
    /// The SHA-256 of the three files' text last read, used or not: the same text is not
    /// built or warned about twice.
    seen: Mutex<[u8; 32]>,
}

/// A node's TLS under the operator's PKI: its certificate chain and key, and the CA its peers'
/// certificates must chain to. Cheap to clone; clones share the files and what was loaded.
#[derive(Clone)]
pub struct OperatorTls(Arc<Inner>);

impl fmt::Debug for OperatorTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorTls")
            .field("cert", &self.0.files.cert)
            .field("ca", &self.0.files.ca)
            .finish_non_exhaustive()
    }
}

impl OperatorTls {
    /// Reads the certificate chain (`cert`, PEM, the node's certificate first), its private
    /// key (`key`, PEM: PKCS#8, PKCS#1 or SEC1) and the CA certificates (`ca`, PEM). Fails when
    /// a file cannot be read or parsed, or the key is not the certificate's. Errors never
    /// quote the key.
    pub fn from_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        ca: impl AsRef<Path>,
    ) -> Result<OperatorTls, TlsError> {
        let files = Files {
            cert: cert.as_ref().to_owned(),
            key: key.as_ref().to_owned(),
            ca: ca.as_ref().to_owned(),
        };
        let (digest, texts) = read(&files)?;
        let loaded = build(&files, &texts)?;
        Ok(OperatorTls(Arc::new(Inner {
            files,
            loaded: ArcSwap::from_pointee(loaded),
            seen: Mutex::new(digest),
        })))
    }

    /// Reads the files again and, if their text changed since they were last read, takes
    /// them. Returns whether new certificates were taken. Fails (keeping the certificates in
    /// force) when a file cannot be read or the files do not make a usable configuration.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (digest, texts) = read(&self.0.files)?;
        {
            let mut seen = self.0.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == digest {
                return Ok(false);
            }
            *seen = digest;
        }
        let loaded = build(&self.0.files, &texts)?;
        self.0.loaded.store(Arc::new(loaded));
        Ok(true)
    }

    /// The SHA-256 fingerprint of the certificate the node presents now.
    pub fn fingerprint(&self) -> Fingerprint {
        self.0.loaded.load().fingerprint
    }

    /// Rereads the files every `period`, for as long as the task runs (the node that owns it
    /// aborts it when it stops). Logs certificates taken, and files not taken (never a key),
    /// each reason once until it changes.
    pub(crate) async fn watch(self, period: std::time::Duration) {
        let mut failing: Option<TlsError> = None;
        loop {
            tokio::time::sleep(period).await;
            let tls = self.clone();
            let reloaded = tokio::task::spawn_blocking(move || tls.reload()).await;
            match reloaded {
                Ok(Ok(taken)) => {
                    failing = None;
                    if taken {
                        info!(
                            cert = %self.0.files.cert.display(),
                            fingerprint = %self.fingerprint(),
                            "TLS certificates changed: new ones taken for new connections"
                        );
                    }
                }
                Ok(Err(e)) => {
                    if failing.as_ref() != Some(&e) {
                        warn!(error = %e, "TLS files not taken; keeping the certificates in force");
                    }
                    failing = Some(e);
                }
                Err(e) => return warn!(error = %e, "TLS files no longer reread"),
            }
        }
    }

    /// Accepts TLS on the node's port with the current certificate.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.loaded.load().server.clone())
    }

    /// The client configuration that dials peers offering `alpn`.
    pub(crate) fn client(&self, alpn: Alpn) -> Arc<ClientConfig> {
        let index = match alpn {
            Alpn::Link => 0,
            Alpn::Http1 => 1,
            Alpn::Http2 => 2,
        };
        self.0.loaded.load().clients[index].clone()
    }
}

/// The three files' texts (the key's wiped when dropped) and the digest of all three.
type Texts = (Vec<u8>, Zeroizing<Vec<u8>>, Vec<u8>);

fn read(files: &Files) -> Result<([u8; 32], Texts), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let cert = read(&files.cert)?;
    let key = Zeroizing::new(read(&files.key)?);
    let ca = read(&files.ca)?;
    let mut hash = Sha256::new();
    for text in [&cert[..], &key[..], &ca[..]] {
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text);
    }
    Ok((hash.finalize().into(), (cert, key, ca)))
}

fn build(files: &Files, (cert, key, ca): &Texts) -> Result<Loaded, TlsError> {
    let what = |path: &Path| path.display().to_string();
    let chain = certificates(cert, &what(&files.cert))?;
    let key_der = PrivateKeyDer::from_pem_slice(key).map_err(|_| TlsError::BadKey {
        path: what(&files.key),
    })?;
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca, &what(&files.ca))? {
        roots.add(cert).map_err(|e| TlsError::BadCertificates {
            what: what(&files.ca),
            reason: e.to_string(),
        })?;
    }
    let roots = Arc::new(roots);
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let unusable = |e: rustls::Error| TlsError::BadCertificates {
        what: format!("{} with {}", what(&files.cert), what(&files.key)),
        reason: e.to_string(),
    };
    // API clients need no certificate; one that is presented must chain to the CA.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::BadCertificates {
            what: what(&files.ca),
            reason: e.to_string(),
        })?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())
        .map_err(unusable)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let client = |alpn: Alpn| {
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key_der.clone_key())
            .map_err(unusable)?;
        config.alpn_protocols = alpn.protocols();
        Ok::<_, TlsError>(Arc::new(config))
    };
    Ok(Loaded {
        fingerprint: Fingerprint::of(&chain[0]),
        server: Arc::new(server),
        clients: [
            client(Alpn::Link)?,
            client(Alpn::Http1)?,
            client(Alpn::Http2)?,
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls_pki_types::CertificateDer;

    /// A CA, and a function that issues a certificate and key (PEM) for loopback from it.
    fn authority() -> (String, impl Fn() -> (String, String)) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let issuer = Issuer::new(params, key);
        let issue = move || {
            let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        (pem, issue)
    }

    fn fingerprint_of(pem: &str) -> Fingerprint {
        Fingerprint::of(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
    }

    #[test]
    fn changed_files_are_taken_and_a_key_that_does_not_match_is_not() {
        let dir = std::env::temp_dir().join(format!("meshage-operator-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, ca) = (dir.join("n.pem"), dir.join("n-key.pem"), dir.join("ca.pem"));
        let (ca_pem, issue) = authority();
        let (first, first_key) = issue();
        std::fs::write(&ca, &ca_pem).unwrap();
        std::fs::write(&cert, &first).unwrap();
        std::fs::write(&key, &first_key).unwrap();
        let tls = OperatorTls::from_files(&cert, &key, &ca).unwrap();
        assert_eq!(tls.fingerprint(), fingerprint_of(&first));
        assert_eq!(tls.reload(), Ok(false), "nothing changed");

        // The new certificate is written before its key: not taken until the key is.
        let (second, second_key) = issue();
        std::fs::write(&cert, &second).unwrap();
        let e = tls.reload().unwrap_err();
        assert!(!e.to_string().contains("PRIVATE KEY"), "{e}");
        assert_eq!(
            tls.fingerprint(),
            fingerprint_of(&first),
            "the old one stays"
        );
        std::fs::write(&key, &second_key).unwrap();
        assert_eq!(tls.reload(), Ok(true));
        assert_eq!(tls.fingerprint(), fingerprint_of(&second));

        std::fs::write(&key, "not a key").unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::BadKey { .. })));
        assert_eq!(tls.fingerprint(), fingerprint_of(&second));
        assert!(OperatorTls::from_files(&cert, &key, &ca).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
