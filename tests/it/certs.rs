//! `meshage certs`: a CA and node certificates from the command line, as operators without a
//! PKI make them.

use std::os::unix::fs::PermissionsExt;

use crate::common::process::meshage_cli;

#[test]
fn certs_makes_a_ca_and_node_certificates_with_private_keys() {
    let dir = std::env::temp_dir().join(format!("meshage-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ca, nodes) = (dir.join("ca"), dir.join("nodes"));
    let run = meshage_cli(&["certs", "ca", "--out", ca.to_str().unwrap()], &[], None);
    assert_eq!(run.code, 0, "{run:?}");
    let run = meshage_cli(
        &[
            "certs",
            "node",
            "--ca",
            ca.to_str().unwrap(),
            "--name",
            "n1",
            "--host",
            "10.1.2.3",
            "--host",
            "n1.internal",
            "--out",
            nodes.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    for (file, begins) in [
        (ca.join("ca.pem"), "-----BEGIN CERTIFICATE-----"),
        (ca.join("ca-key.pem"), "-----BEGIN PRIVATE KEY-----"),
        (nodes.join("n1.pem"), "-----BEGIN CERTIFICATE-----"),
        (nodes.join("n1-key.pem"), "-----BEGIN PRIVATE KEY-----"),
    ] {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with(begins), "{}: {text}", file.display());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        if file.to_str().unwrap().ends_with("-key.pem") {
            assert_eq!(
                mode,
                0o600,
                "{} is readable by its owner only",
                file.display()
            );
        }
    }
    // Another CA's key cannot sign for this CA.
    let other = dir.join("other");
    assert_eq!(
        meshage_cli(
            &["certs", "ca", "--out", other.to_str().unwrap()],
            &[],
            None
        )
        .code,
        0
    );
    std::fs::copy(other.join("ca-key.pem"), ca.join("ca-key.pem")).unwrap();
    let run = meshage_cli(
        &[
            "certs",
            "node",
            "--ca",
            ca.to_str().unwrap(),
            "--name",
            "n2",
            "--out",
            nodes.to_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("does not verify against ca.pem"),
        "{run:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
