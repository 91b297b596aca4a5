//! The service table: an immutable snapshot of every routable service, with one ring per stream.
//!
//! It is built once per membership change from a [`ClusterView`] and swapped in atomically;
//! requests read the current snapshot without locks. Choosing the owner of a key is a pure
//! function of a table.
//!
//! Pure core: depends only on the ring and on the cluster's view types.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use crate::cluster::{ClusterView, MemberState};
use crate::ring::HashRing;
use crate::security::Fingerprint;
use crate::FastMap;

/// One routable service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceInfo {
    pub id: Arc<str>,
    pub stream: Arc<str>,
    /// The node that runs it.
    pub node_id: Arc<str>,
    /// `http://host:port` of that node.
    pub endpoint: Arc<str>,
    /// The fingerprint of the certificate that node's peer connections present, when it
    /// published one: a keyed node forwards to it over TLS accepting exactly that certificate.
    #[serde(skip)]
    pub fingerprint: Option<Fingerprint>,
}

/// The services of one stream and their ring.
#[derive(Debug, Clone, Default)]
pub struct StreamServices {
    /// Indexes into [`ServiceTable::services`], in the ring's server order.
    pub services: Vec<usize>,
    pub ring: HashRing,
    /// A checksum of the ring's services (the first 8 bytes of the MD5 of their sorted ids,
    /// each followed by a newline), never 0: two nodes whose checksums agree place every key
    /// of the stream alike.
    pub checksum: u64,
}

/// An immutable snapshot of the routable services.
#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    /// Increases with every membership change this node has applied.
    pub version: u64,
    /// Every routable service, sorted by stream then id.
    pub services: Vec<ServiceInfo>,
    by_id: FastMap<Arc<str>, usize>,
    streams: FastMap<Arc<str>, StreamServices>,
    /// The certificate fingerprints published by members not known to be dead (leaving ones
    /// still finish their forwards): the peers a keyed node takes links and forwards from.
    peers: Vec<Fingerprint>,
    /// The services of members that are leaving: off the rings, but still reachable by id while
    /// their node drains (a new owner takes a key's state from them), sorted by id.
    draining: Vec<ServiceInfo>,
}

impl ServiceTable {
    /// Builds the table of the live members' services.
    pub fn build(version: u64, view: &ClusterView) -> ServiceTable {
        let services_in = |state: MemberState| {
            view.members
                .iter()
                .filter(move |m| m.state == state)
                .flat_map(|m| {
                    let node_id: Arc<str> = Arc::from(m.id.as_str());
                    let endpoint: Arc<str> = Arc::from(m.endpoint.as_str());
                    let fingerprint = m.fingerprint.as_deref().and_then(Fingerprint::from_hex);
                    m.services.iter().map(move |s| ServiceInfo {
                        id: s.id.clone(),
                        stream: s.stream.clone(),
                        node_id: node_id.clone(),
                        endpoint: endpoint.clone(),
                        fingerprint,
                    })
                })
        };
        let mut services: Vec<ServiceInfo> = services_in(MemberState::Live).collect();
        services.sort_by(|a, b| (&a.stream, &a.id).cmp(&(&b.stream, &b.id)));
        services.dedup_by(|a, b| a.id == b.id);
        let mut draining: Vec<ServiceInfo> = services_in(MemberState::Leaving).collect();
        draining.sort_by(|a, b| a.id.cmp(&b.id));
        draining.dedup_by(|a, b| a.id == b.id);

        let by_id = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let mut grouped: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            grouped.entry(s.stream.clone()).or_default().push(i);
        }
        let streams = grouped
            .into_iter()
            .map(|(stream, indexes)| {
                let ring = HashRing::new(indexes.iter().map(|&i| &*services[i].id));
                let checksum = ring_checksum(indexes.iter().map(|&i| &*services[i].id));
                (
                    stream,
                    StreamServices {
                        services: indexes,
                        ring,
                        checksum,
                    },
                )
            })
            .collect();
        let peers = view
            .members
            .iter()
            .filter(|m| m.state != MemberState::Dead)
            .filter_map(|m| m.fingerprint.as_deref().and_then(Fingerprint::from_hex))
            .collect();
        ServiceTable {
            version,
            services,
            by_id,
            streams,
            peers,
            draining,
        }
    }

    /// Whether `fingerprint` is the certificate of a member not known to be dead. Compares with
    /// every published fingerprint in constant time.
    pub fn is_peer(&self, fingerprint: &Fingerprint) -> bool {
        self.peers
            .iter()
            .fold(false, |found, peer| (peer == fingerprint) | found)
    }

    /// The service that owns `key` on `stream`, or `None` when the stream has no service.
    pub fn owner(&self, stream: &str, key: &str) -> Option<&ServiceInfo> {
        self.owner_place(stream, key)
            .map(|place| &self.services[place])
    }

    /// [`ServiceTable::owner`] of a key by its [`HashRing::hash`]: a key hashed once and looked
    /// up in several tables.
    pub(crate) fn owner_of_hash(&self, stream: &str, hash: u32) -> Option<&ServiceInfo> {
        self.owner_place_of_hash(stream, hash)
            .map(|place| &self.services[place])
    }

    /// [`ServiceTable::owner_place`] of a key by its [`HashRing::hash`].
    pub(crate) fn owner_place_of_hash(&self, stream: &str, hash: u32) -> Option<usize> {
        let entry = self.streams.get(stream)?;
        let index = entry.ring.get_index_of_hash(hash)?;
        Some(entry.services[index])
    }

    /// Where the owner of `key` sits in [`ServiceTable::services`].
    pub fn owner_place(&self, stream: &str, key: &str) -> Option<usize> {
        let entry = self.streams.get(stream)?;
        let index = entry.ring.get_index(key)?;
        Some(entry.services[index])
    }

    /// The services of `stream` with their ring.
    pub fn stream(&self, stream: &str) -> Option<&StreamServices> {
        self.streams.get(stream)
    }

    /// Every service of `stream`.
    pub fn services_of<'a>(&'a self, stream: &str) -> impl Iterator<Item = &'a ServiceInfo> + 'a {
        let indexes: &[usize] = self
            .streams
            .get(stream)
            .map(|s| &s.services[..])
            .unwrap_or(&[]);
        indexes.iter().map(move |&i| &self.services[i])
    }

    /// The service with this id.
    pub fn service(&self, id: &str) -> Option<&ServiceInfo> {
        self.by_id.get(id).map(|&i| &self.services[i])
    }

    /// The service with this id on a member that is leaving: off the rings, but its node still
    /// answers requests addressed to it while it drains.
    pub fn draining(&self, id: &str) -> Option<&ServiceInfo> {
        self.draining
            .binary_search_by(|s| (*s.id).cmp(id))
            .ok()
            .map(|i| &self.draining[i])
    }

    /// Names of the streams with at least one service.
    pub fn streams(&self) -> impl Iterator<Item = &str> {
        self.streams.keys().map(|s| &**s)
    }
}

/// The checksum of a ring of the services `ids`, in sorted order (see
/// [`StreamServices::checksum`]).
fn ring_checksum<'a>(ids: impl Iterator<Item = &'a str>) -> u64 {
    use md5::{Digest, Md5};
    let mut hash = Md5::new();
    for id in ids {
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    let digest = hash.finalize();
    let sum = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
    sum.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Member, ServiceEntry};

    fn member(id: &str, state: MemberState, services: &[(&str, &str)]) -> Member {
        Member {
            id: id.into(),
            endpoint: format!("http://{id}:80"),
            state,
            services: services
                .iter()
                .map(|(sid, stream)| ServiceEntry {
                    id: Arc::from(*sid),
                    stream: Arc::from(*stream),
                })
                .collect(),
            last_heard: None,
            fingerprint: None,
        }
    }

    #[test]
    fn only_live_members_are_routable() {
        let view = ClusterView {
            members: vec![
                member("a", MemberState::Live, &[("s1", "echo"), ("s2", "other")]),
                member("b", MemberState::Leaving, &[("s3", "echo")]),
                member("c", MemberState::Dead, &[("s4", "echo")]),
                member("d", MemberState::Live, &[("s5", "echo")]),
            ],
        };
        let table = ServiceTable::build(1, &view);
        let ids: Vec<&str> = table.services_of("echo").map(|s| &*s.id).collect();
        assert_eq!(ids, ["s1", "s5"]);
        assert!(table.service("s3").is_none());
        assert_eq!(
            table.draining("s3").map(|s| &*s.node_id),
            Some("b"),
            "a leaving member's service is still reachable by id"
        );
        assert!(table.draining("s4").is_none(), "a dead one's is not");
        assert!(table.draining("s1").is_none());
        assert_eq!(&*table.service("s5").unwrap().endpoint, "http://d:80");
        assert!(table.owner("missing", "k").is_none());
    }

    #[test]
    fn owner_is_the_rings_choice() {
        let view = ClusterView {
            members: vec![
                member("a", MemberState::Live, &[("s1", "echo")]),
                member("b", MemberState::Live, &[("s2", "echo")]),
                member("c", MemberState::Live, &[("s3", "echo")]),
            ],
        };
        let table = ServiceTable::build(1, &view);
        let ring = HashRing::new(["s1", "s2", "s3"]);
        let mut owners = std::collections::HashSet::new();
        for i in 0..300 {
            let key = format!("key-{i}");
            let owner = table.owner("echo", &key).unwrap();
            assert_eq!(Some(&*owner.id), ring.get(&key));
            owners.insert(owner.id.clone());
        }
        assert_eq!(
            owners.len(),
            3,
            "300 keys should spread over all three services"
        );
    }

    #[test]
    fn published_fingerprints_reach_services_and_peers_but_not_from_the_dead() {
        let print = |n: u8| format!("{n:02x}").repeat(32);
        let mut a = member("a", MemberState::Live, &[("s1", "echo")]);
        a.fingerprint = Some(print(1));
        let mut b = member("b", MemberState::Leaving, &[("s2", "echo")]);
        b.fingerprint = Some(print(2));
        let mut c = member("c", MemberState::Dead, &[]);
        c.fingerprint = Some(print(3));
        let mut d = member("d", MemberState::Live, &[("s4", "echo")]);
        d.fingerprint = Some("not hex".into());
        let table = ServiceTable::build(
            1,
            &ClusterView {
                members: vec![a, b, c, d],
            },
        );
        let fingerprint = |n: u8| Fingerprint::from_hex(&print(n)).unwrap();
        assert_eq!(
            table.service("s1").unwrap().fingerprint,
            Some(fingerprint(1))
        );
        assert_eq!(table.service("s4").unwrap().fingerprint, None);
        assert!(table.is_peer(&fingerprint(1)));
        assert!(
            table.is_peer(&fingerprint(2)),
            "a leaving member finishes its forwards"
        );
        assert!(!table.is_peer(&fingerprint(3)), "a dead one is no peer");
        assert!(!table.is_peer(&fingerprint(4)));
    }
}
