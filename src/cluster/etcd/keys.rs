//! What a node writes under the etcd prefix: the key of each service, the JSON value of every
//! key, and the view that a replica of those keys makes. No calls to etcd: tested without one.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::session::Session;
use crate::cluster::{ClusterView, Member, MemberState, ServiceEntry};
use crate::path::encode_segment;

/// The value of every key: a member key has no `stream` and `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Entry {
    pub(super) node_id: String,
    pub(super) endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<String>,
    /// The fingerprint of the node's peer certificate, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tls: Option<String>,
}

/// The view of a replica of the prefix: one member per node id.
pub(super) fn view_of(kv: &BTreeMap<String, Entry>) -> ClusterView {
    let mut members: BTreeMap<&str, Member> = BTreeMap::new();
    for entry in kv.values() {
        let member = members.entry(&entry.node_id).or_insert_with(|| Member {
            id: entry.node_id.clone(),
            endpoint: entry.endpoint.clone(),
            state: MemberState::Live,
            services: Vec::new(),
            last_heard: None,
            fingerprint: None,
        });
        if member.fingerprint.is_none() {
            member.fingerprint.clone_from(&entry.tls);
        }
        if let (Some(stream), Some(id)) = (&entry.stream, &entry.id) {
            member.services.push(ServiceEntry {
                id: Arc::from(id.as_str()),
                stream: Arc::from(stream.as_str()),
            });
        }
    }
    let members = members
        .into_values()
        .map(|mut m| {
            m.services.sort();
            m
        })
        .collect();
    ClusterView { members }
}

impl Session {
    pub(super) fn service_key(&self, stream: &str, id: &str) -> String {
        let mut key = format!("{}services/", self.root);
        encode_segment(stream, &mut key);
        key.push('/');
        key.push_str(id);
        key
    }

    pub(super) fn entry(&self, service: Option<(&str, &str)>) -> String {
        let entry = Entry {
            node_id: self.local.node_id.clone(),
            endpoint: self.local.endpoint.clone(),
            stream: service.map(|(stream, _)| stream.to_owned()),
            id: service.map(|(_, id)| id.to_owned()),
            tls: self.local.fingerprint.clone(),
        };
        serde_json::to_string(&entry).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, service: Option<(&str, &str)>) -> Entry {
        Entry {
            node_id: node.into(),
            endpoint: format!("http://{node}:80"),
            stream: service.map(|s| s.0.into()),
            id: service.map(|s| s.1.into()),
            tls: None,
        }
    }

    #[test]
    fn the_view_groups_keys_by_node() {
        let kv: BTreeMap<String, Entry> = [
            ("m/a", entry("a", None)),
            ("s/echo/2", entry("a", Some(("echo", "2")))),
            ("s/echo/1", entry("a", Some(("echo", "1")))),
            // A service whose member key is not there yet still names its node.
            ("s/other/3", entry("b", Some(("other", "3")))),
            ("m/c", entry("c", None)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let view = view_of(&kv);
        let ids: Vec<&str> = view.members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let a: Vec<&str> = view.members[0].services.iter().map(|s| &*s.id).collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(view.members[1].endpoint, "http://b:80");
        assert!(view.members[2].services.is_empty());
        assert!(view.members.iter().all(|m| m.state == MemberState::Live));
    }

    #[test]
    fn entries_round_trip_and_member_keys_have_no_service() {
        let json = serde_json::to_string(&entry("a", None)).unwrap();
        assert_eq!(json, r#"{"node_id":"a","endpoint":"http://a:80"}"#);
        let service = entry("a", Some(("echo", "1")));
        let back: Entry = serde_json::from_str(&serde_json::to_string(&service).unwrap()).unwrap();
        assert_eq!(back, service);
    }

    #[test]
    fn a_published_fingerprint_reaches_the_member() {
        let keyed = Entry {
            tls: Some("ab".repeat(32)),
            ..entry("a", None)
        };
        let json = serde_json::to_string(&keyed).unwrap();
        assert!(
            json.contains(&format!(r#""tls":"{}""#, "ab".repeat(32))),
            "{json}"
        );
        let kv: BTreeMap<String, Entry> = [
            ("m/a".to_owned(), keyed),
            ("m/b".to_owned(), entry("b", None)),
        ]
        .into_iter()
        .collect();
        let view = view_of(&kv);
        assert_eq!(view.members[0].fingerprint, Some("ab".repeat(32)));
        assert_eq!(view.members[1].fingerprint, None);
    }
}
