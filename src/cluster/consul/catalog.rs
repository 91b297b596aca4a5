//! The records meshage keeps in Consul: the registration of a service in the original's format,
//! what the catalog and health answers say about streams and their instances, and how Consul
//! spells a duration. Pure: no calls to the agent, tested on literal JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::ConsulConfig;
use crate::cluster::LocalNode;

/// The tag prefix the original uses for an HTTP endpoint: `endpoint~http~<url>`.
const ENDPOINT_TAG: &str = "endpoint~http~";
/// Service meta naming the meshage node that runs a service.
pub(super) const NODE_META: &str = "meshage-node";
/// Service meta with the fingerprint of that node's peer certificate, when it has one.
const TLS_META: &str = "meshage-tls";

/// A Go duration Consul parses: whole milliseconds.
pub(super) fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Splits `http://host:port` into the host (without IPv6 brackets) and the port.
fn host_port(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let rest = rest.split('/').next()?;
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

/// The registration of one service, in the original's format plus the node id in `Meta`.
pub(super) fn registration(
    local: &LocalNode,
    id: &str,
    stream: &str,
    config: &ConsulConfig,
) -> Value {
    let (host, port) = host_port(&local.endpoint).unwrap_or_default();
    let mut meta = json!({ NODE_META: local.node_id });
    if let Some(fingerprint) = &local.fingerprint {
        meta[TLS_META] = json!(fingerprint);
    }
    json!({
        "ID": id,
        "Name": stream,
        "Address": host,
        "Port": port,
        "Tags": [format!("{ENDPOINT_TAG}{}", local.endpoint)],
        "Meta": meta,
        "Check": {
            "HTTP": format!("{}/api/health", local.endpoint),
            "Interval": go_duration(config.check_interval),
            "DeregisterCriticalServiceAfter": go_duration(config.deregister_critical_after),
        },
    })
}

/// The HTTP endpoint in a list of tags, parsed as the original does (`endpoint~http~<url>`).
pub(super) fn endpoint_of(tags: &[&str]) -> Option<String> {
    tags.iter().find_map(|tag| {
        let mut parts = tag.splitn(3, '~');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("endpoint"), Some("http"), Some(url)) if !url.is_empty() => Some(url.to_owned()),
            _ => None,
        }
    })
}

/// One passing instance of a stream, as the health endpoint lists it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Instance {
    pub(super) id: String,
    pub(super) stream: String,
    pub(super) endpoint: String,
    /// The meshage node id, or the endpoint for a service registered without one.
    pub(super) member: String,
    /// The fingerprint of the node's peer certificate, if it published one.
    pub(super) fingerprint: Option<String>,
}

/// The instances in an answer of `/v1/health/service/<stream>`; those without an endpoint tag
/// are not meshage's and are skipped.
pub(super) fn instances_of(body: &[u8]) -> Result<Vec<Instance>, String> {
    let entries: Vec<Value> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(entries
        .iter()
        .filter_map(|entry| {
            let service = entry.get("Service")?;
            let id = service.get("ID")?.as_str()?.to_owned();
            let stream = service.get("Service")?.as_str()?.to_owned();
            let tags: Vec<&str> = service
                .get("Tags")
                .and_then(Value::as_array)
                .map(|t| t.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let endpoint = endpoint_of(&tags)?;
            let meta = |key: &str| {
                service
                    .get("Meta")
                    .and_then(|m| m.get(key))
                    .and_then(Value::as_str)
                    .filter(|m| !m.is_empty())
            };
            let member = meta(NODE_META).map_or_else(|| endpoint.clone(), str::to_owned);
            let fingerprint = meta(TLS_META).map(str::to_owned);
            Some(Instance {
                id,
                stream,
                endpoint,
                member,
                fingerprint,
            })
        })
        .collect())
}

/// The streams in an answer of `/v1/catalog/services`: names with an endpoint tag.
pub(super) fn streams_of(body: &[u8]) -> Result<Vec<String>, String> {
    let services: BTreeMap<String, Vec<String>> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(services
        .into_iter()
        .filter(|(_, tags)| tags.iter().any(|t| t.starts_with("endpoint~")))
        .map(|(name, _)| name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_tags_parse_as_the_original_parses_them() {
        assert_eq!(
            endpoint_of(&["x", "endpoint~http~http://10.0.0.1:8080"]).as_deref(),
            Some("http://10.0.0.1:8080")
        );
        assert_eq!(endpoint_of(&["endpoint~tcp~10.0.0.1:1"]), None);
        assert_eq!(endpoint_of(&["endpoint~http~"]), None);
        assert_eq!(endpoint_of(&[]), None);
    }

    #[test]
    fn a_registration_has_the_originals_shape() {
        let local = LocalNode::new("n1", "http://10.1.2.3:8080");
        let config = ConsulConfig::default();
        let body = registration(&local, "s1", "echo", &config);
        assert_eq!(
            body,
            json!({
                "ID": "s1",
                "Name": "echo",
                "Address": "10.1.2.3",
                "Port": 8080,
                "Tags": ["endpoint~http~http://10.1.2.3:8080"],
                "Meta": {"meshage-node": "n1"},
                "Check": {
                    "HTTP": "http://10.1.2.3:8080/api/health",
                    "Interval": "5000ms",
                    "DeregisterCriticalServiceAfter": "60000ms",
                },
            })
        );
        assert_eq!(host_port("http://[::1]:80"), Some(("::1".into(), 80)));
        let keyed = LocalNode {
            fingerprint: Some("ab".repeat(32)),
            ..local
        };
        let body = registration(&keyed, "s1", "echo", &config);
        assert_eq!(
            body["Meta"],
            json!({"meshage-node": "n1", "meshage-tls": "ab".repeat(32)})
        );
    }

    #[test]
    fn health_answers_become_instances_and_foreign_services_are_skipped() {
        let body = json!([
            {"Node": {"Node": "a"}, "Service": {"ID": "s1", "Service": "echo",
                "Tags": ["endpoint~http~http://h:1"],
                "Meta": {"meshage-node": "n1", "meshage-tls": "f1"}}},
            {"Node": {"Node": "a"}, "Service": {"ID": "s2", "Service": "echo",
                "Tags": ["endpoint~http~http://h:2"], "Meta": null}},
            {"Node": {"Node": "a"}, "Service": {"ID": "redis", "Service": "echo", "Tags": []}},
        ]);
        let instances = instances_of(body.to_string().as_bytes()).unwrap();
        assert_eq!(instances.len(), 2);
        assert_eq!(instances[0].member, "n1");
        assert_eq!(instances[1].member, "http://h:2");
        assert_eq!(instances[0].fingerprint.as_deref(), Some("f1"));
        assert_eq!(instances[1].fingerprint, None);
        let catalog = json!({"consul": [], "echo": ["endpoint~http~http://h:1"], "redis": ["v1"]});
        assert_eq!(
            streams_of(catalog.to_string().as_bytes()).unwrap(),
            ["echo"]
        );
    }
}
