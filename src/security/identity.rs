//! A node's peer identity: a key pair and a self-signed certificate made at start (rcgen), and
//! the certificate's fingerprint, which the node publishes so that its peers accept exactly it.
//! No CA: trust comes from the sealed gossip that carries the fingerprint.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The name in a node's certificate, and the name every peer connection asks for. Nothing
/// checks it: a peer is known by its certificate's fingerprint, not by a name.
pub(crate) const PEER_NAME: &str = "meshage-peer";

/// The SHA-256 of a certificate's DER, written as 64 lowercase hex digits. Compared in
/// constant time.
#[derive(Clone, Copy)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate, from its DER.
    pub fn of(certificate_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(certificate_der).into())
    }

    /// Reads 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Fingerprint> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
        }
        Some(Fingerprint(bytes))
    }

    /// Whether `certificate_der` is the certificate of this fingerprint, in constant time.
    pub fn matches(&self, certificate_der: &[u8]) -> bool {
        *self == Fingerprint::of(certificate_der)
    }
}

impl PartialEq for Fingerprint {
    /// In constant time.
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Fingerprint {}

impl std::hash::Hash for Fingerprint {
    /// The bytes, as equality compares them (in constant time).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fingerprint::from_hex(s).ok_or_else(|| "a fingerprint is 64 hex digits".to_owned())
    }
}

/// A node's certificate and its private key, made once at start and never written anywhere.
pub(crate) struct Identity {
    pub(crate) certificate: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pub(crate) fingerprint: Fingerprint,
}

impl Identity {
    /// A new ECDSA P-256 key pair and a self-signed certificate for it, valid for as long as
    /// rcgen's defaults say (peers check the fingerprint, not dates).
    pub(crate) fn generate() -> Identity {
        let made = rcgen::generate_simple_self_signed(vec![PEER_NAME.to_owned()])
            .expect("rcgen makes a P-256 certificate for a fixed DNS name");
        let certificate = made.cert.der().clone();
        let fingerprint = Fingerprint::of(&certificate);
        Identity {
            certificate,
            key: PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()),
            fingerprint,
        }
    }

    /// The private key, for a rustls configuration.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_lowercase_hex_of_the_certificates_sha256_and_reads_back() {
        let identity = Identity::generate();
        let hex = identity.fingerprint.to_string();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let expected: String = Sha256::digest(&identity.certificate)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
        assert_eq!(Fingerprint::from_hex(&hex), Some(identity.fingerprint));
        assert_eq!(
            Fingerprint::from_hex(&hex.to_uppercase()),
            Some(identity.fingerprint)
        );
        assert!(identity.fingerprint.matches(&identity.certificate));
        assert_ne!(Identity::generate().fingerprint, identity.fingerprint);
        for bad in ["", "00", &hex[1..], &format!("{}g", &hex[1..])] {
            assert_eq!(Fingerprint::from_hex(bad), None, "{bad}");
        }
        assert!(!format!("{identity:?}").contains("PRIVATE"));
    }
}
