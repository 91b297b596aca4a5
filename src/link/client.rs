//! The sending end of links: one open link per peer (see `conn`), shared by every request to
//! it, opened once however many requests wait; peers that speak only HTTP are told apart and
//! asked again later; peers that are gone are forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tracing::debug;

use super::conn::{connect, Conn, Outcome};
use super::frame::{encode_request, response_limit, Outbox};
use crate::delivery::Undelivered;
use crate::message::{Payload, Reply};
use crate::security::{Fingerprint, PeerTls};
use crate::wire::Deadline;
use crate::FastMap;

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
    /// The peer does not speak the link, or a link frame cannot carry the request (see
    /// [`super::frame::Unfit`]): send it over HTTP instead.
    Unsupported,
    Undelivered(Undelivered),
}

/// How long a peer that answered the preface as HTTP does is reached over HTTP before the link
/// is tried again: it may have been restarted with a version that speaks it.
const HTTP_ONLY_FOR: Duration = Duration::from_secs(60);
/// How long requests already on the link to a node that membership says is gone may still
/// wait for their answers: as long as the longest request deadline a node gives by default.
const GONE_GRACE: Duration = Duration::from_secs(10);

/// Link clients to every peer, keyed by `host:port`.
pub(crate) struct Links {
    peers: ArcSwap<FastMap<Arc<str>, Arc<Peer>>>,
    connect_timeout: Duration,
    /// Answer frames above this end the link.
    answer_limit: usize,
    http_only_for: Duration,
    /// Where [`Peer::http_only_until`] counts from.
    epoch: Instant,
    /// This node's TLS, when it has a cluster key: links then run over mutual TLS only.
    tls: Option<Arc<PeerTls>>,
}

impl Links {
    /// Links that connect within `connect_timeout` and take answers of up to `max_response`
    /// bytes; over mutual TLS with `tls`.
    pub(crate) fn new(
        connect_timeout: Duration,
        max_response: usize,
        tls: Option<Arc<PeerTls>>,
    ) -> Self {
        Links {
            peers: ArcSwap::from_pointee(FastMap::default()),
            connect_timeout,
            answer_limit: response_limit(max_response),
            http_only_for: HTTP_ONLY_FOR,
            epoch: Instant::now(),
            tls,
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

    /// Ends the open link to `authority`, if any, because membership says the node there is
    /// gone: no new request takes the link, and the peer is forgotten, so that the map holds
    /// only peers still known. Requests already on the link keep it for up to [`GONE_GRACE`]:
    /// a node that a busy or lossy network made look dead (a false suspicion of the failure
    /// detector) still answers them, and one that is really gone lets them time out at their
    /// deadlines; then the link is ended.
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
            debug!(%authority, "closing the link to a node that is gone, once its requests end");
            tokio::spawn(async move {
                let until = Instant::now() + GONE_GRACE;
                while conn.has_pending() && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                conn.abort();
            });
        }
    }

    /// Sends one request to `authority` (`host:port`), whose certificate has fingerprint
    /// `peer` if it published one, and waits for its answer until `deadline`. A request that
    /// never left this node fails as [`Undelivered::NotRun`] (with TLS, also one to a peer that
    /// published no certificate); one that was written and then lost, or got no answer in time,
    /// as [`Undelivered::MayHaveRun`].
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send(
        &self,
        authority: &str,
        peer: Option<Fingerprint>,
        stream: &str,
        key: &str,
        service_id: &str,
        payload: &Payload,
        deadline: Deadline,
    ) -> Result<Reply, LinkError> {
        let headers = http::HeaderMap::new();
        let extras = (None, &headers);
        self.send_with(
            authority,
            peer,
            stream,
            key,
            service_id,
            (0, None),
            extras,
            payload,
            deadline,
        )
        .await
    }

    /// [`Links::send`] of a message with a name and headers (`extras`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_with(
        &self,
        authority: &str,
        peer: Option<Fingerprint>,
        stream: &str,
        key: &str,
        service_id: &str,
        (ring, previous_owner): (u64, Option<&str>),
        extras: (Option<&str>, &http::HeaderMap),
        payload: &Payload,
        deadline: Deadline,
    ) -> Result<Reply, LinkError> {
        let timeout = deadline.remaining();
        let trace = crate::observe::outgoing().map(crate::observe::Incoming::from);
        let mut encode = |frame: &mut Outbox, id| {
            encode_request(
                frame,
                id,
                trace.as_ref(),
                timeout,
                (ring, previous_owner.unwrap_or("")),
                stream,
                key,
                service_id,
                payload.content_type.as_deref().unwrap_or(""),
                extras,
                &payload.body,
            )
            .map_err(|unfit| {
                debug!(
                    reason = unfit.0,
                    "request sent over HTTP instead of the link"
                );
                LinkError::Unsupported
            })
        };
        // A request that the peer's go-away kept from being written (the peer closes the link
        // as idle, or is stopping) goes once more, on a new link: the peer never saw it. A
        // stopping peer refuses it there as leaving.
        let mut again = true;
        loop {
            // The common case touches no reference count or lock shared with other threads but
            // the link's own: the peer and its open link are read through arc-swap guards.
            let sent = {
                let peers = self.peers.load();
                let open = peers.get(authority).and_then(|peer| {
                    let conn = peer.conn.load();
                    conn.as_ref().filter(|c| !c.is_closed()).map(|c| {
                        c.submit(&mut encode, deadline)
                            .map_err(|e| (went_away(c, &e), e))
                    })
                });
                open
            };
            let submitted = match sent {
                Some(submitted) => submitted,
                None => {
                    let fingerprint = peer;
                    let peer = self.peer(authority);
                    if peer.http_only_until.load(Ordering::Relaxed) > self.now_ms() {
                        return Err(LinkError::Unsupported);
                    }
                    let conn = self.conn(authority, &peer, fingerprint, deadline).await?;
                    conn.submit(&mut encode, deadline)
                        .map_err(|e| (went_away(&conn, &e), e))
                }
            };
            let rx = match submitted {
                Ok(rx) => rx,
                Err((true, _)) if again => {
                    again = false;
                    continue;
                }
                Err((_, e)) => return Err(e),
            };
            return match rx.await {
                Ok(Outcome::Answer(Ok(reply))) => Ok(reply),
                Ok(Outcome::Answer(Err(why))) => {
                    Err(LinkError::Undelivered(Undelivered::refused(why)))
                }
                Ok(Outcome::WentAway) if again => {
                    again = false;
                    continue;
                }
                Ok(Outcome::Unsent | Outcome::WentAway) => Err(LinkError::Undelivered(
                    Undelivered::unsent("link to the peer closed before the request was written"),
                )),
                Ok(Outcome::Expired) => {
                    Err(LinkError::Undelivered(Undelivered::timed_out(timeout)))
                }
                Err(_) => Err(LinkError::Undelivered(Undelivered::lost(
                    "link to the peer closed before the answer",
                ))),
            };
        }
    }

    /// The open link to `peer`, connecting (once, however many requests wait) when needed.
    async fn conn(
        &self,
        authority: &str,
        peer: &Peer,
        fingerprint: Option<Fingerprint>,
        deadline: Deadline,
    ) -> Result<Arc<Conn>, LinkError> {
        let tls = match (&self.tls, fingerprint) {
            (None, _) => None,
            (Some(tls), None) if tls.pins() => {
                return Err(LinkError::Undelivered(Undelivered::connect(
                    "the node published no certificate: a keyed node links only to keyed peers",
                )));
            }
            (Some(tls), fingerprint) => Some((&**tls, fingerprint)),
        };
        let current = || peer.conn.load_full().filter(|c| !c.is_closed());
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let _connecting = peer.connecting.lock().await;
        if let Some(conn) = current() {
            return Ok(conn);
        }
        let budget = self.connect_timeout.min(deadline.remaining());
        let connecting = connect(authority, self.answer_limit, tls);
        let conn = match tokio::time::timeout(budget, connecting).await {
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

/// Whether `conn` refused a request (`e`) because its peer sent the go-away: the request was
/// not written, and a new link may carry it.
fn went_away(conn: &Conn, e: &LinkError) -> bool {
    conn.went_away()
        && matches!(
            e,
            LinkError::Undelivered(Undelivered::NotRun(crate::delivery::NotRun::Unsent(_)))
        )
}

#[cfg(test)]
mod tests {
    use super::super::conn::Queue;
    use super::super::frame::PREFACE;
    use super::*;
    use crate::delivery::Refusal;
    use crate::delivery::{MayHaveRun, NotRun};
    use crate::link::{serve, Answer, LinkRequest};
    use crate::shutdown::Flag;
    use crate::wire::Budget;
    use bytes::Bytes;
    use http::StatusCode;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The idle timeout of the test servers: longer than any test.
    const IDLE: Duration = Duration::from_secs(60);

    fn unbounded() -> Arc<Budget> {
        Arc::new(Budget::new(usize::MAX))
    }

    /// A handler that answers with the request's body.
    async fn echo(request: LinkRequest) -> Answer {
        Ok(Reply::new(StatusCode::OK, request.payload.body))
    }

    /// [`serve`] as the tests' peers run it: nothing read ahead, no budget bound.
    fn serving<S, H, F>(
        stream: S,
        body_limit: usize,
        handle: H,
        idle: Duration,
        stop: crate::shutdown::Watch,
    ) -> impl std::future::Future<Output = ()>
    where
        S: super::super::duplex::Duplex,
        H: Fn(LinkRequest) -> F,
        F: std::future::Future<Output = Answer> + Send + 'static,
    {
        serve(
            stream,
            Bytes::new(),
            body_limit,
            unbounded(),
            handle,
            idle,
            stop,
        )
    }

    /// A link server on a new port that serves one connection with `handle`; its address, the
    /// flag that stops it (dropping it stops it too), and its task.
    async fn serve_one<H, F>(handle: H) -> (String, Flag, tokio::task::JoinHandle<()>)
    where
        H: Fn(LinkRequest) -> F + Send + 'static,
        F: std::future::Future<Output = Answer> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let stop = Flag::default();
        let watch = stop.watch();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serving(stream, 16 << 20, handle, IDLE, watch).await;
        });
        (authority, stop, server)
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

    /// A peer whose one link stops reading while it runs the key `block`, until `go` is sent.
    struct BlockingPeer {
        authority: String,
        go: std::sync::mpsc::Sender<()>,
        /// The keys it ran, in order.
        ran: Arc<Mutex<Vec<String>>>,
        /// Its server stops when this is dropped.
        stop: Flag,
    }

    async fn blocking_peer() -> BlockingPeer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let stop = Flag::default();
        let watch = stop.watch();
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
                async move { Ok(Reply::new(StatusCode::OK, Bytes::from_static(b"{}"))) }
            };
            serving(stream, 64 << 20, handle, IDLE, watch).await;
        });
        BlockingPeer {
            authority,
            go: go_tx,
            ran,
            stop,
        }
    }

    /// A peer that stops reading: requests queued behind a write it does not take expire, and
    /// when it reads again their frames are not sent (it never runs them); the link still
    /// carries new requests. The peer stops reading because a handler blocks its link's task;
    /// a body far larger than the socket buffers then keeps the writer waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_expire_while_queued_are_not_sent() {
        let BlockingPeer {
            authority,
            go: go_tx,
            ran,
            stop: _stop,
        } = blocking_peer().await;
        let links = Arc::new(Links::new(Duration::from_secs(2), 16 << 20, None));
        let send = |key: &'static str, body: Bytes, within: Duration| {
            let (links, authority) = (links.clone(), authority.clone());
            tokio::spawn(async move {
                let payload = Payload {
                    body,
                    content_type: None,
                };
                let deadline = Deadline::at(Instant::now() + within);
                links
                    .send(&authority, None, "s", key, "svc", &payload, deadline)
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
        let (authority, _stop, server) = serve_one(|request: LinkRequest| async move {
            // Answers come back out of order: later keys wait less.
            let n: u64 = request.key.parse().unwrap();
            tokio::time::sleep(Duration::from_micros(500 - n)).await;
            let body = format!("{}:{}", request.key, request.payload.body.len());
            Ok(Reply::new(StatusCode::OK, Bytes::from(body)))
        })
        .await;
        let links = Arc::new(Links::new(Duration::from_secs(2), 16 << 20, None));
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
                        .send(&authority, None, "s", &key, "svc", &payload, deadline)
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
        let (authority, _stop, _server) = serve_one(|request: LinkRequest| async move {
            if request.key == "silent" {
                std::future::pending::<()>().await;
            }
            Ok(Reply::new(StatusCode::OK, request.payload.body))
        })
        .await;
        let links = Links::new(Duration::from_secs(2), 16 << 20, None);
        let payload = Payload {
            body: Bytes::from_static(b"{}"),
            content_type: None,
        };
        let started = Instant::now();
        let deadline = Deadline::at(started + Duration::from_millis(200));
        let send = links.send(&authority, None, "s", "silent", "svc", &payload, deadline);
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
                None,
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
        let (authority, _stop, _server) = serve_one(|request: LinkRequest| async move {
            match request.key.as_str() {
                "refused" => Err(Refusal::NoService),
                _ => Ok(Reply::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    request.payload.body,
                )),
            }
        })
        .await;
        let links = Links::new(Duration::from_secs(2), 16 << 20, None);
        let payload = Payload {
            body: Bytes::from_static(b"{\"mine\":1}"),
            content_type: None,
        };
        let deadline = Deadline::at(Instant::now() + Duration::from_secs(5));
        let refused = links
            .send(&authority, None, "s", "refused", "svc", &payload, deadline)
            .await;
        assert!(matches!(
            refused,
            Err(LinkError::Undelivered(Undelivered::NotRun(
                NotRun::Refused(Refusal::NoService)
            )))
        ));
        let answered = links
            .send(&authority, None, "s", "handler", "svc", &payload, deadline)
            .await;
        assert!(
            matches!(answered, Ok(ref reply) if reply.status == StatusCode::MISDIRECTED_REQUEST && reply.body == payload.body)
        );
    }

    /// A peer that stops reading costs a bounded outbox: once [`MAX_QUEUED`] bytes wait behind a
    /// write it does not take, new requests fail at once as never sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_stops_reading_gets_no_more_than_the_queue_bound() {
        let BlockingPeer {
            authority,
            go: go_tx,
            ran,
            stop: _stop,
        } = blocking_peer().await;
        let links = Arc::new(Links::new(Duration::from_secs(2), 16 << 20, None));
        let send = |key: &'static str, body: Bytes| {
            let (links, authority) = (links.clone(), authority.clone());
            tokio::spawn(async move {
                let payload = Payload {
                    body,
                    content_type: None,
                };
                let deadline = Deadline::at(Instant::now() + Duration::from_secs(20));
                links
                    .send(&authority, None, "s", key, "svc", &payload, deadline)
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
            .send(authority, None, "s", "k", "svc", payload, deadline)
            .await
    }

    /// Between keyed nodes the link runs over mutual TLS: requests and answers of any size
    /// cross it whole. To a peer that published no certificate, nothing is sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_keyed_link_runs_over_tls_and_only_to_a_published_peer() {
        use crate::security::{client_fingerprint, Identity, PeerTls};
        let (near, far) = (
            Arc::new(PeerTls::new(Identity::generate())),
            Arc::new(PeerTls::new(Identity::generate())),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let stop = Flag::default();
        let (watch, acceptor) = (stop.watch(), far.acceptor());
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let stream = acceptor.accept(stream).await.unwrap();
            let client = client_fingerprint(stream.get_ref().1);
            serving(stream, 16 << 20, echo, IDLE, watch).await;
            client
        });
        let links = Links::new(Duration::from_secs(2), 16 << 20, Some(near.clone()));
        for size in [2, 100 * 1024, 3 << 20] {
            let payload = Payload {
                body: Bytes::from(vec![b'x'; size]),
                content_type: None,
            };
            let deadline = Deadline::at(Instant::now() + Duration::from_secs(10));
            let peer = far.fingerprint();
            let sent = links.send(&authority, peer, "s", "k", "svc", &payload, deadline);
            match sent.await {
                Ok(reply) => assert_eq!(reply.body, payload.body, "{size} bytes"),
                Err(_) => panic!("{size} bytes over TLS failed"),
            }
        }
        links.close(&authority);
        let seen = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the link closes")
            .unwrap();
        assert_eq!(seen, near.fingerprint(), "the client's certificate");
        let payload = Payload {
            body: Bytes::from_static(b"{}"),
            content_type: None,
        };
        assert!(matches!(
            send_once(&links, &authority, &payload).await,
            Err(LinkError::Undelivered(Undelivered::NotRun(
                NotRun::Connect(_)
            )))
        ));
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
                tokio::spawn(serving(stream, 1 << 20, echo, IDLE, stop));
            }
        });
        let mut links = Links::new(Duration::from_secs(2), 16 << 20, None);
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

    /// A link server on a new port that serves every connection, each closed as idle after
    /// `idle`, with an echo handler; its address and how many connections it took.
    async fn echo_peer(idle: Duration) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            let stop = Flag::default();
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let watch = stop.watch();
                tokio::spawn(serving(stream, 1 << 20, echo, idle, watch));
            }
        });
        (authority, accepted)
    }

    fn hello() -> Payload {
        Payload {
            body: Bytes::from_static(b"{\"hello\":1}"),
            content_type: None,
        }
    }

    /// A link its peer closes as idle (the go-away, then the end of the connection) is not used
    /// again: the next request opens a new link and gets its answer.
    #[tokio::test]
    async fn a_link_closed_as_idle_is_replaced_by_the_next_request() {
        let (authority, accepted) = echo_peer(Duration::from_millis(300)).await;
        let links = Links::new(Duration::from_secs(2), 1 << 20, None);
        let reply = send_once(&links, &authority, &hello()).await.ok().unwrap();
        assert_eq!(reply.body, hello().body);
        let started = Instant::now();
        while !links
            .peer(&authority)
            .conn
            .load_full()
            .is_some_and(|c| c.is_closed())
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the idle link stays open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reply = send_once(&links, &authority, &hello()).await.ok().unwrap();
        assert_eq!(reply.body, hello().body);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a second link");
    }

    /// A request queued on a link just as its peer's go-away arrives, and so never written,
    /// goes again on a new link, unseen by its sender: the peer never saw it.
    #[tokio::test]
    async fn a_request_the_go_away_kept_from_being_written_goes_on_a_new_link() {
        let (authority, accepted) = echo_peer(IDLE).await;
        let links = Links::new(Duration::from_secs(2), 1 << 20, None);
        send_once(&links, &authority, &hello()).await.ok().unwrap();
        let conn = links.peer(&authority).conn.load_full().unwrap();
        // The go-away as the link's writer finds it before the link is marked closed: the
        // request below is queued on this link, and not written.
        conn.go_away_unseen();
        let reply = send_once(&links, &authority, &hello()).await;
        assert_eq!(reply.ok().unwrap().body, hello().body);
        assert!(conn.is_closed(), "the first link was given up");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a second link");
    }
}
