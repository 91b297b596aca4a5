//! The sending end of links: one open link per peer, shared by every request to it. Senders
//! encode their frames into the link's outbox under its lock; one writer task sends what is
//! queued in one system call, one reader task hands each answer to its waiter, and an expiry
//! sweep answers requests whose deadlines pass.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::frame::{
    decode_server_frame, encode_request, next_frame, response_limit, Outbox, ServerFrame, PREFACE,
    PREFACE_ACK,
};
use crate::delivery::{Refusal, Undelivered};
use crate::message::{Payload, Reply};
use crate::shutdown::Flag;
use crate::wire::{tune, Deadline};
use crate::FastMap;

/// A writer buffer that grew past this (large bodies) is not kept for the next batch.
const MAX_KEPT_BATCH: usize = 256 * 1024;
/// The writer's buffer to start with.
const BATCH_CAPACITY: usize = 64 * 1024;
/// Bytes a link holds waiting to be written (beside the batch being written): above it, new
/// requests are not queued but fail as never sent, so that a peer that stops reading costs this
/// node a bounded amount of memory, and its requests go to other owners.
const MAX_QUEUED: usize = 64 * 1024 * 1024;

/// What became of a request queued on a link, when no answer came. A waiter whose sender is
/// dropped without a word lost its request after it was written: the peer may have run it.
enum Outcome {
    /// The peer's answer, or its refusal to run the request.
    Answer(Result<Reply, Refusal>),
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
    broken: Flag,
    /// The peer said it is stopping: the writer sends back what is still queued (unsent) and
    /// closes its half; the reader waits for the answers to everything written.
    finish: Flag,
    /// Signalled when a request starts waiting on an idle link, for [`expire`].
    waiting: tokio::sync::Notify,
}

impl Shared {
    /// Ends the link at once: see [`Shared::broken`].
    fn break_link(&self) {
        self.closed.store(true, Ordering::Release);
        self.broken.raise();
        self.ready.notify_one();
    }

    /// The peer is stopping: see [`Shared::finish`].
    fn finish_link(&self) {
        self.closed.store(true, Ordering::Release);
        self.finish.raise();
        self.ready.notify_one();
    }
}

/// Answers [`Outcome::Expired`] to every request that waits past its deadline, until the link
/// breaks. It sleeps while nothing waits.
async fn expire(shared: Arc<Shared>) {
    let mut broken = shared.broken.watch();
    loop {
        tokio::select! {
            _ = broken.raised() => return,
            _ = shared.waiting.notified() => {}
        }
        loop {
            tokio::select! {
                _ = broken.raised() => return,
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
    let mut broken = shared.broken.watch();
    let mut batch = Outbox::with_capacity(BATCH_CAPACITY);
    let graceful = loop {
        shared.ready.notified().await;
        if shared.broken.is_raised() {
            break false;
        }
        if shared.finish.is_raised() {
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
                _ = broken.raised() => false,
            };
            if !written {
                break false;
            }
            batch.clear();
            if batch.capacity() > MAX_KEPT_BATCH {
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
        deadline: Deadline,
    ) -> Result<oneshot::Receiver<Outcome>, LinkError> {
        let (tx, rx) = oneshot::channel();
        let (first_waiting, first_queued) = {
            let mut queue = self.shared.queue.lock().unwrap();
            let queue = &mut *queue;
            // Once queued, the writer either writes the frame or answers it `Unsent`; a closed
            // queue means the writer is done.
            if queue.closed {
                return Err(LinkError::Undelivered(Undelivered::unsent(
                    "link to the peer closed before the request was written",
                )));
            }
            let queued = queue.outbox.size();
            if queued >= MAX_QUEUED {
                return Err(LinkError::Undelivered(Undelivered::unsent(format!(
                    "the link to the peer is backed up: {queued} bytes wait to be written"
                ))));
            }
            let id = queue.last_id + 1;
            let start = queue.outbox.len();
            encode(&mut queue.outbox, id)?;
            queue.last_id = id;
            queue.queued.push((id, start));
            queue.pending.insert(id, (tx, deadline.instant()));
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
        // Never a panic in drop: a poisoned lock still holds a usable queue.
        self.shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .dropped = true;
        self.shared.ready.notify_one();
    }
}

/// What is known of one peer address.
#[derive(Default)]
struct Peer {
    conn: ArcSwapOption<Conn>,
    connecting: tokio::sync::Mutex<()>,
    /// The peer answered the preface with something else (it speaks HTTP only): until when,
    /// in milliseconds since [`Links::epoch`], it is not asked again. 0: not so.
    http_only_until: AtomicU64,
}

/// Why the link could not carry a request.
pub(crate) enum LinkError {
    /// The peer does not speak the link: send it over HTTP instead.
    Unsupported,
    Undelivered(Undelivered),
}

/// How long a peer that answered the preface as HTTP does is reached over HTTP before the link
/// is tried again: it may have been restarted with a version that speaks it.
const HTTP_ONLY_FOR: Duration = Duration::from_secs(60);

/// Link clients to every peer, keyed by `host:port`.
pub(crate) struct Links {
    peers: ArcSwap<FastMap<Arc<str>, Arc<Peer>>>,
    connect_timeout: Duration,
    /// Answer frames above this end the link.
    answer_limit: usize,
    http_only_for: Duration,
    /// Where [`Peer::http_only_until`] counts from.
    epoch: Instant,
}

impl Links {
    /// Links that connect within `connect_timeout` and take answers of up to `max_response`
    /// bytes.
    pub(crate) fn new(connect_timeout: Duration, max_response: usize) -> Self {
        Links {
            peers: ArcSwap::from_pointee(FastMap::default()),
            connect_timeout,
            answer_limit: response_limit(max_response),
            http_only_for: HTTP_ONLY_FOR,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
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
    /// The peer is forgotten, so that the map holds only peers still known.
    pub(crate) fn close(&self, authority: &str) {
        if !self.peers.load().contains_key(authority) {
            return;
        }
        let mut removed = None;
        self.peers.rcu(|peers| {
            let mut next = HashMap::clone(peers);
            removed = next.remove(authority);
            next
        });
        let Some(peer) = removed else {
            return;
        };
        if let Some(conn) = peer.conn.swap(None) {
            debug!(%authority, "closing the link to a node that is gone");
            conn.abort();
        }
    }

    /// Sends one request to `authority` (`host:port`) and waits for its answer until `deadline`.
    /// A request that never left this node fails as [`Undelivered::NotRun`]; one that was
    /// written and then lost, or got no answer in time, as [`Undelivered::MayHaveRun`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send(
        &self,
        authority: &str,
        stream: &str,
        key: &str,
        service_id: &str,
        payload: &Payload,
        deadline: Deadline,
    ) -> Result<Reply, LinkError> {
        let timeout = deadline.remaining();
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
            .map_err(LinkError::Undelivered)
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
                if peer.http_only_until.load(Ordering::Relaxed) > self.now_ms() {
                    return Err(LinkError::Unsupported);
                }
                let conn = self.conn(authority, &peer, deadline).await?;
                conn.submit(&mut encode, deadline)?
            }
        };
        match rx.await {
            Ok(Outcome::Answer(Ok(reply))) => Ok(reply),
            Ok(Outcome::Answer(Err(why))) => Err(LinkError::Undelivered(Undelivered::refused(why))),
            Ok(Outcome::Unsent) => Err(LinkError::Undelivered(Undelivered::unsent(
                "link to the peer closed before the request was written",
            ))),
            Ok(Outcome::Expired) => Err(LinkError::Undelivered(Undelivered::timed_out(timeout))),
            Err(_) => Err(LinkError::Undelivered(Undelivered::lost(
                "link to the peer closed before the answer",
            ))),
        }
    }

    /// The open link to `peer`, connecting (once, however many requests wait) when needed.
    async fn conn(
        &self,
        authority: &str,
        peer: &Peer,
        deadline: Deadline,
    ) -> Result<Arc<Conn>, LinkError> {
        let current = || peer.conn.load_full().filter(|c| !c.is_closed());
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let _connecting = peer.connecting.lock().await;
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let budget = self.connect_timeout.min(deadline.remaining());
        let conn = match tokio::time::timeout(budget, connect(authority, self.answer_limit)).await {
            Ok(Ok(Some(conn))) => conn,
            Ok(Ok(None)) => {
                debug!(%authority, "peer does not speak the link; using HTTP");
                let until = self.now_ms().saturating_add(
                    u64::try_from(self.http_only_for.as_millis()).unwrap_or(u64::MAX),
                );
                peer.http_only_until.store(until.max(1), Ordering::Relaxed);
                return Err(LinkError::Unsupported);
            }
            Ok(Err(e)) => return Err(LinkError::Undelivered(Undelivered::connect(e.to_string()))),
            // The request's own deadline ran out first: that is a timeout, not a dead peer.
            Err(_) if deadline.has_passed() => {
                return Err(LinkError::Undelivered(Undelivered::timed_out(budget)));
            }
            Err(_) => {
                return Err(LinkError::Undelivered(Undelivered::connect(format!(
                    "no connection within {budget:?}"
                ))))
            }
        };
        peer.conn.store(Some(conn.clone()));
        Ok(conn)
    }
}

/// Connects and exchanges the preface; `None` when the peer answers something else. A peer
/// that closes the connection during the preface (a node stopping) is an error, not an HTTP
/// peer.
async fn connect(authority: &str, limit: usize) -> std::io::Result<Option<Arc<Conn>>> {
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
        broken: Flag::default(),
        finish: Flag::default(),
        waiting: tokio::sync::Notify::new(),
    });
    tokio::spawn(expire(shared.clone()));
    let writer = tokio::spawn(write_frames(writer, shared.clone()));
    let reading = shared.clone();
    tokio::spawn(async move {
        read_responses(reader, &reading, limit).await;
        let _ = writer.await;
        // Whatever still waits was written: the peer may have run it.
        reading.queue.lock().unwrap().pending.clear();
    });
    Ok(Some(Arc::new(Conn { shared })))
}

/// Hands each answer to its waiting request until the link ends; then breaks it, so that the
/// writer stops too.
/// Answer frames above `limit` end the link.
async fn read_responses(mut reader: tokio::net::tcp::OwnedReadHalf, shared: &Shared, limit: usize) {
    let mut broken_rx = shared.broken.watch();
    // One wait for the whole link, not one per read.
    let broken = broken_rx.raised();
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
            match next_frame(&mut buf, limit) {
                Ok(Some(frame)) => match decode_server_frame(frame) {
                    Some(ServerFrame::GoAway) => {
                        debug!("peer is stopping; its link takes no new requests");
                        shared.finish_link();
                    }
                    Some(ServerFrame::Answer(id, answer)) => answers.push((id, answer)),
                    None => {
                        deliver(shared, &mut answers, &mut waiters);
                        break 'read;
                    }
                },
                Ok(None) => break,
                Err(len) => {
                    warn!(
                        len,
                        limit, "link answer frame above the answer limit; closing the link"
                    );
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
    answers: &mut Vec<(u64, Result<Reply, Refusal>)>,
    waiters: &mut Vec<(oneshot::Sender<Outcome>, Result<Reply, Refusal>)>,
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
        let _ = waiter.send(Outcome::Answer(reply));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{MayHaveRun, NotRun};
    use crate::link::{serve, LinkRequest};
    use bytes::Bytes;
    use http::StatusCode;

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
        let stop_flag = Flag::default();
        let stop = stop_flag.watch();
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
                async move { Ok((StatusCode::OK, Bytes::from_static(b"{}"))) }
            };
            serve(stream, Bytes::new(), 64 << 20, handle, stop).await;
        });
        let links = Arc::new(Links::new(Duration::from_secs(2), 16 << 20));
        let send = |key: &'static str, body: Bytes, within: Duration| {
            let (links, authority) = (links.clone(), authority.clone());
            tokio::spawn(async move {
                let payload = Payload {
                    body,
                    content_type: None,
                };
                let deadline = Deadline::at(Instant::now() + within);
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
                Err(LinkError::Undelivered(Undelivered::MayHaveRun(
                    MayHaveRun::TimedOut(_)
                )))
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
        let stop_flag = Flag::default();
        let stop = stop_flag.watch();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(
                stream,
                Bytes::new(),
                16 << 20,
                |request: LinkRequest| async move {
                    // Answers come back out of order: later keys wait less.
                    let n: u64 = request.key.parse().unwrap();
                    tokio::time::sleep(Duration::from_micros(500 - n)).await;
                    let body = format!("{}:{}", request.key, request.payload.body.len());
                    Ok((StatusCode::OK, Bytes::from(body)))
                },
                stop,
            )
            .await;
        });
        let links = Arc::new(Links::new(Duration::from_secs(2), 16 << 20));
        let sends: Vec<_> = (0..400u64)
            .map(|n| {
                let (links, authority) = (links.clone(), authority.clone());
                tokio::spawn(async move {
                    let payload = Payload {
                        body: Bytes::from(vec![b'x'; n as usize]),
                        content_type: None,
                    };
                    let deadline = Deadline::at(Instant::now() + Duration::from_secs(10));
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
        let stop_flag = Flag::default();
        let stop = stop_flag.watch();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(
                stream,
                Bytes::new(),
                16 << 20,
                |request: LinkRequest| async move {
                    if request.key == "silent" {
                        std::future::pending::<()>().await;
                    }
                    Ok((StatusCode::OK, request.payload.body))
                },
                stop,
            )
            .await;
        });
        let links = Links::new(Duration::from_secs(2), 16 << 20);
        let payload = Payload {
            body: Bytes::from_static(b"{}"),
            content_type: None,
        };
        let started = Instant::now();
        let deadline = Deadline::at(started + Duration::from_millis(200));
        let send = links.send(&authority, "s", "silent", "svc", &payload, deadline);
        let result = tokio::time::timeout(Duration::from_secs(5), send)
            .await
            .unwrap_or_else(|_| panic!("the request was still waiting 5 s after its deadline"));
        let took = started.elapsed();
        assert!(
            matches!(
                result,
                Err(LinkError::Undelivered(Undelivered::MayHaveRun(
                    MayHaveRun::TimedOut(_)
                )))
            ),
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
                Deadline::at(Instant::now() + Duration::from_secs(5)),
            )
            .await;
        assert!(matches!(answered, Ok(ref reply) if reply.status == StatusCode::OK));
        let peer = links.peer(&authority);
        let conn = peer.conn.load_full().expect("the link is open");
        assert!(conn.shared.queue.lock().unwrap().pending.is_empty());
    }

    /// The node's refusal and a handler's 421 travel apart: the first comes back as "not run",
    /// the second as an answer like any other.
    #[tokio::test]
    async fn a_refusal_is_not_run_and_a_handlers_421_is_an_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let stop_flag = Flag::default();
        let stop = stop_flag.watch();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(
                stream,
                Bytes::new(),
                16 << 20,
                |request: LinkRequest| async move {
                    match request.key.as_str() {
                        "refused" => Err(Refusal::NoService),
                        _ => Ok((StatusCode::MISDIRECTED_REQUEST, request.payload.body)),
                    }
                },
                stop,
            )
            .await;
        });
        let links = Links::new(Duration::from_secs(2), 16 << 20);
        let payload = Payload {
            body: Bytes::from_static(b"{\"mine\":1}"),
            content_type: None,
        };
        let deadline = Deadline::at(Instant::now() + Duration::from_secs(5));
        let refused = links
            .send(&authority, "s", "refused", "svc", &payload, deadline)
            .await;
        assert!(matches!(
            refused,
            Err(LinkError::Undelivered(Undelivered::NotRun(
                NotRun::Refused(Refusal::NoService)
            )))
        ));
        let answered = links
            .send(&authority, "s", "handler", "svc", &payload, deadline)
            .await;
        assert!(
            matches!(answered, Ok(ref reply) if reply.status == StatusCode::MISDIRECTED_REQUEST && reply.body == payload.body)
        );
    }

    /// A peer that stops reading costs a bounded outbox: once [`MAX_QUEUED`] bytes wait behind a
    /// write it does not take, new requests fail at once as never sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_stops_reading_gets_no_more_than_the_queue_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let stop_flag = Flag::default();
        let stop = stop_flag.watch();
        let (go_tx, go) = std::sync::mpsc::channel::<()>();
        let go = Arc::new(Mutex::new(go));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let seen = ran.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let handle = move |request: LinkRequest| {
                seen.lock().unwrap().push(request.key.clone());
                if request.key == "block" {
                    tokio::task::block_in_place(|| {
                        let _ = go.lock().unwrap().recv();
                    });
                }
                async move { Ok((StatusCode::OK, Bytes::from_static(b"{}"))) }
            };
            serve(stream, Bytes::new(), 64 << 20, handle, stop).await;
        });
        let links = Arc::new(Links::new(Duration::from_secs(2), 16 << 20));
        let send = |key: &'static str, body: Bytes| {
            let (links, authority) = (links.clone(), authority.clone());
            tokio::spawn(async move {
                let payload = Payload {
                    body,
                    content_type: None,
                };
                let deadline = Deadline::at(Instant::now() + Duration::from_secs(20));
                links
                    .send(&authority, "s", key, "svc", &payload, deadline)
                    .await
            })
        };
        let _block = send("block", Bytes::from_static(b"{}"));
        until(&links, &authority, &ran, "blocked peer", |_, ran| {
            ran == ["block"]
        })
        .await;
        let large = Bytes::from(vec![b' '; 30 * 1024 * 1024]);
        let _written = send("written", large.clone());
        until(
            &links,
            &authority,
            &ran,
            "a write the peer does not take",
            |queue, _| queue.pending.len() == 2 && queue.outbox.is_empty(),
        )
        .await;
        let mut queued = Vec::new();
        for key in ["q1", "q2", "q3"] {
            queued.push(send(key, large.clone()));
            let waiting = queued.len() + 2;
            until(&links, &authority, &ran, "queued", |queue, _| {
                queue.pending.len() == waiting
            })
            .await;
        }
        let refused = tokio::time::timeout(Duration::from_secs(5), send("q4", large.clone()))
            .await
            .expect("refused at once")
            .unwrap();
        match refused {
            Err(LinkError::Undelivered(Undelivered::NotRun(NotRun::Unsent(reason)))) => {
                assert!(reason.contains("backed up"), "{reason}");
            }
            _ => panic!("a fourth large request is queued past the bound"),
        }
        go_tx.send(()).unwrap();
    }

    async fn send_once(
        links: &Links,
        authority: &str,
        payload: &Payload,
    ) -> Result<Reply, LinkError> {
        let deadline = Deadline::at(Instant::now() + Duration::from_secs(5));
        links
            .send(authority, "s", "k", "svc", payload, deadline)
            .await
    }

    /// A peer that answered the preface as HTTP does is reached over HTTP for a while, with no
    /// connection per request, and then asked again: it may speak the link by then.
    #[tokio::test]
    async fn an_http_only_peer_is_asked_again_later() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        let stop_flag = Flag::default();
        let stop = stop_flag.watch();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    // The first time, an HTTP server's answer to the preface.
                    let mut preface = [0u8; PREFACE.len()];
                    let _ = stream.read_exact(&mut preface).await;
                    let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    continue;
                }
                let stop = stop.clone();
                tokio::spawn(serve(
                    stream,
                    Bytes::new(),
                    1 << 20,
                    |request: LinkRequest| async move { Ok((StatusCode::OK, request.payload.body)) },
                    stop,
                ));
            }
        });
        let mut links = Links::new(Duration::from_secs(2), 16 << 20);
        links.http_only_for = Duration::from_millis(300);
        let payload = Payload {
            body: Bytes::from_static(b"{}"),
            content_type: None,
        };
        assert!(matches!(
            send_once(&links, &authority, &payload).await,
            Err(LinkError::Unsupported)
        ));
        assert!(matches!(
            send_once(&links, &authority, &payload).await,
            Err(LinkError::Unsupported)
        ));
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "no connection per request"
        );
        let started = Instant::now();
        loop {
            match send_once(&links, &authority, &payload).await {
                Ok(reply) => {
                    assert_eq!(reply.status, StatusCode::OK);
                    break;
                }
                Err(LinkError::Unsupported) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "never asked again"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => panic!("the link failed"),
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // A peer that is gone is forgotten.
        links.close(&authority);
        assert!(!links.peers.load().contains_key(authority.as_str()));
    }
}
