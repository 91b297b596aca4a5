//! The link's frames: encoding into an outbox that one vectored write sends, and decoding.
//! A frame's length is checked against the reader's limit before room is made for it.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use tokio::io::AsyncWriteExt;

use crate::delivery::Refusal;
use crate::message::{Payload, Reply};
use crate::observe::{Incoming, SpanId, TraceId, TraceState, MAX_TRACESTATE};

/// The first bytes a link client sends; the server answers with [`PREFACE_ACK`]. It ends like
/// an HTTP request head, so an HTTP server that gets it answers 400 at once instead of waiting
/// for the rest of a request line, and the client falls back to HTTP without delay.
pub(crate) const PREFACE: &[u8; 12] = b"MESHLNK6\r\n\r\n";
pub(crate) const PREFACE_ACK: &[u8; 8] = b"MESHACK6";
const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_GOAWAY: u8 = 3;
const KIND_REFUSED: u8 = 4;
/// The largest frame this node writes.
const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Room in a request frame for what comes with the body: the fixed fields, and the stream, key,
/// service id and content type.
const REQUEST_HEAD: usize = 256 * 1024;
/// A request frame's fixed fields: kind, id, trace id, parent span id, flags, timeout, the
/// sender's ring checksum, and the lengths of the stream, key, service id, content type,
/// tracestate and previous owner.
const REQUEST_FIXED: usize = 1 + 8 + 16 + 8 + 1 + 4 + 8 + 2 + 4 + 2 + 2 + 2 + 2;
/// Room in a response frame for what comes with the body: the fixed fields and the extras.
const RESPONSE_HEAD: usize = 64 + MAX_EXTRAS;
/// The most bytes of a frame's extras block (the message's name and headers; see
/// [`Extras`]): as much as an HTTP/1.1 head that hyper reads by default (64 KiB).
pub(crate) const MAX_EXTRAS: usize = 64 * 1024;

/// The largest request frame a server with this body limit reads; a larger one ends the link.
pub(crate) fn request_limit(body_limit: usize) -> usize {
    body_limit.saturating_add(REQUEST_HEAD)
}

/// The largest response frame a client that takes answers of up to `max_response` reads.
pub(super) fn response_limit(max_response: usize) -> usize {
    max_response.saturating_add(RESPONSE_HEAD)
}
/// Bodies of at least this size are not copied into an outbox but written from where they
/// are, by reference: no copy of a large body while the link's lock is held.
const BY_REFERENCE: usize = 16 * 1024;
/// The most buffers one vectored write hands the kernel (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Frames waiting to be written: small ones back to back in one buffer, large bodies by
/// reference, each to go at its place in the buffer. One vectored write sends them all.
#[derive(Default)]
pub(crate) struct Outbox {
    bytes: BytesMut,
    /// Large bodies, each with the length `bytes` had when it was queued: it goes there.
    bodies: Vec<(usize, Bytes)>,
}

impl Outbox {
    pub(super) fn with_capacity(capacity: usize) -> Self {
        Outbox {
            bytes: BytesMut::with_capacity(capacity),
            bodies: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.bodies.is_empty()
    }

    /// Where the next frame queued will start.
    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes queued: the frames, their large bodies included.
    pub(super) fn size(&self) -> usize {
        self.bytes.len()
            + self
                .bodies
                .iter()
                .map(|(_, body)| body.len())
                .sum::<usize>()
    }

    /// Room in the buffer of small frames, kept between batches.
    pub(super) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.bodies.clear();
    }

    /// Makes room for a frame of `len` bytes, its length prefix included, whose body is `body`
    /// (a large body takes none).
    fn reserve(&mut self, len: usize, body: &Bytes) {
        let by_reference = if body.len() >= BY_REFERENCE {
            body.len()
        } else {
            0
        };
        self.bytes.reserve(len - by_reference);
    }

    /// Queues a frame's body: copied when small, by reference when large.
    fn put_body(&mut self, body: &Bytes) {
        if body.len() >= BY_REFERENCE {
            self.bodies.push((self.bytes.len(), body.clone()));
        } else {
            self.bytes.put_slice(body);
        }
    }

    /// The frames that start at `frames` (offsets into `bytes`, in order, one per frame queued)
    /// and are marked to be kept, with their bodies, in a new outbox; and where each kept frame
    /// starts in it. A frame's body is its last part: one kept by reference sits at the frame's
    /// end.
    pub(super) fn keeping(&self, frames: &[(usize, bool)]) -> (Outbox, Vec<usize>) {
        let mut kept = Outbox::with_capacity(self.bytes.len());
        let mut starts = Vec::with_capacity(frames.len());
        let mut bodies = self.bodies.iter().peekable();
        for (n, &(start, keep)) in frames.iter().enumerate() {
            let end = frames.get(n + 1).map_or(self.bytes.len(), |next| next.0);
            if keep {
                starts.push(kept.bytes.len());
                kept.bytes.extend_from_slice(&self.bytes[start..end]);
            }
            while let Some((place, body)) = bodies.next_if(|(place, _)| *place <= end) {
                if keep && *place > start {
                    kept.bodies.push((kept.bytes.len(), body.clone()));
                }
            }
        }
        (kept, starts)
    }

    /// Everything queued, in order, as the buffers of one vectored write.
    fn slices(&self) -> Vec<std::io::IoSlice<'_>> {
        let mut slices = Vec::with_capacity(2 * self.bodies.len() + 1);
        let mut at = 0;
        for (place, body) in &self.bodies {
            if *place > at {
                slices.push(std::io::IoSlice::new(&self.bytes[at..*place]));
            }
            slices.push(std::io::IoSlice::new(body));
            at = *place;
        }
        if at < self.bytes.len() {
            slices.push(std::io::IoSlice::new(&self.bytes[at..]));
        }
        slices
    }

    /// Writes everything queued, in order.
    pub(crate) async fn write_to<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        if self.bodies.is_empty() {
            writer.write_all(&self.bytes).await?;
            // A TLS stream may keep part of what it took until flushed; TCP's flush is free.
            return writer.flush().await;
        }
        let mut slices = self.slices();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            let end = slices.len().min(MAX_SLICES);
            let written = writer.write_vectored(&slices[..end]).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            std::io::IoSlice::advance_slices(&mut slices, written);
        }
        writer.flush().await
    }
}

/// A request as the owner receives it.
#[derive(Debug)]
pub(crate) struct LinkRequest {
    pub(crate) id: u64,
    /// The request's trace context, if it has one.
    pub(crate) trace: Option<Incoming>,
    pub(crate) timeout: Duration,
    /// The checksum of the sender's ring of the stream, for a request it sent to the key's
    /// owner (see `table::StreamServices::checksum`); 0 for one sent to a service by id.
    pub(crate) ring: u64,
    /// The service that owned the key before, as the sender's tables say (see
    /// `Header::previous_owner`).
    pub(crate) previous_owner: Option<String>,
    pub(crate) stream: String,
    pub(crate) key: String,
    pub(crate) service_id: String,
    pub(crate) extras: Extras,
    pub(crate) payload: Payload,
}

/// What a request carries beside its body, and an answer beside its status (issue 21): the
/// message's name (requests only) and headers. A block of its own in each frame, delimited by
/// its length (u32), so that it can change without touching the fields around it:
/// `name_len: u16, name, count: u16, count × (name_len: u16, name, value_len: u16, value)`.
/// At most [`MAX_EXTRAS`] bytes; headers past that bound are left out by the writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    pub(crate) name: Option<String>,
    pub(crate) headers: HeaderMap,
}

/// The extras block of no name and no headers, the most common, without its length prefix.
const NO_EXTRAS: [u8; 4] = [0; 4];

/// Why a link frame cannot carry a request: a string longer than its length field, a name,
/// headers or a tracestate past their bounds, or a frame past the largest. The request goes
/// over HTTP instead, which carries it whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unfit(pub(crate) &'static str);

/// The extras block of `name` and `headers`, without its length prefix; `None` for
/// [`NO_EXTRAS`], which takes no allocation. Headers past the block's bound make it
/// [`Unfit`] when `whole`, else they are left out.
fn extras_block(
    name: Option<&str>,
    headers: &HeaderMap,
    whole: bool,
) -> Result<Option<BytesMut>, Unfit> {
    if name.is_none() && headers.is_empty() {
        return Ok(None);
    }
    let name = name.unwrap_or("");
    if 2 + name.len() + 2 > MAX_EXTRAS {
        return Err(Unfit("message name too long for a link frame"));
    }
    let mut block = BytesMut::with_capacity(4 + name.len() + 64 * headers.len());
    block.put_u16(name.len() as u16);
    block.put_slice(name.as_bytes());
    let count_at = block.len();
    block.put_u16(0);
    let mut count = 0u16;
    for (header, value) in headers {
        let size = 4 + header.as_str().len() + value.len();
        if block.len() + size > MAX_EXTRAS || count == u16::MAX {
            if whole {
                return Err(Unfit("headers too large for a link frame"));
            }
            break;
        }
        block.put_u16(header.as_str().len() as u16);
        block.put_slice(header.as_str().as_bytes());
        block.put_u16(value.len() as u16);
        block.put_slice(value.as_bytes());
        count += 1;
    }
    block[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    Ok(Some(block))
}

/// Reads an extras block (its length prefix included) off the front of `frame`; `None` for
/// one that is not well formed or longer than [`MAX_EXTRAS`].
fn take_extras(frame: &mut Bytes) -> Option<Extras> {
    if frame.len() < 4 {
        return None;
    }
    let len = frame.get_u32() as usize;
    if len > MAX_EXTRAS || frame.len() < len {
        return None;
    }
    let mut block = frame.split_to(len);
    let take_u16 = |block: &mut Bytes| (block.len() >= 2).then(|| block.get_u16() as usize);
    let name_len = take_u16(&mut block)?;
    let name = take_string(&mut block, name_len)?;
    let count = take_u16(&mut block)?;
    let mut headers = HeaderMap::new();
    let mut last: Option<HeaderName> = None;
    for _ in 0..count {
        let len = take_u16(&mut block)?;
        if block.len() < len {
            return None;
        }
        let raw = block.split_to(len);
        let header = HeaderName::from_bytes(&raw).ok()?;
        // Only the form the writer gives: lower case, each name's values together.
        if header.as_str().as_bytes() != &raw[..]
            || (last.as_ref() != Some(&header) && headers.contains_key(&header))
        {
            return None;
        }
        last = Some(header.clone());
        let len = take_u16(&mut block)?;
        if block.len() < len {
            return None;
        }
        let value = HeaderValue::from_maybe_shared(block.split_to(len)).ok()?;
        headers.append(header, value);
    }
    if !block.is_empty() {
        return None;
    }
    Some(Extras {
        name: (!name.is_empty()).then_some(name),
        headers,
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_request(
    out: &mut Outbox,
    id: u64,
    trace: Option<&Incoming>,
    timeout: Duration,
    (ring, previous_owner): (u64, &str),
    stream: &str,
    key: &str,
    service_id: &str,
    content_type: &str,
    (name, headers): (Option<&str>, &HeaderMap),
    body: &Bytes,
) -> Result<(), Unfit> {
    let extras = extras_block(name, headers, true)?;
    let extras = extras.as_deref().unwrap_or(&NO_EXTRAS);
    if stream.len() > u16::MAX as usize
        || previous_owner.len() > u16::MAX as usize
        || service_id.len() > u16::MAX as usize
        || content_type.len() > u16::MAX as usize
    {
        return Err(Unfit(
            "stream, service id or content type too long for a link frame",
        ));
    }
    let state = trace
        .and_then(|t| t.state.as_ref())
        .map_or(&[][..], |s| s.value().as_bytes());
    if state.len() > MAX_TRACESTATE {
        return Err(Unfit("tracestate too long for a link frame"));
    }
    let len = REQUEST_FIXED
        + state.len()
        + stream.len()
        + key.len()
        + service_id.len()
        + content_type.len()
        + previous_owner.len()
        + 4
        + extras.len()
        + body.len();
    if len > MAX_FRAME {
        return Err(Unfit("message too large for a link frame"));
    }
    out.reserve(4 + len, body);
    let buf = &mut out.bytes;
    buf.put_u32(len as u32);
    buf.put_u8(KIND_REQUEST);
    buf.put_u64(id);
    buf.put_u128(trace.map_or(0, |t| t.trace.as_u128()));
    buf.put_u64(trace.and_then(|t| t.parent).map_or(0, SpanId::as_u64));
    buf.put_u8(trace.map_or(0, |t| t.flags));
    buf.put_u32(timeout.as_millis().min(u32::MAX as u128) as u32);
    buf.put_u64(ring);
    buf.put_u16(stream.len() as u16);
    buf.put_u32(key.len() as u32);
    buf.put_u16(service_id.len() as u16);
    buf.put_u16(content_type.len() as u16);
    buf.put_u16(state.len() as u16);
    buf.put_u16(previous_owner.len() as u16);
    buf.put_slice(stream.as_bytes());
    buf.put_slice(key.as_bytes());
    buf.put_slice(service_id.as_bytes());
    buf.put_slice(content_type.as_bytes());
    buf.put_slice(state);
    buf.put_slice(previous_owner.as_bytes());
    buf.put_u32(extras.len() as u32);
    buf.put_slice(extras);
    out.put_body(body);
    Ok(())
}

pub(crate) fn encode_response(out: &mut Outbox, id: u64, reply: &Reply) {
    // Headers past the bound are left out (see `extras_block`); a name is never written here.
    let extras = extras_block(None, &reply.headers, false).ok().flatten();
    let extras = extras.as_deref().unwrap_or(&NO_EXTRAS);
    let body = &reply.body;
    let len = 1 + 8 + 2 + 4 + extras.len() + body.len();
    out.reserve(4 + len, body);
    let buf = &mut out.bytes;
    buf.put_u32(len as u32);
    buf.put_u8(KIND_RESPONSE);
    buf.put_u64(id);
    buf.put_u16(reply.status.as_u16());
    buf.put_u32(extras.len() as u32);
    buf.put_slice(extras);
    out.put_body(body);
}

pub(super) fn encode_goaway(out: &mut Outbox) {
    out.bytes.put_u32(1);
    out.bytes.put_u8(KIND_GOAWAY);
}

fn take_string(frame: &mut Bytes, len: usize) -> Option<String> {
    if frame.len() < len {
        return None;
    }
    String::from_utf8(frame.split_to(len).to_vec()).ok()
}

/// Decodes a request frame; `None` for one that is not well formed: its strings, or a trace
/// context that no node writes (a `tracestate` too long or malformed, a parent span or flags
/// without a trace id).
pub(crate) fn decode_request(mut frame: Bytes) -> Option<LinkRequest> {
    if frame.len() < REQUEST_FIXED || frame.get_u8() != KIND_REQUEST {
        return None;
    }
    let id = frame.get_u64();
    let trace = TraceId::from_u128(frame.get_u128());
    let parent = SpanId::from_u64(frame.get_u64());
    let flags = frame.get_u8();
    let timeout = Duration::from_millis(frame.get_u32() as u64);
    let ring = frame.get_u64();
    let stream_len = frame.get_u16() as usize;
    let key_len = frame.get_u32() as usize;
    let service_len = frame.get_u16() as usize;
    let ct_len = frame.get_u16() as usize;
    let state_len = frame.get_u16() as usize;
    let previous_len = frame.get_u16() as usize;
    if state_len > MAX_TRACESTATE {
        return None;
    }
    let stream = take_string(&mut frame, stream_len)?;
    let key = take_string(&mut frame, key_len)?;
    let service_id = take_string(&mut frame, service_len)?;
    let content_type = take_string(&mut frame, ct_len)?;
    if frame.len() < state_len {
        return None;
    }
    let state = frame.split_to(state_len);
    let previous_owner = take_string(&mut frame, previous_len)?;
    let previous_owner = (!previous_owner.is_empty()).then_some(previous_owner);
    // A node writes a tracestate only when it is well formed, and the rest of the context only
    // with a trace id: a frame that says otherwise is not one of ours.
    let state = match state.is_empty() {
        true => None,
        false => Some(TraceState::from_bytes(&state)?),
    };
    let trace = match trace {
        Some(trace) => Some(Incoming {
            trace,
            parent,
            flags,
            state,
        }),
        None if parent.is_none() && flags == 0 && state.is_none() => None,
        None => return None,
    };
    let extras = take_extras(&mut frame)?;
    Some(LinkRequest {
        id,
        trace,
        timeout,
        ring,
        previous_owner,
        stream,
        key,
        service_id,
        extras,
        payload: Payload {
            body: frame,
            content_type: (!content_type.is_empty()).then_some(content_type),
        },
    })
}

pub(crate) fn decode_response(mut frame: Bytes) -> Option<(u64, Reply)> {
    if frame.len() < 1 + 8 + 2 || frame.get_u8() != KIND_RESPONSE {
        return None;
    }
    let id = frame.get_u64();
    let status = StatusCode::from_u16(frame.get_u16()).ok()?;
    let extras = take_extras(&mut frame)?;
    Some((
        id,
        Reply {
            status,
            body: frame,
            headers: extras.headers,
        },
    ))
}

/// What a link's server answers a request with: a reply, or the node's refusal to run it.
pub(crate) type Answer = Result<Reply, Refusal>;

/// Queues the frame of `answer` to request `id`.
pub(super) fn encode_answer(out: &mut Outbox, id: u64, answer: &Answer) {
    match answer {
        Ok(reply) => encode_response(out, id, reply),
        Err(why) => encode_refusal(out, id, *why),
    }
}

/// The node refused request `id` without running it.
pub(super) fn encode_refusal(out: &mut Outbox, id: u64, why: Refusal) {
    out.bytes.reserve(4 + 1 + 8 + 1);
    out.bytes.put_u32(1 + 8 + 1);
    out.bytes.put_u8(KIND_REFUSED);
    out.bytes.put_u64(id);
    out.bytes.put_u8(why.code());
}

/// A frame a link's server sends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServerFrame {
    /// What became of request `id`: an answer, or the node's refusal to run it.
    Answer(u64, Result<Reply, Refusal>),
    /// The server is stopping.
    GoAway,
}

/// Decodes a frame from a link's server; `None` for one that is not well formed.
pub(crate) fn decode_server_frame(frame: Bytes) -> Option<ServerFrame> {
    match *frame.first()? {
        KIND_GOAWAY => Some(ServerFrame::GoAway),
        KIND_REFUSED if frame.len() == 1 + 8 + 1 => {
            let id = u64::from_be_bytes(frame[1..9].try_into().ok()?);
            let why = Refusal::from_code(frame[9])?;
            Some(ServerFrame::Answer(id, Err(why)))
        }
        KIND_RESPONSE => {
            let (id, reply) = decode_response(frame)?;
            Some(ServerFrame::Answer(id, Ok(reply)))
        }
        _ => None,
    }
}

/// The length the frame at the front of `buf` announces, once its length prefix has arrived.
pub(super) fn announced(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Splits the next complete frame off the front of `buf`. Fails, with the length it announces,
/// on a frame longer than `limit`, before any room is made for it.
pub(crate) fn next_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, usize> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > limit {
        return Err(len);
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    #[test]
    fn frames_round_trip() {
        let mut out = Outbox::default();
        let trace = Incoming {
            trace: TraceId::from_u128(0x4bf92f3577b34da6a3ce929d0e0e4736).unwrap(),
            parent: SpanId::from_u64(0x00f067aa0ba902b7),
            flags: 1,
            state: TraceState::from_bytes(b"congo=t61rcWkgMzE"),
        };
        assert!(trace.state.is_some());
        encode_request(
            &mut out,
            7,
            Some(&trace),
            Duration::from_millis(1500),
            (0x0123_4567_89ab_cdef, "svc-before"),
            "echo",
            "a/b ключ",
            "svc",
            "application/json",
            (Some("order.placed"), &{
                let mut headers = HeaderMap::new();
                headers.insert("accept-language", HeaderValue::from_static("fr"));
                headers.append("x-many", HeaderValue::from_static("1"));
                headers.append("x-many", HeaderValue::from_static("2"));
                headers
            }),
            &Bytes::from_static(b"{\"x\":1}"),
        )
        .unwrap();
        encode_response(
            &mut out,
            9,
            &Reply::new(StatusCode::CONFLICT, Bytes::from_static(b"{}")),
        );
        assert!(out.bodies.is_empty(), "small bodies are copied");
        let mut buf = out.bytes;
        let request = decode_request(next_frame(&mut buf, MAX_FRAME).unwrap().unwrap()).unwrap();
        assert_eq!((request.id, request.trace), (7, Some(trace)));
        assert_eq!(request.timeout, Duration::from_millis(1500));
        assert_eq!(request.ring, 0x0123_4567_89ab_cdef);
        assert_eq!(request.previous_owner.as_deref(), Some("svc-before"));
        assert_eq!(
            (request.stream.as_str(), request.key.as_str()),
            ("echo", "a/b ключ")
        );
        assert_eq!(request.service_id, "svc");
        assert_eq!(request.extras.name.as_deref(), Some("order.placed"));
        assert_eq!(request.extras.headers["accept-language"], "fr");
        assert_eq!(request.extras.headers.get_all("x-many").iter().count(), 2);
        assert_eq!(
            request.payload.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(&request.payload.body[..], b"{\"x\":1}");
        let (id, reply) =
            decode_response(next_frame(&mut buf, MAX_FRAME).unwrap().unwrap()).unwrap();
        assert_eq!(
            (id, reply.status, &reply.body[..]),
            (9, StatusCode::CONFLICT, &b"{}"[..])
        );
        assert!(next_frame(&mut buf, MAX_FRAME).unwrap().is_none());
    }

    /// The extras block: what the writer leaves out past its bound (an answer's) or refuses
    /// to write (a request's, which then goes over HTTP), and what the reader refuses (longer
    /// than the bound, not in the writer's form, or not whole).
    #[test]
    fn extras_are_bounded_and_read_only_in_the_writers_form() {
        let mut many = HeaderMap::new();
        for n in 0..2000 {
            let name = HeaderName::from_bytes(format!("x-h{n}").as_bytes()).unwrap();
            many.insert(name, HeaderValue::from_static("0123456789abcdef0123456789"));
        }
        assert_eq!(
            extras_block(Some("n"), &many, true),
            Err(Unfit("headers too large for a link frame"))
        );
        let block = extras_block(Some("n"), &many, false).unwrap().unwrap();
        assert!(block.len() <= MAX_EXTRAS, "{}", block.len());
        let mut framed = Bytes::from([&(block.len() as u32).to_be_bytes()[..], &block].concat());
        let read = take_extras(&mut framed).unwrap();
        assert!(read.headers.len() < many.len() && read.headers.len() > 1000);
        assert!(extras_block(Some(&"n".repeat(MAX_EXTRAS)), &HeaderMap::new(), false).is_err());

        let block = |pairs: &[(&str, &str)], declared: Option<u32>| {
            let mut b = vec![0u8, 0];
            b.extend_from_slice(&(pairs.len() as u16).to_be_bytes());
            for (k, v) in pairs {
                b.extend_from_slice(&(k.len() as u16).to_be_bytes());
                b.extend_from_slice(k.as_bytes());
                b.extend_from_slice(&(v.len() as u16).to_be_bytes());
                b.extend_from_slice(v.as_bytes());
            }
            let len = declared.unwrap_or(b.len() as u32);
            Bytes::from([&len.to_be_bytes()[..], &b].concat())
        };
        assert!(take_extras(&mut block(&[("a", "1"), ("a", "2"), ("b", "3")], None)).is_some());
        for refused in [
            block(&[("A", "1")], None),
            block(&[("a", "1"), ("b", "2"), ("a", "3")], None),
            block(&[("a", "\n")], None),
            block(&[("a", "1")], Some(100)),
            block(&[("a", "1")], Some(MAX_EXTRAS as u32 + 1)),
            block(&[("a", "1")], Some(3)),
        ] {
            assert!(take_extras(&mut refused.clone()).is_none(), "{refused:?}");
        }
    }

    /// A request without a trace context decodes without one; a context no node writes (a
    /// tracestate too long or malformed, a parent without a trace) makes the frame malformed.
    #[test]
    fn trace_contexts_in_frames_are_bounded() {
        let frame = |trace: Option<&Incoming>| {
            let mut out = Outbox::default();
            let body = Bytes::from_static(b"{}");
            let extras = (None, &HeaderMap::new());
            encode_request(
                &mut out,
                1,
                trace,
                Duration::ZERO,
                (0, ""),
                "s",
                "k",
                "",
                "",
                extras,
                &body,
            )
            .unwrap();
            let mut buf = out.bytes;
            next_frame(&mut buf, MAX_FRAME).unwrap().unwrap()
        };
        assert_eq!(decode_request(frame(None)).unwrap().trace, None);
        let trace = Incoming {
            trace: TraceId::new(),
            parent: None,
            flags: 0,
            state: None,
        };
        let good = frame(Some(&trace));
        assert_eq!(decode_request(good.clone()).unwrap().trace, Some(trace));
        // The trace id's 16 bytes follow the kind and the id: zero them, and the frame's
        // parent-less, flag-less context is no context. Give it a parent and it is malformed.
        let mut none = good.to_vec();
        none[9..25].fill(0);
        assert_eq!(
            decode_request(Bytes::from(none.clone())).unwrap().trace,
            None
        );
        none[32] = 1;
        assert!(decode_request(Bytes::from(none)).is_none());
        // A tracestate: its length is the last u16 of the fixed fields but one (the previous
        // owner's, 0 here); it goes after the content type, before the extras block (here the
        // empty one) and the body.
        let with_state = |state: &[u8]| {
            let mut bytes = good[..REQUEST_FIXED - 4].to_vec();
            bytes.extend_from_slice(&(state.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&0u16.to_be_bytes());
            bytes.extend_from_slice(b"sk");
            bytes.extend_from_slice(state);
            bytes.extend_from_slice(&(NO_EXTRAS.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&NO_EXTRAS);
            bytes.extend_from_slice(b"{}");
            decode_request(Bytes::from(bytes))
        };
        let kept = with_state(b"congo=t61rcWkgMzE").unwrap();
        assert_eq!(&kept.payload.body[..], b"{}");
        assert!(kept.trace.unwrap().state.is_some());
        assert!(with_state(b"Congo=1").is_none());
        assert!(with_state(format!("k={}", "v".repeat(MAX_TRACESTATE)).as_bytes()).is_none());
    }

    #[test]
    fn refusals_and_goaways_are_frames_of_their_own() {
        let mut out = Outbox::default();
        encode_refusal(&mut out, 5, Refusal::NoService);
        encode_goaway(&mut out);
        encode_response(
            &mut out,
            6,
            &Reply::new(StatusCode::MISDIRECTED_REQUEST, Bytes::from_static(b"{}")),
        );
        let mut buf = out.bytes;
        let mut next = || decode_server_frame(next_frame(&mut buf, MAX_FRAME).unwrap().unwrap());
        assert_eq!(
            next(),
            Some(ServerFrame::Answer(5, Err(Refusal::NoService)))
        );
        assert_eq!(next(), Some(ServerFrame::GoAway));
        // A handler's 421 is an answer like any other.
        assert_eq!(
            next(),
            Some(ServerFrame::Answer(
                6,
                Ok(Reply::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    Bytes::from_static(b"{}")
                ))
            ))
        );
        for junk in [&b"\x04\0\0\0\0\0\0\0\x05\x09"[..], b"\x04short", b"\x09"] {
            assert_eq!(decode_server_frame(Bytes::copy_from_slice(junk)), None);
        }
    }

    #[test]
    fn partial_and_oversized_frames() {
        let mut out = Outbox::default();
        encode_response(
            &mut out,
            1,
            &Reply::new(StatusCode::OK, Bytes::from_static(b"hello")),
        );
        let mut partial = out.bytes.split_to(6);
        assert!(next_frame(&mut partial, MAX_FRAME).unwrap().is_none());
        let mut huge = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert_eq!(next_frame(&mut huge, MAX_FRAME), Err(u32::MAX as usize));
        assert_eq!(
            huge.capacity(),
            4,
            "no room made for a frame past the limit"
        );
        let mut over = BytesMut::from(&(request_limit(10) as u32 + 1).to_be_bytes()[..]);
        assert!(next_frame(&mut over, request_limit(10)).is_err());
        assert!(decode_request(Bytes::from_static(b"\x01short")).is_none());
    }

    /// Leaving frames out of an outbox keeps the others whole, their large bodies (by
    /// reference) included, and in order.
    #[test]
    fn an_outbox_keeps_only_the_frames_it_is_told_to() {
        let mut out = Outbox::default();
        let body = |n: usize| {
            let len = if n.is_multiple_of(2) {
                3
            } else {
                BY_REFERENCE + n
            };
            Bytes::from(vec![n as u8; len])
        };
        let mut frames = Vec::new();
        for n in 0..8 {
            let start = out.bytes.len();
            encode_response(&mut out, n as u64, &Reply::new(StatusCode::OK, body(n)));
            // Keep 1, 2, 5 and 6: both kinds of body, kept and left out, next to each other.
            frames.push((start, matches!(n, 1 | 2 | 5 | 6)));
        }
        let (kept, starts) = out.keeping(&frames);
        // Each kept frame starts where it says: its kind, then its id.
        for (start, id) in starts.iter().zip([1u64, 2, 5, 6]) {
            let head = &kept.bytes[start + 4..start + 13];
            assert_eq!(head[0], KIND_RESPONSE, "kind of frame {id}");
            assert_eq!(u64::from_be_bytes(head[1..].try_into().unwrap()), id);
        }
        assert_eq!(
            kept.bodies.len(),
            2,
            "the kept large bodies stay by reference"
        );
        // The stream as the writer would send it, read back.
        let mut stream = BytesMut::new();
        for slice in kept.slices() {
            stream.extend_from_slice(&slice);
        }
        let mut seen = Vec::new();
        while let Some(frame) = next_frame(&mut stream, MAX_FRAME).unwrap() {
            let (id, reply) = decode_response(frame).unwrap();
            assert_eq!(reply.body, body(id as usize), "body of frame {id}");
            seen.push(id);
        }
        assert!(stream.is_empty());
        assert_eq!(seen, [1, 2, 5, 6]);
    }

    /// An outbox of small frames and large bodies (kept by reference, more of them than one
    /// vectored write takes) writes, over a real socket, exactly the frames it was given, in
    /// order.
    #[tokio::test]
    async fn an_outbox_with_large_bodies_writes_every_frame_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut out = Outbox::default();
        let count = 2 * MAX_SLICES;
        let body = |n: usize| {
            let len = if n.is_multiple_of(3) {
                5
            } else {
                BY_REFERENCE + n
            };
            Bytes::from(vec![(n % 251) as u8; len])
        };
        for n in 0..count {
            encode_response(&mut out, n as u64, &Reply::new(StatusCode::OK, body(n)));
        }
        assert!(
            out.bodies.len() > MAX_SLICES,
            "large bodies are kept by reference"
        );
        let reader = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            while stream.read_buf(&mut buf).await.unwrap() > 0 {
                while let Some(frame) = next_frame(&mut buf, MAX_FRAME).unwrap() {
                    frames.push(decode_response(frame).expect("a response frame"));
                }
            }
            assert!(buf.is_empty(), "a partial frame was left over");
            frames
        });
        let mut stream = TcpStream::connect(address).await.unwrap();
        out.write_to(&mut stream).await.unwrap();
        stream.shutdown().await.unwrap();
        drop(stream);
        let frames = tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .expect("the reader got every frame within 20 s")
            .unwrap();
        assert_eq!(frames.len(), count);
        for (n, (id, reply)) in frames.into_iter().enumerate() {
            assert_eq!(id, n as u64);
            assert_eq!(reply.body, body(n), "body of frame {n}");
        }
    }
}
