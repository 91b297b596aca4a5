//! Learning the cluster from the agent: blocking queries on the catalog find the streams, one
//! watcher per stream follows its passing instances, and every change publishes a new view
//! that always holds this node's own member. Only reads; registering is the registrar's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::agent::{Agent, Answer};
use super::catalog::{go_duration, instances_of, streams_of, Instance};
use super::ConsulConfig;
use crate::cluster::{ClusterView, Member, MemberState, ServiceEntry};
use crate::path::encode_segment;

/// What the watchers know, and this node's own member.
pub(super) struct WatchState {
    pub(super) streams: BTreeMap<String, Vec<Instance>>,
    pub(super) own: Member,
}

impl WatchState {
    pub(super) fn view(&self) -> ClusterView {
        let own_ids: std::collections::HashSet<&str> =
            self.own.services.iter().map(|s| &*s.id).collect();
        let mut members: BTreeMap<&str, Member> = BTreeMap::new();
        for instance in self.streams.values().flatten() {
            if instance.member == self.own.id || own_ids.contains(instance.id.as_str()) {
                continue;
            }
            members
                .entry(&instance.member)
                .or_insert_with(|| Member {
                    id: instance.member.clone(),
                    endpoint: instance.endpoint.clone(),
                    state: MemberState::Live,
                    services: Vec::new(),
                    last_heard: None,
                    fingerprint: instance.fingerprint.clone(),
                })
                .services
                .push(ServiceEntry {
                    id: Arc::from(instance.id.as_str()),
                    stream: Arc::from(instance.stream.as_str()),
                });
        }
        let mut members: Vec<Member> = members
            .into_values()
            .chain(std::iter::once(self.own.clone()))
            .map(|mut m| {
                m.services.sort();
                m
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        ClusterView { members }
    }
}

/// The state and the view it publishes; the view is sent under the lock so that views go out
/// in the order the state changed.
pub(super) struct Shared {
    pub(super) state: Mutex<WatchState>,
    pub(super) view: watch::Sender<Arc<ClusterView>>,
}

impl Shared {
    pub(super) fn update(&self, change: impl FnOnce(&mut WatchState)) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        change(&mut state);
        let view = state.view();
        self.view.send_if_modified(|current| {
            if **current == view {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
    }
}

/// Aborts a task when dropped, so that a watcher's children end with it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows Consul's index rules: a missing or zero index becomes 1 (a zero would make every
/// query return at once), one that went backwards starts over from 0.
fn next_index(previous: u64, answered: Option<u64>) -> u64 {
    match answered {
        Some(0) | None => 1,
        Some(i) if i < previous => 0,
        Some(i) => i,
    }
}

pub(super) struct Watcher {
    pub(super) agent: Agent,
    pub(super) shared: Arc<Shared>,
    pub(super) config: ConsulConfig,
}

impl Watcher {
    fn blocking_timeout(&self) -> Duration {
        // Consul adds up to wait/16 of jitter.
        self.config.wait + self.config.wait / 16 + self.config.request_timeout
    }

    /// Follows the catalog and keeps one watcher per stream.
    pub(super) async fn catalog(self: Arc<Self>, first: Answer) {
        let mut children: HashMap<String, AbortOnDrop> = HashMap::new();
        let mut index = 0;
        let mut answer = Ok(first);
        let mut backoff = Duration::from_millis(50);
        loop {
            match answer {
                Ok(a) => {
                    backoff = Duration::from_millis(50);
                    index = next_index(index, a.index);
                    match streams_of(&a.body) {
                        Ok(streams) => self.follow(&mut children, streams),
                        Err(e) => warn!(error = %e, "the catalog answer does not parse"),
                    }
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?backoff, "reading the Consul catalog failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
            let query = format!(
                "/v1/catalog/services?index={index}&wait={}",
                go_duration(self.config.wait)
            );
            answer = self
                .agent
                .call(Method::GET, &query, None, self.blocking_timeout())
                .await;
        }
    }

    fn follow(self: &Arc<Self>, children: &mut HashMap<String, AbortOnDrop>, streams: Vec<String>) {
        let gone: Vec<String> = children
            .keys()
            .filter(|s| !streams.contains(s))
            .cloned()
            .collect();
        for stream in &gone {
            children.remove(stream);
        }
        if !gone.is_empty() {
            self.shared.update(|state| {
                for stream in &gone {
                    state.streams.remove(stream);
                }
            });
        }
        for stream in streams {
            if let std::collections::hash_map::Entry::Vacant(entry) = children.entry(stream) {
                debug!(stream = %entry.key(), "watching a stream's instances");
                let task = tokio::spawn(self.clone().stream(entry.key().clone()));
                entry.insert(AbortOnDrop(task));
            }
        }
    }

    /// Follows the passing instances of one stream.
    async fn stream(self: Arc<Self>, stream: String) {
        let mut path = String::from("/v1/health/service/");
        encode_segment(&stream, &mut path);
        let mut index = 0;
        let mut backoff = Duration::from_millis(50);
        loop {
            let query = format!(
                "{path}?passing=true&index={index}&wait={}",
                go_duration(self.config.wait)
            );
            let started = Instant::now();
            let result = self
                .agent
                .call(Method::GET, &query, None, self.blocking_timeout())
                .await
                .and_then(|a| instances_of(&a.body).map(|i| (a.index, i)));
            match result {
                Ok((answered, instances)) => {
                    backoff = Duration::from_millis(50);
                    let previous = index;
                    index = next_index(index, answered);
                    self.shared.update(|state| {
                        state.streams.insert(stream.clone(), instances);
                    });
                    // An agent that answers at once without a new index is not blocking: do
                    // not spin on it.
                    if index == previous && started.elapsed() < Duration::from_millis(10) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(e) => {
                    warn!(%stream, error = %e, retry_in = ?backoff, "reading a stream's instances failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_consuls_rules() {
        assert_eq!(next_index(0, Some(7)), 7);
        assert_eq!(next_index(7, Some(3)), 0);
        assert_eq!(next_index(7, Some(0)), 1);
        assert_eq!(next_index(7, None), 1);
    }

    #[test]
    fn the_view_holds_this_node_and_groups_others_by_member() {
        let instance = |id: &str, member: &str| Instance {
            id: id.into(),
            stream: "echo".into(),
            endpoint: format!("http://{member}"),
            member: member.into(),
            fingerprint: None,
        };
        let state = WatchState {
            streams: [(
                "echo".to_owned(),
                vec![
                    instance("s1", "me"),
                    instance("s2", "b"),
                    instance("s3", "b"),
                    instance("s4", "a"),
                ],
            )]
            .into_iter()
            .collect(),
            own: Member {
                id: "me".into(),
                endpoint: "http://me".into(),
                state: MemberState::Live,
                services: vec![ServiceEntry {
                    id: Arc::from("s0"),
                    stream: Arc::from("echo"),
                }],
                last_heard: None,
                fingerprint: None,
            },
        };
        let view = state.view();
        let summary: Vec<(String, usize)> = view
            .members
            .iter()
            .map(|m| (m.id.clone(), m.services.len()))
            .collect();
        assert_eq!(
            summary,
            [("a".into(), 1), ("b".into(), 2), ("me".into(), 1)]
        );
    }
}
