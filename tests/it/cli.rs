//! The command line's conventions, through the built binary: `meshage node --config FILE` and
//! its precedence, `--print-config`, one-line errors, help that lists enumerated values and
//! every variable the binary reads, durations with units, completions, man pages, the version's
//! commit, and `NO_COLOR`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::common::proc::Proc;
use crate::common::process::{meshage_cli, run, CliRun};
use crate::common::{meshage_command, wait_until, Http, MESHAGE};

/// A file in a fresh temporary directory, removed on drop.
struct TempFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("meshage-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The line of `--print-config` output for `key`, without its source comment, and its source.
fn setting<'a>(run: &'a CliRun, key: &str) -> (&'a str, &'a str) {
    let prefix = format!("{key} = ");
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{key}` in {run:?}"));
    let (value, source) = line[prefix.len()..]
        .split_once("  # ")
        .unwrap_or_else(|| panic!("no source in {line:?}"));
    (value, source)
}

#[track_caller]
fn assert_one_error_line(run: &CliRun, mentions: &[&str]) {
    assert_eq!(run.code, 2, "{run:?}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {run:?}");
    assert!(lines[0].starts_with("meshage: error: "), "{run:?}");
    for word in mentions {
        assert!(lines[0].contains(word), "{word:?} not in {:?}", lines[0]);
    }
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults() {
    let file = TempFile::new(
        "meshage.toml",
        "http-port = 1111\nbody-limit = 2222\nrequest-timeout = \"3s\"\necho = [\"a\", \"b\"]\nseeds = [\"10.0.0.1:9742\"]\n",
    );
    let run = meshage_cli(
        &[
            "node",
            "--config",
            file.path(),
            "--print-config",
            "--http-port",
            "6666",
        ],
        &[("HTTP_PORT", "4444"), ("MESHAGE_BODY_LIMIT", "5555")],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(setting(&run, "http-port"), ("6666", "--http-port"));
    assert_eq!(setting(&run, "body-limit"), ("5555", "MESHAGE_BODY_LIMIT"));
    assert_eq!(setting(&run, "request-timeout"), ("\"3s\"", "config file"));
    assert_eq!(setting(&run, "echo"), ("[\"a\", \"b\"]", "config file"));
    assert_eq!(setting(&run, "drain-timeout"), ("10", "default"));
    // The original's second names of variables beat the file as well.
    let run = meshage_cli(
        &["node", "--print-config"],
        &[
            ("MESHAGE_CONFIG", file.path()),
            ("SEED", "10.9.9.9:1"),
            ("SERVICE_PORT", "7777"),
        ],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(setting(&run, "seeds"), ("[\"10.9.9.9:1\"]", "SEED"));
    assert_eq!(setting(&run, "http-port"), ("7777", "SERVICE_PORT"));
    assert_eq!(setting(&run, "body-limit"), ("2222", "config file"));
    // A setting of the file gives way to a flag or variable it conflicts with.
    let file = TempFile::new("keyring.toml", "keyring = \"/nonexistent/keyring\"\n");
    let run = meshage_cli(
        &["node", "--config", file.path(), "--print-config"],
        &[("MESHAGE_CLUSTER_KEY", "c2VjcmV0")],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        setting(&run, "cluster-key"),
        ("\"***\"", "MESHAGE_CLUSTER_KEY")
    );
    assert!(run.stdout.contains("# keyring: not set"), "{run:?}");
}

#[test]
fn unknown_keys_and_bad_values_are_one_line_naming_the_key_and_the_file() {
    let cases = [
        ("bogus-flag = 1\n", "bogus-flag"),
        ("http_port = 1\n", "http_port"),
        ("health-failures = 0\n", "health-failures"),
        ("request-timeout = \"10 fortnights\"\n", "request-timeout"),
        ("cluster-type = \"zookeeper\"\n", "cluster-type"),
        ("http-port = [1, 2]\n", "http-port"),
        ("[node]\nhttp-port = 1\n", "node"),
        ("print-config = true\n", "print-config"),
    ];
    for (text, key) in cases {
        let file = TempFile::new("bad.toml", text);
        let run = meshage_cli(&["node", "--config", file.path()], &[], None);
        assert_one_error_line(&run, &[file.path(), &format!("`{key}`")]);
    }
    // A bad value is refused even where a flag overrides it.
    let file = TempFile::new("overridden.toml", "health-failures = 0\n");
    let run = meshage_cli(
        &["node", "--config", file.path(), "--health-failures", "3"],
        &[],
        None,
    );
    assert_one_error_line(&run, &[file.path(), "`health-failures`"]);
    let file = TempFile::new("broken.toml", "http-port = 1\nseeds = [\n");
    let run = meshage_cli(&["node", "--config", file.path()], &[], None);
    assert_one_error_line(&run, &[file.path(), "line 2", "not TOML"]);
    let run = meshage_cli(
        &["node", "--config", "/nonexistent/meshage.toml"],
        &[],
        None,
    );
    assert_one_error_line(&run, &["/nonexistent/meshage.toml"]);
}

#[test]
fn print_config_masks_secrets_from_the_file_the_environment_and_flags() {
    const KEY: &str = "c2VjcmV0LWNsdXN0ZXIta2V5LWZvci10ZXN0cw==";
    const TOKEN: &str = "consul-token-never-shown";
    let file = TempFile::new("secret.toml", &format!("cluster-key = \"{KEY}\"\n"));
    let run = meshage_cli(
        &["node", "--config", file.path(), "--print-config"],
        &[("CONSUL_HTTP_TOKEN", TOKEN)],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(setting(&run, "cluster-key"), ("\"***\"", "config file"));
    assert_eq!(
        setting(&run, "consul-token"),
        ("\"***\"", "CONSUL_HTTP_TOKEN")
    );
    let run = meshage_cli(&["node", "--print-config", "--cluster-key", KEY], &[], None);
    assert_eq!(setting(&run, "cluster-key"), ("\"***\"", "--cluster-key"));
    for output in [&run.stdout, &run.stderr] {
        assert!(!output.contains(KEY) && !output.contains(TOKEN), "{run:?}");
    }
}

#[test]
fn the_example_config_file_is_taken_whole() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/meshage.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let run = meshage_cli(
        &[
            "node",
            "--config",
            example.to_str().unwrap(),
            "--print-config",
        ],
        &[],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    let keys = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" = "))
        .map(|l| l.split(" = ").next().unwrap());
    for key in keys {
        assert_eq!(setting(&run, key).1, "config file", "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_from_a_config_file_serves() {
    let key = meshage_cli(&["keygen"], &[], None).stdout.trim().to_owned();
    let file = TempFile::new(
        "node.toml",
        &format!("http-host = \"127.0.0.1\"\nhttp-port = 0\ncluster-host = \"127.0.0.1\"\ncluster-port = 0\necho = [\"from-file\"]\nrequest-timeout = \"5s\"\ncluster-key = \"{key}\"\n"),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = meshage_command();
    command.args(["node", "--config", file.path()]);
    let node = Proc::spawn("node from a file", command);
    let line = node.wait_line(Duration::from_secs(20), |l| l.starts_with("meshage node "));
    let endpoint = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no endpoint in {line:?}"));
    let answer = Http::default()
        .post(
            &format!("{endpoint}/api/from-file/k"),
            r#"{"hello":"file"}"#,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json(), json!({"echoed": {"hello": "file"}}));
    // The key from the file seals gossip; a file others may read is warned of, the key not shown.
    wait_until(
        Duration::from_secs(5),
        "the node logs its key and the warning",
        || {
            let output = node.output();
            output.contains("gossip sealed") && output.contains("other users may read it")
        },
    )
    .await;
    assert!(!node.output().contains(&key), "{}", node.output());
}

#[test]
fn a_bad_flag_is_one_line_and_exit_code_2() {
    assert_one_error_line(
        &meshage_cli(&["node", "--ech", "x"], &[], None),
        &["--ech", "--echo"],
    );
    assert_one_error_line(
        &meshage_cli(&["node", "--peer-protocol", "smoke"], &[], None),
        &["smoke", "link, http1, http2"],
    );
    assert_one_error_line(
        &meshage_cli(&["node", "--drain-timeout", "10x"], &[], None),
        &["--drain-timeout", "unknown unit"],
    );
    assert_one_error_line(&meshage_cli(&["send"], &[], None), &["STREAM"]);
    // No command at all: the help, on stderr.
    for args in [&[][..], &["certs"]] {
        let run = meshage_cli(args, &[], None);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains("\nCommands:\n"), "{run:?}");
        assert!(!run.stderr.contains("meshage: error"), "{run:?}");
    }
    assert_one_error_line(&meshage_cli(&["frobnicate"], &[], None), &["frobnicate"]);
}

#[test]
fn durations_take_units() {
    let run = meshage_cli(
        &[
            "node",
            "--print-config",
            "--drain-timeout",
            "1500ms",
            "--idle-timeout",
            "2m",
        ],
        &[("MESHAGE_REQUEST_TIMEOUT", "0.5")],
        None,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(setting(&run, "drain-timeout").0, "\"1500ms\"");
    assert_eq!(setting(&run, "idle-timeout").0, "\"2m\"");
    assert_eq!(setting(&run, "request-timeout").0, "0.5");
}

/// `--help` of meshage and of every command and subcommand.
fn every_help() -> String {
    let mut all = String::new();
    let mut pending = vec![Vec::<String>::new()];
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let run = meshage_cli(&args, &[], None);
        assert_eq!(run.code, 0, "{run:?}");
        let commands = run
            .stdout
            .split("Commands:\n")
            .nth(1)
            .map(|rest| rest.split("\n\n").next().unwrap_or_default())
            .unwrap_or_default();
        // A command's line starts with two spaces; its description's next lines, with more.
        for line in commands.lines().filter(|l| !l.starts_with("   ")) {
            let name = line.split_whitespace().next().unwrap_or_default();
            if !name.is_empty() && name != "help" {
                let mut sub = path.clone();
                sub.push(name.to_owned());
                pending.push(sub);
            }
        }
        all.push_str(&run.stdout);
    }
    all
}

/// The variables named in reads of the environment in `dir`'s Rust sources: `env::var("X")`,
/// `env::var_os("X")` and clap's `env = "X"`.
fn variables_read_in(dir: &Path, into: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            variables_read_in(&path, into);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for marker in ["env::var(\"", "env::var_os(\"", "env = \""] {
            for (i, _) in text.match_indices(marker) {
                let rest = &text[i + marker.len()..];
                let name = &rest[..rest.find('"').unwrap()];
                into.push(name.to_owned());
            }
        }
    }
}

#[test]
fn every_variable_the_binary_reads_is_in_some_help() {
    let mut variables = Vec::new();
    variables_read_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut variables,
    );
    // Read for the binary by tracing-subscriber.
    variables.push("RUST_LOG".to_owned());
    for known in [
        "MESHAGE_THREADS",
        "SEED",
        "SERVICE_PORT",
        "NO_COLOR",
        "MESHAGE_CONFIG",
    ] {
        assert!(
            variables.iter().any(|v| v == known),
            "the scan missed {known}"
        );
    }
    let help = every_help();
    let missing: Vec<&String> = variables
        .iter()
        .filter(|v| !help.contains(v.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in any --help: {missing:?}");
}

#[test]
fn enumerated_values_are_listed_in_help() {
    let help = meshage_cli(&["node", "--help"], &[], None).stdout;
    // clap wraps lines at 100 columns.
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for values in [
        "[possible values: gossip, etcd, consul]",
        "[possible values: link, http1, http2]",
        "[possible values: text, json]",
    ] {
        assert!(help.contains(values), "{values} not in:\n{help}");
    }
}

#[test]
fn completions_are_made_for_bash_zsh_and_fish_and_bash_parses_its_own() {
    for shell in ["bash", "zsh", "fish"] {
        let run = meshage_cli(&["completions", shell], &[], None);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains("print-config"), "{shell}: {run:?}");
    }
    let script = TempFile::new(
        "meshage.bash",
        &meshage_cli(&["completions", "bash"], &[], None).stdout,
    );
    let mut bash = Command::new("bash");
    bash.args(["-n", script.path()]);
    let checked = run(bash, None);
    assert_eq!(checked.code, 0, "bash -n: {checked:?}");
}

#[test]
fn man_pages_render() {
    for args in [&["man"][..], &["man", "node"]] {
        let run = meshage_cli(args, &[], None);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains("\n.TH "), "{args:?}: {run:?}");
    }
    let page = meshage_cli(&["man", "node"], &[], None).stdout;
    assert!(page.contains("print\\-config"), "{page}");
    // With man-db (Debian's `man`), the page reads as a page.
    if Command::new("man")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let file = TempFile::new("meshage-node.1", &page);
        let mut man = Command::new("man");
        man.args(["-l", file.path()])
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat");
        let shown = run(man, None);
        assert_eq!(shown.code, 0, "{shown:?}");
        assert!(shown.stdout.contains("meshage-node"), "{shown:?}");
    }
    let run = meshage_cli(&["man", "nodes"], &[], None);
    assert_ne!(run.code, 0, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.starts_with("meshage: error: no command `nodes`"),
        "{run:?}"
    );
}

#[test]
fn the_version_names_the_commit_in_a_checkout() {
    let run = meshage_cli(&["--version"], &[], None);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .starts_with(&format!("meshage {}", env!("CARGO_PKG_VERSION"))),
        "{run:?}"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let head = Command::new("git")
        .args(["-C", root, "rev-parse", "--short=12", "HEAD"])
        .output();
    match head {
        Ok(out) if Path::new(root).join(".git").exists() && out.status.success() => {
            let commit = String::from_utf8(out.stdout).unwrap();
            assert!(
                run.stdout.contains(&format!("(commit {})", commit.trim())),
                "{run:?}"
            );
        }
        // A tarball or no git: the version alone.
        _ => assert_eq!(
            run.stdout.trim(),
            format!("meshage {}", env!("CARGO_PKG_VERSION"))
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_color_turns_colours_off_in_logs_and_help() {
    const ESC: char = '\u{1b}';
    for no_color in [false, true] {
        let mut command = Command::new(MESHAGE);
        command
            .env_clear()
            .env("RUST_LOG", "info")
            .env("CLICOLOR_FORCE", "1")
            .args(["node", "--http-host", "127.0.0.1", "--http-port", "0"])
            .args(["--cluster-host", "127.0.0.1", "--cluster-port", "0"]);
        if no_color {
            command.env("NO_COLOR", "1");
        }
        let node = Proc::spawn("node", command);
        wait_until(Duration::from_secs(20), "the node logs its start", || {
            node.output().contains("node started")
        })
        .await;
        assert_eq!(
            node.output().contains(ESC),
            !no_color,
            "NO_COLOR={no_color}: {}",
            node.output()
        );

        let mut help = Command::new(MESHAGE);
        help.env_clear()
            .env("CLICOLOR_FORCE", "1")
            .args(["node", "--help"]);
        if no_color {
            help.env("NO_COLOR", "1");
        }
        let help = run(help, None);
        assert_eq!(
            help.stdout.contains(ESC),
            !no_color,
            "NO_COLOR={no_color}: {help:?}"
        );
    }
}
