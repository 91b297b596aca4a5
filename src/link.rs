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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use crate::forward::ForwardError;
use crate::message::{Payload, Reply};

/// The first bytes a link client sends; the server answers with [`PREFACE_ACK`].
pub const PREFACE: &[u8; 8] = b"MESHLNK2";
const PREFACE_ACK: &[u8; 8] = b"MESHACK2";
const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
/// Frames above this size end the connection (a broken or hostile peer).
const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Queued frames are written together up to about this many bytes.
const WRITE_BATCH: usize = 256 * 1024;

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
    buf: &mut BytesMut,
    id: u64,
    trace: u64,
    timeout: Duration,
    stream: &str,
    key: &str,
    service_id: &str,
    content_type: &str,
    body: &[u8],
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
    buf.reserve(4 + len);
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
    buf.put_slice(body);
    Ok(())
}

fn encode_response(buf: &mut BytesMut, id: u64, status: StatusCode, body: &[u8]) {
    let len = 1 + 8 + 2 + body.len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    buf.put_u8(KIND_RESPONSE);
    buf.put_u64(id);
    buf.put_u16(status.as_u16());
    buf.put_slice(body);
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

/// Writes queued frames, many per system call, until the queue closes or a write fails.
async fn write_frames(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    while let Some(frame) = queue.recv().await {
        batch.extend_from_slice(&frame);
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if writer.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = writer.shutdown().await;
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<Reply>>>;

/// One open link to a peer.
struct Conn {
    queue: mpsc::UnboundedSender<Bytes>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

/// What is known of one peer address.
#[derive(Default)]
struct Peer {
    conn: Mutex<Option<Arc<Conn>>>,
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
    peers: ArcSwap<HashMap<Arc<str>, Arc<Peer>>>,
    connect_timeout: Duration,
}

impl Links {
    pub fn new(connect_timeout: Duration) -> Self {
        Links {
            peers: ArcSwap::from_pointee(HashMap::new()),
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

    /// Sends one request to `authority` (`host:port`) and waits for its answer until `deadline`.
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
        let peer = self.peer(authority);
        if peer.http_only.load(Ordering::Relaxed) {
            return Err(LinkError::Unsupported);
        }
        let conn = self.conn(authority, &peer, deadline).await?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout = deadline.saturating_duration_since(Instant::now());
        let mut frame = BytesMut::new();
        let trace = crate::observe::current_trace().map_or(0, |t| t.as_u64());
        encode_request(
            &mut frame,
            id,
            trace,
            timeout,
            stream,
            key,
            service_id,
            payload.content_type.as_deref().unwrap_or(""),
            &payload.body,
        )
        .map_err(LinkError::Forward)?;
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap().insert(id, tx);
        if conn.queue.send(frame.freeze()).is_err() || conn.closed.load(Ordering::Acquire) {
            conn.pending.lock().unwrap().remove(&id);
            return Err(LinkError::Forward(ForwardError::Failed(
                "link to the peer closed".into(),
            )));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(LinkError::Forward(ForwardError::Failed(
                "link to the peer closed before the answer".into(),
            ))),
            Err(_) => {
                conn.pending.lock().unwrap().remove(&id);
                Err(LinkError::Forward(ForwardError::Timeout(timeout)))
            }
        }
    }

    /// The open link to `peer`, connecting (once, however many requests wait) when needed.
    async fn conn(
        &self,
        authority: &str,
        peer: &Peer,
        deadline: Instant,
    ) -> Result<Arc<Conn>, LinkError> {
        let current = || {
            peer.conn
                .lock()
                .unwrap()
                .as_ref()
                .filter(|c| !c.closed.load(Ordering::Acquire))
                .cloned()
        };
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
        *peer.conn.lock().unwrap() = Some(conn.clone());
        Ok(conn)
    }
}

/// Connects and exchanges the preface; `None` when the peer answers something else.
async fn connect(authority: &str) -> std::io::Result<Option<Arc<Conn>>> {
    let mut stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    stream.write_all(PREFACE).await?;
    let mut ack = [0u8; 8];
    let mut read = 0;
    while read < ack.len() {
        let n = stream.read(&mut ack[read..]).await?;
        if n == 0 {
            return Ok(None);
        }
        read += n;
        if ack[..read] != PREFACE_ACK[..read] {
            return Ok(None);
        }
    }
    let (reader, writer) = stream.into_split();
    let (queue, rx) = mpsc::unbounded_channel();
    let pending: Arc<Pending> = Arc::default();
    let closed = Arc::new(AtomicBool::new(false));
    tokio::spawn(write_frames(writer, rx));
    tokio::spawn(read_responses(reader, pending.clone(), closed.clone()));
    Ok(Some(Arc::new(Conn {
        queue,
        pending,
        next_id: AtomicU64::new(1),
        closed,
    })))
}

/// Hands each answer to its waiting request. On a broken link, every waiting request fails.
async fn read_responses(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    pending: Arc<Pending>,
    closed: Arc<AtomicBool>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'read: loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match next_frame(&mut buf) {
                Ok(Some(frame)) => {
                    let Some((id, reply)) = decode_response(frame) else {
                        break 'read;
                    };
                    if let Some(waiter) = pending.lock().unwrap().remove(&id) {
                        let _ = waiter.send(reply);
                    }
                }
                Ok(None) => break,
                Err(()) => break 'read,
            }
        }
    }
    closed.store(true, Ordering::Release);
    // Dropping the senders wakes every waiter with an error.
    pending.lock().unwrap().clear();
}

/// Serves one incoming link. Its requests run concurrently inside this one task, and the
/// answers ready together leave in one write: no task or thread hand-off per request. Ends when
/// the peer closes the link. Once `stop` fires, requests that arrive are answered 421 without
/// running (the sender looks the key up again and goes elsewhere), and the link closes when it
/// has been idle briefly with nothing left running.
pub async fn serve<H, F>(mut stream: TcpStream, handle: H, mut stop: watch::Receiver<bool>)
where
    H: Fn(LinkRequest) -> F,
    F: std::future::Future<Output = (StatusCode, Bytes)> + Send + 'static,
{
    let mut preface = [0u8; 8];
    if stream.read_exact(&mut preface).await.is_err() || &preface != PREFACE {
        return;
    }
    if stream.write_all(PREFACE_ACK).await.is_err() {
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    type Answer =
        std::pin::Pin<Box<dyn std::future::Future<Output = (u64, (StatusCode, Bytes))> + Send>>;
    let mut running: FuturesUnordered<Answer> = FuturesUnordered::new();
    let mut stopping = *stop.borrow();
    let mut open = true;
    let mut idle_since = Instant::now();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    while open || !running.is_empty() {
        tokio::select! {
            Some((id, (status, body))) = running.next(), if !running.is_empty() => {
                encode_response(&mut out, id, status, &body);
                // Collect every other answer that is ready now, then write them together.
                while let Some(Some((id, (status, body)))) = running.next().now_or_never() {
                    encode_response(&mut out, id, status, &body);
                }
                if writer.write_all(&out).await.is_err() {
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
                                encode_response(&mut out, id, StatusCode::MISDIRECTED_REQUEST, br#"{"error":"node is leaving"}"#);
                            } else {
                                let answer = handle(request);
                                running.push(Box::pin(async move { (id, answer.await) }));
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
                    if writer.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            }
            _ = crate::api::stopped(&mut stop), if !stopping => stopping = true,
            _ = tokio::time::sleep(Duration::from_millis(100)), if stopping && running.is_empty() => {
                if idle_since.elapsed() >= Duration::from_millis(100) {
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
        let mut buf = BytesMut::new();
        encode_request(
            &mut buf,
            7,
            0xfeed,
            Duration::from_millis(1500),
            "echo",
            "a/b ключ",
            "svc",
            "application/json",
            b"{\"x\":1}",
        )
        .unwrap();
        encode_response(&mut buf, 9, StatusCode::CONFLICT, b"{}");
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
        let mut buf = BytesMut::new();
        encode_response(&mut buf, 1, StatusCode::OK, b"hello");
        let mut partial = buf.split_to(6);
        assert!(next_frame(&mut partial).unwrap().is_none());
        let mut huge = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(next_frame(&mut huge).is_err());
        assert!(decode_request(Bytes::from_static(b"\x01short")).is_none());
    }
}
