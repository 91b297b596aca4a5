//! `meshage node`: flags and environment variables into a node's configuration.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use meshage::{
    Cluster, GossipCluster, HandlerSpec, HealthConfig, HttpUpstream, NodeConfig, Tokens,
    UpstreamConfig,
};
use tracing::info;

use crate::{echo, stop_with_second_signal, wait_for_signal};

#[derive(Args)]
pub(crate) struct NodeArgs {
    /// Membership backend: `gossip` (built in), `etcd` or `consul` (with the cargo features of
    /// those names).
    #[arg(
        long,
        env = "CLUSTER_TYPE",
        value_enum,
        ignore_case = true,
        default_value = "gossip"
    )]
    cluster_type: ClusterType,
    /// gossip: host to gossip on (default: all interfaces, advertising the machine's hostname).
    /// etcd: host of the etcd client URL; consul: host of the agent's HTTP API (default
    /// 127.0.0.1 for both).
    #[arg(long, env = "CLUSTER_HOST")]
    cluster_host: Option<String>,
    /// gossip: port to gossip on (a number, `find`, or `N/find`; default 9742). etcd: client
    /// port (default 2379); consul: the agent's HTTP port (default 8500).
    #[arg(long, env = "CLUSTER_PORT")]
    cluster_port: Option<String>,
    /// Comma-separated. gossip: seeds (`host:port`, or a port on 127.0.0.1); etcd: more
    /// endpoints; consul: the address the agent joins (the first). Env: SEEDS or SEED.
    #[arg(long, env = "SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    keys: crate::keys::KeyArgs,
    /// Host to serve HTTP on (default: all interfaces, advertising the machine's hostname).
    #[arg(long, env = "HTTP_HOST")]
    http_host: Option<String>,
    /// Port to serve HTTP on (a number, `find`, or `N/find`). Env: HTTP_PORT or SERVICE_PORT.
    #[arg(long, env = "HTTP_PORT")]
    http_port: Option<String>,
    /// Host peers reach this node at, advertised with the bound ports in its HTTP endpoint
    /// and gossip address (default: the bound host, or the hostname on all interfaces). In
    /// Kubernetes, the pod's IP (`status.podIP`).
    #[arg(long, env = "MESHAGE_ADVERTISE_HOST", value_name = "HOST",
          value_parser = meshage::parse_advertise_host)]
    advertise_host: Option<String>,
    /// Register the example handler, answering `{"echoed": <data>}`, on STREAM (repeatable).
    #[arg(long, value_name = "STREAM")]
    echo: Vec<String>,
    /// Serve STREAM with the HTTP handler at URL: each message is POSTed there (repeatable).
    #[arg(long = "handler", value_name = "STREAM=URL")]
    handlers: Vec<meshage::HandlerSpec>,
    /// A file of handlers: one `STREAM=URL` a line; `#` starts a comment line.
    #[arg(long, env = "MESHAGE_HANDLERS_FILE", value_name = "FILE")]
    handlers_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that `https://` handlers are verified against, instead of the
    /// system's CA bundle.
    #[arg(long, env = "MESHAGE_HANDLER_CA", value_name = "FILE")]
    handler_ca: Option<std::path::PathBuf>,
    /// How long a handler may take to answer before the caller gets a 502.
    #[arg(long, env = "MESHAGE_HANDLER_TIMEOUT", default_value = "5",
          value_parser = crate::duration::parse)]
    handler_timeout: Duration,
    /// Time between health checks of each handler (`GET URL`); 0 turns checks off.
    #[arg(long, env = "MESHAGE_HEALTH_INTERVAL", default_value = "1",
          value_parser = crate::duration::parse)]
    health_interval: Duration,
    /// How long a health check may take.
    #[arg(long, env = "MESHAGE_HEALTH_TIMEOUT", default_value = "1",
          value_parser = crate::duration::parse)]
    health_timeout: Duration,
    /// Failed health checks in a row that withdraw a handler's service from the cluster.
    #[arg(long, env = "MESHAGE_HEALTH_FAILURES", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    health_failures: u32,
    /// How long a request may take, forwarding included.
    #[arg(long, env = "MESHAGE_REQUEST_TIMEOUT", default_value = "10",
          value_parser = crate::duration::parse)]
    request_timeout: Duration,
    /// Largest request body in bytes.
    #[arg(long, env = "MESHAGE_BODY_LIMIT", default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// How forwards travel between nodes: `link` (a multiplexed binary link; peers without it,
    /// such as original nodes, get HTTP/1.1), `http1` (pooled connections) or `http2`.
    #[arg(long, env = "MESHAGE_PEER_PROTOCOL", default_value = "link",
          value_parser = PossibleValuesParser::new(["link", "http1", "http2"])
              .try_map(|p| p.parse::<meshage::PeerProtocol>()))]
    peer_protocol: meshage::PeerProtocol,
    /// How long a stopping node lets open requests finish.
    #[arg(long, env = "MESHAGE_DRAIN_TIMEOUT", default_value = "10",
          value_parser = crate::duration::parse)]
    drain_timeout: Duration,
    /// How long a client's HTTP connection may start no request, or a peer link carry nothing,
    /// before the node closes it.
    #[arg(long, env = "MESHAGE_IDLE_TIMEOUT", default_value = "30",
          value_parser = crate::duration::parse)]
    idle_timeout: Duration,
    /// Log lines as `text` or as `json` objects (one a line, with the request span's fields).
    #[arg(long, env = "MESHAGE_LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// Messages the node answers at once, from clients and peers; above it, 503 with Retry-After.
    #[arg(long, env = "MESHAGE_MAX_IN_FLIGHT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_in_flight: u64,
    /// Messages sent without waiting (`?wait=false`) that the node delivers at once in the
    /// background; above it, such sends get 503 with Retry-After.
    #[arg(long, env = "MESHAGE_BACKGROUND_LIMIT", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    background_limit: u64,
    /// Connections open at once, from clients and peers; above it, new ones are closed at once.
    /// Keep it below the process's open-file limit (`ulimit -n`).
    #[arg(long, env = "MESHAGE_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Bytes of request bodies and peer-link frames still arriving that the node holds at once;
    /// above it, new bodies get 503 and link frames wait. Default: 256 MiB, or a quarter of
    /// the memory the process may use (its cgroup's limit, else the machine's) if that is less.
    #[arg(long, env = "MESHAGE_MAX_BUFFERED", default_value_t = default_max_buffered(),
          value_parser = clap::value_parser!(u64).range(1..))]
    max_buffered: u64,
    /// How long a peer whose connection failed stays off this node's rings, unless gossip
    /// confirms it gone first.
    #[arg(long, env = "MESHAGE_SUSPECT_TIMEOUT", default_value = "5",
          value_parser = crate::duration::parse)]
    suspect_timeout: Duration,
    /// A file of API tokens clients must send (`Authorization: Bearer TOKEN`): one `TOKEN` or
    /// `TOKEN stream,stream` (limited to those streams) a line; `#` starts a comment. Reread
    /// when it changes.
    #[arg(
        long,
        env = "MESHAGE_API_TOKENS",
        value_name = "FILE",
        hide_env_values = true
    )]
    api_tokens: Option<std::path::PathBuf>,
    /// A stable name for this node (a StatefulSet pod's name, say): service ids derive from it,
    /// so the node owns the same keys after a restart. Refused while another live node has it.
    #[arg(long, env = "MESHAGE_NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// How long after a key moved to a service its handler gets the service that owned it
    /// before (`X-Meshage-Previous-Owner`), to take the key's state from; a leaving node
    /// serves on until new owners stop asking. `0`: off.
    #[arg(long, env = "MESHAGE_HANDOFF_WINDOW", default_value = "30",
          value_parser = crate::duration::parse)]
    handoff_window: Duration,
    /// Refuse a forward for a key this node's table gives to another service; the sender
    /// routes it again once the tables agree (one owner per key while the ring changes).
    #[arg(long, env = "MESHAGE_STRICT_OWNERSHIP")]
    strict_ownership: bool,
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
    /// Worker threads (default: one per core).
    #[arg(long, env = "MESHAGE_THREADS")]
    pub(crate) threads: Option<std::num::NonZeroUsize>,
    #[command(flatten)]
    pub(crate) file: crate::config::ConfigArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// The membership backends of `--cluster-type`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClusterType {
    Gossip,
    Etcd,
    Consul,
}

impl ClusterType {
    fn name(self) -> &'static str {
        match self {
            ClusterType::Gossip => "gossip",
            ClusterType::Etcd => "etcd",
            ClusterType::Consul => "consul",
        }
    }
}

/// Settings of the etcd and Consul backends.
#[derive(Args)]
#[cfg_attr(not(all(feature = "etcd", feature = "consul")), allow(dead_code))]
struct BackendArgs {
    /// etcd: keys live under PREFIX/meshage/.
    #[arg(long, env = "MESHAGE_ETCD_PREFIX", default_value = "/meshage")]
    etcd_prefix: String,
    /// etcd: the length of the node's lease; a crashed node's services vanish after it.
    #[arg(long, env = "MESHAGE_LEASE_TTL", default_value = "5",
          value_parser = crate::duration::parse)]
    lease_ttl: Duration,
    /// etcd: CA certificates (PEM) that etcd's certificate is verified against; turns TLS on
    /// (the endpoints become https://).
    #[arg(long, env = "MESHAGE_ETCD_CA", value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// etcd: client certificate (PEM), for an etcd with --client-cert-auth; turns TLS on.
    #[arg(
        long,
        env = "MESHAGE_ETCD_CERT",
        value_name = "FILE",
        requires = "etcd_key"
    )]
    etcd_cert: Option<PathBuf>,
    /// etcd: the client certificate's private key (PEM).
    #[arg(
        long,
        env = "MESHAGE_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    etcd_key: Option<PathBuf>,
    /// etcd: user to authenticate as (etcd with auth enabled). Its password is read from the
    /// environment variable MESHAGE_ETCD_PASSWORD only, never from a flag.
    #[arg(long, env = "MESHAGE_ETCD_USER", value_name = "USER")]
    etcd_user: Option<String>,
    /// consul: ACL token, sent as X-Consul-Token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    consul_token: Option<String>,
    /// consul: the agent's HTTP API, `host:port` or `https://host:port`, when CLUSTER_HOST
    /// and CLUSTER_PORT are not set.
    #[arg(long, env = "CONSUL_HTTP_ADDR", value_name = "ADDR")]
    consul_http_addr: Option<String>,
    /// consul: `true` to reach the agent over HTTPS.
    #[arg(long, env = "CONSUL_HTTP_SSL", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    consul_http_ssl: Option<bool>,
    /// consul: CA certificates (PEM) that the agent's certificate is verified against,
    /// instead of the system's CA bundle (HTTPS only).
    #[arg(long, env = "CONSUL_CACERT", value_name = "FILE")]
    consul_cacert: Option<PathBuf>,
    /// consul: time between the agent's health checks of each service.
    #[arg(long, env = "MESHAGE_CHECK_INTERVAL", default_value = "5",
          value_parser = crate::duration::parse)]
    check_interval: Duration,
    /// consul: how long a service may stay critical before the agent deregisters it (Consul's
    /// minimum is 1m).
    #[arg(long, env = "MESHAGE_DEREGISTER_AFTER", default_value = "60",
          value_parser = crate::duration::parse)]
    deregister_after: Duration,
}

/// `host:port` of an engine: CLUSTER_HOST (default 127.0.0.1) and CLUSTER_PORT.
fn engine_address(host: Option<&str>, port: Option<&str>, default_port: u16) -> String {
    let host = host.filter(|h| !h.is_empty()).unwrap_or("127.0.0.1");
    match port.filter(|p| !p.is_empty()) {
        Some(port) => format!("{host}:{port}"),
        None => format!("{host}:{default_port}"),
    }
}

/// The membership backend CLUSTER_TYPE names.
fn cluster_backend(
    kind: ClusterType,
    host: Option<&str>,
    port: Option<&str>,
    seeds: Vec<String>,
    flags: &BackendArgs,
) -> Result<Box<dyn Cluster>> {
    match kind {
        ClusterType::Gossip => Ok(Box::new(
            GossipCluster::new(address(host, port.unwrap_or("9742")), seeds)
                .context("bad cluster address")?,
        )),
        ClusterType::Etcd => etcd_backend(engine_address(host, port, 2379), seeds, flags),
        ClusterType::Consul => {
            // The Consul CLI's CONSUL_HTTP_ADDR, unless meshage's own variables say otherwise.
            let address = match (&flags.consul_http_addr, host, port) {
                (Some(addr), None, None) if !addr.trim().is_empty() => addr.trim().to_owned(),
                _ => engine_address(host, port, 8500),
            };
            consul_backend(address, seeds, flags)
        }
    }
}

#[cfg(feature = "etcd")]
fn etcd_backend(
    address: String,
    seeds: Vec<String>,
    flags: &BackendArgs,
) -> Result<Box<dyn Cluster>> {
    let tls = match (&flags.etcd_ca, &flags.etcd_cert, &flags.etcd_key) {
        (None, None, _) => None,
        (ca, cert, key) => {
            let identity = cert.as_deref().zip(key.as_deref());
            Some(meshage::EtcdTls::new(ca.as_deref(), identity).context("etcd TLS")?)
        }
    };
    // The password only ever comes from the environment: a flag would show on the command
    // line, in `ps`, to every user of the machine.
    let password = std::env::var("MESHAGE_ETCD_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(meshage::Secret::from);
    let credentials = match (flags.etcd_user.as_ref().filter(|u| !u.is_empty()), password) {
        (Some(user), Some(password)) => Some(meshage::EtcdCredentials::new(user.clone(), password)),
        (Some(_), None) => bail!("--etcd-user needs its password in MESHAGE_ETCD_PASSWORD"),
        (None, Some(_)) => bail!("MESHAGE_ETCD_PASSWORD is set, but no --etcd-user"),
        (None, None) => None,
    };
    let config = meshage::EtcdConfig::default()
        .prefix(flags.etcd_prefix.clone())
        .lease_ttl(flags.lease_ttl)
        .tls(tls)
        .credentials(credentials);
    let endpoints = std::iter::once(address).chain(seeds);
    Ok(Box::new(
        meshage::EtcdCluster::new(endpoints)
            .context("bad etcd endpoint")?
            .with_config(config),
    ))
}

#[cfg(not(feature = "etcd"))]
fn etcd_backend(_: String, _: Vec<String>, _: &BackendArgs) -> Result<Box<dyn Cluster>> {
    bail!("CLUSTER_TYPE `etcd` is not in this build: build with `cargo build --release --features etcd,consul`")
}

#[cfg(feature = "consul")]
fn consul_backend(
    address: String,
    seeds: Vec<String>,
    flags: &BackendArgs,
) -> Result<Box<dyn Cluster>> {
    // As the Consul CLI: https when the address says so or CONSUL_HTTP_SSL is true (which an
    // `http://` address does not undo).
    let https = address.trim().starts_with("https://") || flags.consul_http_ssl == Some(true);
    let address = if https {
        format!(
            "https://{}",
            address
                .trim()
                .trim_start_matches("http://")
                .trim_start_matches("https://")
        )
    } else {
        address
    };
    let tls = match &flags.consul_cacert {
        Some(_) if !https => bail!(
            "CONSUL_CACERT is set but the Consul agent is reached over plain HTTP: set CONSUL_HTTP_SSL=true or use an https:// address"
        ),
        Some(path) => Some(meshage::ClientTls::from_ca_file(path).context("CONSUL_CACERT")?),
        None => None,
    };
    let config = meshage::ConsulConfig::default()
        .token(
            flags
                .consul_token
                .clone()
                .filter(|t| !t.is_empty())
                .map(meshage::Secret::from),
        )
        .tls(tls)
        .check_interval(flags.check_interval)
        .deregister_critical_after(flags.deregister_after);
    Ok(Box::new(
        meshage::ConsulCluster::new(address, seeds)
            .context("bad Consul agent address")?
            .with_config(config),
    ))
}

#[cfg(not(feature = "consul"))]
fn consul_backend(_: String, _: Vec<String>, _: &BackendArgs) -> Result<Box<dyn Cluster>> {
    bail!("CLUSTER_TYPE `consul` is not in this build: build with `cargo build --release --features etcd,consul`")
}

fn address(host: Option<&str>, port: &str) -> String {
    match host {
        Some(host) if !host.is_empty() => format!("{host}:{port}"),
        _ => port.to_owned(),
    }
}

pub(crate) async fn run_node(args: NodeArgs) -> Result<()> {
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
    let cluster = cluster_backend(
        args.cluster_type,
        args.cluster_host.as_deref(),
        args.cluster_port.as_deref(),
        seeds,
        &args.backend,
    )?;
    let keys = args.keys.load()?;
    let api_tokens = args.api_tokens.map(Tokens::from_file).transpose()?;
    if let Some(tokens) = api_tokens.clone() {
        crate::reload::on_hangup("the API tokens", move || {
            tokens.reload().map_err(|e| e.to_string())
        });
    }
    let config = NodeConfig::default()
        .request_timeout(args.request_timeout)
        .body_limit(args.body_limit)
        .drain_timeout(args.drain_timeout)
        .idle_timeout(args.idle_timeout)
        .peer_protocol(args.peer_protocol)
        .max_in_flight(usize::try_from(args.max_in_flight).unwrap_or(usize::MAX))
        .background_limit(usize::try_from(args.background_limit).unwrap_or(usize::MAX))
        .max_connections(usize::try_from(args.max_connections).unwrap_or(usize::MAX))
        .max_buffered(usize::try_from(args.max_buffered).unwrap_or(usize::MAX))
        .suspect_timeout(args.suspect_timeout)
        .keys(keys)
        .api_tokens(api_tokens)
        .tls(args.tls.load()?)
        .advertise_host(args.advertise_host)
        .node_name(args.node_name.filter(|name| !name.is_empty()))
        .handoff_window(args.handoff_window)
        .strict_ownership(args.strict_ownership);
    let mut builder =
        meshage::init(cluster, address(args.http_host.as_deref(), &http_port)).config(config);
    for stream in args.echo {
        builder = builder.register(stream, echo);
    }
    for (stream, upstream) in upstreams(
        args.handlers,
        args.handlers_file.as_deref(),
        upstream_config(
            args.handler_timeout,
            args.health_interval,
            args.health_timeout,
            args.health_failures,
            args.handler_ca.as_deref(),
        )?,
    )? {
        builder = builder.register_upstream(stream, upstream);
    }
    let node = builder.start().await?;
    let membership = node.seed_address().map_or_else(
        || format!("{} membership", args.cluster_type.name()),
        |seed| format!("gossip on {seed}"),
    );
    println!(
        "meshage node {} serving {} (bound {}), {membership}",
        node.id(),
        node.endpoint(),
        node.local_addr(),
    );
    wait_for_signal().await?;
    info!("stopping: leaving the cluster and draining");
    stop_with_second_signal(node).await
}

fn upstream_config(
    timeout: Duration,
    interval: Duration,
    health_timeout: Duration,
    health_failures: u32,
    ca: Option<&std::path::Path>,
) -> Result<UpstreamConfig> {
    let health = if interval.is_zero() {
        None
    } else {
        Some(
            HealthConfig::default()
                .interval(interval)
                .timeout(health_timeout)
                .failures(health_failures),
        )
    };
    let tls = ca
        .map(meshage::ClientTls::from_ca_file)
        .transpose()
        .context("--handler-ca")?;
    Ok(UpstreamConfig::default()
        .timeout(timeout)
        .health(health)
        .tls(tls))
}

/// The handlers of `--handler` and of the handlers file, as upstreams.
fn upstreams(
    mut specs: Vec<HandlerSpec>,
    file: Option<&std::path::Path>,
    config: UpstreamConfig,
) -> Result<Vec<(String, HttpUpstream)>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the handlers file {}", path.display()))?;
        let listed = meshage::parse_handlers_file(&text)
            .map_err(|e| anyhow::anyhow!("handlers file {}: {e}", path.display()))?;
        specs.extend(listed);
    }
    specs
        .into_iter()
        .map(|spec| {
            let upstream = HttpUpstream::new(&spec.url, config.clone())?;
            info!(stream = %spec.stream, url = %spec.url, "serving a stream with an HTTP handler");
            Ok((spec.stream, upstream))
        })
        .collect()
}

/// 256 MiB, or a quarter of the memory this process may use if that is less: the limit of its
/// cgroup (v2 `memory.max`, as in a container), else the machine's memory.
fn default_max_buffered() -> u64 {
    const CAP: u64 = 256 * 1024 * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    buffered_for(cgroup.or(machine), CAP)
}

/// A quarter of `memory` (when known), at most `cap` and at least 16 MiB.
fn buffered_for(memory: Option<u64>, cap: u64) -> u64 {
    memory.map_or(cap, |m| (m / 4).clamp(16 * 1024 * 1024, cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_budget_fits_the_memory() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(buffered_for(None, 256 * MIB), 256 * MIB);
        assert_eq!(buffered_for(Some(24 * 1024 * MIB), 256 * MIB), 256 * MIB);
        assert_eq!(buffered_for(Some(512 * MIB), 256 * MIB), 128 * MIB);
        assert_eq!(buffered_for(Some(32 * MIB), 256 * MIB), 16 * MIB);
        assert!(default_max_buffered() >= 16 * MIB);
    }
}
