//! Calls to the Consul agent's HTTP API: the token on every request, a deadline on every
//! exchange, and a failure for any status but success; and the connector that dials the agent,
//! over TLS when it is reached by `https`. Knows nothing of meshage's records.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use hyper::rt::ReadBufCursor;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::message::BoxFuture;
use crate::security::trust::MaybeTls;
use crate::security::ClientTls;
use crate::wire::{error_chain, read_body};

/// The largest answer read from the agent: a catalog of thousands of services fits many times
/// over, and an agent (or whatever answers in its place) cannot make the node hold more.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The agent's HTTP API.
#[derive(Clone)]
pub(super) struct Agent {
    pub(super) base: String,
    /// Marked sensitive, so that no HTTP library shows it.
    pub(super) token: Option<HeaderValue>,
    pub(super) client: Client<Dialer, Full<Bytes>>,
}

/// An answer of the agent: status, `X-Consul-Index`, body.
pub(super) struct Answer {
    status: StatusCode,
    pub(super) index: Option<u64>,
    pub(super) body: Bytes,
}

impl Agent {
    pub(super) async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path_and_query}", self.base));
        if let Some(token) = &self.token {
            builder = builder.header("x-consul-token", token.clone());
        }
        let body = match body {
            Some(v) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?)
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            let index = response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = read_body(&mut response.into_body(), MAX_ANSWER, |_| true)
                .await
                .map_err(|e| format!("{method} {path_and_query}: reading the answer: {e}"))?;
            Ok::<_, String>(Answer {
                status,
                index,
                body,
            })
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{method} {path_and_query}: no answer within {timeout:?}"))??;
        if !answer.status.is_success() {
            let mut text = String::from_utf8_lossy(&answer.body).trim().to_owned();
            // An agent (or whatever answers in its place) may quote the token: never pass it on.
            if let Some(token) = self.token.as_ref().and_then(|t| t.to_str().ok()) {
                if !token.is_empty() {
                    text = text.replace(token, "***");
                }
            }
            return Err(format!(
                "{method} {path_and_query}: {} {text}",
                answer.status
            ));
        }
        Ok(answer)
    }
}

/// Dials the agent for the HTTP client: TCP, then TLS (verified against `tls`, the name against
/// the agent's host) when the agent is reached by `https`.
#[derive(Clone)]
pub(super) struct Dialer {
    pub(super) tls: Option<ClientTls>,
    pub(super) connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Dialer {
    type Response = AgentStream;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<AgentStream>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let Dialer {
            tls,
            connect_timeout,
        } = self.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let dial = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                match (https, &tls) {
                    (true, Some(tls)) => {
                        Ok(MaybeTls::Tls(Box::new(tls.connect(&host, tcp).await?)))
                    }
                    (true, None) => Err(io::Error::other("https without TLS settings")),
                    (false, _) => Ok(MaybeTls::Plain(tcp)),
                }
            };
            let stream = tokio::time::timeout(connect_timeout, dial)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {connect_timeout:?}"),
                    )
                })??;
            Ok(AgentStream(TokioIo::new(stream)))
        })
    }
}

/// A connection to the agent, as the HTTP client takes it.
pub(super) struct AgentStream(TokioIo<MaybeTls>);

impl Connection for AgentStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for AgentStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for AgentStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
