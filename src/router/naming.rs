//! Stable service ids: a node started with a name derives each service id from the name, the
//! stream and the registration's index among that stream's registrations on the node, so that
//! a restarted node takes the same places on the rings, and owns the same keys, as before.
//!
//! The id is a UUID (the format the original's ids have), version 8: the first 16 bytes of
//! SHA-256 over a fixed `meshage service id` prefix, the name, the stream and the index, with
//! the version and variant bits set. Pure; also the check that no other live node advertises
//! one of the ids (the same name twice).

use sha2::{Digest, Sha256};

use crate::cluster::{ClusterView, MemberState};

/// Separates the hash of service ids from any other SHA-256 of the same strings.
const DOMAIN: &[u8] = b"meshage service id v1";

/// The id of registration `index` (0 for the first) on `stream` of the node named `name`.
pub(crate) fn service_id(name: &str, stream: &str, index: usize) -> String {
    let mut hash = Sha256::new();
    // Each part with its length first, so that ("ab", "c") and ("a", "bc") differ.
    for part in [DOMAIN, name.as_bytes(), stream.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update((index as u64).to_be_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes).to_string()
}

/// Another live node that advertises one of `ids`: its id and endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) node: String,
    pub(crate) endpoint: String,
}

/// The first live member of `view` other than `node_id` that advertises one of `ids`. A member
/// at `endpoint` (this node's own) is an earlier run of this node on the same address, which
/// cannot be running any more: its ids are this node's to take.
pub(crate) fn holder(
    view: &ClusterView,
    node_id: &str,
    endpoint: &str,
    ids: &[String],
) -> Option<Holder> {
    view.members
        .iter()
        .filter(|m| m.state == MemberState::Live && m.id != node_id && m.endpoint != endpoint)
        .find(|m| {
            m.services
                .iter()
                .any(|s| ids.iter().any(|id| **id == *s.id))
        })
        .map(|m| Holder {
            node: m.id.clone(),
            endpoint: m.endpoint.clone(),
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::{Member, ServiceEntry};

    #[test]
    fn ids_are_stable_uuids_that_differ_by_name_stream_and_index() {
        let id = service_id("pod-0", "echo", 0);
        assert_eq!(id, service_id("pod-0", "echo", 0));
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
        assert_eq!(
            parsed.to_string(),
            id,
            "lower-case hyphenated, as v4 ids are"
        );
        let others = [
            service_id("pod-1", "echo", 0),
            service_id("pod-0", "echo2", 0),
            service_id("pod-0", "echo", 1),
            service_id("pod-0e", "cho", 0),
        ];
        for other in others {
            assert_ne!(id, other);
        }
    }

    fn member(id: &str, endpoint: &str, state: MemberState, services: &[&str]) -> Member {
        Member {
            id: id.into(),
            endpoint: endpoint.into(),
            state,
            services: services
                .iter()
                .map(|s| ServiceEntry {
                    id: Arc::from(*s),
                    stream: Arc::from("echo"),
                })
                .collect(),
            last_heard: None,
            fingerprint: None,
        }
    }

    #[test]
    fn only_another_live_node_elsewhere_holds_an_id() {
        let ids = vec!["a".to_owned(), "b".to_owned()];
        let view = |members| ClusterView { members };
        let me = "http://127.0.0.1:1";
        assert_eq!(holder(&view(vec![]), "n0", me, &ids), None);
        let cases = [
            (member("n0", "http://x:2", MemberState::Live, &["a"]), None),
            (member("n1", me, MemberState::Live, &["a"]), None),
            (member("n1", "http://x:2", MemberState::Dead, &["a"]), None),
            (
                member("n1", "http://x:2", MemberState::Leaving, &["b"]),
                None,
            ),
            (member("n1", "http://x:2", MemberState::Live, &["c"]), None),
            (
                member("n1", "http://x:2", MemberState::Live, &["c", "b"]),
                Some(Holder {
                    node: "n1".into(),
                    endpoint: "http://x:2".into(),
                }),
            ),
        ];
        for (m, expected) in cases {
            assert_eq!(
                holder(&view(vec![m.clone()]), "n0", me, &ids),
                expected,
                "{m:?}"
            );
        }
    }
}
