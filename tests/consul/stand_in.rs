//! A stand-in for a Consul agent's HTTP API, in-process, because no Consul agent can be
//! installed or run on these machines. It implements the endpoints meshage (and the original's
//! `ConsulCluster`) use, with Consul's documented semantics:
//!
//! - `PUT /v1/agent/join/<address>`: records the address, answers 200.
//! - `PUT /v1/agent/service/register`: `ID`, `Name`, `Address`, `Port`, `Tags`, `Meta`, and one
//!   `Check` with `HTTP`, `Interval`, `Timeout`, `DeregisterCriticalServiceAfter`, `Status`.
//!   Registering an existing ID replaces it.
//! - `PUT /v1/agent/service/deregister/<id>`.
//! - `GET /v1/agent/services`, `GET /v1/agent/checks` (with `Type` and `Definition`).
//! - `GET /v1/catalog/services`: every service name with the union of its tags, `consul` too.
//! - `GET /v1/health/service/<name>`, with `passing` keeping the instances whose checks all pass.
//!
//! Blocking queries: every answer carries `X-Consul-Index`. One index covers the whole state and
//! moves on every change (a registration, a deregistration, a check changing status), which the
//! documentation allows: an index may move for changes that do not touch the result. A request
//! with `index=N` waits until the index passes N or `wait` elapses (Go duration, default 5m,
//! capped at 10m; no jitter), then answers the current state.
//!
//! TLS: started with [`ConsulStandIn::start_tls`], it serves its API over HTTPS only, as an
//! agent with `ports { http = -1, https = 8501 }` does.
//!
//! ACL: when made with a token, requests must carry it in `X-Consul-Token` (or `?token=`);
//! others get 403 `Permission denied`, as an agent with `default_policy = deny` answers.
//!
//! Checks: the stand-in runs each HTTP check itself, as an agent does: at once on registration
//! (an agent staggers the first run within the interval), then every `Interval`, with `Timeout`
//! (default 10 s). 2xx is passing, 429 warning, anything else or no answer critical. A check
//! starts `critical` unless `Status` says otherwise. A service critical for longer than
//! `DeregisterCriticalServiceAfter` is deregistered (an agent enforces at least a minute and
//! reaps every 30 s; the stand-in honours what it is given).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::common::Http;

/// Parses a Go duration (`5s`, `1500ms`, `1m30s`, `10m0s`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest == "0" {
        return Some(total);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(number * seconds);
    }
    Some(total)
}

struct CheckDef {
    http: String,
    interval: Duration,
    timeout: Duration,
    deregister_after: Option<Duration>,
    /// The definition as registered, for `/v1/agent/checks`.
    raw: Value,
}

struct Registered {
    /// `ID`, `Service`, `Tags`, `Address`, `Port`, `Meta` as the agent lists them.
    service: Value,
    check: Option<CheckDef>,
    status: String,
    critical_since: Option<Instant>,
    /// Runs the check; aborted when the service goes.
    runner: Option<JoinHandle<()>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(runner) = self.runner.take() {
            runner.abort();
        }
    }
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, Registered>,
    joins: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    index: watch::Sender<u64>,
    token: Option<String>,
    http: Http,
}

impl Shared {
    fn bump(&self) {
        self.index.send_modify(|i| *i += 1);
    }
}

/// The stand-in agent; it stops when dropped, or, once every connection is closed, when
/// [`ConsulStandIn::stop`] returns.
pub struct ConsulStandIn {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl ConsulStandIn {
    /// Starts on a free loopback port; with `token`, every request must carry it.
    pub async fn start(token: Option<&str>) -> ConsulStandIn {
        ConsulStandIn::start_on("127.0.0.1:0", token).await
    }

    /// Starts on `addr`: a restarted agent, with no state, where the old one was. Rebinding a
    /// port that was just let go is retried for a while.
    pub async fn start_on(addr: &str, token: Option<&str>) -> ConsulStandIn {
        ConsulStandIn::serve(addr, token, None).await
    }

    /// Starts on a free loopback port, serving HTTPS with `tls`'s certificate.
    pub async fn start_tls(token: Option<&str>, tls: TlsAcceptor) -> ConsulStandIn {
        ConsulStandIn::serve("127.0.0.1:0", token, Some(tls)).await
    }

    async fn serve(addr: &str, token: Option<&str>, tls: Option<TlsAcceptor>) -> ConsulStandIn {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let mut http = Http::default();
        http.timeout = Duration::from_secs(10);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            index: watch::channel(1).0,
            token: token.map(str::to_owned),
            http,
        });
        let serving = shared.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = &mut stopped => break,
                };
                let Ok((stream, _)) = accepted else {
                    break;
                };
                let shared = serving.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    let http = http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            // A client that does not trust the certificate hangs up here.
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
                while connections.try_join_next().is_some() {}
            }
            // Stop listening, then close every open connection and wait until each is gone.
            drop(listener);
            connections.shutdown().await;
        });
        ConsulStandIn {
            addr,
            shared,
            task: Some(task),
            stop: Some(stop),
        }
    }

    /// Stops the agent and returns once its port is closed and every connection to it is
    /// gone: from then on, every request to it fails. (Dropping only aborts the serving task,
    /// which a runtime worker may still be running for a moment.)
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// The addresses agents were asked to join.
    pub fn joins(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().joins.clone()
    }

    /// The status of a service's check, if the service is registered.
    pub fn status(&self, service_id: &str) -> Option<String> {
        let state = self.shared.state.lock().unwrap();
        state.services.get(service_id).map(|s| s.status.clone())
    }
}

impl Drop for ConsulStandIn {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
        self.shared.state.lock().unwrap().services.clear();
    }
}

fn respond(status: StatusCode, index: Option<u64>, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if let Some(index) = index {
        response
            .headers_mut()
            .insert("x-consul-index", index.to_string().parse().unwrap());
    }
    response
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_owned())));
    *response.status_mut() = status;
    response
}

fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                k.to_owned(),
                percent_decode_str(v).decode_utf8_lossy().into_owned(),
            )
        })
        .collect()
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let params = query_params(request.uri().query());
    if let Some(token) = &shared.token {
        let given = request
            .headers()
            .get("x-consul-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| params.get("token").cloned());
        if given.as_deref() != Some(token.as_str()) {
            return Ok(text(StatusCode::FORBIDDEN, "Permission denied"));
        }
    }
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(text(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let segment = |prefix: &str| {
        path.strip_prefix(prefix)
            .map(|rest| percent_decode_str(rest).decode_utf8_lossy().into_owned())
    };
    let response = if method == Method::PUT {
        if let Some(address) = segment("/v1/agent/join/") {
            shared.state.lock().unwrap().joins.push(address);
            text(StatusCode::OK, "")
        } else if path == "/v1/agent/service/register" {
            register(&shared, &body)
        } else if let Some(id) = segment("/v1/agent/service/deregister/") {
            let removed = shared.state.lock().unwrap().services.remove(&id);
            match removed {
                Some(_) => {
                    shared.bump();
                    text(StatusCode::OK, "")
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    &format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
                ),
            }
        } else {
            text(StatusCode::NOT_FOUND, "no such endpoint in the stand-in")
        }
    } else if method == Method::GET {
        if path == "/v1/agent/services" {
            let state = shared.state.lock().unwrap();
            let services: serde_json::Map<String, Value> = state
                .services
                .iter()
                .map(|(id, s)| (id.clone(), s.service.clone()))
                .collect();
            respond(StatusCode::OK, None, Value::Object(services))
        } else if path == "/v1/agent/checks" {
            let state = shared.state.lock().unwrap();
            let checks: serde_json::Map<String, Value> = state
                .services
                .iter()
                .filter_map(|(id, s)| {
                    let check = s.check.as_ref()?;
                    Some((
                        format!("service:{id}"),
                        json!({
                            "CheckID": format!("service:{id}"),
                            "ServiceID": id,
                            "ServiceName": s.service["Service"],
                            "Status": s.status,
                            "Type": "http",
                            "Definition": check.raw,
                        }),
                    ))
                })
                .collect();
            respond(StatusCode::OK, None, Value::Object(checks))
        } else if path == "/v1/catalog/services" {
            let index = block(&shared, &params).await;
            let state = shared.state.lock().unwrap();
            let mut names: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            names.insert("consul".into(), Vec::new());
            for s in state.services.values() {
                let tags = names
                    .entry(s.service["Service"].as_str().unwrap_or("").to_owned())
                    .or_default();
                for tag in s.service["Tags"].as_array().into_iter().flatten() {
                    if !tags.contains(tag) {
                        tags.push(tag.clone());
                    }
                }
            }
            respond(StatusCode::OK, Some(index), json!(names))
        } else if let Some(name) = segment("/v1/health/service/") {
            let index = block(&shared, &params).await;
            let passing_only = params.contains_key("passing");
            let state = shared.state.lock().unwrap();
            let entries: Vec<Value> = state
                .services
                .iter()
                .filter(|(_, s)| s.service["Service"] == name.as_str())
                .filter(|(_, s)| !passing_only || s.status == "passing")
                .map(|(id, s)| {
                    let mut checks = vec![json!({
                        "Node": "stand-in", "CheckID": "serfHealth", "Name": "Serf Health Status",
                        "Status": "passing", "ServiceID": "", "ServiceName": "",
                    })];
                    if s.check.is_some() {
                        checks.push(json!({
                            "Node": "stand-in", "CheckID": format!("service:{id}"),
                            "Status": s.status, "ServiceID": id, "ServiceName": name,
                        }));
                    }
                    json!({
                        "Node": {"Node": "stand-in", "Address": "127.0.0.1"},
                        "Service": s.service,
                        "Checks": checks,
                    })
                })
                .collect();
            respond(StatusCode::OK, Some(index), Value::Array(entries))
        } else {
            text(StatusCode::NOT_FOUND, "no such endpoint in the stand-in")
        }
    } else {
        text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    };
    Ok(response)
}

/// Waits as a blocking query does; the index to answer with.
async fn block(shared: &Shared, params: &BTreeMap<String, String>) -> u64 {
    let mut index = shared.index.subscribe();
    let Some(wanted) = params.get("index").and_then(|i| i.parse::<u64>().ok()) else {
        return *index.borrow();
    };
    let wait = params
        .get("wait")
        .and_then(|w| parse_go_duration(w))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600));
    let _ = tokio::time::timeout(wait, index.wait_for(|i| *i > wanted)).await;
    let current = *index.borrow();
    current
}

fn register(shared: &Arc<Shared>, body: &[u8]) -> Response<Full<Bytes>> {
    let Ok(definition) = serde_json::from_slice::<Value>(body) else {
        return text(StatusCode::BAD_REQUEST, "Request decode failed");
    };
    let Some(name) = definition["Name"].as_str().filter(|n| !n.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, "Missing service name");
    };
    let id = definition["ID"].as_str().unwrap_or(name).to_owned();
    let service = json!({
        "ID": id,
        "Service": name,
        "Tags": definition.get("Tags").cloned().unwrap_or(json!([])),
        "Meta": definition.get("Meta").cloned().unwrap_or(json!({})),
        "Address": definition.get("Address").cloned().unwrap_or(json!("")),
        "Port": definition.get("Port").cloned().unwrap_or(json!(0)),
    });
    let check = match definition.get("Check").filter(|c| !c.is_null()) {
        None => None,
        Some(c) => {
            let duration = |field: &str| c[field].as_str().and_then(parse_go_duration);
            let (Some(http), Some(interval)) = (c["HTTP"].as_str(), duration("Interval")) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the stand-in runs HTTP checks only: HTTP and Interval are required",
                );
            };
            Some(CheckDef {
                http: http.to_owned(),
                interval,
                timeout: duration("Timeout").unwrap_or(Duration::from_secs(10)),
                deregister_after: duration("DeregisterCriticalServiceAfter"),
                raw: c.clone(),
            })
        }
    };
    let status = match &check {
        None => "passing".to_owned(),
        Some(c) => c.raw["Status"].as_str().unwrap_or("critical").to_owned(),
    };
    let runner = check.as_ref().map(|c| {
        tokio::spawn(run_check(
            Arc::downgrade(shared),
            id.clone(),
            c.http.clone(),
            c.interval,
            c.timeout,
        ))
    });
    let registered = Registered {
        service,
        critical_since: (status == "critical").then(Instant::now),
        status,
        check,
        runner,
    };
    shared.state.lock().unwrap().services.insert(id, registered);
    shared.bump();
    text(StatusCode::OK, "")
}

/// Runs one service's HTTP check until the service goes.
async fn run_check(
    shared: std::sync::Weak<Shared>,
    id: String,
    url: String,
    interval: Duration,
    timeout: Duration,
) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut http = shared.http.clone();
        http.timeout = timeout;
        let answer = http
            .request(Method::GET, &url, &[], Bytes::new())
            .await
            .map(|a| a.status);
        let status = match answer {
            Ok(code) if code.is_success() => "passing",
            Ok(StatusCode::TOO_MANY_REQUESTS) => "warning",
            _ => "critical",
        };
        let changed = {
            let mut state = shared.state.lock().unwrap();
            let Some(service) = state.services.get_mut(&id) else {
                return;
            };
            let changed = service.status != status;
            if changed {
                service.status = status.to_owned();
                service.critical_since = (status == "critical").then(Instant::now);
            }
            let reap = service
                .check
                .as_ref()
                .and_then(|c| c.deregister_after)
                .zip(service.critical_since)
                .is_some_and(|(after, since)| since.elapsed() >= after);
            if reap {
                // Dropping the registration would abort this very task; take the handle first.
                let _ = service.runner.take();
                state.services.remove(&id);
                drop(state);
                shared.bump();
                return;
            }
            changed
        };
        if changed {
            shared.bump();
        }
        drop(shared);
        tokio::time::sleep(interval).await;
    }
}

/// Where the Consul tests find an agent: the stand-in, or a real one when `CONSUL_HTTP_ADDR` is
/// set (with `CONSUL_HTTP_TOKEN` as its token).
pub enum Agent {
    StandIn(ConsulStandIn),
    Real { addr: String, token: Option<String> },
}

impl Agent {
    /// A real agent when `CONSUL_HTTP_ADDR` is set, else a new stand-in (with `token`, if given).
    pub async fn start(token: Option<&str>) -> Agent {
        match std::env::var("CONSUL_HTTP_ADDR") {
            Ok(addr) if !addr.trim().is_empty() => Agent::Real {
                addr: addr.trim().to_owned(),
                token: std::env::var("CONSUL_HTTP_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            },
            _ => Agent::StandIn(ConsulStandIn::start(token).await),
        }
    }

    /// `host:port` (or the URL) of the agent's HTTP API.
    pub fn addr(&self) -> String {
        match self {
            Agent::StandIn(s) => s.addr.to_string(),
            Agent::Real { addr, .. } => addr.clone(),
        }
    }

    pub fn url(&self) -> String {
        let addr = self.addr();
        if addr.contains("://") {
            addr
        } else {
            format!("http://{addr}")
        }
    }

    /// The token requests need: the stand-in's, or `CONSUL_HTTP_TOKEN` for a real agent.
    pub fn token(&self) -> Option<String> {
        match self {
            Agent::StandIn(s) => s.shared.token.clone(),
            Agent::Real { token, .. } => token.clone(),
        }
    }

    pub fn stand_in(&self) -> Option<&ConsulStandIn> {
        match self {
            Agent::StandIn(s) => Some(s),
            Agent::Real { .. } => None,
        }
    }

    /// Calls the agent's API with its token; the answer's body as JSON (null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let token = self.token();
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(token) = &token {
            headers.push(("x-consul-token", token));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let answer = Http::default()
            .request(method, &format!("{}{path}", self.url()), &headers, body)
            .await
            .expect("the agent answers");
        let value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        (answer.status, value)
    }
}
