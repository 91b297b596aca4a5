//! Support for the membership backend tests: the conformance suite every backend passes, real
//! etcd processes, and the Consul stand-in. Test files use it with `mod common; mod backends;`.
#![allow(dead_code)]

pub mod conformance;
#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "etcd")]
pub mod etcd;
