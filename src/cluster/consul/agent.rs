//! Calls to the Consul agent's HTTP API: the token on every request, a deadline on every
//! exchange, and a failure for any status but success, through the connector that dials the
//! agent over TLS when it is reached by `https` (`security::dialer`). Knows nothing of meshage's
//! records.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use serde_json::Value;

use crate::security::dialer::Dialer;
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
