//! What tracing costs per action (docs/decisions/0017-tracing.md), under
//! the subscriber the daemons install (log lines to a sink at `info`):
//! - `before`: the spans an action had before tracing (the scheduler's
//!   and the worker's `execute`, the runner's `run`);
//! - `off`: every span and context hand-over an action has now, with no
//!   `[tracing]` (no OpenTelemetry layer; the spans that exist for traces
//!   are at DEBUG, disabled where they are made): what a farm that does
//!   not trace pays for the feature, against `before`;
//! - `on`: the same with the OpenTelemetry layer, sampling every trace,
//!   its batch exporter sending to a fake OTLP collector over loopback
//!   gRPC (spans the bounded queue drops under this load are counted).
//!
//! `cargo bench -p corral-trace --bench overhead`. The per-action time is
//! the best of 5 rounds of 20,000 actions, on one thread.

#![allow(clippy::unwrap_used)] // a bench: a failed setup should stop it

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{debug_span, info_span};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

const ACTIONS: usize = 20_000;
const ROUNDS: usize = 9;

/// The spans of one action before tracing.
fn before() {
    let execute = info_span!("execute", action = "ab12/140", instance = "");
    execute.in_scope(|| black_box(()));
    let worker = info_span!("execute", action = "ab12/140", instance = "");
    worker.in_scope(|| {
        let run = info_span!("run", program = "/bin/sh", policy = "");
        run.in_scope(|| black_box(()));
    });
}

/// Every span and hand-over of one action now: the scheduler's, the
/// worker's (continuing the scheduler's context) and the runner's
/// (continuing the worker's from gRPC metadata).
fn now() {
    let execute = info_span!(
        "execute",
        action = "ab12/140",
        instance = "",
        tool_invocation_id = "b7c3e1f0-invocation",
        mnemonic = "CppCompile"
    );
    let operation = execute.in_scope(
        || debug_span!(target: corral_trace::SPANS, "operation", operation = "operations/x"),
    );
    let queued = debug_span!(target: corral_trace::SPANS, parent: &operation, "queued");
    drop(execute);
    drop(queued);
    let carrier = corral_trace::context_of(&operation);
    let worker = info_span!("execute", action = "ab12/140", instance = "");
    corral_trace::continue_from(&worker, &carrier);
    worker.in_scope(|| {
        let fetch = debug_span!(target: corral_trace::SPANS, "fetch_inputs");
        fetch.in_scope(|| {
            let layout = debug_span!(target: corral_trace::SPANS, "layout");
            layout.in_scope(|| black_box(()));
        });
        let run = debug_span!(target: corral_trace::SPANS, "run");
        let mut metadata = tonic::metadata::MetadataMap::new();
        run.in_scope(|| corral_trace::inject_metadata(&tracing::Span::current(), &mut metadata));
        let runner = info_span!("run", program = "/bin/sh", policy = "");
        corral_trace::continue_from_metadata(&runner, &metadata);
        runner.in_scope(|| {
            let sandbox = debug_span!(
                target: corral_trace::SPANS, "sandbox",
                spawn_ms = tracing::field::Empty,
                exit_code = tracing::field::Empty
            );
            sandbox.record("spawn_ms", 3.5);
            corral_trace::event_at(&sandbox, "spawned", SystemTime::now());
            sandbox.record("exit_code", 0);
        });
        drop(run);
        let upload = debug_span!(target: corral_trace::SPANS, "upload_outputs");
        upload.in_scope(|| black_box(()));
    });
    drop(operation);
}

/// The scheduler's share before: its Execute span.
fn scheduler_before() {
    let execute = info_span!("execute", action = "ab12/140", instance = "");
    execute.in_scope(|| black_box(()));
}

/// The scheduler's share now: Execute with the client's invocation and
/// mnemonic, the operation's spans, and the context handed out.
fn scheduler_now() {
    let execute = info_span!(
        "execute",
        action = "ab12/140",
        instance = "",
        tool_invocation_id = "b7c3e1f0-invocation",
        mnemonic = "CppCompile"
    );
    let operation = execute.in_scope(
        || debug_span!(target: corral_trace::SPANS, "operation", operation = "operations/x"),
    );
    let queued = debug_span!(target: corral_trace::SPANS, parent: &operation, "queued");
    drop(queued);
    black_box(corral_trace::context_of(&operation));
}

/// Nanoseconds per call of `action`, one round of [`ACTIONS`].
fn round(action: fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..ACTIONS {
        action();
    }
    start.elapsed().as_nanos() as f64 / ACTIONS as f64
}

/// Nanoseconds per call of `a` and of `b`, each the best of [`ROUNDS`]
/// rounds taken in turn, so that both see the same machine.
fn compare(a: fn(), b: fn()) -> (f64, f64) {
    (0..ROUNDS).fold((f64::INFINITY, f64::INFINITY), |(x, y), _| {
        (x.min(round(a)), y.min(round(b)))
    })
}

fn per_action(action: fn()) -> f64 {
    (0..ROUNDS)
        .map(|_| round(action))
        .fold(f64::INFINITY, f64::min)
}

/// A fake collector: counts the spans it is sent.
struct Collector(Arc<AtomicUsize>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn main() {
    // The daemons' subscriber: log lines (here to a sink) at `info`.
    let off = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(EnvFilter::new("info")),
    );
    let ((before_ns, off_ns), (scheduler_before_ns, scheduler_off_ns)) =
        tracing::subscriber::with_default(off, || {
            round(before);
            (
                compare(before, now),
                compare(scheduler_before, scheduler_now),
            )
        });

    // The fake collector and the exporter live on a runtime of their
    // own; the actions run on this thread, as a daemon's handler would.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(Arc::clone(&received))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let provider = {
        let _entered = runtime.enter();
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .build()
            .unwrap();
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build()
    };
    // As observability.rs: the export layer also sees the trace spans.
    let traced = EnvFilter::new(format!("info,{}=debug", corral_trace::SPANS));
    let on = tracing_subscriber::registry()
        .with(Some(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("bench"))
                .with_filter(traced),
        ))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::sink)
                .with_filter(EnvFilter::new("info")),
        );
    let on_ns = tracing::subscriber::with_default(on, || per_action(now));
    let made = (ROUNDS * ACTIONS * 10) as f64;
    provider.force_flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let exported = received.load(Ordering::Relaxed);
    provider.shutdown().unwrap();
    server.abort();

    println!("| spans and hand-overs | µs per action | vs before |");
    println!("|---|---|---|");
    println!("| before (3 spans) | {:.2} | |", before_ns / 1000.0);
    println!(
        "| off: no [tracing] (10 spans, 2 hand-overs) | {:.2} | +{:.2} |",
        off_ns / 1000.0,
        (off_ns - before_ns) / 1000.0
    );
    println!(
        "| on: exported to a fake collector | {:.2} | +{:.2} |",
        on_ns / 1000.0,
        (on_ns - before_ns) / 1000.0
    );
    println!(
        "| scheduler's share before (Execute span) | {:.2} | |",
        scheduler_before_ns / 1000.0
    );
    println!(
        "| scheduler's share off (2 more fields, 2 spans, context handed out) | {:.2} | +{:.2} |",
        scheduler_off_ns / 1000.0,
        (scheduler_off_ns - scheduler_before_ns) / 1000.0
    );
    println!(
        "exported {exported} of {made:.0} spans made with export on ({:.0}%; the rest dropped by the bounded queue at this rate)",
        exported as f64 * 100.0 / made
    );
}
