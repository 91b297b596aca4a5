//! `GET /api/openapi.json`: the OpenAPI 3.1 description of the node's whole HTTP API (every
//! route, header, status and error body), kept in `openapi.json` beside this file and built
//! into the binary. The routes' unit tests check that it describes every route the router
//! finds; `tests/openapi.rs` and `scripts/schemathesis.sh` check real answers against it.

use bytes::Bytes;
use http::{Method, Response, StatusCode};

use crate::answer::{json_response, ApiError, Body};

/// The description, as served.
pub(crate) const DESCRIPTION: &str = include_str!("openapi.json");

/// `GET /api/openapi.json`.
pub(super) fn description(method: &Method) -> Response<Body> {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return ApiError::MethodNotAllowed("GET, HEAD").response();
    }
    json_response(StatusCode::OK, Bytes::from_static(DESCRIPTION.as_bytes()))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Every `$ref` in `value`, the document's own (`#/...`) or not.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_description_is_openapi_3_1_of_this_version_and_its_references_resolve() {
        let doc: Value = serde_json::from_str(DESCRIPTION).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{r} is outside the document"));
            assert!(doc.pointer(pointer).is_some(), "{r} resolves to nothing");
        }
        // Every operation answers something, and names itself once.
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if !["get", "head", "post"].contains(&method.as_str()) {
                    continue;
                }
                assert!(operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()));
                let id = operation["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_owned()), "{method} {path}: {id} twice");
            }
        }
    }

    #[test]
    fn it_is_served_to_get_and_head_only() {
        let answer = description(&Method::GET);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["content-type"], "application/json");
        assert_eq!(description(&Method::HEAD).status(), StatusCode::OK);
        let refused = description(&Method::POST);
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(refused.headers()["allow"], "GET, HEAD");
    }
}
