//! The `meshage` binary: `meshage node` runs a node (configured by flags or by the original's
//! environment variables), `meshage demo` a 3-node cluster in one process, and `send`,
//! `broadcast`, `services`, `members` and `locate` talk to a running cluster.

mod certs;
mod client;
mod demo;
mod keys;
mod logs;
mod node;
mod reload;
mod tls;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meshage::client::ClientError;
use meshage::{HandlerError, Node};
use serde_json::{json, Value};
use tracing::warn;

use client::{run_client, ClientCommand};
use node::{LogFormat, NodeArgs};

/// mimalloc: a node makes many small, short-lived allocations per request, which it serves
/// faster than glibc malloc does (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meshage",
    version,
    about = "A peer-to-peer service mesh for message handlers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: join the cluster and serve the HTTP API.
    Node(Box<NodeArgs>),
    /// Start a 3-node cluster in this process, send a few keys, and keep serving until Ctrl-C.
    Demo,
    /// Print a new random cluster secret (base64) for `--cluster-key` or a keyring file.
    Keygen,
    /// Make a certificate authority and node certificates, for operators without a PKI.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    #[command(flatten)]
    Client(ClientCommand),
}

/// `value` seconds as a duration; an error names the flag `--name`.
fn seconds(name: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

/// The example handler of `--echo` and the demo.
async fn echo(data: Value, _header: meshage::Header) -> Result<Value, HandlerError> {
    Ok(json!({ "echoed": data }))
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

/// Shuts `node` down gracefully; a second signal exits at once.
async fn stop_with_second_signal(node: Node) -> Result<()> {
    tokio::select! {
        r = node.shutdown() => r.context("graceful shutdown failed"),
        _ = wait_for_signal() => {
            warn!("second signal: exiting without draining");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // MESHAGE_THREADS sets the number of worker threads (default: one per core).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = std::env::var("MESHAGE_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|t| *t > 0)
    {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshage: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: a span exporter sends from a task of it.
    let (json, export) = match &cli.command {
        Command::Node(args) => (args.log_format == LogFormat::Json, true),
        _ => (false, false),
    };
    if let Err(e) = runtime.block_on(async { logs::init(json, export) }) {
        eprintln!("meshage: error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => node::run_node(*args).await,
            Command::Demo => demo::run_demo().await,
            Command::Certs(command) => certs::run(command),
            Command::Keygen => {
                keys::keygen();
                Ok(())
            }
            Command::Client(command) => run_client(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<ClientError>() => {
            let e = e.downcast::<ClientError>().expect("checked");
            eprintln!("meshage: {e}");
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            eprintln!("meshage: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
