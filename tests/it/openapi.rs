//! The API description against real answers: a node serves it at `GET /api/openapi.json`, and
//! the answers of every route of a small cluster (successes, and an error of each kind) have a
//! status the description lists for that route, the headers it requires, and a body its schema
//! admits. The schemas are checked by a small checker of the JSON Schema subset the description
//! uses; `scripts/schemathesis.sh` runs schemathesis for generated requests.

use std::time::Duration;

use crate::api::bounded;
use crate::common::{echo_by, echo_cluster, gossip, wait_until, Answer, Http};
use bytes::Bytes;
use http::{Method, StatusCode};
use meshage::{HandlerError, Header, Node, NodeConfig};
use serde_json::{json, Value};

/// The methods an operation may be described under, in the order `Allow` lists them.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::HEAD,
    Method::OPTIONS,
];

/// The description a node serves; `tokens.rs` checks the refusals of a node with tokens
/// against it.
pub(crate) struct Description(Value);

impl Description {
    pub(crate) async fn of(node: &Node) -> Description {
        let answer = Http::default()
            .get(&format!("http://{}/api/openapi.json", node.local_addr()))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["content-type"], "application/json");
        let doc = answer.json();
        assert_eq!(doc["openapi"], "3.1.0");
        Description(doc)
    }

    /// `value`, or what its `$ref` points at.
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r
                    .strip_prefix('#')
                    .expect("a reference inside the document");
                self.resolve(self.0.pointer(pointer).unwrap_or_else(|| panic!("{r}")))
            }
            None => value,
        }
    }

    fn path(&self, template: &str) -> &Value {
        self.0["paths"]
            .get(template)
            .unwrap_or_else(|| panic!("{template} is not described"))
    }

    /// The methods described for `template`, as `Allow` names them (HEAD goes with GET).
    fn allowed(&self, template: &str) -> Vec<Method> {
        let item = self.path(template);
        METHODS
            .into_iter()
            .filter(|m| *m != Method::HEAD && item.get(m.as_str().to_lowercase()).is_some())
            .collect()
    }

    /// Checks `answer` to `method` on the route `template` against the description: its status
    /// is described for the operation (exactly, or by its range), its required headers are
    /// there and every described header it carries fits its schema, its content type is one
    /// described, and its body fits that content's schema.
    pub(crate) fn check(&self, template: &str, method: &Method, answer: &Answer) {
        let what = format!("{method} {template} answered {}", answer.status);
        let operation = self
            .path(template)
            .get(method.as_str().to_lowercase())
            .unwrap_or_else(|| panic!("{method} {template} is not described"));
        let responses = &operation["responses"];
        let code = answer.status.as_u16();
        let response = [
            code.to_string(),
            format!("{}XX", code / 100),
            "default".into(),
        ]
        .iter()
        .find_map(|key| responses.get(key))
        .unwrap_or_else(|| panic!("{what}: an undocumented status"));
        self.check_response(&what, self.resolve(response), method, answer);
    }

    /// Checks an answer that no operation describes (a method a route does not take, a path
    /// that is no route) against `#/components/responses/{name}`.
    fn check_common(&self, name: &str, method: &Method, answer: &Answer) {
        let response = &self.0["components"]["responses"][name];
        assert!(response.is_object(), "components/responses/{name}");
        let what = format!("{method} answered {} ({name})", answer.status);
        self.check_response(&what, response, method, answer);
    }

    fn check_response(&self, what: &str, response: &Value, method: &Method, answer: &Answer) {
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            for (name, header) in headers {
                let header = self.resolve(header);
                let value = answer.headers.get(name.as_str());
                let required = header["required"] == json!(true);
                assert!(value.is_some() || !required, "{what}: no {name} header");
                if let Some(value) = value {
                    let value = json!(value.to_str().expect("a visible header value"));
                    self.validate(&header["schema"], &value, &format!("header {name}"))
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                }
            }
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(
                answer.body.is_empty(),
                "{what}: a body the description has no content for"
            );
            return;
        };
        if *method == Method::HEAD {
            assert!(answer.body.is_empty(), "{what}: HEAD answered a body");
            return;
        }
        let content_type = answer.headers["content-type"].to_str().unwrap();
        let media = content_type.split(';').next().unwrap().trim();
        let schema = &content
            .get(media)
            .unwrap_or_else(|| panic!("{what}: content type {content_type} is not described"))
            ["schema"];
        let body = if media == "application/json" {
            serde_json::from_slice(&answer.body)
                .unwrap_or_else(|e| panic!("{what}: the body is not JSON: {e}"))
        } else {
            json!(std::str::from_utf8(&answer.body).expect("a text body is UTF-8"))
        };
        self.validate(schema, &body, "body")
            .unwrap_or_else(|e| panic!("{what}: {e}\nbody: {body}"));
    }

    /// Whether `value` fits `schema`: the subset of JSON Schema 2020-12 the description uses.
    /// An unknown keyword fails, so that the checker never passes what it does not read.
    /// (`pattern` is left to schemathesis; the trace header is checked by hand below.)
    fn validate(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let Some(schema) = schema.as_object() else {
            return match schema {
                Value::Bool(true) => Ok(()),
                _ => Err(format!("{at}: schema {schema} admits nothing")),
            };
        };
        let fail = |why: String| Err(format!("{at}: {why}, not {value}"));
        for (keyword, rule) in schema {
            match keyword.as_str() {
                "$ref" => self.validate(self.resolve(&json!({ "$ref": rule })), value, at)?,
                "type" => {
                    let types: Vec<&str> = match rule {
                        Value::String(t) => vec![t.as_str()],
                        _ => rule
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter_map(Value::as_str)
                            .collect(),
                    };
                    let fits = |t: &str| match t {
                        "object" => value.is_object(),
                        "array" => value.is_array(),
                        "string" => value.is_string(),
                        "boolean" => value.is_boolean(),
                        "null" => value.is_null(),
                        "number" => value.is_number(),
                        "integer" => value.is_i64() || value.is_u64(),
                        other => panic!("type {other}"),
                    };
                    if !types.iter().any(|t| fits(t)) {
                        return fail(format!("type {rule}"));
                    }
                }
                "const" if value != rule => return fail(format!("const {rule}")),
                "enum" if !rule.as_array().unwrap().contains(value) => {
                    return fail(format!("one of {rule}"));
                }
                "required" => {
                    if let Some(object) = value.as_object() {
                        for name in rule.as_array().unwrap() {
                            if !object.contains_key(name.as_str().unwrap()) {
                                return fail(format!("required {name}"));
                            }
                        }
                    }
                }
                "properties" | "additionalProperties" => {
                    let Some(object) = value.as_object() else {
                        continue;
                    };
                    for (name, v) in object {
                        let declared = schema.get("properties").and_then(|p| p.get(name));
                        let sub = match (keyword.as_str(), declared) {
                            ("properties", Some(sub)) => sub,
                            ("additionalProperties", None) => rule,
                            _ => continue,
                        };
                        self.validate(sub, v, &format!("{at}.{name}"))?;
                    }
                }
                "items" => {
                    for (i, item) in value.as_array().into_iter().flatten().enumerate() {
                        self.validate(rule, item, &format!("{at}[{i}]"))?;
                    }
                }
                "minItems" | "maxItems" => {
                    if let Some(items) = value.as_array() {
                        let bound = rule.as_u64().unwrap() as usize;
                        let ok = if keyword == "minItems" {
                            items.len() >= bound
                        } else {
                            items.len() <= bound
                        };
                        if !ok {
                            return fail(format!("{keyword} {bound}"));
                        }
                    }
                }
                "minimum" | "maximum" => {
                    if let (Some(v), Some(bound)) = (value.as_f64(), rule.as_f64()) {
                        let ok = if keyword == "minimum" {
                            v >= bound
                        } else {
                            v <= bound
                        };
                        if !ok {
                            return fail(format!("{keyword} {bound}"));
                        }
                    }
                }
                "minLength" => {
                    if let Some(s) = value.as_str() {
                        if s.chars().count() < rule.as_u64().unwrap() as usize {
                            return fail(format!("minLength {rule}"));
                        }
                    }
                }
                "anyOf" => {
                    let errors: Vec<String> = rule
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|sub| self.validate(sub, value, at).err())
                        .collect();
                    if errors.len() == rule.as_array().unwrap().len() {
                        return fail(format!("none of anyOf: {errors:?}"));
                    }
                }
                "const" | "enum" | "description" | "examples" | "pattern" => {}
                other => panic!("{at}: the checker does not know the keyword {other}"),
            }
        }
        Ok(())
    }
}

/// A handler that fails: 500.
async fn boom(_data: Value, _header: Header) -> Result<Value, HandlerError> {
    Err(HandlerError::internal("boom"))
}

/// A handler that answers after a while: past a short deadline.
async fn slow(_data: Value, _header: Header) -> Result<Value, HandlerError> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(json!("late"))
}

/// One request and the answer the test expects of it.
struct Case<'a> {
    node: &'a Node,
    method: Method,
    /// The route as the description names it.
    template: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
    status: StatusCode,
}

fn case<'a>(
    node: &'a Node,
    method: Method,
    template: &'static str,
    path: impl Into<String>,
    status: StatusCode,
) -> Case<'a> {
    Case {
        node,
        method,
        template,
        path: path.into(),
        headers: vec![("content-type", "application/json".into())],
        body: "",
        status,
    }
}

impl Case<'_> {
    fn body(mut self, body: &'static str) -> Self {
        self.body = body;
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    async fn send(&self, http: &Http) -> Answer {
        let url = format!("http://{}{}", self.node.local_addr(), self.path);
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (*n, &**v)).collect();
        let answer = http
            .request(self.method.clone(), &url, &headers, Bytes::from(self.body))
            .await
            .unwrap();
        assert_eq!(
            answer.status,
            self.status,
            "{} {}: {}",
            self.method,
            self.path,
            String::from_utf8_lossy(&answer.body)
        );
        answer
    }
}

const SEND: &str = "/api/{stream}/{partitionKey}";
const BROADCAST: &str = "/api/broadcast/{stream}/{partitionKey}";
const SEND_KEYLESS: &str = "/api/{stream}";
const BROADCAST_KEYLESS: &str = "/api/broadcast/{stream}";
const LOCATE: &str = "/api/locate/{stream}/{partitionKey}";

/// Answers of every route of a 4-node cluster, and an error of each kind, fit the description
/// the nodes serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_fit_the_description() {
    bounded(async {
        let nodes = echo_cluster(3).await;
        let seed = vec![nodes[0].seed_address().unwrap()];
        // Streams that fail, on a node of their own with a small body limit.
        let odd = meshage::init(gossip(&seed), "127.0.0.1:0")
            .register("boom", boom)
            .register("slow", slow)
            .config(NodeConfig::default().body_limit(64))
            .start()
            .await
            .unwrap();
        wait_until(
            Duration::from_secs(10),
            "every node sees 5 services",
            || {
                nodes
                    .iter()
                    .chain([&odd])
                    .all(|n| n.router().table().services.len() == 5)
            },
        )
        .await;
        // A node that takes no message at all: every send is shed.
        let full = meshage::init(gossip(&[]), "127.0.0.1:0")
            .register("echo", echo_by)
            .config(NodeConfig::default().max_in_flight(0))
            .start()
            .await
            .unwrap();
        let (a, b) = (&nodes[0], &nodes[1]);
        let description = Description::of(a).await;
        let http = Http::default();
        let service_of = |node: &Node| node.router().local_services()[0].id.to_string();
        let (ok, bad, not_found) = (
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
        );

        let get = Method::GET;
        let post = Method::POST;
        let head = Method::HEAD;
        let cases = [
            // Messages, through the node that owns the key or another.
            case(a, post.clone(), SEND, "/api/echo/alice", ok).body(r#"{"hello":"world"}"#),
            case(b, post.clone(), SEND, "/api/echo/a/b%2Fc", ok).body("[1,2]"),
            case(a, post.clone(), SEND, "/api/echo/k", ok)
                .header("content-type", "text/plain")
                .body("plain words"),
            case(a, post.clone(), SEND, "/api/echo/k", ok)
                .header("x-service-id", service_of(b))
                .header("x-idempotent", "true")
                .header("idempotency-key", "k-1")
                .header("x-meshage-trace", "00c0ffee00c0ffee")
                .header("x-request-timeout", "5000"),
            case(a, post.clone(), SEND, "/api/echo/k", bad).body("{not json"),
            case(
                a,
                post.clone(),
                SEND,
                "/api/echo/k?wait=false",
                StatusCode::ACCEPTED,
            ),
            case(a, post.clone(), SEND, "/api/echo/k?timeout=0", bad),
            case(
                a,
                post.clone(),
                SEND,
                "/api/echo/k?messageName=x&timeout=900",
                ok,
            ),
            case(a, post.clone(), SEND_KEYLESS, "/api/echo", ok),
            case(
                b,
                post.clone(),
                SEND_KEYLESS,
                "/api/echo?wait=false",
                StatusCode::ACCEPTED,
            ),
            case(a, post.clone(), SEND_KEYLESS, "/api/nope", not_found),
            case(
                a,
                post.clone(),
                BROADCAST_KEYLESS,
                "/api/broadcast/echo",
                ok,
            ),
            case(a, post.clone(), SEND, "/api/echo/%zz", bad),
            case(a, post.clone(), SEND, "/api/echo/k", bad).header("x-request-timeout", "soon"),
            case(a, post.clone(), SEND, "/api/nope/k", not_found),
            case(a, post.clone(), SEND, "/api/echo/k", not_found).header("x-service-id", "nope"),
            case(a, post.clone(), SEND, "/api/members/k", not_found),
            case(
                &odd,
                post.clone(),
                SEND,
                "/api/boom/k",
                StatusCode::PAYLOAD_TOO_LARGE,
            )
            .body(r#"{"padding": "more than sixty-four bytes of it, more than sixty-four"}"#),
            case(
                a,
                post.clone(),
                SEND,
                "/api/echo/k",
                StatusCode::MISDIRECTED_REQUEST,
            )
            .header("x-meshage-hop", "1")
            .header("x-service-id", service_of(b)),
            case(
                a,
                post.clone(),
                SEND,
                "/api/boom/k",
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            case(
                a,
                post.clone(),
                SEND,
                "/api/slow/k",
                StatusCode::GATEWAY_TIMEOUT,
            )
            .header("x-request-timeout", "50"),
            case(
                &full,
                post.clone(),
                SEND,
                "/api/echo/k",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            // Broadcasts.
            case(a, post.clone(), BROADCAST, "/api/broadcast/echo/k", ok).body("{}"),
            case(b, post.clone(), BROADCAST, "/api/broadcast/boom/k", ok),
            case(
                a,
                post.clone(),
                BROADCAST,
                "/api/broadcast/nope/k",
                not_found,
            ),
            case(a, post.clone(), BROADCAST, "/api/broadcast/echo/%zz", bad),
            case(
                &odd,
                post.clone(),
                BROADCAST,
                "/api/broadcast/boom/k",
                StatusCode::PAYLOAD_TOO_LARGE,
            )
            .body(r#"{"padding": "more than sixty-four bytes of it, more than sixty-four"}"#),
            case(
                &full,
                post.clone(),
                BROADCAST,
                "/api/broadcast/echo/k",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            // What a node shows.
            case(a, get.clone(), "/", "/", ok),
            case(a, head.clone(), "/", "/", ok),
            case(a, get.clone(), "/index.html", "/index.html", ok),
            case(a, get.clone(), "/metrics", "/metrics", ok),
            case(a, get.clone(), "/api/openapi.json", "/api/openapi.json", ok),
            case(
                a,
                head.clone(),
                "/api/openapi.json",
                "/api/openapi.json",
                ok,
            ),
            case(a, get.clone(), "/api/health", "/api/health", ok),
            case(a, post.clone(), "/api/health", "/api/health", ok),
            case(a, head.clone(), "/api/health", "/api/health", ok),
            case(a, get.clone(), "/livez", "/livez", ok),
            case(a, head.clone(), "/livez", "/livez", ok),
            case(a, get.clone(), "/readyz", "/readyz", ok),
            case(a, head.clone(), "/readyz", "/readyz", ok),
            case(a, get.clone(), "/api/services", "/api/services", ok),
            case(a, get.clone(), "/api/members", "/api/members", ok),
            case(a, get.clone(), "/api/status", "/api/status", ok),
            case(a, head.clone(), "/api/status", "/api/status", ok),
            case(a, head.clone(), "/api/events", "/api/events", ok),
            case(a, get.clone(), LOCATE, "/api/locate/echo/a/b%2Fc", ok),
            case(a, head.clone(), LOCATE, "/api/locate/echo/k", ok),
            case(a, get.clone(), LOCATE, "/api/locate/nope/k", not_found),
            case(a, get.clone(), LOCATE, "/api/locate/echo/%zz", bad),
        ];
        for case in &cases {
            let answer = case.send(&http).await;
            description.check(case.template, &case.method, &answer);
            if case.template == SEND && case.status == ok {
                let trace = answer.headers["x-meshage-trace"].to_str().unwrap();
                assert!(
                    trace.len() == 16 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{trace}"
                );
            }
        }

        // The event stream never ends: its head and first event are checked.
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<Bytes>>();
        let url = format!("http://{}/api/events", a.local_addr());
        let response = client.get(url.parse().unwrap()).await.unwrap();
        let (parts, mut body) = response.into_parts();
        let first = http_body_util::BodyExt::frame(&mut body)
            .await
            .unwrap()
            .unwrap();
        let answer = Answer {
            status: parts.status,
            headers: parts.headers,
            body: first.into_data().unwrap(),
        };
        assert!(
            answer.body.starts_with(b"event: ownership\ndata: {"),
            "{answer:?}"
        );
        description.check("/api/events", &get, &answer);
        drop(body);

        // A method a route does not take: 405, with `Allow` naming exactly the described ones.
        let routes = [
            ("/", "/"),
            ("/index.html", "/index.html"),
            ("/metrics", "/metrics"),
            ("/api/openapi.json", "/api/openapi.json"),
            ("/api/health", "/api/health"),
            ("/livez", "/livez"),
            ("/readyz", "/readyz"),
            ("/api/services", "/api/services"),
            ("/api/members", "/api/members"),
            ("/api/status", "/api/status"),
            ("/api/events", "/api/events"),
            (LOCATE, "/api/locate/echo/k"),
            (BROADCAST, "/api/broadcast/echo/k"),
            (SEND, "/api/echo/k"),
            (BROADCAST_KEYLESS, "/api/broadcast/echo"),
            (SEND_KEYLESS, "/api/echo"),
        ];
        let described: Vec<&str> = description.0["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut tried: Vec<&str> = routes.iter().map(|(t, _)| *t).collect();
        tried.sort_unstable();
        let mut all = described.clone();
        all.sort_unstable();
        assert_eq!(tried, all, "every described route is tried");
        for (template, path) in routes {
            let allowed = description.allowed(template);
            // A route that takes GET answers HEAD as GET, and says so in `Allow`.
            let mut allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            if allowed.contains(&Method::GET) {
                allow.insert(1, "HEAD");
            }
            let allow = allow.join(", ");
            for method in METHODS {
                if method == Method::HEAD || allowed.contains(&method) {
                    continue;
                }
                let answer = case(
                    a,
                    method.clone(),
                    template,
                    path,
                    StatusCode::METHOD_NOT_ALLOWED,
                )
                .send(&http)
                .await;
                assert_eq!(answer.headers["allow"], allow.as_str(), "{method} {path}");
                description.check_common("MethodNotAllowed", &method, &answer);
            }
        }

        // Paths that are no route.
        for path in ["/nope", "/api/broadcast", "/api/locate/echo", "/api//k"] {
            let answer = case(a, post.clone(), SEND, path, not_found)
                .send(&http)
                .await;
            description.check_common("NotFound", &post, &answer);
        }

        // An owner that cannot be reached: 502. The killed node is still in the others'
        // tables (failure detection takes about a second), so naming its service reaches for it.
        let far = service_of(&odd);
        odd.kill();
        let answer = case(
            b,
            post.clone(),
            SEND,
            "/api/boom/k",
            StatusCode::BAD_GATEWAY,
        )
        .header("x-service-id", far)
        .send(&http)
        .await;
        description.check(SEND, &post, &answer);
        assert_eq!(answer.headers["retry-after"], "1");
    })
    .await;
}
