//! What a mesh with a cluster secret uses to keep others out: the [`Keyring`] (the secret and
//! the keys derived from it, rotated live through [`Keys`]), the sealing of datagrams with
//! one of its keys (`seal`), and mutual TLS between nodes: each node's certificate made at start
//! (`identity`), known to its peers by its [`Fingerprint`], and the rustls configurations that
//! accept exactly the certificates peers published (`pinning`).
//!
//! One 32-byte secret, shared by every node, is the root of trust. Keys for each use (gossip,
//! and whatever else needs one) are derived from it with HKDF-SHA256, so that no two uses ever
//! share a key. A keyring holds several secrets during a rotation: the first seals, every one
//! is tried to open, as serf and Consul do it.

mod identity;
mod keyring;
mod pinning;
// Used by sealed gossip, which lands next.
#[allow(dead_code)]
pub(crate) mod seal;

pub use identity::Fingerprint;
pub(crate) use identity::Identity;
pub use keyring::{ClusterKey, KeyError, Keyring, Keys};
pub(crate) use pinning::{client_fingerprint, Alpn, PeerTls};
