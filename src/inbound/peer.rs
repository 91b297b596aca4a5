//! Who is at the other end of a connection, for a node with a cluster key. A peer is a client
//! that came over TLS with a certificate whose fingerprint a member of the cluster published:
//! links and forwards (`X-Meshage-Hop`) are taken from peers only, and refused before anything
//! runs from anyone else. Whatever else arrives on the port is an API client's, over TLS or not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Inbound;
use crate::security::Fingerprint;

/// How long a certificate not yet published in this node's table is looked for again before
/// its connection is taken as no peer's: a node that has just joined may dial a peer a gossip
/// round or two before that peer hears of it.
const PEER_WAIT: Duration = Duration::from_secs(2);
/// How often it is looked for meanwhile.
const PEER_POLL: Duration = Duration::from_millis(20);

/// Where a connection comes from, and what its TLS handshake said of its client.
pub(super) struct Caller {
    /// The client's address, for the logs.
    pub(super) remote: SocketAddr,
    /// The fingerprint of the client's certificate; `None` over plain TCP, or over TLS without
    /// a client certificate.
    fingerprint: Option<Fingerprint>,
    /// Found among the published fingerprints once (or its certificate chains to the
    /// operator's CA): the connection's later requests need not look again.
    confirmed: AtomicBool,
}

impl Caller {
    /// A client over plain TCP.
    pub(super) fn plain(remote: SocketAddr) -> Caller {
        Caller::tls(remote, None, false)
    }

    /// A client over TLS that presented a certificate of this fingerprint, or none;
    /// `by_certificate` when that certificate alone makes it a peer (it chains to the
    /// operator's CA).
    pub(super) fn tls(
        remote: SocketAddr,
        fingerprint: Option<Fingerprint>,
        by_certificate: bool,
    ) -> Caller {
        Caller {
            remote,
            fingerprint,
            confirmed: AtomicBool::new(by_certificate),
        }
    }

    /// Whether the caller is a peer: it came over TLS with a certificate that a member not
    /// known to be dead published. One atomic load once confirmed; a certificate not in the
    /// table is looked for again until [`PEER_WAIT`] has passed.
    pub(super) async fn is_peer(&self, inbound: &Inbound) -> bool {
        if self.confirmed.load(Ordering::Acquire) {
            return true;
        }
        let Some(fingerprint) = &self.fingerprint else {
            return false;
        };
        let until = Instant::now() + PEER_WAIT;
        loop {
            if inbound.router.table().is_peer(fingerprint) {
                if !self.confirmed.swap(true, Ordering::AcqRel) {
                    inbound.router.metrics().peers.authenticated();
                }
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(PEER_POLL).await;
        }
    }
}
