//! Run with: cargo bench --bench ring
//!
//! Hot paths of routing: a ring lookup (md5 of the key and a binary search), building a ring
//! when membership changes, and building and swapping in a whole service table.

use std::sync::Arc;

use arc_swap::ArcSwap;
use meshage::{ClusterView, HashRing, Member, MemberState, ServiceEntry, ServiceTable};

fn main() {
    divan::main();
}

fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{:08x}-4334-4315-ab55-c359ef9b2bb7", i * 7919))
        .collect()
}

fn view(services: usize, streams: usize) -> ClusterView {
    let members = (0..services.div_ceil(10))
        .map(|m| Member {
            id: format!("node-{m}"),
            endpoint: format!("http://10.0.0.{m}:8080"),
            state: MemberState::Live,
            services: (0..10)
                .map(|s| m * 10 + s)
                .filter(|i| *i < services)
                .map(|i| ServiceEntry {
                    id: Arc::from(format!("{i:08x}-svc").as_str()),
                    stream: Arc::from(format!("stream-{}", i % streams).as_str()),
                })
                .collect(),
            last_heard: None,
            fingerprint: None,
        })
        .collect();
    ClusterView { members }
}

#[divan::bench(args = [3, 10, 100, 1000])]
fn lookup(bencher: divan::Bencher, services: usize) {
    let ring = HashRing::new(ids(services));
    let keys: Vec<String> = (0..1024).map(|i| format!("user-{i}")).collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) & 1023;
        ring.get(divan::black_box(&keys[i]))
    });
}

#[divan::bench(args = [3, 100, 1000])]
fn rebuild(bencher: divan::Bencher, services: usize) {
    let ids = ids(services);
    bencher.bench_local(|| HashRing::new(divan::black_box(&ids)));
}

/// A whole table (services of 10 streams, one ring each) built and swapped in, as on every
/// membership change.
#[divan::bench(args = [30, 300])]
fn table_swap(bencher: divan::Bencher, services: usize) {
    let view = view(services, 10);
    let current = ArcSwap::from_pointee(ServiceTable::build(0, &view));
    let mut version = 0;
    bencher.bench_local(|| {
        version += 1;
        current.store(Arc::new(ServiceTable::build(
            version,
            divan::black_box(&view),
        )));
    });
}

/// The owner of a key from the current snapshot: what every request does.
#[divan::bench]
fn owner_from_snapshot(bencher: divan::Bencher) {
    let current = ArcSwap::from_pointee(ServiceTable::build(1, &view(30, 10)));
    bencher.bench_local(|| {
        let table = current.load();
        table
            .owner("stream-3", divan::black_box("user-42"))
            .map(|s| s.id.len())
    });
}
