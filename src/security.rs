//! What a mesh with a cluster secret uses to keep others out: the [`Keyring`] (the secret and
//! the keys derived from it, rotated live through [`Keys`]), the sealing of datagrams with
//! one of its keys (`seal`), and mutual TLS between nodes: each node's certificate made at start
//! (`identity`), known to its peers by its [`Fingerprint`], and the rustls configurations that
//! accept exactly the certificates peers published (`pinning`); or, instead, the operator's own
//! PKI ([`OperatorTls`]: the node's certificate and the CA its peers' must chain to, reread
//! when the files change), which also serves the API over HTTPS (`operator`). `peers` hides
//! which of the two a node uses. And what keeps unknown clients
//! out of the HTTP API: the bearer tokens a node accepts ([`ApiTokens`], live and reloaded
//! through [`Tokens`]).
//!
//! One 32-byte secret, shared by every node, is the root of trust. Keys for each use (gossip,
//! and whatever else needs one) are derived from it with HKDF-SHA256, so that no two uses ever
//! share a key. A keyring holds several secrets during a rotation: the first seals, every one
//! is tried to open, as serf and Consul do it.
//!
//! Besides, what the node holds to reach the engines and handlers it depends on: [`Secret`]s
//! (passwords, tokens) that are never shown, and [`ClientTls`], the authorities it verifies
//! their servers against (`trust`).

pub(crate) mod dialer;
mod identity;
mod keyring;
mod operator;
mod peers;
mod pinning;
pub(crate) mod seal;
mod secret;
mod tokens;
pub(crate) mod trust;

pub use identity::Fingerprint;
pub(crate) use identity::Identity;
pub use keyring::{ClusterKey, KeyError, Keyring, Keys};
pub use operator::OperatorTls;
pub(crate) use peers::PeerTls;
pub(crate) use pinning::{client_fingerprint, Alpn};
pub use secret::Secret;
pub(crate) use tokens::Denied;
pub use tokens::{ApiTokens, TokenError, TokenFileError, Tokens, MIN_TOKEN_LEN};
pub use trust::{ClientTls, TlsError};
