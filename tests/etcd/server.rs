//! Real etcd processes for the tests: one member or three, on free loopback ports, each with a
//! temporary data dir, killed when dropped. With [`ServerTls`], clients must speak TLS and
//! present a certificate of the trusted CA (`--client-cert-auth`); health is then read from a
//! plain-HTTP metrics port.
//!
//! etcd cannot take an already-bound socket, so its ports are found by binding port 0 and letting
//! go; a start that loses that race is retried on other ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd binary (`ETCD_BIN`, else `etcd` on the PATH). Without one: under CI (`CI=true`) the
/// test fails, since CI must run the etcd tests; elsewhere it prints why and returns `None`, and
/// the caller skips.
pub fn etcd_binary() -> Option<PathBuf> {
    let candidate = std::env::var_os("ETCD_BIN").map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("etcd"))
                .find(|p| p.is_file())
        })
    });
    match candidate {
        Some(path) => Some(path),
        None if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("etcd is not installed, and CI must run the etcd tests: apt-get install etcd-server (scripts/test.sh does)")
        }
        None => {
            eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server)");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The files of a TLS etcd: its certificate and key, and the CA its clients' certificates
/// must come from.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshage-etcd-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// One etcd member: its ports stay the same across restarts.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Serves `/health` over plain HTTP, for a TLS member.
    metrics_port: u16,
    tls: Option<ServerTls>,
    /// More flags for etcd.
    extra: Vec<String>,
    binary: PathBuf,
    dir: PathBuf,
    /// Bumped by `restart_empty`: a new data dir.
    generation: u32,
    initial_cluster: String,
    token: String,
    child: Option<Child>,
}

impl EtcdMember {
    /// `host:port` of the client API.
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr())
    }

    fn health_url(&self) -> String {
        match self.tls {
            Some(_) => format!("http://127.0.0.1:{}/health", self.metrics_port),
            None => format!("{}/health", self.client_url()),
        }
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join(format!("data-{}", self.generation))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is running already", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("etcd log file");
        let mut command = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.client_ca)
                .arg("--client-cert-auth")
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{}", self.metrics_port));
        }
        let child = command
            .args(&self.extra)
            // The cheapest password hashing etcd allows: with auth on, every client that
            // connects makes etcd run bcrypt, and at the default cost a few nodes joining at
            // once on a loaded 2-core machine outlast the 3 s connect timeout.
            .args(["--bcrypt-cost", "4"])
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(self.client_url())
            .arg("--advertise-client-urls")
            .arg(self.client_url())
            .arg("--listen-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(self.peer_url())
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            // Elections in a fraction of a second, so a stopped member costs little time.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
    }

    /// Whether the member has exited (a port it wanted was taken, say).
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Kills the member (SIGKILL: a crash, not a graceful stop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the member again on the same ports with the data it had.
    pub async fn restart(&mut self) {
        self.spawn();
        wait_healthy(std::slice::from_mut(self)).await;
    }

    /// Starts a single-member etcd again on the same ports with an empty data dir: a new etcd
    /// that knows nothing of the old one's keys and leases.
    pub async fn restart_empty(&mut self) {
        self.generation += 1;
        self.token = format!("meshage-test-{}", uuid::Uuid::new_v4());
        self.spawn();
        wait_healthy(std::slice::from_mut(self)).await;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `member` answers `GET /health` with `"health":"true"`.
async fn healthy(member: &EtcdMember) -> bool {
    let mut http = crate::common::Http::default();
    http.timeout = Duration::from_secs(1);
    match http
        .request(
            http::Method::GET,
            &member.health_url(),
            &[],
            bytes::Bytes::new(),
        )
        .await
    {
        Ok(answer) => {
            answer.status == 200 && String::from_utf8_lossy(&answer.body).contains("true")
        }
        Err(_) => false,
    }
}

/// Waits until every running member is healthy; panics with their logs after 20 s, or when one
/// exits.
async fn wait_healthy(members: &mut [EtcdMember]) {
    let start = Instant::now();
    loop {
        let mut all = true;
        for member in members.iter_mut().filter(|m| m.is_running()) {
            if member.exited() {
                panic!(
                    "etcd member {} exited while starting:\n{}",
                    member.name,
                    member.log_tail()
                );
            }
            all &= healthy(member).await;
        }
        if all {
            return;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let logs: Vec<String> = members
                .iter()
                .map(|m| format!("--- {}\n{}", m.name, m.log_tail()))
                .collect();
            panic!(
                "etcd did not become healthy within 20 s:\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An etcd cluster of `n` members on loopback. `None` when etcd is not installed (outside CI).
pub struct Etcd {
    pub members: Vec<EtcdMember>,
}

impl Etcd {
    pub async fn start(n: usize) -> Option<Etcd> {
        Etcd::start_with(n, None, &[]).await
    }

    /// An etcd of `n` members whose clients must use TLS (and a client certificate) when
    /// `tls` is given, each run with the flags `extra` too.
    pub async fn start_with(n: usize, tls: Option<ServerTls>, extra: &[&str]) -> Option<Etcd> {
        let binary = etcd_binary()?;
        for attempt in 0.. {
            let names: Vec<String> = (1..=n).map(|i| format!("m{i}")).collect();
            let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
            let initial_cluster = names
                .iter()
                .zip(&ports)
                .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            let token = format!("meshage-test-{}", uuid::Uuid::new_v4());
            let mut members: Vec<EtcdMember> = names
                .into_iter()
                .zip(ports)
                .map(|(name, (client_port, peer_port))| EtcdMember {
                    dir: temp_dir(&name),
                    name,
                    client_port,
                    peer_port,
                    metrics_port: free_port(),
                    tls: tls.clone(),
                    extra: extra.iter().map(|s| s.to_string()).collect(),
                    binary: binary.clone(),
                    generation: 0,
                    initial_cluster: initial_cluster.clone(),
                    token: token.clone(),
                    child: None,
                })
                .collect();
            for member in &mut members {
                member.spawn();
            }
            // A member that lost its port to another process exits at once; try other ports.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if attempt < 3 && members.iter_mut().any(EtcdMember::exited) {
                continue;
            }
            wait_healthy(&mut members).await;
            return Some(Etcd { members });
        }
        unreachable!()
    }

    /// Client URLs of every member, the first first.
    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    pub fn member(&mut self, i: usize) -> &mut EtcdMember {
        &mut self.members[i]
    }
}
