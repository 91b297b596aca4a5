//! The accept loop and the drain: each accepted connection is tuned, told apart by its first
//! bytes (a peer link, HTTP/2 with prior knowledge, or HTTP/1.1; on a keyed node also TLS,
//! inside which they are told apart again) and served in a task of its own; when the node
//! stops, the listener closes and open connections get the drain timeout to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::connection::{watch_connection, Activity, Open};
use super::message::link_request;
use super::peer::Caller;
use super::routes::handle;
use super::sniff::{sniff, Protocol, Rewind};
use super::Inbound;
use crate::link::{self, Duplex};
use crate::security::client_fingerprint;
use crate::shutdown::Signal;
use crate::wire::tune;

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP/1.1 and HTTP/2 servers' settings, shared by every connection.
type Builders = (http1::Builder, http2::Builder<TokioExecutor>);

/// How many connections may be open, and how long they may stay open and idle.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at once (HTTP and links); above it, new ones are closed at once.
    pub(crate) max_connections: usize,
    /// How long a stopping node lets open requests (HTTP and peer links) finish.
    pub(crate) drain: Duration,
    /// A client connection that starts no request for this long is closed (see
    /// [`watch_connection`]).
    pub(crate) idle: Duration,
}

/// Serves the API on `listener` until `signal` says stop, then stops accepting and lets open
/// requests finish for at most the drain timeout. A kill drops everything at once.
pub(crate) async fn serve(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    mut signal: Signal,
    limits: Limits,
) {
    // HTTP/1.1 for clients; HTTP/2 with prior knowledge for peers configured to forward over it.
    // Which one a connection speaks is known from its first bytes (see `sniff`), so each is
    // served by its own builder, with no detection layer around every read.
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(4096)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20);
    let http: Arc<Builders> = Arc::new((http1, http2));
    let open = inbound.connections.clone();
    let closed = Arc::new(tokio::sync::Notify::new());
    // Whether the last connection was refused at the limit: the warning is logged once a spell.
    let mut refusing = false;
    loop {
        let (stream, peer): (TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = signal.stop.raised() => break,
        };
        if open.load(Ordering::Acquire) >= limits.max_connections {
            // Those already open keep being served; this one is closed before it costs more.
            if !refusing {
                warn!(
                    max = limits.max_connections,
                    "at the connection limit; closing new connections"
                );
                refusing = true;
            }
            debug!(%peer, "connection refused: at the connection limit");
            drop(stream);
            continue;
        }
        refusing = false;
        tune(&stream);
        let inbound = inbound.clone();
        let mut signal = signal.clone();
        let http = http.clone();
        let counted = Open::count(&open, &closed);
        tokio::spawn(async move {
            let mut stream = stream;
            let _counted = counted;
            // A connection that has sent nothing by the time the node stops is closed: it
            // would keep the drain waiting.
            let mut stopping = signal.stop.clone();
            let (protocol, head) = tokio::select! {
                sniffed = sniff(&mut stream) => sniffed,
                _ = stopping.raised() => return,
                _ = signal.kill.raised() => return,
            };
            // What serves the connection goes in a box of its own, sized for its protocol: a
            // connection that has not said what it speaks (thousands of them, in a flood)
            // holds no more than the sniffing, and only TLS connections hold a TLS session.
            let protocol = match (protocol, &inbound.tls) {
                (Protocol::Tls, Some(_)) => {
                    let tls = serve_tls(stream, head, peer, inbound, signal, http, limits);
                    return Box::pin(tls).await;
                }
                // Without a key, TLS gets what any bytes that are not HTTP get: a 400.
                (Protocol::Tls, None) => Protocol::Http1,
                // Under the operator's PKI the port speaks HTTPS only.
                (other, Some(tls)) if !tls.pins() => {
                    return refuse_plaintext(stream, other, peer).await;
                }
                (other, _) => other,
            };
            let connection = (stream, protocol, head, Caller::plain(peer));
            Box::pin(serve_connection(connection, inbound, signal, &http, limits)).await;
        });
    }
    drop(listener);
    info!("HTTP server stopped accepting; draining open requests");
    let drained = async {
        loop {
            let notified = closed.notified();
            if open.load(Ordering::Acquire) == 0 {
                break;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(limits.drain, drained).await.is_err() {
        warn!(drain = ?limits.drain, "drain timed out; dropping open connections");
    }
}

/// Runs the TLS handshake on a connection that opened with one (within [`HANDSHAKE_TIMEOUT`]),
/// tells what it speaks inside, and serves it, knowing the certificate its client presented.
async fn serve_tls(
    stream: TcpStream,
    head: Bytes,
    peer: SocketAddr,
    inbound: Arc<Inbound>,
    mut signal: Signal,
    http: Arc<Builders>,
    limits: Limits,
) {
    let Some(tls) = &inbound.tls else {
        return;
    };
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tls.acceptor().accept(Rewind::new(head, stream)),
    );
    let mut stopping = signal.stop.clone();
    let mut stream = tokio::select! {
        accepted = handshake => match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => return debug!(%peer, "TLS handshake timed out"),
        },
        _ = stopping.raised() => return,
        _ = signal.kill.raised() => return,
    };
    let connection = stream.get_ref().1;
    let by_certificate = tls.peer_by_certificate(connection);
    if by_certificate {
        inbound.router.metrics().peers.authenticated();
    }
    let caller = Caller::tls(peer, client_fingerprint(connection), by_certificate);
    let (protocol, head) = tokio::select! {
        sniffed = sniff(&mut stream) => sniffed,
        _ = stopping.raised() => return,
        _ = signal.kill.raised() => return,
    };
    // TLS inside TLS is not a thing: answered as HTTP/1.1 answers noise.
    let protocol = match protocol {
        Protocol::Tls => Protocol::Http1,
        other => other,
    };
    let connection = (stream, protocol, head, caller);
    serve_connection(connection, inbound, signal, &http, limits).await;
}

/// What a plaintext HTTP/1.1 client of a node that speaks HTTPS only is told before the
/// connection closes.
const HTTPS_ONLY: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
connection: close\r\ncontent-length: 53\r\n\r\n{\"error\":\"this node speaks HTTPS only: use https://\"}";

/// Closes a plaintext connection to a node that speaks HTTPS only: an HTTP/1.1 client is told
/// why first; a link or HTTP/2 client is closed at once.
async fn refuse_plaintext(mut stream: TcpStream, protocol: Protocol, peer: SocketAddr) {
    use tokio::io::AsyncWriteExt;
    debug!(%peer, ?protocol, "plaintext refused: this node speaks HTTPS only");
    if protocol == Protocol::Http1 {
        let answer = stream.write_all(HTTPS_ONLY);
        let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
        let _ = stream.shutdown().await;
    }
}

/// Serves one connection whose protocol is known: a peer link (on a keyed node, only from a
/// peer over mutual TLS: from anyone else it is closed at once), or HTTP/1.1 or HTTP/2 until
/// it ends, idles out or the node stops. `head` holds the bytes read to tell the protocol.
async fn serve_connection<S: Duplex>(
    (stream, protocol, head, caller): (S, Protocol, Bytes, Caller),
    inbound: Arc<Inbound>,
    mut signal: Signal,
    http: &Builders,
    limits: Limits,
) {
    let peer = caller.remote;
    if protocol == Protocol::Link {
        if inbound.keyed() {
            let mut stopping = signal.stop.clone();
            let is_peer = tokio::select! {
                is_peer = caller.is_peer(&inbound) => is_peer,
                _ = stopping.raised() => return,
                _ = signal.kill.raised() => return,
            };
            if !is_peer {
                debug!(%peer, "link refused: not over mutual TLS from a published peer");
                inbound.router.metrics().peers.refused_link();
                return;
            }
        }
        let serve = link::serve(
            stream,
            head,
            inbound.body_limit,
            inbound.budget.clone(),
            move |request| link_request(inbound.clone(), request),
            limits.idle,
            signal.stop.clone(),
        );
        tokio::select! {
            _ = serve => {}
            _ = signal.kill.raised() => debug!(%peer, "node killed; link dropped"),
        }
        return;
    }
    let activity = Activity::new(inbound, caller);
    let (counted, driving) = (activity.clone(), activity.clone());
    let service = service_fn(move |request| {
        let started = Activity::start(&counted);
        handle(started, request)
    });
    let io = TokioIo::new(Rewind::new(head, stream));
    // The connection runs in a task of its own, with one flag to look at on each
    // wake-up; this one watches it, and ends it when idle, stopping or killed.
    let mut serving = if protocol == Protocol::Http2 {
        let connection = http.1.serve_connection(io, service);
        spawn_driven(driving, connection, |c| c.graceful_shutdown(), peer)
    } else {
        let connection = http.0.serve_connection(io, service);
        spawn_driven(driving, connection, |c| c.graceful_shutdown(), peer)
    };
    tokio::select! {
        _ = &mut serving => {}
        _ = watch_connection(&activity, limits.idle, signal) => {
            serving.abort();
            debug!(%peer, "connection dropped");
        }
    }
}

/// Runs an HTTP connection in a task of its own, driven by [`Activity::drive`].
fn spawn_driven<C>(
    activity: Arc<Activity>,
    connection: C,
    shutdown: impl Fn(Pin<&mut C>) + Send + Sync + 'static,
    peer: SocketAddr,
) -> tokio::task::JoinHandle<()>
where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = activity.drive(connection, shutdown).await {
            debug!(%peer, error = %e, "connection ended with an error");
        }
    })
}
