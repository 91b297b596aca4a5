//! Messages, their headers, and the handlers that answer them.
//!
//! A handler sees what the original's handlers saw: the message data and a header naming the
//! service, the stream and the partition key. Internally every handler works on body bytes
//! ([`Handler`]), so that a handler that only relays bytes (an HTTP upstream) never parses them;
//! closures over [`serde_json::Value`] or over a typed struct are adapted with [`handler_fn`] and
//! [`typed_handler_fn`].
//!
//! Pure core: depends on nothing of the crate.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A boxed future, as returned by [`Handler::handle`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who a message is for: handed to every handler next to the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// The id of the service that runs the handler.
    pub service_id: Arc<str>,
    /// The stream the message was sent on.
    pub stream: Arc<str>,
    /// The key that chose the service; empty for a message sent without one.
    pub partition_key: Arc<str>,
    /// The message's name, if it has one: `?messageName=NAME`, or a top-level `"name"` string of
    /// a JSON object body, as the original 0.4.x reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Arc<str>>,
    /// The service that owned this message's key before the one running it, when the key moved
    /// to it within the node's handoff window (`--handoff-window`) and that service can still be
    /// reached: the handler may take the key's state from it (send to it by id:
    /// [`crate::SendOptions::service`]). See the README's "Stateful handlers".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_owner: Option<Arc<str>>,
    /// The client's request headers, less hop-by-hop ones and meshage's own (see the README's
    /// "Request headers"). Empty for a message sent from the library.
    #[serde(skip)]
    pub headers: http::HeaderMap,
}

/// A message to send or broadcast through a [`crate::Router`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub stream: String,
    /// Chooses the service on the stream's ring; empty: any one live service, in turn.
    pub partition_key: String,
    pub data: Value,
    /// Picks a handler registered for this name on the stream (see
    /// [`crate::NodeBuilder::register_named`]); without one, a top-level `"name"` of an object's
    /// data does, as in the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    pub fn new(stream: impl Into<String>, partition_key: impl Into<String>, data: Value) -> Self {
        Message {
            stream: stream.into(),
            partition_key: partition_key.into(),
            data,
            name: None,
        }
    }

    /// A message without a partition key: it runs on one live service of the stream, chosen
    /// in turn (round-robin).
    pub fn keyless(stream: impl Into<String>, data: Value) -> Self {
        Message::new(stream, "", data)
    }

    /// The message with a name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// The top-level `"name"` of `body` when it is a JSON object whose `"name"` is a string, as the
/// original reads a message's name. Other values are skipped without being built, and keys are
/// compared where they lie, so the cost is one pass over the body; a body that does not start
/// with `{`, or holds neither `name` nor an escape (a key spelled with one), is not parsed at all.
pub(crate) fn name_in_body(body: &[u8]) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    /// Whether a key is `name`, without building it.
    struct IsName;
    impl<'de> Visitor<'de> for IsName {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
            Ok(key == "name")
        }
    }
    impl<'de> DeserializeSeed<'de> for IsName {
        type Value = bool;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(IsName)
        }
    }
    struct Name;
    impl<'de> Visitor<'de> for Name {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(is_name) = map.next_key_seed(IsName)? {
                if is_name {
                    // A name that is not a string (a number, an object) is no name; of two,
                    // the last counts, as with `JSON.parse`.
                    found = match map.next_value::<Value>()? {
                        Value::String(s) => Some(s),
                        _ => None,
                    };
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' {
        return None;
    }
    let may_hold = body.windows(4).any(|w| w == b"name") || body.contains(&b'\\');
    if !may_hold {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::Deserializer::deserialize_map(&mut de, Name)
        .ok()
        .flatten()
}

/// A handler's answer: a status, a JSON body, already encoded, and headers for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    /// Headers for the HTTP client, less hop-by-hop ones and meshage's own, which are dropped.
    pub headers: http::HeaderMap,
}

impl Reply {
    /// An answer of `status` with `body` (JSON) and no headers.
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            body: body.into(),
            headers: http::HeaderMap::new(),
        }
    }

    /// The answer with its status set to `status`.
    pub fn with_status(mut self, status: StatusCode) -> Reply {
        self.status = status;
        self
    }

    /// The answer with the header `name: value` added. Fails when either is not a valid header.
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Reply, HandlerError> {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| HandlerError::internal(format!("bad header name: {e}")))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|e| HandlerError::internal(format!("bad header value: {e}")))?;
        self.headers.append(name, value);
        Ok(self)
    }

    /// A 200 answer with `value` encoded as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Reply, HandlerError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| HandlerError::internal(format!("handler result is not JSON: {e}")))?;
        Ok(Reply::new(StatusCode::OK, body))
    }

    /// The body decoded as JSON (`null` when empty).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&self.body)
    }
}

/// Why a handler failed. Its status reaches the HTTP caller, with `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub status: StatusCode,
    pub message: String,
}

impl HandlerError {
    /// A failure of the handler itself: 500.
    pub fn internal(message: impl Into<String>) -> Self {
        HandlerError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    /// The message was not acceptable: 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        HandlerError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// Any status and message.
    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        HandlerError {
            status,
            message: message.into(),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::internal(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::internal(message)
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        HandlerError::internal(e.to_string())
    }
}

impl From<std::io::Error> for HandlerError {
    fn from(e: std::io::Error) -> Self {
        HandlerError::internal(e.to_string())
    }
}

impl From<Box<dyn std::error::Error + Send + Sync>> for HandlerError {
    fn from(e: Box<dyn std::error::Error + Send + Sync>) -> Self {
        HandlerError::internal(e.to_string())
    }
}

/// The body of a message as it arrived, with its content type.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    pub body: Bytes,
    /// The `Content-Type` the sender gave, if any.
    pub content_type: Option<String>,
}

impl Payload {
    /// A JSON payload.
    pub fn json(value: &Value) -> Self {
        Payload {
            body: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
            content_type: Some("application/json".into()),
        }
    }

    /// The declared content type when it is a `text/*` type (the mesh reads every other body as
    /// JSON, whatever it declares).
    pub(crate) fn text_type(&self) -> Option<&str> {
        self.content_type.as_deref().filter(|ct| {
            ct.trim_start()
                .as_bytes()
                .get(..5)
                .is_some_and(|t| t.eq_ignore_ascii_case(b"text/"))
        })
    }

    /// The message data as a JSON value.
    ///
    /// An empty body is `{}`, as the original gave its handlers, so handlers ported from it may
    /// index into the message. A `text/*` body is a JSON string of its text. Any other body must
    /// be JSON, whatever its declared type (curl's `-d` says form-urlencoded); when it is not, the
    /// result is a 400 error.
    pub fn to_value(&self) -> Result<Value, HandlerError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Default::default()));
        }
        if self.text_type().is_some() {
            return match std::str::from_utf8(&self.body) {
                Ok(s) => Ok(Value::String(s.to_owned())),
                Err(_) => Err(HandlerError::bad_request("text body is not valid UTF-8")),
            };
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| HandlerError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// A message handler: the body bytes and the header in, a reply out.
///
/// Implement this directly for handlers that relay bytes; use [`handler_fn`] or
/// [`typed_handler_fn`] for closures over JSON values.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        payload: Payload,
        header: Header,
    ) -> BoxFuture<'static, Result<Reply, HandlerError>>;
}

/// A shared handler, as stored in a node's registry.
pub type SharedHandler = Arc<dyn Handler>;

struct ValueHandler<F>(F);

impl<F, Fut, T, E> Handler for ValueHandler<F>
where
    F: Fn(Value, Header) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize,
    E: Into<HandlerError>,
{
    fn handle(
        &self,
        payload: Payload,
        header: Header,
    ) -> BoxFuture<'static, Result<Reply, HandlerError>> {
        let data = match payload.to_value() {
            Ok(v) => v,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let fut = (self.0)(data, header);
        Box::pin(async move {
            match fut.await {
                Ok(value) => Reply::json(&value),
                Err(e) => Err(e.into()),
            }
        })
    }
}

/// The handlers of one stream on one node by message name, with the stream's own handler as
/// the fallback (404 without one).
struct Named {
    by_name: std::collections::HashMap<String, SharedHandler>,
    fallback: Option<SharedHandler>,
}

impl Handler for Named {
    fn handle(
        &self,
        payload: Payload,
        header: Header,
    ) -> BoxFuture<'static, Result<Reply, HandlerError>> {
        let named = header.name.as_deref().and_then(|n| self.by_name.get(n));
        match named.or(self.fallback.as_ref()) {
            Some(handler) => handler.handle(payload, header),
            None => {
                let name = header.name.as_deref().unwrap_or("");
                let e = HandlerError::with_status(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no handler for the message name `{name}` on `{}`",
                        header.stream
                    ),
                );
                Box::pin(std::future::ready(Err(e)))
            }
        }
    }
}

/// `services` (stream, handler) with the `named` handlers (stream, name, handler) folded in:
/// each stream's named handlers join its first service, or make one of their own.
pub(crate) fn with_named(
    mut services: Vec<(String, SharedHandler)>,
    named: Vec<(String, String, SharedHandler)>,
) -> Vec<(String, SharedHandler)> {
    let mut streams: Vec<(String, Named)> = Vec::new();
    for (stream, name, handler) in named {
        let at = match streams.iter().position(|(s, _)| *s == stream) {
            Some(at) => at,
            None => {
                let fallback = services
                    .iter()
                    .position(|(s, _)| *s == stream)
                    .map(|at| services.remove(at).1);
                let by_name = Default::default();
                streams.push((stream, Named { by_name, fallback }));
                streams.len() - 1
            }
        };
        streams[at].1.by_name.entry(name).or_insert(handler);
    }
    services.extend(
        streams
            .into_iter()
            .map(|(stream, named)| (stream, Arc::new(named) as SharedHandler)),
    );
    services
}

/// Adapts an async closure over the message data as a [`serde_json::Value`] into a [`Handler`].
///
/// ```
/// use meshage::{handler_fn, HandlerError};
/// let echo = handler_fn(|data, _header| async move {
///     Ok::<_, HandlerError>(serde_json::json!({ "echoed": data }))
/// });
/// # let _ = echo;
/// ```
pub fn handler_fn<F, Fut, T, E>(f: F) -> SharedHandler
where
    F: Fn(Value, Header) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + 'static,
    E: Into<HandlerError> + 'static,
{
    Arc::new(ValueHandler(f))
}

/// Adapts an async closure over a typed message into a [`Handler`]; data that does not
/// deserialize into `M` is answered with 400.
pub fn typed_handler_fn<M, F, Fut, T, E>(f: F) -> SharedHandler
where
    M: DeserializeOwned + Send + 'static,
    F: Fn(M, Header) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + 'static,
    E: Into<HandlerError> + 'static,
{
    let f = Arc::new(f);
    handler_fn(move |data: Value, header: Header| {
        let f = f.clone();
        async move {
            let message: M = serde_json::from_value(data).map_err(|e| {
                HandlerError::bad_request(format!("message does not fit the handler: {e}"))
            })?;
            f(message, header).await.map_err(Into::into)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::name_in_body;

    #[test]
    fn a_name_is_a_top_level_string_of_an_object() {
        let name = |body: &str| name_in_body(body.as_bytes());
        assert_eq!(name(r#"{"name":"a"}"#).as_deref(), Some("a"));
        assert_eq!(
            name(r#" {"x":{"name":"inner"},"name":"b"}"#).as_deref(),
            Some("b")
        );
        assert_eq!(
            name(r#"{"na\u006de":"escaped"}"#).as_deref(),
            Some("escaped")
        );
        assert_eq!(
            name(r#"{"name":"first","name":"second"}"#).as_deref(),
            Some("second")
        );
        for none in [
            r#"{"hello":"world"}"#,
            r#"{"x":{"name":"inner"}}"#,
            r#"{"name":5}"#,
            r#"[{"name":"a"}]"#,
            r#""name""#,
            r#"{"name":"a""#,
            "",
        ] {
            assert_eq!(name(none), None, "{none}");
        }
    }
}
