//! The binary's log output on stderr (plain, or JSON for `meshage node --log-format json`),
//! filtered by `RUST_LOG`; and, built with the feature `otel` and given an endpoint in
//! OpenTelemetry's standard variables, the export of `meshage node`'s request spans.

use anyhow::Result;
use tracing_subscriber::EnvFilter;

/// The filter of `RUST_LOG`, or the default one.
fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,chitchat=warn"))
}

/// Installs the process's subscriber: logs as `json` says (coloured when `ansi`), and the span exporter when `export`
/// and the variables ask for it. Runs inside the tokio runtime, where the exporter sends from.
/// Fails when the variables ask for an export meshage cannot do.
pub(crate) fn init(json: bool, ansi: bool, export: bool) -> Result<()> {
    #[cfg(feature = "otel")]
    if export {
        if let Some(config) = meshage::otel::OtelConfig::from_env()? {
            return with_export(json, ansi, &config);
        }
    }
    let _ = export;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    if json {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        logs.with_ansi(ansi).init();
    }
    Ok(())
}

/// The logs as [`init`] makes them, their filter on them alone, and beside them the exporter
/// of the request spans, whatever the log filter.
#[cfg(feature = "otel")]
fn with_export(json: bool, ansi: bool, config: &meshage::otel::OtelConfig) -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, Registry};

    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        Box::new(logs.json().with_current_span(true).with_span_list(false))
    } else {
        Box::new(logs.with_ansi(ansi))
    };
    let export = meshage::otel::layer(config)?;
    tracing_subscriber::registry()
        .with(logs.with_filter(filter()))
        .with(export)
        .init();
    // The endpoint without what may be a credential in it (user info, a query).
    let shown = config
        .endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| {
            Some(format!(
                "{}://{}{}",
                u.scheme_str()?,
                u.host()?,
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ))
        })
        .unwrap_or_default();
    tracing::info!(endpoint = %shown, service = %config.service_name, "exporting request spans over OTLP");
    Ok(())
}
