//! OpenTelemetry export of each request's spans over OTLP (feature `otel`).
//!
//! A node makes four spans per request: `receive` (the node's part, from the request's arrival
//! to its answer; a child of the caller's span when a `traceparent` came), and inside it
//! `route` (choosing the owner), `forward` (to the owner on another node, whose `receive` span
//! is its child) and `handle` (a handler of this node; an HTTP handler gets `traceparent` with
//! this span as parent). They are exported over OTLP/HTTP with protobuf, in batches, from the
//! node's tokio runtime.
//!
//! Configuration is OpenTelemetry's standard variables, read by [`OtelConfig::from_env`]:
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (with
//! `/v1/traces` added), `OTEL_EXPORTER_OTLP_PROTOCOL` (and `_TRACES_PROTOCOL`: `http/protobuf`
//! only), `OTEL_SERVICE_NAME` (default `meshage`), `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`: a request whose `traceparent`
//! says not sampled is not exported). `OTEL_EXPORTER_OTLP_HEADERS` and `_TIMEOUT` are read by
//! the exporter itself. Without an endpoint, export stays off: no span is made and nothing is
//! sent (BENCHMARKS.md measures what the feature still costs per request).
//!
//! A library user adds [`layer`] to the subscriber it installs, inside a tokio runtime:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! let otel = match meshage::otel::OtelConfig::from_env()? {
//!     Some(config) => Some(meshage::otel::layer(&config)?),
//!     None => None,
//! };
//! tracing_subscriber::registry().with(otel).init();
//! // ... start nodes; `Node::shutdown` flushes the spans not yet sent.
//! # Ok(()) }
//! ```

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::{span_processor_with_async_runtime::BatchSpanProcessor, Sampler};
use opentelemetry_sdk::Resource;
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::observe::otel as hooks;

/// Why export cannot start as configured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    #[error("{variable}={value} is not supported: meshage exports spans over http/protobuf only")]
    Protocol {
        variable: &'static str,
        value: String,
    },
    #[error("OTEL_TRACES_SAMPLER={0} is not supported (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)")]
    Sampler(String),
    #[error("OTEL_TRACES_SAMPLER_ARG={0} is not a ratio between 0 and 1")]
    SamplerArg(String),
    #[error("{0} is not an http:// or https:// URL")]
    Endpoint(&'static str),
    #[error("cannot start the OTLP exporter: {0}")]
    Exporter(String),
    #[error("an OpenTelemetry exporter is already installed in this process")]
    AlreadyInstalled,
}

/// Which traces are exported (`OTEL_TRACES_SAMPLER`, with `OTEL_TRACES_SAMPLER_ARG` as the
/// ratio). The parent-based ones follow the `sampled` flag of a request's `traceparent`, and
/// decide as their name says for requests that start a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum TraceSampler {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

impl TraceSampler {
    fn sdk(self) -> Sampler {
        match self {
            TraceSampler::AlwaysOn => Sampler::AlwaysOn,
            TraceSampler::AlwaysOff => Sampler::AlwaysOff,
            TraceSampler::Ratio(r) => Sampler::TraceIdRatioBased(r),
            TraceSampler::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            TraceSampler::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            TraceSampler::ParentBasedRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OtelConfig {
    /// The full URL spans are posted to, `/v1/traces` included.
    pub endpoint: String,
    /// The `service.name` of the spans.
    pub service_name: String,
    pub sampler: TraceSampler,
}

impl OtelConfig {
    /// Export to `endpoint` (the full URL, `/v1/traces` included) as `meshage`, with the
    /// default sampler.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtelConfig {
            endpoint: endpoint.into(),
            service_name: "meshage".to_owned(),
            sampler: TraceSampler::ParentBasedAlwaysOn,
        }
    }

    /// The configuration OpenTelemetry's standard variables give (see the module docs);
    /// `None` when no endpoint is set. Fails on a protocol other than `http/protobuf`, a
    /// sampler this SDK does not have, or a ratio that is not one.
    pub fn from_env() -> Result<Option<OtelConfig>, OtelError> {
        OtelConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// [`OtelConfig::from_env`] with the variables from `var`.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtelConfig>, OtelError> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let (variable, endpoint) = match (
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            set("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
            (None, Some(base)) => (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim_end_matches('/')),
            ),
            (None, None) => return Ok(None),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(OtelError::Endpoint(variable));
        }
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            match set(variable) {
                Some(value) if value != "http/protobuf" => {
                    return Err(OtelError::Protocol { variable, value })
                }
                // The signal's own variable wins over the general one.
                Some(_) => break,
                None => {}
            }
        }
        let ratio = || match set("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(arg) => arg
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or(OtelError::SamplerArg(arg)),
        };
        let sampler = match set("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => TraceSampler::ParentBasedAlwaysOn,
            Some("always_on") => TraceSampler::AlwaysOn,
            Some("always_off") => TraceSampler::AlwaysOff,
            Some("traceidratio") => TraceSampler::Ratio(ratio()?),
            Some("parentbased_always_off") => TraceSampler::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => TraceSampler::ParentBasedRatio(ratio()?),
            Some(other) => return Err(OtelError::Sampler(other.to_owned())),
        };
        Ok(Some(OtelConfig {
            endpoint,
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| "meshage".to_owned()),
            sampler,
        }))
    }
}

/// The process's one exporter, kept so that a node's shutdown can flush it.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Starts the exporter that `config` describes and returns the layer that feeds it meshage's
/// request spans; from then on, every request is traced. Call it once per process, inside a
/// tokio runtime (the exporter sends from a task of that runtime). Fails when the exporter
/// cannot be built, or one is already installed.
pub fn layer<S>(config: &OtelConfig) -> Result<impl Layer<S> + Send + Sync, OtelError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if PROVIDER.get().is_some() {
        return Err(OtelError::AlreadyInstalled);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.clone())
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(config.sampler.sdk())
        .with_resource(
            Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("meshage");
    PROVIDER
        .set(provider)
        .map_err(|_| OtelError::AlreadyInstalled)?;
    hooks::enable();
    // Only meshage's request spans (and the events inside them) go to the exporter, whatever
    // the log filter says.
    let spans = Targets::new().with_target("meshage::observe", Level::DEBUG);
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(spans))
}

/// Sends the spans not yet exported, waiting at most for the exporter's timeout. Does nothing
/// when no exporter is installed. [`crate::Node::shutdown`] calls it.
pub async fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let flushed = tokio::task::spawn_blocking(|| provider.force_flush()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "could not export the last spans");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<OtelConfig>, OtelError> {
        OtelConfig::from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn the_standard_variables_configure_export() {
        assert_eq!(config(&[]), Ok(None), "off without an endpoint");
        assert_eq!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), Ok(None));
        let base = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(base.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(base.service_name, "meshage");
        assert_eq!(base.sampler, TraceSampler::ParentBasedAlwaysOn);
        let own = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://traces.example/in",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "edge"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(own.endpoint, "https://traces.example/in");
        assert_eq!(own.service_name, "edge");
        assert_eq!(own.sampler, TraceSampler::ParentBasedRatio(0.25));
    }

    #[test]
    fn what_meshage_cannot_do_is_refused() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let grpc = config(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert_eq!(
            grpc.to_string(),
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported: meshage exports spans over http/protobuf only"
        );
        assert!(matches!(
            config(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
            ]),
            Err(OtelError::Protocol { .. })
        ));
        assert!(
            config(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ])
            .is_ok(),
            "the signal's own variable wins"
        );
        assert!(matches!(
            config(&[endpoint, ("OTEL_TRACES_SAMPLER", "xray")]),
            Err(OtelError::Sampler(_))
        ));
        assert!(matches!(
            config(&[
                endpoint,
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2")
            ]),
            Err(OtelError::SamplerArg(_))
        ));
        assert_eq!(
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]),
            Err(OtelError::Endpoint("OTEL_EXPORTER_OTLP_ENDPOINT"))
        );
    }
}
