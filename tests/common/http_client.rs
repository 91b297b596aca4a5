//! A plain HTTP client for tests, with a per-request timeout, and the answers it returns. The
//! shortcuts most suites use are in `http_shortcuts.rs`, the `X-Service-Id` of an answer in
//! `service_id.rs`, so that a suite that does not use them does not compile them.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A response as the tests see it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON; panics with the body and its content type when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}; content-type {:?}): {:?}",
                self.headers.get(http::header::CONTENT_TYPE),
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A plain HTTP client with a per-request timeout, so that no test request hangs.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    pub timeout: Duration,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout: Duration::from_secs(20),
        }
    }
}

impl Http {
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, String> {
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?} from {url}", self.timeout))?
    }
}
