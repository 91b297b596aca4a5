//! The conformance suite of the [`Cluster`] trait: what every membership backend must do,
//! written once and run against each backend through a [`Backend`] factory and the
//! [`conformance_tests!`] macro: the gossip backend in `tests/it/conformance.rs`, etcd in
//! `tests/etcd/main.rs`, Consul in `tests/consul/main.rs`.
//!
//! Members join with a real HTTP endpoint of their own ([`HealthServer`]) answering
//! `/api/health`, because some backends (Consul) only list services whose health check passes.
//! A crash is `Membership::abort` plus that endpoint going silent.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshage::{
    Cluster, ClusterView, HashRing, LocalNode, MemberState, Membership, Message, ServiceEntry,
};
use serde_json::json;
use tokio::task::{JoinHandle, JoinSet};

use crate::common::{echo_by, wait_until, wait_until_async, Http};

/// Makes clusters of the backend under test.
pub trait Backend: Send + Sync {
    /// A cluster to join. `seeds` are the seed addresses of the members joined so far (gossip
    /// joins through them; engines ignore them).
    fn cluster(&self, seeds: &[String]) -> Box<dyn Cluster>;
    /// How long the backend may take to notice that a member crashed.
    fn failure_deadline(&self) -> Duration;
}

/// How long members may take to see a change they are told about (not a crash).
const CONVERGE: Duration = Duration::from_secs(10);
/// How long a graceful leave may take to reach the others.
const LEAVE: Duration = Duration::from_secs(3);

/// A stand-in for a node's HTTP API that answers every request `200 {"status":"up"}`.
pub struct HealthServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HealthServer {
    /// Serves on `addr` (`127.0.0.1:0` for any port). Rebinding a port that was just let go
    /// is retried for a while.
    pub async fn start(addr: &str) -> HealthServer {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Connections live in the set, so that stopping the server silences them too.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections.spawn(async move {
                    let service = service_fn(|_request| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            br#"{"status":"up"}"#,
                        ))))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        HealthServer { addr, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One joined member of the suite.
pub struct TestMember {
    pub membership: Arc<dyn Membership>,
    pub id: String,
    pub endpoint: String,
    health: Option<HealthServer>,
    crashed: bool,
}

impl TestMember {
    pub fn view(&self) -> Arc<ClusterView> {
        self.membership.view().borrow().clone()
    }

    /// Stops at once without telling anyone; its endpoint goes silent.
    pub fn crash(&mut self) {
        self.membership.abort();
        self.health = None;
        self.crashed = true;
    }
}

/// Joins one member at `addr` through `backend`.
pub async fn join_member(backend: &dyn Backend, seeds: &[String], addr: &str) -> TestMember {
    let health = HealthServer::start(addr).await;
    let endpoint = health.endpoint();
    let id = uuid::Uuid::new_v4().to_string();
    let membership = backend
        .cluster(seeds)
        .join(LocalNode::new(id.clone(), endpoint.clone()))
        .await
        .expect("the member joins");
    TestMember {
        membership,
        id,
        endpoint,
        health: Some(health),
        crashed: false,
    }
}

/// The routable services of `stream` in `view`: (service id, member id, endpoint).
pub fn routable(view: &ClusterView, stream: &str) -> BTreeSet<(String, String, String)> {
    view.members
        .iter()
        .filter(|m| m.state == MemberState::Live)
        .flat_map(|m| {
            m.services
                .iter()
                .filter(|s| &*s.stream == stream)
                .map(|s| (s.id.to_string(), m.id.clone(), m.endpoint.clone()))
        })
        .collect()
}

/// A few members of one backend, on a stream of their own (tests may share an engine).
pub struct Suite<'a> {
    backend: &'a dyn Backend,
    pub members: Vec<TestMember>,
    pub stream: String,
}

impl<'a> Suite<'a> {
    pub fn new(backend: &'a dyn Backend) -> Self {
        Suite {
            backend,
            members: Vec::new(),
            stream: format!("conf-{}", &uuid::Uuid::new_v4().to_string()[..8]),
        }
    }

    pub fn seeds(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| !m.crashed)
            .filter_map(|m| m.membership.seed_address())
            .collect()
    }

    /// Joins a member on a new port; its index.
    pub async fn join(&mut self) -> usize {
        self.join_at("127.0.0.1:0").await
    }

    pub async fn join_at(&mut self, addr: &str) -> usize {
        let member = join_member(self.backend, &self.seeds(), addr).await;
        self.members.push(member);
        self.members.len() - 1
    }

    /// A new service on the suite's stream.
    pub fn service(&self) -> ServiceEntry {
        ServiceEntry {
            id: Arc::from(uuid::Uuid::new_v4().to_string()),
            stream: Arc::from(self.stream.as_str()),
        }
    }

    /// What member `i` routes to on the suite's stream.
    pub fn routable(&self, i: usize) -> BTreeSet<(String, String, String)> {
        routable(&self.members[i].view(), &self.stream)
    }

    /// Waits until every member in `who` routes to exactly `expected`.
    pub async fn wait_routable(
        &self,
        who: &[usize],
        expected: &BTreeSet<(String, String, String)>,
        within: Duration,
        what: &str,
    ) {
        wait_until(within, what, || {
            who.iter().all(|&i| self.routable(i) == *expected)
        })
        .await;
    }

    /// Leaves and shuts down every member that did not crash.
    pub async fn finish(self) {
        for member in self.members.iter().filter(|m| !m.crashed) {
            member.membership.leave().await.expect("leave");
            member.membership.shutdown().await.expect("shutdown");
        }
    }
}

fn row(service: &ServiceEntry, member: &TestMember) -> (String, String, String) {
    (
        service.id.to_string(),
        member.id.clone(),
        member.endpoint.clone(),
    )
}

/// Members that join and advertise see every member's services, under the right member and
/// endpoint, and each sees itself as live.
pub async fn members_see_each_others_services(backend: &dyn Backend) {
    let mut suite = Suite::new(backend);
    let mut expected = BTreeSet::new();
    for _ in 0..3 {
        let i = suite.join().await;
        let service = suite.service();
        suite.members[i]
            .membership
            .advertise(std::slice::from_ref(&service))
            .await
            .expect("advertise");
        expected.insert(row(&service, &suite.members[i]));
    }
    suite
        .wait_routable(
            &[0, 1, 2],
            &expected,
            CONVERGE,
            "every member routes to the 3 services",
        )
        .await;
    for member in &suite.members {
        let view = member.view();
        assert!(
            view.members.iter().any(|m| m.id == member.id
                && m.endpoint == member.endpoint
                && m.state == MemberState::Live),
            "the view includes the member itself: {view:?}"
        );
    }
    suite.finish().await;
}

/// Advertising a smaller set withdraws the rest, an empty set withdraws everything, and a
/// withdrawn member can advertise again.
pub async fn withdrawn_services_disappear(backend: &dyn Backend) {
    let mut suite = Suite::new(backend);
    let a = suite.join().await;
    let b = suite.join().await;
    let (s1, s2, s3) = (suite.service(), suite.service(), suite.service());
    let advertise = |services: Vec<ServiceEntry>| {
        let membership = suite.members[a].membership.clone();
        async move { membership.advertise(&services).await.expect("advertise") }
    };
    let rows = |services: &[&ServiceEntry]| -> BTreeSet<_> {
        services.iter().map(|s| row(s, &suite.members[a])).collect()
    };
    advertise(vec![s1.clone(), s2.clone()]).await;
    suite
        .wait_routable(
            &[a, b],
            &rows(&[&s1, &s2]),
            CONVERGE,
            "both see two services",
        )
        .await;
    advertise(vec![s2.clone()]).await;
    suite
        .wait_routable(
            &[a, b],
            &rows(&[&s2]),
            CONVERGE,
            "the first service is withdrawn",
        )
        .await;
    advertise(vec![]).await;
    suite
        .wait_routable(&[a, b], &rows(&[]), CONVERGE, "every service is withdrawn")
        .await;
    advertise(vec![s3.clone()]).await;
    suite
        .wait_routable(
            &[a, b],
            &rows(&[&s3]),
            CONVERGE,
            "a new service after withdrawing all",
        )
        .await;
    suite.finish().await;
}

/// A crashed member's services leave the others' views within the failure deadline.
pub async fn a_crashed_members_services_disappear(backend: &dyn Backend) {
    let mut suite = Suite::new(backend);
    let mut services = Vec::new();
    for _ in 0..3 {
        let i = suite.join().await;
        let service = suite.service();
        suite.members[i]
            .membership
            .advertise(std::slice::from_ref(&service))
            .await
            .unwrap();
        services.push(service);
    }
    let all: BTreeSet<_> = (0..3)
        .map(|i| row(&services[i], &suite.members[i]))
        .collect();
    suite
        .wait_routable(&[0, 1, 2], &all, CONVERGE, "all three services")
        .await;
    suite.members[2].crash();
    let survivors: BTreeSet<_> = (0..2)
        .map(|i| row(&services[i], &suite.members[i]))
        .collect();
    let took = wait_until(
        backend.failure_deadline(),
        "the crashed member's service disappears",
        || (0..2).all(|i| suite.routable(i) == survivors),
    )
    .await;
    eprintln!("a crashed member's service disappeared after {took:?}");
    suite.finish().await;
}

/// A member that leaves is off the others' rings within moments.
pub async fn a_leaving_members_services_disappear_quickly(backend: &dyn Backend) {
    let mut suite = Suite::new(backend);
    let a = suite.join().await;
    let b = suite.join().await;
    let (sa, sb) = (suite.service(), suite.service());
    suite.members[a]
        .membership
        .advertise(std::slice::from_ref(&sa))
        .await
        .unwrap();
    suite.members[b]
        .membership
        .advertise(std::slice::from_ref(&sb))
        .await
        .unwrap();
    let both: BTreeSet<_> = [row(&sa, &suite.members[a]), row(&sb, &suite.members[b])].into();
    suite
        .wait_routable(&[a, b], &both, CONVERGE, "both services")
        .await;
    let leaving = suite.members.pop().unwrap();
    leaving.membership.leave().await.expect("leave");
    let took = wait_until(LEAVE, "the leaving member's service disappears", || {
        suite.routable(a) == BTreeSet::from([row(&sa, &suite.members[a])])
    })
    .await;
    eprintln!("a leaving member's service disappeared {took:?} after leave returned");
    leaving.membership.shutdown().await.expect("shutdown");
    suite.finish().await;
}

/// A member that crashed and came back at the same address with a new id and new services is
/// seen with those, and its old services are gone.
pub async fn a_restarted_member_is_seen_with_its_new_services(backend: &dyn Backend) {
    let mut suite = Suite::new(backend);
    let a = suite.join().await;
    let b = suite.join().await;
    let (sa, old) = (suite.service(), suite.service());
    suite.members[a]
        .membership
        .advertise(std::slice::from_ref(&sa))
        .await
        .unwrap();
    suite.members[b]
        .membership
        .advertise(std::slice::from_ref(&old))
        .await
        .unwrap();
    let both: BTreeSet<_> = [row(&sa, &suite.members[a]), row(&old, &suite.members[b])].into();
    suite
        .wait_routable(&[a, b], &both, CONVERGE, "both services")
        .await;

    let addr = suite.members[b]
        .endpoint
        .trim_start_matches("http://")
        .to_owned();
    suite.members[b].crash();
    let c = suite.join_at(&addr).await;
    let new = suite.service();
    suite.members[c]
        .membership
        .advertise(std::slice::from_ref(&new))
        .await
        .unwrap();
    let after: BTreeSet<_> = [row(&sa, &suite.members[a]), row(&new, &suite.members[c])].into();
    let took = wait_until(
        backend.failure_deadline() + CONVERGE,
        "the restarted member's new service replaces its old one",
        || suite.routable(a) == after && suite.routable(c) == after,
    )
    .await;
    eprintln!("a restarted member was seen with its new service after {took:?}");
    suite.finish().await;
}

/// Members joining and advertising all at once end up seeing everything.
pub async fn concurrent_registrations_are_all_seen(backend: &dyn Backend) {
    let mut suite = Suite::new(backend);
    suite.join().await;
    let seeds = suite.seeds();
    let joined =
        futures_util::future::join_all((0..3).map(|_| join_member(backend, &seeds, "127.0.0.1:0")))
            .await;
    suite.members.extend(joined);
    let plans: Vec<Vec<ServiceEntry>> = (0..suite.members.len())
        .map(|_| (0..5).map(|_| suite.service()).collect())
        .collect();
    // Every member grows its set one service at a time, all members at once.
    futures_util::future::join_all(suite.members.iter().zip(&plans).map(
        |(member, plan)| async move {
            for n in 1..=plan.len() {
                member
                    .membership
                    .advertise(&plan[..n])
                    .await
                    .expect("advertise");
            }
        },
    ))
    .await;
    let expected: BTreeSet<_> = suite
        .members
        .iter()
        .zip(&plans)
        .flat_map(|(member, plan)| plan.iter().map(move |s| row(s, member)))
        .collect();
    assert_eq!(expected.len(), 20);
    let everyone: Vec<usize> = (0..suite.members.len()).collect();
    suite
        .wait_routable(
            &everyone,
            &expected,
            CONVERGE,
            "every member sees all 20 services",
        )
        .await;
    suite.finish().await;
}

/// Two real nodes on the backend: handlers registered concurrently through the router are all
/// seen by the other node, and keys go to the ring's owner.
pub async fn nodes_register_concurrently_and_route_by_the_ring(backend: &dyn Backend) {
    let stream = format!("conf-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let first = meshage::init(backend.cluster(&[]), "127.0.0.1:0")
        .register(stream.clone(), echo_by)
        .start()
        .await
        .expect("first node starts");
    let seeds: Vec<String> = first.seed_address().into_iter().collect();
    let second = meshage::init(backend.cluster(&seeds), "127.0.0.1:0")
        .start()
        .await
        .expect("second node starts");
    let registered = futures_util::future::join_all((0..10).map(|_| {
        second
            .router()
            .register(stream.clone(), meshage::handler_fn(echo_by))
    }))
    .await;
    let mut ids: Vec<String> = registered
        .into_iter()
        .map(|r| r.expect("register"))
        .collect();
    ids.push(first.router().local_services()[0].id.to_string());
    assert_eq!(second.router().local_services().len(), 10);
    let nodes = [&first, &second];
    wait_until(CONVERGE, "both nodes route to all 11 services", || {
        nodes.iter().all(|n| {
            let mut seen: Vec<String> = n
                .router()
                .table()
                .services_of(&stream)
                .map(|s| s.id.to_string())
                .collect();
            seen.sort();
            let mut want = ids.clone();
            want.sort();
            seen == want
        })
    })
    .await;
    let ring = HashRing::new(&ids);
    for i in 0..40 {
        let key = format!("key-{i}");
        let node = nodes[i % 2];
        let answer = node
            .router()
            .send(Message::new(
                stream.as_str(),
                key.as_str(),
                json!({ "i": i }),
            ))
            .await
            .expect("send");
        assert_eq!(answer["by"], ring.get(&key).unwrap(), "key {key}");
    }
    second.shutdown().await.expect("shutdown");
    first.shutdown().await.expect("shutdown");
}

/// Nodes are ready (`GET /readyz`) once the backend has joined and its view lists them: the
/// first node on its own, and one that joins through it.
pub async fn started_nodes_become_ready(backend: &dyn Backend) {
    let first = meshage::init(backend.cluster(&[]), "127.0.0.1:0")
        .register("conf-ready", echo_by)
        .start()
        .await
        .expect("first node starts");
    let seeds: Vec<String> = first.seed_address().into_iter().collect();
    let second = meshage::init(backend.cluster(&seeds), "127.0.0.1:0")
        .register("conf-ready", echo_by)
        .start()
        .await
        .expect("second node starts");
    let http = Http::default();
    for node in [&first, &second] {
        let url = format!("http://{}/readyz", node.local_addr());
        wait_until_async(CONVERGE, "the node is ready", || async {
            http.get(&url).await.status == http::StatusCode::OK
        })
        .await;
    }
    second.shutdown().await.expect("shutdown");
    first.shutdown().await.expect("shutdown");
}

/// Bounds every test: a backend that hangs fails instead of stalling the run.
pub async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

/// Generates one test per conformance case for a backend made by `$make` (an async
/// expression giving `Option<impl Backend>`; `None` skips, with the reason printed). Every
/// binary that runs the suite mounts this file as `crate::common::conformance`.
macro_rules! conformance_tests {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            $crate::common::conformance::conformance_tests!(@cases $make;
                members_see_each_others_services,
                withdrawn_services_disappear,
                a_crashed_members_services_disappear,
                a_leaving_members_services_disappear_quickly,
                a_restarted_member_is_seen_with_its_new_services,
                concurrent_registrations_are_all_seen,
                nodes_register_concurrently_and_route_by_the_ring,
                started_nodes_become_ready,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(backend) = $make.await else { return };
                $crate::common::conformance::bounded(
                    $crate::common::conformance::$case(&backend),
                )
                .await;
            }
        )*
    };
}
pub(crate) use conformance_tests;
