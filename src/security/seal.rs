//! Sealed datagrams: XChaCha20-Poly1305 with a random 24-byte nonce per datagram (random
//! nonces are safe for many senders on one key), so that only holders of a cluster key can
//! read a datagram or make one that opens.
//!
//! A sealed datagram is
//!
//! ```text
//! u8 version (0xA1) | u8 fragment (index << 4 | count) | u32 message id (LE) | 24-byte nonce | ciphertext and 16-byte tag
//! ```
//!
//! The first six bytes and the caller's context (which names the use and the cluster) are the
//! associated data, so a datagram sealed for another use, another cluster or another place in
//! its message does not open. A message too large for one datagram travels as up to 15
//! fragments, each sealed on its own.

use chacha20poly1305::aead::{AeadCore, AeadInPlace, OsRng};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The first byte of every sealed datagram.
pub(crate) const VERSION: u8 = 0xA1;
const HEADER: usize = 1 + 1 + 4;
const NONCE: usize = 24;
const TAG: usize = 16;
/// Bytes a sealed datagram adds to what it carries.
pub(crate) const OVERHEAD: usize = HEADER + NONCE + TAG;

/// Where a datagram's plaintext belongs in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fragment {
    /// A random id shared by the fragments of one message.
    pub(crate) message: u32,
    /// 0-based.
    pub(crate) index: u8,
    /// 1 to 15.
    pub(crate) count: u8,
}

/// Why a datagram was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Not a sealed datagram at all: a sender without a key.
    Unsealed,
    /// Sealed, but with no key of ours (or for another cluster, or altered on the way).
    WrongKey,
}

/// Seals `plaintext` as fragment `fragment` with `cipher`, appending the datagram to `out`.
pub(crate) fn seal(
    cipher: &XChaCha20Poly1305,
    context: &[u8],
    fragment: Fragment,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.push(VERSION);
    out.push((fragment.index << 4) | (fragment.count & 0x0f));
    out.extend_from_slice(&fragment.message.to_le_bytes());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    out.extend_from_slice(&nonce);
    let header: [u8; HEADER] = out[start..start + HEADER].try_into().expect("6 bytes");
    let body = start + HEADER + NONCE;
    out.extend_from_slice(plaintext);
    let mut sealed = out.split_off(body);
    cipher
        .encrypt_in_place(&nonce, &associated(context, &header), &mut sealed)
        .expect("a datagram is far below XChaCha20-Poly1305's length limit");
    out.extend_from_slice(&sealed);
}

/// Opens a sealed datagram with the first of `ciphers` that opens it.
pub(crate) fn open(
    ciphers: &[XChaCha20Poly1305],
    context: &[u8],
    datagram: &[u8],
) -> Result<(Fragment, Vec<u8>), Rejected> {
    if datagram.len() < OVERHEAD || datagram[0] != VERSION {
        return Err(Rejected::Unsealed);
    }
    let header: [u8; HEADER] = datagram[..HEADER].try_into().expect("6 bytes");
    let fragment = Fragment {
        index: header[1] >> 4,
        count: header[1] & 0x0f,
        message: u32::from_le_bytes(header[2..6].try_into().expect("4 bytes")),
    };
    let nonce = XNonce::from_slice(&datagram[HEADER..HEADER + NONCE]);
    let ad = associated(context, &header);
    for cipher in ciphers {
        let mut body = datagram[HEADER + NONCE..].to_vec();
        if cipher.decrypt_in_place(nonce, &ad, &mut body).is_ok() {
            if fragment.count == 0 || fragment.index >= fragment.count {
                // Sealed by a key holder, yet malformed: treat as not ours.
                return Err(Rejected::WrongKey);
            }
            return Ok((fragment, body));
        }
    }
    Err(Rejected::WrongKey)
}

fn associated(context: &[u8], header: &[u8; HEADER]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(context.len() + HEADER);
    ad.extend_from_slice(context);
    ad.extend_from_slice(header);
    ad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{ClusterKey, Keyring};

    fn ring() -> Keyring {
        Keyring::new(ClusterKey::generate())
    }

    const ONE: Fragment = Fragment {
        message: 7,
        index: 0,
        count: 1,
    };

    #[test]
    fn what_one_key_seals_it_opens() {
        let keys = ring();
        let mut out = Vec::new();
        seal(&keys.gossip()[0], b"ctx", ONE, b"hello", &mut out);
        assert_eq!(out.len(), 5 + OVERHEAD);
        assert_eq!(
            open(keys.gossip(), b"ctx", &out),
            Ok((ONE, b"hello".to_vec()))
        );
        let mut again = Vec::new();
        seal(&keys.gossip()[0], b"ctx", ONE, b"hello", &mut again);
        assert_ne!(out, again, "each datagram has its own nonce");
    }

    #[test]
    fn another_key_context_or_header_does_not_open() {
        let (keys, other) = (ring(), ring());
        let mut out = Vec::new();
        seal(&keys.gossip()[0], b"ctx", ONE, b"hello", &mut out);
        assert_eq!(open(other.gossip(), b"ctx", &out), Err(Rejected::WrongKey));
        assert_eq!(open(keys.gossip(), b"other", &out), Err(Rejected::WrongKey));
        let mut moved = out.clone();
        moved[1] = (1 << 4) | 2;
        assert_eq!(open(keys.gossip(), b"ctx", &moved), Err(Rejected::WrongKey));
        let mut flipped = out.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(keys.gossip(), b"ctx", &flipped),
            Err(Rejected::WrongKey)
        );
        assert_eq!(
            open(keys.gossip(), b"ctx", b"\x53\xb0 chitchat"),
            Err(Rejected::Unsealed)
        );
        assert_eq!(
            open(keys.gossip(), b"ctx", &out[..OVERHEAD - 1]),
            Err(Rejected::Unsealed)
        );
    }

    #[test]
    fn every_key_of_the_ring_is_tried() {
        let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
        let sender = Keyring::new(old.clone());
        let receiver = Keyring::from_keys(vec![new, old]).unwrap();
        let mut out = Vec::new();
        seal(&sender.gossip()[0], b"c", ONE, b"x", &mut out);
        assert_eq!(open(receiver.gossip(), b"c", &out).unwrap().1, b"x");
    }
}
