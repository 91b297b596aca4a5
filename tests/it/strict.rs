//! `--strict-ownership`: an owner refuses a forward for a key its table gives to another
//! service (`X-Meshage-Refused: not-owner`, never run, never a handler status), and the sender
//! routes the request again once the tables agree. The nodes here share a membership whose view
//! the test sets per node, so that their tables disagree exactly as the test says.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use meshage::{
    Cluster, ClusterError, ClusterView, HandlerError, Header, LocalNode, Member, MemberState,
    Membership, Message, Node, NodeConfig, PeerProtocol, RouteError, SendOptions, ServiceEntry,
};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::common::{wait_until, Http};

/// Each node's id and the sender of its view.
type NodeViews = Vec<(String, watch::Sender<Arc<ClusterView>>)>;

/// A membership whose members every node shares, but whose view each node gets only when the
/// test publishes it to that node.
#[derive(Clone, Default)]
struct Views {
    members: Arc<Mutex<Vec<Member>>>,
    views: Arc<Mutex<NodeViews>>,
}

impl Views {
    /// Publishes to the node `to` a view of the members whose ids `with` lists.
    fn show(&self, to: &Node, with: &[&Node]) {
        let ids: Vec<&str> = with.iter().map(|n| n.router().node_id()).collect();
        let members = self.members.lock().unwrap().clone();
        let members = members
            .into_iter()
            .filter(|m| ids.contains(&m.id.as_str()))
            .collect();
        let views = self.views.lock().unwrap();
        let (_, view) = views
            .iter()
            .find(|(id, _)| id == to.router().node_id())
            .unwrap();
        view.send_replace(Arc::new(ClusterView { members }));
    }

    /// Publishes every member to every node.
    fn show_all(&self) {
        let members = self.members.lock().unwrap().clone();
        for (_, view) in self.views.lock().unwrap().iter() {
            view.send_replace(Arc::new(ClusterView {
                members: members.clone(),
            }));
        }
    }
}

struct Joined {
    views: Views,
    id: String,
}

#[async_trait]
impl Cluster for Views {
    async fn join(self: Box<Self>, local: LocalNode) -> Result<Arc<dyn Membership>, ClusterError> {
        self.members.lock().unwrap().push(Member {
            id: local.node_id.clone(),
            endpoint: local.endpoint.clone(),
            state: MemberState::Live,
            services: Vec::new(),
            last_heard: None,
            fingerprint: None,
        });
        let view = watch::channel(Arc::new(ClusterView::default())).0;
        self.views
            .lock()
            .unwrap()
            .push((local.node_id.clone(), view));
        self.show_all();
        Ok(Arc::new(Joined {
            views: *self,
            id: local.node_id,
        }))
    }
}

#[async_trait]
impl Membership for Joined {
    async fn advertise(&self, services: &[ServiceEntry]) -> Result<(), ClusterError> {
        for member in self.views.members.lock().unwrap().iter_mut() {
            if member.id == self.id {
                member.services = services.to_vec();
            }
        }
        self.views.show_all();
        Ok(())
    }

    fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        let views = self.views.views.lock().unwrap();
        let (_, view) = views.iter().find(|(id, _)| *id == self.id).unwrap();
        view.subscribe()
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ClusterError> {
        Ok(())
    }
}

/// A node whose `s` handler counts its runs and names its service; it forwards over `protocol`.
async fn node(
    views: &Views,
    strict: bool,
    protocol: PeerProtocol,
    runs: Option<Arc<AtomicUsize>>,
) -> Node {
    let config = NodeConfig::default()
        .strict_ownership(strict)
        .peer_protocol(protocol);
    let mut builder = meshage::init(views.clone(), "127.0.0.1:0").config(config);
    if let Some(runs) = runs {
        builder = builder.register("s", move |_data: Value, header: Header| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::Relaxed);
                Ok::<_, HandlerError>(json!({ "by": &*header.service_id }))
            }
        });
    }
    builder.start().await.expect("node starts")
}

fn service_of(node: &Node) -> String {
    let table = node.router().table();
    let found = table
        .services
        .iter()
        .find(|s| *s.node_id == *node.router().node_id());
    found
        .map(|s| s.id.to_string())
        .expect("a service of its own")
}

/// Entry `e` (no service), `a` (strict or not) and `b`, all seeing each other; and a key that
/// `b` owns.
async fn three(strict: bool) -> (Views, Node, Node, Node, Arc<AtomicUsize>, String) {
    three_over(strict, PeerProtocol::default()).await
}

/// `three`, with every node forwarding over `protocol`.
async fn three_over(
    strict: bool,
    protocol: PeerProtocol,
) -> (Views, Node, Node, Node, Arc<AtomicUsize>, String) {
    let views = Views::default();
    let e = node(&views, false, protocol, None).await;
    let runs_a = Arc::new(AtomicUsize::new(0));
    let a = node(&views, strict, protocol, Some(runs_a.clone())).await;
    let b = node(&views, strict, protocol, Some(Arc::default())).await;
    views.show_all();
    wait_until(Duration::from_secs(5), "two services everywhere", || {
        [&e, &a, &b]
            .iter()
            .all(|n| n.router().table().services.len() == 2)
    })
    .await;
    let sb = service_of(&b);
    let table = a.router().table();
    let key = (0..10_000)
        .map(|i| format!("key-{i}"))
        .find(|k| table.owner("s", k).is_some_and(|s| *s.id == *sb))
        .unwrap();
    (views, e, a, b, runs_a, key)
}

/// The entry `e` loses sight of `b`: its table holds `a`'s service only.
async fn hide_b(views: &Views, e: &Node, a: &Node) {
    views.show(e, &[e, a]);
    wait_until(
        Duration::from_secs(5),
        "the entry to see one service",
        || e.router().table().services.len() == 1,
    )
    .await;
}

#[tokio::test]
async fn a_strict_owner_refuses_a_key_its_table_gives_elsewhere_and_the_sender_looks_again() {
    refused_then_answered_by_the_owner(PeerProtocol::Link).await;
}

/// The same over HTTP forwards: the ring goes as `X-Meshage-Ring`, the refusal comes back as
/// `X-Meshage-Refused: not-owner`.
#[tokio::test]
async fn over_http_forwards_too_a_strict_owner_refuses_and_the_sender_looks_again() {
    refused_then_answered_by_the_owner(PeerProtocol::Http1).await;
}

async fn refused_then_answered_by_the_owner(protocol: PeerProtocol) {
    let (views, e, a, b, runs_a, key) = three_over(true, protocol).await;
    // The entry loses sight of b: it sends b's keys to a, which refuses them unrun.
    hide_b(&views, &e, &a).await;
    let sending = {
        let router = e.router().clone();
        let key = key.clone();
        tokio::spawn(async move { router.send(Message::new("s", &key, json!({}))).await })
    };
    // Refused, the entry waits for its table to change; once it sees b again, b runs it.
    let refused = || async {
        let metrics = Http::default()
            .get(&format!("{}/metrics", a.endpoint()))
            .await
            .body;
        String::from_utf8_lossy(&metrics).lines().any(|l| {
            l.contains(r#"route="received",outcome="server_error"} "#) && !l.ends_with(" 0")
        })
    };
    crate::common::wait_until_async(Duration::from_secs(5), "a to refuse", refused).await;
    views.show_all();
    let answer = sending
        .await
        .unwrap()
        .expect("answered once the tables agree");
    assert_eq!(answer["by"], json!(service_of(&b)));
    assert_eq!(runs_a.load(Ordering::Relaxed), 0, "a never ran b's key");
    drop((a, b));
}

#[tokio::test]
async fn the_refusal_is_the_nodes_never_a_handler_answer_and_only_for_forwards_to_an_owner() {
    let (_views, _e, a, _b, runs_a, key) = three(true).await;
    let sa = service_of(&a);
    let url = format!("{}/api/s/{key}", a.endpoint());
    let http = Http::default();
    let hop = |ring: Option<&'static str>| {
        let mut headers = vec![("x-meshage-hop", "1"), ("x-service-id", sa.as_str())];
        headers.extend(ring.map(|r| ("x-meshage-ring", r)));
        headers
    };
    // A forward as to the key's owner, from a node whose ring differs: refused, unrun.
    let answer = http
        .request(http::Method::POST, &url, &hop(Some("12345")), "{}")
        .await
        .unwrap();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.headers["x-meshage-refused"], "not-owner");
    assert_eq!(runs_a.load(Ordering::Relaxed), 0);
    // A request for a service by id (a broadcast, `X-Service-ID`) is not an owner's: it runs.
    let answer = http
        .request(http::Method::POST, &url, &hop(None), "{}")
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(runs_a.load(Ordering::Relaxed), 1);
    // A client's `X-Meshage-Ring` without the hop mark means nothing.
    let answer = http
        .request(
            http::Method::POST,
            &url,
            &[("x-meshage-ring", "12345")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    // A handler's own 503 is an answer like any other: the sender passes it on.
    let by_id = a
        .router()
        .send_with(
            Message::new("s", &key, json!({})),
            SendOptions::default().service(Some(sa.clone())),
        )
        .await
        .unwrap();
    assert_eq!(by_id["by"], json!(sa));
}

#[tokio::test]
async fn without_the_option_the_owner_runs_what_it_is_sent_and_the_sender_gives_up_at_its_deadline()
{
    let (views, e, a, _b, runs_a, key) = three(false).await;
    hide_b(&views, &e, &a).await;
    let answer = e
        .router()
        .send(Message::new("s", &key, json!({})))
        .await
        .unwrap();
    assert_eq!(answer["by"], json!(service_of(&a)), "a ran b's key");
    assert_eq!(runs_a.load(Ordering::Relaxed), 1);

    // With the option, an entry whose table never catches up gives up at its deadline.
    let (views, e, a, _b, runs_a, key) = three(true).await;
    hide_b(&views, &e, &a).await;
    let options = SendOptions::default().timeout(Some(Duration::from_millis(300)));
    let error = e
        .router()
        .send_with(Message::new("s", &key, json!({})), options)
        .await
        .unwrap_err();
    assert!(matches!(error, RouteError::NotOwner(_)), "{error:?}");
    assert_eq!(error.status(), 503);
    assert_eq!(runs_a.load(Ordering::Relaxed), 0);
    drop(a);
}
