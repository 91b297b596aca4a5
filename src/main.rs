//! The `meshage` binary: `meshage node` runs a node (configured by flags or by the original's
//! environment variables), `meshage demo` a 3-node cluster in one process.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use meshage::{GossipCluster, HandlerError, Message, Node, NodeConfig, NO_SEEDS};
use serde_json::{json, Value};
use tracing::{info, warn};

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
    Node(NodeArgs),
    /// Start a 3-node cluster in this process, send a few keys, and keep serving until Ctrl-C.
    Demo,
}

#[derive(Args)]
struct NodeArgs {
    /// Membership backend. Only `gossip` is built in.
    #[arg(long, env = "CLUSTER_TYPE", default_value = "gossip")]
    cluster_type: String,
    /// Host to gossip on (default: all interfaces, advertising the machine's hostname).
    #[arg(long, env = "CLUSTER_HOST")]
    cluster_host: Option<String>,
    /// Port to gossip on (a number, `find`, or `N/find`).
    #[arg(long, env = "CLUSTER_PORT", default_value = "9742")]
    cluster_port: String,
    /// Comma-separated seeds (`host:port`, or a port on 127.0.0.1). Env: SEEDS or SEED.
    #[arg(long, env = "SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// Host to serve HTTP on (default: all interfaces, advertising the machine's hostname).
    #[arg(long, env = "HTTP_HOST")]
    http_host: Option<String>,
    /// Port to serve HTTP on (a number, `find`, or `N/find`). Env: HTTP_PORT or SERVICE_PORT.
    #[arg(long, env = "HTTP_PORT")]
    http_port: Option<String>,
    /// Register the example handler, answering `{"echoed": <data>}`, on STREAM (repeatable).
    #[arg(long, value_name = "STREAM")]
    echo: Vec<String>,
    /// Seconds a request may take, forwarding included.
    #[arg(long, env = "MESHAGE_REQUEST_TIMEOUT", default_value_t = 10.0)]
    request_timeout: f64,
    /// Largest request body in bytes.
    #[arg(long, env = "MESHAGE_BODY_LIMIT", default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// Seconds a stopping node lets open requests finish.
    #[arg(long, env = "MESHAGE_DRAIN_TIMEOUT", default_value_t = 10.0)]
    drain_timeout: f64,
}

fn address(host: Option<&str>, port: &str) -> String {
    match host {
        Some(host) if !host.is_empty() => format!("{host}:{port}"),
        _ => port.to_owned(),
    }
}

fn seconds(name: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

async fn run_node(args: NodeArgs) -> Result<()> {
    if args.cluster_type != "gossip" {
        bail!(
            "CLUSTER_TYPE `{}` is not available in this build (only `gossip`)",
            args.cluster_type
        );
    }
    let mut seeds = args.seeds;
    if seeds.is_empty() {
        if let Ok(seed) = std::env::var("SEED") {
            seeds = seed.split(',').map(str::to_owned).collect();
        }
    }
    let http_port = args
        .http_port
        .or_else(|| std::env::var("SERVICE_PORT").ok())
        .unwrap_or_else(|| "8080".to_owned());
    let cluster = GossipCluster::new(
        address(args.cluster_host.as_deref(), &args.cluster_port),
        seeds,
    )
    .context("bad cluster address")?;
    let config = NodeConfig {
        request_timeout: seconds("request-timeout", args.request_timeout)?,
        body_limit: args.body_limit,
        drain_timeout: seconds("drain-timeout", args.drain_timeout)?,
        ..NodeConfig::default()
    };
    let mut builder =
        meshage::init(cluster, address(args.http_host.as_deref(), &http_port)).config(config);
    for stream in args.echo {
        builder = builder.register(stream, echo);
    }
    let node = builder.start().await?;
    println!(
        "meshage node {} serving {} (bound {}), gossip on {}",
        node.id(),
        node.endpoint(),
        node.local_addr(),
        node.seed_address().unwrap_or_default()
    );
    wait_for_signal().await?;
    info!("stopping: leaving the cluster and draining");
    stop_with_second_signal(node).await
}

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

async fn run_demo() -> Result<()> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..3 {
        let seeds: Vec<String> = nodes
            .first()
            .and_then(|n| n.seed_address())
            .into_iter()
            .collect();
        let cluster = if seeds.is_empty() {
            GossipCluster::new("127.0.0.1:find", NO_SEEDS)?
        } else {
            GossipCluster::new("127.0.0.1:find", seeds)?
        };
        let node = meshage::init(cluster, "127.0.0.1:find")
            .register("echo", echo)
            .start()
            .await
            .with_context(|| format!("starting demo node {}", i + 1))?;
        nodes.push(node);
    }
    // Wait until every node sees all three services.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nodes.iter().any(|n| n.router().table().services.len() < 3) {
        if tokio::time::Instant::now() > deadline {
            bail!("the demo cluster did not converge within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("3 nodes up, each with one service on stream `echo`:");
    for (i, node) in nodes.iter().enumerate() {
        let service = node.router().local_services();
        println!(
            "  node {} at {}  service {}",
            i + 1,
            node.endpoint(),
            service[0].id
        );
    }
    println!("\nSending keys through different nodes:");
    for (i, key) in ["alice", "bob", "carol", "dave", "erin", "frank"]
        .iter()
        .enumerate()
    {
        let node = &nodes[i % 3];
        let owner = node
            .router()
            .table()
            .owner("echo", key)
            .map(|s| s.id.to_string())
            .unwrap_or_default();
        let answer = node
            .router()
            .send(Message::new("echo", *key, json!({ "hello": key })))
            .await?;
        println!(
            "  key {key:<6} sent to node {} -> handled by service {owner}: {answer}",
            i % 3 + 1
        );
    }
    let first = nodes[0].endpoint();
    println!("\nTry it (any node answers for any key):");
    println!("  curl -s -X POST {first}/api/echo/$RANDOM -H 'Content-Type: application/json' -d '{{\"hello\":\"world\"}}'");
    println!("  curl -s -X POST {first}/api/broadcast/echo/x -d '{{\"hello\":\"all\"}}'");
    println!("  curl -s {}/api/services", nodes[1].endpoint());
    println!("\nServing until Ctrl-C.");
    wait_for_signal().await?;
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,chitchat=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshage: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node(args) => run_node(args).await,
            Command::Demo => run_demo().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshage: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
