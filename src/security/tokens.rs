//! Client API tokens: the set a node accepts in `Authorization: Bearer TOKEN` ([`ApiTokens`],
//! read from a tokens file), and the live [`Tokens`] a node checks requests against, replaced
//! whole when the file changes so that tokens rotate without a restart.
//!
//! A tokens file holds one token a line, alone (any stream) or followed by a comma-separated
//! list of the streams it may use: `TOKEN` or `TOKEN orders,audit`. Blank lines are skipped and
//! `#` starts a comment. Several tokens may be valid at once, so that a new one is added, the
//! clients move to it, and the old one is removed.
//!
//! Only the SHA-256 digest of each token is kept. A presented token is hashed and compared
//! with every digest in constant time, never stopping at a match: how long a check takes says
//! nothing of which token matched, nor of how much of one did. No error or `Debug` output ever
//! shows a token: errors name the line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tracing::{info, warn};
use zeroize::Zeroizing;

/// The fewest characters a token may have: shorter ones could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// A tokens file that cannot be used, with the line that is wrong. It never contains a token.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// No token at all: a node with an empty set would refuse every client.
    #[error("no token (one a line: `TOKEN` or `TOKEN stream,stream`)")]
    Empty,
    /// Line `line` (from 1) is not `TOKEN` or `TOKEN stream,stream`.
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
    /// Line `line` repeats the token of line `first`.
    #[error("line {line}: the same token as line {first}")]
    Duplicate { line: usize, first: usize },
}

/// A tokens file that could not be read or parsed. It names the file and the line, never a
/// token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFileError {
    #[error("cannot read the API tokens file {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("API tokens file {path}: {error}")]
    Parse { path: PathBuf, error: TokenError },
}

/// One accepted token: its digest and the streams it may use.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    digest: [u8; 32],
    /// `None`: every stream.
    streams: Option<Box<[Box<str>]>>,
}

/// Why a request's token does not let it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No bearer token.
    Missing,
    /// A token that is not in the set.
    Unknown,
    /// A known token that may not use the stream asked for.
    Stream,
}

/// The tokens a node accepts: what a tokens file says, parsed once.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiTokens {
    entries: Vec<Entry>,
}

/// Whether `token` is an RFC 6750 `b64token` of at least [`MIN_TOKEN_LEN`] characters: letters,
/// digits and `-._~+/`, then any `=`.
fn check_token(token: &str) -> Result<(), &'static str> {
    let body = token.trim_end_matches('=');
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
    if body.is_empty() || !body.chars().all(allowed) {
        return Err("a token is letters, digits and `-._~+/`, then any `=`");
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err("a token has at least 16 characters");
    }
    Ok(())
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl ApiTokens {
    /// Reads a tokens file: `TOKEN` or `TOKEN stream,stream` a line (see the module's doc).
    /// Fails on an empty set, a line that is neither, a token shorter than
    /// [`MIN_TOKEN_LEN`] or with characters a bearer token cannot have, or a token given twice;
    /// the error names the line, never the token.
    pub fn parse(text: &str) -> Result<ApiTokens, TokenError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut lines: Vec<usize> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let fail = |reason| TokenError::Line {
                line: line_no,
                reason,
            };
            let mut fields = line
                .split_whitespace()
                .take_while(|field| !field.starts_with('#'));
            let Some(token) = fields.next() else {
                continue;
            };
            check_token(token).map_err(fail)?;
            let streams = match fields.next() {
                None => None,
                Some(list) => {
                    let streams: Vec<Box<str>> = list.split(',').map(Box::from).collect();
                    if streams.iter().any(|s| s.is_empty()) {
                        return Err(fail("an empty stream name in the list"));
                    }
                    Some(streams.into_boxed_slice())
                }
            };
            if fields.next().is_some() {
                return Err(fail(
                    "more than `TOKEN stream,stream` (no spaces in the list)",
                ));
            }
            let entry = Entry {
                digest: digest(token.as_bytes()),
                streams,
            };
            if let Some(first) = entries.iter().position(|e| e.digest == entry.digest) {
                return Err(TokenError::Duplicate {
                    line: line_no,
                    first: lines[first],
                });
            }
            entries.push(entry);
            lines.push(line_no);
        }
        if entries.is_empty() {
            return Err(TokenError::Empty);
        }
        Ok(ApiTokens { entries })
    }

    /// How many tokens the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none (never, for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `presented` (the bearer token of a request, if it has one) may make a request;
    /// for `stream`, when the request uses one. The token is compared with every token of the
    /// set in constant time.
    pub(crate) fn check(
        &self,
        presented: Option<&[u8]>,
        stream: Option<&str>,
    ) -> Result<(), Denied> {
        let presented = presented.ok_or(Denied::Missing)?;
        let wanted = digest(presented);
        let mut found = u32::MAX;
        for (i, entry) in self.entries.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&i, entry.digest.ct_eq(&wanted));
        }
        let entry = self.entries.get(found as usize).ok_or(Denied::Unknown)?;
        match (&entry.streams, stream) {
            (Some(streams), Some(stream)) if !streams.iter().any(|s| **s == *stream) => {
                Err(Denied::Stream)
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limited = self.entries.iter().filter(|e| e.streams.is_some()).count();
        f.debug_struct("ApiTokens")
            .field("tokens", &self.entries.len())
            .field("limited", &limited)
            .finish()
    }
}

/// A node's live tokens: every request reads the set now, and a reload replaces it for all at
/// once. Made from a file ([`Tokens::from_file`]), a node rereads it every second and takes
/// the new set when it parses. Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    shared: Arc<Shared>,
}

struct Shared {
    current: ArcSwap<ApiTokens>,
    file: Option<Watched>,
}

/// The file the tokens come from, and what was last read of it.
struct Watched {
    path: PathBuf,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Digest of the text last read, parsed or not: the same text is not parsed (nor warned
    /// about) again.
    text: Option<[u8; 32]>,
    /// The last read failed: warned about once, until a read succeeds.
    unreadable: bool,
}

impl Tokens {
    /// Live tokens starting with `tokens`, from no file.
    pub fn new(tokens: ApiTokens) -> Tokens {
        Tokens {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(tokens),
                file: None,
            }),
        }
    }

    /// Live tokens read from the tokens file at `path`, which a node then rereads when it
    /// changes. Fails when the file cannot be read or parsed (see [`ApiTokens::parse`]).
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Tokens, TokenFileError> {
        let path = path.into();
        let (text, tokens) = read(&path)?;
        Ok(Tokens {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(tokens),
                file: Some(Watched {
                    path,
                    seen: Mutex::new(Seen {
                        text: Some(text),
                        unreadable: false,
                    }),
                }),
            }),
        })
    }

    /// The set now.
    pub fn current(&self) -> Arc<ApiTokens> {
        self.shared.current.load_full()
    }

    /// The set now, for the request path: no reference count touched.
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<ApiTokens>> {
        self.shared.current.load()
    }

    /// Replaces the set; returns whether it differed.
    pub fn replace(&self, tokens: ApiTokens) -> bool {
        if **self.shared.current.load() == tokens {
            return false;
        }
        self.shared.current.store(Arc::new(tokens));
        true
    }

    /// The tokens file, if the tokens come from one.
    pub fn path(&self) -> Option<&Path> {
        self.shared.file.as_ref().map(|f| f.path.as_path())
    }

    /// Reads the tokens file again and takes its set; returns whether the set changed (never,
    /// without a file). Fails when the file cannot be read or parsed, and then keeps the set
    /// it had. What a SIGHUP calls; a node also polls the file every second.
    pub fn reload(&self) -> Result<bool, TokenFileError> {
        match self.shared.file.as_ref().map(|file| self.take(file, true)) {
            None | Some(Reread::Same) => Ok(false),
            Some(Reread::Taken(changed)) => Ok(changed),
            Some(Reread::Failed { error, .. }) => Err(error),
        }
    }

    /// Rereads the tokens file, and takes its set if its text changed since it was last read.
    /// Logs a set taken, and once each a text that does not parse and a file that cannot be
    /// read: never a token.
    pub(crate) fn poll(&self) {
        let Some(file) = &self.shared.file else {
            return;
        };
        let path = file.path.display();
        match self.take(file, false) {
            Reread::Same | Reread::Taken(false) => {}
            Reread::Taken(true) => {
                info!(%path, tokens = self.load().len(), "API tokens file changed: new set taken");
            }
            Reread::Failed { error, again } => {
                if !again {
                    warn!(error = %error, "API tokens file not taken; keeping the previous tokens");
                }
            }
        }
    }

    /// Reads the tokens file and takes its set, unless it is the text last read and `force`
    /// is not set.
    fn take(&self, file: &Watched, force: bool) -> Reread {
        let text = std::fs::read_to_string(&file.path).map(Zeroizing::new);
        let mut seen = file.seen.lock().unwrap_or_else(|e| e.into_inner());
        let text = match text {
            Ok(text) => text,
            Err(reason) => {
                let again = std::mem::replace(&mut seen.unreadable, true);
                let path = file.path.clone();
                let error = TokenFileError::Read { path, reason };
                return Reread::Failed { error, again };
            }
        };
        seen.unreadable = false;
        let hash = digest(text.as_bytes());
        if !force && seen.text == Some(hash) {
            return Reread::Same;
        }
        seen.text = Some(hash);
        match ApiTokens::parse(&text) {
            Ok(tokens) => Reread::Taken(self.replace(tokens)),
            Err(error) => Reread::Failed {
                error: TokenFileError::Parse {
                    path: file.path.clone(),
                    error,
                },
                again: false,
            },
        }
    }

    /// Polls the tokens file every `period`, for as long as the task runs (the node that
    /// owns it aborts it when it stops).
    pub(crate) async fn watch(self, period: Duration) {
        loop {
            tokio::time::sleep(period).await;
            let tokens = self.clone();
            // A small file, read on a blocking thread all the same.
            if let Err(e) = tokio::task::spawn_blocking(move || tokens.poll()).await {
                warn!(error = %e, "API tokens file no longer reread");
                return;
            }
        }
    }
}

/// What rereading the tokens file did.
enum Reread {
    /// The text is the one last read.
    Same,
    /// The file's set was taken; whether it differed from the set before.
    Taken(bool),
    /// The file could not be read or parsed; `again` when it could not be read last time
    /// either.
    Failed { error: TokenFileError, again: bool },
}

/// Reads and parses the tokens file at `path`: the digest of its text, and its set.
fn read(path: &Path) -> Result<([u8; 32], ApiTokens), TokenFileError> {
    let text = std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|reason| TokenFileError::Read {
            path: path.to_owned(),
            reason,
        })?;
    let tokens = ApiTokens::parse(&text).map_err(|error| TokenFileError::Parse {
        path: path.to_owned(),
        error,
    })?;
    Ok((digest(text.as_bytes()), tokens))
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("current", &*self.load())
            .field("file", &self.path())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "alpha-token-0123456789";
    const B: &str = "bravo-token-0123456789";
    const C: &str = "charlie+token/0123456789==";

    fn check(tokens: &ApiTokens, token: Option<&str>, stream: Option<&str>) -> Result<(), Denied> {
        tokens.check(token.map(str::as_bytes), stream)
    }

    #[test]
    fn tokens_with_and_without_stream_limits() {
        let text = format!("# tokens\n\n{A}\n  {B} orders,audit   # the CI's\n{C} # a comment\n");
        let tokens = ApiTokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 3);
        for token in [A, C] {
            assert_eq!(check(&tokens, Some(token), None), Ok(()));
            assert_eq!(check(&tokens, Some(token), Some("anything")), Ok(()));
        }
        assert_eq!(check(&tokens, Some(B), Some("orders")), Ok(()));
        assert_eq!(check(&tokens, Some(B), Some("audit")), Ok(()));
        assert_eq!(check(&tokens, Some(B), None), Ok(()), "not stream-specific");
        assert_eq!(check(&tokens, Some(B), Some("echo")), Err(Denied::Stream));
        assert_eq!(check(&tokens, Some(B), Some("order")), Err(Denied::Stream));
        assert_eq!(check(&tokens, None, None), Err(Denied::Missing));
        for unknown in ["", "alpha-token-012345678", "alpha-token-0123456789x", "x"] {
            assert_eq!(
                check(&tokens, Some(unknown), None),
                Err(Denied::Unknown),
                "{unknown}"
            );
        }
    }

    #[test]
    fn bad_lines_are_named_by_number_never_by_token() {
        let cases = [
            (format!("{A}\nshort\n"), 2),
            (format!("# x\n{A}\n{B} a,,b\n"), 3),
            (format!("{A} a b\n"), 1),
            (format!("{A}\n\n{B}\n\ntoken\"with-quote-000\n"), 5),
            (format!("{A}\nno=in-the-middle-0000\n"), 2),
        ];
        for (text, line) in cases {
            let err = ApiTokens::parse(&text).unwrap_err();
            assert!(
                matches!(err, TokenError::Line { line: l, .. } if l == line),
                "{text:?}: {err:?}"
            );
            let shown = format!("{err} {err:?}");
            for secret in [A, B, "short", "token\"with-quote-000", "no=in-the-middle"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert_eq!(
            ApiTokens::parse(&format!("{A}\n{B} x\n{A} y\n")).unwrap_err(),
            TokenError::Duplicate { line: 3, first: 1 }
        );
        assert_eq!(
            ApiTokens::parse("# only comments\n\n").unwrap_err(),
            TokenError::Empty
        );
    }

    #[test]
    fn debug_never_shows_a_token() {
        let tokens = ApiTokens::parse(&format!("{A}\n{B} orders\n")).unwrap();
        let live = Tokens::new(tokens.clone());
        let shown = format!("{tokens:?} {live:?} {:?}", live.current());
        assert!(
            shown.contains("tokens: 2") && shown.contains("limited: 1"),
            "{shown}"
        );
        assert!(!shown.contains(A) && !shown.contains(B), "{shown}");
    }

    #[test]
    fn replacing_the_set_is_seen_by_every_clone() {
        let live = Tokens::new(ApiTokens::parse(A).unwrap());
        let other = live.clone();
        assert!(!live.replace(ApiTokens::parse(A).unwrap()));
        assert!(live.replace(ApiTokens::parse(B).unwrap()));
        assert_eq!(check(&other.current(), Some(A), None), Err(Denied::Unknown));
        assert_eq!(check(&other.current(), Some(B), None), Ok(()));
        assert!(!live.reload().unwrap(), "no file to reload");
    }

    #[test]
    fn a_file_is_reread_and_a_bad_one_keeps_the_previous_set() {
        let path = std::env::temp_dir().join(format!(
            "meshage-tokens-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let live = Tokens::from_file(&path).unwrap();
        assert_eq!(live.path(), Some(path.as_path()));
        assert!(!live.reload().unwrap(), "the same file");

        std::fs::write(&path, format!("{A}\n{B}\n")).unwrap();
        assert!(live.reload().unwrap());
        assert_eq!(live.current().len(), 2);

        std::fs::write(&path, format!("{B}\n{C} a,,b\n")).unwrap();
        let err = live.reload().unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(!err.to_string().contains(C.trim_end_matches('=')), "{err}");
        assert_eq!(check(&live.current(), Some(A), None), Ok(()), "kept");

        std::fs::write(&path, format!("{B}\n")).unwrap();
        live.poll();
        assert_eq!(check(&live.current(), Some(A), None), Err(Denied::Unknown));
        assert_eq!(check(&live.current(), Some(B), None), Ok(()));

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(live.reload(), Err(TokenFileError::Read { .. })));
        live.poll();
        assert_eq!(check(&live.current(), Some(B), None), Ok(()), "kept");
        assert!(matches!(
            Tokens::from_file(&path),
            Err(TokenFileError::Read { .. })
        ));
    }
}
