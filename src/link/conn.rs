//! One open link to a peer: its queue (the outbox and the requests waiting for answers), its
//! writer, its reader and its expiry sweep. Senders encode their frames into the outbox under
//! the queue's lock; the writer sends what is queued in one system call; the reader hands each
//! answer to its waiter; the sweep answers requests whose deadlines pass.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::client::LinkError;
use super::duplex::Duplex;
use super::frame::{decode_server_frame, next_frame, Outbox, ServerFrame, PREFACE, PREFACE_ACK};
use crate::delivery::{Refusal, Undelivered};
use crate::message::Reply;
use crate::security::{Alpn, Fingerprint, PeerTls};
use crate::shutdown::Flag;
use crate::wire::{tune, Deadline};

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
pub(super) enum Outcome {
    /// The peer's answer, or its refusal to run the request.
    Answer(Result<Reply, Refusal>),
    /// The link ended before the request was written: the peer never saw it.
    Unsent,
    /// The peer sent the go-away (it is stopping, or closes the link as idle) before the
    /// request was written: it never saw it, and a new link may carry it.
    WentAway,
    /// Its deadline passed without an answer.
    Expired,
}

/// Hashes a link's request ids, which count up from 1: one multiplication spreads them over
/// the whole word (SipHash is not needed for numbers this node makes itself).
#[derive(Default)]
pub(super) struct IdHasher(u64);

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
pub(super) struct Queue {
    /// Requests waiting for their answers: id → (waiter, deadline).
    pub(super) pending:
        HashMap<u64, (oneshot::Sender<Outcome>, Instant), BuildHasherDefault<IdHasher>>,
    /// Frames encoded by their senders and not yet taken by the writer.
    pub(super) outbox: Outbox,
    /// The ids of the requests whose frames are in `outbox`, each with where its frame starts.
    pub(super) queued: Vec<(u64, usize)>,
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
pub(super) struct Shared {
    pub(super) queue: Mutex<Queue>,
    /// Wakes the writer: a frame went into an empty outbox, the client is gone, or the link
    /// broke or is finishing. The writer needs no other wake-up source, so that waiting costs
    /// it one permit under load and no lock.
    ready: tokio::sync::Notify,
    /// No new requests go on this link (it broke, or the peer sent the go-away).
    closed: AtomicBool,
    /// Ends the link at once: requests still queued come back unsent, written ones fail.
    broken: Flag,
    /// The peer sent the go-away: the writer sends back what is still queued (unsent) and
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

    /// The peer sent the go-away (it is stopping, or closes the link as idle): see
    /// [`Shared::finish`].
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
/// wrote are answered [`Outcome::Unsent`] (or [`Outcome::WentAway`]), so that their senders
/// know the peer never saw them.
async fn write_frames(mut writer: impl AsyncWrite + Unpin, shared: Arc<Shared>) {
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
    let outcome = || match shared.finish.is_raised() {
        true => Outcome::WentAway,
        false => Outcome::Unsent,
    };
    for (waiter, _) in unsent {
        let _ = waiter.send(outcome());
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
pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
}

impl Conn {
    /// Queues a request for the writer, its frame written by `encode` from the request's id
    /// into the outbox, and returns where its outcome will come.
    pub(super) fn submit(
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

    pub(super) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the peer sent the go-away: the link takes no new request.
    pub(super) fn went_away(&self) -> bool {
        self.shared.finish.is_raised()
    }

    /// The peer's go-away as the writer finds it before the link is marked closed: the race of
    /// a request queued just as the go-away arrives.
    #[cfg(test)]
    pub(super) fn go_away_unseen(&self) {
        self.shared.finish.raise();
    }

    /// Whether requests on the link still wait for their answers.
    pub(super) fn has_pending(&self) -> bool {
        !self
            .shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending
            .is_empty()
    }

    /// Ends the link at once.
    pub(super) fn abort(&self) {
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

/// Connects (over TLS with `tls`, accepting exactly the certificate of that fingerprint) and
/// exchanges the preface; `None` when the peer answers something else. A peer that closes the
/// connection during the preface (a node stopping, or a keyed node that does not take this one
/// as a peer) is an error, not an HTTP peer.
pub(super) async fn connect(
    authority: &str,
    limit: usize,
    tls: Option<(&PeerTls, Option<Fingerprint>)>,
) -> std::io::Result<Option<Arc<Conn>>> {
    let stream = TcpStream::connect(authority).await?;
    tune(&stream);
    match tls {
        None => open(stream, limit).await,
        Some((tls, peer)) => {
            let stream = tls.connect(stream, authority, peer, Alpn::Link).await?;
            open(stream, limit).await
        }
    }
}

/// Exchanges the preface on a connection and starts the link's tasks on it.
async fn open(mut stream: impl Duplex, limit: usize) -> std::io::Result<Option<Arc<Conn>>> {
    stream.write_all(PREFACE).await?;
    stream.flush().await?;
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
    let (reader, writer) = stream.halves();
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
async fn read_responses(mut reader: impl AsyncRead + Unpin, shared: &Shared, limit: usize) {
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
                        debug!("peer sent the go-away; its link takes no new requests");
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
