//! The conformance suite of the membership trait (`tests/backends/conformance.rs`), run
//! against every backend: gossip always, etcd with the `etcd` feature (real etcd processes),
//! Consul with the `consul` feature (the in-process stand-in agent, or a real agent when
//! `CONSUL_HTTP_ADDR` is set).

mod backends;
mod common;

use std::future::Future;
use std::time::Duration;

use backends::conformance::{self, Backend};
use meshage::Cluster;

/// Bounds every test: a backend that hangs fails instead of stalling the run.
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(90), test)
        .await
        .expect("the test finishes within 90 s");
}

/// Generates one test per conformance case for a backend made by `$make` (an async
/// expression giving `Option<impl Backend>`; `None` skips, with the reason printed).
macro_rules! conformance_tests {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            conformance_tests!(@cases $make;
                members_see_each_others_services,
                withdrawn_services_disappear,
                a_crashed_members_services_disappear,
                a_leaving_members_services_disappear_quickly,
                a_restarted_member_is_seen_with_its_new_services,
                concurrent_registrations_are_all_seen,
                nodes_register_concurrently_and_route_by_the_ring,
            );
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(backend) = $make.await else { return };
                bounded(conformance::$case(&backend)).await;
            }
        )*
    };
}

struct Gossip;

impl Backend for Gossip {
    fn cluster(&self, seeds: &[String]) -> Box<dyn Cluster> {
        Box::new(common::gossip(&seeds[..seeds.len().min(1)]))
    }
    fn failure_deadline(&self) -> Duration {
        Duration::from_secs(8)
    }
}

conformance_tests!(gossip, async { Some(Gossip) });

#[cfg(feature = "etcd")]
mod etcd_backend {
    use super::*;
    use backends::etcd::Etcd;
    use meshage::{EtcdCluster, EtcdConfig};

    /// A single-member etcd of the test's own, with a 2 s lease TTL.
    pub struct EtcdBackend {
        pub etcd: Etcd,
    }

    impl EtcdBackend {
        pub async fn start() -> Option<Self> {
            Some(EtcdBackend {
                etcd: Etcd::start(1).await?,
            })
        }
    }

    impl Backend for EtcdBackend {
        fn cluster(&self, _seeds: &[String]) -> Box<dyn Cluster> {
            Box::new(
                EtcdCluster::new(self.etcd.urls())
                    .unwrap()
                    .with_config(EtcdConfig {
                        lease_ttl: Duration::from_secs(2),
                        ..EtcdConfig::default()
                    }),
            )
        }
        fn failure_deadline(&self) -> Duration {
            Duration::from_secs(8)
        }
    }
}

#[cfg(feature = "etcd")]
conformance_tests!(etcd, etcd_backend::EtcdBackend::start());

#[cfg(feature = "consul")]
mod consul_backend {
    use super::*;
    use backends::consul::Agent;
    use meshage::{ConsulCluster, ConsulConfig, NO_SEEDS};

    /// The stand-in agent of the test's own (or the real agent at `CONSUL_HTTP_ADDR`), with
    /// checks every second.
    pub struct ConsulBackend {
        pub agent: Agent,
    }

    impl ConsulBackend {
        pub async fn start() -> Option<Self> {
            Some(ConsulBackend {
                agent: Agent::start(None).await,
            })
        }
    }

    impl Backend for ConsulBackend {
        fn cluster(&self, _seeds: &[String]) -> Box<dyn Cluster> {
            Box::new(
                ConsulCluster::new(self.agent.addr(), NO_SEEDS)
                    .unwrap()
                    .with_config(ConsulConfig {
                        token: self.agent.token(),
                        check_interval: Duration::from_secs(1),
                        ..ConsulConfig::default()
                    }),
            )
        }
        fn failure_deadline(&self) -> Duration {
            Duration::from_secs(8)
        }
    }
}

#[cfg(feature = "consul")]
conformance_tests!(consul, consul_backend::ConsulBackend::start());
