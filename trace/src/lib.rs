//! Tracing across Corral's daemons (docs/decisions/0017-tracing.md).
//!
//! The daemons trace with `tracing` spans; `corral/src/observability.rs`
//! turns them into OpenTelemetry spans and exports them over OTLP when a
//! daemon's configuration has a [`TracingConfig`] (`[tracing]`). This
//! crate holds what every daemon shares for that:
//! - [`TracingConfig`], the `[tracing]` table of scheduler.toml,
//!   worker.toml, runner.toml and storage.toml;
//! - the W3C trace context (`traceparent`, `tracestate`) that makes one
//!   action one trace: the scheduler writes its span's context into
//!   `DesiredState.Executing.w3c_trace_context` ([`context_of`]), the
//!   worker continues it ([`continue_from`]) and passes its own to the
//!   runner in the run call's gRPC metadata ([`inject_metadata`],
//!   [`continue_from_metadata`]).
//!
//! Without an exporter these cost a lookup each: a span has no
//! OpenTelemetry context, [`context_of`] is empty and [`continue_from`]
//! does nothing.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::Deserialize;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the spans that exist for traces (an operation's
/// queueing, the worker's stages, the sandbox), at DEBUG: log lines stay
/// as they were, and without `[tracing]` these spans are disabled at
/// their call site and cost nothing; with it, the export layer enables
/// them (corral/src/observability.rs).
pub const SPANS: &str = "corral::trace";

/// The `[tracing]` table: export spans over OTLP/gRPC. Absent (the
/// default): nothing is exported and no connection is made.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector spans are sent to, e.g.
    /// `http://otel-collector:4317` (plaintext; `https` is refused for
    /// now). Required.
    pub endpoint: String,
    /// The fraction of new traces kept, from 0.0 to 1.0. A trace that
    /// another daemon started keeps that daemon's choice, so an action's
    /// trace is whole or absent. Default: 1.0 (every trace).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// A `[tracing]` table that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("{key}.endpoint {endpoint:?} is not an http:// URL of an OTLP/gRPC collector (e.g. http://127.0.0.1:4317; https is not supported yet)")]
    Endpoint { key: String, endpoint: String },
    #[error("{key}.sample_ratio {ratio} is not between 0.0 and 1.0")]
    SampleRatio { key: String, ratio: f64 },
}

impl TracingConfig {
    /// A config exporting every trace to `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> TracingConfig {
        TracingConfig {
            endpoint: endpoint.into(),
            sample_ratio: default_sample_ratio(),
        }
    }

    /// Checks the table found at `key` (`tracing`), so that a typo stops
    /// the daemon at start rather than losing every trace quietly.
    pub fn validate(&self, key: &str) -> Result<(), Error> {
        let host = self.endpoint.strip_prefix("http://").unwrap_or_default();
        if host.is_empty() || host.starts_with('/') || host.contains(char::is_whitespace) {
            return Err(Error::Endpoint {
                key: key.to_owned(),
                endpoint: self.endpoint.clone(),
            });
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(Error::SampleRatio {
                key: key.to_owned(),
                ratio: self.sample_ratio,
            });
        }
        Ok(())
    }
}

/// The W3C trace context of `span` (`traceparent`, and `tracestate` if
/// any), as `w3c_trace_context` carries it. Empty when spans are not
/// exported or `span` is not sampled in.
pub fn context_of(span: &Span) -> BTreeMap<String, String> {
    let mut carrier = BTreeMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut MapInjector(&mut carrier));
    carrier
}

/// Makes the span `carrier` names (from [`context_of`] in another
/// daemon) the parent of `span`, which must not have been entered yet.
/// An empty or unreadable carrier makes `span` the root of a new trace
/// rather than a child of whatever span is current: a daemon's
/// long-lived spans (a worker's slot) are never exported.
pub fn continue_from(span: &Span, carrier: &BTreeMap<String, String>) {
    // Extracted onto an empty context, not the current one, which may be
    // the current span's.
    let parent = TraceContextPropagator::new()
        .extract_with_context(&opentelemetry::Context::new(), &MapExtractor(carrier));
    // Fails only when spans are not exported (no OpenTelemetry layer),
    // or if `span` was entered already: a missing parent is then the
    // trace's only loss.
    let _ = span.set_parent(parent);
}

/// Adds the W3C trace context of `span` to a gRPC call's `metadata`.
pub fn inject_metadata(span: &Span, metadata: &mut tonic::metadata::MetadataMap) {
    TraceContextPropagator::new().inject_context(&span.context(), &mut MetadataInjector(metadata));
}

/// [`continue_from`] for a context received in gRPC `metadata`.
pub fn continue_from_metadata(span: &Span, metadata: &tonic::metadata::MetadataMap) {
    let parent = TraceContextPropagator::new()
        .extract_with_context(&opentelemetry::Context::new(), &MetadataExtractor(metadata));
    let _ = span.set_parent(parent);
}

/// Adds an event named `name` at time `at` to `span`: a moment inside a
/// span that has no span of its own (a sandbox's spawn, inside the one
/// call that spawns and waits). Nothing when spans are not exported.
pub fn event_at(span: &Span, name: &'static str, at: std::time::SystemTime) {
    span.add_event_with_timestamp(name, at, Vec::new());
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes only `traceparent` and `tracestate`,
        // valid header names; a value that is not a valid header is
        // left out rather than failing the call.
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed step should fail loudly

    use super::*;
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    /// Runs `f` with spans bridged to OpenTelemetry (kept in memory, not
    /// exported).
    fn with_otel<T>(f: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f)
    }

    fn parse(text: &str) -> Result<TracingConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn the_table_parses_with_defaults_and_refuses_what_it_does_not_know() {
        let config = parse("endpoint = \"http://127.0.0.1:4317\"").unwrap();
        assert_eq!(config, TracingConfig::new("http://127.0.0.1:4317"));
        assert_eq!(config.validate("tracing"), Ok(()));
        assert!(parse("endpoint = \"http://c:4317\"\nsampel_ratio = 0.5").is_err());
        assert!(parse("sample_ratio = 0.5").is_err(), "endpoint is required");
    }

    #[test]
    fn a_bad_endpoint_or_ratio_is_an_error_naming_the_key() {
        for endpoint in [
            "",
            "127.0.0.1:4317",
            "https://c:4317",
            "http://",
            "http:///x",
        ] {
            let err = TracingConfig::new(endpoint)
                .validate("tracing")
                .unwrap_err();
            assert!(err.to_string().starts_with("tracing.endpoint"), "{err}");
        }
        for ratio in [-0.1, 1.5, f64::NAN] {
            let config = TracingConfig {
                sample_ratio: ratio,
                ..TracingConfig::new("http://c:4317")
            };
            let err = config.validate("tracing").unwrap_err();
            assert!(err.to_string().starts_with("tracing.sample_ratio"), "{err}");
        }
    }

    #[test]
    fn without_an_exporter_there_is_no_context_and_continuing_is_harmless() {
        let span = tracing::info_span!("execute");
        assert!(context_of(&span).is_empty());
        let carrier = BTreeMap::from([(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        )]);
        continue_from(&span, &carrier);
        let mut metadata = tonic::metadata::MetadataMap::new();
        inject_metadata(&span, &mut metadata);
        assert!(metadata.is_empty());
    }

    #[test]
    fn a_span_continued_from_a_context_is_in_its_trace_under_its_span() {
        with_otel(|| {
            let scheduler = tracing::info_span!("execute");
            let carrier = context_of(&scheduler);
            let traceparent = carrier.get("traceparent").expect("a traceparent");
            let sent = scheduler.context().span().span_context().clone();
            assert_eq!(
                traceparent,
                &format!("00-{}-{}-01", sent.trace_id(), sent.span_id())
            );

            let worker = tracing::info_span!("worker_execute");
            continue_from(&worker, &carrier);
            let got = worker.context().span().span_context().clone();
            assert_eq!(got.trace_id(), sent.trace_id());
            assert_ne!(got.span_id(), sent.span_id());

            // And on to the runner over gRPC metadata.
            let mut metadata = tonic::metadata::MetadataMap::new();
            inject_metadata(&worker, &mut metadata);
            let runner = tracing::info_span!("run");
            continue_from_metadata(&runner, &metadata);
            let ran = runner.context().span().span_context().clone();
            assert_eq!(ran.trace_id(), sent.trace_id());
            let parent = metadata.get("traceparent").unwrap().to_str().unwrap();
            assert!(parent.contains(&got.span_id().to_string()), "{parent}");
        });
    }

    #[test]
    fn an_empty_or_garbled_carrier_starts_a_new_trace_not_a_child_of_the_current_span() {
        with_otel(|| {
            let slot = tracing::info_span!("slot");
            let slot_trace = slot.context().span().span_context().trace_id();
            let _entered = slot.enter();
            for carrier in [
                BTreeMap::new(),
                BTreeMap::from([("traceparent".to_owned(), "garbage".to_owned())]),
            ] {
                let span = tracing::info_span!("execute");
                continue_from(&span, &carrier);
                let trace = span.context().span().span_context().trace_id();
                assert_ne!(trace, slot_trace);
            }
        });
    }
}
