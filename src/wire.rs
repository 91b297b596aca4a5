//! What the HTTP server, the forwarder and the upstream client share about HTTP between nodes:
//! header names, the timeout and idempotency a request asks for, its deadline, the streams
//! the API keeps for itself, bounded body reading, and socket options.
//!
//! Depends on nothing of the crate above the pure core.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpStream;

/// Header naming the service a request is for.
pub const SERVICE_ID_HEADER: &str = "x-service-id";
/// Header marking a request that was already forwarded once.
pub const HOP_HEADER: &str = "x-meshage-hop";
/// `X-Meshage-Previous-Owner`: to an HTTP handler, the service that owned the message's key
/// before (see [`crate::Header::previous_owner`]).
pub(crate) const PREVIOUS_OWNER_HEADER: &str = "x-meshage-previous-owner";
/// `X-Meshage-Ring`: on a forward to a key's owner, the checksum of the sender's ring of the
/// stream (decimal), for an owner with `--strict-ownership`.
pub(crate) const RING_HEADER: &str = "x-meshage-ring";
/// Header bounding a whole request, retries and forwarding included: milliseconds, a whole
/// number from 1 up. A node never waits longer than its own request timeout, whatever it says.
pub const TIMEOUT_HEADER: &str = "x-request-timeout";
/// Header marking a request as safe to run twice (`true` or `1`): a forward that failed after
/// the request may have reached its owner is then resent to the next owner.
pub const IDEMPOTENT_HEADER: &str = "x-idempotent";
/// A request that carries an idempotency key is idempotent too: the caller deduplicates.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header carrying a request's trace id, to the owner on a forward and back to the client.
pub const TRACE_HEADER: &str = "x-meshage-trace";
/// W3C Trace Context: the trace, the span that sent the request, and its flags; on requests
/// in, forwards, calls to HTTP handlers and answers.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// W3C Trace Context: the vendors' state that travels with `traceparent`.
pub const TRACESTATE_HEADER: &str = "tracestate";

/// Stream names the HTTP API keeps for itself: `/api/{name}/...` is not a send to them.
pub(crate) const RESERVED_STREAMS: [&str; 3] = ["broadcast", "locate", "members"];

/// Header on a node's own 421, naming why it refused a forward without running it
/// ([`crate::delivery::Refusal`]). A 421 without it is a handler's answer.
pub(crate) const REFUSED_HEADER: &str = "x-meshage-refused";

/// The timeout a request asks for with `value`, the value of its [`TIMEOUT_HEADER`]; `None`
/// when it asks for none. Fails, with a message for the caller, on a value that is not a whole
/// number of milliseconds from 1 up.
pub(crate) fn parse_timeout(value: Option<&HeaderValue>) -> Result<Option<Duration>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(format!(
            "{TIMEOUT_HEADER} must be a whole number of milliseconds from 1 up, not {value:?}"
        )),
    }
}

/// Whether a value of [`IDEMPOTENT_HEADER`] says yes (`true` or `1`). A request is idempotent
/// when it says so, or when it carries an [`IDEMPOTENCY_KEY_HEADER`] (the caller deduplicates).
pub(crate) fn is_idempotent_value(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    v.eq_ignore_ascii_case(b"true") || v == b"1"
}

/// When a request must be answered by: what it asked for, never later than the node allows.
/// Made once where the request enters the node; everything after reads what is left of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Deadline(Instant);

impl Deadline {
    /// The deadline of a request that asks for `asked` (or nothing), capped at `limit` from now.
    pub(crate) fn within(asked: Option<Duration>, limit: Duration) -> Deadline {
        Deadline(Instant::now() + asked.map_or(limit, |t| t.min(limit)))
    }

    #[cfg(test)]
    pub(crate) fn at(instant: Instant) -> Deadline {
        Deadline(instant)
    }

    pub(crate) fn instant(self) -> Instant {
        self.0
    }

    /// What is left of it; zero once it has passed.
    pub(crate) fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub(crate) fn has_passed(self) -> bool {
        Instant::now() >= self.0
    }
}

/// A bound on the memory a node holds for what strangers send and it has not finished reading
/// (request bodies, link frames), shared by every connection: each takes from it as bytes
/// arrive and gives back once the whole request is read.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Takes `n` bytes, unless that would pass the bound.
    fn take(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(n).filter(|&next| next <= self.max) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }
}

/// Bytes held from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Held<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl<'a> Held<'a> {
    pub(crate) fn new(budget: &'a Budget) -> Held<'a> {
        Held { budget, bytes: 0 }
    }

    /// Takes `n` more bytes from the budget, unless that would pass its bound.
    pub(crate) fn take(&mut self, n: usize) -> bool {
        let taken = self.budget.take(n);
        if taken {
            self.bytes += n;
        }
        taken
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back everything held.
    pub(crate) fn release(&mut self) {
        self.budget
            .used
            .fetch_sub(std::mem::take(&mut self.bytes), Ordering::AcqRel);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("length limit exceeded")]
    TooLarge,
    /// The node's budget for bodies still arriving is spent.
    #[error("the node holds as much of bodies still arriving as it may")]
    Budget,
    #[error("{0}")]
    Read(hyper::Error),
}

/// Reads a whole body (of a request, or of an answer from a peer or a handler) of at most
/// `limit` bytes; past the limit, the rest is left unread. `reserve` is asked for room for each
/// piece before it is kept (see [`Held::take`]); a refusal ends the read. A body that comes in
/// one piece (most do) is handed on as it came, without a copy or a buffer list.
pub(crate) async fn read_body(
    body: &mut Incoming,
    limit: usize,
    mut reserve: impl FnMut(usize) -> bool,
) -> Result<Bytes, BodyError> {
    let mut first = Bytes::new();
    // The pieces joined, once a second one comes.
    let mut joined = bytes::BytesMut::new();
    while !hyper::body::Body::is_end_stream(&body) {
        let Some(frame) = body.frame().await else {
            break;
        };
        // Trailers carry nothing a message uses.
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue;
        };
        let len = first.len() + joined.len() + data.len();
        if len > limit {
            return Err(BodyError::TooLarge);
        }
        if !reserve(data.len()) {
            return Err(BodyError::Budget);
        }
        if first.is_empty() && joined.is_empty() {
            first = data;
            continue;
        }
        if joined.is_empty() {
            joined.reserve(len);
            joined.extend_from_slice(&std::mem::take(&mut first));
        }
        joined.extend_from_slice(&data);
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.freeze()
    })
}

/// An error and its sources on one line: hyper's top-level messages alone say little.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_whole_milliseconds_from_one_up() {
        let value = |v: &'static str| HeaderValue::from_static(v);
        assert_eq!(parse_timeout(None), Ok(None));
        assert_eq!(
            parse_timeout(Some(&value(" 250 "))),
            Ok(Some(Duration::from_millis(250)))
        );
        for bad in ["0", "-1", "1.5", "soon", ""] {
            assert!(parse_timeout(Some(&value(bad))).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_deadline_never_passes_the_nodes_limit() {
        let limit = Duration::from_secs(1);
        let asked = Deadline::within(Some(Duration::from_secs(60)), limit);
        assert!(asked.remaining() <= limit);
        let shorter = Deadline::within(Some(Duration::from_millis(10)), limit);
        assert!(shorter < asked);
        assert!(!asked.has_passed());
        assert!(Deadline::at(Instant::now()).has_passed());
        assert_eq!(Deadline::at(Instant::now()).remaining(), Duration::ZERO);
    }

    #[test]
    fn a_budget_gives_no_more_than_its_bound_and_takes_back_what_is_dropped() {
        let budget = Budget::new(100);
        let mut first = Held::new(&budget);
        assert!(first.take(60));
        let mut second = Held::new(&budget);
        assert!(!second.take(41), "past the bound");
        assert!(second.take(40));
        assert!(!first.take(1));
        drop(first);
        assert!(second.take(60));
        second.release();
        assert!(Held::new(&budget).take(100));
    }

    #[test]
    fn idempotent_values() {
        for yes in ["true", "TRUE", "1"] {
            assert!(is_idempotent_value(&HeaderValue::from_static(yes)));
        }
        for no in ["false", "0", "yes", ""] {
            assert!(!is_idempotent_value(&HeaderValue::from_static(no)));
        }
    }
}
