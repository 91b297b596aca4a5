//! The client subcommands: `send`, `broadcast`, `services`, `members`, `locate`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use meshage::client::{read_message, ClientError, MeshClient, SendParams};
use meshage::ClientTls;

#[derive(Subcommand)]
pub(crate) enum ClientCommand {
    /// Send a message to the service that owns KEY on STREAM and print its answer (without
    /// KEY, or with an empty one: to the stream's services in turn).
    Send(SendArgs),
    /// Send a message to every service of STREAM; prints one entry per service.
    Broadcast(MessageArgs),
    /// List every routable service of the cluster.
    Services(ClientArgs),
    /// List the nodes of the cluster: id, endpoint, state (live, leaving, dead), services.
    Members(ClientArgs),
    /// Show which service and node own KEY on STREAM, without running a handler.
    Locate(LocateArgs),
}

#[derive(Args)]
pub(crate) struct ClientArgs {
    /// Any node of the cluster.
    #[arg(long, env = "MESHAGE_NODE", default_value = "http://127.0.0.1:8080")]
    node: String,
    /// Print compact JSON (the default when the output is not a terminal).
    #[arg(long)]
    json: bool,
    /// How long to wait for the node's answer (seconds, or `500ms`, `10s`, `2m`).
    #[arg(long, default_value = "30", value_parser = crate::duration::parse)]
    timeout: Duration,
    /// The API token to send (`Authorization: Bearer TOKEN`), for nodes that ask for one.
    #[arg(long, env = "MESHAGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificates (PEM) an `https://` node's certificate is verified against, instead
    /// of the system's bundle.
    #[arg(long, env = "MESHAGE_CACERT", value_name = "FILE")]
    cacert: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub(crate) struct MessageArgs {
    /// The stream to send on.
    stream: String,
    /// The partition key (any text; it is percent-encoded on the way).
    key: String,
    /// The message: JSON, `@FILE` for a file's contents, or `-` for standard input (default `{}`).
    message: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct SendArgs {
    /// The stream to send on.
    stream: String,
    /// The partition key (any text; it is percent-encoded on the way). Omitted or empty: the
    /// message has no key and goes to one live service of the stream, in turn.
    #[arg(default_value = "")]
    key: String,
    /// The message: JSON, `@FILE` for a file's contents, or `-` for standard input (default `{}`).
    message: Option<String>,
    /// The message's name (`?messageName=`), for handlers registered for a name.
    #[arg(long)]
    name: Option<String>,
    /// Do not wait for the answer: the node answers 202 at once with the trace id and delivers
    /// the message in the background.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub(crate) struct LocateArgs {
    /// The stream to look in.
    stream: String,
    /// The partition key.
    key: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs a client command and prints its answer. Its errors are [`ClientError`]s, so that
/// `main` exits with their codes.
pub(crate) async fn run_client(command: ClientCommand) -> Result<()> {
    let args = match &command {
        ClientCommand::Send(m) => &m.client,
        ClientCommand::Broadcast(m) => &m.client,
        ClientCommand::Services(c) | ClientCommand::Members(c) => c,
        ClientCommand::Locate(l) => &l.client,
    };
    let timeout = args.timeout;
    let mut client = match &args.cacert {
        Some(path) => {
            let ca =
                ClientTls::from_ca_file(path).map_err(|e| ClientError::BadInput(e.to_string()))?;
            MeshClient::with_ca(&args.node, timeout, ca)?
        }
        None => MeshClient::new(&args.node, timeout)?,
    };
    if let Some(token) = args.token.as_deref().filter(|t| !t.trim().is_empty()) {
        client = client.with_token(token)?;
    }
    let compact = args.json || !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let answer = match &command {
        ClientCommand::Send(m) => {
            let message = read_message(m.message.as_deref(), std::io::stdin().lock())?;
            let params = SendParams {
                name: m.name.clone(),
                no_wait: m.no_wait,
            };
            client
                .send_with(&m.stream, &m.key, message, &params)
                .await?
        }
        ClientCommand::Broadcast(m) => {
            let message = read_message(m.message.as_deref(), std::io::stdin().lock())?;
            client.broadcast(&m.stream, &m.key, message).await?
        }
        ClientCommand::Services(_) => client.services().await?,
        ClientCommand::Members(_) => client.members().await?,
        ClientCommand::Locate(l) => client.locate(&l.stream, &l.key).await?,
    };
    let text = if compact {
        serde_json::to_string(&answer)
    } else {
        serde_json::to_string_pretty(&answer)
    }
    .context("cannot print the answer")?;
    // A closed pipe (`meshage services | head -1`) is not an error worth reporting.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    Ok(())
}
