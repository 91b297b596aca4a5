//! Consistent-hash ring that places keys exactly like the npm package
//! [`hashring`] 3.2.0 used with default options.
//!
//! meshage routes every message to the service instance that owns the
//! message's partition key. The original JavaScript implementation
//! (`@github1/meshage`) computes that owner with
//! `new HashRing(serviceIds).get(partitionKey)`, so a Rust node and a
//! JavaScript node in the same (mixed) cluster only agree on owners if this
//! module reproduces `hashring`'s placement bit for bit, quirks included.
//! That is why the code below copies the JavaScript literally instead of using
//! a "cleaner" ketama variant:
//!
//! * **Points per server.** Every server has weight 1, so
//!   `percentage = 1 / servers.length`, and the number of vnodes is
//!   `Math.floor(percentage * 40 * servers.length)`, evaluated in `f64` in
//!   that order. Because of rounding this is 39 rather than 40 for some
//!   cluster sizes (7 servers get 39 vnodes, i.e. 156 points each).
//! * **Point values.** For vnode `i` of server `s` the ring takes
//!   `x = md5("{s}-{i}")` and, for `j` in `0..4`, the point
//!   `x[3+4j] << 24 | x[2+4j] << 16 | x[1+4j] << 8 | x[4j]` (a little-endian
//!   `u32` of each 4-byte group of the digest).
//! * **Order.** Points are pushed in server order and then stably sorted by
//!   value (V8's `Array.prototype.sort` is stable), so equal values keep
//!   insertion order.
//! * **Lookup.** A key hashes to the little-endian `u32` of the first four
//!   bytes of `md5(key as UTF-8)`, and the owner is found with `hashring`'s
//!   own binary search ([`HashRing::get`]), which is *not* a textbook
//!   lower-bound search: it returns index 0 whenever it "falls off" either
//!   end and treats a point equal to its predecessor specially. It is
//!   replicated step by step.
//! * **`"__proto__"`.** `hashring` looks the vnode count up in a plain JS
//!   object (`self.vnodes[server] || 40`); for the id `"__proto__"` that
//!   yields `Object.prototype`, and the loop `i < Object.prototype` never
//!   runs, so such a server gets **no** points (it still counts towards
//!   `servers.length`). We do the same.
//!
//! Deliberate deviation: duplicate server ids are removed, keeping the first
//! occurrence (`hashring` would give a duplicated id double the points and
//! count it twice in `servers.length`). Cluster membership is a set, so the
//! mesh never feeds duplicates in the first place.
//!
//! The ring is immutable: it is rebuilt (one md5 per vnode plus one sort) on
//! every membership change, and [`HashRing::get`] does one md5 of the key plus
//! a binary search, with no allocation and no cache.
//!
//! Pure core: depends on nothing of the crate.
//!
//! [`hashring`]: https://www.npmjs.com/package/hashring

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use md5::{Digest, Md5};

/// `hashring`'s default number of virtual nodes per server.
const VNODES: usize = 40;
/// `hashring`'s default number of points taken from each md5 digest.
const REPLICAS: usize = 4;

/// An immutable consistent-hash ring, placement-compatible with npm
/// `hashring` 3.2.0 (default options): the same owner for every key, and the
/// same number of points per server (160, or 156 for some cluster sizes).
///
/// Differences from `hashring`: duplicate ids are removed (first occurrence
/// kept) and there is no lookup cache (none is needed; `get` does not
/// allocate).
#[derive(Clone, Default)]
pub struct HashRing {
    /// Server ids in the order given, duplicates removed.
    servers: Box<[Arc<str>]>,
    /// Point values, sorted ascending (stable with respect to insertion).
    values: Box<[u32]>,
    /// `owners[k]` is the index in `servers` of the server owning `values[k]`.
    owners: Box<[u32]>,
}

impl HashRing {
    /// Builds a ring over `ids`, in the order given. Duplicate ids are
    /// dropped (the first occurrence is kept).
    ///
    /// # Panics
    ///
    /// Panics if there are more than `u32::MAX` servers.
    pub fn new<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        let mut servers: Vec<Arc<str>> = Vec::new();
        for id in ids {
            let id = id.as_ref();
            if !seen.contains(id) {
                let id: Arc<str> = Arc::from(id);
                seen.insert(Arc::clone(&id));
                servers.push(id);
            }
        }
        drop(seen);
        assert!(
            u32::try_from(servers.len()).is_ok(),
            "HashRing supports at most u32::MAX servers"
        );

        let n = servers.len();
        if n == 0 {
            return Self::default();
        }
        // JS: percentage = weight / total; Math.floor(percentage * vnodes * servers.length)
        let percentage = 1.0 / n as f64;
        let vnodes = (percentage * VNODES as f64 * n as f64).floor() as usize;

        // Each point packed as `value << 32 | server index`. Sorting these
        // unstably gives exactly the order of JS's stable sort by value:
        // among equal values insertion order is server order (and equal
        // values of the same server are indistinguishable).
        let mut packed: Vec<u64> = Vec::with_capacity(n * vnodes * REPLICAS);
        let mut digits = [0u8; 20];
        for (index, server) in servers.iter().enumerate() {
            if &**server == "__proto__" {
                continue; // see module docs: hashring gives it no points
            }
            let mut prefix = Md5::new();
            prefix.update(server.as_bytes());
            prefix.update(b"-");
            for i in 0..vnodes {
                let mut hasher = prefix.clone();
                hasher.update(decimal(i, &mut digits));
                let x = hasher.finalize();
                for group in x.chunks_exact(4).take(REPLICAS) {
                    let value = u32::from_le_bytes([group[0], group[1], group[2], group[3]]);
                    packed.push((u64::from(value) << 32) | index as u64);
                }
            }
        }
        packed.sort_unstable();

        let values = packed.iter().map(|&p| (p >> 32) as u32).collect();
        let owners = packed.iter().map(|&p| p as u32).collect();
        Self {
            servers: servers.into_boxed_slice(),
            values,
            owners,
        }
    }

    /// The id of the server owning `key`, or `None` if the ring has no
    /// points (no servers).
    #[inline]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_index(key).map(|index| &*self.servers[index])
    }

    /// The index in [`servers`](Self::servers) of the server owning `key`,
    /// or `None` if the ring has no points (no servers).
    #[inline]
    pub fn get_index(&self, key: &str) -> Option<usize> {
        if self.values.is_empty() {
            return None;
        }
        // Not hashed at all on an empty ring.
        self.get_index_of_hash(hash_key(key))
    }

    /// [`get_index`](Self::get_index) of a key whose [`hash`](Self::hash) is known: a key
    /// hashed once and looked up on several rings.
    #[inline]
    pub(crate) fn get_index_of_hash(&self, hash: u32) -> Option<usize> {
        if self.values.is_empty() {
            return None;
        }
        let position = self.find(hash);
        Some(self.owners[position] as usize)
    }

    /// Server ids in the order given to [`new`](Self::new), duplicates removed.
    #[inline]
    pub fn servers(&self) -> &[Arc<str>] {
        &self.servers
    }

    /// Number of servers.
    #[inline]
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// `true` if the ring has no servers.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Total number of points on the ring.
    #[inline]
    pub fn points(&self) -> usize {
        self.values.len()
    }

    /// Number of ring points owned by the server at `index` in
    /// [`servers`](Self::servers) (0 for an out-of-range index).
    pub fn points_of(&self, index: usize) -> usize {
        self.owners
            .iter()
            .filter(|&&owner| owner as usize == index)
            .count()
    }

    /// The share of the 2^32 hash space each server owns, in
    /// [`servers`](Self::servers) order; the shares add up to 1 (an empty
    /// ring has none). A point owns the hashes above the point before it, up
    /// to and including its own value; the first point also owns the hashes
    /// above the last point and 0, where [`get`](Self::get) falls back to it.
    pub fn shares(&self) -> Vec<f64> {
        let mut owned = vec![0u64; self.servers.len()];
        let Some(&last) = self.values.last() else {
            return owned.into_iter().map(|_| 0.0).collect();
        };
        let mut prev: Option<u32> = None;
        for (&value, &owner) in self.values.iter().zip(&*self.owners) {
            owned[owner as usize] += match prev {
                Some(prev) => u64::from(value - prev),
                None => u64::from(value) + 1 + (u64::from(u32::MAX) - u64::from(last)),
            };
            prev = Some(value);
        }
        owned
            .into_iter()
            .map(|n| n as f64 / (1u64 << 32) as f64)
            .collect()
    }

    /// The ring's points in ascending order: each point's value and the
    /// index in [`servers`](Self::servers) of the server that owns it.
    pub fn ring_points(&self) -> impl Iterator<Item = (u32, usize)> + '_ {
        self.values
            .iter()
            .zip(&*self.owners)
            .map(|(&value, &owner)| (value, owner as usize))
    }

    /// Where `key` falls on any ring: the hash its owner is looked up by.
    pub fn position(key: &str) -> u32 {
        hash_key(key)
    }

    /// The hash of `key` as every ring computes it (the same as [`position`](Self::position)):
    /// test it against a [`HashRange`] with [`HashRange::contains`].
    #[inline]
    pub fn hash(key: &str) -> u32 {
        hash_key(key)
    }

    /// The whole hash space cut into the ranges the servers own, in ascending order: each
    /// range with the index in [`servers`](Self::servers) of its owner, neighbours of the same
    /// owner merged. Together they cover `0..=u32::MAX` exactly once (an empty ring has none),
    /// and a key belongs to the owner of the range that contains its [`hash`](Self::hash), as
    /// [`get`](Self::get) finds it.
    pub fn ranges(&self) -> Vec<(HashRange, usize)> {
        let mut ranges: Vec<(HashRange, usize)> = Vec::new();
        if self.values.is_empty() {
            return ranges;
        }
        let mut push = |start: u32, end: u32, owner: usize| match ranges.last_mut() {
            Some((last, last_owner)) if *last_owner == owner => last.end = end,
            _ => ranges.push((HashRange { start, end }, owner)),
        };
        // Every comparison `find` makes is the same for all the hashes above one point value
        // up to and including the next (and for 0 up to the first): one owner each.
        let mut start = 0u32;
        let mut previous = None;
        for &value in self.values.iter() {
            if previous == Some(value) {
                continue;
            }
            previous = Some(value);
            push(start, value, self.owners[self.find(value)] as usize);
            match value.checked_add(1) {
                Some(next) => start = next,
                None => return ranges,
            }
        }
        push(start, u32::MAX, self.owners[self.find(u32::MAX)] as usize);
        ranges
    }

    /// The ranges of the hash space the server at `index` in [`servers`](Self::servers) owns,
    /// ascending (none for an out-of-range index).
    pub fn ranges_of(&self, index: usize) -> Vec<HashRange> {
        self.ranges()
            .into_iter()
            .filter(|&(_, owner)| owner == index)
            .map(|(range, _)| range)
            .collect()
    }

    /// `hashring`'s `find`, replicated exactly (including its fall-back to
    /// position 0). Must only be called on a non-empty ring.
    ///
    /// ```js
    /// while (true) {
    ///   mid = (low + high) >> 1;
    ///   if (mid === this.size) return 0;
    ///   middle = ring[mid].value;
    ///   prev = mid === 0 ? 0 : ring[mid - 1].value;
    ///   if (hashValue <= middle && hashValue > prev) return mid;
    ///   if (middle < hashValue) low = mid + 1; else high = mid - 1;
    ///   if (low > high) return 0;
    /// }
    /// ```
    #[inline]
    fn find(&self, hash: u32) -> usize {
        let values = &*self.values;
        let size = values.len() as isize;
        let mut low: isize = 0;
        let mut high: isize = size;
        // Invariant at the top of the loop: 0 <= low <= high <= size, so
        // 0 <= middle <= size and `high` only goes negative right before the
        // `low > high` exit.
        loop {
            let middle = (low + high) >> 1;
            if middle == size {
                return 0;
            }
            let mid = values[middle as usize];
            let prev = if middle == 0 {
                0
            } else {
                values[middle as usize - 1]
            };
            if hash <= mid && hash > prev {
                return middle as usize;
            }
            if mid < hash {
                low = middle + 1;
            } else {
                high = middle - 1;
            }
            if low > high {
                return 0;
            }
        }
    }
}

/// A range of the ring's hash space: the hashes from `start` up to and including `end`
/// (`start <= end`; a range never wraps around 0). See [`HashRing::ranges`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct HashRange {
    pub start: u32,
    pub end: u32,
}

impl HashRange {
    /// Whether `hash` (a key's [`HashRing::hash`]) lies in this range.
    #[inline]
    pub fn contains(&self, hash: u32) -> bool {
        self.start <= hash && hash <= self.end
    }

    /// Whether `key` hashes into this range.
    #[inline]
    pub fn contains_key(&self, key: &str) -> bool {
        self.contains(hash_key(key))
    }
}

impl fmt::Debug for HashRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRing")
            .field("servers", &self.servers)
            .field("points", &self.values.len())
            .finish()
    }
}

/// `hashValue(key)`: little-endian `u32` of the first four md5 bytes.
#[inline]
fn hash_key(key: &str) -> u32 {
    let x = Md5::digest(key.as_bytes());
    u32::from_le_bytes([x[0], x[1], x[2], x[3]])
}

/// Writes `n` in decimal (as JS's `'' + n` does for integers) into `buf`
/// and returns the digits.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("svc-{i}")).collect()
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..5_000).map(|i| format!("key-{i}"))
    }

    #[test]
    fn shares_cover_the_hash_space_as_lookups_do() {
        assert!(HashRing::default().shares().is_empty());
        let ring = HashRing::new(ids(3));
        let shares = ring.shares();
        assert_eq!(shares.len(), 3);
        assert!(
            (shares.iter().sum::<f64>() - 1.0).abs() < 1e-12,
            "{shares:?}"
        );
        // 20 000 keys land on each server about as often as its share says.
        let mut hits = [0usize; 3];
        for i in 0..20_000 {
            hits[ring.get_index(&format!("k{i}")).unwrap()] += 1;
        }
        for (share, hits) in shares.iter().zip(hits) {
            let seen = hits as f64 / 20_000.0;
            assert!(
                (seen - share).abs() < 0.02,
                "share {share} but {seen} of keys"
            );
        }
        // A key's position names the point that owns it: the first at or above it.
        let points: Vec<(u32, usize)> = ring.ring_points().collect();
        assert_eq!(points.len(), ring.points());
        for key in keys().take(500) {
            let at = HashRing::position(&key);
            let owner = points
                .iter()
                .find(|(value, _)| *value >= at)
                .unwrap_or(&points[0])
                .1;
            assert_eq!(Some(owner), ring.get_index(&key), "{key}");
        }
    }

    #[test]
    fn ranges_cover_the_hash_space_and_hold_their_owners_keys() {
        for n in [1, 2, 3, 7, 10] {
            let ring = HashRing::new(ids(n));
            let ranges = ring.ranges();
            assert_eq!(ranges[0].0.start, 0);
            assert_eq!(ranges.last().unwrap().0.end, u32::MAX);
            for pair in ranges.windows(2) {
                assert_eq!(
                    pair[0].0.end as u64 + 1,
                    pair[1].0.start as u64,
                    "{n}: contiguous"
                );
                assert_ne!(
                    pair[0].1, pair[1].1,
                    "{n}: neighbours of one owner are merged"
                );
            }
            let owner_of = |hash: u32| {
                ranges
                    .iter()
                    .find(|(r, _)| r.contains(hash))
                    .map(|&(_, owner)| owner)
                    .unwrap()
            };
            for key in keys() {
                assert_eq!(
                    Some(owner_of(HashRing::hash(&key))),
                    ring.get_index(&key),
                    "{key}"
                );
                let index = ring.get_index(&key).unwrap();
                assert!(ring.ranges_of(index).iter().any(|r| r.contains_key(&key)));
            }
            // The edges of every range, where an off-by-one would show.
            for &(range, owner) in &ranges {
                for hash in [range.start, range.end] {
                    assert_eq!(ring.owners[ring.find(hash)] as usize, owner, "{n}: {hash}");
                }
            }
        }
        assert!(HashRing::new(Vec::<String>::new()).ranges().is_empty());
    }

    #[test]
    fn empty_ring_returns_none() {
        let ring = HashRing::new(Vec::<String>::new());
        assert!(ring.is_empty());
        assert_eq!(ring.len(), 0);
        assert_eq!(ring.points(), 0);
        assert_eq!(ring.get("anything"), None);
        assert_eq!(ring.get_index(""), None);
        assert_eq!(HashRing::default().get("x"), None);
        assert_eq!(ring.points_of(0), 0);
    }

    #[test]
    fn single_server_owns_everything() {
        let ring = HashRing::new(["only"]);
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.points(), 160);
        for key in keys().chain(["".to_owned(), "ключ-日本".to_owned()]) {
            assert_eq!(ring.get(&key), Some("only"));
            assert_eq!(ring.get_index(&key), Some(0));
        }
    }

    #[test]
    fn point_counts() {
        let ring = HashRing::new(ids(3));
        assert_eq!(ring.points(), 480);
        for i in 0..3 {
            assert_eq!(ring.points_of(i), 160);
        }
        let ring = HashRing::new(ids(7));
        assert_eq!(ring.points(), 7 * 156);
        for i in 0..7 {
            assert_eq!(ring.points_of(i), 156);
        }
        assert_eq!(ring.points_of(7), 0);
    }

    #[test]
    fn points_are_sorted_and_owned() {
        let ring = HashRing::new(ids(50));
        assert!(ring.values.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ring.values.len(), ring.owners.len());
        assert!(ring.owners.iter().all(|&o| (o as usize) < ring.len()));
    }

    #[test]
    fn removing_a_server_only_moves_its_keys() {
        let all = ids(10);
        let full = HashRing::new(&all);
        for removed in [0, 4, 9] {
            let rest: Vec<&String> = all.iter().filter(|s| **s != all[removed]).collect();
            let smaller = HashRing::new(&rest);
            let mut moved = 0;
            for key in keys() {
                let before = full.get(&key).unwrap();
                let after = smaller.get(&key).unwrap();
                if before == all[removed] {
                    moved += 1;
                    assert_ne!(after, all[removed]);
                } else {
                    assert_eq!(before, after, "key {key} moved without cause");
                }
            }
            assert!(moved > 0, "removed server owned no keys");
        }
    }

    #[test]
    fn duplicates_are_removed_keeping_first_occurrence() {
        let ring = HashRing::new(["b", "a", "b", "c", "a"]);
        let servers: Vec<&str> = ring.servers().iter().map(|s| &**s).collect();
        assert_eq!(servers, ["b", "a", "c"]);
        assert_eq!(ring.points(), 3 * 160);
        let plain = HashRing::new(["b", "a", "c"]);
        for key in keys() {
            assert_eq!(ring.get(&key), plain.get(&key));
            assert_eq!(ring.get_index(&key), plain.get_index(&key));
        }
    }

    #[test]
    fn proto_server_gets_no_points() {
        let ring = HashRing::new(["a", "__proto__", "b"]);
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.points(), 320);
        assert_eq!(ring.points_of(1), 0);
        assert!(keys().all(|k| ring.get(&k) != Some("__proto__")));
        assert_eq!(HashRing::new(["__proto__"]).get("x"), None);
    }

    #[test]
    fn get_index_matches_get() {
        let ring = HashRing::new(ids(16));
        for key in keys() {
            let index = ring.get_index(&key).unwrap();
            assert_eq!(ring.get(&key), Some(&*ring.servers()[index]));
            assert_eq!(ring.get_index_of_hash(HashRing::hash(&key)), Some(index));
        }
        assert_eq!(HashRing::default().get_index_of_hash(7), None);
    }

    /// `find` on hand-made rings with repeated values, against the positions
    /// hashring 3.2.0's own `find` returns for `h` in `0..=max + 1` (recorded
    /// by setting `ring.ring`/`ring.size` on a real instance in node).
    #[test]
    fn find_matches_hashring_on_ties() {
        let cases: [(&[u32], &[usize]); 4] = [
            (&[5, 5, 5, 10], &[0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 0]),
            (
                &[3, 7, 7, 7, 7, 9, 20],
                &[
                    0, 0, 0, 0, 1, 1, 1, 1, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 0,
                ],
            ),
            (&[0, 0, 4], &[0, 2, 2, 2, 2, 0]),
            (&[1, 2, 2, 2, 2, 2, 2, 2, 3], &[0, 0, 1, 8, 0]),
        ];
        for (values, expected) in cases {
            let ring = HashRing {
                servers: Box::new([Arc::from("x")]),
                values: values.into(),
                owners: vec![0; values.len()].into(),
            };
            let got: Vec<usize> = (0..expected.len() as u32).map(|h| ring.find(h)).collect();
            assert_eq!(got, expected, "ring {values:?}");
        }
        let ring = HashRing::new(ids(3));
        assert_eq!(ring.find(0), 0);
        assert_eq!(ring.find(u32::MAX), 0);
        let last = ring.values[ring.values.len() - 1];
        assert_eq!(ring.find(last), ring.values.len() - 1);
    }

    #[test]
    fn decimal_formatting() {
        let mut buf = [0u8; 20];
        for n in [0, 7, 10, 39, 123_456, usize::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
