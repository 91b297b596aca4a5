//! `GET` and `POST` that panic on transport errors, for suites that expect every request to be
//! answered.

use bytes::Bytes;
use http::Method;

use super::http_client::{Answer, Http};

impl Http {
    /// POSTs JSON and panics on transport errors.
    pub async fn post(&self, url: &str, body: &str) -> Answer {
        self.request(
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body.to_owned(),
        )
        .await
        .unwrap()
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.request(Method::GET, url, &[], Bytes::new())
            .await
            .unwrap()
    }
}
