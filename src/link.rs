//! The peer link: a multiplexed binary protocol for forwards between meshage nodes.
//!
//! A forward over HTTP/1.1 costs a full HTTP exchange on both nodes and a connection per
//! request in flight. The link sends many forwards over one TCP connection per peer and writes
//! whatever is queued in one system call, so under load a forward costs little more than the
//! request that carried it in. It shares the node's HTTP port: a connection that starts with
//! [`PREFACE`] is a link, anything else is HTTP. The server acknowledges the preface, so a peer
//! that does not speak the link (an original node) is noticed before any request is sent, and
//! the sender falls back to HTTP for it. The preface carries the protocol's version
//! (`MESHLNK6`): a node of another version answers it as HTTP does, so nodes of different
//! versions forward to each other over HTTP.
//!
//! Frames are length-prefixed: `u32 len` then `len` bytes.
//! Request: `u8 1, u64 id, u128 trace, u64 parent, u8 flags, u32 timeout_ms, u64 ring,
//! u16 stream_len, u32 key_len, u16 service_len, u16 content_type_len, u16 tracestate_len,
//! u16 previous_owner_len`, the six strings,
//! the extras block, then the body. `trace`, `parent`, `flags` and the tracestate are the
//! request's W3C trace context (`trace` 0 for none, and then the rest zero and empty; `parent`
//! 0 when the trace came as an `X-Meshage-Trace`), so that both nodes log the request under one
//! id and the owner's span is a child of the sender's. The tracestate is at most 512 bytes.
//! The extras block carries the message's name and the client's headers (see `frame::Extras`):
//! `u32 len`, then `u16 name_len`, the name (empty: none), `u16 count`, and `count` times
//! `u16 name_len, name, u16 value_len, value`; at most 64 KiB, and a decoder refuses more. A
//! request that does not fit a frame whole (its headers, or a string past its length field)
//! goes over HTTP instead; an answer's headers past the bound are left out.
//! Version 4 widened the trace field (from a u64); version 5 added the extras block (a
//! development build of version 4 had only the wider trace field); version 6 added `ring`, the
//! checksum of the sender's ring of the stream on a forward to a key's owner (0 on one sent to a
//! service by id), which an owner with `--strict-ownership` checks, and the previous owner of
//! the key as the sender's tables say (empty: none; see `Header::previous_owner`). Nodes of
//! different versions
//! do not take each other's preface and forward to each other over HTTP, where
//! `X-Meshage-Trace` still carries the low 64 bits of the trace id.
//! Response: `u8 2, u64 id, u16 status`, an extras block (no name; the handler's headers), then
//! the body: what the request's handler (or the routing on the owner) answered, whatever its
//! status.
//! Refused: `u8 4, u64 id, u8 why` (1: the node is leaving, 2: it does not run the service,
//! 3: its table gives the key to another service and it checks):
//! the node did not run the request, so the sender may send it elsewhere. Only the node writes
//! this frame; no status a handler returns means it.
//! Go-away: `u8 3`, from a server that is stopping, or that closes the link as idle (nothing
//! read and nothing running for the node's idle timeout). A stopping server refuses every
//! request it reads from then on without running it; an idle one runs them. Either closes the
//! link once the client has closed its half; the client sends nothing new on the link and
//! closes its half at once. So no request is ever lost between the two: each one the client
//! wrote gets an answer, and each one it did not write it knows was never sent, and sends once
//! more on a new link.
//!
//! The client tells its callers what became of a request that got no answer: never written
//! (the link ended while it was queued, so it may go elsewhere) or written and then lost (the
//! peer may have run it).
//!
//! Between keyed nodes a link runs inside mutual TLS (see [`crate::security`]): the client dials
//! with the certificate pinned to the fingerprint the peer published, and the preface follows
//! the handshake.
//!
//! Layout: `frame` (the codec and the outbox), `client` (the sending end: a link per peer),
//! `conn` (one open link: its queue, writer, reader and expiry sweep), `server` (the receiving
//! end), `duplex` (a plain or TLS connection split between a link's reader and writer). The link knows nothing of routing: the node hands the server a function
//! from request to answer, and the forwarder reads what the client says in
//! [`crate::delivery`] terms. Depends on `wire`, `shutdown`, `delivery`, `message`, `security`
//! for TLS, and `observe` for the trace id.

mod client;
mod conn;
mod duplex;
mod frame;
mod server;

pub(crate) use client::{LinkError, Links};
pub(crate) use duplex::Duplex;
#[cfg(feature = "fuzzing")]
pub(crate) use frame::{
    decode_request, decode_response, decode_server_frame, encode_request, encode_response,
    next_frame, request_limit, Outbox, ServerFrame, MAX_EXTRAS, PREFACE_ACK,
};
pub(crate) use frame::{Answer, LinkRequest, PREFACE};
pub(crate) use server::serve;
