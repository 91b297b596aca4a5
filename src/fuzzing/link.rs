//! The link's frames and the whole link server, fed arbitrary bytes (see [`super`]).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::text;
use crate::delivery::Refusal;
use crate::link::{
    decode_request, decode_response, decode_server_frame, encode_request, encode_response,
    next_frame, request_limit, serve, Answer, LinkRequest, Outbox, ServerFrame, MAX_EXTRAS,
    PREFACE, PREFACE_ACK,
};
use crate::message::Reply;
use crate::observe::{Incoming, SpanId, TraceId, TraceState};
use crate::shutdown::Flag;
use crate::wire::Budget;

/// No frame is too long for the decoder here: a `u32` length is the protocol's own bound.
const ANY: usize = u32::MAX as usize;
/// The body limit of the fuzzed link server.
const BODY_LIMIT: usize = 64 << 20;

/// The link's frame decoder on a stream of bytes from a peer: `data` split into frames as a
/// link's reader splits what it reads, each frame read as a request and as a response.
/// Asserts that every frame that decodes encodes back to the same bytes, and that a request
/// and a response built from `data` decode back to themselves.
pub fn link_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match next_frame(&mut buf, ANY) {
            Ok(Some(frame)) => {
                assert_eq!(
                    buf.len(),
                    before - 4 - frame.len(),
                    "a frame takes its bytes"
                );
                if let Some(request) = decode_request(frame.clone()) {
                    assert_eq!(encoded_request(&request), whole(&frame), "{request:?}");
                }
                if let Some((id, reply)) = decode_response(frame.clone()) {
                    let mut out = Outbox::default();
                    encode_response(&mut out, id, &reply);
                    assert_eq!(written(&out), whole(&frame), "response {id}");
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "a partial frame stays where it is");
                break;
            }
            Err(_) => unreachable!("no frame is longer than a u32 says"),
        }
    }
    frames_round_trip(data);
}

/// How many of the request frames in `data` (frames back to back, as a peer sends them) this
/// version's decoder reads, and how many it finds malformed: the seeds' check that they are
/// written in the current layout (a frame kind's first byte is 1 for a request).
pub fn link_requests(data: &[u8]) -> (usize, usize) {
    let mut buf = BytesMut::from(data);
    let (mut read, mut malformed) = (0, 0);
    while let Ok(Some(frame)) = next_frame(&mut buf, ANY) {
        if frame.first() != Some(&1) {
            continue;
        }
        match decode_request(frame) {
            Some(_) => read += 1,
            None => malformed += 1,
        }
    }
    (read, malformed)
}

/// A frame with its length prefix, as it went on the wire.
fn whole(frame: &Bytes) -> Vec<u8> {
    let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(frame);
    bytes
}

/// What an outbox sends.
fn written(out: &Outbox) -> Vec<u8> {
    let mut bytes = Vec::new();
    out.write_to(&mut bytes)
        .now_or_never()
        .expect("writing to memory never waits")
        .expect("writing to memory never fails");
    bytes
}

fn encoded_request(request: &LinkRequest) -> Vec<u8> {
    let mut out = Outbox::default();
    encode_request(
        &mut out,
        request.id,
        request.trace.as_ref(),
        request.timeout,
        (
            request.ring,
            request.previous_owner.as_deref().unwrap_or(""),
        ),
        &request.stream,
        &request.key,
        &request.service_id,
        request.payload.content_type.as_deref().unwrap_or(""),
        (request.extras.name.as_deref(), &request.extras.headers),
        &request.payload.body,
    )
    .expect("a request that was decoded fits in a frame");
    written(&out)
}

/// A request and a response made of `data` (numbers from its first 20 bytes; stream, key,
/// service id, content type and body from the rest, split at `0xFF`, a byte UTF-8 never has;
/// for an odd id the body is repeated past 16 KiB, which an outbox sends by reference) go
/// through the encoder and the decoder and come back the same.
fn frames_round_trip(data: &[u8]) {
    let mut head = [0u8; 20];
    let (numbers, rest) = data.split_at(data.len().min(20));
    head[..numbers.len()].copy_from_slice(numbers);
    let id = u64::from_be_bytes(head[0..8].try_into().expect("8 bytes"));
    let trace = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
    // A trace context from the same bits: none for 0; a parent span unless the bits are odd.
    let context = TraceId::from_u128(u128::from(trace) << 64 | u128::from(trace.rotate_left(7)))
        .map(|id| Incoming {
            trace: id,
            parent: SpanId::from_u64(trace & !1),
            flags: (trace & 1) as u8,
            state: TraceState::from_bytes(b"k=v"),
        });
    let timeout =
        Duration::from_millis(u32::from_be_bytes(head[16..20].try_into().expect("4 bytes")).into());
    let mut parts = rest.splitn(5, |&b| b == 0xFF);
    let mut part = || parts.next().unwrap_or_default();
    let (stream, key, service_id, content_type) =
        (text(part()), text(part()), text(part()), text(part()));
    let body = part();
    let body = if id % 2 == 1 && !body.is_empty() {
        Bytes::from(body.repeat(16 * 1024 / body.len() + 1))
    } else {
        Bytes::copy_from_slice(body)
    };
    // Headers made of the numbers: the extras block round trips as well.
    let mut headers = http::HeaderMap::new();
    headers.insert("x-trace", http::HeaderValue::from(trace));
    headers.append("x-id", http::HeaderValue::from(id));
    headers.append("x-id", http::HeaderValue::from(id / 2));
    let mut out = Outbox::default();
    let encoded = encode_request(
        &mut out,
        id,
        context.as_ref(),
        timeout,
        (id, &key),
        &stream,
        &key,
        &service_id,
        &content_type,
        (Some(&key).filter(|k| !k.is_empty()).map(|k| &**k), &headers),
        &body,
    );
    if encoded.is_err() {
        let longest = stream.len().max(service_id.len()).max(content_type.len());
        let extras = 2
            + key.len()
            + 2
            + headers
                .iter()
                .map(|(n, v)| 4 + n.as_str().len() + v.len())
                .sum::<usize>();
        assert!(
            longest > usize::from(u16::MAX) || extras > MAX_EXTRAS,
            "only a u16 length or a name and headers past the extras' bound can be too long"
        );
        return;
    }
    let status = StatusCode::from_u16(100 + (trace % 900) as u16).expect("100 to 999");
    encode_response(
        &mut out,
        id,
        &Reply {
            status,
            body: body.clone(),
            headers: headers.clone(),
        },
    );
    let mut buf = BytesMut::from(&written(&out)[..]);
    let frame = next_frame(&mut buf, ANY)
        .expect("a frame of fitting size")
        .expect("a whole frame");
    let request = decode_request(frame).expect("an encoded request decodes");
    assert_eq!(
        (request.id, request.trace, request.timeout, request.ring),
        (id, context, timeout, id)
    );
    assert_eq!(
        request.previous_owner.as_deref(),
        Some(&*key).filter(|k| !k.is_empty())
    );
    assert_eq!(
        (&*request.stream, &*request.key, &*request.service_id),
        (&*stream, &*key, &*service_id)
    );
    assert_eq!(
        request.payload.content_type.as_deref(),
        (!content_type.is_empty()).then_some(&*content_type)
    );
    assert_eq!(request.payload.body, body);
    assert_eq!(
        request.extras.name.as_deref(),
        Some(&*key).filter(|k| !k.is_empty())
    );
    assert_eq!(request.extras.headers, headers);
    let frame = next_frame(&mut buf, ANY)
        .expect("a frame of fitting size")
        .expect("a whole frame");
    let (answered, reply) = decode_response(frame).expect("an encoded response decodes");
    assert_eq!((answered, reply.status, reply.body), (id, status, body));
    assert_eq!(reply.headers, headers);
    assert!(buf.is_empty(), "two frames and nothing else");
}

// ---- The whole link server ----

/// A runtime and a loopback listener, made once for all runs.
struct LinkHarness {
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
}

static LINK_HARNESS: OnceLock<LinkHarness> = OnceLock::new();

/// The longest a link may take to answer and close once its peer has sent everything.
const LINK_DEADLINE: Duration = Duration::from_secs(10);

/// The whole link server reading what a peer sends: a loopback connection to the server the
/// node runs (`link::serve`), whose handler answers each request 200 with its body
/// (after yielding once for the stream `yield`, after keeping the thread busy for 500 µs for
/// `busy`, which moves the link's requests into tasks of their own). The low bit of the first
/// byte of `data` says whether the node is stopping; the rest is what the peer sends after the
/// preface, and then it closes its half.
///
/// Asserts that the server acknowledges the preface, ends within 10 s without panicking, sends
/// the go-away first when stopping, and answers each request that came before the first
/// malformed or oversized frame exactly once, with its body (or the node's refusal when stopping), and
/// nothing else. When the connection was reset (the server closed it with bytes unread, which
/// TCP turns into a reset that may lose answers in flight) it asserts only that every answer
/// it got was owed.
pub fn link_server(data: &[u8]) {
    let harness = LINK_HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback listener");
        LinkHarness { runtime, listener }
    });
    let (stopping, sent) = match data.split_first() {
        Some((control, rest)) => (control & 1 == 1, rest),
        None => (false, data),
    };
    let (got, clean) = harness.runtime.block_on(harness.exchange(sent, stopping));

    let mut owed: BTreeMap<(u64, u16, Bytes), usize> = BTreeMap::new();
    let mut buf = BytesMut::from(sent);
    while let Ok(Some(frame)) = next_frame(&mut buf, request_limit(BODY_LIMIT)) {
        let Some(request) = decode_request(frame) else {
            break;
        };
        // A refusal is owed as status 0 with no body.
        let answer = if stopping {
            (0, Bytes::new())
        } else {
            (200, request.payload.body)
        };
        *owed.entry((request.id, answer.0, answer.1)).or_default() += 1;
    }

    if !clean && got.len() < PREFACE_ACK.len() {
        return;
    }
    assert_eq!(
        &got[..PREFACE_ACK.len()],
        PREFACE_ACK,
        "the preface is acknowledged"
    );
    let mut buf = BytesMut::from(&got[PREFACE_ACK.len()..]);
    if stopping {
        match next_frame(&mut buf, ANY) {
            Ok(Some(frame)) => assert_eq!(
                decode_server_frame(frame),
                Some(ServerFrame::GoAway),
                "go-away comes first"
            ),
            _ if !clean => return,
            other => panic!("a stopping server sends go-away first, not {other:?}"),
        }
    }
    while let Some(frame) = next_frame(&mut buf, ANY).expect("the server's frames fit") {
        let key = match decode_server_frame(frame) {
            Some(ServerFrame::Answer(id, Ok(reply))) => (id, reply.status.as_u16(), reply.body),
            Some(ServerFrame::Answer(id, Err(Refusal::Leaving))) => (id, 0, Bytes::new()),
            other => panic!("the server sends only answers and refusals: {other:?}"),
        };
        let left = owed.get_mut(&key);
        assert!(
            left.as_ref().is_some_and(|n| **n > 0),
            "an answer that was not owed, or twice: {key:?}"
        );
        *left.expect("checked") -= 1;
    }
    if clean {
        assert!(buf.is_empty(), "no partial frame at the end");
        owed.retain(|_, n| *n > 0);
        assert!(owed.is_empty(), "requests left unanswered: {owed:?}");
    }
}

impl LinkHarness {
    /// Sends the preface and `sent` on a new link, closes the sending half, and reads what
    /// the server sends until it closes. Also says whether nothing failed on the way.
    async fn exchange(&self, sent: &[u8], stopping: bool) -> (Vec<u8>, bool) {
        let stop = Flag::default();
        if stopping {
            stop.raise();
        }
        let address = self.listener.local_addr().expect("the listener's address");
        let (peer, accepted) = tokio::join!(TcpStream::connect(address), self.listener.accept());
        let (peer, (accepted, _)) = (peer.expect("connected"), accepted.expect("accepted"));
        let budget = Arc::new(Budget::new(usize::MAX));
        let server = tokio::spawn(serve(
            accepted,
            Bytes::new(),
            BODY_LIMIT,
            budget,
            answer,
            Duration::from_secs(60),
            stop.watch(),
        ));
        let (mut reader, mut writer) = peer.into_split();
        let send = async {
            writer.write_all(PREFACE).await?;
            writer.write_all(sent).await?;
            writer.shutdown().await
        };
        let receive = async {
            let mut got = Vec::new();
            let read = reader.read_to_end(&mut got).await;
            (got, read.is_ok())
        };
        let (sent, (got, received)) =
            tokio::time::timeout(LINK_DEADLINE, async { tokio::join!(send, receive) })
                .await
                .expect("the link server answered and closed the link within 10 s");
        tokio::time::timeout(LINK_DEADLINE, server)
            .await
            .expect("the link server ended")
            .expect("the link server did not panic");
        // The flag lives until here: a dropped flag reads as raised.
        drop(stop);
        (got, sent.is_ok() && received)
    }
}

/// The fuzzed link server's handler: each request's body back, sometimes after a wait or
/// some work (see [`link_server`]).
async fn answer(request: LinkRequest) -> Answer {
    match &*request.stream {
        "yield" => tokio::task::yield_now().await,
        "busy" => {
            let started = Instant::now();
            while started.elapsed() < Duration::from_micros(500) {
                std::hint::spin_loop();
            }
        }
        _ => {}
    }
    Ok(Reply::new(StatusCode::OK, request.payload.body))
}
