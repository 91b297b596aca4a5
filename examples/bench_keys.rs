//! Run with: cargo run --release --example bench_keys -- LOCAL_ID ID1,ID2,ID3 COUNT
//!
//! Used by `benches/cluster.py`: prints COUNT keys as `L key` when the ring over the given
//! service ids puts them on LOCAL_ID, `R key` otherwise, so the benchmark can drive only local or
//! only forwarded keys.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: bench_keys LOCAL_ID ID1,ID2,... COUNT");
        std::process::exit(2);
    }
    let ring = meshage::HashRing::new(args[2].split(','));
    let count: usize = args[3].parse().expect("COUNT is a number");
    for i in 0..count {
        let key = format!("key-{i}");
        let side = if ring.get(&key) == Some(args[1].as_str()) {
            'L'
        } else {
            'R'
        };
        println!("{side} {key}");
    }
}
