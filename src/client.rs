//! A small client of a node's HTTP API: what the `meshage send`, `broadcast`, `services`,
//! `members` and `locate` commands use, and what a Rust program can use to reach a cluster it
//! does not run a node of.
//!
//! Errors fall into the classes the command's exit codes tell apart: [`ClientError::BadInput`]
//! (the message or a name was not acceptable, here or by the handler: any 4xx but 404),
//! [`ClientError::NotFound`] (no such stream: 404), [`ClientError::Unreachable`] (no answer
//! from the node), [`ClientError::Unauthorized`] (no token, or one the node refuses: 401 and
//! 403) and [`ClientError::Failed`] (anything else, such as a 502 from an owner).
//!
//! A node with the operator's certificates is reached over HTTPS (`https://host:port`), its
//! certificate verified against the system's CA bundle or the CA given ([`MeshClient::with_ca`]).
//!
//! An edge: depends on `wire`, `path` and `security` (its TLS dialer) only, never on a node's
//! internals.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::path::encode_segment;
use crate::security::dialer::Dialer;
use crate::security::ClientTls;
use crate::wire::{error_chain, RESERVED_STREAMS};

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The input was not acceptable: a message that is not JSON, an unreadable file, a reserved
    /// stream, or a 4xx other than 404 from the node or the handler.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The node answered 404: no service on the stream.
    #[error("not found: {0}")]
    NotFound(String),
    /// The node could not be reached, or did not answer in time.
    #[error("cluster unreachable: {0}")]
    Unreachable(String),
    /// The node wants an API token and got none, or one it does not accept (401), or one that
    /// may not use the stream (403).
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// Any other failure, such as a 502 when the owner of a key is down.
    #[error("{0}")]
    Failed(String),
}

impl ClientError {
    /// The `meshage` command's exit code for this error: 2 bad input (as for a bad flag),
    /// 3 not found, 4 cluster unreachable, 5 not authorized, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::BadInput(_) => 2,
            ClientError::NotFound(_) => 3,
            ClientError::Unreachable(_) => 4,
            ClientError::Unauthorized(_) => 5,
            ClientError::Failed(_) => 1,
        }
    }
}

/// A client of one node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MeshClient {
    /// `http://host:port` or `https://host:port`, without a trailing slash.
    base: String,
    client: Client<Dialer, Full<Bytes>>,
    timeout: Duration,
    /// `Bearer TOKEN`, marked sensitive: its `Debug` shows `Sensitive`.
    authorization: Option<HeaderValue>,
}

/// The HTTP client over `tls` (for `https://` nodes), connecting within `timeout`.
fn http_client(tls: Option<ClientTls>, timeout: Duration) -> Client<Dialer, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(Dialer {
        tls,
        connect_timeout: timeout,
    })
}

/// An answer: its status and JSON body (or the body's text when it is not JSON).
type Answer = (StatusCode, Value);

impl MeshClient {
    /// A client of the node at `node` (`http://host:port`, `https://host:port`, or just
    /// `host:port`); each call waits at most `timeout`. Over HTTPS the node's certificate is
    /// verified against the system's CA bundle (see [`MeshClient::with_ca`] for another).
    /// Fails on a URL that is not `http[s]://host[:port]`, or an `https` one when the system
    /// has no CA bundle.
    pub fn new(node: &str, timeout: Duration) -> Result<MeshClient, ClientError> {
        MeshClient::build(node, timeout, None)
    }

    /// A client of the node at `node`, as [`MeshClient::new`], that verifies an `https://`
    /// node's certificate against `ca` (and nothing else) instead of the system's bundle.
    pub fn with_ca(
        node: &str,
        timeout: Duration,
        ca: ClientTls,
    ) -> Result<MeshClient, ClientError> {
        MeshClient::build(node, timeout, Some(ca))
    }

    fn build(
        node: &str,
        timeout: Duration,
        ca: Option<ClientTls>,
    ) -> Result<MeshClient, ClientError> {
        let node = node.trim();
        let with_scheme = if node.contains("://") {
            node.to_owned()
        } else {
            format!("http://{node}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e| ClientError::BadInput(format!("invalid node URL `{node}`: {e}")))?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme,
            _ => {
                return Err(ClientError::BadInput(format!(
                    "invalid node URL `{node}`: only http:// and https:// are supported"
                )))
            }
        };
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() && uri.path().len() <= 1 => a.as_str(),
            _ => {
                return Err(ClientError::BadInput(format!(
                    "invalid node URL `{node}`: expected http://host:port"
                )))
            }
        };
        let base = format!("{scheme}://{authority}");
        let tls = match (scheme, ca) {
            ("https", None) => {
                Some(ClientTls::system().map_err(|e| ClientError::BadInput(e.to_string()))?)
            }
            (_, ca) => ca,
        };
        Ok(MeshClient {
            base,
            client: http_client(tls, timeout),
            timeout,
            authorization: None,
        })
    }

    /// This client, sending `token` as `Authorization: Bearer TOKEN` with every call. Fails
    /// (without showing it) on a token that cannot be a header value.
    pub fn with_token(mut self, token: &str) -> Result<MeshClient, ClientError> {
        let value = zeroize::Zeroizing::new(format!("Bearer {}", token.trim()));
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            ClientError::BadInput("the API token holds characters a header cannot".into())
        })?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// The node this client talks to.
    pub fn node(&self) -> &str {
        &self.base
    }

    /// Sends `message` (JSON bytes, passed as they are) to the owner of `key` on `stream` and
    /// returns its answer. An empty `key` sends it without one: to the stream's services in turn.
    pub async fn send(
        &self,
        stream: &str,
        key: &str,
        message: Bytes,
    ) -> Result<Value, ClientError> {
        self.send_with(stream, key, message, &SendParams::default())
            .await
    }

    /// [`MeshClient::send`] with a message name, or without waiting: the answer is then the
    /// node's `202` body, `{"trace": ID}`.
    pub async fn send_with(
        &self,
        stream: &str,
        key: &str,
        message: Bytes,
        params: &SendParams,
    ) -> Result<Value, ClientError> {
        check_stream(stream)?;
        if RESERVED_STREAMS.contains(&stream) {
            return Err(ClientError::BadInput(format!(
                "the stream name `{stream}` is reserved by the HTTP API"
            )));
        }
        let mut path = message_path("/api/", stream, key);
        let mut separator = '?';
        if params.no_wait {
            path.push_str("?wait=false");
            separator = '&';
        }
        if let Some(name) = &params.name {
            path.push(separator);
            path.push_str("messageName=");
            encode_segment(name, &mut path);
        }
        self.expect_ok(self.call(Method::POST, &path, message).await?)
    }

    /// Sends `message` to every service of `stream`; an array with one entry per service.
    pub async fn broadcast(
        &self,
        stream: &str,
        key: &str,
        message: Bytes,
    ) -> Result<Value, ClientError> {
        check_stream(stream)?;
        let path = message_path("/api/broadcast/", stream, key);
        self.expect_ok(self.call(Method::POST, &path, message).await?)
    }

    /// Every routable service (`GET /api/services`).
    pub async fn services(&self) -> Result<Value, ClientError> {
        self.expect_ok(
            self.call(Method::GET, "/api/services", Bytes::new())
                .await?,
        )
    }

    /// Every node the node knows (`GET /api/members`).
    pub async fn members(&self) -> Result<Value, ClientError> {
        self.expect_ok(self.call(Method::GET, "/api/members", Bytes::new()).await?)
    }

    /// The service and node that own `key` on `stream`, without running anything.
    pub async fn locate(&self, stream: &str, key: &str) -> Result<Value, ClientError> {
        check_stream(stream)?;
        let path = message_path("/api/locate/", stream, key);
        self.expect_ok(self.call(Method::GET, &path, Bytes::new()).await?)
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut builder = Request::builder().method(method).uri(&url);
        if !body.is_empty() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| ClientError::BadInput(format!("cannot build a request to {url}: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let reason = error_chain(&e);
                if e.is_connect() {
                    ClientError::Unreachable(format!("cannot connect to {}: {reason}", self.base))
                } else {
                    ClientError::Unreachable(format!("{} failed: {reason}", self.base))
                }
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    ClientError::Unreachable(format!("reading the answer of {}: {e}", self.base))
                })?
                .to_bytes();
            let value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            Ok((status, value))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                ClientError::Unreachable(format!(
                    "no answer from {} within {:?}",
                    self.base, self.timeout
                ))
            })?
    }

    fn expect_ok(&self, (status, value): Answer) -> Result<Value, ClientError> {
        if status.is_success() {
            return Ok(value);
        }
        let message = match value.get("error").and_then(Value::as_str) {
            Some(error) => error.to_owned(),
            None => match &value {
                Value::String(text) if text.trim().is_empty() => status.to_string(),
                Value::String(text) => text.split_whitespace().collect::<Vec<_>>().join(" "),
                other => other.to_string(),
            },
        };
        Err(match status {
            StatusCode::NOT_FOUND => ClientError::NotFound(message),
            StatusCode::UNAUTHORIZED if self.authorization.is_none() => ClientError::Unauthorized(
                format!("{message} (401; give one with --token or MESHAGE_TOKEN)"),
            ),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                ClientError::Unauthorized(format!("{message} ({status})"))
            }
            s if s.is_client_error() => ClientError::BadInput(format!("{} ({s})", message)),
            s => ClientError::Failed(format!("{} answered {s}: {message}", self.base)),
        })
    }
}

fn check_stream(stream: &str) -> Result<(), ClientError> {
    if stream.is_empty() {
        return Err(ClientError::BadInput("the stream name is empty".into()));
    }
    Ok(())
}

/// What [`MeshClient::send_with`] asks beside the message.
#[derive(Debug, Clone, Default)]
pub struct SendParams {
    /// The message's name (`?messageName=`).
    pub name: Option<String>,
    /// Do not wait for the answer (`?wait=false`).
    pub no_wait: bool,
}

fn message_path(prefix: &str, stream: &str, key: &str) -> String {
    let mut path = String::with_capacity(prefix.len() + stream.len() + key.len() + 8);
    path.push_str(prefix);
    encode_segment(stream, &mut path);
    path.push('/');
    encode_segment(key, &mut path);
    path
}

/// Reads a message argument: inline JSON, `@FILE` for a file's contents, `-` for `stdin`, or
/// `{}` when there is none. Fails with [`ClientError::BadInput`] when the file cannot be read
/// or the text is not JSON; the bytes are returned as they are, not re-encoded.
pub fn read_message(arg: Option<&str>, stdin: impl Read) -> Result<Bytes, ClientError> {
    let (bytes, origin) = match arg {
        None => return Ok(Bytes::from_static(b"{}")),
        Some("-") => {
            let mut buf = Vec::new();
            let mut stdin = stdin;
            stdin
                .read_to_end(&mut buf)
                .map_err(|e| ClientError::BadInput(format!("cannot read stdin: {e}")))?;
            (buf, "stdin".to_owned())
        }
        Some(arg) => match arg.strip_prefix('@') {
            Some(path) => {
                let buf = std::fs::read(path)
                    .map_err(|e| ClientError::BadInput(format!("cannot read {path}: {e}")))?;
                (buf, path.to_owned())
            }
            None => (arg.as_bytes().to_vec(), "the message".to_owned()),
        },
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        return Err(ClientError::BadInput(format!(
            "{origin} is not valid JSON: {e}"
        )));
    }
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_take_host_port_with_or_without_scheme() {
        let t = Duration::from_secs(1);
        assert_eq!(
            MeshClient::new("127.0.0.1:8080", t).unwrap().node(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            MeshClient::new("http://h:1/", t).unwrap().node(),
            "http://h:1"
        );
        for bad in ["ftp://h:1", "http://", "http://h:1/api", "h h"] {
            let e = MeshClient::new(bad, t).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn a_token_is_sent_as_a_bearer_header_and_never_shown() {
        let t = Duration::from_secs(1);
        let secret = "a-secret-token-0123456789";
        let client = MeshClient::new("h:1", t)
            .unwrap()
            .with_token(secret)
            .unwrap();
        let authorization = client.authorization.as_ref().unwrap();
        assert_eq!(authorization, &format!("Bearer {secret}")[..]);
        assert!(authorization.is_sensitive());
        assert!(!format!("{client:?}").contains(secret));
        let e = MeshClient::new("h:1", t)
            .unwrap()
            .with_token("bad\nsecret-token")
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(!e.to_string().contains("secret-token"), "{e}");
        assert_eq!(ClientError::Unauthorized(String::new()).exit_code(), 5);
    }

    #[test]
    fn messages_come_inline_from_files_or_stdin_and_must_be_json() {
        assert_eq!(&read_message(None, &b""[..]).unwrap()[..], b"{}");
        assert_eq!(
            &read_message(Some("[1, 2]"), &b""[..]).unwrap()[..],
            b"[1, 2]"
        );
        assert_eq!(
            &read_message(Some("-"), &b" {\"a\": 1}\n"[..]).unwrap()[..],
            b" {\"a\": 1}\n"
        );
        let dir = std::env::temp_dir().join(format!("meshage-client-{}", std::process::id()));
        std::fs::write(&dir, "\"text\"").unwrap();
        let arg = format!("@{}", dir.display());
        assert_eq!(
            &read_message(Some(&arg), &b""[..]).unwrap()[..],
            b"\"text\""
        );
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            read_message(Some(&arg), &b""[..]).unwrap_err().exit_code(),
            2
        );
        assert_eq!(
            read_message(Some("{oops"), &b""[..])
                .unwrap_err()
                .exit_code(),
            2
        );
        assert_eq!(
            read_message(Some("-"), &b""[..]).unwrap_err().exit_code(),
            2
        );
    }

    #[test]
    fn paths_encode_streams_and_keys() {
        assert_eq!(
            message_path("/api/", "echo", "a b/c%"),
            "/api/echo/a%20b%2Fc%25"
        );
    }
}
