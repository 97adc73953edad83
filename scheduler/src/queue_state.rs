//! The scheduler's state as BuildQueueState shows it, built for one call
//! from read-only copies ([`Assignments::workers_view`], the operations'
//! list) and filtered for one caller.
//!
//! Buildbarn's model, mapped onto Corral's:
//! - A platform queue is what workers announce: an instance name prefix
//!   and a platform. Operations sit in the queue of the longest prefix
//!   covering their instance name, among live workers whose platform
//!   satisfies theirs (exactly, unless `[platform_matching]` says
//!   otherwise; the first such platform, sorted, when several do); an
//!   operation no live worker can take sits in a queue named
//!   after its own instance name, with no workers (where it waits out the
//!   platform grace). Workers announce no size class yet: every platform
//!   queue has one size class queue, class 0.
//! - Invocations nest as Corral's queues take turns: first the instance
//!   name (a [`corral_proto::invocation_ids::InstanceName`]), then the
//!   client's `tool_invocation_id` (a `RequestMetadata` with only that
//!   field, as bb_scheduler reports it).
//! - An operation is executing while a worker holds it, queued while it
//!   waits for one (also after losing a worker), completed once it has
//!   its response.
//! - Corral does not remember which invocation a worker last ran for:
//!   idle workers count at the root invocation only.
//!
//! Filtering: only operations of instance names the caller may list
//! (`visible`) are shown or counted; a queue is shown when the caller may
//! list its prefix or one of its operations. Its workers serve the
//! caller's names; what a worker runs for an instance name the caller
//! may not list is left out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use corral_proto::buildqueuestate::{
    operation_state, InvocationName, InvocationState, OperationState, PlatformQueueName,
    SizeClassQueueName,
};
use corral_proto::invocation_ids::InstanceName;
use corral_proto::protobuf::{Any, Empty};
use corral_proto::reapi::{platform, ExecuteResponse, Platform, RequestMetadata};
use corral_proto::time::timestamp;
use prost::Message;
use tokio::time::Instant;

use crate::assignment::{instance_matches, WorkerId, WorkerView, WorkersView};
use crate::drain::DrainQueue;
use crate::operation::{Operation, Progress};
use crate::platform_matching::PlatformMatcher;
use crate::queue::PlatformKey;
use crate::timing::wall_clock;

const INSTANCE_NAME_TYPE_URL: &str = "type.googleapis.com/corral.buildqueuestate.InstanceName";
const REQUEST_METADATA_TYPE_URL: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.RequestMetadata";

/// A platform queue: the instance name prefix and platform workers
/// announce (or, for operations no worker takes, their instance name).
pub type QueueName = (String, PlatformKey);

/// One level of an invocation name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InvocationKey {
    /// First level: the instance name.
    Instance(String),
    /// Second level: the client's tool invocation id.
    Tool(String),
}

impl InvocationKey {
    /// The id as Buildbarn's messages carry it.
    pub fn to_any(&self) -> Any {
        match self {
            InvocationKey::Instance(name) => Any {
                type_url: INSTANCE_NAME_TYPE_URL.to_owned(),
                value: InstanceName {
                    instance_name: name.clone(),
                }
                .encode_to_vec(),
            },
            InvocationKey::Tool(id) => Any {
                type_url: REQUEST_METADATA_TYPE_URL.to_owned(),
                value: RequestMetadata {
                    tool_invocation_id: id.clone(),
                    ..Default::default()
                }
                .encode_to_vec(),
            },
        }
    }

    /// The key an id names; `None` for an id Corral never gives.
    pub fn of(any: &Any) -> Option<Self> {
        match any.type_url.as_str() {
            INSTANCE_NAME_TYPE_URL => InstanceName::decode(any.value.as_slice())
                .ok()
                .map(|m| InvocationKey::Instance(m.instance_name)),
            REQUEST_METADATA_TYPE_URL => RequestMetadata::decode(any.value.as_slice())
                .ok()
                .map(|m| InvocationKey::Tool(m.tool_invocation_id)),
            _ => None,
        }
    }

    fn text(&self) -> &str {
        match self {
            InvocationKey::Instance(s) | InvocationKey::Tool(s) => s,
        }
    }
}

/// The invocation path of `operation`: its instance name, then its tool
/// invocation id.
pub fn invocation_path(operation: &Operation) -> [InvocationKey; 2] {
    let tool = operation
        .description()
        .map(|d| d.tool_invocation_id.clone())
        .unwrap_or_default();
    [
        InvocationKey::Instance(operation.instance_name().to_owned()),
        InvocationKey::Tool(tool),
    ]
}

/// Where an operation is.
#[derive(Debug, Clone)]
pub enum Stage {
    Queued,
    /// Held by a worker (Buildbarn's OperationState names none).
    Executing,
    Completed(Box<ExecuteResponse>),
}

/// An unfinished operation in its queue.
#[derive(Debug, Clone)]
pub struct Placed {
    pub operation: Arc<Operation>,
    pub path: [InvocationKey; 2],
    pub executing: bool,
}

/// One platform queue as the caller sees it.
#[derive(Debug, Default)]
pub struct QueueState {
    /// Its workers, by id.
    pub workers: BTreeMap<WorkerId, WorkerView>,
    /// Its unfinished operations the caller may list.
    pub operations: Vec<Placed>,
    /// With no worker: when its queued operations fail.
    pub timeout: Option<SystemTime>,
    /// Drains (AddDrain) of exactly this queue.
    pub drains: usize,
}

/// The state for one call and one caller.
pub struct View {
    pub queues: BTreeMap<QueueName, QueueState>,
    /// Prefixes live workers announce, per platform, for placing
    /// operations.
    worker_queues: BTreeSet<QueueName>,
    /// Whether a worker's platform satisfies an operation's.
    matcher: PlatformMatcher,
    /// Which worker holds each executing operation, by the operation's
    /// address (a number, so the view may cross threads).
    running: HashMap<usize, WorkerId>,
    /// When the sweep gives up each operation nobody follows.
    removals: HashMap<String, SystemTime>,
    visible: Box<dyn Fn(&str) -> bool + Send>,
}

impl View {
    /// Builds the view of `operations` (every operation the scheduler
    /// knows) and `workers`; `removals` says when operations nobody
    /// follows are given up, `visible` which instance names the caller
    /// may list.
    pub fn new(
        workers: WorkersView,
        operations: &[Arc<Operation>],
        removals: HashMap<String, Instant>,
        platform_grace: Duration,
        visible: impl Fn(&str) -> bool + Send + 'static,
    ) -> Self {
        let worker_queues: BTreeSet<QueueName> = workers
            .workers
            .iter()
            .map(|w| (w.prefix.clone(), w.platform.clone()))
            .collect();
        let running = workers
            .running
            .iter()
            .map(|(w, op)| (Arc::as_ptr(op) as usize, w.clone()))
            .collect();
        let mut view = View {
            queues: BTreeMap::new(),
            worker_queues,
            matcher: workers.matcher.clone(),
            running,
            removals: removals
                .into_iter()
                .map(|(name, at)| (name, wall_clock(at)))
                .collect(),
            visible: Box::new(visible),
        };
        let mut all: BTreeMap<QueueName, QueueState> = BTreeMap::new();
        for worker in workers.workers {
            let queue = all
                .entry((worker.prefix.clone(), worker.platform.clone()))
                .or_default();
            queue.workers.insert(worker.id.clone(), worker);
        }
        for operation in operations {
            if operation.is_completed() || !(view.visible)(operation.instance_name()) {
                continue;
            }
            let queue = view.place(operation);
            let executing = view
                .running
                .contains_key(&(Arc::as_ptr(operation) as usize));
            all.entry(queue).or_default().operations.push(Placed {
                operation: Arc::clone(operation),
                path: invocation_path(operation),
                executing,
            });
        }
        let unserved: HashMap<QueueName, Instant> = workers.unserved_since.into_iter().collect();
        for (name, mut queue) in all {
            if queue.operations.is_empty() && !(view.visible)(&name.0) {
                continue;
            }
            let drain_queue = DrainQueue {
                instance_name_prefix: name.0.clone(),
                platform: name.1.clone(),
            };
            queue.drains = workers
                .drains
                .iter()
                .filter(|d| d.queue.as_ref() == Some(&drain_queue))
                .count();
            if queue.workers.is_empty() {
                queue.timeout = unserved
                    .get(&name)
                    .map(|since| wall_clock(*since + platform_grace));
            }
            view.queues.insert(name, queue);
        }
        view
    }

    /// Whether the caller may list operations of `instance_name`.
    pub fn visible(&self, instance_name: &str) -> bool {
        (self.visible)(instance_name)
    }

    /// The queue `operation` sits in: the longest prefix a live worker of
    /// its platform announces that covers its instance name, else its
    /// instance name.
    pub fn place(&self, operation: &Operation) -> QueueName {
        let platform = operation
            .description()
            .map(|d| d.platform.clone())
            .unwrap_or_else(|| PlatformKey::new([]));
        let instance = operation.instance_name();
        self.worker_queues
            .iter()
            .filter(|(prefix, p)| {
                instance_matches(prefix, instance) && self.matcher.satisfies(p, &platform)
            })
            // The first of the longest: max_by_key keeps the last.
            .rev()
            .max_by_key(|(prefix, _)| prefix.len())
            .cloned()
            .unwrap_or_else(|| (instance.to_owned(), platform))
    }

    /// Where `operation` is now.
    pub fn stage(&self, operation: &Operation) -> Stage {
        match operation.current() {
            Progress::Completed(response) => Stage::Completed(response),
            _ => match self.running.get(&(operation as *const Operation as usize)) {
                Some(_) => Stage::Executing,
                // Run by a worker from before a restart (crate::adoption),
                // which no queue holds: executing too.
                None if operation.is_adopted() => Stage::Executing,
                None => Stage::Queued,
            },
        }
    }

    /// Buildbarn's state of `operation`.
    pub fn operation_state(&self, operation: &Operation) -> OperationState {
        let queue = self.place(operation);
        let description = operation.description();
        let stage = match self.stage(operation) {
            Stage::Queued => operation_state::Stage::Queued(Empty {}),
            Stage::Executing => operation_state::Stage::Executing(Empty {}),
            Stage::Completed(response) => operation_state::Stage::Completed(*response),
        };
        let path = invocation_path(operation);
        OperationState {
            name: operation.name().to_owned(),
            invocation_name: Some(invocation_name(&queue, &path)),
            expected_duration: None,
            queued_timestamp: description.map(|d| timestamp(d.queued_at)),
            action_digest: Some(operation.action_digest().clone()),
            timeout: self.removals.get(operation.name()).map(|t| timestamp(*t)),
            stage: Some(stage),
            target_id: description.map(|d| d.target_id.clone()).unwrap_or_default(),
            priority: description.map_or(0, |d| d.priority),
            instance_name_suffix: suffix(&queue.0, operation.instance_name()),
            digest_function: operation.digest_function(),
        }
    }

    /// The unfinished operations of `queue` under the invocation `path`.
    pub fn under<'a>(queue: &'a QueueState, path: &'a [InvocationKey]) -> Vec<&'a Placed> {
        queue
            .operations
            .iter()
            .filter(|p| p.path.starts_with(path))
            .collect()
    }
}

/// The instance name after `prefix` (and its `/`).
fn suffix(prefix: &str, instance: &str) -> String {
    instance
        .strip_prefix(prefix)
        .unwrap_or(instance)
        .trim_start_matches('/')
        .to_owned()
}

/// The proto name of a platform queue.
pub fn platform_queue_name((prefix, platform): &QueueName) -> PlatformQueueName {
    PlatformQueueName {
        instance_name_prefix: prefix.clone(),
        platform: Some(Platform {
            properties: platform
                .properties()
                .iter()
                .map(|(name, value)| platform::Property {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }),
    }
}

/// The proto name of a platform queue's one size class queue.
pub fn size_class_queue_name(queue: &QueueName) -> SizeClassQueueName {
    SizeClassQueueName {
        platform_queue_name: Some(platform_queue_name(queue)),
        size_class: 0,
    }
}

/// The proto name of invocation `path` in `queue`.
pub fn invocation_name(queue: &QueueName, path: &[InvocationKey]) -> InvocationName {
    InvocationName {
        size_class_queue_name: Some(size_class_queue_name(queue)),
        ids: path.iter().map(InvocationKey::to_any).collect(),
    }
}

/// The children of the invocation at `depth` among `operations` (all
/// under it), by key, each with its operations.
pub fn children<'a>(
    operations: &[&'a Placed],
    depth: usize,
) -> BTreeMap<&'a InvocationKey, Vec<&'a Placed>> {
    let mut children: BTreeMap<&InvocationKey, Vec<&Placed>> = BTreeMap::new();
    for placed in operations {
        if let Some(key) = placed.path.get(depth) {
            children.entry(key).or_default().push(placed);
        }
    }
    children
}

/// The state of the invocation at `depth` whose operations are
/// `operations`; idle workers count at the root only.
pub fn invocation_state(
    queue: &QueueState,
    operations: &[&Placed],
    depth: usize,
) -> InvocationState {
    let queued = operations.iter().filter(|p| !p.executing).count() as u32;
    let executing = operations.iter().filter(|p| p.executing).count() as u32;
    let own = depth == 2;
    let children = children(operations, depth);
    let idle = if depth == 0 {
        queue
            .workers
            .values()
            .filter(|w| w.running.is_none())
            .count() as u32
    } else {
        0
    };
    InvocationState {
        queued_operations_count: Some(
            corral_proto::buildqueuestate::invocation_state::InvocationObjectCount {
                direct: if own { queued } else { 0 },
                indirect: if own { 0 } else { queued },
            },
        ),
        executing_workers_count: executing,
        idle_workers_count: idle,
        // Idle workers wait in Synchronize's long poll.
        idle_synchronizing_workers_count: idle,
        children_count: children.len() as u32,
        active_children_count: children.len() as u32,
        queued_children_count: children
            .values()
            .filter(|ops| ops.iter().any(|p| !p.executing))
            .count() as u32,
    }
}

/// Sort key of a queued operation: Buildbarn's order (priority, then
/// queued time), then the name, so pages are stable.
pub fn queued_order(operation: &Operation) -> (i32, SystemTime, String) {
    let description = operation.description();
    (
        description.map_or(0, |d| d.priority),
        description.map_or(SystemTime::UNIX_EPOCH, |d| d.queued_at),
        operation.name().to_owned(),
    )
}

/// The text of a key, for messages.
pub fn describe(path: &[InvocationKey]) -> String {
    let parts: Vec<&str> = path.iter().map(InvocationKey::text).collect();
    format!("{parts:?}")
}

#[cfg(test)]
mod tests {
    use corral_proto::reapi::Digest;

    use super::*;
    use crate::operation::Description;

    fn linux() -> PlatformKey {
        PlatformKey::new([("OSFamily".to_owned(), "linux".to_owned())])
    }

    fn worker(slot: &str, prefix: &str, platform: PlatformKey) -> WorkerView {
        WorkerView {
            id: WorkerId::from([("slot".to_owned(), slot.to_owned())]),
            prefix: prefix.to_owned(),
            platform,
            drained: false,
            running: None,
        }
    }

    fn operation(name: &str, instance: &str, platform: PlatformKey) -> Arc<Operation> {
        let op = Operation::new(name.to_owned(), instance.to_owned(), Digest::default(), 1);
        op.describe(Description {
            platform,
            priority: 0,
            tool_invocation_id: "build".to_owned(),
            target_id: String::new(),
            queued_at: SystemTime::UNIX_EPOCH,
        });
        Arc::new(op)
    }

    #[tokio::test]
    async fn operations_sit_in_the_longest_prefix_of_their_platform_or_a_queue_of_their_own() {
        let workers = WorkersView {
            workers: vec![
                worker("shared", "", linux()),
                worker("team", "team-a", linux()),
            ],
            ..Default::default()
        };
        let mac = PlatformKey::new([("OSFamily".to_owned(), "macos".to_owned())]);
        let ops = [
            operation("operations/a", "team-a/x", linux()),
            operation("operations/b", "team-b", linux()),
            operation("operations/m", "team-a", mac.clone()),
        ];
        let view = View::new(
            workers,
            &ops,
            HashMap::new(),
            Duration::from_secs(60),
            |instance| instance != "hidden",
        );
        assert_eq!(view.place(&ops[0]), ("team-a".to_owned(), linux()));
        assert_eq!(view.operation_state(&ops[0]).instance_name_suffix, "x");
        assert_eq!(view.place(&ops[1]), (String::new(), linux()));
        assert_eq!(view.place(&ops[2]), ("team-a".to_owned(), mac.clone()));
        let names: Vec<&QueueName> = view.queues.keys().collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let own = &view.queues[&("team-a".to_owned(), mac)];
        assert!(own.workers.is_empty());
        assert_eq!(own.operations.len(), 1);
        for key in invocation_path(&ops[0]) {
            assert_eq!(InvocationKey::of(&key.to_any()), Some(key));
        }
        assert_eq!(InvocationKey::of(&Any::default()), None);
    }

    #[tokio::test]
    async fn an_operation_sits_in_a_queue_whose_platform_satisfies_its_own() {
        let cores = |n: &str| {
            PlatformKey::new([
                ("OSFamily".to_owned(), "linux".to_owned()),
                ("cores".to_owned(), n.to_owned()),
            ])
        };
        let workers = WorkersView {
            workers: vec![
                worker("small", "", cores("4")),
                worker("big", "", cores("16")),
            ],
            matcher: PlatformMatcher::new(
                [(
                    "cores".to_owned(),
                    crate::platform_matching::Matching::Minimum,
                )]
                .into(),
            ),
            ..Default::default()
        };
        let ops = [
            operation("operations/a", "", cores("2")),
            operation("operations/b", "", cores("8")),
            operation("operations/c", "", cores("64")),
        ];
        let view = View::new(
            workers,
            &ops,
            HashMap::new(),
            Duration::from_secs(60),
            |_| true,
        );
        assert_eq!(view.place(&ops[0]), (String::new(), cores("16")));
        assert_eq!(view.place(&ops[1]), (String::new(), cores("16")));
        assert_eq!(view.place(&ops[2]), (String::new(), cores("64")));
    }

    #[tokio::test]
    async fn a_caller_sees_queues_of_its_names_or_with_its_operations_only() {
        let workers = WorkersView {
            workers: vec![
                worker("shared", "", linux()),
                worker("b", "team-b", linux()),
            ],
            ..Default::default()
        };
        let ops = [
            operation("operations/a", "team-a", linux()),
            operation("operations/b", "team-b", linux()),
        ];
        let view = View::new(
            workers,
            &ops,
            HashMap::new(),
            Duration::from_secs(60),
            |instance| instance == "team-a",
        );
        // The shared queue holds one of team A's operations; team B's
        // queue is not shown, nor are its operations counted anywhere.
        let names: Vec<&QueueName> = view.queues.keys().collect();
        assert_eq!(names, [&(String::new(), linux())]);
        let shared = &view.queues[&(String::new(), linux())];
        assert_eq!(shared.operations.len(), 1);
        assert_eq!(shared.operations[0].operation.name(), "operations/a");
    }
}
