//! What `deploy/` holds, checked as far as this machine can without a container engine or a
//! Kubernetes cluster: every manifest parses (PyYAML, Debian's python3-yaml), the pieces
//! that must fit each other do, every flag and variable the files give `meshage node` is one
//! that `meshage node --help` lists, and the systemd unit passes `systemd-analyze verify`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::process::{meshage_cli, run};
use crate::common::MESHAGE;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// The documents of a YAML file, parsed by PyYAML and handed over as JSON.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let mut command = Command::new("python3");
    command.args([
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
    ]);
    command.arg(path);
    let parsed = run(command, None);
    assert_eq!(
        parsed.code,
        0,
        "{} does not parse: {}",
        path.display(),
        parsed.stderr
    );
    let documents: Vec<Value> = serde_json::from_str(&parsed.stdout).unwrap();
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// Every Kubernetes object of `deploy/kubernetes/`.
fn manifests() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        assert_eq!(file.extension().unwrap(), "yaml", "{}", file.display());
        for object in yaml_documents(&file) {
            for field in ["apiVersion", "kind"] {
                assert!(object[field].is_string(), "{}: no {field}", file.display());
            }
            assert!(object["metadata"]["name"].is_string(), "{}", file.display());
            objects.push(object);
        }
    }
    objects
}

fn the<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes/"))
}

/// `meshage node --help`: the flags (`--name`) and variables (`[env: NAME=`) it lists.
fn node_help() -> (BTreeSet<String>, BTreeSet<String>) {
    let help = meshage_cli(&["node", "--help"], &[], None);
    assert_eq!(help.code, 0, "{}", help.stderr);
    let words = |prefix: &str| -> BTreeSet<String> {
        help.stdout
            .split(prefix)
            .skip(1)
            .map(|rest| {
                // Help is wrapped: `[env:` may end a line.
                rest.trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect()
            })
            .collect()
    };
    (words("--"), words("[env:"))
}

/// The `meshage node` flags in `args` (`--flag` or `--flag=value`).
fn flags_of<'a>(args: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    args.into_iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|f| f.split('=').next().unwrap().to_owned())
        .collect()
}

/// The Kubernetes objects fit each other: the StatefulSet's pods advertise their IP, seed
/// from the headless Service that lists them before they are ready, are probed on `/readyz`
/// and `/livez`, and have the grace to drain; the budget and the Services select them.
#[test]
fn the_kubernetes_manifests_parse_and_fit_together() {
    let objects = manifests();
    let set = the(&objects, "StatefulSet", "meshage");
    let peers = the(&objects, "Service", "meshage-peers");
    let clients = the(&objects, "Service", "meshage");
    let budget = the(&objects, "PodDisruptionBudget", "meshage");
    let labels = &set["spec"]["template"]["metadata"]["labels"];
    for selector in [
        &set["spec"]["selector"]["matchLabels"],
        &budget["spec"]["selector"]["matchLabels"],
        &peers["spec"]["selector"],
        &clients["spec"]["selector"],
    ] {
        assert_eq!(selector, labels);
    }
    assert_eq!(peers["spec"]["clusterIP"], "None", "headless");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(set["spec"]["serviceName"], "meshage-peers");

    let pod = &set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in the container's env"))
            .clone()
    };
    assert_eq!(
        env("MESHAGE_ADVERTISE_HOST")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let seeds = env("SEEDS")["value"].as_str().unwrap().to_owned();
    let gossip_port = env("CLUSTER_PORT")["value"].as_str().unwrap().to_owned();
    assert!(
        seeds.starts_with("meshage-peers.") && seeds.ends_with(&format!(":{gossip_port}")),
        "{seeds}"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    let pre_stop = &container["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pre_stop[0], "sleep");
    let pause: u64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    let drain: u64 = env("MESHAGE_DRAIN_TIMEOUT")["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        pause + 1 + drain < grace,
        "preStop {pause} s + leaving + drain {drain} s must fit in the grace period {grace} s"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
}

/// Every flag and variable `deploy/` gives `meshage node` is one it has; variables that only
/// feed another's value (`$(POD_NAMESPACE)`) are Kubernetes', not meshage's.
#[test]
fn every_flag_and_variable_in_deploy_is_in_node_help() {
    let (flags, variables) = node_help();
    assert!(flags.contains("advertise-host") && variables.contains("SEEDS"));
    let mut used_flags = Vec::new();
    let mut used_variables = Vec::new();

    // Kubernetes: the container's arguments and environment.
    for object in manifests() {
        let Some(containers) = object["spec"]["template"]["spec"]["containers"].as_array() else {
            continue;
        };
        for container in containers {
            let args = container["args"].as_array().into_iter().flatten();
            used_flags.extend(flags_of(args.filter_map(Value::as_str)));
            let env = container["env"].as_array().cloned().unwrap_or_default();
            let text = serde_json::to_string(&env).unwrap();
            for entry in &env {
                let name = entry["name"].as_str().unwrap();
                if !text.contains(&format!("$({name})")) {
                    used_variables.push(name.to_owned());
                }
            }
        }
    }
    // systemd: ExecStart's flags and the Environment= assignments.
    for line in read("systemd/meshage.service").lines() {
        if let Some(command) = line.strip_prefix("ExecStart=") {
            used_flags.extend(flags_of(command.split_whitespace()));
        }
        if let Some(assignments) = line.strip_prefix("Environment=") {
            for assignment in assignments.split_whitespace() {
                used_variables.push(assignment.split('=').next().unwrap().to_owned());
            }
        }
    }
    // Docker: ENV and the command.
    for line in read("Dockerfile").lines() {
        if let Some(assignments) = line.strip_prefix("ENV ") {
            for assignment in assignments.split_whitespace() {
                used_variables.push(assignment.split('=').next().unwrap().to_owned());
            }
        }
        if let Some(command) = line.strip_prefix("CMD ") {
            let command: Vec<String> = serde_json::from_str(command).unwrap();
            used_flags.extend(flags_of(command.iter().map(String::as_str)));
        }
    }
    // And every MESHAGE_ variable named anywhere, comments included.
    for file in ["Dockerfile", "systemd/meshage.service", "kubernetes"] {
        let path = deploy(file);
        let texts: Vec<String> = if path.is_dir() {
            std::fs::read_dir(&path)
                .unwrap()
                .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                .collect()
        } else {
            vec![std::fs::read_to_string(&path).unwrap()]
        };
        for text in texts {
            for rest in text.split("MESHAGE_").skip(1) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                // `MESHAGE_*` in prose names no variable.
                if !name.is_empty() {
                    used_variables.push(format!("MESHAGE_{name}"));
                }
            }
        }
    }

    assert!(used_flags.contains(&"echo".to_owned()), "{used_flags:?}");
    assert!(used_variables.len() > 8, "{used_variables:?}");
    let unknown_flags: Vec<&String> = used_flags.iter().filter(|f| !flags.contains(*f)).collect();
    let unknown_variables: Vec<&String> = used_variables
        .iter()
        .filter(|v| !variables.contains(*v))
        .collect();
    assert!(
        unknown_flags.is_empty() && unknown_variables.is_empty(),
        "not in `meshage node --help`: flags {unknown_flags:?}, variables {unknown_variables:?}"
    );
}

/// The unit passes `systemd-analyze verify` without a word, run on a copy whose ExecStart is
/// the binary these tests built (verify wants it to exist). Skipped where systemd-analyze is
/// not installed.
#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: no systemd-analyze on this machine");
        return;
    }
    let unit = read("systemd/meshage.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/meshage node"));
    let copy = unit.replace("/usr/local/bin/meshage", MESHAGE);
    let dir = std::env::temp_dir().join(format!("meshage-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("meshage.service");
    std::fs::write(&path, copy).unwrap();
    let mut command = Command::new("systemd-analyze");
    command.arg("verify").arg(&path);
    let verified = run(command, None);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(verified.code, 0, "{}", verified.stderr);
    assert_eq!(verified.stderr.trim(), "", "systemd-analyze has remarks");
    for sandboxing in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(sandboxing), "{sandboxing}");
    }
}
