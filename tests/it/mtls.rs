//! Mutual TLS between nodes with a cluster key: forwards travel over it (link, HTTP/1.1,
//! HTTP/2), and a link or a forward that does not come over mutual TLS from a peer whose
//! certificate a member published is refused before anything runs: a plaintext link preface,
//! a plaintext `X-Meshage-Hop`, a TLS client with a certificate nobody published. A keyed node
//! never forwards to an unkeyed one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use meshage::{
    ClusterError, ClusterKey, ClusterView, Fingerprint, HandlerError, Header, Keyring, Keys,
    LocalNode, Member, MemberState, Membership, Message, Node, NodeConfig, PeerProtocol,
    ServiceEntry,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::api::bounded;
use crate::common::{gossip, wait_converged, wait_until, Http};

const PREFACE: &[u8] = b"MESHLNK6\r\n\r\n";

/// Runs of the `echo` handler, by node.
type Runs = Arc<Mutex<HashMap<String, usize>>>;

fn keys(key: &ClusterKey) -> Option<Keys> {
    Some(Keys::new(Keyring::new(key.clone())))
}

/// A node serving `echo` that counts its runs under `name`.
async fn node(cluster: impl meshage::Cluster, name: &str, runs: &Runs, config: NodeConfig) -> Node {
    let (runs, name) = (runs.clone(), name.to_owned());
    meshage::init(cluster, "127.0.0.1:0")
        .register("echo", move |data: Value, header: Header| {
            *runs.lock().unwrap().entry(name.clone()).or_default() += 1;
            async move { Ok::<_, HandlerError>(json!({"echoed": data, "by": &*header.service_id})) }
        })
        .config(config)
        .start()
        .await
        .expect("node starts")
}

fn ran(runs: &Runs) -> usize {
    runs.lock().unwrap().values().sum()
}

/// The samples of a node's `/metrics`: `name{labels}` to value.
async fn metrics(node: &Node) -> HashMap<String, f64> {
    let answer = Http::default()
        .get(&format!("{}/metrics", node.endpoint()))
        .await;
    std::str::from_utf8(&answer.body)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// Keys of `stream` that `entry`'s table gives to services of other nodes, with their owners.
fn remote_keys(entry: &Node, n: usize) -> Vec<(String, String)> {
    let own: Vec<String> = entry
        .router()
        .local_services()
        .iter()
        .map(|s| s.id.to_string())
        .collect();
    let table = entry.router().table();
    let keys: Vec<(String, String)> = (0..1000)
        .map(|i| format!("key-{i}"))
        .filter_map(|key| {
            let owner = table.owner("echo", &key)?.id.to_string();
            (!own.contains(&owner)).then_some((key, owner))
        })
        .take(n)
        .collect();
    assert_eq!(keys.len(), n, "keys owned by other nodes");
    keys
}

/// A keyed 3-node cluster forwards correctly over the link, HTTP/1.1 and HTTP/2, each forward
/// over mutual TLS: the owners count the peer connections they took over TLS, and refused none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_cluster_forwards_over_mutual_tls() {
    bounded(async {
        for protocol in [PeerProtocol::Link, PeerProtocol::Http1, PeerProtocol::Http2] {
            let key = ClusterKey::generate();
            let runs = Runs::default();
            let config = || {
                NodeConfig::default()
                    .keys(keys(&key))
                    .peer_protocol(protocol)
            };
            let first = node(gossip(&[]), "a", &runs, config()).await;
            let seed = vec![first.seed_address().unwrap()];
            let mut nodes = vec![first];
            for name in ["b", "c"] {
                nodes.push(node(gossip(&seed), name, &runs, config()).await);
            }
            wait_converged(&nodes, 3).await;
            let entry = &nodes[0];
            let keys = remote_keys(entry, 20);
            for (key, owner) in &keys {
                let answer = entry
                    .router()
                    .send(Message::new("echo", key.as_str(), json!({"k": key})))
                    .await
                    .unwrap_or_else(|e| panic!("{protocol:?}: {key}: {e}"));
                assert_eq!(answer, json!({"echoed": {"k": key}, "by": owner}));
            }
            assert_eq!(ran(&runs), keys.len(), "{protocol:?}: each ran once");
            let mut over_tls = 0.0;
            for owner in &nodes[1..] {
                let m = metrics(owner).await;
                over_tls += sample(&m, "meshage_peer_tls_connections_total");
                for kind in ["link", "forward"] {
                    let refused = format!("meshage_peer_refusals_total{{kind=\"{kind}\"}}");
                    assert_eq!(sample(&m, &refused), 0.0, "{protocol:?}: {refused}");
                }
            }
            assert!(
                over_tls >= 1.0,
                "{protocol:?}: the owners took the forwards over mutual TLS"
            );
        }
    })
    .await;
}

/// One keyed node serving `echo`, alone.
async fn keyed_node(runs: &Runs) -> Node {
    let config = NodeConfig::default().keys(keys(&ClusterKey::generate()));
    node(gossip(&[]), "keyed", runs, config).await
}

/// A link request frame for `service`: request kind, id 1, no trace, 5 s.
fn link_request_frame(stream: &str, key: &str, service: &str) -> Vec<u8> {
    let mut frame = vec![1u8];
    frame.extend_from_slice(&1u64.to_be_bytes());
    // No trace: trace id, parent span and flags all zero.
    frame.extend_from_slice(&[0u8; 16 + 8 + 1]);
    frame.extend_from_slice(&5000u32.to_be_bytes());
    // No ring checksum: a request for a service by id.
    frame.extend_from_slice(&0u64.to_be_bytes());
    frame.extend_from_slice(&(stream.len() as u16).to_be_bytes());
    frame.extend_from_slice(&(key.len() as u32).to_be_bytes());
    frame.extend_from_slice(&(service.len() as u16).to_be_bytes());
    // No content type, no tracestate, no previous owner.
    frame.extend_from_slice(&[0u8; 2 + 2 + 2]);
    // The extras block (no name, no headers), after the strings and before the body.
    let extras: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0];
    for part in [
        stream.as_bytes(),
        key.as_bytes(),
        service.as_bytes(),
        extras,
        b"{}",
    ] {
        frame.extend_from_slice(part);
    }
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

/// Sends the link preface and a request frame on `stream`, and reads what comes back until the
/// node closes it.
async fn try_link<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    service: &str,
) -> Vec<u8> {
    let mut sent = PREFACE.to_vec();
    sent.extend_from_slice(&link_request_frame("echo", "k", service));
    let _ = stream.write_all(&sent).await;
    let _ = stream.flush().await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut back))
        .await
        .expect("the node closes the link");
    back
}

/// Sends a forward (`X-Meshage-Hop`) to `service` on `stream` as HTTP/1.1, and returns the
/// answer's head and body.
async fn try_hop<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    service: &str,
    hop: bool,
) -> String {
    let hop = if hop { "x-meshage-hop: 1\r\n" } else { "" };
    let request = format!(
        "POST /api/echo/k HTTP/1.1\r\nhost: x\r\nx-service-id: {service}\r\n{hop}\
         content-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut back))
        .await
        .expect("the node answers");
    String::from_utf8_lossy(&back).into_owned()
}

/// A plaintext client that sends the link preface to a keyed node: the connection is closed
/// at once, with no acknowledgement, and the request frame it sent does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_link_to_a_keyed_node_is_closed_unrun() {
    bounded(async {
        let runs = Runs::default();
        let node = keyed_node(&runs).await;
        let service = node.router().local_services()[0].id.to_string();
        let mut stream = TcpStream::connect(node.local_addr()).await.unwrap();
        let back = try_link(&mut stream, &service).await;
        assert!(back.is_empty(), "no acknowledgement: {back:?}");
        assert_eq!(ran(&runs), 0, "nothing ran");
        let m = metrics(&node).await;
        assert_eq!(
            sample(&m, r#"meshage_peer_refusals_total{kind="link"}"#),
            1.0
        );
    })
    .await;
}

/// A plaintext request marked as a forward (`X-Meshage-Hop`) to a keyed node: 401 with the
/// JSON error, and the handler does not run; the same request without the mark runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_forward_to_a_keyed_node_is_401_unrun() {
    bounded(async {
        let runs = Runs::default();
        let node = keyed_node(&runs).await;
        let service = node.router().local_services()[0].id.to_string();
        let mut stream = TcpStream::connect(node.local_addr()).await.unwrap();
        let answer = try_hop(&mut stream, &service, true).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            answer.ends_with(
                r#"{"error":"forwards are taken only over mutual TLS from a peer of the cluster"}"#
            ),
            "{answer}"
        );
        assert_eq!(ran(&runs), 0, "nothing ran");
        let mut stream = TcpStream::connect(node.local_addr()).await.unwrap();
        let answer = try_hop(&mut stream, &service, false).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(ran(&runs), 1, "an API client's request runs");
        let m = metrics(&node).await;
        assert_eq!(
            sample(&m, r#"meshage_peer_refusals_total{kind="forward"}"#),
            1.0
        );
    })
    .await;
}

/// Accepts any server certificate whose key signs the handshake: a stranger's client, which
/// does not know the node's fingerprint.
#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A certificate of its own for a TLS client: the DER and the key.
fn certificate() -> (CertificateDer<'static>, PrivatePkcs8KeyDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec!["meshage-peer".to_owned()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    (made.cert.der().clone(), key)
}

/// A TLS connection to `node`, presenting a fresh certificate that nobody published, or none.
async fn stranger(
    node: &Node,
    with_certificate: bool,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_client(node, with_certificate.then(certificate)).await
}

/// A TLS connection to `node` that accepts any server certificate, presenting `certificate`.
async fn tls_client(
    node: &Node,
    certificate: Option<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>)>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(
            provider.signature_verification_algorithms,
        )));
    let config = match certificate {
        Some((der, key)) => builder
            .with_client_auth_cert(vec![der], key.into())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(node.local_addr()).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("meshage-peer").unwrap(), tcp)
        .await
        .expect("the handshake completes: API clients may use TLS")
}

/// A TLS client with a certificate nobody published (or none) is an API client, not a peer:
/// its link is closed without an acknowledgement and its forward gets a 401, and nothing runs;
/// its ordinary request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_with_an_unpublished_certificate_is_no_peer() {
    bounded(async {
        let runs = Runs::default();
        let node = keyed_node(&runs).await;
        let service = node.router().local_services()[0].id.to_string();
        for certificate in [true, false] {
            let back = try_link(&mut stranger(&node, certificate).await, &service).await;
            assert!(back.is_empty(), "no acknowledgement: {back:?}");
            let answer = try_hop(&mut stranger(&node, certificate).await, &service, true).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        }
        assert_eq!(ran(&runs), 0, "nothing ran");
        let answer = try_hop(&mut stranger(&node, true).await, &service, false).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(ran(&runs), 1);
        let m = metrics(&node).await;
        assert_eq!(
            sample(&m, r#"meshage_peer_refusals_total{kind="link"}"#),
            2.0
        );
        assert_eq!(
            sample(&m, r#"meshage_peer_refusals_total{kind="forward"}"#),
            2.0
        );
        assert_eq!(sample(&m, "meshage_peer_tls_connections_total"), 0.0);
    })
    .await;
}

/// Membership kept in memory and shared by the nodes of one test, whatever keys they hold, so
/// that a keyed and an unkeyed node see each other (sealed gossip would keep them apart).
#[derive(Clone)]
pub(crate) struct SharedCluster {
    members: Arc<Mutex<Vec<Member>>>,
    view: watch::Sender<Arc<ClusterView>>,
}

impl SharedCluster {
    pub(crate) fn new() -> SharedCluster {
        SharedCluster {
            members: Arc::default(),
            view: watch::channel(Arc::new(ClusterView::default())).0,
        }
    }

    /// Marks the member at `endpoint` dead, as a failure detector would, and publishes it.
    pub(crate) fn declare_dead(&self, endpoint: &str) {
        for member in self.members.lock().unwrap().iter_mut() {
            if member.endpoint == endpoint {
                member.state = MemberState::Dead;
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let members = self.members.lock().unwrap().clone();
        self.view.send_replace(Arc::new(ClusterView { members }));
    }
}

struct SharedMembership {
    cluster: SharedCluster,
    id: String,
}

#[async_trait]
impl meshage::Cluster for SharedCluster {
    async fn join(self: Box<Self>, local: LocalNode) -> Result<Arc<dyn Membership>, ClusterError> {
        self.members.lock().unwrap().push(Member {
            id: local.node_id.clone(),
            endpoint: local.endpoint.clone(),
            state: MemberState::Live,
            services: Vec::new(),
            last_heard: None,
            fingerprint: local.fingerprint.clone(),
        });
        self.publish();
        Ok(Arc::new(SharedMembership {
            cluster: *self,
            id: local.node_id,
        }))
    }
}

#[async_trait]
impl Membership for SharedMembership {
    async fn advertise(&self, services: &[ServiceEntry]) -> Result<(), ClusterError> {
        for member in self.cluster.members.lock().unwrap().iter_mut() {
            if member.id == self.id {
                member.services = services.to_vec();
            }
        }
        self.cluster.publish();
        Ok(())
    }

    fn view(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.cluster.view.subscribe()
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), ClusterError> {
        Ok(())
    }
}

/// A keyed and an unkeyed node in one cluster: the keyed node sends nothing to the unkeyed one
/// (it published no certificate, so it is no peer), over any protocol: keys the unkeyed node
/// owns run on the keyed node's own service instead. And the unkeyed node's forwards to the
/// keyed one, in plaintext, are refused unrun, so they too run where they entered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_node_does_not_forward_to_an_unkeyed_one() {
    bounded(async {
        for protocol in [PeerProtocol::Link, PeerProtocol::Http1, PeerProtocol::Http2] {
            let cluster = SharedCluster::new();
            let (keyed_runs, plain_runs) = (Runs::default(), Runs::default());
            let keyed = NodeConfig::default()
                .keys(keys(&ClusterKey::generate()))
                .peer_protocol(protocol);
            let keyed = node(cluster.clone(), "keyed", &keyed_runs, keyed).await;
            let plain = NodeConfig::default().peer_protocol(protocol);
            let plain = node(cluster.clone(), "plain", &plain_runs, plain).await;
            let nodes = [keyed, plain];
            wait_until(Duration::from_secs(5), "both tables list both", || {
                nodes.iter().all(|n| n.router().table().services.len() == 2)
            })
            .await;
            let [keyed, plain] = &nodes;
            let own = keyed.router().local_services()[0].id.to_string();
            for (key, _) in remote_keys(keyed, 5) {
                let answer = keyed
                    .router()
                    .send(Message::new("echo", key.as_str(), json!({})))
                    .await
                    .unwrap_or_else(|e| panic!("{protocol:?}: {key}: {e}"));
                assert_eq!(answer["by"], own.as_str(), "{protocol:?}: ran here");
            }
            assert_eq!(
                ran(&plain_runs),
                0,
                "{protocol:?}: the unkeyed node ran nothing"
            );
            assert_eq!(ran(&keyed_runs), 5);
            if protocol == PeerProtocol::Link {
                for (key, _) in remote_keys(plain, 5) {
                    let answer = plain
                        .router()
                        .send(Message::new("echo", key.as_str(), json!({})))
                        .await
                        .unwrap_or_else(|e| panic!("{protocol:?}: {key}: {e}"));
                    assert_ne!(answer["by"], own.as_str(), "refused by the keyed node");
                }
                assert_eq!(ran(&keyed_runs), 5, "the keyed node ran nothing more");
                let refused = sample(
                    &metrics(keyed).await,
                    r#"meshage_peer_refusals_total{kind="link"}"#,
                );
                assert!(refused >= 1.0, "{refused}");
            }
        }
    })
    .await;
}

/// A node may dial a peer a gossip round before that peer has heard of it: a link whose
/// certificate is published while the link waits to be taken is taken, and its request runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_published_while_its_link_waits_is_taken() {
    bounded(async {
        let cluster = SharedCluster::new();
        let runs = Runs::default();
        let config = NodeConfig::default().keys(keys(&ClusterKey::generate()));
        let node = node(cluster.clone(), "keyed", &runs, config).await;
        let service = node.router().local_services()[0].id.to_string();
        let (der, key) = certificate();
        let fingerprint = Fingerprint::of(&der);
        let mut link = tls_client(&node, Some((der, key))).await;
        let mut sent = PREFACE.to_vec();
        sent.extend_from_slice(&link_request_frame("echo", "k", &service));
        link.write_all(&sent).await.unwrap();
        link.flush().await.unwrap();
        // The node waits for the certificate to be published: the client's member arrives.
        cluster.members.lock().unwrap().push(Member {
            id: "late".into(),
            endpoint: "http://127.0.0.1:9".into(),
            state: MemberState::Live,
            services: Vec::new(),
            last_heard: None,
            fingerprint: Some(fingerprint.to_string()),
        });
        cluster.publish();
        let mut ack = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(10), link.read_exact(&mut ack))
            .await
            .expect("the link is acknowledged")
            .unwrap();
        assert_eq!(&ack, b"MESHACK6");
        wait_until(Duration::from_secs(5), "the request ran", || {
            ran(&runs) == 1
        })
        .await;
        let m = metrics(&node).await;
        assert_eq!(sample(&m, "meshage_peer_tls_connections_total"), 1.0);
    })
    .await;
}
