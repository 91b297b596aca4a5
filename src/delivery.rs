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
    /// The node refused it without running it.
    Refused(Refusal),
}

/// Why a node refused a request without running it. Only the node says this, in a way no
/// handler can: a link frame of its own kind, or the `X-Meshage-Refused` header; a handler's
/// status, 421 included, is always an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It is leaving the cluster.
    Leaving,
    /// It does not run the service named (the tables of the two nodes disagreed).
    NoService,
    /// Its table gives the key to another service than the one named, and it checks
    /// (`--strict-ownership`): look again once the tables agree.
    NotOwner,
}

impl Refusal {
    /// The refusal's name in the `X-Meshage-Refused` header.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Refusal::Leaving => "leaving",
            Refusal::NoService => "no-service",
            Refusal::NotOwner => "not-owner",
        }
    }

    pub(crate) fn from_name(name: &[u8]) -> Option<Refusal> {
        match name {
            b"leaving" => Some(Refusal::Leaving),
            b"no-service" => Some(Refusal::NoService),
            b"not-owner" => Some(Refusal::NotOwner),
            _ => None,
        }
    }

    /// The refusal's code in a link frame.
    pub(crate) fn code(self) -> u8 {
        match self {
            Refusal::Leaving => 1,
            Refusal::NoService => 2,
            Refusal::NotOwner => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Refusal> {
        match code {
            1 => Some(Refusal::Leaving),
            2 => Some(Refusal::NoService),
            3 => Some(Refusal::NotOwner),
            _ => None,
        }
    }
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

    pub(crate) fn refused(why: Refusal) -> Self {
        Undelivered::NotRun(NotRun::Refused(why))
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
            Undelivered::NotRun(NotRun::Refused(Refusal::Leaving)) => {
                f.write_str("the node is leaving")
            }
            Undelivered::NotRun(NotRun::Refused(Refusal::NoService)) => {
                f.write_str("the node does not run it")
            }
            Undelivered::NotRun(NotRun::Refused(Refusal::NotOwner)) => {
                f.write_str("the node's table gives the key to another service")
            }
            Undelivered::MayHaveRun(MayHaveRun::TimedOut(after)) => {
                write!(f, "no answer within {after:?}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_their_names_and_codes() {
        for why in [Refusal::Leaving, Refusal::NoService, Refusal::NotOwner] {
            assert_eq!(Refusal::from_name(why.name().as_bytes()), Some(why));
            assert_eq!(Refusal::from_code(why.code()), Some(why));
        }
        assert_eq!(Refusal::from_name(b"LEAVING"), None);
        assert_eq!(Refusal::from_code(0), None);
    }
}
