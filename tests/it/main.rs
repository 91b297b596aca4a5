//! The fast integration suites in one test binary: multi-node behaviour through real sockets and
//! real processes on one host, with no root and no external service. One binary links the crate
//! once and lets the tests of every suite share the test threads; run one suite with
//! `cargo test --test it mesh::`. `layout` reads `src/` and checks how it is laid out.
//!
//! The suites that need more than this host's loopback run in binaries of their own:
//! `tests/netns/` (root, network namespaces, timing-sensitive load), `tests/etcd/` (real etcd
//! processes, feature `etcd`) and `tests/consul/` (the Consul stand-in, feature `consul`).

/// The shared harness, `tests/common/`: small files, each about one thing. Every test binary
/// mounts the files it uses, whole, and uses everything in them, so the harness needs no
/// `allow(dead_code)`: a helper no binary calls any more is a warning, and clippy fails on it.
/// This binary uses every file.
#[path = "../common"]
mod common {
    mod certs;
    mod command;
    pub mod conformance;
    mod echo;
    mod http_client;
    mod http_shortcuts;
    mod nodes;
    pub mod proc;
    pub mod process;
    mod service_id;
    mod tls_server;
    mod wait;

    pub use certs::*;
    pub use command::*;
    pub use echo::*;
    pub use http_client::*;
    pub use nodes::*;
    pub use tls_server::*;
    pub use wait::*;
}

mod api;
mod binary;
mod certs;
mod cli;
mod client;
mod clients;
mod conformance;
mod deploy;
mod events;
mod failure;
mod flood;
mod handlers;
mod hostile;
mod idle_links;
mod layout;
mod mesh;
mod mtls;
mod names;
mod observability;
mod openapi;
#[cfg(feature = "otel")]
mod otel;
mod packaging;
mod pki;
mod probes;
mod ring_vectors;
mod sealed;
mod sends;
mod stateful;
mod status_page;
mod strict;
mod tokens;
mod trace_context;
mod upstream;
