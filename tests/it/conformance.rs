//! The conformance suite of the membership trait (`tests/common/conformance.rs`) against the
//! built-in gossip backend. The etcd and Consul backends run the same suite in their own test
//! binaries (`tests/etcd/`, `tests/consul/`), beside the real etcd processes and the Consul
//! stand-in they need.

use std::time::Duration;

use meshage::Cluster;

use crate::common::conformance::{conformance_tests, Backend};

struct Gossip;

impl Backend for Gossip {
    fn cluster(&self, seeds: &[String]) -> Box<dyn Cluster> {
        Box::new(crate::common::gossip(&seeds[..seeds.len().min(1)]))
    }
    fn failure_deadline(&self) -> Duration {
        Duration::from_secs(8)
    }
}

conformance_tests!(gossip, async { Some(Gossip) });
