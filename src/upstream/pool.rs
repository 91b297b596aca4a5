//! The keep-alive connections of one [`super::HttpUpstream`].
//!
//! A call takes an idle connection (or opens one), and drives it itself while it sends its
//! request and reads the answer: no task per connection, and no hand-off between tasks for each
//! message, as a general-purpose client needs. An idle connection is not polled; one the
//! upstream closed meanwhile is found closed when it is next taken, and the call moves on to
//! another, or a new one, as long as its request has not been sent.
//!
//! An `https` upstream's connections are TLS, verified when they open, and reused as plain
//! ones are: the handshake is paid once per connection, not per message.

use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{Fuse, FusedFuture};
use futures_util::FutureExt;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::security::trust::MaybeTls;
use crate::security::ClientTls;
use crate::wire::{error_chain, read_body, BodyError};

/// The half of a connection that does its I/O; once it has ended it stays ended.
type Connection = Fuse<http1::Connection<TokioIo<MaybeTls>, Full<Bytes>>>;

/// One HTTP/1.1 connection: the half that sends requests and the half that does its I/O.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    connection: Connection,
}

struct Idle {
    /// Boxed: a connection is large, and moves in and out of the pool with each call.
    conn: Box<Conn>,
    since: Instant,
}

/// Why a call over the pool failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Request(String),
    #[error("the connection closed before the answer came")]
    Closed,
    #[error("reading the answer: {0}")]
    Body(BodyError),
}

/// Idle connections to one `host:port`, most recently used last.
pub(super) struct Pool {
    host: String,
    port: u16,
    /// Set for an `https` upstream: its connections are TLS, verified against these roots.
    tls: Option<ClientTls>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    pub(super) fn new(
        host: String,
        port: u16,
        tls: Option<ClientTls>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Pool {
        Pool {
            host,
            port,
            tls,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` and reads the whole answer (at most `max_body` bytes), over an idle
    /// connection or a new one. A request that an idle connection could not take (the upstream
    /// had closed it) goes over the next one; one that was sent is not sent again.
    pub(super) async fn send(
        &self,
        request: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<(StatusCode, Bytes), SendError> {
        let (status, _, body) = self.exchange(request, max_body).await?;
        Ok((status, body))
    }

    /// [`Pool::send`], with the answer's headers.
    pub(super) async fn exchange(
        &self,
        mut request: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), SendError> {
        loop {
            let (mut conn, reused) = match self.take() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            let Conn { sender, connection } = &mut *conn;
            match drive(connection, sender.ready()).await {
                Ok(Ok(())) => {}
                // Closed while idle: the request has not gone anywhere yet.
                Ok(Err(_)) | Err(()) if reused => continue,
                Ok(Err(e)) => return Err(SendError::Request(error_chain(&e))),
                Err(()) => return Err(SendError::Closed),
            }
            let response = match drive(connection, sender.try_send_request(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(mut e)) => match e.take_message() {
                    Some(unsent) if reused => {
                        request = unsent;
                        continue;
                    }
                    _ => return Err(SendError::Request(error_chain(e.error()))),
                },
                Err(()) => return Err(SendError::Closed),
            };
            let status = response.status();
            let (parts, mut incoming) = response.into_parts();
            let body = match drive(connection, read_body(&mut incoming, max_body, |_| true)).await {
                Ok(Ok(body)) => body,
                Ok(Err(e)) => return Err(SendError::Body(e)),
                Err(()) => return Err(SendError::Closed),
            };
            self.put(conn);
            return Ok((status, parts.headers, body));
        }
    }

    /// Opens a connection: TCP, and the TLS handshake for an `https` upstream, both within the
    /// connect timeout.
    async fn connect(&self) -> Result<Box<Conn>, SendError> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                Some(tls) => Ok(MaybeTls::Tls(Box::new(tls.connect(&self.host, tcp).await?))),
                None => Ok::<_, std::io::Error>(MaybeTls::Plain(tcp)),
            }
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
            Err(_) => {
                return Err(SendError::Connect(format!(
                    "no connection within {:?}",
                    self.connect_timeout
                )))
            }
        };
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(error_chain(&e)))?;
        Ok(Box::new(Conn {
            sender,
            connection: connection.fuse(),
        }))
    }

    /// The most recently used idle connection; those idle too long are closed.
    fn take(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        idle.retain(|i| now.duration_since(i.since) < self.idle_timeout);
        idle.pop().map(|i| i.conn)
    }

    /// Keeps a connection whose exchange is over for the next call, unless it has ended (the
    /// upstream said `Connection: close`, or hung up) or the pool is full.
    fn put(&self, conn: Box<Conn>) {
        if conn.connection.is_terminated() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// Runs `work` (a step of an exchange) while driving the connection's I/O, in this task.
/// `Err(())` when the connection ended before `work` finished.
async fn drive<F: Future>(connection: &mut Connection, work: F) -> Result<F::Output, ()> {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let ended = connection.poll_unpin(cx).is_ready();
        // The connection may have handed `work` what it waits for (or an error), or it ended.
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if ended || connection.is_terminated() {
            return Poll::Ready(Err(()));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// How the test server treats a request.
    const KEEP_ALIVE: u8 = 0;
    /// Answers, then hangs up a little later without having said so (as servers close
    /// connections that stay idle).
    const HANG_UP: u8 = 1;
    /// Answers with `Connection: close`, then hangs up.
    const SAY_CLOSE: u8 = 2;
    /// Reads the request and hangs up without an answer.
    const SILENT: u8 = 3;

    /// A bare HTTP/1.1 server on a real socket that counts connections, requests and hang-ups.
    struct Server {
        port: u16,
        mode: Arc<AtomicU8>,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
        hang_ups: Arc<AtomicUsize>,
    }

    async fn server(mode: u8) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server {
            port: listener.local_addr().unwrap().port(),
            mode: Arc::new(AtomicU8::new(mode)),
            connections: Arc::default(),
            requests: Arc::default(),
            hang_ups: Arc::default(),
        };
        let (mode, connections, requests, hang_ups) = (
            server.mode.clone(),
            server.connections.clone(),
            server.requests.clone(),
            server.hang_ups.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                connections.fetch_add(1, Ordering::SeqCst);
                let (mode, requests, hang_ups) = (mode.clone(), requests.clone(), hang_ups.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        // One request: its head, then a body of its Content-Length.
                        let head_end = loop {
                            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buffer.len() < head_end + length {
                            let mut chunk = [0u8; 4096];
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buffer.drain(..head_end + length);
                        let n = requests.fetch_add(1, Ordering::SeqCst) + 1;
                        let mode = mode.load(Ordering::SeqCst);
                        let body = format!("{{\"n\":{n}}}");
                        let close = if mode == SAY_CLOSE {
                            "connection: close\r\n"
                        } else {
                            ""
                        };
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{close}\r\n{body}",
                            body.len()
                        );
                        if mode != SILENT {
                            socket.write_all(answer.as_bytes()).await.unwrap();
                        }
                        if mode == HANG_UP {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if mode != KEEP_ALIVE {
                            drop(socket);
                            hang_ups.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
            }
        });
        server
    }

    fn pool(port: u16, idle_timeout: Duration, max_idle: usize) -> Pool {
        Pool::new(
            "127.0.0.1".into(),
            port,
            None,
            Duration::from_secs(1),
            idle_timeout,
            max_idle,
        )
    }

    fn request(port: u16) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::from_static(b"{\"a\":1}")));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = "/handle".parse().unwrap();
        let host = format!("127.0.0.1:{port}").parse().unwrap();
        request.headers_mut().insert(http::header::HOST, host);
        request
    }

    fn idle(pool: &Pool) -> usize {
        pool.idle.lock().unwrap().len()
    }

    /// Waits until `count` reaches `n`, for at most 5 s.
    async fn reaches(count: &AtomicUsize, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "stuck at {count:?}, waiting for {n}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn an_upstream_url_gives_where_to_connect_and_what_requests_carry() {
        use crate::upstream::{HttpUpstream, UpstreamConfig};
        let u = HttpUpstream::new("http://[::1]:8080/a/b?c=d", UpstreamConfig::default()).unwrap();
        assert_eq!(
            (u.inner.pool.host.as_str(), u.inner.pool.port),
            ("::1", 8080)
        );
        assert_eq!(
            (u.inner.target.to_string(), u.inner.host.to_str().unwrap()),
            ("/a/b?c=d".into(), "[::1]:8080")
        );
        let u = HttpUpstream::new("http://handlers.internal", UpstreamConfig::default()).unwrap();
        assert_eq!(
            (u.inner.pool.host.as_str(), u.inner.pool.port),
            ("handlers.internal", 80)
        );
        assert!(u.inner.pool.tls.is_none());
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let config = UpstreamConfig {
            tls: Some(crate::ClientTls::from_ca_pem(ca.cert.pem().as_bytes()).unwrap()),
            ..UpstreamConfig::default()
        };
        let secure = HttpUpstream::new("https://handlers.internal/h", config).unwrap();
        assert_eq!(
            (secure.inner.pool.host.as_str(), secure.inner.pool.port),
            ("handlers.internal", 443)
        );
        assert!(secure.inner.pool.tls.is_some());
        assert_eq!(
            (u.inner.target.to_string(), u.inner.host.to_str().unwrap()),
            ("/".into(), "handlers.internal")
        );
    }

    #[tokio::test]
    async fn calls_in_a_row_share_one_connection() {
        let s = server(KEEP_ALIVE).await;
        let pool = pool(s.port, Duration::from_secs(60), 4);
        for n in 1..=5 {
            let (status, body) = pool.send(request(s.port), 1024).await.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, format!("{{\"n\":{n}}}"));
        }
        assert_eq!(s.connections.load(Ordering::SeqCst), 1);
        assert_eq!(idle(&pool), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_get_connections_of_their_own_and_the_pool_keeps_at_most_max_idle() {
        let s = server(KEEP_ALIVE).await;
        let pool = Arc::new(pool(s.port, Duration::from_secs(60), 3));
        // Each call holds its connection until the server's answer is read: eight at once
        // need eight connections.
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.send(request(s.port), 1024).await.unwrap() })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().0, StatusCode::OK);
        }
        let opened = s.connections.load(Ordering::SeqCst);
        assert!((1..=8).contains(&opened), "{opened} connections");
        assert!(idle(&pool) <= 3, "{} idle", idle(&pool));
        let kept = idle(&pool);
        for _ in 0..kept {
            pool.send(request(s.port), 1024).await.unwrap();
        }
        assert_eq!(
            s.connections.load(Ordering::SeqCst),
            opened,
            "kept ones reused"
        );
    }

    #[tokio::test]
    async fn a_connection_the_upstream_hung_up_is_not_used_again() {
        let s = server(HANG_UP).await;
        let pool = pool(s.port, Duration::from_secs(60), 4);
        for n in 1..=3 {
            let (_, body) = pool.send(request(s.port), 1024).await.unwrap();
            assert_eq!(body, format!("{{\"n\":{n}}}"));
            // The connection went back to the pool, and the upstream has hung it up since.
            assert_eq!(idle(&pool), 1);
            reaches(&s.hang_ups, n).await;
        }
        assert_eq!(s.connections.load(Ordering::SeqCst), 3);
        assert_eq!(
            s.requests.load(Ordering::SeqCst),
            3,
            "no request was sent twice"
        );
    }

    #[tokio::test]
    async fn an_answer_that_says_close_gives_its_connection_up() {
        let s = server(SAY_CLOSE).await;
        let pool = pool(s.port, Duration::from_secs(60), 4);
        let (status, _) = pool.send(request(s.port), 1024).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(idle(&pool), 0);
        pool.send(request(s.port), 1024).await.unwrap();
        assert_eq!(s.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_that_was_sent_is_not_sent_again() {
        let s = server(KEEP_ALIVE).await;
        let pool = pool(s.port, Duration::from_secs(60), 4);
        pool.send(request(s.port), 1024).await.unwrap();
        // The idle connection's next request reaches the server, which hangs up unanswered.
        s.mode.store(SILENT, Ordering::SeqCst);
        let e = pool.send(request(s.port), 1024).await.unwrap_err();
        assert!(
            matches!(e, SendError::Closed | SendError::Request(_)),
            "{e:?}"
        );
        assert_eq!(s.requests.load(Ordering::SeqCst), 2);
        assert_eq!(
            s.connections.load(Ordering::SeqCst),
            1,
            "not resent on a new one"
        );
        assert_eq!(idle(&pool), 0);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_closed_not_reused() {
        let s = server(KEEP_ALIVE).await;
        let idle_timeout = Duration::from_millis(100);
        let pool = pool(s.port, idle_timeout, 4);
        pool.send(request(s.port), 1024).await.unwrap();
        // The timeout itself is what is tested: let it pass.
        tokio::time::sleep(idle_timeout * 2).await;
        pool.send(request(s.port), 1024).await.unwrap();
        assert_eq!(s.connections.load(Ordering::SeqCst), 2);
        assert_eq!(idle(&pool), 1);
    }

    #[tokio::test]
    async fn an_answer_over_the_limit_fails_and_nothing_unreachable_hangs() {
        let s = server(KEEP_ALIVE).await;
        let pool = pool(s.port, Duration::from_secs(60), 4);
        let e = pool.send(request(s.port), 4).await.unwrap_err();
        assert!(matches!(e, SendError::Body(BodyError::TooLarge)), "{e:?}");
        assert_eq!(
            idle(&pool),
            0,
            "a half-read answer leaves its connection unusable"
        );

        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let e = self::pool(port, Duration::from_secs(60), 4)
            .send(request(port), 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, SendError::Connect(_)), "{e:?}");
    }
}
