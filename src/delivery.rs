//! What became of a request sent to a peer that brought back no answer to pass on: whether the
//! peer cannot have run it, or may have. The link client and the HTTP forwarder both say it in
//! these terms, and the router's retry rule reads nothing else.
//!
//! Pure: no I/O, and nothing of the crate above it.

use std::fmt;
use std::time::Duration;

/// A forward that brought back no answer to pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Undelivered {
    /// The peer cannot have run the request: sending it elsewhere cannot run it twice.
    NotRun(NotRun),
    /// The peer may have run the request, but no usable answer came back.
    MayHaveRun(MayHaveRun),
}

/// Why a peer cannot have run a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotRun {
    /// No connection could be made.
    Connect(String),
    /// The connection ended before the request was written.
    Unsent(String),
    /// The node refused it without running it: it is leaving.
    Leaving,
    /// The node refused it without running it: it does not run the service named.
    NoService,
}

/// Why a request that may have run brought back no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MayHaveRun {
    /// The connection broke after the request was written.
    Lost(String),
    /// The connection is fine, but the answer was unusable (too large, for one).
    Failed(String),
    /// No answer before the deadline.
    TimedOut(Duration),
}

impl Undelivered {
    pub(crate) fn connect(reason: impl Into<String>) -> Self {
        Undelivered::NotRun(NotRun::Connect(reason.into()))
    }

    pub(crate) fn unsent(reason: impl Into<String>) -> Self {
        Undelivered::NotRun(NotRun::Unsent(reason.into()))
    }

    pub(crate) fn lost(reason: impl Into<String>) -> Self {
        Undelivered::MayHaveRun(MayHaveRun::Lost(reason.into()))
    }

    pub(crate) fn failed(reason: impl Into<String>) -> Self {
        Undelivered::MayHaveRun(MayHaveRun::Failed(reason.into()))
    }

    pub(crate) fn timed_out(after: Duration) -> Self {
        Undelivered::MayHaveRun(MayHaveRun::TimedOut(after))
    }
}

impl fmt::Display for Undelivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undelivered::NotRun(NotRun::Connect(reason)) => write!(f, "connect failed: {reason}"),
            Undelivered::NotRun(NotRun::Unsent(reason))
            | Undelivered::MayHaveRun(MayHaveRun::Lost(reason) | MayHaveRun::Failed(reason)) => {
                f.write_str(reason)
            }
            Undelivered::NotRun(NotRun::Leaving) => f.write_str("the node is leaving"),
            Undelivered::NotRun(NotRun::NoService) => f.write_str("the node does not run it"),
            Undelivered::MayHaveRun(MayHaveRun::TimedOut(after)) => {
                write!(f, "no answer within {after:?}")
            }
        }
    }
}
