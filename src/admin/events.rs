//! `GET /api/events`: the node's membership and ownership events as Server-Sent Events
//! (`text/event-stream`), one `event:` line (`membership`, `ownership`, `lost`) and one JSON
//! `data:` line each, as [`MeshEvent`] serializes them. The stream starts with what each local
//! service owns now and follows the node until it stops; a comment every
//! [`KEEP_ALIVE`] keeps proxies from closing it.
//!
//! Bounded twice: each stream reads from the node's bounded feed (a client that does not keep
//! up gets a `lost` event with the number of events it missed, and never slows the node), and
//! at most `max_event_streams` are open at once (503 above it).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Response};
use hyper::body::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Admin;
use crate::answer::{ApiError, Body};
use crate::observe::MeshEvents;
use crate::ownership::MeshEvent;

/// How often an idle stream sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The body of an event stream.
pub(crate) struct EventBody {
    frames: BoxStream<'static, Result<Frame<Bytes>, Infallible>>,
    /// Kept while the stream lasts: the HTTP server's count of the request on its connection.
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl EventBody {
    /// This body, keeping `guard` until it is dropped.
    pub(crate) fn holding(mut self, guard: impl Send + Sync + 'static) -> EventBody {
        self.held = Some(Box::new(guard));
        self
    }
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.frames.poll_next_unpin(cx)
    }
}

/// An admin answer: a whole body, or (`/api/events`) a stream.
pub(crate) enum AdminAnswer {
    Whole(Response<Body>),
    Stream(Response<EventBody>),
}

/// Open event streams, bounded.
pub(super) struct Streams {
    open: Arc<Semaphore>,
    max: usize,
}

impl Streams {
    pub(super) fn new(max: usize) -> Streams {
        Streams {
            open: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

fn event_stream<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /api/events`.
pub(super) fn events(admin: &Admin, method: &Method) -> AdminAnswer {
    match *method {
        Method::GET => {}
        Method::HEAD => return AdminAnswer::Whole(event_stream(Body::default())),
        _ => return AdminAnswer::Whole(ApiError::MethodNotAllowed("GET, HEAD").response()),
    }
    let Ok(permit) = admin.streams.open.clone().try_acquire_owned() else {
        return AdminAnswer::Whole(ApiError::EventStreams(admin.streams.max).response());
    };
    AdminAnswer::Stream(event_stream(EventBody {
        frames: frames(admin.feed.subscribe(), permit),
        held: None,
    }))
}

/// One event as Server-Sent Events text.
fn encode(event: &MeshEvent) -> Bytes {
    let mut text = format!("event: {}\ndata: ", event.name()).into_bytes();
    // Serializing these plain structs cannot fail; the JSON holds no newline.
    let _ = serde_json::to_writer(&mut text, event);
    text.extend_from_slice(b"\n\n");
    Bytes::from(text)
}

/// The frames of one stream; the permit is given back when the stream is dropped.
fn frames(
    events: MeshEvents,
    permit: OwnedSemaphorePermit,
) -> BoxStream<'static, Result<Frame<Bytes>, Infallible>> {
    let start = tokio::time::Instant::now() + KEEP_ALIVE;
    let keep_alive = tokio::time::interval_at(start, KEEP_ALIVE);
    stream::unfold(
        (events, keep_alive, permit),
        |(mut events, mut keep_alive, permit)| async move {
            let data = tokio::select! {
                event = events.recv() => encode(&event?),
                _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            };
            Some((Ok(Frame::data(data)), (events, keep_alive, permit)))
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::OwnershipChange;
    use crate::ring::HashRange;

    #[test]
    fn an_event_is_one_event_line_and_one_data_line() {
        let event = MeshEvent::Ownership(OwnershipChange {
            version: 7,
            stream: "s".into(),
            service_id: "id\n".into(),
            gained: vec![HashRange { start: 0, end: 9 }],
            lost: vec![],
        });
        let text = String::from_utf8(encode(&event).to_vec()).unwrap();
        assert_eq!(
            text,
            "event: ownership\ndata: {\"type\":\"ownership\",\"version\":7,\"stream\":\"s\",\
             \"serviceId\":\"id\\n\",\"gained\":[{\"start\":0,\"end\":9}],\"lost\":[]}\n\n"
        );
    }
}
