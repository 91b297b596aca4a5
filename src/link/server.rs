//! The receiving end of a link: reads request frames, runs them through the node's handler
//! function, and writes the answers ready together in one write. It knows nothing of routing:
//! the node gives it a function from [`LinkRequest`] to an answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::warn;

use super::duplex::Duplex;
use super::frame::{
    announced, decode_request, encode_answer, encode_goaway, encode_refusal, next_frame,
    request_limit, Answer, LinkRequest, Outbox, PREFACE, PREFACE_ACK,
};
use crate::delivery::Refusal;
use crate::message::Reply;
use crate::shutdown::Watch;
use crate::wire::{Budget, Held};

/// The body of the 500 for a request whose handler panicked.
const HANDLER_FAILED_BODY: &[u8] = br#"{"error":"the handler failed (it panicked)"}"#;
/// How long a stopping server keeps a link whose client neither closes it nor sends anything
/// (a client that does not know the go-away frame).
const STOPPING_IDLE: Duration = Duration::from_secs(2);
/// How long a request frame may take to arrive whole, from its first byte: a peer that starts
/// one and stalls loses the link, instead of holding it and its buffer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Frames up to this size arrive without taking room in the budget: the link's buffer holds
/// them anyway.
const SMALL_FRAME: usize = 64 * 1024;
/// How often a link that waits for room in the budget looks again.
const STARVED_RETRY: Duration = Duration::from_millis(10);

/// Makes `held` hold room for the whole of the partial frame at the front of `buf`, if it is
/// large; false when the budget has none.
fn hold_partial(held: &mut Held<'_>, buf: &BytesMut) -> bool {
    let Some(len) = announced(buf) else {
        return true;
    };
    let need = len + 4;
    if need <= SMALL_FRAME || held.bytes() >= need {
        return true;
    }
    held.take(need - held.bytes())
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
///
/// A link that reads nothing and runs nothing for `idle` is closed the same way, except that
/// requests still arriving are run: the go-away tells the client to send no new request on
/// it (it opens another link when it needs one), and the link closes once the client has
/// closed its half and its requests are answered, or after [`STOPPING_IDLE`] more of quiet.
/// A client that sends less than the preface within `idle` loses the connection.
///
/// `head` holds what was already read from the connection (the preface, when the node's port
/// read it to tell the link from HTTP); the preface is read from it, then from the stream. A
/// request frame larger than `body_limit` allows ends the link. A large frame takes room in
/// `budget` while it arrives; when there is none, the link is not read until there is (and ends
/// if the frame is not whole within [`FRAME_TIMEOUT`]).
pub(crate) async fn serve<S, H, F>(
    mut stream: S,
    head: Bytes,
    body_limit: usize,
    budget: Arc<Budget>,
    handle: H,
    idle: Duration,
    mut stop: Watch,
) where
    S: Duplex,
    H: Fn(LinkRequest) -> F,
    F: std::future::Future<Output = Answer> + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    buf.extend_from_slice(&head);
    while buf.len() < PREFACE.len() {
        match tokio::time::timeout(idle, stream.read_buf(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
    if buf[..PREFACE.len()] != PREFACE[..] {
        return;
    }
    buf.advance(PREFACE.len());
    if stream.write_all(PREFACE_ACK).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let frame_limit = request_limit(body_limit);
    let (mut reader, mut writer) = stream.halves();
    type Running =
        std::pin::Pin<Box<dyn std::future::Future<Output = (u64, (Answer, Duration))> + Send>>;
    let mut busy = BusyAverage::default();
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    let mut stopping = stop.is_raised();
    // One wait for the whole link, not one per request.
    let stop_signal = stop.raised();
    tokio::pin!(stop_signal);
    let mut open = true;
    let mut idle_since = Instant::now();
    // When the partial frame at the end of `buf` began to arrive.
    let mut partial_since: Option<Instant> = None;
    // The room the partial frame at the end of `buf` holds in the budget; `starved` while it
    // needs more than the budget has, and the link is not read.
    let mut held = Held::new(&budget);
    let mut starved = false;
    let mut out = Outbox::with_capacity(64 * 1024);
    // Idle since the go-away was sent: requests still run, none is refused.
    let mut closing = false;
    // One timer for the link's idleness, moved on only when it fires (not on each request).
    let idle_check = tokio::time::sleep(idle);
    tokio::pin!(idle_check);
    if stopping {
        encode_goaway(&mut out);
        if out.write_to(&mut writer).await.is_err() {
            return;
        }
        out.clear();
    }
    while open || !running.is_empty() {
        tokio::select! {
            Some((id, (answer, took))) = running.next(), if !running.is_empty() => {
                busy.add(took);
                encode_answer(&mut out, id, &answer);
                // Collect every other answer that is ready now, then write them together.
                while let Some(Some((id, (answer, took)))) = running.next().now_or_never() {
                    busy.add(took);
                    encode_answer(&mut out, id, &answer);
                }
                if out.write_to(&mut writer).await.is_err() {
                    return;
                }
                out.clear();
                idle_since = Instant::now();
            }
            read = reader.read_buf(&mut buf), if open && !starved => {
                match read {
                    Ok(0) | Err(_) => open = false,
                    Ok(_) => idle_since = Instant::now(),
                }
                loop {
                    match next_frame(&mut buf, frame_limit) {
                        Ok(Some(frame)) => {
                            partial_since = None;
                            held.release();
                            let Some(request) = decode_request(frame) else {
                                open = false;
                                break;
                            };
                            let id = request.id;
                            if stopping {
                                encode_refusal(&mut out, id, Refusal::Leaving);
                            } else {
                                let answer = timed(handle(request));
                                if busy.above(INLINE_BUSY) {
                                    let task = AbortOnDrop(tokio::spawn(answer));
                                    running.push(Box::pin(async move {
                                        let mut task = task;
                                        let answer = (&mut task.0).await.unwrap_or_else(|_| {
                                            let body = Bytes::from_static(HANDLER_FAILED_BODY);
                                            (Ok(Reply::new(StatusCode::INTERNAL_SERVER_ERROR, body)), Duration::ZERO)
                                        });
                                        (id, answer)
                                    }));
                                    continue;
                                }
                                // Most handlers answer on their first poll: such an answer goes
                                // out with this read's others, and how long it took counts at
                                // once, before the next request of the read is started.
                                let mut answer: Running = Box::pin(async move { (id, answer.await) });
                                match answer.as_mut().now_or_never() {
                                    Some((id, (answer, took))) => {
                                        busy.add(took);
                                        encode_answer(&mut out, id, &answer);
                                    }
                                    None => running.push(answer),
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(len) => {
                            warn!(len, limit = frame_limit, "link request frame above the body limit; closing the link");
                            open = false;
                            break;
                        }
                    }
                }
                if !buf.is_empty() && partial_since.is_none() {
                    partial_since = Some(Instant::now());
                }
                starved = open && !hold_partial(&mut held, &buf);
                if !out.is_empty() {
                    if out.write_to(&mut writer).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            }
            _ = &mut stop_signal, if !stopping => {
                stopping = true;
                if !closing {
                    encode_goaway(&mut out);
                    if out.write_to(&mut writer).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                idle_since = Instant::now();
            }
            _ = &mut idle_check, if open && !stopping && !closing => {
                let now = Instant::now();
                let quiet = running.is_empty() && partial_since.is_none();
                if quiet && now.duration_since(idle_since) >= idle {
                    closing = true;
                    encode_goaway(&mut out);
                    if out.write_to(&mut writer).await.is_err() {
                        return;
                    }
                    out.clear();
                    idle_since = now;
                } else {
                    let next = if quiet { idle_since + idle } else { now + idle };
                    idle_check.as_mut().reset(next.into());
                }
            }
            _ = async move {
                if let Some(since) = partial_since {
                    tokio::time::sleep_until((since + FRAME_TIMEOUT).into()).await;
                }
            }, if open && partial_since.is_some() => {
                warn!(timeout = ?FRAME_TIMEOUT, "a link request frame stalled; closing the link");
                open = false;
            }
            _ = async { tokio::time::sleep(STARVED_RETRY).await }, if open && starved => {
                starved = !hold_partial(&mut held, &buf);
            }
            // An async block, so that no timer is made (nor the clock read) until stopping or
            // closing.
            _ = async { tokio::time::sleep(Duration::from_millis(100)).await }, if (stopping || closing) && running.is_empty() => {
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
    fn a_large_partial_frame_holds_room_in_the_budget_and_a_small_one_none() {
        let budget = Budget::new(1 << 20);
        let frame = |len: u32| {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            buf.extend_from_slice(b"part of it");
            buf
        };
        let mut small = Held::new(&budget);
        assert!(hold_partial(&mut small, &frame(1000)));
        assert_eq!(small.bytes(), 0, "a small frame takes no room");
        let mut large = Held::new(&budget);
        assert!(hold_partial(&mut large, &frame(700 << 10)));
        assert_eq!(large.bytes(), (700 << 10) + 4);
        assert!(hold_partial(&mut large, &frame(700 << 10)), "held already");
        let mut second = Held::new(&budget);
        assert!(
            !hold_partial(&mut second, &frame(700 << 10)),
            "no room left"
        );
        large.release();
        assert!(hold_partial(&mut second, &frame(700 << 10)));
        assert!(hold_partial(
            &mut Held::new(&budget),
            &BytesMut::from(&b"ab"[..])
        ));
    }
}
