//! A broadcast: every service of a stream asked once, at once; one entry per service.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use super::{Extra, RouteError, RouteRequest, Router};
use crate::message::{HandlerError, Payload, Reply};
use crate::wire::Deadline;

impl Router {
    /// Runs every service of `stream` at once; one JSON entry per service, in table order, then
    /// an error entry for each service this node suspects after a failed connection (it is not
    /// asked again until the suspicion ends).
    pub(crate) async fn broadcast_payload(
        &self,
        stream: &str,
        key: &str,
        extra: Extra<'_>,
        payload: Payload,
        deadline: Deadline,
    ) -> Result<Vec<Part>, RouteError> {
        let targets: Vec<Arc<str>> = self
            .inner
            .table
            .load()
            .services_of(stream)
            .map(|s| s.id.clone())
            .collect();
        let suspects = self.suspects_of(stream, &targets);
        if targets.is_empty() && suspects.is_empty() {
            return Err(RouteError::UnknownStream(stream.to_owned()));
        }
        let error_entry = |id: &str, e: RouteError| {
            json!({
                "error": e.to_string(),
                "serviceId": id,
                "status": e.status().as_u16(),
            })
        };
        let calls = targets.iter().map(|id| {
            let payload = payload.clone();
            async move {
                let request = RouteRequest {
                    stream,
                    key,
                    extra,
                    target: Some(id),
                    hop: false,
                    ring: 0,
                    idempotent: false,
                    deadline,
                };
                let result = self.route(request, payload).await;
                match result.and_then(|routed| answer_json(routed.reply)) {
                    Ok(json) => Part::Answer(json),
                    Err(e) => Part::Error(error_entry(id, e)),
                }
            }
        });
        let mut entries = futures_util::future::join_all(calls).await;
        entries.extend(
            suspects
                .iter()
                .map(|id| Part::Error(error_entry(id, self.not_in_table(id)))),
        );
        Ok(entries)
    }
}

/// The JSON of a successful reply, or the error it carries.
pub(super) fn answer_value(reply: Reply) -> Result<Value, RouteError> {
    if !reply.status.is_success() {
        return Err(RouteError::Handler(error_of_reply(&reply)));
    }
    reply
        .to_value()
        .map_err(|e| RouteError::BadAnswer(e.to_string()))
}

/// The body of a successful reply, checked to be JSON without being parsed into a value
/// (`null` for an empty one), or the error the reply carries.
fn answer_json(reply: Reply) -> Result<Bytes, RouteError> {
    if !reply.status.is_success() {
        return Err(RouteError::Handler(error_of_reply(&reply)));
    }
    if reply.body.is_empty() {
        return Ok(Bytes::from_static(b"null"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&reply.body)
        .map_err(|e| RouteError::BadAnswer(e.to_string()))?;
    Ok(reply.body)
}

/// One service's entry in a broadcast's answer.
pub(crate) enum Part {
    /// The service's answer: valid JSON, passed on as it came.
    Answer(Bytes),
    /// `{"error", "serviceId", "status"}` for a service that failed.
    Error(Value),
}

impl Part {
    pub(super) fn into_value(self) -> Value {
        match self {
            // Checked to be JSON by `answer_json`.
            Part::Answer(json) => serde_json::from_slice(&json).unwrap_or(Value::Null),
            Part::Error(entry) => entry,
        }
    }

    /// The answer of a broadcast over HTTP: the parts as a JSON array, each answer's bytes
    /// copied as they came instead of parsed and written again.
    pub(crate) fn array(parts: &[Part]) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + parts.iter().map(Part::len_hint).sum::<usize>());
        out.push(b'[');
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match part {
                Part::Answer(json) => out.extend_from_slice(json),
                Part::Error(entry) => {
                    let _ = serde_json::to_writer(&mut out, entry);
                }
            }
        }
        out.push(b']');
        out
    }

    fn len_hint(&self) -> usize {
        match self {
            Part::Answer(json) => json.len() + 1,
            Part::Error(_) => 96,
        }
    }
}

/// A failed reply as a handler error: its status and the message of its `{"error": ...}` body.
fn error_of_reply(reply: &Reply) -> HandlerError {
    let message = reply
        .to_value()
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
    HandlerError::with_status(reply.status, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn ok(body: &'static str) -> Reply {
        Reply::new(StatusCode::OK, Bytes::from_static(body.as_bytes()))
    }

    #[test]
    fn a_broadcast_array_passes_answers_through_and_writes_errors() {
        let answered = answer_json(ok(r#"{"n": 1, "s": "é"}"#)).unwrap();
        let empty = answer_json(ok("")).unwrap();
        let bad = answer_json(ok("{not json")).unwrap_err();
        assert!(matches!(bad, RouteError::BadAnswer(_)), "{bad}");
        let failed = answer_json(Reply::new(
            StatusCode::CONFLICT,
            Bytes::from_static(br#"{"error":"taken"}"#),
        ))
        .unwrap_err();
        assert_eq!(failed.to_string(), "taken");
        let parts = [
            Part::Answer(answered),
            Part::Answer(empty),
            Part::Error(json!({"error": "taken", "serviceId": "b", "status": 409})),
        ];
        let array: Value = serde_json::from_slice(&Part::array(&parts)).unwrap();
        assert_eq!(
            array,
            json!([{"n": 1, "s": "é"}, null, {"error": "taken", "serviceId": "b", "status": 409}])
        );
        let values: Vec<Value> = parts.into_iter().map(Part::into_value).collect();
        assert_eq!(
            Value::Array(values),
            array,
            "the library sees the same entries"
        );
        assert_eq!(Part::array(&[]), b"[]");
    }
}
