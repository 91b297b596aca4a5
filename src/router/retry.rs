//! The rule for a forward that brought back no answer to pass on: whether the request may go to
//! the key's next owner, whether the owner becomes suspect, and which error the caller gets if
//! it goes nowhere else. Pure.

use std::sync::Arc;

use super::RouteError;
use crate::delivery::{MayHaveRun, NotRun, Refusal, Undelivered};

/// What the router does after a failed forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decision {
    /// Send the request to the key's next owner, while the deadline allows.
    pub(super) retry: bool,
    /// Take the owner off this node's rings for a while.
    pub(super) suspect: Option<Suspicion>,
    /// The owner's table gives the key to another service: route it again, to whichever
    /// owner the table names once it has caught up (it may be the same one).
    pub(super) look_again: bool,
}

/// What a failed forward makes suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Suspicion {
    /// Every service of the owner's node: its connection failed, or it said it is leaving
    /// (`leaving`: left out of broadcasts quietly).
    Node { leaving: bool },
    /// Only the service: its node does not run it.
    Service,
}

/// Decides what follows `failure`. A request that cannot have run may go to the next owner; one
/// that may have run goes again only when the caller marked it idempotent and the connection
/// failed (an answer that came back unusable, or no answer in time, is not sent again).
pub(super) fn classify(failure: &Undelivered, idempotent: bool) -> Decision {
    let (retry, suspect) = match failure {
        Undelivered::NotRun(NotRun::Refused(Refusal::Leaving)) => {
            (true, Some(Suspicion::Node { leaving: true }))
        }
        Undelivered::NotRun(NotRun::Refused(Refusal::NoService)) => {
            (true, Some(Suspicion::Service))
        }
        Undelivered::NotRun(NotRun::Refused(Refusal::NotOwner)) => {
            return Decision {
                retry: true,
                suspect: None,
                look_again: true,
            }
        }
        Undelivered::NotRun(NotRun::Connect(_) | NotRun::Unsent(_)) => {
            (true, Some(Suspicion::Node { leaving: false }))
        }
        Undelivered::MayHaveRun(MayHaveRun::Lost(_)) => {
            (idempotent, Some(Suspicion::Node { leaving: false }))
        }
        Undelivered::MayHaveRun(MayHaveRun::Failed(_) | MayHaveRun::TimedOut(_)) => (false, None),
    };
    Decision {
        retry,
        suspect,
        look_again: false,
    }
}

/// The error the caller gets for `failure` of a forward to `service_id` at `endpoint`.
pub(super) fn error(failure: Undelivered, service_id: &Arc<str>, endpoint: &str) -> RouteError {
    let (service_id, endpoint) = (service_id.to_string(), endpoint.to_owned());
    match failure {
        Undelivered::NotRun(NotRun::Refused(Refusal::NotOwner)) => RouteError::NotOwner(service_id),
        Undelivered::NotRun(NotRun::Refused(_)) => RouteError::NotHere(service_id),
        Undelivered::MayHaveRun(MayHaveRun::TimedOut(after)) => {
            RouteError::Timeout { service_id, after }
        }
        Undelivered::NotRun(NotRun::Connect(_) | NotRun::Unsent(_)) => RouteError::Unreachable {
            service_id,
            endpoint,
            reason: failure.to_string(),
        },
        Undelivered::MayHaveRun(MayHaveRun::Lost(_) | MayHaveRun::Failed(_)) => RouteError::Lost {
            service_id,
            endpoint,
            reason: failure.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn every_failure() -> Vec<Undelivered> {
        vec![
            Undelivered::refused(Refusal::Leaving),
            Undelivered::refused(Refusal::NoService),
            Undelivered::connect("refused"),
            Undelivered::unsent("closed"),
            Undelivered::lost("reset"),
            Undelivered::failed("too large"),
            Undelivered::timed_out(Duration::from_secs(1)),
        ]
    }

    /// The safety rule: nothing that may have run goes to another owner unless the caller said
    /// it may run twice, and then only after a broken connection.
    #[test]
    fn only_what_cannot_have_run_is_resent_unless_idempotent() {
        for failure in every_failure() {
            let plain = classify(&failure, false);
            let idempotent = classify(&failure, true);
            let not_run = matches!(failure, Undelivered::NotRun(_));
            assert_eq!(plain.retry, not_run, "{failure:?}");
            let lost = matches!(failure, Undelivered::MayHaveRun(MayHaveRun::Lost(_)));
            assert_eq!(idempotent.retry, not_run || lost, "{failure:?}");
            assert_eq!(plain.suspect, idempotent.suspect, "{failure:?}");
        }
    }

    #[test]
    fn broken_connections_and_refusals_make_the_owner_suspect() {
        let suspect = |f: Undelivered| classify(&f, false).suspect;
        assert_eq!(
            suspect(Undelivered::refused(Refusal::Leaving)),
            Some(Suspicion::Node { leaving: true })
        );
        assert_eq!(
            suspect(Undelivered::refused(Refusal::NoService)),
            Some(Suspicion::Service)
        );
        for broken in [
            Undelivered::connect("x"),
            Undelivered::unsent("x"),
            Undelivered::lost("x"),
        ] {
            assert_eq!(suspect(broken), Some(Suspicion::Node { leaving: false }));
        }
        for answer_only in [
            Undelivered::failed("x"),
            Undelivered::timed_out(Duration::ZERO),
        ] {
            assert_eq!(suspect(answer_only), None);
        }
    }

    #[test]
    fn each_failure_has_the_status_a_client_expects() {
        let id: Arc<str> = Arc::from("svc");
        let statuses: Vec<u16> = every_failure()
            .into_iter()
            .map(|f| error(f, &id, "http://n").status().as_u16())
            .collect();
        assert_eq!(statuses, [421, 421, 502, 502, 502, 502, 504]);
        let lost = error(Undelivered::lost("reset"), &id, "http://n").to_string();
        assert!(lost.contains("not resent"), "{lost}");
        let unreachable = error(Undelivered::connect("refused"), &id, "http://n").to_string();
        assert_eq!(
            unreachable,
            "owner svc at http://n is unreachable: connect failed: refused"
        );
    }
}
