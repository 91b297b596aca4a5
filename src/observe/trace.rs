//! A request's trace context, as W3C Trace Context (<https://www.w3.org/TR/trace-context/>)
//! writes it: a 128-bit trace id, the 64-bit id of the span that sent the request, and flags
//! (`traceparent: 00-<32 hex>-<16 hex>-<2 hex>`), with the vendors' `tracestate` alongside.
//!
//! meshage's own `X-Meshage-Trace` (1 to 16 hex digits) is the low 64 bits of a trace id whose
//! high 64 bits are zero: its 16 digits are the last 16 of the 32 that logs show.
//! Nothing here allocates but a `tracestate`, kept as the header value it came in.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use http::HeaderValue;

/// The longest `tracestate` carried: the 512 characters W3C asks platforms to propagate at
/// least. A longer one is dropped, as is one that is not well formed.
pub(crate) const MAX_TRACESTATE: usize = 512;
/// The most list members a `tracestate` may have (W3C).
const MAX_MEMBERS: usize = 32;
/// The `sampled` flag: the caller may have recorded the trace.
pub(crate) const SAMPLED: u8 = 0x01;

/// 64 random bits: splitmix64 over a per-thread random start. Unique per thread,
/// unpredictable enough to tell requests apart across nodes, and no lock or system call.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish());
    }
    let mut z = STATE.with(|s| {
        let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Lowercase hex of `value`'s low `N * 4` bits into `out`, without allocating.
fn write_hex<const N: usize>(value: u128, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out[..N].iter_mut().enumerate() {
        *byte = DIGITS[((value >> (4 * (N - 1 - i))) & 0xf) as usize];
    }
}

/// `text` as a number if it is exactly lowercase hex digits (W3C's `HEXDIGLC`), at most 32.
fn lower_hex(text: &[u8]) -> Option<u128> {
    if text.is_empty() || text.len() > 32 {
        return None;
    }
    text.iter().try_fold(0u128, |n, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | digit as u128)
    })
}

/// A request's trace id; never 0 (0 stands for "none" in a link frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TraceId(u128);

impl TraceId {
    /// A fresh, random id.
    pub(crate) fn new() -> TraceId {
        let id = (random_u64() as u128) << 64 | random_u64() as u128;
        TraceId(id.max(1))
    }

    /// An `X-Meshage-Trace` value: 1 to 16 hex digits (either case), not all zero. It becomes
    /// the low 64 bits of the id.
    pub(crate) fn parse_meshage(text: &[u8]) -> Option<TraceId> {
        // `from_str_radix` alone would also take a leading `+`.
        if text.is_empty() || text.len() > 16 || !text.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        u64::from_str_radix(text, 16)
            .ok()
            .and_then(|id| TraceId::from_u128(id as u128))
    }

    pub(crate) fn from_u128(id: u128) -> Option<TraceId> {
        (id != 0).then_some(TraceId(id))
    }

    pub(crate) fn as_u128(self) -> u128 {
        self.0
    }

    /// The 32 hex digits, without allocating.
    pub(crate) fn hex(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        write_hex::<32>(self.0, &mut out);
        out
    }

    /// The 16 hex digits of the low 64 bits: the id as `X-Meshage-Trace` shows it.
    pub(crate) fn short_hex(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        write_hex::<16>(self.0 as u64 as u128, &mut out);
        out
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).map_err(|_| fmt::Error)?)
    }
}

/// The id of one span of a trace (here: a node's part in a request); never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SpanId(u64);

impl SpanId {
    pub(crate) fn new() -> SpanId {
        SpanId(random_u64().max(1))
    }

    pub(crate) fn from_u64(id: u64) -> Option<SpanId> {
        (id != 0).then_some(SpanId(id))
    }

    pub(crate) fn as_u64(self) -> u64 {
        self.0
    }
}

/// A `tracestate` that is well formed and at most [`MAX_TRACESTATE`] bytes long, kept as the
/// header value it arrived in (cloning it copies no bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceState(HeaderValue);

impl TraceState {
    /// `value` if it is a well-formed `tracestate`: at most 32 comma-separated `key=value`
    /// members, keys of lowercase letters, digits and `_-*/` (with one `@` for a tenant),
    /// values of printable ASCII but `,` and `=`.
    pub(crate) fn parse(value: &HeaderValue) -> Option<TraceState> {
        let bytes = value.as_bytes();
        if bytes.len() > MAX_TRACESTATE {
            return None;
        }
        let mut members = 0;
        for member in bytes.split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                // Empty members are allowed and do not count.
                continue;
            }
            members += 1;
            let at = member.iter().position(|&b| b == b'=')?;
            let (key, value) = (&member[..at], &member[at + 1..]);
            if members > MAX_MEMBERS || !valid_key(key) || !valid_value(value) {
                return None;
            }
        }
        Some(TraceState(value.clone()))
    }

    /// A `tracestate` from a link frame's bytes.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<TraceState> {
        TraceState::parse(&HeaderValue::from_bytes(bytes).ok()?)
    }

    pub(crate) fn value(&self) -> &HeaderValue {
        &self.0
    }
}

fn valid_key(key: &[u8]) -> bool {
    let simple = |k: &[u8], first_digit: bool, max: usize| {
        !k.is_empty()
            && k.len() <= max
            && (k[0].is_ascii_lowercase() || (first_digit && k[0].is_ascii_digit()))
            && k.iter().all(|&b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'-' | b'*' | b'/')
            })
    };
    match key.iter().position(|&b| b == b'@') {
        None => simple(key, false, 256),
        Some(at) => simple(&key[..at], true, 241) && simple(&key[at + 1..], false, 14),
    }
}

fn valid_value(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

/// What a request arrived with: its trace, the span that sent it (none for an
/// `X-Meshage-Trace`), its flags and `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Incoming {
    pub(crate) trace: TraceId,
    pub(crate) parent: Option<SpanId>,
    pub(crate) flags: u8,
    pub(crate) state: Option<TraceState>,
}

impl Incoming {
    /// The context of a request's headers: a valid `traceparent` (with its `tracestate`, if
    /// that is valid), else an `X-Meshage-Trace`, else none.
    pub(crate) fn from_headers(
        traceparent: Option<&HeaderValue>,
        tracestate: Option<&HeaderValue>,
        meshage: Option<&HeaderValue>,
    ) -> Option<Incoming> {
        if let Some((trace, parent, flags)) =
            traceparent.and_then(|v| parse_traceparent(v.as_bytes()))
        {
            return Some(Incoming {
                trace,
                parent: Some(parent),
                flags,
                state: tracestate.and_then(TraceState::parse),
            });
        }
        let trace = meshage.and_then(|v| TraceId::parse_meshage(v.as_bytes()))?;
        Some(Incoming {
            trace,
            parent: None,
            flags: SAMPLED,
            state: None,
        })
    }
}

/// A `traceparent`'s trace id, parent id and flags, per W3C: version `00` is exactly
/// `00-<32 hex>-<16 hex>-<2 hex>` in lowercase, with neither id all zeros. A later version
/// (not `ff`) is read the same way, and may go on after a `-`. Only the `sampled` flag is kept:
/// the others are unknown to version 00, which says to pass them on as zero.
pub(crate) fn parse_traceparent(text: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    if text.len() < 55 || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    let version = lower_hex(&text[..2])?;
    if version == 0xff
        || (version == 0 && text.len() != 55)
        || (text.len() > 55 && text[55] != b'-')
    {
        return None;
    }
    let trace = TraceId::from_u128(lower_hex(&text[3..35])?)?;
    let parent = SpanId::from_u64(lower_hex(&text[36..52])? as u64)?;
    let flags = lower_hex(&text[53..55])? as u8;
    Some((trace, parent, flags & SAMPLED))
}

/// `traceparent` of version 00 for a request `trace` sent from span `parent`, without
/// allocating.
pub(crate) fn traceparent(trace: TraceId, parent: SpanId, flags: u8) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    write_hex::<32>(trace.0, &mut out[3..35]);
    write_hex::<16>(parent.0 as u128, &mut out[36..52]);
    write_hex::<2>((flags & SAMPLED) as u128, &mut out[53..55]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_round_trip_and_reject_junk() {
        let id = TraceId::new();
        assert_ne!(id, TraceId::new());
        assert_eq!(id.to_string().as_bytes(), id.hex());
        assert_eq!(
            TraceId::parse_meshage(b"00ff").map(TraceId::as_u128),
            Some(255)
        );
        let short = TraceId::parse_meshage(b"C0FFEE").unwrap();
        assert_eq!(&short.short_hex(), b"0000000000c0ffee");
        assert_eq!(&short.hex(), b"00000000000000000000000000c0ffee");
        for junk in [
            &b""[..],
            b"0",
            b"xyz",
            b"00000000000000000",
            b"12 4",
            b"+ff",
            b"-1",
        ] {
            assert_eq!(TraceId::parse_meshage(junk), None, "{junk:?}");
        }
        assert_eq!(TraceId::from_u128(0), None);
        assert_eq!(SpanId::from_u64(0), None);
    }

    #[test]
    fn traceparents_are_read_and_written_as_w3c_says() {
        let text = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, parent, flags) = parse_traceparent(text).unwrap();
        assert_eq!(trace.as_u128(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.as_u64(), 0x00f067aa0ba902b7);
        assert_eq!(flags, SAMPLED);
        assert_eq!(&traceparent(trace, parent, flags), text);
        // Unknown flags are dropped; a later version may carry more after a dash.
        let (_, _, flags) =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe").unwrap();
        assert_eq!(flags, 0);
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever"
        )
        .is_some());
        for junk in [
            &b""[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        ] {
            assert_eq!(
                parse_traceparent(junk),
                None,
                "{:?}",
                String::from_utf8_lossy(junk)
            );
        }
    }

    #[test]
    fn tracestates_are_bounded_and_dropped_when_malformed() {
        let ok = |s: &str| TraceState::parse(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(ok("congo=t61rcWkgMzE"));
        assert!(ok("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,,"));
        assert!(ok("tenant1@vendor=x y"));
        assert!(!ok("Congo=1"), "keys are lowercase");
        assert!(!ok("congo"), "a member is key=value");
        assert!(!ok("congo=a,b"));
        assert!(!ok("congo=a=b"));
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(!ok(&many), "at most 32 members");
        assert!(ok(&many[..many.rfind(',').unwrap()]));
        let long = format!("k={}", "v".repeat(MAX_TRACESTATE));
        assert!(!ok(&long), "longer than {MAX_TRACESTATE} bytes");
    }

    #[test]
    fn a_traceparent_wins_over_x_meshage_trace_and_a_bad_one_does_not_count() {
        let value = |s: &str| HeaderValue::from_str(s).unwrap();
        let tp = value("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        let ts = value("congo=t61rcWkgMzE");
        let mine = value("c0ffee");
        let both = Incoming::from_headers(Some(&tp), Some(&ts), Some(&mine)).unwrap();
        assert_eq!(both.trace.as_u128(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!((both.flags, both.state.is_some()), (0, true));
        let bad = value("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7");
        let fallback = Incoming::from_headers(Some(&bad), Some(&ts), Some(&mine)).unwrap();
        assert_eq!(fallback.trace.as_u128(), 0xc0ffee);
        assert_eq!((fallback.parent, fallback.state), (None, None));
        assert_eq!(Incoming::from_headers(Some(&bad), Some(&ts), None), None);
    }
}
