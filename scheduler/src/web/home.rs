//! `/`: the queues (per instance name prefix, platform and size class:
//! queued, executing, the oldest queued), the workers (what each runs,
//! drained or not) and the most recent operations.

use std::collections::BTreeMap;
use std::sync::Arc;

use corral_metrics::axum::extract::State;
use corral_metrics::axum::http::Extensions;
use corral_proto::buildqueuestate::build_queue_state_server::BuildQueueState as _;
use corral_proto::buildqueuestate::{
    list_workers_request, operation_state, ListOperationsRequest, ListWorkersRequest,
    OperationState, SizeClassQueueName, WorkerState,
};
use corral_proto::protobuf::{Empty, Timestamp};
use corral_proto::reapi::Platform;
use maud::{html, Markup};

use super::html::{action_link, age, layout, operation_link, time};
use super::{Page, Refusal, Web};

/// How many operations the page lists, newest first.
const RECENT: usize = 50;

/// The most operations and workers read per call (the service's cap).
const PAGE_SIZE: u32 = 1000;

/// One queue's row.
#[derive(Default)]
struct Row {
    queued: usize,
    executing: usize,
    oldest_queued: Option<Timestamp>,
    workers: u32,
    drains: u32,
    /// With no workers: when its queued operations fail.
    timeout: Option<Timestamp>,
}

pub async fn page(State(web): State<Arc<Web>>, extensions: Extensions) -> Page {
    let caller = web.caller(&extensions)?;
    let service = &web.queue_state;
    let queues = service
        .list_platform_queues(Web::request(&caller, Empty {}))
        .await
        .map_err(|s| Refusal::of(&s))?
        .into_inner()
        .platform_queues;
    let operations = service
        .list_operations(Web::request(
            &caller,
            ListOperationsRequest {
                page_size: PAGE_SIZE,
                ..Default::default()
            },
        ))
        .await
        .map_err(|s| Refusal::of(&s))?
        .into_inner()
        .operations;

    let mut rows: BTreeMap<(String, String, u32), Row> = BTreeMap::new();
    let mut workers: Vec<(String, WorkerState)> = Vec::new();
    for queue in &queues {
        let name = queue.name.clone().unwrap_or_default();
        let platform = platform_text(name.platform.as_ref());
        for class in &queue.size_class_queues {
            let row = rows
                .entry((
                    name.instance_name_prefix.clone(),
                    platform.clone(),
                    class.size_class,
                ))
                .or_default();
            row.workers = class.workers_count;
            row.drains = class.drains_count;
            row.timeout = class.timeout;
            let listed = service
                .list_workers(Web::request(
                    &caller,
                    ListWorkersRequest {
                        filter: Some(list_workers_request::Filter {
                            r#type: Some(list_workers_request::filter::Type::All(
                                SizeClassQueueName {
                                    platform_queue_name: Some(name.clone()),
                                    size_class: class.size_class,
                                },
                            )),
                        }),
                        page_size: PAGE_SIZE,
                        ..Default::default()
                    },
                ))
                .await
                .map_err(|s| Refusal::of(&s))?;
            workers.extend(
                listed
                    .into_inner()
                    .workers
                    .into_iter()
                    .map(|w| (platform.clone(), w)),
            );
        }
    }
    for op in &operations {
        let Some(queue) = op
            .invocation_name
            .as_ref()
            .and_then(|i| i.size_class_queue_name.as_ref())
        else {
            continue;
        };
        let name = queue.platform_queue_name.clone().unwrap_or_default();
        let row = rows
            .entry((
                name.instance_name_prefix,
                platform_text(name.platform.as_ref()),
                queue.size_class,
            ))
            .or_default();
        match op.stage {
            Some(operation_state::Stage::Queued(_)) => {
                row.queued += 1;
                let older = match (&row.oldest_queued, &op.queued_timestamp) {
                    (Some(oldest), Some(t)) => {
                        (t.seconds, t.nanos) < (oldest.seconds, oldest.nanos)
                    }
                    (None, Some(_)) => true,
                    _ => false,
                };
                if older {
                    row.oldest_queued = op.queued_timestamp;
                }
            }
            Some(operation_state::Stage::Executing(_)) => row.executing += 1,
            _ => {}
        }
    }
    let mut recent: Vec<&OperationState> = operations.iter().collect();
    recent.sort_by_key(|op| std::cmp::Reverse(op.queued_timestamp.map(|t| (t.seconds, t.nanos))));
    recent.truncate(RECENT);

    Ok(layout(
        "Farm",
        html! {
            h2 { "Queues" }
            @if rows.is_empty() {
                p { "No queue: no worker has announced itself and nothing is queued." }
            } @else {
                table {
                    tr { th { "instance name prefix" } th { "platform" } th { "size class" } th { "queued" } th { "executing" } th { "oldest queued" } th { "workers" } th { "drains" } }
                    @for ((prefix, platform, size_class), row) in &rows {
                        tr {
                            td { code { (shown_instance(prefix)) } }
                            td { code { (platform) } }
                            td { (size_class) }
                            td { (row.queued) }
                            td { (row.executing) }
                            td { @if let Some(t) = &row.oldest_queued { (age(t)) " ago" } }
                            td {
                                (row.workers)
                                @if let Some(t) = &row.timeout { " (none: queued operations fail at " (time(t)) ")" }
                            }
                            td { (row.drains) }
                        }
                    }
                }
            }
            h2 { "Workers" }
            @if workers.is_empty() {
                p { "No live worker." }
            } @else {
                table {
                    tr { th { "worker" } th { "platform" } th { "executing" } th { "since" } th { "gone unless it reports by" } th { "drained" } }
                    @for (platform, worker) in &workers {
                        tr {
                            td { code { (id_text(&worker.id)) } }
                            td { code { (platform) } }
                            @match &worker.current_operation {
                                Some(op) => {
                                    td { (operation_link(&op.name)) br; "action " (action_or_nothing(op)) }
                                    td { @if let Some(t) = web.handed_out(&op.name).map(corral_proto::time::timestamp) { (time(&t)) " (" (age(&t)) ")" } }
                                }
                                None => { td { "idle" } td {} }
                            }
                            td { @if let Some(t) = &worker.timeout { (time(t)) } }
                            td { @if worker.drained { "drained" } @else { "no" } }
                        }
                    }
                }
            }
            h2 { "Recent operations" }
            @if recent.is_empty() {
                p { "None." }
            } @else {
                table {
                    tr { th { "operation" } th { "instance name" } th { "action" } th { "stage" } th { "queued at" } }
                    @for op in &recent {
                        tr {
                            td { (operation_link(&op.name)) }
                            td { code { (shown_instance(&instance_name(op))) } }
                            td { (action_or_nothing(op)) }
                            td { (stage_text(op)) }
                            td { @if let Some(t) = &op.queued_timestamp { (time(t)) } }
                        }
                    }
                }
            }
        },
    ))
}

/// The link to `op`'s action page.
fn action_or_nothing(op: &OperationState) -> Markup {
    match &op.action_digest {
        Some(digest) => action_link(&instance_name(op), digest),
        None => html! {},
    }
}

/// The instance name of `op`: its queue's prefix and its suffix.
pub fn instance_name(op: &OperationState) -> String {
    let prefix = op
        .invocation_name
        .as_ref()
        .and_then(|i| i.size_class_queue_name.as_ref())
        .and_then(|q| q.platform_queue_name.as_ref())
        .map(|p| p.instance_name_prefix.as_str())
        .unwrap_or_default();
    [prefix, op.instance_name_suffix.as_str()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

/// An instance name, or `(default)` for the empty one.
pub fn shown_instance(name: &str) -> &str {
    if name.is_empty() {
        "(default)"
    } else {
        name
    }
}

/// `queued`, `executing`, or `completed` with the exit code or status.
pub fn stage_text(op: &OperationState) -> String {
    match &op.stage {
        Some(operation_state::Stage::Queued(_)) => "queued".to_owned(),
        Some(operation_state::Stage::Executing(_)) => "executing".to_owned(),
        Some(operation_state::Stage::Completed(response)) => {
            match response.status.as_ref().filter(|s| s.code != 0) {
                Some(status) => format!(
                    "failed: {} {}",
                    corral_metrics::code_name(status.code),
                    status.message
                ),
                None => format!(
                    "completed, exit code {}",
                    response.result.as_ref().map_or(0, |r| r.exit_code)
                ),
            }
        }
        None => "unknown".to_owned(),
    }
}

/// `name=value, …` of a platform; `(none)` when empty.
pub fn platform_text(platform: Option<&Platform>) -> String {
    let properties = platform
        .map(|p| p.properties.as_slice())
        .unwrap_or_default();
    if properties.is_empty() {
        return "(none)".to_owned();
    }
    properties
        .iter()
        .map(|p| format!("{}={}", p.name, p.value))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `key=value, …` of a worker id.
fn id_text(id: &BTreeMap<String, String>) -> String {
    id.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
