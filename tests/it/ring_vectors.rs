//! Placement vectors recorded from npm `hashring` 3.2.0 (default options), as
//! used by the original `@github1/meshage`: `meshage::HashRing` must pick the
//! same owner for every key and give every server the same number of points.

use serde::Deserialize;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/hashring-3.2.0-vectors.json"
);

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    services: Vec<String>,
    ring_points: Vec<usize>,
    keys: Vec<String>,
    owners: Vec<String>,
}

#[test]
fn placement_matches_hashring_3_2_0() {
    let text =
        std::fs::read_to_string(VECTORS).unwrap_or_else(|e| panic!("cannot read {VECTORS}: {e}"));
    let vectors: Vectors = serde_json::from_str(&text).expect("malformed vectors file");

    let mut cases = 0;
    let mut keys = 0;
    let mut failures = Vec::new();
    for (index, case) in vectors.cases.iter().enumerate() {
        assert_eq!(
            case.services.len(),
            case.ring_points.len(),
            "case {index}: services and ring_points differ in length"
        );
        assert_eq!(
            case.keys.len(),
            case.owners.len(),
            "case {index}: keys and owners differ in length"
        );

        let ring = meshage::HashRing::new(&case.services);
        assert_eq!(
            ring.len(),
            case.services.len(),
            "case {index}: unexpected server count"
        );
        let points: Vec<usize> = (0..ring.len()).map(|i| ring.points_of(i)).collect();
        assert_eq!(
            points,
            case.ring_points,
            "case {index}: points per server differ ({} services)",
            case.services.len()
        );
        assert_eq!(ring.points(), case.ring_points.iter().sum::<usize>());

        for (key, owner) in case.keys.iter().zip(&case.owners) {
            let got = ring.get(key);
            if got != Some(owner.as_str()) {
                failures.push(format!(
                    "case {index} ({} services): key {key:?}: expected {owner:?}, got {got:?}",
                    case.services.len()
                ));
            }
            keys += 1;
        }
        cases += 1;
    }

    assert!(
        failures.is_empty(),
        "{} of {keys} keys placed differently from hashring 3.2.0:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cases >= 27, "only {cases} cases checked");
    assert!(keys >= 5_400, "only {keys} keys checked");
    eprintln!("checked {cases} cases, {keys} keys");
}
