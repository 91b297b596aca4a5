//! The operator's own PKI (`--tls-cert`, `--tls-key`, `--tls-ca`): nodes serve HTTPS to clients
//! (HTTP/1.1 and HTTP/2 by ALPN) and nothing in plaintext, advertise `https://`, forward to
//! peers verified against the CA, take links and forwards only from a client certificate of the
//! CA, and take new certificate files without a restart or a failed request. The CLI talks
//! HTTPS with `--cacert`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshage::{HandlerError, Header, Message, Node, NodeConfig, OperatorTls, PeerProtocol};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::api::bounded;
use crate::common::proc::Proc;
use crate::common::{
    gossip, meshage_command, wait_converged, wait_until, wait_until_async, Http, TestCa,
};

const PREFACE: &[u8] = b"MESHLNK6\r\n\r\n";

/// A node's certificate files, as `meshage certs node` writes them: valid for `localhost` and
/// `127.0.0.1`, for server and client use.
struct NodeFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

fn node_files(ca: &TestCa, name: &str) -> NodeFiles {
    let issued = ca.issue(&["localhost", "127.0.0.1"]);
    NodeFiles {
        cert: ca.write(&format!("{name}.pem"), &issued.cert_pem),
        key: ca.write(&format!("{name}-key.pem"), &issued.key_pem),
        ca: ca.write("ca.pem", &ca.pem),
    }
}

/// Replaces a node's certificate and key with a new pair of the same CA, each file by an
/// atomic rename, as a certificate manager does; returns the new certificate's DER.
fn rotate(ca: &TestCa, name: &str, files: &NodeFiles) -> CertificateDer<'static> {
    let issued = ca.issue(&["localhost", "127.0.0.1"]);
    std::fs::rename(
        ca.write(&format!("{name}.pem.new"), &issued.cert_pem),
        &files.cert,
    )
    .unwrap();
    std::fs::rename(
        ca.write(&format!("{name}-key.pem.new"), &issued.key_pem),
        &files.key,
    )
    .unwrap();
    CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()
}

/// A node serving `echo` with the operator's certificates; `runs` counts its handler's runs.
async fn node(
    seeds: &[String],
    files: &NodeFiles,
    protocol: PeerProtocol,
    runs: &Arc<AtomicUsize>,
) -> Node {
    let runs = runs.clone();
    let config = NodeConfig::default()
        .tls(Some(
            OperatorTls::from_files(&files.cert, &files.key, &files.ca).unwrap(),
        ))
        .peer_protocol(protocol);
    meshage::init(gossip(seeds), "127.0.0.1:0")
        .register("echo", move |data: Value, header: Header| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, HandlerError>(json!({"echoed": data, "by": &*header.service_id})) }
        })
        .config(config)
        .start()
        .await
        .expect("node starts")
}

async fn cluster(ca: &TestCa, protocol: PeerProtocol, runs: &Arc<AtomicUsize>) -> Vec<Node> {
    let mut nodes = vec![node(&[], &node_files(ca, "a"), protocol, runs).await];
    let seed = vec![nodes[0].seed_address().unwrap()];
    for name in ["b", "c"] {
        nodes.push(node(&seed, &node_files(ca, name), protocol, runs).await);
    }
    wait_converged(&nodes, 3).await;
    nodes
}

/// A TLS client configuration that trusts `ca_pem`, presents `identity` (certificate and key
/// PEM) if given, and offers `alpn` (nothing, for the link, when it is empty).
fn client_config(ca_pem: &str, identity: Option<(&str, &str)>, alpn: &[u8]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    if !alpn.is_empty() {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Arc::new(config)
}

async fn tls(
    address: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// `POST path` with `headers` over HTTP/1.1 on `sender`: the status and body.
async fn post(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Bytes), String> {
    let mut request = Request::post(path).header("host", "127.0.0.1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body.to_bytes()))
}

async fn http1(
    stream: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// A 3-node cluster under the operator's PKI forwards correctly over the link and over
/// HTTP/1.1, advertises `https://`, answers HTTPS clients over HTTP/1.1 and HTTP/2 as ALPN
/// says, and refuses plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pki_cluster_forwards_and_serves_https_only() {
    bounded(async {
        let ca = TestCa::new("operator CA");
        for protocol in [PeerProtocol::Link, PeerProtocol::Http1] {
            let runs = Arc::new(AtomicUsize::new(0));
            let nodes = cluster(&ca, protocol, &runs).await;
            for n in &nodes {
                assert_eq!(n.endpoint(), format!("https://{}", n.local_addr()));
            }
            let entry = &nodes[0];
            let own = entry.router().local_services()[0].id.to_string();
            let table = entry.router().table();
            let remote: Vec<String> = (0..200)
                .map(|i| format!("key-{i}"))
                .filter(|k| table.owner("echo", k).unwrap().id.to_string() != own)
                .take(10)
                .collect();
            for key in &remote {
                let owner = table.owner("echo", key).unwrap().id.to_string();
                let answer = entry
                    .router()
                    .send(Message::new("echo", key.as_str(), json!({"k": key})))
                    .await
                    .unwrap_or_else(|e| panic!("{protocol:?}: {key}: {e}"));
                assert_eq!(answer, json!({"echoed": {"k": key}, "by": owner}));
            }
            assert_eq!(runs.load(Ordering::SeqCst), remote.len(), "{protocol:?}");

            let address = entry.local_addr();
            let stream = tls(address, client_config(&ca.pem, None, b"http/1.1"))
                .await
                .unwrap();
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            let mut sender = http1(stream).await;
            let (status, body) = post(&mut sender, "/api/echo/k1", &[]).await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body:?}");

            let stream = tls(address, client_config(&ca.pem, None, b"h2"))
                .await
                .unwrap();
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = Request::get(format!("https://{address}/api/health"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.version(), http::Version::HTTP_2);

            let plain = Http::default()
                .get(&format!("http://{address}/api/health"))
                .await;
            assert_eq!(plain.status, StatusCode::BAD_REQUEST);
            assert!(plain.json()["error"].as_str().unwrap().contains("HTTPS"));
            for n in nodes {
                n.shutdown().await.unwrap();
            }
        }
    })
    .await;
}

/// Whether a link preface sent over `stream` got the link's acknowledgement: a refused link is
/// closed (or its TLS session ended) without one.
async fn link_acknowledged<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
) -> bool {
    if stream.write_all(PREFACE).await.is_err() || stream.flush().await.is_err() {
        return false;
    }
    let mut ack = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut ack)).await,
        Ok(Ok(_))
    )
}

/// A TLS client with a certificate of another CA, or with none, cannot open a link or send a
/// forward (`X-Meshage-Hop`): nothing runs. One with a certificate of the operator's CA can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_forwards_need_a_certificate_of_the_operators_ca() {
    bounded(async {
        let (ca, other) = (TestCa::new("operator CA"), TestCa::new("another CA"));
        let runs = Arc::new(AtomicUsize::new(0));
        let target = node(&[], &node_files(&ca, "a"), PeerProtocol::Link, &runs).await;
        let address = target.local_addr();
        let service = target.router().local_services()[0].id.to_string();
        let hop = [("x-meshage-hop", "1"), ("x-service-id", service.as_str())];
        let stranger = other.issue(&["localhost", "127.0.0.1"]);
        let stranger = Some((stranger.cert_pem.as_str(), stranger.key_pem.as_str()));

        // Another CA's certificate: the handshake fails, so neither a link nor a hop gets in.
        let config = client_config(&ca.pem, stranger, b"http/1.1");
        if let Ok(mut stream) = tls(address, config.clone()).await {
            assert!(
                !link_acknowledged(&mut stream).await,
                "a link from another CA"
            );
        }
        if let Ok(stream) = tls(address, config).await {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let answer = post(&mut sender, "/api/echo/k", &hop).await;
            assert!(answer.is_err(), "a hop from another CA: {answer:?}");
        }

        // No certificate: an API client, but no peer.
        let config = client_config(&ca.pem, None, b"http/1.1");
        let mut stream = tls(address, config.clone()).await.unwrap();
        assert!(
            !link_acknowledged(&mut stream).await,
            "a link with no certificate"
        );
        let mut sender = http1(tls(address, config).await.unwrap()).await;
        let (status, _) = post(&mut sender, "/api/echo/k", &hop).await.unwrap();
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "a hop with no certificate"
        );

        // Plaintext: closed, or told to use HTTPS.
        let mut plain = TcpStream::connect(address).await.unwrap();
        assert!(!link_acknowledged(&mut plain).await, "a plaintext link");
        assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran");

        // A certificate of the operator's CA is a peer's.
        let peer = ca.issue(&["localhost", "127.0.0.1"]);
        let peer = Some((peer.cert_pem.as_str(), peer.key_pem.as_str()));
        let mut sender = http1(
            tls(address, client_config(&ca.pem, peer, b"http/1.1"))
                .await
                .unwrap(),
        )
        .await;
        let (status, body) = post(&mut sender, "/api/echo/k", &hop).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let mut stream = tls(address, client_config(&ca.pem, peer, b""))
            .await
            .unwrap();
        assert!(link_acknowledged(&mut stream).await, "a link from a peer");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        target.shutdown().await.unwrap();
    })
    .await;
}

/// Replacing every node's certificate and key (new ones of the same CA) while clients send a
/// steady load through the cluster over HTTPS, reconnecting often: no request fails, and new
/// handshakes present the new certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_with_no_failed_request() {
    bounded(async {
        let ca = TestCa::new("operator CA");
        let runs = Arc::new(AtomicUsize::new(0));
        let names = ["a", "b", "c"];
        let files: Vec<NodeFiles> = names.iter().map(|n| node_files(&ca, n)).collect();
        let mut nodes = vec![node(&[], &files[0], PeerProtocol::Link, &runs).await];
        let seed = vec![nodes[0].seed_address().unwrap()];
        for f in &files[1..] {
            nodes.push(node(&seed, f, PeerProtocol::Link, &runs).await);
        }
        wait_converged(&nodes, 3).await;

        let (ok, failed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let config = client_config(&ca.pem, None, b"http/1.1");
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (ok, failed, stop, config) =
                    (ok.clone(), failed.clone(), stop.clone(), config.clone());
                let address = nodes[w % nodes.len()].local_addr();
                tokio::spawn(async move {
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        // A new connection (and handshake) every 10 requests.
                        let mut sender = match tls(address, config.clone()).await {
                            Ok(stream) => http1(stream).await,
                            Err(e) => {
                                eprintln!("handshake failed: {e}");
                                failed.fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                        };
                        for _ in 0..10 {
                            i += 1;
                            match post(&mut sender, &format!("/api/echo/w{w}-{i}"), &[]).await {
                                Ok((StatusCode::OK, _)) => ok.fetch_add(1, Ordering::SeqCst),
                                other => {
                                    eprintln!("request failed: {other:?}");
                                    failed.fetch_add(1, Ordering::SeqCst)
                                }
                            };
                        }
                    }
                })
            })
            .collect();
        let at_least = |n: usize| {
            let ok = ok.clone();
            async move {
                let until = ok.load(Ordering::SeqCst) + n;
                wait_until_async(Duration::from_secs(30), "requests answered", || {
                    let ok = ok.clone();
                    async move { ok.load(Ordering::SeqCst) >= until }
                })
                .await;
            }
        };
        at_least(200).await;
        let rotated: Vec<_> = names
            .iter()
            .zip(&files)
            .map(|(name, f)| rotate(&ca, name, f))
            .collect();
        for (n, new) in nodes.iter().zip(&rotated) {
            let (address, config) = (n.local_addr(), config.clone());
            wait_until_async(
                Duration::from_secs(10),
                "new handshakes present the new certificate",
                || {
                    let config = config.clone();
                    async move {
                        let stream = tls(address, config).await.unwrap();
                        stream.get_ref().1.peer_certificates().unwrap()[0] == *new
                    }
                },
            )
            .await;
        }
        at_least(200).await;
        stop.store(true, Ordering::SeqCst);
        for worker in workers {
            worker.await.unwrap();
        }
        assert_eq!(failed.load(Ordering::SeqCst), 0, "failed requests");
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    })
    .await;
}

/// `meshage node` with `--tls-cert`, `--tls-key` and `--tls-ca` (here by their variables) serves
/// HTTPS; `meshage send --cacert CA --node https://...` talks to it, and without the right CA
/// fails, saying why, with the exit code of an unreachable cluster. Two of the three files are
/// refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_https_and_the_cli_sends_with_cacert() {
    bounded(async {
        let ca = TestCa::new("operator CA");
        let files = node_files(&ca, "a");
        let node = |tls: &[(&str, &PathBuf)]| {
            let mut command = meshage_command();
            command.args(["node", "--echo", "echo"]);
            for (name, value) in [
                ("HTTP_HOST", "127.0.0.1"),
                ("HTTP_PORT", "find"),
                ("CLUSTER_HOST", "127.0.0.1"),
                ("CLUSTER_PORT", "find"),
            ] {
                command.env(name, value);
            }
            for (name, path) in tls {
                command.env(name, path);
            }
            Proc::spawn("meshage node", command)
        };
        let proc = node(&[
            ("MESHAGE_TLS_CERT", &files.cert),
            ("MESHAGE_TLS_KEY", &files.key),
            ("MESHAGE_TLS_CA", &files.ca),
        ]);
        let line = proc.wait_line(Duration::from_secs(10), |l| l.contains(" serving "));
        let url = line
            .split(' ')
            .find(|w| w.starts_with("https://"))
            .unwrap_or_else(|| panic!("an https:// endpoint in {line}"))
            .to_owned();
        let send = move |cacert: PathBuf| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                meshage_command()
                    .args(["send", "echo", "k", r#"{"hi":1}"#, "--json", "--node", &url])
                    .arg("--cacert")
                    .arg(cacert)
                    .output()
                    .unwrap()
            })
        };
        let output = send(files.ca.clone()).await.unwrap();
        assert!(output.status.success(), "{output:?}");
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(answer["echoed"], json!({"hi": 1}));

        let other = TestCa::new("another CA");
        let output = send(other.write("ca.pem", &other.pem)).await.unwrap();
        assert_eq!(output.status.code(), Some(4), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("certificate"), "{stderr}");
        drop(proc);

        let mut partial = node(&[("MESHAGE_TLS_CERT", &files.cert)]);
        let status = tokio::task::block_in_place(|| partial.child.wait().unwrap());
        assert!(!status.success());
        wait_until(Duration::from_secs(10), "the error is printed", || {
            partial.output().contains("give all three")
        })
        .await;
    })
    .await;
}
