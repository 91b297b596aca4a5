//! Which service answered a request: the `X-Service-Id` header of an [`Answer`].

use super::http_client::Answer;

impl Answer {
    pub fn service_id(&self) -> Option<String> {
        self.headers
            .get("x-service-id")
            .map(|v| v.to_str().unwrap().to_owned())
    }
}
