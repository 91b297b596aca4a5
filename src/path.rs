//! Percent-encoding of path segments, strict both ways.
//!
//! Keys may hold any characters (slashes, percent signs, spaces, any Unicode), so a forward
//! encodes every byte outside the unreserved set, and a node rejects a path whose `%` is not
//! followed by two hex digits or whose bytes are not UTF-8, instead of guessing.
//!
//! Pure core: depends on nothing of the crate.

use std::borrow::Cow;

/// Appends `segment` to `out`, percent-encoding every byte but `A-Z a-z 0-9 - . _ ~`.
pub(crate) fn encode_segment(segment: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Runs of bytes that stay as they are go in whole; such a run is ASCII, so it starts and
    // ends on character boundaries.
    let mut run = 0;
    for (i, &b) in segment.as_bytes().iter().enumerate() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            continue;
        }
        if run < i {
            out.push_str(&segment[run..i]);
        }
        out.push('%');
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
        run = i + 1;
    }
    if run < segment.len() {
        out.push_str(&segment[run..]);
    }
}

/// Why a path segment could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("malformed percent-encoding at byte {0}")]
    Malformed(usize),
    #[error("percent-encoded bytes are not UTF-8")]
    NotUtf8,
}

/// Decodes a percent-encoded path segment. `+` stays `+` (paths are not forms). A segment
/// without `%` comes back borrowed.
pub(crate) fn decode_segment(segment: &str) -> Result<Cow<'_, str>, DecodeError> {
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(DecodeError::Malformed(i)),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| DecodeError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_key() {
        for key in [
            "plain",
            "a b/c?d=e&f%g#h",
            "ключ-545-日本",
            "",
            "100%",
            "+~._-",
            &"k".repeat(10_000),
        ] {
            let mut encoded = String::new();
            encode_segment(key, &mut encoded);
            assert!(
                !encoded.contains('/') && !encoded.contains(' '),
                "{encoded}"
            );
            assert_eq!(decode_segment(&encoded).unwrap(), key);
        }
    }

    #[test]
    fn escapes_exactly_the_bytes_outside_the_unreserved_set() {
        let mut encoded = String::new();
        encode_segment("a b~é-Z9_.%/日x", &mut encoded);
        assert_eq!(encoded, "a%20b~%C3%A9-Z9_.%25%2F%E6%97%A5x");
    }

    #[test]
    fn rejects_malformed_escapes() {
        assert_eq!(decode_segment("a%zz"), Err(DecodeError::Malformed(1)));
        assert_eq!(decode_segment("a%2"), Err(DecodeError::Malformed(1)));
        assert_eq!(decode_segment("%"), Err(DecodeError::Malformed(0)));
        assert_eq!(decode_segment("%ff%fe"), Err(DecodeError::NotUtf8));
        assert_eq!(decode_segment("a+b%20c").unwrap(), "a+b c");
    }
}
