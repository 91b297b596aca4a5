//! Sealed gossip: with a cluster key, every datagram chitchat sends leaves sealed with the
//! keyring's first key, and a datagram that no key of the keyring opens is dropped before
//! chitchat reads it, counted, and logged at most once a minute per source address.
//!
//! chitchat 0.13 keeps its wire codec to itself (`ChitchatEnvelope::serialize` is
//! crate-private), so a transport of ours gets typed envelopes, never bytes. This one reaches
//! the codec through chitchat's own public UDP socket on loopback (a trampoline): to encode,
//! that socket sends the envelope to a plain socket of ours; to decode, a plain socket of ours
//! sends the opened bytes to it and its `recv` gives the envelope back. Each plain socket is
//! connected to its chitchat socket, and decoded envelopes are taken only from our own
//! socket, so nothing else on the machine can use the trampoline to get bytes sealed or
//! opened. The cost is two loopback datagrams per gossip datagram, a few a second per peer.
//! Keeping chitchat (rather than moving membership to a byte-level SWIM crate) keeps the
//! membership behaviour every other test and benchmark of this project measures.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::ChitchatEnvelope;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::TrafficCounters;
use crate::security::seal::{self, Fragment, Rejected};
use crate::security::Keys;

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// How long chitchat's codec may take to answer on loopback.
const CODEC_TIMEOUT: Duration = Duration::from_secs(1);
/// Messages in reassembly at once, and how long their fragments wait for the rest.
const MAX_PARTIAL: usize = 32;
const PARTIAL_TTL: Duration = Duration::from_secs(2);
/// chitchat never makes a message larger than one datagram, so two sealed fragments hold it.
const MAX_PARTS: u8 = 2;
/// Sources remembered for rate-limiting the log of rejected datagrams, and the rate.
const MAX_LOGGED_SOURCES: usize = 4096;
const LOG_EVERY: Duration = Duration::from_secs(60);

/// chitchat's UDP transport with every datagram sealed by the cluster's keys.
pub(super) struct SealedTransport {
    keys: Keys,
    context: Arc<[u8]>,
    counters: Arc<TrafficCounters>,
}

impl SealedTransport {
    pub(super) fn new(keys: Keys, cluster_id: &str, counters: Arc<TrafficCounters>) -> Self {
        let mut context = b"meshage-gossip\0".to_vec();
        context.extend_from_slice(cluster_id.as_bytes());
        SealedTransport {
            keys,
            context: context.into(),
            counters,
        }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let net = Arc::new(
            tokio::net::UdpSocket::bind(listen_addr)
                .await
                .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?,
        );
        let (tx, rx) = mpsc::channel(64);
        let receiver = tokio::spawn(receive(
            net.clone(),
            Codec::open().await?,
            self.keys.clone(),
            self.context.clone(),
            self.counters.clone(),
            tx,
        ));
        Ok(Box::new(SealedSocket {
            net,
            encoder: Codec::open().await?,
            received: rx,
            receiver,
            keys: self.keys.clone(),
            context: self.context.clone(),
            counters: self.counters.clone(),
            out: Vec::with_capacity(MAX_DATAGRAM),
        }))
    }
}

struct SealedSocket {
    net: Arc<tokio::net::UdpSocket>,
    encoder: Codec,
    /// Envelopes that opened and decoded, from the receiving task: a channel, so that
    /// `recv` stays cancel-safe as chitchat needs.
    received: mpsc::Receiver<RecvOutcome>,
    receiver: JoinHandle<()>,
    keys: Keys,
    context: Arc<[u8]>,
    counters: Arc<TrafficCounters>,
    out: Vec<u8>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.net
            .local_addr()
            .context("failed to get UDP socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let plain = self.encoder.encode(envelope).await?;
        let keyring = self.keys.current();
        let cipher = &keyring.gossip()[0];
        let chunk = MAX_DATAGRAM - seal::OVERHEAD;
        let count = plain.len().div_ceil(chunk).max(1);
        let message = OsRng.next_u32();
        let mut num_bytes_sent = 0;
        for (index, part) in plain.chunks(chunk).enumerate() {
            self.out.clear();
            let fragment = Fragment {
                message,
                index: index as u8,
                count: count as u8,
            };
            seal::seal(cipher, &self.context, fragment, part, &mut self.out);
            num_bytes_sent += self
                .net
                .send_to(&self.out, to)
                .await
                .context("failed to send chitchat message to peer")?;
        }
        self.counters
            .sent
            .fetch_add(num_bytes_sent as u64, Ordering::Relaxed);
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.received
            .recv()
            .await
            .context("the sealed gossip receiver stopped")
    }
}

/// Reads the network socket: opens, reassembles and decodes each datagram, and hands the
/// envelope to the socket with its real source. Ends when the socket is dropped or broken.
async fn receive(
    net: Arc<tokio::net::UdpSocket>,
    mut decoder: Codec,
    keys: Keys,
    context: Arc<[u8]>,
    counters: Arc<TrafficCounters>,
    to_socket: mpsc::Sender<RecvOutcome>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut partial = Reassembly::default();
    let mut rejects = RejectLog::default();
    loop {
        let (len, from) = match net.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) if transient(&e) => continue,
            Err(e) => {
                warn!(error = %e, "gossip socket broken; sealed gossip stops receiving");
                return;
            }
        };
        counters.received.fetch_add(len as u64, Ordering::Relaxed);
        let opened = seal::open(keys.current().gossip(), &context, &buf[..len]);
        let (fragment, plain) = match opened {
            Ok(opened) => opened,
            Err(why) => {
                counters.rejected.fetch_add(1, Ordering::Relaxed);
                rejects.note(from.ip(), why, Instant::now());
                continue;
            }
        };
        let Some(message) = partial.add(from, fragment, plain, Instant::now()) else {
            continue;
        };
        match decoder.decode(&message).await {
            Ok(Some(envelope)) => {
                let outcome = RecvOutcome {
                    from_addr: from,
                    envelope,
                    num_bytes_received: len,
                };
                if to_socket.send(outcome).await.is_err() {
                    return;
                }
            }
            Ok(None) => debug!(%from, "chitchat did not read a sealed gossip message"),
            Err(e) => {
                warn!(error = %e, "gossip decoder broken; sealed gossip stops receiving");
                return;
            }
        }
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::OutOfMemory
    )
}

/// chitchat's codec, reached through its UDP socket on loopback and a plain socket of ours
/// connected to it.
struct Codec {
    chitchat: UdpSocket,
    plain: tokio::net::UdpSocket,
    own: SocketAddr,
    buf: Vec<u8>,
}

impl Codec {
    async fn open() -> anyhow::Result<Codec> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let chitchat = UdpSocket::open(loopback).await?;
        let plain = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("failed to bind the gossip codec's loopback socket")?;
        plain
            .connect(chitchat.local_addr()?)
            .await
            .context("failed to connect the gossip codec's loopback socket")?;
        let own = plain.local_addr()?;
        Ok(Codec {
            chitchat,
            plain,
            own,
            buf: vec![0u8; MAX_DATAGRAM + 1],
        })
    }

    /// The bytes chitchat sends for `envelope`.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<&[u8]> {
        self.chitchat.send(self.own, envelope).await?;
        let len = tokio::time::timeout(CODEC_TIMEOUT, self.plain.recv(&mut self.buf))
            .await
            .context("chitchat's encoder did not answer on loopback")?
            .context("the gossip codec's loopback socket failed")?;
        Ok(&self.buf[..len])
    }

    /// The envelope chitchat reads from `message`, or `None` when it reads none (chitchat
    /// logs why).
    async fn decode(&mut self, message: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        self.plain
            .send(message)
            .await
            .context("the gossip codec's loopback socket failed")?;
        let deadline = tokio::time::Instant::now() + CODEC_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.chitchat.recv()).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(outcome)) if outcome.from_addr == self.own => {
                    return Ok(Some(outcome.envelope))
                }
                // Not from our own socket: not ours to decode.
                Ok(Ok(_)) => continue,
            }
        }
    }
}

/// Fragments of messages too large for one sealed datagram, until the rest arrives. Only
/// datagrams that opened reach it, so only key holders can fill it, and it is bounded anyway.
#[derive(Default)]
struct Reassembly {
    partial: HashMap<(SocketAddr, u32), Partial>,
}

struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    started: Instant,
}

impl Reassembly {
    /// Adds a fragment; returns the whole message once every fragment of it arrived.
    fn add(
        &mut self,
        from: SocketAddr,
        fragment: Fragment,
        data: Vec<u8>,
        now: Instant,
    ) -> Option<Vec<u8>> {
        if fragment.count == 1 {
            return Some(data);
        }
        if fragment.count > MAX_PARTS {
            return None;
        }
        self.partial
            .retain(|_, p| now.duration_since(p.started) < PARTIAL_TTL);
        let key = (from, fragment.message);
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_PARTIAL {
            return None;
        }
        let entry = self.partial.entry(key).or_insert_with(|| Partial {
            parts: vec![None; fragment.count as usize],
            started: now,
        });
        if entry.parts.len() != fragment.count as usize {
            self.partial.remove(&key);
            return None;
        }
        entry.parts[fragment.index as usize] = Some(data);
        if entry.parts.iter().any(Option::is_none) {
            return None;
        }
        let parts = self.partial.remove(&key)?.parts;
        Some(parts.into_iter().flatten().flatten().collect())
    }
}

/// When each source's rejected datagrams were last logged: at most once a minute each, over a
/// bounded number of sources.
#[derive(Default)]
struct RejectLog {
    logged: HashMap<IpAddr, Instant>,
}

impl RejectLog {
    /// Logs a rejected datagram from `from` unless its source was logged within the minute;
    /// returns whether it logged.
    fn note(&mut self, from: IpAddr, why: Rejected, now: Instant) -> bool {
        if let Some(at) = self.logged.get(&from) {
            if now.duration_since(*at) < LOG_EVERY {
                return false;
            }
        }
        if self.logged.len() >= MAX_LOGGED_SOURCES {
            self.logged
                .retain(|_, at| now.duration_since(*at) < LOG_EVERY);
            if self.logged.len() >= MAX_LOGGED_SOURCES {
                return false;
            }
        }
        self.logged.insert(from, now);
        let reason = match why {
            Rejected::Unsealed => "not sealed: a node without the cluster key",
            Rejected::WrongKey => {
                "sealed with a key this node does not hold, or for another cluster"
            }
        };
        warn!(%from, reason, "dropped gossip that no key of the keyring opens (logged at most once a minute per source)");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn frag(message: u32, index: u8, count: u8) -> Fragment {
        Fragment {
            message,
            index,
            count,
        }
    }

    #[test]
    fn fragments_come_together_in_any_order() {
        let mut r = Reassembly::default();
        let now = Instant::now();
        assert_eq!(
            r.add(at(1), frag(1, 0, 1), b"whole".to_vec(), now),
            Some(b"whole".to_vec())
        );
        assert_eq!(r.add(at(1), frag(2, 1, 2), b"def".to_vec(), now), None);
        assert_eq!(
            r.add(at(2), frag(2, 0, 2), b"xyz".to_vec(), now),
            None,
            "another source"
        );
        assert_eq!(
            r.add(at(1), frag(2, 0, 2), b"abc".to_vec(), now),
            Some(b"abcdef".to_vec())
        );
        assert_eq!(r.partial.len(), 1);
    }

    #[test]
    fn reassembly_is_bounded_in_count_time_and_size() {
        let mut r = Reassembly::default();
        let now = Instant::now();
        for m in 0..MAX_PARTIAL as u32 + 10 {
            r.add(at(1), frag(m, 0, 2), vec![0; 10], now);
        }
        assert_eq!(r.partial.len(), MAX_PARTIAL);
        assert_eq!(
            r.add(at(1), frag(0, 1, 2), vec![1; 10], now)
                .map(|m| m.len()),
            Some(20)
        );
        assert_eq!(
            r.add(at(1), frag(99, 0, 3), vec![0; 10], now),
            None,
            "more parts than a message needs"
        );
        let later = now + PARTIAL_TTL;
        assert_eq!(r.add(at(1), frag(500, 0, 2), vec![0; 10], later), None);
        assert_eq!(r.partial.len(), 1, "expired fragments are let go");
    }

    #[test]
    fn rejects_are_logged_once_a_minute_per_source() {
        let mut log = RejectLog::default();
        let now = Instant::now();
        let ip = at(1).ip();
        assert!(log.note(ip, Rejected::Unsealed, now));
        assert!(!log.note(ip, Rejected::WrongKey, now + Duration::from_secs(59)));
        assert!(log.note(ip, Rejected::WrongKey, now + LOG_EVERY));
        for i in 0..MAX_LOGGED_SOURCES as u32 {
            log.note(
                IpAddr::from(i.to_be_bytes()),
                Rejected::Unsealed,
                now + LOG_EVERY,
            );
        }
        assert!(log.logged.len() <= MAX_LOGGED_SOURCES);
    }
}
