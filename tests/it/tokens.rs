//! Client API tokens on real nodes: which routes ask for `Authorization: Bearer TOKEN` and
//! what a refusal looks like (401 with `WWW-Authenticate`, 403 for a stream the token may not
//! use, each as the API description says), a refusal read by a client that writes its whole
//! body first, forwards that carry no token, a tokens file rotated under a running node, the
//! `meshage` client's `--token`, and tokens that never show in logs, answers or `--help`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use meshage::{Node, NodeConfig, PeerProtocol, Tokens};

use crate::api::bounded;
use crate::common::process::{meshage_cli, meshage_node_env, CliRun};
use crate::common::{echo_by, gossip, wait_converged, wait_until, wait_until_async, Answer, Http};
use crate::openapi::Description;

/// A token for every stream.
const FULL: &str = "full-access-token-0001";
/// A token for the stream `orders` only.
const ORDERS: &str = "orders-only-token-0002";
/// A token the next version of the file brings.
const NEXT: &str = "rotated-in-token-0003";
/// A token no file holds.
const STRANGER: &str = "nobody-knows-this-0004";

/// A tokens file in the temporary directory, removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(text: &str) -> TokenFile {
        let path = std::env::temp_dir().join(format!(
            "meshage-tokens-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let file = TokenFile(path);
        file.write(text);
        file
    }

    /// Replaces the file's text as an operator would: a new file renamed over the old one.
    fn write(&self, text: &str) {
        let next = self.0.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &self.0).unwrap();
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The usual tokens file: one token for everything, one for `orders`.
fn usual_tokens() -> TokenFile {
    TokenFile::new(&format!(
        "# API tokens\n{FULL}\n{ORDERS} orders   # the orders team\n"
    ))
}

/// A node serving `echo` and `orders`, with the tokens of `file`.
async fn guarded_node(file: &TokenFile, seeds: &[String], protocol: PeerProtocol) -> Node {
    node_with(Tokens::from_file(file.path()).unwrap(), seeds, protocol).await
}

/// A node serving `echo` and `orders`, with `tokens`.
async fn node_with(tokens: Tokens, seeds: &[String], protocol: PeerProtocol) -> Node {
    meshage::init(gossip(seeds), "127.0.0.1:0")
        .register("echo", echo_by)
        .register("orders", echo_by)
        .config(
            NodeConfig::default()
                .api_tokens(Some(tokens))
                .peer_protocol(protocol),
        )
        .start()
        .await
        .expect("node starts")
}

/// `method path` on `node`, with `token` as a bearer token if given.
async fn call(node: &Node, method: Method, path: &str, token: Option<&str>) -> Answer {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(value) = &authorization {
        headers.push(("authorization", value));
    }
    let url = format!("http://{}{path}", node.local_addr());
    Http::default()
        .request(method, &url, &headers, "{}")
        .await
        .unwrap()
}

/// The route of each protected request, as the description names it, and the request.
const PROTECTED: [(&str, &str, &str); 12] = [
    ("/api/{stream}", "POST", "/api/echo"),
    ("/api/broadcast/{stream}", "POST", "/api/broadcast/echo"),
    ("/api/{stream}/{partitionKey}", "POST", "/api/echo/k"),
    (
        "/api/broadcast/{stream}/{partitionKey}",
        "POST",
        "/api/broadcast/echo/k",
    ),
    (
        "/api/locate/{stream}/{partitionKey}",
        "GET",
        "/api/locate/echo/k",
    ),
    (
        "/api/locate/{stream}/{partitionKey}",
        "HEAD",
        "/api/locate/echo/k",
    ),
    ("/api/services", "GET", "/api/services"),
    ("/api/members", "GET", "/api/members"),
    ("/api/status", "GET", "/api/status"),
    ("/api/status", "HEAD", "/api/status"),
    ("/metrics", "GET", "/metrics"),
    ("/api/members", "HEAD", "/api/members"),
];

fn method(name: &str) -> Method {
    name.parse().unwrap()
}

/// Every route but health, the probes, the description and the page asks for a token: none or an unknown
/// one is a 401 with the challenge, a known one is let through; every refusal fits the API
/// description.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_route_needs_a_token() {
    bounded(async {
        let file = usual_tokens();
        let node = guarded_node(&file, &[], PeerProtocol::Link).await;
        let description = Description::of(&node).await;
        for (template, name, path) in PROTECTED {
            let what = format!("{name} {path}");
            let missing = call(&node, method(name), path, None).await;
            assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(
                missing.headers["www-authenticate"], r#"Bearer realm="meshage""#,
                "{what}"
            );
            description.check(template, &method(name), &missing);
            let unknown = call(&node, method(name), path, Some(STRANGER)).await;
            assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(
                unknown.headers["www-authenticate"],
                r#"Bearer realm="meshage", error="invalid_token""#,
                "{what}"
            );
            description.check(template, &method(name), &unknown);
            if name != "HEAD" {
                assert!(
                    missing.json()["error"]
                        .as_str()
                        .unwrap()
                        .contains("Authorization: Bearer"),
                    "{what}"
                );
                assert_eq!(
                    unknown.json()["error"],
                    "the API token is not valid",
                    "{what}"
                );
            }
            for token in [FULL, ORDERS] {
                let path = path.replacen("/echo", "/orders", 1);
                let answer = call(&node, method(name), &path, Some(token)).await;
                assert_eq!(answer.status, StatusCode::OK, "{name} {path} with a token");
                description.check(template, &method(name), &answer);
            }
        }
        // Another scheme, or a bearer without a token, is no token.
        let url = format!("http://{}/api/services", node.local_addr());
        for authorization in [format!("Basic {FULL}"), "Bearer ".into(), FULL.into()] {
            let answer = Http::default()
                .request(Method::GET, &url, &[("authorization", &authorization)], "")
                .await
                .unwrap();
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization}");
        }
        let lower = format!("bearer {FULL}");
        let answer = Http::default()
            .request(Method::GET, &url, &[("authorization", &lower)], "")
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK, "the scheme in any case");

        // Open to all: health and the probes (for load balancers and orchestrators), the
        // description, the page; and a path that leads nowhere is a 404 either way.
        for (name, path, status) in [
            ("GET", "/api/health", StatusCode::OK),
            ("POST", "/api/health", StatusCode::OK),
            ("GET", "/livez", StatusCode::OK),
            ("GET", "/readyz", StatusCode::OK),
            ("GET", "/api/openapi.json", StatusCode::OK),
            ("GET", "/", StatusCode::OK),
            ("GET", "/index.html", StatusCode::OK),
            ("GET", "/nope", StatusCode::NOT_FOUND),
            ("POST", "/api/broadcast", StatusCode::NOT_FOUND),
        ] {
            let answer = call(&node, method(name), path, None).await;
            assert_eq!(answer.status, status, "{name} {path} without a token");
        }
        node.shutdown().await.unwrap();
    })
    .await;
}

/// On a node with tokens, the bearer token is meshage's own credential: handlers never see it,
/// while they see the client's other headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_do_not_see_the_api_token() {
    bounded(async {
        let file = usual_tokens();
        let node = meshage::init(gossip(&[]), "127.0.0.1:0")
            .register(
                "headers",
                |_data: serde_json::Value, header: meshage::Header| async move {
                    let seen: Vec<String> = header.headers.keys().map(|k| k.to_string()).collect();
                    Ok::<_, meshage::HandlerError>(serde_json::json!(seen))
                },
            )
            .config(NodeConfig::default().api_tokens(Some(Tokens::from_file(file.path()).unwrap())))
            .start()
            .await
            .unwrap();
        let answer = call(&node, Method::POST, "/api/headers/k", Some(FULL)).await;
        assert_eq!(answer.status, StatusCode::OK);
        let seen = answer.json();
        assert!(
            !seen
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == "authorization"),
            "{seen}"
        );
        node.shutdown().await.unwrap();
    })
    .await;
}

/// A token limited to `orders` sends, broadcasts and locates there and only there (403
/// elsewhere, as described), and may read the routes that name no stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limited_to_a_stream_is_refused_on_the_others() {
    bounded(async {
        let file = usual_tokens();
        let node = guarded_node(&file, &[], PeerProtocol::Link).await;
        let description = Description::of(&node).await;
        for (template, name, path) in &PROTECTED[..6] {
            let refused = call(&node, method(name), path, Some(ORDERS)).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{name} {path}");
            assert_eq!(
                refused.headers["www-authenticate"],
                r#"Bearer realm="meshage", error="insufficient_scope""#
            );
            description.check(template, &method(name), &refused);
            if *name != "HEAD" {
                assert_eq!(
                    refused.json()["error"],
                    "the API token may not use the stream `echo`"
                );
            }
            let full = call(&node, method(name), path, Some(FULL)).await;
            assert_eq!(full.status, StatusCode::OK, "{name} {path}");
        }
        let sent = call(&node, Method::POST, "/api/orders/alice", Some(ORDERS)).await;
        assert_eq!(sent.status, StatusCode::OK);
        assert_eq!(sent.json()["key"], "alice");
        // The stream is compared decoded: `%6Frders` is `orders`.
        let encoded = call(&node, Method::POST, "/api/%6Frders/k", Some(ORDERS)).await;
        assert_eq!(encoded.status, StatusCode::OK);
        for path in ["/api/services", "/api/members", "/api/status", "/metrics"] {
            let answer = call(&node, Method::GET, path, Some(ORDERS)).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}");
        }
        node.shutdown().await.unwrap();
    })
    .await;
}

/// Writes a request with a body of `len` bytes and no token over a raw socket, the whole body
/// before reading, then reads the answer's status line and `WWW-Authenticate`.
fn raw_post_without_token(address: &str, len: usize) -> (String, String) {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!("POST /api/echo/k HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&vec![b'x'; len]).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut challenge = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("www-authenticate:") {
            challenge = value.trim().to_owned();
        }
    }
    (status.trim().to_owned(), challenge)
}

/// A refusal comes before the body is read, and the rest of the body is read and dropped
/// after it: a client that writes 2 MiB before it reads still reads its 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_writes_its_whole_body_first_reads_its_401() {
    bounded(async {
        let file = usual_tokens();
        let node = guarded_node(&file, &[], PeerProtocol::Link).await;
        let address = node.local_addr().to_string();
        let (status, challenge) =
            tokio::task::spawn_blocking(move || raw_post_without_token(&address, 2 << 20))
                .await
                .unwrap();
        assert_eq!(status, "HTTP/1.1 401 Unauthorized");
        assert_eq!(challenge, r#"bearer realm="meshage""#);
        let answer = call(&node, Method::POST, "/api/echo/k", Some(FULL)).await;
        assert_eq!(answer.status, StatusCode::OK, "the node still serves");
        node.shutdown().await.unwrap();
    })
    .await;
}

/// The entry node checks the token; the forward to the owner carries none, over the peer link
/// and over HTTP alike, and runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_needs_the_token_at_the_entry_node_only() {
    bounded(async {
        let file = usual_tokens();
        let owner = guarded_node(&file, &[], PeerProtocol::Link).await;
        let seeds = vec![owner.seed_address().unwrap()];
        let by_link = guarded_node(&file, &seeds, PeerProtocol::Link).await;
        let by_http = guarded_node(&file, &seeds, PeerProtocol::Http1).await;
        let nodes = [owner, by_link, by_http];
        wait_converged(&nodes, 6).await;
        let target = nodes[0]
            .router()
            .local_services()
            .into_iter()
            .find(|s| &*s.stream == "orders")
            .unwrap()
            .id
            .to_string();
        for entry in &nodes[1..] {
            let url = format!("http://{}/api/orders/k", entry.local_addr());
            for token in [FULL, ORDERS] {
                let authorization = format!("Bearer {token}");
                let answer = Http::default()
                    .request(
                        Method::POST,
                        &url,
                        &[("authorization", &authorization), ("x-service-id", &target)],
                        "{}",
                    )
                    .await
                    .unwrap();
                assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
                assert_eq!(answer.json()["by"], target.as_str(), "ran on the owner");
            }
            let refused = Http::default()
                .request(Method::POST, &url, &[("x-service-id", &target)], "{}")
                .await
                .unwrap();
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        }
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    })
    .await;
}

/// A tokens file rewritten under a running node takes effect within seconds: the token added
/// works and the one removed stops working. A file that does not parse keeps the set before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_tokens_file_takes_effect_without_a_restart() {
    bounded(async {
        let file = TokenFile::new(&format!("{FULL}\n"));
        let tokens = Tokens::from_file(file.path()).unwrap();
        let node = node_with(tokens.clone(), &[], PeerProtocol::Link).await;
        let status_with = |token: &'static str| {
            let node = &node;
            async move {
                call(node, Method::GET, "/api/services", Some(token))
                    .await
                    .status
            }
        };
        assert_eq!(status_with(FULL).await, StatusCode::OK);
        assert_eq!(status_with(NEXT).await, StatusCode::UNAUTHORIZED);

        // Both for a while, as a rotation goes; then the new one only.
        file.write(&format!("{FULL}\n{NEXT}\n"));
        wait_until_async(Duration::from_secs(10), "the new token works", || async {
            status_with(NEXT).await == StatusCode::OK
        })
        .await;
        assert_eq!(status_with(FULL).await, StatusCode::OK);
        file.write(&format!("# rotated\n{NEXT}\n"));
        wait_until_async(
            Duration::from_secs(10),
            "the old token is refused",
            || async { status_with(FULL).await == StatusCode::UNAUTHORIZED },
        )
        .await;
        assert_eq!(status_with(NEXT).await, StatusCode::OK);

        // A file that does not parse (line 2) is not taken: the set before it stays. (The node's
        // own poll of it, and its warning, are in `a_token_never_shows_in_logs_answers_or_help`.)
        file.write(&format!("{FULL}\n{STRANGER} a,,b\n"));
        let error = tokens.reload().unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(
            !error.contains(STRANGER) && !error.contains(FULL),
            "{error}"
        );
        assert_eq!(status_with(NEXT).await, StatusCode::OK, "kept");
        assert_eq!(status_with(FULL).await, StatusCode::UNAUTHORIZED, "kept");
        node.shutdown().await.unwrap();
    })
    .await;
}

/// A client command's failure: exit code 5 and one line that says why, without the token.
fn assert_refused(run: &CliRun, says: &str) {
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
    assert!(run.stderr.contains("not authorized"), "{run:?}");
    assert!(run.stderr.contains(says), "{run:?}");
    for token in [FULL, ORDERS, STRANGER] {
        assert!(!run.stderr.contains(token), "{run:?}");
    }
}

/// `meshage send` and the other client commands send `--token` (or `MESHAGE_TOKEN`); without
/// one, or with one the node refuses, they exit 5 with a one-line error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_send_their_token() {
    bounded(async {
        let file = usual_tokens();
        let node = guarded_node(&file, &[], PeerProtocol::Link).await;
        let at = node.endpoint();
        let send = ["send", "orders", "alice", r#"{"qty": 2}"#, "--node", at];
        let run = meshage_cli(&[&send[..], &["--token", FULL]].concat(), &[], None);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(run.json()["echoed"]["qty"], 2);
        for args in [
            &["services", "--node", at][..],
            &["members", "--node", at],
            &["locate", "orders", "k", "--node", at],
            &["broadcast", "orders", "k", "--node", at],
            &send,
        ] {
            let run = meshage_cli(args, &[("MESHAGE_TOKEN", ORDERS)], None);
            assert_eq!(run.code, 0, "{args:?}: {run:?}");
        }
        assert_refused(&meshage_cli(&send, &[], None), "--token");
        assert_refused(
            &meshage_cli(&send, &[("MESHAGE_TOKEN", STRANGER)], None),
            "the API token is not valid (401",
        );
        let echo = ["send", "echo", "k", "--node", at, "--token", ORDERS];
        assert_refused(
            &meshage_cli(&echo, &[], None),
            "may not use the stream `echo` (403",
        );
        node.shutdown().await.unwrap();
    })
    .await;
}

/// A `meshage node` with tokens, logging at debug: requests with good, limited, unknown and no
/// tokens, through HTTP and the client commands, a rotation and a tokens file that does not
/// parse. No token ever shows in the node's log, in `/api/status` or `/metrics`, in a client
/// command's output, in `--help` with the token in the environment, or in a start-up error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_never_shows_in_logs_answers_or_help() {
    bounded(async {
        const SECRETS: [&str; 4] = [FULL, ORDERS, NEXT, STRANGER];
        let shows_none = |text: &str, what: &str| {
            for token in SECRETS {
                assert!(!text.contains(token), "{what} shows a token:\n{text}");
            }
        };
        let file = usual_tokens();
        let path = file.path().to_str().unwrap();
        let node = meshage_node_env(
            "node with tokens",
            &[],
            &["--api-tokens", path, "--echo", "echo", "--echo", "orders"],
            &[("RUST_LOG", "debug")],
        );
        let output = || node.proc.output();
        wait_until(
            Duration::from_secs(10),
            "the warning of no cluster key",
            || output().contains("peers are not authenticated"),
        )
        .await;
        let http = Http::default();
        let call = |path: &str, token: Option<&str>| {
            let url = format!("{}{path}", node.endpoint);
            let authorization = token.map(|t| format!("Bearer {t}"));
            let http = http.clone();
            async move {
                let headers: Vec<(&str, &str)> = authorization
                    .iter()
                    .map(|a| ("authorization", a.as_str()))
                    .collect();
                http.request(Method::POST, &url, &headers, "{}")
                    .await
                    .unwrap()
            }
        };
        for (path, token, status) in [
            ("/api/echo/k", Some(FULL), StatusCode::OK),
            ("/api/orders/k", Some(ORDERS), StatusCode::OK),
            ("/api/echo/k", Some(ORDERS), StatusCode::FORBIDDEN),
            ("/api/echo/k", Some(STRANGER), StatusCode::UNAUTHORIZED),
            ("/api/echo/k", None, StatusCode::UNAUTHORIZED),
        ] {
            let answer = call(path, token).await;
            assert_eq!(answer.status, status, "{path} {token:?}");
            shows_none(&String::from_utf8_lossy(&answer.body), "an answer");
        }
        for path in ["/api/status", "/metrics", "/", "/api/openapi.json"] {
            let answer = http
                .request(
                    Method::GET,
                    &format!("{}{path}", node.endpoint),
                    &[("authorization", &format!("Bearer {FULL}"))],
                    "",
                )
                .await
                .unwrap();
            assert_eq!(answer.status, StatusCode::OK, "{path}");
            shows_none(&String::from_utf8_lossy(&answer.body), path);
        }
        let debug = [("RUST_LOG", "debug")];
        for (token, code) in [(FULL, 0), (STRANGER, 5)] {
            let run = meshage_cli(
                &[
                    "send",
                    "echo",
                    "k",
                    "--node",
                    &node.endpoint,
                    "--token",
                    token,
                ],
                &debug,
                None,
            );
            assert_eq!(run.code, code, "{run:?}");
            shows_none(&format!("{}{}", run.stdout, run.stderr), "a client command");
        }

        // A rotation, then a file that does not parse: one warning naming its line, and the
        // set before it kept.
        file.write(&format!("{FULL}\n{NEXT}\n"));
        wait_until_async(Duration::from_secs(10), "the new token works", || async {
            call("/api/echo/k", Some(NEXT)).await.status == StatusCode::OK
        })
        .await;
        file.write(&format!("{NEXT}\n{STRANGER} orders,,audit\n"));
        let warning = "API tokens file not taken";
        wait_until(
            Duration::from_secs(10),
            "a warning about the bad file",
            || output().contains(warning),
        )
        .await;
        let warned = output();
        let line = warned.lines().find(|l| l.contains(warning)).unwrap();
        assert!(line.contains("line 2"), "{line}");
        assert_eq!(call("/api/echo/k", Some(FULL)).await.status, StatusCode::OK);
        assert_eq!(
            call("/api/echo/k", Some(STRANGER)).await.status,
            StatusCode::UNAUTHORIZED
        );
        file.write(&format!("{NEXT}\n"));
        wait_until_async(
            Duration::from_secs(10),
            "the old token is refused",
            || async { call("/api/echo/k", Some(FULL)).await.status == StatusCode::UNAUTHORIZED },
        )
        .await;
        let log = output();
        assert_eq!(log.matches(warning).count(), 1, "warned once:\n{log}");
        assert!(
            log.contains("request refused for its API token"),
            "the node logged at debug:\n{log}"
        );
        shows_none(&log, "the node's log");

        // --help shows neither the tokens file's name from the environment nor a token.
        for (args, var, value) in [
            (&["node", "--help"][..], "MESHAGE_API_TOKENS", path),
            (&["send", "--help"], "MESHAGE_TOKEN", FULL),
            (&["services", "--help"], "MESHAGE_TOKEN", FULL),
        ] {
            let run = meshage_cli(args, &[(var, value)], None);
            assert_eq!(run.code, 0, "{run:?}");
            assert!(run.stdout.contains(var), "{run:?}");
            assert!(!run.stdout.contains(value), "{args:?} shows {var}: {run:?}");
        }

        // A tokens file that cannot be used stops the node at start, naming the line.
        let bad = TokenFile::new(&format!("{FULL}\n{STRANGER} a b\n"));
        let missing = format!("{}.missing", bad.path().display());
        for (file, says) in [
            (bad.path().to_str().unwrap(), "line 2"),
            (&missing, "cannot read the API tokens file"),
        ] {
            let run = meshage_cli(
                &[
                    "node",
                    "--http-port",
                    "0",
                    "--cluster-port",
                    "0",
                    "--api-tokens",
                    file,
                ],
                &[],
                None,
            );
            assert_eq!(run.code, 1, "{run:?}");
            assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
            assert!(run.stderr.contains(says), "{run:?}");
            shows_none(&run.stderr, "a start-up error");
        }
    })
    .await;
}

/// The forward mark lets a peer's forward past the token check on message routes only, and
/// on a node with a cluster key only from a peer over mutual TLS: a client that adds
/// `X-Meshage-Hop` to skip its token gets 401 everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_mark_does_not_stand_in_for_a_token() {
    let file = usual_tokens();
    let unkeyed = guarded_node(&file, &[], PeerProtocol::Link).await;
    let keyed = meshage::init(gossip(&[]), "127.0.0.1:0")
        .register("echo", echo_by)
        .config(
            NodeConfig::default()
                .api_tokens(Some(Tokens::from_file(file.path()).unwrap()))
                .keys(Some(meshage::Keys::new(meshage::Keyring::new(
                    meshage::ClusterKey::generate(),
                )))),
        )
        .start()
        .await
        .expect("node starts");
    let hop = [("x-meshage-hop", "1"), ("content-type", "application/json")];
    for node in [&unkeyed, &keyed] {
        for (method, path) in [
            ("GET", "/api/status"),
            ("GET", "/metrics"),
            ("GET", "/api/members"),
        ] {
            let url = format!("http://{}{path}", node.local_addr());
            let answer = Http::default()
                .request(self::method(method), &url, &hop, "")
                .await
                .unwrap();
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path}: {answer:?}"
            );
        }
    }
    let url = format!("http://{}/api/echo/k", keyed.local_addr());
    let answer = Http::default()
        .request(Method::POST, &url, &hop, "{}")
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{answer:?}");
    unkeyed.shutdown().await.unwrap();
    keyed.shutdown().await.unwrap();
}
