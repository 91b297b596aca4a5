//! The probes of an orchestrator (Kubernetes, a load balancer): `GET /livez`, whether the
//! process serves at all, and `GET /readyz`, whether the node should get traffic: joined,
//! its table built, and not leaving. Both answer `text/plain`, a word on 200 and the reason
//! on 503, and are open without an API token, as `/api/health` is.

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Response, StatusCode};

use super::Admin;
use crate::answer::{no_store, ApiError, Body};

/// `GET /livez`: 200 `live` whenever the node answers at all.
pub(super) fn livez(method: &Method) -> Response<Body> {
    probe(method, StatusCode::OK, "live\n")
}

/// `GET /readyz`: 200 `ready`, or 503 with why not.
pub(super) fn readyz(admin: &Admin, method: &Method) -> Response<Body> {
    let router = &admin.router;
    let not_ready = if router.is_leaving() {
        Some("not ready: leaving (the node is stopping and draining its requests)\n")
    } else if !router.membership_joined() {
        Some("not ready: joining (no peer has answered yet)\n")
    } else if !router.lists_itself() {
        Some("not ready: starting (the service table does not list this node yet)\n")
    } else {
        None
    };
    match not_ready {
        Some(why) => probe(method, StatusCode::SERVICE_UNAVAILABLE, why),
        None => probe(method, StatusCode::OK, "ready\n"),
    }
}

fn probe(method: &Method, status: StatusCode, text: &'static str) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return no_store(ApiError::MethodNotAllowed("GET, HEAD").response());
    }
    let mut response = Response::new(Body::new(text.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    no_store(response)
}
