//! What the node knows, as JSON: its health, the routable services, the members, and which
//! service owns a key. Nothing here runs a message.

use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::Admin;
use crate::answer::{value_response, ApiError, Body};
use crate::path::decode_segment;
use crate::router::RouteError;

/// `GET|POST /api/health`: `{"status":"up"}`, 503 `leaving` while the node stops.
pub(super) fn health(admin: &Admin, method: &Method) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::POST | Method::HEAD) {
        return ApiError::MethodNotAllowed("GET, HEAD, POST").response();
    }
    let table = admin.router.table();
    let leaving = admin.router.is_leaving();
    let body = json!({
        "status": if leaving { "leaving" } else { "up" },
        "node": admin.router.node_id(),
        "services": table.services.len(),
        "localServices": admin.router.local_services().len(),
        "tableVersion": table.version,
    });
    let status = if leaving {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    value_response(status, &body)
}

/// `GET /api/services`: every routable service, in the original's shape.
pub(super) fn services(admin: &Admin, method: &Method) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return ApiError::MethodNotAllowed("GET, HEAD").response();
    }
    let table = admin.router.table();
    let list: Vec<Value> = table
        .services
        .iter()
        .map(|s| {
            json!({
                "id": &*s.id,
                "stream": &*s.stream,
                "node": &*s.node_id,
                "endpoints": [ { "endpointType": "http", "description": &*s.endpoint } ],
            })
        })
        .collect();
    value_response(StatusCode::OK, &Value::Array(list))
}

/// `GET /api/members`: every node this one knows, with this node's withdrawn services.
pub(super) fn members(admin: &Admin, method: &Method) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return ApiError::MethodNotAllowed("GET, HEAD").response();
    }
    let view = admin.view.borrow().clone();
    let own_id = admin.router.node_id();
    let list: Vec<Value> = view
        .members
        .iter()
        .map(|m| {
            let mut entry = json!({
                "id": &m.id,
                "endpoint": &m.endpoint,
                "state": m.state,
                "self": m.id == own_id,
                "services": &m.services,
            });
            if let Some(ms) = m
                .last_heard
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            {
                entry["lastHeardMs"] = json!(ms.as_millis() as u64);
            }
            if m.id == own_id {
                let withdrawn = admin.router.withdrawn_services();
                if !withdrawn.is_empty() {
                    entry["withdrawnServices"] = json!(withdrawn);
                }
            }
            entry
        })
        .collect();
    value_response(StatusCode::OK, &Value::Array(list))
}

/// `GET /api/locate/{stream}/{key}`: the service and node that own the key; nothing runs.
pub(super) fn locate(admin: &Admin, method: &Method, stream: &str, key: &str) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return ApiError::MethodNotAllowed("GET, HEAD").response();
    }
    let (stream, key) = match (decode_segment(stream), decode_segment(key)) {
        (Ok(s), Ok(k)) => (s, k),
        (Err(e), _) | (_, Err(e)) => {
            return ApiError::BadPath(e.to_string()).response();
        }
    };
    let table = admin.router.table();
    let Some(owner) = table.owner(&stream, &key) else {
        return ApiError::from(RouteError::UnknownStream(stream.into_owned())).response();
    };
    let body = json!({
        "stream": &stream,
        "partitionKey": &key,
        "serviceId": &*owner.id,
        "node": &*owner.node_id,
        "endpoint": &*owner.endpoint,
        "local": &*owner.node_id == admin.router.node_id(),
        "services": table.services_of(&stream).count(),
        "tableVersion": table.version,
    });
    value_response(StatusCode::OK, &body)
}
