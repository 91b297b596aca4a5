//! The status page in a real headless Chromium (Debian's `chromium`; `scripts/test.sh` installs
//! it): the rendered page lists every node of a 3-node cluster, draws each stream's ring, and
//! follows a node that leaves without being reloaded.
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
//! messages ending in a NUL byte, read from its fd 3 and written to its fd 4), set up with two
//! named pipes and `sh`, so the test needs no WebSocket client. Set
//! `MESHAGE_STATUS_SCREENSHOT=docs/status.png` to keep the screenshot it takes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use meshage::Node;
use serde_json::{json, Value};

use crate::common::*;

/// How long one DevTools call, or Chromium's start, may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium, killed on drop.
struct Browser {
    child: Child,
    to_browser: File,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    dir: PathBuf,
}

impl Browser {
    fn start() -> Browser {
        let dir = std::env::temp_dir().join(format!(
            "meshage-chromium-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, output) = (dir.join("in"), dir.join("out"));
        let made = Command::new("mkfifo").arg(&input).arg(&output).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<"$MESHAGE_CDP_IN" 4>"$MESHAGE_CDP_OUT""#)
            .arg(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1200,900",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg("about:blank")
            .env("MESHAGE_CDP_IN", &input)
            .env("MESHAGE_CDP_OUT", &output)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sh for {chromium}: {e}"));
        // Opening a named pipe waits for the other end, so open them on a thread with a deadline.
        let (opened_tx, opened) = mpsc::channel();
        std::thread::spawn(move || {
            let to = std::fs::OpenOptions::new().write(true).open(&input);
            let from = File::open(&output);
            let _ = opened_tx.send((to, from));
        });
        let (to_browser, mut reader) = match opened.recv_timeout(CALL_TIMEOUT) {
            Ok((Ok(to), Ok(from))) => (to, from),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
                panic!(
                    "{chromium} did not open its DevTools pipe ({:?}); is Debian's chromium \
                     installed (scripts/test.sh installs it)? Its output:\n{log}",
                    other.map(|(a, b)| (a.err(), b.err()))
                );
            }
        };
        let (tx, from_browser) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut chunk = [0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut chunk) {
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&chunk[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    let Ok(value) = serde_json::from_slice::<Value>(&message[..end]) else {
                        return;
                    };
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        Browser {
            child,
            to_browser,
            from_browser,
            next_id: 1,
            session: None,
            dir,
        }
    }

    /// Sends one DevTools command (to the attached page, once there is one) and returns its
    /// result; panics on an error or after [`CALL_TIMEOUT`].
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .expect("write to chromium");
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer to {method} from chromium: {e}"));
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method} failed: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page and attaches to it.
    fn open(&mut self, url: &str) {
        let target = self.call(
            "Target.createTarget",
            json!({ "url": url, "width": 1200, "height": 900, "newWindow": true }),
        );
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        self.session = attached["sessionId"].as_str().map(str::to_owned);
        self.call("Page.enable", json!({}));
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        );
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// A PNG of the page as it is now.
    fn screenshot(&mut self) -> Vec<u8> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64(shot["data"].as_str().expect("base64 data"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("----- chromium's last lines -----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Standard base64, as DevTools sends screenshots.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | (u32::from(d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Runs blocking browser calls without stalling the nodes on this runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Polls the page until `check` accepts what `expression` returns; panics after `timeout`.
async fn wait_for_page(
    browser: &mut Browser,
    timeout: Duration,
    what: &str,
    expression: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let value = blocking(|| browser.eval(expression));
        if check(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for the page to show {what}; last: {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `[[id, state], ...]` of the members table.
const MEMBERS: &str = "JSON.stringify([...document.querySelectorAll('#members tr[data-member]')]\
    .map(r => [r.dataset.member, r.dataset.state]))";

fn rows(value: &Value) -> Vec<(String, String)> {
    serde_json::from_str(value.as_str().unwrap_or("[]")).unwrap_or_default()
}

/// Three nodes: all serve `echo`, the first two `orders`, the third `audit`.
async fn cluster() -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let seeds: Vec<String> = nodes
            .iter()
            .take(1)
            .filter_map(|n| n.seed_address())
            .collect();
        let mut builder = meshage::init(gossip(&seeds), "127.0.0.1:0").register("echo", echo_by);
        builder = if i < 2 {
            builder.register("orders", echo_by)
        } else {
            builder.register("audit", echo_by)
        };
        nodes.push(builder.start().await.expect("node starts"));
    }
    wait_converged(&nodes, 6).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_every_node_and_follows_a_leave() {
    let test = async {
        let mut nodes = cluster().await;
        // Steady traffic, so that the page has rates to show; it stops with the test.
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = {
            let (stop, urls) = (
                stop.clone(),
                nodes
                    .iter()
                    .map(|n| n.endpoint().to_owned())
                    .collect::<Vec<_>>(),
            );
            tokio::spawn(async move {
                let http = Http::default();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 100_000 {
                    let stream = if i.is_multiple_of(3) {
                        "orders"
                    } else {
                        "echo"
                    };
                    let _ = http
                        .request(
                            http::Method::POST,
                            &format!("{}/api/{stream}/key-{i}", urls[i as usize % 2]),
                            &[],
                            "{}",
                        )
                        .await;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let mut browser = blocking(Browser::start);
        blocking(|| browser.open(&format!("{}/", nodes[0].endpoint())));

        let ids: HashSet<String> = nodes.iter().map(|n| n.id().to_owned()).collect();
        wait_for_page(
            &mut browser,
            Duration::from_secs(20),
            "three live members",
            MEMBERS,
            |v| {
                let rows = rows(v);
                rows.len() == 3
                    && rows
                        .iter()
                        .all(|(id, state)| ids.contains(id) && state == "live")
            },
        )
        .await;
        // One ring per stream, with a legend row per service.
        let rings = blocking(|| {
            browser.eval(
                "JSON.stringify([...document.querySelectorAll('#streams [data-stream]')].map(s => \
                 [s.dataset.stream, s.querySelectorAll('[data-service]').length, \
                  s.querySelectorAll('svg path, svg circle').length > 1]))",
            )
        });
        let rings: Vec<(String, usize, bool)> =
            serde_json::from_str(rings.as_str().unwrap()).unwrap();
        assert_eq!(
            rings,
            [
                ("audit".into(), 1, true),
                ("echo".into(), 3, true),
                ("orders".into(), 2, true)
            ]
        );
        wait_for_page(
            &mut browser,
            Duration::from_secs(20),
            "a request rate for echo",
            "document.querySelector('[data-rate=\"echo\"]').textContent",
            |v| {
                v.as_str()
                    .and_then(|r| r.parse::<f64>().ok())
                    .is_some_and(|r| r > 0.0)
            },
        )
        .await;
        let png = blocking(|| browser.screenshot());
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "a screenshot"
        );
        if let Ok(path) = std::env::var("MESHAGE_STATUS_SCREENSHOT") {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
            std::fs::write(&path, &png).unwrap();
            eprintln!("screenshot written to {}", path.display());
        }

        // A node leaves; the page, never reloaded, shows it going and says so in its events.
        blocking(|| browser.eval("window.meshageMarker = 'not reloaded'"));
        let gone = nodes.pop().unwrap();
        let gone_id = gone.id().to_owned();
        gone.shutdown().await.unwrap();
        let shown = format!(
            "JSON.stringify({{members: {MEMBERS}, marker: window.meshageMarker || null, \
             events: [...document.querySelectorAll('#events [data-event-node=\"{gone_id}\"]')]\
             .map(e => e.dataset.eventKind)}})"
        );
        wait_for_page(
            &mut browser,
            Duration::from_secs(20),
            "the node leaving",
            &shown,
            |v| {
                let v: Value = serde_json::from_str(v.as_str().unwrap()).unwrap();
                let members = rows(&v["members"]);
                let gone_state = members
                    .iter()
                    .find(|(id, _)| *id == gone_id)
                    .map(|(_, s)| s.as_str());
                let others_live = members
                    .iter()
                    .filter(|(id, _)| *id != gone_id)
                    .all(|(_, state)| state == "live");
                let told = v["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|k| k == "leaving" || k == "dead"));
                assert_eq!(
                    v["marker"], "not reloaded",
                    "the page refreshes itself without reloading"
                );
                matches!(gone_state, Some("leaving" | "dead") | None) && others_live && told
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        let _ = traffic.await;
        drop(browser);
        for node in nodes {
            node.shutdown().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the status page test finishes within 2 minutes");
}

/// Types `token` into the page's token form and submits it.
fn enter_token(browser: &mut Browser, token: &str) {
    browser.eval(&format!(
        "document.getElementById('token-input').value = {}; \
         document.getElementById('token-form').requestSubmit(); true",
        json!(token)
    ));
}

/// `{box: whether the token form shows, why: what it says, members: [...], stored: the
/// token in sessionStorage}`; while the page is still loading, `box` is false and `why` says
/// why.
const TOKEN_STATE: &str = "(() => { try { return JSON.stringify({\
    box: !document.getElementById('token-box').hidden, \
    why: document.getElementById('token-why').textContent, \
    members: document.querySelectorAll('#members tr[data-member]').length, \
    stored: sessionStorage.getItem('meshage-api-token')}); \
    } catch (e) { return JSON.stringify({box: false, why: String(e), members: 0, stored: null}); } \
    })()";

/// On a node with API tokens the page itself opens, finds that `/api/status` answers 401 and
/// asks for a token; a refused token is asked for again, and once a good one is entered the
/// page shows the node, sending the token with every fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_asks_for_a_token_when_the_node_needs_one() {
    let test = async {
        const TOKEN: &str = "page-token-0123456789";
        let tokens = meshage::ApiTokens::parse(TOKEN).unwrap();
        let node = meshage::init(gossip(&[]), "127.0.0.1:0")
            .register("echo", echo_by)
            .config(meshage::NodeConfig::default().api_tokens(Some(meshage::Tokens::new(tokens))))
            .start()
            .await
            .expect("node starts");
        let mut browser = blocking(Browser::start);
        blocking(|| browser.open(&format!("{}/", node.endpoint())));
        let state = |v: &Value| -> Value { serde_json::from_str(v.as_str().unwrap()).unwrap() };
        wait_for_page(
            &mut browser,
            Duration::from_secs(20),
            "the token form",
            TOKEN_STATE,
            |v| state(v)["box"] == true,
        )
        .await;
        let asked = state(&blocking(|| browser.eval(TOKEN_STATE)));
        assert_eq!(
            asked["members"], 0,
            "nothing shown without a token: {asked}"
        );
        assert_eq!(asked["why"], "This node asks for an API token.");

        blocking(|| enter_token(&mut browser, "wrong-token-0123456789"));
        wait_for_page(
            &mut browser,
            Duration::from_secs(20),
            "the token refused",
            TOKEN_STATE,
            |v| {
                let v = state(v);
                v["box"] == true && v["why"].as_str().unwrap().contains("refused")
            },
        )
        .await;
        assert_eq!(
            state(&blocking(|| browser.eval(TOKEN_STATE)))["stored"],
            Value::Null,
            "a refused token is forgotten"
        );

        blocking(|| enter_token(&mut browser, TOKEN));
        let shown = wait_for_page(
            &mut browser,
            Duration::from_secs(20),
            "the node, with the token",
            TOKEN_STATE,
            |v| {
                let v = state(v);
                v["box"] == false && v["members"] == 1
            },
        )
        .await;
        assert_eq!(state(&shown)["stored"], TOKEN);
        // The page keeps refreshing with the token: the node's clock moves on the page.
        let updated = "document.getElementById('updated').textContent";
        let first = blocking(|| browser.eval(updated));
        wait_for_page(
            &mut browser,
            Duration::from_secs(20),
            "a later refresh",
            updated,
            |v| *v != first,
        )
        .await;
        drop(browser);
        node.shutdown().await.unwrap();
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the status page test finishes within 2 minutes");
}
