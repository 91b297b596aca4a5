//! The peer link: a multiplexed binary protocol for forwards between meshage nodes.
//!
//! A forward over HTTP/1.1 costs a full HTTP exchange on both nodes and a connection per
//! request in flight. The link sends many forwards over one TCP connection per peer and writes
//! whatever is queued in one system call, so under load a forward costs little more than the
//! request that carried it in. It shares the node's HTTP port: a connection that starts with
//! [`PREFACE`] is a link, anything else is HTTP. The server acknowledges the preface, so a peer
//! that does not speak the link (an original node) is noticed before any request is sent, and
//! the sender falls back to HTTP for it.
//!
//! Frames are length-prefixed: `u32 len` then `len` bytes.
//! Request: `u8 1, u64 id, u64 trace, u32 timeout_ms, u16 stream_len, u32 key_len,
//! u16 service_len, u16 content_type_len`, the four strings, then the body. `trace` is the
//! request's trace id (0 for none), so that both nodes log the request under one id.
//! Response: `u8 2, u64 id, u16 status`, then the body.
//! Go-away: `u8 3`, from a server that is stopping. It answers every request it reads from then
//! on with 421 without running it, and closes the link once the client has closed its half; the
//! client sends nothing new on the link and closes its half at once. So no request is ever lost
//! between the two: each one the client wrote gets an answer, and each one it did not write it
//! knows was never sent.
//!
//! The client tells its callers what became of a request that got no answer: never written
//! (the link ended while it was queued, so it may go elsewhere) or written and then lost (the
//! peer may have run it).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tracing::debug;

use crate::forward::ForwardError;
use crate::message::{Payload, Reply};
use crate::FastMap;

/// The first bytes a link client sends; the server answers with [`PREFACE_ACK`]. It ends like
/// an HTTP request head, so an HTTP server that gets it answers 400 at once instead of waiting
/// for the rest of a request line, and the client falls back to HTTP without delay.
pub const PREFACE: &[u8; 12] = b"MESHLNK2\r\n\r\n";
const PREFACE_ACK: &[u8; 8] = b"MESHACK2";
const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_GOAWAY: u8 = 3;
/// The body of the 500 for a request whose handler panicked.
const HANDLER_FAILED_BODY: &[u8] = br#"{"error":"the handler failed (it panicked)"}"#;
/// The body of the 421 a stopping server answers with.
pub const LEAVING_BODY: &[u8] = br#"{"error":"node is leaving"}"#;
/// How long a stopping server keeps a link whose client neither closes it nor sends anything
/// (a client that does not know the go-away frame).
const STOPPING_IDLE: Duration = Duration::from_secs(2);
/// Frames above this size end the connection (a broken or hostile peer).
const MAX_FRAME: usize = 64 * 1024 * 1024;
/// A writer buffer that grew past this (large bodies) is not kept for the next batch.
const MAX_KEPT_BATCH: usize = 256 * 1024;
/// The writer's buffer to start with.
const BATCH_CAPACITY: usize = 64 * 1024;
/// Bodies of at least this size are not copied into an outbox but written from where they
/// are, by reference: no copy of a large body while the link's lock is held.
const BY_REFERENCE: usize = 16 * 1024;
/// The most buffers one vectored write hands the kernel (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Frames waiting to be written: small ones back to back in one buffer, large bodies by
/// reference, each to go at its place in the buffer. One vectored write sends them all.
#[derive(Default)]
struct Outbox {
    bytes: BytesMut,
    /// Large bodies, each with the length `bytes` had when it was queued: it goes there.
    bodies: Vec<(usize, Bytes)>,
}

impl Outbox {
    fn with_capacity(capacity: usize) -> Self {
        Outbox {
            bytes: BytesMut::with_capacity(capacity),
            bodies: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.bodies.is_empty()
    }

    fn clear(&mut self) {
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
    fn keeping(&self, frames: &[(usize, bool)]) -> (Outbox, Vec<usize>) {
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
    async fn write_to<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        if self.bodies.is_empty() {
            return writer.write_all(&self.bytes).await;
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
        Ok(())
    }
}

/// A request as the owner receives it.
#[derive(Debug)]
pub struct LinkRequest {
    pub id: u64,
    /// The request's trace id; 0 when it has none.
    pub trace: u64,
    pub timeout: Duration,
    pub stream: String,
    pub key: String,
    pub service_id: String,
    pub payload: Payload,
}

#[allow(clippy::too_many_arguments)]
fn encode_request(
    out: &mut Outbox,
    id: u64,
    trace: u64,
    timeout: Duration,
    stream: &str,
    key: &str,
    service_id: &str,
    content_type: &str,
    body: &Bytes,
) -> Result<(), ForwardError> {
    if stream.len() > u16::MAX as usize
        || service_id.len() > u16::MAX as usize
        || content_type.len() > u16::MAX as usize
    {
        return Err(ForwardError::Failed(
            "stream, service id or content type too long for a link frame".into(),
        ));
    }
    let len = 1
        + 8
        + 8
        + 4
        + 2
        + 4
        + 2
        + 2
        + stream.len()
        + key.len()
        + service_id.len()
        + content_type.len()
        + body.len();
    if len > MAX_FRAME {
        return Err(ForwardError::Failed(format!(
            "message of {len} bytes is too large for a link frame"
        )));
    }
    out.reserve(4 + len, body);
    let buf = &mut out.bytes;
    buf.put_u32(len as u32);
    buf.put_u8(KIND_REQUEST);
    buf.put_u64(id);
    buf.put_u64(trace);
    buf.put_u32(timeout.as_millis().min(u32::MAX as u128) as u32);
    buf.put_u16(stream.len() as u16);
    buf.put_u32(key.len() as u32);
    buf.put_u16(service_id.len() as u16);
    buf.put_u16(content_type.len() as u16);
    buf.put_slice(stream.as_bytes());
    buf.put_slice(key.as_bytes());
    buf.put_slice(service_id.as_bytes());
    buf.put_slice(content_type.as_bytes());
    out.put_body(body);
    Ok(())
}

fn encode_response(out: &mut Outbox, id: u64, status: StatusCode, body: &Bytes) {
    let len = 1 + 8 + 2 + body.len();
    out.reserve(4 + len, body);
    let buf = &mut out.bytes;
    buf.put_u32(len as u32);
    buf.put_u8(KIND_RESPONSE);
    buf.put_u64(id);
    buf.put_u16(status.as_u16());
    out.put_body(body);
}

fn encode_goaway(out: &mut Outbox) {
    out.bytes.put_u32(1);
    out.bytes.put_u8(KIND_GOAWAY);
}

fn take_string(frame: &mut Bytes, len: usize) -> Option<String> {
    if frame.len() < len {
        return None;
    }
    String::from_utf8(frame.split_to(len).to_vec()).ok()
}

fn decode_request(mut frame: Bytes) -> Option<LinkRequest> {
    if frame.len() < 1 + 8 + 8 + 4 + 2 + 4 + 2 + 2 || frame.get_u8() != KIND_REQUEST {
        return None;
    }
    let id = frame.get_u64();
    let trace = frame.get_u64();
    let timeout = Duration::from_millis(frame.get_u32() as u64);
    let stream_len = frame.get_u16() as usize;
    let key_len = frame.get_u32() as usize;
    let service_len = frame.get_u16() as usize;
    let ct_len = frame.get_u16() as usize;
    let stream = take_string(&mut frame, stream_len)?;
    let key = take_string(&mut frame, key_len)?;
    let service_id = take_string(&mut frame, service_len)?;
    let content_type = take_string(&mut frame, ct_len)?;
    Some(LinkRequest {
        id,
        trace,
        timeout,
        stream,
        key,
        service_id,
        payload: Payload {
            body: frame,
            content_type: (!content_type.is_empty()).then_some(content_type),
        },
    })
}

fn decode_response(mut frame: Bytes) -> Option<(u64, Reply)> {
    if frame.len() < 1 + 8 + 2 || frame.get_u8() != KIND_RESPONSE {
        return None;
    }
    let id = frame.get_u64();
    let status = StatusCode::from_u16(frame.get_u16()).ok()?;
    Some((
        id,
        Reply {
            status,
            body: frame,
        },
    ))
}

/// Splits every complete frame off the front of `buf`. `Err` on an oversized frame.
fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, ()> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(());
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// What became of a request queued on a link, when no answer came. A waiter whose sender is
/// dropped without a word lost its request after it was written: the peer may have run it.
enum Outcome {
    Reply(Reply),
    /// The link ended before the request was written: the peer never saw it.
    Unsent,
    /// Its deadline passed without an answer.
    Expired,
}

/// Hashes a link's request ids, which count up from 1: one multiplication spreads them over
/// the whole word (SipHash is not needed for numbers this node makes itself).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// What one link's senders, its writer, its reader and its expiry sweep share, under one lock
/// that each request takes once to be queued and once to be answered.
#[derive(Default)]
struct Queue {
    /// Requests waiting for their answers: id → (waiter, deadline).
    pending: HashMap<u64, (oneshot::Sender<Outcome>, Instant), BuildHasherDefault<IdHasher>>,
    /// Frames encoded by their senders and not yet taken by the writer.
    outbox: Outbox,
    /// The ids of the requests whose frames are in `outbox`, each with where its frame starts.
    queued: Vec<(u64, usize)>,
    /// The last request id given out.
    last_id: u64,
    /// The writer has stopped: nothing more can be queued.
    closed: bool,
    /// The link's client is gone: the writer writes what is queued and closes its half.
    dropped: bool,
}

impl Queue {
    /// Takes the frames of requests that no longer wait (they expired) out of the outbox, and
    /// says how many: a peer that cannot keep up is not sent work nobody waits for, and this
    /// node holds no more of it than arrives within a request timeout.
    fn drop_unwaited(&mut self) -> usize {
        let pending = &self.pending;
        if self.queued.iter().all(|(id, _)| pending.contains_key(id)) {
            return 0;
        }
        let frames: Vec<(usize, bool)> = self
            .queued
            .iter()
            .map(|(id, start)| (*start, pending.contains_key(id)))
            .collect();
        let (outbox, starts) = self.outbox.keeping(&frames);
        let before = self.queued.len();
        self.queued.retain(|(id, _)| pending.contains_key(id));
        for (frame, start) in self.queued.iter_mut().zip(starts) {
            frame.1 = start;
        }
        self.outbox = outbox;
        before - self.queued.len()
    }
}

/// How often a link looks for requests past their deadlines, while any wait: a request's
/// timeout fires up to this late, and no request registers a timer of its own.
const EXPIRY_SWEEP: Duration = Duration::from_millis(5);

/// State shared by one link's sender side, its writer and its reader.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: a frame went into an empty outbox, the client is gone, or the link
    /// broke or is finishing. The writer needs no other wake-up source, so that waiting costs
    /// it one permit under load and no lock.
    ready: tokio::sync::Notify,
    /// No new requests go on this link (it broke, or the peer is stopping).
    closed: AtomicBool,
    /// Ends the link at once: requests still queued come back unsent, written ones fail.
    broken: watch::Sender<bool>,
    /// The peer said it is stopping: the writer sends back what is still queued (unsent) and
    /// closes its half; the reader waits for the answers to everything written.
    finish: watch::Sender<bool>,
    /// Signalled when a request starts waiting on an idle link, for [`expire`].
    waiting: tokio::sync::Notify,
}

impl Shared {
    /// Ends the link at once: see [`Shared::broken`].
    fn break_link(&self) {
        self.closed.store(true, Ordering::Release);
        self.broken.send_replace(true);
        self.ready.notify_one();
    }

    /// The peer is stopping: see [`Shared::finish`].
    fn finish_link(&self) {
        self.closed.store(true, Ordering::Release);
        self.finish.send_replace(true);
        self.ready.notify_one();
    }
}

/// Answers [`Outcome::Expired`] to every request that waits past its deadline, until the link
/// breaks. It sleeps while nothing waits.
async fn expire(shared: Arc<Shared>) {
    let mut broken = shared.broken.subscribe();
    loop {
        tokio::select! {
            _ = crate::api::stopped(&mut broken) => return,
            _ = shared.waiting.notified() => {}
        }
        loop {
            tokio::select! {
                _ = crate::api::stopped(&mut broken) => return,
                _ = tokio::time::sleep(EXPIRY_SWEEP) => {}
            }
            let now = Instant::now();
            let mut queue = shared.queue.lock().unwrap();
            let expired: Vec<u64> = queue
                .pending
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            let any = !expired.is_empty();
            for id in expired {
                if let Some((waiter, _)) = queue.pending.remove(&id) {
                    let _ = waiter.send(Outcome::Expired);
                }
            }
            if any && !queue.queued.is_empty() {
                let dropped = queue.drop_unwaited();
                if dropped > 0 {
                    debug!(
                        dropped,
                        "requests expired while queued on a link; not sending them"
                    );
                }
            }
            if queue.pending.is_empty() {
                break;
            }
        }
    }
}

/// Writes the frames its senders queued, all that are queued in one system call, until the
/// link's client is dropped, the peer says it is stopping, or the link breaks. Frames it never
/// wrote are answered [`Outcome::Unsent`], so that their senders know the peer never saw them.
async fn write_frames(mut writer: tokio::net::tcp::OwnedWriteHalf, shared: Arc<Shared>) {
    let mut broken = shared.broken.subscribe();
    let mut batch = Outbox::with_capacity(BATCH_CAPACITY);
    let graceful = loop {
        shared.ready.notified().await;
        if *shared.broken.borrow() {
            break false;
        }
        if *shared.finish.borrow() {
            break true;
        }
        // Let the other requests that are running now queue their frames too, so that they
        // leave in this write: one system call for many forwards under load.
        tokio::task::yield_now().await;
        let dropped = {
            let mut queue = shared.queue.lock().unwrap();
            std::mem::swap(&mut queue.outbox, &mut batch);
            queue.queued.clear();
            queue.dropped
        };
        if !batch.is_empty() {
            let written = tokio::select! {
                biased;
                written = batch.write_to(&mut writer) => written.is_ok(),
                _ = crate::api::stopped(&mut broken) => false,
            };
            if !written {
                break false;
            }
            batch.clear();
            if batch.bytes.capacity() > MAX_KEPT_BATCH {
                batch = Outbox::with_capacity(BATCH_CAPACITY);
            }
        }
        if dropped {
            break true;
        }
    };
    shared.closed.store(true, Ordering::Release);
    let unsent: Vec<_> = {
        let mut queue = shared.queue.lock().unwrap();
        let queue = &mut *queue;
        queue.closed = true;
        queue.outbox.clear();
        queue
            .queued
            .drain(..)
            .filter_map(|(id, _)| queue.pending.remove(&id))
            .collect()
    };
    for (waiter, _) in unsent {
        let _ = waiter.send(Outcome::Unsent);
    }
    if graceful {
        // The peer reads until this end of file, answering everything written before it.
        let _ = writer.shutdown().await;
    } else {
        shared.break_link();
    }
}

/// One open link to a peer. Dropping it lets the writer finish what is queued and close the
/// link.
struct Conn {
    shared: Arc<Shared>,
}

impl Conn {
    /// Queues a request for the writer, its frame written by `encode` from the request's id
    /// into the outbox, and returns where its outcome will come.
    fn submit(
        &self,
        encode: &mut impl FnMut(&mut Outbox, u64) -> Result<(), LinkError>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Outcome>, LinkError> {
        let (tx, rx) = oneshot::channel();
        let (first_waiting, first_queued) = {
            let mut queue = self.shared.queue.lock().unwrap();
            let queue = &mut *queue;
            // Once queued, the writer either writes the frame or answers it `Unsent`; a closed
            // queue means the writer is done.
            if queue.closed {
                return Err(LinkError::Forward(ForwardError::Unsent(
                    "link to the peer closed before the request was written".into(),
                )));
            }
            let id = queue.last_id + 1;
            let start = queue.outbox.bytes.len();
            encode(&mut queue.outbox, id)?;
            queue.last_id = id;
            queue.queued.push((id, start));
            queue.pending.insert(id, (tx, deadline));
            (queue.pending.len() == 1, queue.queued.len() == 1)
        };
        if first_queued {
            self.shared.ready.notify_one();
        }
        if first_waiting {
            self.shared.waiting.notify_one();
        }
        Ok(rx)
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Ends the link at once (its peer is gone).
    fn abort(&self) {
        self.shared.break_link();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap().dropped = true;
        self.shared.ready.notify_one();
    }
}

/// What is known of one peer address.
#[derive(Default)]
struct Peer {
    conn: ArcSwapOption<Conn>,
    connecting: tokio::sync::Mutex<()>,
    /// The peer answered the preface with something else: it speaks HTTP only.
    http_only: AtomicBool,
}

/// Why the link could not carry a request.
pub enum LinkError {
    /// The peer does not speak the link: send it over HTTP instead.
    Unsupported,
    Forward(ForwardError),
}

/// Link clients to every peer, keyed by `host:port`.
pub struct Links {
    peers: ArcSwap<FastMap<Arc<str>, Arc<Peer>>>,
    connect_timeout: Duration,
}

impl Links {
    pub fn new(connect_timeout: Duration) -> Self {
        Links {
            peers: ArcSwap::from_pointee(FastMap::default()),
            connect_timeout,
        }
    }

    fn peer(&self, authority: &str) -> Arc<Peer> {
        if let Some(peer) = self.peers.load().get(authority) {
            return peer.clone();
        }
        let mut found = None;
        self.peers.rcu(|peers| {
            let mut next = HashMap::clone(peers);
            let peer = next.entry(Arc::from(authority)).or_default().clone();
            found = Some(peer);
            next
        });
        found.expect("rcu ran at least once")
    }

    /// Ends the open link to `authority`, if any, because the node there is gone: requests
    /// waiting on it fail at once instead of at their deadlines.
    pub fn close(&self, authority: &str) {
        let Some(peer) = self.peers.load().get(authority).cloned() else {
            return;
        };
        if let Some(conn) = peer.conn.swap(None) {
            debug!(%authority, "closing the link to a node that is gone");
            conn.abort();
        }
    }

    /// Sends one request to `authority` (`host:port`) and waits for its answer until `deadline`.
    /// A request that never left this node fails with [`ForwardError::Unsent`] or
    /// [`ForwardError::Connect`]; one that was written and then lost, with [`ForwardError::Lost`].
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        authority: &str,
        stream: &str,
        key: &str,
        service_id: &str,
        payload: &Payload,
        deadline: Instant,
    ) -> Result<Reply, LinkError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let trace = crate::observe::current_trace().map_or(0, |t| t.as_u64());
        let mut encode = |frame: &mut Outbox, id| {
            encode_request(
                frame,
                id,
                trace,
                timeout,
                stream,
                key,
                service_id,
                payload.content_type.as_deref().unwrap_or(""),
                &payload.body,
            )
            .map_err(LinkError::Forward)
        };
        // The common case touches no reference count or lock shared with other threads but
        // the link's own: the peer and its open link are read through arc-swap guards.
        let sent = {
            let peers = self.peers.load();
            let open = peers.get(authority).and_then(|peer| {
                let conn = peer.conn.load();
                conn.as_ref()
                    .filter(|c| !c.is_closed())
                    .map(|c| c.submit(&mut encode, deadline))
            });
            open
        };
        let rx = match sent {
            Some(sent) => sent?,
            None => {
                let peer = self.peer(authority);
                if peer.http_only.load(Ordering::Relaxed) {
                    return Err(LinkError::Unsupported);
                }
                let conn = self.conn(authority, &peer, deadline).await?;
                conn.submit(&mut encode, deadline)?
            }
        };
        match rx.await {
            Ok(Outcome::Reply(reply)) => Ok(reply),
            Ok(Outcome::Unsent) => Err(LinkError::Forward(ForwardError::Unsent(
                "link to the peer closed before the request was written".into(),
            ))),
            Ok(Outcome::Expired) => Err(LinkError::Forward(ForwardError::Timeout(timeout))),
            Err(_) => Err(LinkError::Forward(ForwardError::Lost(
                "link to the peer closed before the answer".into(),
            ))),
        }
    }

    /// The open link to `peer`, connecting (once, however many requests wait) when needed.
    async fn conn(
        &self,
        authority: &str,
        peer: &Peer,
        deadline: Instant,
    ) -> Result<Arc<Conn>, LinkError> {
        let current = || peer.conn.load_full().filter(|c| !c.is_closed());
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let _connecting = peer.connecting.lock().await;
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let budget = self
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let conn = match tokio::time::timeout(budget, connect(authority)).await {
            Ok(Ok(Some(conn))) => conn,
            Ok(Ok(None)) => {
                debug!(%authority, "peer does not speak the link; using HTTP");
                peer.http_only.store(true, Ordering::Relaxed);
                return Err(LinkError::Unsupported);
            }
            Ok(Err(e)) => return Err(LinkError::Forward(ForwardError::Connect(e.to_string()))),
            // The request's own deadline ran out first: that is a timeout, not a dead peer.
            Err(_) if Instant::now() >= deadline => {
                return Err(LinkError::Forward(ForwardError::Timeout(budget)));
            }
            Err(_) => {
                return Err(LinkError::Forward(ForwardError::Connect(format!(
                    "no connection within {budget:?}"
                ))))
            }
        };
        peer.conn.store(Some(conn.clone()));
        Ok(conn)
    }
}

/// Sets the options every connection between nodes (and from clients) gets: no Nagle delay,
/// and on Linux linear retransmission timeouts while few packets are in flight, so that one
/// segment lost several times in a row costs a few hundred milliseconds rather than the seconds
/// of exponential backoff (request/answer traffic is such a "thin stream").
pub(crate) fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_thin_linear_timeouts(true);
    }
}

/// Connects and exchanges the preface; `None` when the peer answers something else. A peer
/// that closes the connection during the preface (a node stopping) is an error, not an HTTP
/// peer.
async fn connect(authority: &str) -> std::io::Result<Option<Arc<Conn>>> {
    let mut stream = TcpStream::connect(authority).await?;
    tune(&stream);
    stream.write_all(PREFACE).await?;
    let mut ack = [0u8; 8];
    let mut read = 0;
    while read < ack.len() {
        let n = stream.read(&mut ack[read..]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the link preface",
            ));
        }
        read += n;
        if ack[..read] != PREFACE_ACK[..read] {
            return Ok(None);
        }
    }
    let (reader, writer) = stream.into_split();
    let shared = Arc::new(Shared {
        queue: Mutex::default(),
        ready: tokio::sync::Notify::new(),
        closed: AtomicBool::new(false),
        broken: watch::channel(false).0,
        finish: watch::channel(false).0,
        waiting: tokio::sync::Notify::new(),
    });
    tokio::spawn(expire(shared.clone()));
    let writer = tokio::spawn(write_frames(writer, shared.clone()));
    let reading = shared.clone();
    tokio::spawn(async move {
        read_responses(reader, &reading).await;
        let _ = writer.await;
        // Whatever still waits was written: the peer may have run it.
        reading.queue.lock().unwrap().pending.clear();
    });
    Ok(Some(Arc::new(Conn { shared })))
}

/// Hands each answer to its waiting request until the link ends; then breaks it, so that the
/// writer stops too.
async fn read_responses(mut reader: tokio::net::tcp::OwnedReadHalf, shared: &Shared) {
    let mut broken_rx = shared.broken.subscribe();
    // One wait for the whole link, not one per read.
    let broken = crate::api::stopped(&mut broken_rx);
    tokio::pin!(broken);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // The answers of one read, handed out under one lock.
    let mut answers = Vec::new();
    let mut waiters = Vec::new();
    'read: loop {
        let read = tokio::select! {
            biased;
            read = reader.read_buf(&mut buf) => read,
            _ = &mut broken => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match next_frame(&mut buf) {
                Ok(Some(frame)) if frame.first() == Some(&KIND_GOAWAY) => {
                    debug!("peer is stopping; its link takes no new requests");
                    shared.finish_link();
                }
                Ok(Some(frame)) => match decode_response(frame) {
                    Some(answer) => answers.push(answer),
                    None => {
                        deliver(shared, &mut answers, &mut waiters);
                        break 'read;
                    }
                },
                Ok(None) => break,
                Err(()) => {
                    deliver(shared, &mut answers, &mut waiters);
                    break 'read;
                }
            }
        }
        deliver(shared, &mut answers, &mut waiters);
    }
    shared.break_link();
}

/// Hands `answers` to the requests that wait for them. `waiters` is scratch space, kept
/// between calls.
fn deliver(
    shared: &Shared,
    answers: &mut Vec<(u64, Reply)>,
    waiters: &mut Vec<(oneshot::Sender<Outcome>, Reply)>,
) {
    if answers.is_empty() {
        return;
    }
    {
        let mut queue = shared.queue.lock().unwrap();
        for (id, reply) in answers.drain(..) {
            if let Some((waiter, _)) = queue.pending.remove(&id) {
                waiters.push((waiter, reply));
            }
        }
    }
    for (waiter, reply) in waiters.drain(..) {
        let _ = waiter.send(Outcome::Reply(reply));
    }
}

/// How long, on average, a link's requests may keep its task busy and still run inside it: above
/// this, each request runs in a task of its own, so that the node's worker threads share them.
const INLINE_BUSY: Duration = Duration::from_micros(50);

/// A link's average of how long its requests kept a thread busy (polling them, not waiting),
/// weighted towards the latest: the last request counts for an eighth.
#[derive(Default)]
struct BusyAverage {
    nanos: u64,
}

impl BusyAverage {
    fn add(&mut self, busy: Duration) {
        let busy = u64::try_from(busy.as_nanos()).unwrap_or(u64::MAX);
        self.nanos = self.nanos - self.nanos / 8 + busy / 8;
    }

    fn above(&self, limit: Duration) -> bool {
        u128::from(self.nanos) > limit.as_nanos()
    }
}

/// Runs `future` and also says how long its polls took in all.
async fn timed<F: std::future::Future>(future: F) -> (F::Output, Duration) {
    let mut future = std::pin::pin!(future);
    let mut busy = Duration::ZERO;
    let output = std::future::poll_fn(|cx| {
        let started = Instant::now();
        let poll = future.as_mut().poll(cx);
        busy += started.elapsed();
        poll
    })
    .await;
    (output, busy)
}

/// A spawned request's task, aborted if the link is dropped before it answers.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves one incoming link. Its requests run concurrently inside this one task while they are
/// cheap (most handlers answer in microseconds), and the answers ready together leave in one
/// write: no task or thread hand-off per request. Requests that keep a thread busy for longer
/// (on average above [`INLINE_BUSY`]) each get a task of their own instead, so that one link does
/// not hold all of a node's handler work to one thread. Ends when
/// the peer closes the link. Once `stop` fires, it sends the go-away frame, requests that arrive
/// are answered 421 without running (the sender looks the key up again and goes elsewhere), and
/// the link closes when the client has closed its half and nothing is left running (or, for a
/// client that ignores the go-away, after [`STOPPING_IDLE`] without a request).
pub async fn serve<H, F>(mut stream: TcpStream, handle: H, mut stop: watch::Receiver<bool>)
where
    H: Fn(LinkRequest) -> F,
    F: std::future::Future<Output = (StatusCode, Bytes)> + Send + 'static,
{
    let mut preface = [0u8; PREFACE.len()];
    if stream.read_exact(&mut preface).await.is_err() || &preface != PREFACE {
        return;
    }
    if stream.write_all(PREFACE_ACK).await.is_err() {
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    type Answer = std::pin::Pin<
        Box<dyn std::future::Future<Output = (u64, ((StatusCode, Bytes), Duration))> + Send>,
    >;
    let mut busy = BusyAverage::default();
    let mut running: FuturesUnordered<Answer> = FuturesUnordered::new();
    let mut stopping = *stop.borrow();
    // One wait for the whole link, not one per request.
    let stop_signal = crate::api::stopped(&mut stop);
    tokio::pin!(stop_signal);
    let mut open = true;
    let mut idle_since = Instant::now();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = Outbox::with_capacity(64 * 1024);
    if stopping {
        encode_goaway(&mut out);
        if out.write_to(&mut writer).await.is_err() {
            return;
        }
        out.clear();
    }
    while open || !running.is_empty() {
        tokio::select! {
            Some((id, ((status, body), took))) = running.next(), if !running.is_empty() => {
                busy.add(took);
                encode_response(&mut out, id, status, &body);
                // Collect every other answer that is ready now, then write them together.
                while let Some(Some((id, ((status, body), took)))) = running.next().now_or_never() {
                    busy.add(took);
                    encode_response(&mut out, id, status, &body);
                }
                if out.write_to(&mut writer).await.is_err() {
                    return;
                }
                out.clear();
                idle_since = Instant::now();
            }
            read = reader.read_buf(&mut buf), if open => {
                match read {
                    Ok(0) | Err(_) => open = false,
                    Ok(_) => idle_since = Instant::now(),
                }
                loop {
                    match next_frame(&mut buf) {
                        Ok(Some(frame)) => {
                            let Some(request) = decode_request(frame) else {
                                open = false;
                                break;
                            };
                            let id = request.id;
                            if stopping {
                                encode_response(&mut out, id, StatusCode::MISDIRECTED_REQUEST, &Bytes::from_static(LEAVING_BODY));
                            } else {
                                let answer = timed(handle(request));
                                if busy.above(INLINE_BUSY) {
                                    let task = AbortOnDrop(tokio::spawn(answer));
                                    running.push(Box::pin(async move {
                                        let mut task = task;
                                        let answer = (&mut task.0).await.unwrap_or_else(|_| {
                                            let body = Bytes::from_static(HANDLER_FAILED_BODY);
                                            ((StatusCode::INTERNAL_SERVER_ERROR, body), Duration::ZERO)
                                        });
                                        (id, answer)
                                    }));
                                    continue;
                                }
                                // Most handlers answer on their first poll: such an answer goes
                                // out with this read's others, and how long it took counts at
                                // once, before the next request of the read is started.
                                let mut answer: Answer = Box::pin(async move { (id, answer.await) });
                                match answer.as_mut().now_or_never() {
                                    Some((id, ((status, body), took))) => {
                                        busy.add(took);
                                        encode_response(&mut out, id, status, &body);
                                    }
                                    None => running.push(answer),
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(()) => {
                            open = false;
                            break;
                        }
                    }
                }
                if !out.is_empty() {
                    if out.write_to(&mut writer).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            }
            _ = &mut stop_signal, if !stopping => {
                stopping = true;
                encode_goaway(&mut out);
                if out.write_to(&mut writer).await.is_err() {
                    return;
                }
                out.clear();
                idle_since = Instant::now();
            }
            // An async block, so that no timer is made (nor the clock read) while not stopping.
            _ = async { tokio::time::sleep(Duration::from_millis(100)).await }, if stopping && running.is_empty() => {
                if idle_since.elapsed() >= STOPPING_IDLE {
                    break;
                }
            }
        }
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut out = Outbox::default();
        encode_request(
            &mut out,
            7,
            0xfeed,
            Duration::from_millis(1500),
            "echo",
            "a/b ключ",
            "svc",
            "application/json",
            &Bytes::from_static(b"{\"x\":1}"),
        )
        .unwrap();
        encode_response(
            &mut out,
            9,
            StatusCode::CONFLICT,
            &Bytes::from_static(b"{}"),
        );
        assert!(out.bodies.is_empty(), "small bodies are copied");
        let mut buf = out.bytes;
        let request = decode_request(next_frame(&mut buf).unwrap().unwrap()).unwrap();
        assert_eq!((request.id, request.trace), (7, 0xfeed));
        assert_eq!(request.timeout, Duration::from_millis(1500));
        assert_eq!(
            (request.stream.as_str(), request.key.as_str()),
            ("echo", "a/b ключ")
        );
        assert_eq!(request.service_id, "svc");
        assert_eq!(
            request.payload.content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(&request.payload.body[..], b"{\"x\":1}");
        let (id, reply) = decode_response(next_frame(&mut buf).unwrap().unwrap()).unwrap();
        assert_eq!(
            (id, reply.status, &reply.body[..]),
            (9, StatusCode::CONFLICT, &b"{}"[..])
        );
        assert!(next_frame(&mut buf).unwrap().is_none());
    }

    #[test]
    fn partial_and_oversized_frames() {
        let mut out = Outbox::default();
        encode_response(&mut out, 1, StatusCode::OK, &Bytes::from_static(b"hello"));
        let mut partial = out.bytes.split_to(6);
        assert!(next_frame(&mut partial).unwrap().is_none());
        let mut huge = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(next_frame(&mut huge).is_err());
        assert!(decode_request(Bytes::from_static(b"\x01short")).is_none());
    }

    /// Leaving frames out of an outbox keeps the others whole, their large bodies (by
    /// reference) included, and in order.
    #[test]
    fn an_outbox_keeps_only_the_frames_it_is_told_to() {
        let mut out = Outbox::default();
        let body = |n: usize| {
            let len = if n % 2 == 0 { 3 } else { BY_REFERENCE + n };
            Bytes::from(vec![n as u8; len])
        };
        let mut frames = Vec::new();
        for n in 0..8 {
            let start = out.bytes.len();
            encode_response(&mut out, n as u64, StatusCode::OK, &body(n));
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
        while let Some(frame) = next_frame(&mut stream).unwrap() {
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
            let len = if n % 3 == 0 { 5 } else { BY_REFERENCE + n };
            Bytes::from(vec![(n % 251) as u8; len])
        };
        for n in 0..count {
            encode_response(&mut out, n as u64, StatusCode::OK, &body(n));
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
                while let Some(frame) = next_frame(&mut buf).unwrap() {
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

    /// Waits until `condition` holds for the open link's queue and the keys the peer ran.
    async fn until(
        links: &Links,
        authority: &str,
        ran: &Mutex<Vec<String>>,
        what: &str,
        condition: impl Fn(&Queue, &[String]) -> bool,
    ) {
        let started = Instant::now();
        loop {
            let met = links.peer(authority).conn.load_full().is_some_and(|conn| {
                condition(&conn.shared.queue.lock().unwrap(), &ran.lock().unwrap())
            });
            if met {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "no {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A peer that stops reading: requests queued behind a write it does not take expire, and
    /// when it reads again their frames are not sent (it never runs them); the link still
    /// carries new requests. The peer stops reading because a handler blocks its link's task;
    /// a body far larger than the socket buffers then keeps the writer waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_expire_while_queued_are_not_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let (_stop_tx, stop) = watch::channel(false);
        let (go_tx, go) = std::sync::mpsc::channel::<()>();
        let go = Arc::new(Mutex::new(go));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let seen = ran.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let handle = move |request: LinkRequest| {
                seen.lock().unwrap().push(request.key.clone());
                if request.key == "block" {
                    // Blocks the thread, and so the link's task: nothing more is read. In
                    // place, so that the tasks queued on this worker (the test's own among
                    // them, which sends `go`) move to another thread instead of waiting here.
                    tokio::task::block_in_place(|| {
                        let _ = go.lock().unwrap().recv();
                    });
                }
                async move { (StatusCode::OK, Bytes::from_static(b"{}")) }
            };
            serve(stream, handle, stop).await;
        });
        let links = Arc::new(Links::new(Duration::from_secs(2)));
        let send = |key: &'static str, body: Bytes, within: Duration| {
            let (links, authority) = (links.clone(), authority.clone());
            tokio::spawn(async move {
                let payload = Payload {
                    body,
                    content_type: None,
                };
                let deadline = Instant::now() + within;
                links
                    .send(&authority, "s", key, "svc", &payload, deadline)
                    .await
            })
        };
        let block = send("block", Bytes::from_static(b"{}"), Duration::from_secs(30));
        until(&links, &authority, &ran, "blocked peer", |_, ran| {
            ran == ["block"]
        })
        .await;
        let big = send(
            "big",
            Bytes::from(vec![b' '; 48 * 1024 * 1024]),
            Duration::from_secs(30),
        );
        // The big frame is being written: it has left the outbox.
        until(
            &links,
            &authority,
            &ran,
            "write of the big frame",
            |queue, _| queue.pending.len() == 2 && queue.outbox.is_empty(),
        )
        .await;
        let small: Vec<_> = ["late-1", "late-2", "late-3"]
            .into_iter()
            .map(|key| send(key, Bytes::from_static(b"{}"), Duration::from_millis(100)))
            .collect();
        for send in small {
            let result = tokio::time::timeout(Duration::from_secs(5), send)
                .await
                .expect("a queued request expires within 5 s")
                .unwrap();
            assert!(matches!(
                result,
                Err(LinkError::Forward(ForwardError::Timeout(_)))
            ));
        }
        // Their frames are already gone from the outbox, while the writer still waits.
        until(&links, &authority, &ran, "empty outbox", |queue, _| {
            queue.outbox.is_empty() && queue.queued.is_empty() && queue.pending.len() == 2
        })
        .await;
        go_tx.send(()).unwrap();
        for answered in [block, big] {
            let answer = tokio::time::timeout(Duration::from_secs(20), answered)
                .await
                .expect("answered once the peer reads again")
                .unwrap();
            assert!(matches!(answer, Ok(ref reply) if reply.status == StatusCode::OK));
        }
        let after = send("after", Bytes::from_static(b"{}"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(after, Ok(ref reply) if reply.status == StatusCode::OK));
        assert_eq!(*ran.lock().unwrap(), ["block", "big", "after"]);
    }

    /// Many requests queued at once on one link, from tasks on both worker threads, share the
    /// outbox and its writes; each gets its own answer back. Then the link's client is dropped
    /// and the server sees the link closed, with nothing left running.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_on_one_link_each_get_their_own_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let (_stop_tx, stop) = watch::channel(false);
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(
                stream,
                |request: LinkRequest| async move {
                    // Answers come back out of order: later keys wait less.
                    let n: u64 = request.key.parse().unwrap();
                    tokio::time::sleep(Duration::from_micros(500 - n)).await;
                    let body = format!("{}:{}", request.key, request.payload.body.len());
                    (StatusCode::OK, Bytes::from(body))
                },
                stop,
            )
            .await;
        });
        let links = Arc::new(Links::new(Duration::from_secs(2)));
        let sends: Vec<_> = (0..400u64)
            .map(|n| {
                let (links, authority) = (links.clone(), authority.clone());
                tokio::spawn(async move {
                    let payload = Payload {
                        body: Bytes::from(vec![b'x'; n as usize]),
                        content_type: None,
                    };
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let key = n.to_string();
                    let reply = links
                        .send(&authority, "s", &key, "svc", &payload, deadline)
                        .await;
                    match reply {
                        Ok(reply) => (n, reply.status, reply.body),
                        Err(_) => panic!("request {n} failed"),
                    }
                })
            })
            .collect();
        for send in sends {
            let (n, status, body) = send.await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, format!("{n}:{n}").as_bytes(), "request {n}");
        }
        let conn = links
            .peer(&authority)
            .conn
            .load_full()
            .expect("the link is open");
        assert!(conn.shared.queue.lock().unwrap().pending.is_empty());
        drop(conn);
        drop(links);
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server saw the link close once its client was dropped")
            .unwrap();
    }

    /// A peer that never answers: the request fails with a timeout soon after its deadline
    /// (no timer of its own: the link's expiry sweep answers it), the link stays usable, and
    /// nothing is left waiting on it.
    #[tokio::test]
    async fn a_request_past_its_deadline_times_out_and_leaves_nothing_behind() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(
                stream,
                |request: LinkRequest| async move {
                    if request.key == "silent" {
                        std::future::pending::<()>().await;
                    }
                    (StatusCode::OK, request.payload.body)
                },
                stop,
            )
            .await;
        });
        let links = Links::new(Duration::from_secs(2));
        let payload = Payload {
            body: Bytes::from_static(b"{}"),
            content_type: None,
        };
        let started = Instant::now();
        let deadline = started + Duration::from_millis(200);
        let send = links.send(&authority, "s", "silent", "svc", &payload, deadline);
        let result = tokio::time::timeout(Duration::from_secs(5), send)
            .await
            .unwrap_or_else(|_| panic!("the request was still waiting 5 s after its deadline"));
        let took = started.elapsed();
        assert!(
            matches!(result, Err(LinkError::Forward(ForwardError::Timeout(_)))),
            "expected a timeout"
        );
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "timed out after {took:?}"
        );
        let answered = links
            .send(
                &authority,
                "s",
                "k",
                "svc",
                &payload,
                Instant::now() + Duration::from_secs(5),
            )
            .await;
        assert!(matches!(answered, Ok(ref reply) if reply.status == StatusCode::OK));
        let peer = links.peer(&authority);
        let conn = peer.conn.load_full().expect("the link is open");
        assert!(conn.shared.queue.lock().unwrap().pending.is_empty());
    }
}
