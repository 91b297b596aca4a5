//! Cluster secrets, the keyring that holds them during a rotation, and the live [`Keys`] a
//! node reads them from.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use hkdf::Hkdf;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The bytes of a cluster secret.
const KEY_LEN: usize = 32;

/// HKDF's `info` for each derived key: a new use gets a new label, never an old one.
const GOSSIP_LABEL: &[u8] = b"meshage v1 gossip seal";
const ID_LABEL: &[u8] = b"meshage v1 key id";
const SALT: &[u8] = b"meshage cluster key";

/// A keyring that cannot be used, with the reason. It never contains the key's text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    #[error("the keyring has no key")]
    Empty,
    #[error("key {position}: not base64")]
    NotBase64 { position: usize },
    #[error(
        "key {position}: {len} bytes where a cluster key has 32 (make one with `meshage keygen`)"
    )]
    Length { position: usize, len: usize },
}

/// One cluster secret: 32 random bytes, written as base64. Its `Debug` shows only its public
/// id; the bytes are wiped when it is dropped.
#[derive(Clone)]
pub struct ClusterKey {
    secret: Zeroizing<[u8; KEY_LEN]>,
}

impl ClusterKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> ClusterKey {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(secret.as_mut());
        ClusterKey { secret }
    }

    /// Reads a key written as base64 (standard alphabet, padded or not), surrounding blanks
    /// ignored. `position` (1-based) names it in the error.
    fn parse_at(text: &str, position: usize) -> Result<ClusterKey, KeyError> {
        let text = text.trim();
        let engine = base64::engine::general_purpose::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let bytes = Zeroizing::new(
            engine
                .decode(text)
                .map_err(|_| KeyError::NotBase64 { position })?,
        );
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return Err(KeyError::Length {
                position,
                len: bytes.len(),
            });
        }
        secret.copy_from_slice(&bytes);
        Ok(ClusterKey { secret })
    }

    /// Reads a key written as base64, as `meshage keygen` prints it.
    pub fn parse(text: &str) -> Result<ClusterKey, KeyError> {
        ClusterKey::parse_at(text, 1)
    }

    /// The key as base64, to print once (`meshage keygen`) and never to log.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.secret.as_ref()))
    }

    /// A short public name of the key (8 hex digits, derived one way from it), so that logs
    /// and the status page can say which key seals without showing it.
    pub fn id(&self) -> String {
        let id = self.derive(ID_LABEL);
        id[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key for one use, derived with HKDF-SHA256.
    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let hk = Hkdf::<Sha256>::new(Some(SALT), self.secret.as_ref());
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        hk.expand(label, out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }
}

impl PartialEq for ClusterKey {
    /// In constant time.
    fn eq(&self, other: &Self) -> bool {
        self.secret.as_ref().ct_eq(other.secret.as_ref()).into()
    }
}

impl Eq for ClusterKey {}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", self.id())
    }
}

/// The cluster secrets a node holds: the first seals, each one is tried to open. The ciphers
/// of every use are derived once, when the keyring is made.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<ClusterKey>,
    gossip: Vec<XChaCha20Poly1305>,
}

impl Keyring {
    /// A keyring of one key.
    pub fn new(key: ClusterKey) -> Keyring {
        Keyring::from_keys(vec![key]).expect("one key is not empty")
    }

    /// A keyring of `keys`, the first sealing. Fails when there is none.
    pub fn from_keys(keys: Vec<ClusterKey>) -> Result<Keyring, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let gossip = keys
            .iter()
            .map(|k| XChaCha20Poly1305::new(k.derive(GOSSIP_LABEL).as_ref().into()))
            .collect();
        Ok(Keyring { keys, gossip })
    }

    /// Reads a keyring file: one base64 key a line, the first sealing; blank lines and lines
    /// starting with `#` are skipped. Errors name the key's position, never its text.
    pub fn parse(text: &str) -> Result<Keyring, KeyError> {
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .enumerate()
            .map(|(i, line)| ClusterKey::parse_at(line, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        Keyring::from_keys(keys)
    }

    /// The keys, the sealing one first.
    pub fn keys(&self) -> &[ClusterKey] {
        &self.keys
    }

    /// The public ids of the keys, the sealing one first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(ClusterKey::id).collect()
    }

    /// The gossip ciphers, the sealing one first.
    pub(crate) fn gossip(&self) -> &[XChaCha20Poly1305] {
        &self.gossip
    }
}

impl PartialEq for Keyring {
    fn eq(&self, other: &Self) -> bool {
        self.keys == other.keys
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Keyring").field(&self.ids()).finish()
    }
}

/// A node's live keyring: every part of the node reads the current one, and a rotation
/// replaces it for all of them at once. Cheap to clone.
#[derive(Clone)]
pub struct Keys {
    current: Arc<ArcSwap<Keyring>>,
}

impl Keys {
    /// Live keys starting with `keyring`.
    pub fn new(keyring: Keyring) -> Keys {
        Keys {
            current: Arc::new(ArcSwap::from_pointee(keyring)),
        }
    }

    /// The keyring now.
    pub fn current(&self) -> Arc<Keyring> {
        self.current.load_full()
    }

    /// Replaces the keyring; returns whether it differed.
    pub fn replace(&self, keyring: Keyring) -> bool {
        if *self.current.load_full() == keyring {
            return false;
        }
        self.current.store(Arc::new(keyring));
        true
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Keys").field(&*self.current()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_reads_back_from_its_base64() {
        let key = ClusterKey::generate();
        let text = key.to_base64();
        assert_eq!(text.len(), 44, "32 bytes are 44 base64 characters");
        assert_eq!(ClusterKey::parse(&text).unwrap(), key);
        assert_eq!(ClusterKey::parse(text.trim_end_matches('=')).unwrap(), key);
        assert_ne!(ClusterKey::generate(), key);
    }

    #[test]
    fn bad_keys_are_named_by_position_not_by_text() {
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let good = ClusterKey::generate().to_base64();
        let text = format!("# keys\n{}\n\n{short}\n", &*good);
        let err = Keyring::parse(&text).unwrap_err();
        assert_eq!(
            err,
            KeyError::Length {
                position: 2,
                len: 16
            }
        );
        assert!(!err.to_string().contains(&short));
        let err = Keyring::parse("not base64!\n").unwrap_err();
        assert_eq!(err, KeyError::NotBase64 { position: 1 });
        assert_eq!(
            Keyring::parse("# only a comment\n").unwrap_err(),
            KeyError::Empty
        );
    }

    #[test]
    fn the_first_key_of_a_file_seals() {
        let (a, b) = (ClusterKey::generate(), ClusterKey::generate());
        let text = format!("{}\n{}\n", &*a.to_base64(), &*b.to_base64());
        let ring = Keyring::parse(&text).unwrap();
        assert_eq!(ring.keys(), [a.clone(), b.clone()]);
        assert_eq!(ring.ids(), [a.id(), b.id()]);
        assert_eq!(ring.gossip().len(), 2);
    }

    #[test]
    fn debug_shows_ids_and_never_the_secret() {
        let key = ClusterKey::generate();
        let shown = format!("{:?} {:?}", key, Keys::new(Keyring::new(key.clone())));
        assert!(shown.contains(&key.id()));
        assert!(!shown.contains(key.to_base64().trim_end_matches('=')));
        assert_eq!(key.id().len(), 8);
        assert_ne!(key.derive(GOSSIP_LABEL), key.derive(ID_LABEL));
    }

    #[test]
    fn replacing_the_keys_is_seen_by_every_clone() {
        let (a, b) = (ClusterKey::generate(), ClusterKey::generate());
        let keys = Keys::new(Keyring::new(a.clone()));
        let other = keys.clone();
        assert!(!keys.replace(Keyring::new(a)));
        assert!(keys.replace(Keyring::new(b.clone())));
        assert_eq!(other.current().keys(), [b]);
    }
}
