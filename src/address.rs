//! Listen/advertise addresses, as accepted on the command line and in the API.
//!
//! An [`Address`] says where a node (its HTTP service or its gossip socket) listens, and
//! how to pick the port. The accepted textual forms are:
//!
//! | form               | host                 | port                                             |
//! |--------------------|----------------------|--------------------------------------------------|
//! | `localhost:8080`   | `localhost`          | exactly 8080                                     |
//! | `127.0.0.1:9742`   | `127.0.0.1`          | exactly 9742                                     |
//! | `[::1]:8080`       | `::1` (IPv6 in `[]`) | exactly 8080                                     |
//! | `8080`             | all interfaces       | exactly 8080                                     |
//! | `host:0`           | `host`               | chosen by the OS (same as `host:find`)           |
//! | `host:find`        | `host`               | any free port                                    |
//! | `host:8080/find`   | `host`               | 8080 if free, else the next free one above it    |
//! | `8080/find`        | all interfaces       | 8080 if free, else the next free one above it    |
//! | `find`             | all interfaces       | any free port                                    |
//!
//! A leading `scheme://` (`http://localhost:8080`) and trailing `/` are ignored. Surrounding
//! whitespace is ignored. The keyword `find` is case-insensitive.
//!
//! When the host is absent, or is an unspecified IP (`0.0.0.0`, `::`), the node listens on
//! all interfaces and advertises the machine's [`hostname`] to its peers; otherwise it
//! advertises the host exactly as written. An advertise host ([`parse_advertise_host`], the
//! node's `--advertise-host`) replaces either: peers get that host with the bound port.
//!
//! Parsing is pure; only [`Address::bind_tcp`] and [`Address::bind_udp`] touch the network.
//! Pure core: depends on nothing of the crate.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::str::FromStr;

/// How many consecutive ports `N/find` tries (N, N+1, ...) before letting the OS pick one.
const PREFER_TRIES: u32 = 100;

/// The keyword that asks for a free port.
const FIND: &str = "find";

/// A parsed listen address: an optional host (`None` = all interfaces) and a port rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    host: Option<String>,
    port: PortSpec,
}

/// How the port of an [`Address`] is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSpec {
    /// Exactly this port; `0` lets the OS pick one.
    Exact(u16),
    /// `N/find`: N if free, else the next free port above it, else any free port.
    Prefer(u16),
    /// `find`: any free port.
    Any,
}

/// Why a string is not a valid address (or seed).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressError {
    /// The string was empty (or only whitespace / a scheme).
    #[error("address is empty (expected host:port, a port, or `find`)")]
    Empty,
    /// A host was given without a port, e.g. `localhost` or `localhost:`.
    #[error("address `{0}` has no port (expected host:port, host:find or host:port/find)")]
    MissingPort(String),
    /// The port is not a number in 0..=65535 nor `find`.
    #[error("invalid port `{0}`: expected a number from 0 to 65535 or `find`")]
    BadPort(String),
    /// Something other than `/find` followed the port.
    #[error("unexpected `/{0}` in address: only a numeric port may be followed by `/find`")]
    BadSuffix(String),
    /// The host part is empty, e.g. `:8080`.
    #[error("address `{0}` has an empty host (give a host, or just the port to listen on all interfaces)")]
    EmptyHost(String),
    /// The host is not a hostname, an IPv4 address or a bracketed IPv6 address.
    #[error("invalid host in `{0}`: expected a hostname, an IPv4 address or a bracketed IPv6 address like [::1]:8080")]
    BadHost(String),
    /// A seed must name one concrete peer: no `find` forms and no port 0.
    #[error(
        "invalid seed `{0}`: a seed must name a concrete port (host:port or port), not `find` or 0"
    )]
    NotASeed(String),
    /// An advertise host must be one host that peers can reach: no port, not `0.0.0.0`.
    #[error("invalid advertise host `{0}`: expected a hostname or an IP address that peers can reach, without a port")]
    NotAnAdvertiseHost(String),
}

impl Address {
    /// Parses `localhost:8080`, `[::1]:8080`, `8080` (all interfaces), `host:0` or `host:find`
    /// (any free port), `host:8080/find` and `8080/find` (8080, else the next free port), or
    /// `find`; a leading `scheme://`, a trailing `/` and surrounding whitespace are ignored.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let trimmed = s.trim();
        // Strip a leading `scheme://`.
        let rest = match trimmed.find("://") {
            Some(i) => &trimmed[i + 3..],
            None => trimmed,
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Err(AddressError::Empty);
        }

        // Split off a `/suffix`; the only accepted one is `/find`.
        let (main, prefer) = match rest.split_once('/') {
            Some((main, suffix)) => {
                if !suffix.eq_ignore_ascii_case(FIND) {
                    return Err(AddressError::BadSuffix(suffix.to_string()));
                }
                (main, true)
            }
            None => (rest, false),
        };
        if main.is_empty() {
            return Err(AddressError::Empty);
        }

        let (host, port_text) = split_host_port(main)?;
        let port = match port_text {
            None => None,
            Some(p) if p.eq_ignore_ascii_case(FIND) => {
                if prefer {
                    // `find/find`, `host:find/find`: the suffix needs a numeric port.
                    return Err(AddressError::BadSuffix(FIND.to_string()));
                }
                Some(PortSpec::Any)
            }
            Some(p) => {
                let n = parse_port(p)?;
                Some(if !prefer {
                    PortSpec::Exact(n)
                } else if n == 0 {
                    // `0/find`: "any free port", the same as `find`.
                    PortSpec::Any
                } else {
                    PortSpec::Prefer(n)
                })
            }
        };
        match port {
            Some(port) => Ok(Address { host, port }),
            None => Err(AddressError::MissingPort(main.to_string())),
        }
    }

    /// The host as written (without IPv6 brackets); `None` means all interfaces.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// How the port is chosen.
    pub fn port(&self) -> PortSpec {
        self.port
    }

    /// The address to bind: `host` or 0.0.0.0 when None (names like `localhost` are
    /// resolved with [`ToSocketAddrs`], IPv4 first).
    ///
    /// Returns the bound std listener (already non-blocking) and the address to advertise to
    /// peers as `host:port`: the host as written (IPv6 in brackets), or the machine's
    /// [`hostname`] when the host is absent or an unspecified IP; the port is the one
    /// actually bound. `Exact(p)` fails with [`io::ErrorKind::AddrInUse`] when p is taken.
    pub fn bind_tcp(&self) -> io::Result<(TcpListener, String)> {
        let (listener, port) = self.bind_with(TcpListener::bind, |l| l.local_addr())?;
        listener.set_nonblocking(true)?;
        Ok((listener, self.advertised(port)))
    }

    /// Same as [`Address::bind_tcp`] for UDP (used by gossip): the bound, non-blocking std
    /// socket and the advertised `host:port`.
    pub fn bind_udp(&self) -> io::Result<(UdpSocket, String)> {
        let (socket, port) = self.bind_with(UdpSocket::bind, |s| s.local_addr())?;
        socket.set_nonblocking(true)?;
        Ok((socket, self.advertised(port)))
    }

    /// Binds following the port rule; returns the socket and the port actually bound.
    fn bind_with<T>(
        &self,
        bind: impl Fn(SocketAddr) -> io::Result<T>,
        local_addr: impl Fn(&T) -> io::Result<SocketAddr>,
    ) -> io::Result<(T, u16)> {
        let ips = self.bind_ips()?;
        let socket = match self.port {
            PortSpec::Exact(p) => bind_first(&ips, p, &bind)?,
            PortSpec::Any => bind_first(&ips, 0, &bind)?,
            PortSpec::Prefer(start) => {
                let last = (u32::from(start) + PREFER_TRIES - 1).min(u32::from(u16::MAX));
                let mut found = None;
                for p in u32::from(start)..=last {
                    // `p` is at most u16::MAX by construction.
                    let p = u16::try_from(p).unwrap_or(u16::MAX);
                    match bind_first(&ips, p, &bind) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) if is_port_unavailable(&e) => continue,
                        Err(e) => return Err(e),
                    }
                }
                match found {
                    Some(s) => s,
                    None => bind_first(&ips, 0, &bind)?,
                }
            }
        };
        let port = local_addr(&socket)?.port();
        Ok((socket, port))
    }

    /// The IPs to try binding, IPv4 first.
    fn bind_ips(&self) -> io::Result<Vec<IpAddr>> {
        let Some(host) = self.host.as_deref() else {
            return Ok(vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        for sa in (host, 0u16).to_socket_addrs()? {
            if !ips.contains(&sa.ip()) {
                ips.push(sa.ip());
            }
        }
        // Stable sort: IPv4 first, resolver order otherwise kept.
        ips.sort_by_key(|ip| !ip.is_ipv4());
        if ips.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("could not resolve host `{host}`"),
            ));
        }
        Ok(ips)
    }

    /// `host:port` to advertise for a socket bound on `port`.
    fn advertised(&self, port: u16) -> String {
        match self.host.as_deref() {
            None => format!("{}:{port}", hostname()),
            Some(h) => match h.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() => format!("{}:{port}", hostname()),
                _ => format!("{}:{port}", bracket(h)),
            },
        }
    }
}

/// Tries each IP with `port`; returns the first success. `AddrInUse` is returned at once
/// (the port is taken, so another address of the same host must not be used instead);
/// other errors (e.g. no IPv6 on this machine) move on to the next IP.
fn bind_first<T>(
    ips: &[IpAddr],
    port: u16,
    bind: &impl Fn(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last_err = None;
    for ip in ips {
        match bind(SocketAddr::new(*ip, port)) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address to bind")))
}

/// Whether `N/find` should move on to the next port after this error.
fn is_port_unavailable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
    )
}

/// Puts an IPv6 host in brackets so that `host:port` stays unambiguous.
fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Splits `main` (no scheme, no suffix, non-empty) into a host (None = all interfaces)
/// and the port text (None = missing).
fn split_host_port(main: &str) -> Result<(Option<String>, Option<&str>), AddressError> {
    // `[v6]:port`
    if let Some(inner) = main.strip_prefix('[') {
        let Some((v6, after)) = inner.split_once(']') else {
            return Err(AddressError::BadHost(main.to_string()));
        };
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(AddressError::BadHost(main.to_string()));
        }
        let port = match after.strip_prefix(':') {
            Some("") => None,
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(AddressError::BadHost(main.to_string())),
        };
        return Ok((Some(v6.to_string()), port));
    }

    match main.split_once(':') {
        None => {
            // A bare port, `find`, or a host without a port.
            if main.eq_ignore_ascii_case(FIND) || looks_numeric(main) {
                Ok((None, Some(main)))
            } else if valid_host(main) {
                Err(AddressError::MissingPort(main.to_string()))
            } else {
                Err(AddressError::BadHost(main.to_string()))
            }
        }
        Some((host, port)) => {
            if port.contains(':') {
                // `a:b:c`, or an IPv6 address without brackets.
                return Err(AddressError::BadHost(main.to_string()));
            }
            if host.is_empty() {
                return Err(AddressError::EmptyHost(main.to_string()));
            }
            if !valid_host(host) {
                return Err(AddressError::BadHost(main.to_string()));
            }
            let port = if port.is_empty() { None } else { Some(port) };
            Ok((Some(host.to_string()), port))
        }
    }
}

/// Something meant as a port number (possibly out of range or signed).
fn looks_numeric(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A port in 0..=65535, written with ASCII digits only.
fn parse_port(p: &str) -> Result<u16, AddressError> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::BadPort(p.to_string()));
    }
    p.parse::<u16>()
        .map_err(|_| AddressError::BadPort(p.to_string()))
}

/// A hostname (labels of letters, digits, `-`, `_` separated by dots) or an IPv4 address.
fn valid_host(h: &str) -> bool {
    if h.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    !h.is_empty()
        && h.len() <= 253
        && h.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

impl From<u16> for Address {
    /// A bare port: all interfaces, exactly `port`.
    fn from(port: u16) -> Self {
        Address {
            host: None,
            port: PortSpec::Exact(port),
        }
    }
}

impl fmt::Display for Address {
    /// The canonical form, which [`Address::parse`] reads back to an equal value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(h) = &self.host {
            write!(f, "{}:", bracket(h))?;
        }
        match self.port {
            PortSpec::Exact(p) => write!(f, "{p}"),
            PortSpec::Prefer(p) => write!(f, "{p}/{FIND}"),
            PortSpec::Any => f.write_str(FIND),
        }
    }
}

/// Parses a gossip seed into `host:port`. A bare port names a peer on this machine
/// (`9742` → `127.0.0.1:9742`, as the original's GrapevineCluster documents). The `find`
/// forms and port 0 are not seeds.
pub fn parse_seed(s: &str) -> Result<String, AddressError> {
    let addr = Address::parse(s)?;
    match addr.port {
        PortSpec::Exact(p) if p != 0 => {
            let host = addr
                .host
                .as_deref()
                .map_or_else(|| "127.0.0.1".to_string(), bracket);
            Ok(format!("{host}:{p}"))
        }
        _ => Err(AddressError::NotASeed(s.trim().to_string())),
    }
}

/// Parses the host a node advertises in place of the one it binds (`--advertise-host`, for
/// example a Kubernetes pod's IP): a hostname, an IPv4 address, or an IPv6 address with or
/// without brackets. Returns it without brackets. Fails on a port, on an unspecified IP
/// (`0.0.0.0`, `::`: no peer can reach it) and on anything that is not a host.
pub fn parse_advertise_host(s: &str) -> Result<String, AddressError> {
    let trimmed = s.trim();
    let bad = || AddressError::NotAnAdvertiseHost(trimmed.to_string());
    let inner = trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(trimmed);
    match inner.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Err(bad()),
        Ok(ip) => Ok(ip.to_string()),
        Err(_) if inner == trimmed && valid_host(inner) && !looks_numeric(inner) => {
            Ok(inner.to_string())
        }
        Err(_) => Err(bad()),
    }
}

/// `host:port` as peers dial it: an IPv6 host in brackets.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracket(host))
}

/// The machine's hostname (`/proc/sys/kernel/hostname`, trimmed), or `localhost` when it
/// cannot be read or is empty.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn advertise_hosts_are_one_reachable_host() {
        use super::parse_advertise_host as parse;
        assert_eq!(parse(" 10.1.2.3 ").unwrap(), "10.1.2.3");
        assert_eq!(
            parse("pod-0.meshage.default.svc").unwrap(),
            "pod-0.meshage.default.svc"
        );
        assert_eq!(parse("[fd00::1]").unwrap(), "fd00::1");
        assert_eq!(parse("fd00::1").unwrap(), "fd00::1");
        assert_eq!(super::host_port("fd00::1", 9742), "[fd00::1]:9742");
        assert_eq!(super::host_port("10.1.2.3", 9742), "10.1.2.3:9742");
        for bad in [
            "",
            "0.0.0.0",
            "::",
            "[::]",
            "10.1.2.3:80",
            "host:80",
            "a b",
            "8080",
            "[host]",
        ] {
            assert!(
                matches!(parse(bad), Err(super::AddressError::NotAnAdvertiseHost(_))),
                "{bad:?}"
            );
        }
    }

    use super::*;

    fn addr(host: Option<&str>, port: PortSpec) -> Address {
        Address {
            host: host.map(str::to_string),
            port,
        }
    }

    /// Parses `s`, checks the result, and checks that it displays as `shown` and reparses.
    fn check(s: &str, expected: Address, shown: &str) {
        let parsed = Address::parse(s).unwrap_or_else(|e| panic!("`{s}` should parse: {e}"));
        assert_eq!(parsed, expected, "parsing `{s}`");
        assert_eq!(parsed.to_string(), shown, "displaying `{s}`");
        assert_eq!(
            Address::parse(shown).unwrap(),
            parsed,
            "round-trip of `{s}`"
        );
        assert_eq!(s.parse::<Address>().unwrap(), parsed, "FromStr of `{s}`");
    }

    fn err(s: &str) -> AddressError {
        match Address::parse(s) {
            Ok(a) => panic!("`{s}` should not parse, got {a:?}"),
            Err(e) => e,
        }
    }

    /// A port that is bound (and kept bound) on 127.0.0.1 for TCP.
    fn taken_tcp() -> (TcpListener, u16) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        (l, p)
    }

    #[test]
    fn host_port() {
        check(
            "localhost:8080",
            addr(Some("localhost"), PortSpec::Exact(8080)),
            "localhost:8080",
        );
        check(
            "127.0.0.1:9742",
            addr(Some("127.0.0.1"), PortSpec::Exact(9742)),
            "127.0.0.1:9742",
        );
        check(
            "my-host.example.com:1",
            addr(Some("my-host.example.com"), PortSpec::Exact(1)),
            "my-host.example.com:1",
        );
        check(
            "node_1:65535",
            addr(Some("node_1"), PortSpec::Exact(65535)),
            "node_1:65535",
        );
        check(
            "find:80",
            addr(Some("find"), PortSpec::Exact(80)),
            "find:80",
        );
    }

    #[test]
    fn ipv6_brackets() {
        check(
            "[::1]:8080",
            addr(Some("::1"), PortSpec::Exact(8080)),
            "[::1]:8080",
        );
        check(
            "[::]:8080",
            addr(Some("::"), PortSpec::Exact(8080)),
            "[::]:8080",
        );
        check(
            "[fe80::1:2]:find",
            addr(Some("fe80::1:2"), PortSpec::Any),
            "[fe80::1:2]:find",
        );
        check(
            "[::1]:8080/find",
            addr(Some("::1"), PortSpec::Prefer(8080)),
            "[::1]:8080/find",
        );
        check(
            "http://[::1]:80/",
            addr(Some("::1"), PortSpec::Exact(80)),
            "[::1]:80",
        );
    }

    #[test]
    fn bare_port() {
        check("8080", addr(None, PortSpec::Exact(8080)), "8080");
        check("0", addr(None, PortSpec::Exact(0)), "0");
        check("08080", addr(None, PortSpec::Exact(8080)), "8080");
        assert_eq!(Address::from(8080), addr(None, PortSpec::Exact(8080)));
        assert_eq!(Address::from(8080).to_string(), "8080");
        assert_eq!(Address::from(0).port(), PortSpec::Exact(0));
    }

    #[test]
    fn port_zero() {
        check(
            "127.0.0.1:0",
            addr(Some("127.0.0.1"), PortSpec::Exact(0)),
            "127.0.0.1:0",
        );
        check(
            "127.0.0.1:0/find",
            addr(Some("127.0.0.1"), PortSpec::Any),
            "127.0.0.1:find",
        );
        check("0/find", addr(None, PortSpec::Any), "find");
    }

    #[test]
    fn find_forms() {
        check(
            "localhost:find",
            addr(Some("localhost"), PortSpec::Any),
            "localhost:find",
        );
        check(
            "localhost:8080/find",
            addr(Some("localhost"), PortSpec::Prefer(8080)),
            "localhost:8080/find",
        );
        check("8080/find", addr(None, PortSpec::Prefer(8080)), "8080/find");
        check("find", addr(None, PortSpec::Any), "find");
        check("FIND", addr(None, PortSpec::Any), "find");
        check("h:Find", addr(Some("h"), PortSpec::Any), "h:find");
        check("h:1/FIND", addr(Some("h"), PortSpec::Prefer(1)), "h:1/find");
        check("find/", addr(None, PortSpec::Any), "find");
        check(
            "8080/find/",
            addr(None, PortSpec::Prefer(8080)),
            "8080/find",
        );
    }

    #[test]
    fn unspecified_hosts_are_kept() {
        check(
            "0.0.0.0:8080",
            addr(Some("0.0.0.0"), PortSpec::Exact(8080)),
            "0.0.0.0:8080",
        );
        check(
            "0.0.0.0:find",
            addr(Some("0.0.0.0"), PortSpec::Any),
            "0.0.0.0:find",
        );
    }

    #[test]
    fn scheme_and_trailing_slash_are_stripped() {
        let plain = addr(Some("localhost"), PortSpec::Exact(8080));
        check("http://localhost:8080", plain.clone(), "localhost:8080");
        check("https://localhost:8080/", plain.clone(), "localhost:8080");
        check("tcp://localhost:8080", plain.clone(), "localhost:8080");
        check("localhost:8080/", plain.clone(), "localhost:8080");
        check("  localhost:8080 \n", plain, "localhost:8080");
        check("http://8080", addr(None, PortSpec::Exact(8080)), "8080");
        check("http://find", addr(None, PortSpec::Any), "find");
        check(
            "http://h:9/find",
            addr(Some("h"), PortSpec::Prefer(9)),
            "h:9/find",
        );
    }

    #[test]
    fn accessors() {
        let a = Address::parse("localhost:8080/find").unwrap();
        assert_eq!(a.host(), Some("localhost"));
        assert_eq!(a.port(), PortSpec::Prefer(8080));
        let b = Address::parse("[::1]:1").unwrap();
        assert_eq!(b.host(), Some("::1"));
        let c = Address::parse("find").unwrap();
        assert_eq!(c.host(), None);
        assert_eq!(c.port(), PortSpec::Any);
    }

    #[test]
    fn display_round_trips_every_kind() {
        for host in [
            None,
            Some("localhost"),
            Some("10.0.0.1"),
            Some("::1"),
            Some("0.0.0.0"),
        ] {
            for port in [
                PortSpec::Exact(0),
                PortSpec::Exact(1),
                PortSpec::Exact(65535),
                PortSpec::Prefer(1),
                PortSpec::Prefer(65535),
                PortSpec::Any,
            ] {
                let a = addr(host, port);
                assert_eq!(Address::parse(&a.to_string()).unwrap(), a, "{a}");
            }
        }
    }

    #[test]
    fn empty() {
        assert_eq!(err(""), AddressError::Empty);
        assert_eq!(err("   "), AddressError::Empty);
        assert_eq!(err("http://"), AddressError::Empty);
        assert_eq!(err("/"), AddressError::Empty);
        assert_eq!(err("/find"), AddressError::Empty);
    }

    #[test]
    fn missing_port() {
        assert_eq!(
            err("localhost:"),
            AddressError::MissingPort("localhost:".into())
        );
        assert_eq!(
            err("localhost"),
            AddressError::MissingPort("localhost".into())
        );
        assert_eq!(
            err("127.0.0.1"),
            AddressError::MissingPort("127.0.0.1".into())
        );
        assert_eq!(err("[::1]"), AddressError::MissingPort("[::1]".into()));
        assert_eq!(err("[::1]:"), AddressError::MissingPort("[::1]:".into()));
        assert_eq!(
            err("localhost:/find"),
            AddressError::MissingPort("localhost:".into())
        );
    }

    #[test]
    fn bad_port() {
        assert_eq!(err("host:65536"), AddressError::BadPort("65536".into()));
        assert_eq!(
            err("host:99999999999999999999"),
            AddressError::BadPort("99999999999999999999".into())
        );
        assert_eq!(err("65536"), AddressError::BadPort("65536".into()));
        assert_eq!(err("host:abc"), AddressError::BadPort("abc".into()));
        assert_eq!(err("host:+80"), AddressError::BadPort("+80".into()));
        assert_eq!(err("host:-1"), AddressError::BadPort("-1".into()));
        assert_eq!(err("-1"), AddressError::BadPort("-1".into()));
        assert_eq!(err("host: 80"), AddressError::BadPort(" 80".into()));
        assert_eq!(err("[::1]:x"), AddressError::BadPort("x".into()));
        assert_eq!(err("70000/find"), AddressError::BadPort("70000".into()));
    }

    #[test]
    fn bad_suffix() {
        assert_eq!(
            err("host:8080/bogus"),
            AddressError::BadSuffix("bogus".into())
        );
        assert_eq!(err("8080/bogus"), AddressError::BadSuffix("bogus".into()));
        assert_eq!(
            err("http://localhost:8080/api/v1"),
            AddressError::BadSuffix("api/v1".into())
        );
        assert_eq!(
            err("host:8080/find/x"),
            AddressError::BadSuffix("find/x".into())
        );
        assert_eq!(err("find/find"), AddressError::BadSuffix("find".into()));
        assert_eq!(
            err("host:find/find"),
            AddressError::BadSuffix("find".into())
        );
    }

    #[test]
    fn bad_host() {
        assert_eq!(err("a:b:c"), AddressError::BadHost("a:b:c".into()));
        assert_eq!(err("::1:8080"), AddressError::BadHost("::1:8080".into()));
        assert_eq!(err("::"), AddressError::BadHost("::".into()));
        assert_eq!(err("[::1"), AddressError::BadHost("[::1".into()));
        assert_eq!(err("[nope]:80"), AddressError::BadHost("[nope]:80".into()));
        assert_eq!(
            err("[127.0.0.1]:80"),
            AddressError::BadHost("[127.0.0.1]:80".into())
        );
        assert_eq!(err("[::1]80"), AddressError::BadHost("[::1]80".into()));
        assert_eq!(
            err("bad host:80"),
            AddressError::BadHost("bad host:80".into())
        );
        assert_eq!(err("a..b:80"), AddressError::BadHost("a..b:80".into()));
        assert_eq!(
            err("user@host:80"),
            AddressError::BadHost("user@host:80".into())
        );
        assert_eq!(err("bad host"), AddressError::BadHost("bad host".into()));
    }

    #[test]
    fn empty_host() {
        assert_eq!(err(":8080"), AddressError::EmptyHost(":8080".into()));
        assert_eq!(err(":find"), AddressError::EmptyHost(":find".into()));
        assert_eq!(err(":"), AddressError::EmptyHost(":".into()));
    }

    #[test]
    fn error_messages_are_one_line_and_name_the_input() {
        let cases = [
            "",
            "host:",
            "host:65536",
            "host:abc",
            "host:8080/bogus",
            "a:b:c",
            ":8080",
        ];
        for s in cases {
            let msg = err(s).to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(!msg.is_empty());
        }
        assert!(err("host:abc").to_string().contains("`abc`"));
        assert!(err("host:8080/bogus").to_string().contains("/bogus"));
        assert!(err("a:b:c").to_string().contains("a:b:c"));
        assert!(err(":8080").to_string().contains(":8080"));
        assert!(err("host:").to_string().contains("host:"));
        let seed = parse_seed("find").unwrap_err().to_string();
        assert!(seed.contains("find") && !seed.contains('\n'), "{seed}");
    }

    #[test]
    fn hostname_is_nonempty_and_trimmed() {
        let h = hostname();
        assert!(!h.is_empty());
        assert_eq!(h, h.trim());
    }

    #[test]
    fn seeds() {
        assert_eq!(parse_seed("9742").unwrap(), "127.0.0.1:9742");
        assert_eq!(parse_seed(" 9742 ").unwrap(), "127.0.0.1:9742");
        assert_eq!(parse_seed("localhost:9742").unwrap(), "localhost:9742");
        assert_eq!(parse_seed("10.1.2.3:9742").unwrap(), "10.1.2.3:9742");
        assert_eq!(parse_seed("[::1]:9742").unwrap(), "[::1]:9742");
        assert_eq!(parse_seed("udp://peer:9742/").unwrap(), "peer:9742");
        assert_eq!(
            parse_seed("find"),
            Err(AddressError::NotASeed("find".into()))
        );
        assert_eq!(
            parse_seed("host:find"),
            Err(AddressError::NotASeed("host:find".into()))
        );
        assert_eq!(
            parse_seed("9742/find"),
            Err(AddressError::NotASeed("9742/find".into()))
        );
        assert_eq!(
            parse_seed("host:1/find"),
            Err(AddressError::NotASeed("host:1/find".into()))
        );
        assert_eq!(parse_seed("0"), Err(AddressError::NotASeed("0".into())));
        assert_eq!(
            parse_seed("host:0"),
            Err(AddressError::NotASeed("host:0".into()))
        );
        assert_eq!(parse_seed(""), Err(AddressError::Empty));
        assert_eq!(
            parse_seed("host:abc"),
            Err(AddressError::BadPort("abc".into()))
        );
    }

    #[test]
    fn bind_tcp_port_zero() {
        let (l, adv) = Address::parse("127.0.0.1:0").unwrap().bind_tcp().unwrap();
        let local = l.local_addr().unwrap();
        assert_ne!(local.port(), 0);
        assert_eq!(local.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(adv, format!("127.0.0.1:{}", local.port()));
        // Non-blocking: accept with nobody connecting returns WouldBlock at once.
        assert_eq!(l.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // It really listens.
        std::net::TcpStream::connect(local).unwrap();
    }

    #[test]
    fn bind_tcp_find() {
        let (l, adv) = Address::parse("127.0.0.1:find")
            .unwrap()
            .bind_tcp()
            .unwrap();
        let port = l.local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(adv, format!("127.0.0.1:{port}"));
    }

    #[test]
    fn bind_tcp_prefer_skips_a_taken_port() {
        let (_held, taken) = taken_tcp();
        let a = Address::parse(&format!("127.0.0.1:{taken}/find")).unwrap();
        assert_eq!(a.port(), PortSpec::Prefer(taken));
        let (l, adv) = a.bind_tcp().unwrap();
        let port = l.local_addr().unwrap().port();
        assert_ne!(port, taken);
        assert_ne!(port, 0);
        assert_eq!(adv, format!("127.0.0.1:{port}"));
    }

    #[test]
    fn bind_tcp_prefer_uses_a_free_port() {
        // Find a port that is free right now, release it, then prefer it.
        let (held, free) = taken_tcp();
        drop(held);
        let (l, _) = Address::parse(&format!("127.0.0.1:{free}/find"))
            .unwrap()
            .bind_tcp()
            .unwrap();
        let port = l.local_addr().unwrap().port();
        // Normally exactly `free`; another process could grab it meanwhile, in which case
        // the next free port above it is used.
        assert!(port >= free, "{port} vs {free}");
    }

    #[test]
    fn bind_tcp_prefer_near_the_top_falls_back() {
        let (l, _) = Address::parse("127.0.0.1:65535/find")
            .unwrap()
            .bind_tcp()
            .unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
    }

    #[test]
    fn bind_tcp_exact_taken_is_addr_in_use() {
        let (_held, taken) = taken_tcp();
        let e = Address::parse(&format!("127.0.0.1:{taken}"))
            .unwrap()
            .bind_tcp()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn bind_tcp_exact_free() {
        let (held, free) = taken_tcp();
        drop(held);
        if let Ok((l, adv)) = Address::parse(&format!("127.0.0.1:{free}"))
            .unwrap()
            .bind_tcp()
        {
            assert_eq!(l.local_addr().unwrap().port(), free);
            assert_eq!(adv, format!("127.0.0.1:{free}"));
        }
    }

    #[test]
    fn bind_tcp_bare_port_advertises_hostname() {
        let (l, adv) = Address::from(0).bind_tcp().unwrap();
        let local = l.local_addr().unwrap();
        assert!(local.ip().is_unspecified());
        assert_eq!(adv, format!("{}:{}", hostname(), local.port()));

        let (l, adv) = Address::parse("find").unwrap().bind_tcp().unwrap();
        assert_eq!(
            adv,
            format!("{}:{}", hostname(), l.local_addr().unwrap().port())
        );
    }

    #[test]
    fn bind_tcp_unspecified_host_advertises_hostname() {
        let (l, adv) = Address::parse("0.0.0.0:0").unwrap().bind_tcp().unwrap();
        assert!(l.local_addr().unwrap().ip().is_unspecified());
        assert_eq!(
            adv,
            format!("{}:{}", hostname(), l.local_addr().unwrap().port())
        );
    }

    #[test]
    fn bind_tcp_localhost_name_keeps_name_and_prefers_ipv4() {
        let (l, adv) = Address::parse("localhost:0").unwrap().bind_tcp().unwrap();
        let local = l.local_addr().unwrap();
        assert!(local.ip().is_loopback());
        assert!(local.is_ipv4(), "{local}");
        assert_eq!(adv, format!("localhost:{}", local.port()));
    }

    #[test]
    fn bind_tcp_ipv6_loopback_is_bracketed() {
        // Skipped when the machine has no IPv6.
        if let Ok((l, adv)) = Address::parse("[::1]:0").unwrap().bind_tcp() {
            let port = l.local_addr().unwrap().port();
            assert_eq!(adv, format!("[::1]:{port}"));
            assert_eq!(Address::parse(&adv).unwrap().port(), PortSpec::Exact(port));
        }
    }

    #[test]
    fn bind_tcp_unresolvable_host_is_an_error() {
        assert!(Address::parse("no-such-host.invalid:0")
            .unwrap()
            .bind_tcp()
            .is_err());
    }

    #[test]
    fn bind_udp_port_zero() {
        let (s, adv) = Address::parse("127.0.0.1:0").unwrap().bind_udp().unwrap();
        let port = s.local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert_eq!(adv, format!("127.0.0.1:{port}"));
        let mut buf = [0u8; 8];
        assert_eq!(
            s.recv_from(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn bind_udp_exact_taken_and_prefer() {
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap().port();
        let e = Address::parse(&format!("127.0.0.1:{taken}"))
            .unwrap()
            .bind_udp()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);

        let (s, adv) = Address::parse(&format!("127.0.0.1:{taken}/find"))
            .unwrap()
            .bind_udp()
            .unwrap();
        let port = s.local_addr().unwrap().port();
        assert_ne!(port, taken);
        assert_ne!(port, 0);
        assert_eq!(adv, format!("127.0.0.1:{port}"));
    }

    #[test]
    fn bind_udp_bare_port_advertises_hostname() {
        let (s, adv) = Address::from(0).bind_udp().unwrap();
        assert_eq!(
            adv,
            format!("{}:{}", hostname(), s.local_addr().unwrap().port())
        );
    }
}
