//! A request's trace id: 64 bits, written as 16 hex digits.

use std::cell::Cell;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

/// A request's trace id; never 0 (0 stands for "none" in a link frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TraceId(u64);

impl TraceId {
    /// A fresh, random id.
    pub(crate) fn new() -> TraceId {
        thread_local! {
            static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish());
        }
        // splitmix64 over a per-thread random start: unique per thread, unpredictable enough
        // to tell requests apart across nodes, and no lock or system call.
        let mut z = STATE.with(|s| {
            let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(next);
            next
        });
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        TraceId((z ^ (z >> 31)).max(1))
    }

    /// The id in a header value or frame field: 1 to 16 hex digits, not all zero.
    pub(crate) fn parse(text: &[u8]) -> Option<TraceId> {
        // `from_str_radix` alone would also take a leading `+`.
        if text.is_empty() || text.len() > 16 || !text.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        u64::from_str_radix(text, 16)
            .ok()
            .filter(|&id| id != 0)
            .map(TraceId)
    }

    pub(crate) fn from_u64(id: u64) -> Option<TraceId> {
        (id != 0).then_some(TraceId(id))
    }

    pub(crate) fn as_u64(self) -> u64 {
        self.0
    }

    /// The 16 hex digits, without allocating.
    pub(crate) fn hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = DIGITS[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_round_trip_and_reject_junk() {
        let id = TraceId::new();
        assert_ne!(id, TraceId::new());
        assert_eq!(TraceId::parse(&id.hex()), Some(id));
        assert_eq!(id.to_string().as_bytes(), id.hex());
        assert_eq!(TraceId::parse(b"00ff").map(TraceId::as_u64), Some(255));
        for junk in [
            &b""[..],
            b"0",
            b"xyz",
            b"00000000000000000",
            b"12 4",
            b"+ff",
            b"-1",
        ] {
            assert_eq!(TraceId::parse(junk), None, "{junk:?}");
        }
        assert_eq!(TraceId::from_u64(0), None);
    }
}
