//! Real processes for tests: `meshage node`, the `meshage` client commands and the example
//! handlers under `examples/`. Every process is killed when its guard drops, and every wait has
//! a deadline; a failing test prints what its processes wrote.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::command::meshage_command;
use super::proc::{blocking, Proc};

/// How long a process may take to print its first line.
const STARTUP: Duration = Duration::from_secs(20);

/// An example handler process and the URL it serves.
pub struct HandlerProc {
    pub proc: Proc,
    pub url: String,
    pub port: u16,
}

fn handler(name: &str, program: &str, script: &str, port: u16) -> HandlerProc {
    handler_env(name, program, script, port, &[])
}

fn handler_env(
    name: &str,
    program: &str,
    script: &str,
    port: u16,
    env: &[(&str, &str)],
) -> HandlerProc {
    let mut command = Command::new(program);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg(script)
        .arg(port.to_string())
        .envs(env.iter().copied());
    let proc = Proc::spawn(name, command);
    let line = proc.wait_line(STARTUP, |l| l.starts_with("listening on "));
    let url = line["listening on ".len()..].trim().to_owned();
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no port in `{line}`"));
    HandlerProc { proc, url, port }
}

/// Starts `examples/handler.py` on `port` (0: any free port).
pub fn python_handler(port: u16) -> HandlerProc {
    handler("python handler", "python3", "examples/handler.py", port)
}

/// [`python_handler`] with environment variables set.
pub fn python_handler_env(port: u16, env: &[(&str, &str)]) -> HandlerProc {
    handler_env(
        "python handler",
        "python3",
        "examples/handler.py",
        port,
        env,
    )
}

/// Starts `examples/handler.js` on `port` (0: any free port).
pub fn node_handler(port: u16) -> HandlerProc {
    handler("node handler", "node", "examples/handler.js", port)
}

/// A `meshage node` process on 127.0.0.1 with OS-chosen ports.
pub struct NodeProc {
    pub proc: Proc,
    pub id: String,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    /// Its gossip address, for `--seeds`.
    pub seed: String,
}

/// Starts `meshage node` joining through `seeds`, with `args` added.
pub fn meshage_node(name: &str, seeds: &[&str], args: &[&str]) -> NodeProc {
    meshage_node_env(name, seeds, args, &[])
}

/// [`meshage_node`] with environment variables set (or overridden, such as `RUST_LOG`).
pub fn meshage_node_env(
    name: &str,
    seeds: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> NodeProc {
    let mut command = meshage_command();
    command.envs(env.iter().copied());
    command.args([
        "node",
        "--http-host",
        "127.0.0.1",
        "--http-port",
        "0",
        "--cluster-host",
        "127.0.0.1",
        "--cluster-port",
        "0",
    ]);
    if !seeds.is_empty() {
        command.arg("--seeds").arg(seeds.join(","));
    }
    command.args(args);
    let proc = Proc::spawn(name, command);
    // "meshage node <id> serving <endpoint> (bound <addr>), gossip on <seed>"
    let line = proc.wait_line(STARTUP, |l| l.starts_with("meshage node "));
    let words: Vec<&str> = line.split_whitespace().collect();
    let after = |word: &str| {
        words
            .iter()
            .position(|w| *w == word)
            .and_then(|i| words.get(i + 1))
            .map(|w| w.to_string())
            .unwrap_or_else(|| panic!("{name}: no `{word}` in `{line}`"))
    };
    NodeProc {
        id: words[2].to_owned(),
        endpoint: after("serving"),
        seed: after("on"),
        proc,
    }
}

/// What a finished client command did.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs `meshage ARGS` with only `env` set and `stdin` as its input; waits at most 30 s.
pub fn meshage_cli(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> CliRun {
    let mut command = meshage_command();
    command.args(args).envs(env.iter().copied());
    run(command, stdin)
}

/// Runs `command` to its end with `stdin` as its input; kills it and panics after 30 s.
pub fn run(mut command: Command, stdin: Option<&[u8]>) -> CliRun {
    blocking(|| {
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("meshage starts");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let read = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let stdout = read(Box::new(child.stdout.take().expect("piped")));
        let stderr = read(Box::new(child.stderr.take().expect("piped")));
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{command:?} did not finish within 30 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        CliRun {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    })
}
