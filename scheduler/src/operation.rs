//! Operations: one per queued execution, shared by every client waiting
//! on it (in-flight deduplication), with its progress on a watch channel
//! so each Execute or WaitExecution stream sees every stage change. Each
//! remembers its instance name and who started it, for the access rules
//! of [`crate::access`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use corral_proto::longrunning;
use corral_proto::protobuf::Any;
use corral_proto::reapi::execution_stage::Value as ExecutionStage;
use corral_proto::reapi::{
    ActionResult, Digest, ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse,
};
use prost::Message;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::queue::PlatformKey;

const METADATA_TYPE_URL: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const RESPONSE_TYPE_URL: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";

/// Where an operation is.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Queued,
    Executing,
    Completed(Box<ExecuteResponse>),
}

/// Which of the action's stdout and stderr a client wants inline in the
/// result (`stdout_raw`, `stderr_raw`) rather than by digest alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inline {
    pub stdout: bool,
    pub stderr: bool,
}

impl Inline {
    /// What `request` asks for.
    pub fn of(request: &ExecuteRequest) -> Self {
        Self {
            stdout: request.inline_stdout,
            stderr: request.inline_stderr,
        }
    }

    /// Drops from `result` what was not asked for: the worker inlines for
    /// whoever asked among the clients sharing the operation, and REAPI
    /// says a server should not inline unasked.
    pub fn keep_only_asked(self, result: &mut ActionResult) {
        if !self.stdout {
            result.stdout_raw = Vec::new();
        }
        if !self.stderr {
            result.stderr_raw = Vec::new();
        }
    }
}

/// What the Execute that created an operation said about it, beyond the
/// action: what BuildQueueState reports (its queue, invocation, target,
/// priority). Set once; an Execute that joins it adds nothing here.
#[derive(Debug, Clone)]
pub struct Description {
    /// The platform it asks for.
    pub platform: PlatformKey,
    /// `ExecutionPolicy.priority`, clamped to what the farm accepts.
    pub priority: i32,
    /// `RequestMetadata.tool_invocation_id` (empty when none was sent).
    pub tool_invocation_id: String,
    /// `RequestMetadata.target_id`.
    pub target_id: String,
    /// When Execute queued it (or answered it from the Action Cache).
    pub queued_at: SystemTime,
}

/// One execution and everyone watching it.
#[derive(Debug)]
pub struct Operation {
    name: String,
    instance_name: String,
    /// The callers (`Caller::name`) that started it: with in-flight
    /// deduplication, every client whose Execute joined it. A Vec: most
    /// operations have one owner, and a set's first node would cost more
    /// than the rest of the operation.
    owners: Mutex<Vec<String>>,
    action_digest: Digest,
    digest_function: i32,
    progress: watch::Sender<Progress>,
    /// Whether any client sharing the operation asked for stdout
    /// (stderr) inline; read when the action is handed to a worker.
    inline_stdout: AtomicBool,
    inline_stderr: AtomicBool,
    /// Runs on a worker that a scheduler before a restart handed it to
    /// ([`crate::adoption`]): no worker of this scheduler takes it.
    adopted: AtomicBool,
    description: OnceLock<Description>,
    /// When it was last handed to a worker (wall clock, for people: the
    /// web UI's "since").
    handed_out: Mutex<Option<SystemTime>>,
    /// Its spans, when Execute queued it ([`Operation::trace_queued`]).
    trace: Mutex<Trace>,
}

/// An operation's spans (docs/decisions/0017-tracing.md): `operation`
/// from queueing to completion, the parent of every worker's run of it;
/// `queued` under it until a worker first takes it.
#[derive(Debug, Default)]
struct Trace {
    operation: Option<tracing::Span>,
    queued: Option<tracing::Span>,
}

impl Operation {
    pub fn new(
        name: String,
        instance_name: String,
        action_digest: Digest,
        digest_function: i32,
    ) -> Self {
        Self {
            name,
            instance_name,
            owners: Mutex::default(),
            action_digest,
            digest_function,
            progress: watch::Sender::new(Progress::Queued),
            inline_stdout: AtomicBool::new(false),
            inline_stderr: AtomicBool::new(false),
            adopted: AtomicBool::new(false),
            description: OnceLock::new(),
            handed_out: Mutex::new(None),
            trace: Mutex::default(),
        }
    }

    /// Starts its `operation` and `queued` spans, under the current span
    /// (its Execute's).
    pub fn trace_queued(&self) {
        let operation =
            tracing::debug_span!(target: corral_trace::SPANS, "operation", operation = %self.name);
        let queued =
            tracing::debug_span!(target: corral_trace::SPANS, parent: &operation, "queued");
        *self.trace.lock().unwrap_or_else(PoisonError::into_inner) = Trace {
            operation: Some(operation),
            queued: Some(queued),
        };
    }

    /// The W3C trace context a worker continues (`w3c_trace_context`):
    /// its `operation` span's, empty when not traced. Ends `queued`.
    pub fn handed_out_trace(&self) -> BTreeMap<String, String> {
        let (queued, context) = {
            let mut trace = self.trace.lock().unwrap_or_else(PoisonError::into_inner);
            let context = trace.operation.as_ref().map(corral_trace::context_of);
            (trace.queued.take(), context.unwrap_or_default())
        };
        drop(queued);
        context
    }

    /// Records what its Execute said; only the first call counts.
    pub fn describe(&self, description: Description) {
        let _ = self.description.set(description);
    }

    /// What its Execute said, if it was recorded.
    pub fn description(&self) -> Option<&Description> {
        self.description.get()
    }

    /// The digest of the Action it executes.
    pub fn action_digest(&self) -> &Digest {
        &self.action_digest
    }

    /// The digest function of its Execute.
    pub fn digest_function(&self) -> i32 {
        self.digest_function
    }

    /// Adds what one more client wants inline. A client joining after the
    /// action was handed out may get its output by digest only, which
    /// REAPI allows.
    pub fn ask_inline(&self, inline: Inline) {
        self.inline_stdout
            .fetch_or(inline.stdout, Ordering::Relaxed);
        self.inline_stderr
            .fetch_or(inline.stderr, Ordering::Relaxed);
    }

    /// What the clients sharing the operation want inline.
    pub fn inline_asked(&self) -> Inline {
        Inline {
            stdout: self.inline_stdout.load(Ordering::Relaxed),
            stderr: self.inline_stderr.load(Ordering::Relaxed),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance name its Execute named.
    pub fn instance_name(&self) -> &str {
        &self.instance_name
    }

    /// Records that `caller` (a `Caller::name`) started it, or joined it.
    pub fn add_owner(&self, caller: &str) {
        let mut owners = self.owners();
        if !owners.iter().any(|o| o == caller) {
            owners.reserve_exact(1);
            owners.push(caller.to_owned());
        }
    }

    /// Whether `caller` started it, or joined it.
    pub fn is_owned_by(&self, caller: &str) -> bool {
        self.owners().iter().any(|o| o == caller)
    }

    /// How many callers share it.
    pub fn owner_count(&self) -> usize {
        self.owners().len()
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // An insert is one step: a panic elsewhere cannot leave it half done.
        self.owners.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks it as run by a worker from before a restart, and so
    /// executing: a queue holding it skips it, the sweep never cancels it
    /// for want of a watcher (the client's retry is on its way).
    pub fn adopt(&self) {
        self.adopted.store(true, Ordering::Relaxed);
        self.executing();
    }

    pub fn is_adopted(&self) -> bool {
        self.adopted.load(Ordering::Relaxed)
    }

    /// A receiver that sees the current progress and every change.
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// When it was last handed to a worker, if ever.
    pub fn handed_out(&self) -> Option<SystemTime> {
        *self
            .handed_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves to EXECUTING (ignored once completed); called each time a
    /// worker is given it.
    pub fn executing(&self) {
        *self
            .handed_out
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(SystemTime::now());
        self.progress.send_if_modified(|p| {
            let change = matches!(p, Progress::Queued);
            if change {
                *p = Progress::Executing;
            }
            change
        });
    }

    /// Completes with `response`; only the first completion counts.
    pub fn complete(&self, response: ExecuteResponse) -> bool {
        let completed = self.progress.send_if_modified(|p| {
            let change = !matches!(p, Progress::Completed(_));
            if change {
                *p = Progress::Completed(Box::new(response));
            }
            change
        });
        if completed {
            // Its spans end (and are exported) now.
            let trace =
                std::mem::take(&mut *self.trace.lock().unwrap_or_else(PoisonError::into_inner));
            drop(trace);
        }
        completed
    }

    pub fn is_completed(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Completed(_))
    }

    /// Where the operation is now.
    pub fn current(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// How many client streams follow the operation.
    pub fn watchers(&self) -> usize {
        self.progress.receiver_count()
    }

    /// The google.longrunning form of `progress`, as clients receive it.
    pub fn to_proto(&self, progress: &Progress) -> longrunning::Operation {
        let stage = match progress {
            Progress::Queued => ExecutionStage::Queued,
            Progress::Executing => ExecutionStage::Executing,
            Progress::Completed(_) => ExecutionStage::Completed,
        };
        let metadata = ExecuteOperationMetadata {
            stage: stage as i32,
            action_digest: Some(self.action_digest.clone()),
            digest_function: self.digest_function,
            ..Default::default()
        };
        let (done, result) = match progress {
            Progress::Completed(response) => (
                true,
                Some(longrunning::operation::Result::Response(Any {
                    type_url: RESPONSE_TYPE_URL.to_owned(),
                    value: response.encode_to_vec(),
                })),
            ),
            _ => (false, None),
        };
        longrunning::Operation {
            name: self.name.clone(),
            metadata: Some(Any {
                type_url: METADATA_TYPE_URL.to_owned(),
                value: metadata.encode_to_vec(),
            }),
            done,
            result,
        }
    }
}

/// What makes two executions the same (REAPI in-flight deduplication):
/// instance, digest function and action digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    instance: String,
    digest_function: i32,
    action_hash: String,
    action_size: i64,
}

impl DedupKey {
    /// The key of `action_digest` under `instance`; an unset digest
    /// function is SHA-256's (REAPI), so both spellings meet.
    pub fn new(instance: &str, digest_function: i32, action_digest: &Digest) -> Self {
        use corral_proto::reapi::digest_function::Value;
        let digest_function = match digest_function {
            f if f == Value::Unknown as i32 => Value::Sha256 as i32,
            f => f,
        };
        Self {
            instance: instance.to_owned(),
            digest_function,
            action_hash: action_digest.hash.clone(),
            action_size: action_digest.size_bytes,
        }
    }
}

/// Every live operation, by name, and the in-flight ones by what they
/// execute.
#[derive(Debug, Default)]
pub struct Operations {
    by_name: HashMap<String, Arc<Operation>>,
    in_flight: HashMap<DedupKey, Arc<Operation>>,
    /// When [`sweep`](Self::sweep) first saw each operation completed.
    completed_at: HashMap<String, Instant>,
    /// Since when each unfinished operation has had no watcher.
    unwatched_since: HashMap<String, Instant>,
}

impl Operations {
    /// The in-flight operation for `key`, or a new one made by `make`.
    /// `None` for `key` (do_not_cache actions) never merges. The bool says
    /// whether the operation is new (and so must be queued).
    pub fn join_or_create(
        &mut self,
        key: Option<DedupKey>,
        make: impl FnOnce() -> Operation,
    ) -> (Arc<Operation>, bool) {
        if let Some(existing) = key.as_ref().and_then(|k| self.in_flight.get(k)) {
            if !existing.is_completed() {
                return (Arc::clone(existing), false);
            }
        }
        let operation = Arc::new(make());
        self.by_name
            .insert(operation.name().to_owned(), Arc::clone(&operation));
        if let Some(key) = key {
            self.in_flight.insert(key, Arc::clone(&operation));
        }
        (operation, true)
    }

    /// Makes `operation` reachable by name without merging anything into
    /// it (an Action Cache hit).
    pub fn insert(&mut self, operation: Arc<Operation>) {
        self.by_name.insert(operation.name().to_owned(), operation);
    }

    pub fn get(&self, name: &str) -> Option<Arc<Operation>> {
        self.by_name.get(name).cloned()
    }

    /// Every operation, sorted by name (stable pages for ListOperations).
    pub fn list(&self) -> Vec<Arc<Operation>> {
        let mut all: Vec<_> = self.by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Forgets operations completed at least `keep_completed` ago (until
    /// then a client may still WaitExecution or GetOperation them), and
    /// returns the unfinished ones nobody has watched for
    /// `unwatched_grace`, for the caller to cancel.
    pub fn sweep(
        &mut self,
        keep_completed: std::time::Duration,
        unwatched_grace: std::time::Duration,
    ) -> Vec<Arc<Operation>> {
        let now = Instant::now();
        let mut abandoned = Vec::new();
        for (name, op) in &self.by_name {
            if op.is_completed() {
                self.unwatched_since.remove(name);
                self.completed_at.entry(name.clone()).or_insert(now);
            } else if op.watchers() == 0 {
                let since = *self.unwatched_since.entry(name.clone()).or_insert(now);
                if now.duration_since(since) >= unwatched_grace {
                    abandoned.push(Arc::clone(op));
                }
            } else {
                self.unwatched_since.remove(name);
            }
        }
        let completed_at = &mut self.completed_at;
        completed_at.retain(|_, at| now.duration_since(*at) < keep_completed);
        self.by_name
            .retain(|name, op| !op.is_completed() || completed_at.contains_key(name));
        self.in_flight.retain(|_, op| !op.is_completed());
        abandoned
    }

    /// When [`sweep`](Self::sweep) will forget operation `name`, given
    /// the same intervals: `keep_completed` after it completed, or
    /// `unwatched_grace` after its last watcher left. `None` while a
    /// client follows it (or before the sweep first saw it alone).
    pub fn removal_at(
        &self,
        name: &str,
        keep_completed: std::time::Duration,
        unwatched_grace: std::time::Duration,
    ) -> Option<Instant> {
        if let Some(at) = self.completed_at.get(name) {
            return Some(*at + keep_completed);
        }
        self.unwatched_since
            .get(name)
            .map(|since| *since + unwatched_grace)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use corral_proto::reapi::ActionResult;

    use super::*;

    fn digest(n: u8) -> Digest {
        Digest {
            hash: format!("{n:02x}").repeat(32),
            size_bytes: 10,
        }
    }

    fn key(n: u8) -> DedupKey {
        DedupKey::new("main", 1, &digest(n))
    }

    #[test]
    fn an_unset_digest_function_deduplicates_with_sha256() {
        use corral_proto::reapi::digest_function::Value;
        let d = digest(1);
        assert_eq!(
            DedupKey::new("main", Value::Unknown as i32, &d),
            DedupKey::new("main", Value::Sha256 as i32, &d)
        );
        assert_ne!(
            DedupKey::new("main", Value::Blake3 as i32, &d),
            DedupKey::new("main", Value::Sha256 as i32, &d)
        );
    }

    fn op(name: &str, n: u8) -> Operation {
        Operation::new(name.into(), "main".into(), digest(n), 1)
    }

    #[test]
    fn identical_actions_share_one_operation_until_it_completes() {
        let mut ops = Operations::default();
        let (first, new) = ops.join_or_create(Some(key(1)), || op("operations/1", 1));
        assert!(new);
        let (second, new) = ops.join_or_create(Some(key(1)), || op("operations/2", 1));
        assert!(!new);
        assert_eq!(second.name(), "operations/1");
        let (other, new) = ops.join_or_create(Some(key(2)), || op("operations/3", 2));
        assert!(new && other.name() == "operations/3");
        first.complete(ExecuteResponse::default());
        let (after, new) = ops.join_or_create(Some(key(1)), || op("operations/4", 1));
        assert!(new && after.name() == "operations/4");
    }

    #[test]
    fn do_not_cache_actions_never_merge() {
        let mut ops = Operations::default();
        let (a, _) = ops.join_or_create(None, || op("operations/a", 1));
        let (b, new) = ops.join_or_create(None, || op("operations/b", 1));
        assert!(new);
        assert_ne!(a.name(), b.name());
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn watchers_see_each_stage_and_the_result() {
        let operation = op("operations/w", 1);
        let mut watcher = operation.watch();
        assert_eq!(*watcher.borrow_and_update(), Progress::Queued);
        operation.executing();
        assert!(watcher.has_changed().unwrap());
        assert_eq!(*watcher.borrow_and_update(), Progress::Executing);
        let response = ExecuteResponse {
            result: Some(ActionResult {
                exit_code: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(operation.complete(response.clone()));
        assert!(
            !operation.complete(ExecuteResponse::default()),
            "first completion wins"
        );
        operation.executing();
        let progress = watcher.borrow_and_update().clone();
        let proto = operation.to_proto(&progress);
        assert!(proto.done);
        let metadata =
            ExecuteOperationMetadata::decode(proto.metadata.unwrap().value.as_slice()).unwrap();
        assert_eq!(metadata.stage, ExecutionStage::Completed as i32);
        assert_eq!(metadata.action_digest, Some(digest(1)));
        let Some(longrunning::operation::Result::Response(any)) = proto.result else {
            panic!("no response");
        };
        assert_eq!(any.type_url, RESPONSE_TYPE_URL);
        assert_eq!(
            ExecuteResponse::decode(any.value.as_slice()).unwrap(),
            response
        );
    }

    #[tokio::test(start_paused = true)]
    async fn completed_operations_stay_reachable_for_a_while_then_go() {
        let keep = std::time::Duration::from_secs(60);
        let mut ops = Operations::default();
        let (done, _) = ops.join_or_create(Some(key(1)), || op("operations/d", 1));
        let (running, _) = ops.join_or_create(Some(key(2)), || op("operations/e", 2));
        let _watching = running.watch();
        done.complete(ExecuteResponse::default());
        assert!(ops.sweep(keep, keep).is_empty());
        tokio::time::advance(std::time::Duration::from_secs(59)).await;
        ops.sweep(keep, keep);
        assert!(
            ops.get("operations/d").is_some(),
            "WaitExecution may still come"
        );
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        ops.sweep(keep, keep);
        assert!(ops.get("operations/d").is_none());
        assert!(ops.get("operations/e").is_some());
        assert_eq!(ops.list().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_nobody_watches_is_abandoned_after_the_grace() {
        let grace = std::time::Duration::from_secs(60);
        let mut ops = Operations::default();
        let (operation, _) = ops.join_or_create(Some(key(1)), || op("operations/u", 1));
        let watcher = operation.watch();
        assert!(ops.sweep(grace, grace).is_empty());
        drop(watcher);
        assert!(ops.sweep(grace, grace).is_empty(), "the grace starts now");
        tokio::time::advance(std::time::Duration::from_secs(30)).await;
        // A client comes back (WaitExecution) and leaves again.
        let again = operation.watch();
        assert!(ops.sweep(grace, grace).is_empty());
        drop(again);
        assert!(ops.sweep(grace, grace).is_empty());
        tokio::time::advance(std::time::Duration::from_secs(59)).await;
        assert!(ops.sweep(grace, grace).is_empty());
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let abandoned = ops.sweep(grace, grace);
        assert_eq!(abandoned.len(), 1);
        assert_eq!(abandoned[0].name(), "operations/u");
    }
}
