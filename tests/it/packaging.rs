//! What crates.io users get: a `rust-version` that is true of the dependencies the crate
//! builds, and a package that ships what it builds from.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::process::run;

/// `1.85` or `1.85.0` as numbers; `None` when absent.
fn version(text: Option<&str>) -> Option<(u64, u64, u64)> {
    let mut parts = text?.trim().split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// `cargo metadata` of the package, every feature on, dependencies for this host only.
fn metadata() -> Value {
    let host = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8(host.stdout).unwrap();
    let host = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("a host line in rustc -vV")
        .to_owned();
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "metadata",
            "--locked",
            "--format-version",
            "1",
            "--all-features",
        ])
        .args(["--filter-platform", &host]);
    let out = run(cargo, None);
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn rust_version_is_the_highest_of_the_dependencies_built_and_not_above_this_rustc() {
    let metadata = metadata();
    let packages: BTreeMap<&str, &Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p))
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = metadata["resolve"]["root"]
        .as_str()
        .expect("a root package");
    // Everything built for the library and the binary: normal and build dependencies, with
    // theirs, not dev-dependencies (tests and benches only).
    let mut built = vec![root];
    let mut pending = vec![root];
    while let Some(id) = pending.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let used = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].as_str() != Some("dev"));
            let dep_id = dep["pkg"].as_str().unwrap();
            if used && !built.contains(&dep_id) {
                built.push(dep_id);
                pending.push(dep_id);
            }
        }
    }
    let (needed, by) = built[1..]
        .iter()
        .filter_map(|id| {
            let p = packages[id];
            version(p["rust_version"].as_str()).map(|v| (v, p["name"].as_str().unwrap()))
        })
        .max()
        .expect("some dependency states a rust-version");
    assert!(built.len() > 50, "the walk found only {built:?}");
    let ours = packages[root]["rust_version"].as_str();
    let declared = version(ours).expect("Cargo.toml states a rust-version");
    assert_eq!(
        (declared.0, declared.1),
        (needed.0, needed.1),
        "Cargo.toml says rust-version {ours:?}, but {by} needs {}.{}",
        needed.0,
        needed.1
    );
    let rustc = Command::new("rustc").arg("--version").output().unwrap();
    let rustc = String::from_utf8(rustc.stdout).unwrap();
    let running = version(rustc.split_whitespace().nth(1)).expect("rustc X.Y.Z");
    assert!(
        declared <= running,
        "rust-version {ours:?} is above {rustc}"
    );
}

#[test]
fn the_package_ships_what_it_builds_from_and_no_tests() {
    let mut cargo = Command::new(env!("CARGO"));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "package",
        "--list",
        "--allow-dirty",
        "--offline",
    ]);
    let out = run(cargo, None);
    assert_eq!(out.code, 0, "{out:?}");
    let files: Vec<&str> = out.stdout.lines().collect();
    for needed in [
        "Cargo.toml",
        "build.rs",
        "LICENSE",
        "README.md",
        "src/lib.rs",
        "src/admin/openapi.json",
        "src/bin/meshage/main.rs",
        "examples/meshage.toml",
    ] {
        assert!(
            files.contains(&needed),
            "{needed} is not packaged: {files:#?}"
        );
    }
    // Every file under src/ is in the package.
    fn walk(dir: &Path, into: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, into);
            } else {
                into.push(path.to_str().unwrap().to_owned());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    walk(&root.join("src"), &mut sources);
    for source in &sources {
        let relative = source
            .strip_prefix(root.to_str().unwrap())
            .unwrap()
            .trim_start_matches('/');
        assert!(files.contains(&relative), "{relative} is not packaged");
    }
    let stray: Vec<&&str> = files
        .iter()
        .filter(|f| {
            ["tests/", "benches/", "fuzz/", "scripts/", "target/"]
                .iter()
                .any(|d| f.starts_with(d))
        })
        .collect();
    assert!(stray.is_empty(), "packaged but not needed: {stray:?}");
}
