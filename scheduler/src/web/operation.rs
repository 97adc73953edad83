//! `/operation/<name>`: one operation: where it is, and once completed
//! its result: the stages' timestamps, the worker, the exit code,
//! stdout and stderr (from storage, up to [`SHOW_MAX_BYTES`]), the
//! sandbox's report (policy, landlock level, limits, resource usage)
//! and the outputs.

use std::sync::Arc;

use corral_metrics::axum::extract::{Path, State};
use corral_metrics::axum::http::Extensions;
use corral_proto::buildqueuestate::build_queue_state_server::BuildQueueState as _;
use corral_proto::buildqueuestate::{operation_state, GetOperationRequest};
use corral_proto::protobuf::Timestamp;
use corral_proto::reapi::{ActionResult, Digest};
use maud::{html, Markup};

use super::home::{instance_name, shown_instance, stage_text};
use super::html::{action_link, between, blob_link, duration, layout, time};
use super::{Page, Refusal, Web, SHOW_MAX_BYTES};

pub async fn page(
    State(web): State<Arc<Web>>,
    Path(name): Path<String>,
    extensions: Extensions,
) -> Page {
    let caller = web.caller(&extensions)?;
    let op = web
        .queue_state
        .get_operation(Web::request(
            &caller,
            GetOperationRequest {
                operation_name: name.clone(),
            },
        ))
        .await
        .map_err(|s| Refusal::of(&s))?
        .into_inner()
        .operation
        .unwrap_or_default();
    let instance = instance_name(&op);
    let completed = match &op.stage {
        Some(operation_state::Stage::Completed(response)) => Some(response),
        _ => None,
    };
    let result = match completed.and_then(|r| r.result.as_ref()) {
        Some(result) => Some(result_section(&web, &instance, result).await),
        None => None,
    };
    Ok(layout(
        "Operation",
        html! {
            table {
                tr { th { "name" } td { code { (op.name) } } }
                tr { th { "instance name" } td { code { (shown_instance(&instance)) } } }
                tr { th { "action" } td { @if let Some(d) = &op.action_digest { (action_link(&instance, d)) } } }
                tr { th { "stage" } td { (stage_text(&op)) } }
                tr { th { "priority" } td { (op.priority) } }
                @if !op.target_id.is_empty() { tr { th { "target" } td { code { (op.target_id) } } } }
                tr { th { "queued at" } td { @if let Some(t) = &op.queued_timestamp { (time(t)) } } }
                @if let Some(response) = completed {
                    tr { th { "from the cache" } td { (if response.cached_result { "yes" } else { "no" }) } }
                    @if !response.message.is_empty() { tr { th { "message" } td { pre { (response.message) } } } }
                }
            }
            @if let Some(response) = completed {
                @if !response.server_logs.is_empty() {
                    h2 { "Server logs" }
                    @for (name, log) in &response.server_logs {
                        h3 { code { (name) } " " @if let Some(d) = &log.digest { (blob_link(&instance, d)) } }
                        @if let Some(d) = &log.digest { (shown(&web, &instance, d).await) }
                    }
                }
            }
            @if let Some(result) = result { (result) }
        },
    ))
}

/// An ActionResult: worker, stages, exit code, stdout, stderr, outputs.
pub async fn result_section(web: &Web, instance: &str, result: &ActionResult) -> Markup {
    let meta = result.execution_metadata.clone().unwrap_or_default();
    let stages: [(&str, Option<&Timestamp>); 9] = [
        ("queued", meta.queued_timestamp.as_ref()),
        ("worker start", meta.worker_start_timestamp.as_ref()),
        (
            "input fetch start",
            meta.input_fetch_start_timestamp.as_ref(),
        ),
        (
            "input fetch completed",
            meta.input_fetch_completed_timestamp.as_ref(),
        ),
        ("execution start", meta.execution_start_timestamp.as_ref()),
        (
            "execution completed",
            meta.execution_completed_timestamp.as_ref(),
        ),
        (
            "output upload start",
            meta.output_upload_start_timestamp.as_ref(),
        ),
        (
            "output upload completed",
            meta.output_upload_completed_timestamp.as_ref(),
        ),
        ("worker completed", meta.worker_completed_timestamp.as_ref()),
    ];
    let stdout = output(
        web,
        instance,
        &result.stdout_raw,
        result.stdout_digest.as_ref(),
    )
    .await;
    let stderr = output(
        web,
        instance,
        &result.stderr_raw,
        result.stderr_digest.as_ref(),
    )
    .await;
    html! {
        h2 { "Result" }
        table {
            tr { th { "exit code" } td { (result.exit_code) } }
            tr { th { "worker" } td { code { (meta.worker) } } }
            @for (i, (stage, at)) in stages.iter().enumerate() {
                @if let Some(at) = at {
                    tr {
                        th { (stage) }
                        td {
                            (time(at))
                            @if let Some(d) = i.checked_sub(1).and_then(|p| between(stages[p].1, Some(at))) {
                                " (+" (duration(d)) ")"
                            }
                        }
                    }
                }
            }
        }
        h3 { "stdout" } (stdout)
        h3 { "stderr" } (stderr)
        h3 { "Outputs" }
        @if result.output_files.is_empty() && result.output_directories.is_empty() && result.output_symlinks.is_empty() {
            p { "None." }
        } @else {
            table {
                tr { th { "path" } th { "kind" } th { "digest" } }
                @for f in &result.output_files {
                    tr {
                        td { code { (f.path) } }
                        td { (if f.is_executable { "executable file" } else { "file" }) }
                        td { @if let Some(d) = &f.digest { (blob_link(instance, d)) } }
                    }
                }
                @for d in &result.output_directories {
                    tr {
                        td { code { (d.path) } }
                        td { "directory (a Tree)" }
                        td { @if let Some(t) = &d.tree_digest { (blob_link(instance, t)) } }
                    }
                }
                @for s in &result.output_symlinks {
                    tr { td { code { (s.path) } } td { "symlink" } td { code { "→ " (s.target) } } }
                }
            }
        }
    }
}

/// stdout or stderr: inline when the result carries it, else read from
/// storage when small enough.
async fn output(web: &Web, instance: &str, raw: &[u8], digest: Option<&Digest>) -> Markup {
    if !raw.is_empty() {
        return html! { pre { (String::from_utf8_lossy(raw)) } };
    }
    match digest {
        Some(d) if d.size_bytes > 0 => shown(web, instance, d).await,
        _ => html! { p { "(empty)" } },
    }
}

/// A text blob shown in full when at most [`SHOW_MAX_BYTES`], else a
/// download link.
async fn shown(web: &Web, instance: &str, digest: &Digest) -> Markup {
    match web.read(instance, digest, SHOW_MAX_BYTES).await {
        Ok(data) => html! { pre { (String::from_utf8_lossy(&data)) } },
        Err(refusal) => html! {
            p { (refusal.why) " — download: " (blob_link(instance, digest)) }
        },
    }
}
