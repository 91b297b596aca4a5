//! Admission: a bound on the messages a node answers at once, over HTTP and peer links alike.
//! Above it, new ones are answered 503 at once, so that a node under more load than it can take
//! sheds it instead of queueing without bound.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::router::RouteError;

/// The node's in-flight count and its limit.
pub(super) struct Admission {
    in_flight: AtomicUsize,
    max_in_flight: usize,
}

/// One of the node's in-flight slots, given back on drop.
pub(super) struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub(super) fn new(max_in_flight: usize) -> Admission {
        Admission {
            in_flight: AtomicUsize::new(0),
            max_in_flight,
        }
    }

    /// Takes an in-flight slot for one message, or fails when the node is at its limit.
    pub(super) fn admit(&self) -> Result<Slot<'_>, RouteError> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(RouteError::Overloaded(self.max_in_flight));
        }
        Ok(Slot(&self.in_flight))
    }

    /// Messages in flight now, and the limit.
    pub(super) fn in_flight(&self) -> (usize, usize) {
        (self.in_flight.load(Ordering::Relaxed), self.max_in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let admission = Admission::new(2);
        let first = admission.admit().unwrap();
        let _second = admission.admit().unwrap();
        assert!(matches!(admission.admit(), Err(RouteError::Overloaded(2))));
        assert_eq!(admission.in_flight().0, 2, "a refusal takes no slot");
        drop(first);
        assert!(admission.admit().is_ok());
        assert_eq!(admission.in_flight().0, 1);
    }
}
