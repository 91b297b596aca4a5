//! The `meshage` binary: `meshage node` runs a node (configured by flags or by the original's
//! environment variables), `meshage demo` a 3-node cluster in one process, and `send`,
//! `broadcast`, `services`, `members` and `locate` talk to a running cluster.

mod certs;
mod client;
mod config;
mod demo;
mod duration;
mod keys;
mod logs;
mod manual;
mod node;
mod reload;
mod tls;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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

/// The lines of `--help` on the variables every command reads.
macro_rules! common_environment {
    () => {
        "  RUST_LOG               which logs to print, e.g. `debug` [default: info,chitchat=warn]
  NO_COLOR               if set and not empty: no colours (CLICOLOR_FORCE=1 forces them)"
    };
}

/// What `meshage --help` says after the commands.
const ENVIRONMENT_HELP: &str = concat!("Environment:\n", common_environment!());

/// What `meshage node --help` says after the flags.
const NODE_HELP: &str = concat!(
    "\
Durations are seconds (`10`, `1.5`) or take a unit: `500ms`, `10s`, `2m`, `1h`.
A config file (--config) holds any of these flags by its long name: `http-port = 8080`,
`seeds = [\"10.0.0.1:9742\"]`; flags beat environment variables, which beat the file.

Environment without a flag of its own:
  SEED                   the original's name of SEEDS
  SERVICE_PORT           the original's name of HTTP_PORT
  MESHAGE_ETCD_PASSWORD  the password of --etcd-user (never a flag: it would show in `ps`)
",
    common_environment!()
);

#[derive(Parser)]
#[command(
    name = "meshage",
    version = env!("MESHAGE_VERSION"),
    about = "A peer-to-peer service mesh for message handlers",
    after_help = ENVIRONMENT_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: join the cluster and serve the HTTP API.
    #[command(after_help = NODE_HELP)]
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
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions(manual::CompletionsArgs),
    /// Print the man page of meshage, or of COMMAND: `meshage man node | man -l -`.
    Man(manual::ManArgs),
}

/// Whether log lines may have colours: never with `NO_COLOR` set and not empty
/// (<https://no-color.org>), else on a terminal, or with `CLICOLOR_FORCE` set and not `0`, as
/// clap decides for help.
fn colours(terminal: bool) -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let forced = std::env::var_os("CLICOLOR_FORCE").is_some_and(|v| !v.is_empty() && v != "0");
    !no_color && (terminal || forced)
}

/// A command line clap or the configuration file refused: help and the version on stdout (exit
/// 0), help for a missing command on stderr (exit 2), anything else one line
/// `meshage: error: ...` on stderr (exit 2).
fn refused(refusal: config::Refused) -> ExitCode {
    use clap::error::ErrorKind;
    let message = match refusal {
        config::Refused::Usage(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        config::Refused::Usage(e)
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            let _ = e.print();
            return ExitCode::from(2);
        }
        config::Refused::Usage(e) => config::one_line(&e.render().to_string()),
        config::Refused::File(message) => message,
    };
    eprintln!("meshage: error: {message}");
    ExitCode::from(2)
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
    let command = Cli::command();
    let (matches, file) = match config::parse(&command, std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(refusal) => return refused(refusal),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return refused(config::Refused::Usage(e)),
    };
    if let Command::Node(args) = &cli.command {
        if args.file.print_config {
            print!("{}", config::print(&command, &matches, file.as_ref()));
            return ExitCode::SUCCESS;
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Node(args) = &cli.command {
        if let Some(threads) = args.threads {
            builder.worker_threads(threads.get());
        }
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
    let ansi = colours(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if let Err(e) = runtime.block_on(async { logs::init(json, ansi, export) }) {
        eprintln!("meshage: error: {e:#}");
        return ExitCode::FAILURE;
    }
    if let Some(warning) = file.as_ref().and_then(config::FromFile::warning) {
        warn!("{warning}");
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
            Command::Completions(args) => manual::completions(&args, Cli::command()),
            Command::Man(args) => manual::man(&args, Cli::command()),
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
