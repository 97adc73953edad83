//! OpenTelemetry tracing of a farm of separate daemons
//! (docs/decisions/0017-tracing.md): with `[tracing]` in every daemon's
//! configuration, one action is one trace, from the scheduler's Execute
//! through the worker's stages to the runner's sandbox, carried between
//! the daemons, with the client's tool invocation and mnemonic on it;
//! without it nothing connects to a collector.
//!
//! The collector is a fake: a tonic server of OTLP's TraceService that
//! keeps what it is sent, and counts the connections it accepts.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_e2e::reapi::{until_done, Client, NewAction};
use corral_e2e::{Farm, SplitFarm};
use corral_proto::reapi::{ExecuteRequest, ExecuteResponse, RequestMetadata};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;

/// The header REAPI clients send their RequestMetadata in.
const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

/// The port OTLP exporters send to when told no other.
const OTLP_DEFAULT_PORT: u16 = 4317;

/// A span as the test reads it: who sent it, and its ids in hex.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// The fake collector's state: every span received, and connections.
#[derive(Default)]
struct Received {
    spans: Mutex<Vec<Span>>,
    connections: AtomicUsize,
}

struct Collector(Arc<Received>);

fn string(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(i) => i.to_string(),
                any_value::Value::DoubleValue(d) => d.to_string(),
                any_value::Value::BoolValue(b) => b.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = string(
                &resource_spans
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            );
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                    attributes: string(&span.attributes),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A fake collector: its port, what it received, and its server task
/// (stopped when dropped).
struct FakeCollector {
    port: u16,
    received: Arc<Received>,
    _server: tokio::task::JoinSet<Result<(), tonic::transport::Error>>,
}

/// Serves a fake collector on `port` (0: any free one).
async fn collector(port: u16) -> FakeCollector {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("bind the fake collector on 127.0.0.1:{port}: {e}"));
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Received::default());
    let counted = Arc::clone(&received);
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        move |connection| {
            counted.connections.fetch_add(1, Ordering::SeqCst);
            connection
        },
    );
    let service = TraceServiceServer::new(Collector(Arc::clone(&received)));
    let mut server = tokio::task::JoinSet::new();
    server.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    FakeCollector {
        port,
        received,
        _server: server,
    }
}

/// Uploads an action running `script` to `storage` and executes it at
/// `scheduler` with RequestMetadata naming `invocation` and `mnemonic`;
/// returns the response.
async fn execute(
    (storage, scheduler): (String, String),
    script: &str,
    invocation: &str,
    mnemonic: &str,
) -> ExecuteResponse {
    let client = Client::new(&storage, &scheduler);
    let action = client.upload_action(&NewAction::sh(script)).await;
    let mut request = tonic::Request::new(ExecuteRequest {
        action_digest: Some(action),
        ..Default::default()
    });
    let metadata = RequestMetadata {
        tool_invocation_id: invocation.to_owned(),
        action_mnemonic: mnemonic.to_owned(),
        ..Default::default()
    };
    request.metadata_mut().insert_bin(
        REQUEST_METADATA_HEADER,
        tonic::metadata::MetadataValue::from_bytes(&metadata.encode_to_vec()),
    );
    let mut stream = client.execute(request).await.unwrap();
    until_done(&mut stream).await
}

/// The spans of `trace` once every name in `wanted` (`(service, span
/// name)`) has arrived, or what came after 60 s.
async fn spans_of(
    received: &Received,
    trace: impl Fn(&[Span]) -> Option<String>,
    wanted: &[(&str, &str)],
) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spans = received.spans.lock().unwrap().clone();
        if let Some(id) = trace(&spans) {
            let ours: Vec<Span> = spans.into_iter().filter(|s| s.trace_id == id).collect();
            let all_in = wanted.iter().all(|(service, name)| {
                ours.iter()
                    .any(|s| s.service == *service && s.name == *name)
            });
            if all_in || Instant::now() > deadline {
                return ours;
            }
        } else if Instant::now() > deadline {
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Storage's and the scheduler's endpoints of a split farm.
fn endpoints(farm: &SplitFarm) -> (String, String) {
    (farm.storage_url(), farm.scheduler_url())
}

/// The names (`service/name`) from `span` up its parents, as far as they
/// are in `spans`.
fn chain(spans: &[Span], span: &Span) -> Vec<String> {
    let mut names = vec![format!("{}/{}", span.service, span.name)];
    let mut parent = span.parent_span_id.clone();
    while let Some(up) = spans
        .iter()
        .find(|s| !parent.is_empty() && s.span_id == parent)
    {
        names.push(format!("{}/{}", up.service, up.name));
        parent = up.parent_span_id.clone();
    }
    names
}

fn tracing_table(endpoint: &str) -> String {
    format!("[tracing]\nendpoint = \"{endpoint}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_action_is_one_trace_from_execute_through_the_worker_to_the_runner() {
    let collector = collector(0).await;
    let received = &collector.received;
    let table = tracing_table(&format!("http://127.0.0.1:{}", collector.port));
    let farm = tokio::task::block_in_place(|| {
        SplitFarm::start_with_files(
            &format!("worker_timeout_s = 5\n{table}"),
            &table,
            &[("storage.toml", &table), ("runner.toml", &table)],
        )
    });
    let invocation = format!("invocation-{}", std::process::id());
    let response = execute(endpoints(&farm), "echo traced", &invocation, "CppCompile").await;
    assert_eq!(response.result.unwrap().exit_code, 0, "{}", farm.logs());

    let is_ours = |s: &Span| {
        s.service == "corral-scheduler"
            && s.name == "execute"
            && s.attributes.get("tool_invocation_id") == Some(&invocation)
    };
    let wanted = [
        ("corral-scheduler", "execute"),
        ("corral-scheduler", "operation"),
        ("corral-scheduler", "queued"),
        ("corral-worker", "execute"),
        ("corral-worker", "fetch_inputs"),
        ("corral-worker", "layout"),
        ("corral-worker", "run"),
        ("corral-worker", "upload_outputs"),
        ("corral-runner", "run"),
        ("corral-runner", "sandbox"),
    ];
    let trace = |spans: &[Span]| {
        spans
            .iter()
            .find(|s| is_ours(s))
            .map(|s| s.trace_id.clone())
    };
    let spans = spans_of(received, trace, &wanted).await;
    let names: Vec<String> = spans
        .iter()
        .map(|s| format!("{}/{}", s.service, s.name))
        .collect();
    for (service, name) in wanted {
        assert!(
            names.contains(&format!("{service}/{name}")),
            "no {service}/{name} span in the action's trace: {names:?}\n{}",
            farm.logs()
        );
    }

    let execute_span = spans.iter().find(|s| is_ours(s)).unwrap();
    assert_eq!(
        execute_span.attributes.get("mnemonic").map(String::as_str),
        Some("CppCompile"),
        "{:?}",
        execute_span.attributes
    );
    let find = |service: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap()
    };
    // The worker's span hangs under the scheduler's Execute, and the
    // runner's under the worker's run call.
    let worker = chain(&spans, find("corral-worker", "execute"));
    assert_eq!(
        worker,
        [
            "corral-worker/execute",
            "corral-scheduler/operation",
            "corral-scheduler/execute"
        ],
        "{names:?}"
    );
    assert_eq!(
        chain(&spans, find("corral-scheduler", "execute")).len(),
        1,
        "the Execute span is the trace's root"
    );
    let runner = chain(&spans, find("corral-runner", "sandbox"));
    assert_eq!(
        runner,
        [
            "corral-runner/sandbox",
            "corral-runner/run",
            "corral-worker/run",
            "corral-worker/execute",
            "corral-scheduler/operation",
            "corral-scheduler/execute"
        ]
    );
    assert_eq!(
        chain(&spans, find("corral-worker", "layout"))[..2],
        ["corral-worker/layout", "corral-worker/fetch_inputs"]
    );
    // The farm's polls are not exported: they would bury the actions.
    let all = received.spans.lock().unwrap().clone();
    for poll in ["synchronize", "check_readiness"] {
        assert!(!all.iter().any(|s| s.name == poll), "{poll} exported");
    }
    let sandbox = find("corral-runner", "sandbox");
    assert_eq!(
        sandbox.attributes.get("exit_code").map(String::as_str),
        Some("0")
    );
    drop(farm);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_tracing_table_nothing_connects_to_a_collector() {
    // On the port exporters default to: an exporter started without an
    // endpoint would come here.
    let collector = collector(OTLP_DEFAULT_PORT).await;
    let received = &collector.received;
    let farm = tokio::task::block_in_place(SplitFarm::start);
    let response = execute(
        endpoints(&farm),
        "echo untraced",
        "invocation-untraced",
        "Genrule",
    )
    .await;
    assert_eq!(response.result.unwrap().exit_code, 0, "{}", farm.logs());
    // Longer than an exporter waits before sending a batch (5 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(received.connections.load(Ordering::SeqCst), 0);
    assert!(received.spans.lock().unwrap().is_empty());
    assert!(
        !farm.logs().contains("exporting spans over OTLP"),
        "{}",
        farm.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corral_up_with_an_otlp_endpoint_traces_its_parts_and_its_runner_child() {
    let collector = collector(0).await;
    let received = &collector.received;
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    let farm = tokio::task::block_in_place(|| {
        Farm::start_with_args(&["--otlp-endpoint", &endpoint, "--workers", "1"])
    });
    let url = format!("http://127.0.0.1:{}", farm.port);
    let invocation = format!("up-invocation-{}", std::process::id());
    let response = execute((url.clone(), url), "echo up", &invocation, "Genrule").await;
    assert_eq!(response.result.unwrap().exit_code, 0, "{}", farm.logs());

    let is_ours = |s: &Span| {
        s.service == "corral-up"
            && s.name == "execute"
            && s.attributes.get("tool_invocation_id") == Some(&invocation)
    };
    let trace = |spans: &[Span]| {
        spans
            .iter()
            .find(|s| is_ours(s))
            .map(|s| s.trace_id.clone())
    };
    let wanted = [("corral-up", "operation"), ("corral-runner", "sandbox")];
    let spans = spans_of(received, trace, &wanted).await;
    let sandbox = spans
        .iter()
        .find(|s| s.service == "corral-runner" && s.name == "sandbox")
        .unwrap_or_else(|| panic!("no runner span in the trace: {spans:?}\n{}", farm.logs()));
    assert_eq!(
        chain(&spans, sandbox),
        [
            "corral-runner/sandbox",
            "corral-runner/run",
            "corral-up/run",
            "corral-up/execute",
            "corral-up/operation",
            "corral-up/execute"
        ]
    );
}
