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
    /// The key that chose the service.
    pub partition_key: Arc<str>,
}

/// A message to send or broadcast through a [`crate::Router`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub stream: String,
    pub partition_key: String,
    pub data: Value,
}

impl Message {
    pub fn new(stream: impl Into<String>, partition_key: impl Into<String>, data: Value) -> Self {
        Message {
            stream: stream.into(),
            partition_key: partition_key.into(),
            data,
        }
    }
}

/// A handler's answer: a status and a JSON body, already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// A 200 answer with `value` encoded as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Reply, HandlerError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| HandlerError::internal(format!("handler result is not JSON: {e}")))?;
        Ok(Reply {
            status: StatusCode::OK,
            body: Bytes::from(body),
        })
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
