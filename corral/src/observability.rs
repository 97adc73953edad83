//! Logging and tracing: the only place a tracing subscriber is set up.
//!
//! `CORRAL_LOG` takes an env-filter directive (default `info`);
//! `--log-format` (or `CORRAL_LOG_FORMAT`) chooses text or JSON lines.
//! A daemon whose configuration has a `[tracing]` table also exports its
//! spans over OTLP ([`start`]): the spans it logs, and the DEBUG spans
//! that exist for traces (`corral_trace::SPANS`), bridged to
//! OpenTelemetry by one layer: one span tree for logs and traces
//! (docs/decisions/0017-tracing.md).

use std::sync::OnceLock;

use anyhow::Context;
use clap::ValueEnum;
use corral_trace::TracingConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tracing_subscriber::filter::{filter_fn, FilterExt as _};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::{EnvFilter, Registry};

/// Env var holding the log filter, e.g. `corral_scheduler=debug,info`.
pub const LOG_ENV: &str = "CORRAL_LOG";
/// Env var holding the log format, `text` or `json`.
pub const LOG_FORMAT_ENV: &str = "CORRAL_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The format [`init`] was given, for a daemon's [`start`].
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the global subscriber, writing to stderr, for a command that
/// is not a daemon; for a daemon, only remembers `format` and checks
/// `CORRAL_LOG`: the daemon installs it with [`start`], once its
/// configuration says whether spans are exported too (the subscriber's
/// layers are fixed once installed, and the exporter needs the daemon's
/// runtime).
pub fn init(format: LogFormat, daemon: bool) -> anyhow::Result<()> {
    filter(std::env::var(LOG_ENV).ok().as_deref())?;
    let _ = FORMAT.set(format);
    if daemon {
        return Ok(());
    }
    install(format, None)
}

/// Installs the subscriber: log lines to stderr and, with `export`, the
/// same spans to OpenTelemetry.
fn install(
    format: LogFormat,
    export: Option<tracing_opentelemetry::OpenTelemetryLayer<Registry, SdkTracer>>,
) -> anyhow::Result<()> {
    let corral_log = std::env::var(LOG_ENV).ok();
    let logged = filter(corral_log.as_deref())?;
    // What is logged is exported, and the spans that exist for traces
    // (corral_trace::SPANS, at DEBUG), but not the polls (`exported`).
    // Without export, `None` is no layer at all: those spans are then
    // disabled where they are made, and cost nothing.
    let export = match export {
        Some(layer) => {
            let traced = filter(corral_log.as_deref())?
                .add_directive(format!("{}=debug", corral_trace::SPANS).parse()?);
            Some(layer.with_filter(traced.and(filter_fn(exported))))
        }
        None => None,
    };
    let registry = tracing_subscriber::registry().with(export);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => registry.with(fmt.with_filter(logged)).try_init(),
        LogFormat::Json => registry.with(fmt.json().with_filter(logged)).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!(e).context("installing the log subscriber"))
}

/// Whether a span or event goes to the collector: not the polls a farm
/// makes every few seconds whether or not it works (a worker's
/// Synchronize, the worker's readiness checks of its runner), which
/// would each be a trace of their own and bury the actions' traces.
fn exported(metadata: &tracing::Metadata<'_>) -> bool {
    !(metadata.is_span() && matches!(metadata.name(), "synchronize" | "check_readiness"))
}

/// Spans exported over OTLP until this is dropped; dropping it sends
/// what is still buffered. Must be dropped while the runtime it was
/// made in still runs.
#[must_use = "spans are exported only while it lives"]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "sending the last spans to the collector failed");
        }
    }
}

/// Starts a daemon's logging and, with a `[tracing]` `config`, the export
/// of its spans under the OpenTelemetry `service.name` `service`
/// (`corral-scheduler`, …). Without a config: no exporter, no
/// connection, no layer. Call inside the daemon's tokio runtime (the
/// exporter's gRPC channel lives there), after [`init`].
pub fn start(
    config: Option<&TracingConfig>,
    service: &'static str,
) -> anyhow::Result<Option<Tracing>> {
    let format = FORMAT.get().copied().unwrap_or(LogFormat::Text);
    let Some(config) = config else {
        install(format, None)?;
        return Ok(None);
    };
    config.validate("tracing")?;
    use opentelemetry_otlp::WithExportConfig as _;
    // The channel connects lazily and again after a failure: a collector
    // down at start costs spans, never the daemon.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&config.endpoint)
        .build()
        .with_context(|| format!("tracing: the OTLP exporter to {}", config.endpoint))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // A trace another daemon started keeps its choice (the sampled
        // flag of its traceparent): an action's trace is whole or absent.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("corral"));
    install(format, Some(layer))?;
    tracing::info!(endpoint = %config.endpoint, service, "exporting spans over OTLP");
    Ok(Some(Tracing { provider }))
}

/// The filter `CORRAL_LOG` names (`info` when unset or empty). A value
/// that does not parse is an error naming the variable: silently logging
/// at `info` would hide the debug lines the operator asked for.
fn filter(value: Option<&str>) -> anyhow::Result<EnvFilter> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(EnvFilter::new("info")),
        Some(directive) => EnvFilter::builder()
            .parse(directive)
            .with_context(|| format!("{LOG_ENV}={directive:?} is not a log filter (e.g. info, or corral_scheduler=debug,info)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_corral_log_is_an_error_naming_it() {
        assert!(filter(None).is_ok());
        assert!(filter(Some("")).is_ok());
        assert!(filter(Some("corral_scheduler=debug,info")).is_ok());
        let err = format!("{:#}", filter(Some("corral=loud")).unwrap_err());
        assert!(err.contains("CORRAL_LOG=\"corral=loud\""), "{err}");
    }
}
