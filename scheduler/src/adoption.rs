//! Runs this scheduler never handed out: a worker still executing an
//! action a scheduler process before a restart gave it.
//!
//! The client of such an action learns from WaitExecution that the
//! operation is unknown (NOT_FOUND) and executes it again, as Bazel does.
//! Without adoption the retry is queued and run a second time while the
//! first run goes on. With it, the worker's progress report (which echoes
//! the instance name suffix and digest function it was given, Corral's
//! extension fields of `CurrentState.Executing`) makes the run an
//! operation here, in flight under the action's deduplication key: the
//! retried Execute joins it, and its result reaches the client when the
//! worker reports it. An Execute that arrived first and is still queued
//! is joined the same way (the queue then skips it).
//!
//! A Buildbarn worker does not echo the instance name: its run is let
//! finish unadopted (its result still reaches the Action Cache).
//!
//! If the worker stops reporting or goes idle without a result, the
//! adopted operation ends UNAVAILABLE, which clients retry; it was never
//! queued here, so there is no Action to queue again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use corral_proto::reapi::{Digest, ExecuteResponse};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::assignment::WorkerId;
use crate::operation::{DedupKey, Operation, Operations, Progress};

/// What a worker reported about an action this scheduler did not hand out.
#[derive(Debug)]
pub struct Report<'a> {
    pub action_digest: &'a Digest,
    /// The worker's instance name prefix.
    pub prefix: &'a str,
    /// `corral_instance_name_suffix`, `corral_digest_function`: `None`
    /// when the worker did not echo them (a Buildbarn worker).
    pub echoed: Option<(&'a str, i32)>,
}

/// What the worker is told about its run.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Carry on.
    Continue,
    /// Drop it: its adopted operation was cancelled.
    Drop,
}

#[derive(Debug)]
struct Run {
    operation: Arc<Operation>,
    action_digest: Digest,
    /// When the worker must have reported again.
    deadline: Instant,
}

/// The adopted runs, by worker.
#[derive(Debug)]
pub struct Adoptions {
    runs: Mutex<HashMap<WorkerId, Run>>,
    sync_interval: Duration,
    worker_timeout: Duration,
}

impl Adoptions {
    pub fn new(sync_interval: Duration, worker_timeout: Duration) -> Self {
        Self {
            runs: Mutex::default(),
            sync_interval,
            worker_timeout,
        }
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Run>> {
        // Every update is one map operation: a panic elsewhere cannot
        // leave it half done.
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `worker` reports executing an action this scheduler did not assign
    /// it. Adopts the run on its first report (under a name from
    /// `new_name`), keeps it alive on the next ones.
    pub fn executing(
        &self,
        worker: &WorkerId,
        report: Report<'_>,
        operations: &Mutex<Operations>,
        new_name: impl FnOnce() -> Option<String>,
    ) -> Verdict {
        let deadline = Instant::now() + self.sync_interval;
        let mut runs = self.runs();
        if let Some(run) = runs.get_mut(worker) {
            if run.action_digest == *report.action_digest {
                if run.operation.is_completed() {
                    runs.remove(worker);
                    return Verdict::Drop;
                }
                run.deadline = deadline;
                return Verdict::Continue;
            }
            // Another action than the one adopted: that one ended
            // unreported. Its operation fails; this one may be adopted.
            if let Some(run) = runs.remove(worker) {
                lost(&run, "reported another action instead of its result");
            }
        }
        let Some((suffix, digest_function)) = report.echoed else {
            debug!("an action from before a restart, not adoptable; letting it finish");
            return Verdict::Continue;
        };
        let instance = instance_name(report.prefix, suffix);
        let key = DedupKey::new(&instance, digest_function, report.action_digest);
        let Some(name) = new_name() else {
            return Verdict::Continue;
        };
        let digest = report.action_digest.clone();
        let (operation, new) = operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join_or_create(Some(key), || {
                Operation::new(name, instance, digest, digest_function)
            });
        // An identical action queued here meanwhile is joined while it
        // waits; one already running on another worker is left alone
        // (both runs finish, the first result counts).
        if !new && operation.current() != Progress::Queued {
            debug!(operation = %operation.name(), "an action from before a restart, already running here too");
            return Verdict::Continue;
        }
        operation.adopt();
        info!(
            operation = %operation.name(),
            action = %report.action_digest.hash,
            joined = !new,
            "adopted an action running since before a restart"
        );
        runs.insert(
            worker.clone(),
            Run {
                operation,
                action_digest: report.action_digest.clone(),
                deadline,
            },
        );
        Verdict::Continue
    }

    /// `worker` reports `action_digest` done with `response`. Returns
    /// whether it was an adopted run (whose operation it completed).
    pub fn complete(
        &self,
        worker: &WorkerId,
        action_digest: &Digest,
        response: ExecuteResponse,
    ) -> bool {
        let mut runs = self.runs();
        match runs.get(worker) {
            Some(run) if run.action_digest == *action_digest => {}
            _ => return false,
        }
        if let Some(run) = runs.remove(worker) {
            run.operation.complete(response);
        }
        true
    }

    /// `worker` says it is idle: an adopted run it had ended without a
    /// result.
    pub fn idle(&self, worker: &WorkerId) {
        if let Some(run) = self.runs().remove(worker) {
            lost(&run, "went idle without reporting a result");
        }
    }

    /// Ends the adopted runs of workers silent past their deadline and
    /// the worker timeout. Returns how many.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        let mut runs = self.runs();
        let before = runs.len();
        runs.retain(|_, run| {
            let alive = now <= run.deadline + self.worker_timeout;
            if !alive {
                lost(run, "stopped synchronizing");
            }
            alive
        });
        before - runs.len()
    }

    /// How many runs are adopted now.
    pub fn len(&self) -> usize {
        self.runs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The instance name a worker serving `prefix` was given `suffix` under,
/// joined as workers join them.
fn instance_name(prefix: &str, suffix: &str) -> String {
    match (prefix.is_empty(), suffix.is_empty()) {
        (_, true) => prefix.to_owned(),
        (true, false) => suffix.to_owned(),
        (false, false) => format!("{prefix}/{suffix}"),
    }
}

/// Ends `run`'s operation UNAVAILABLE: the client retries, and the action
/// is queued afresh.
fn lost(run: &Run, why: &str) {
    warn!(operation = %run.operation.name(), "the worker running an adopted action {why}");
    run.operation.complete(ExecuteResponse {
        status: Some(corral_proto::rpc::Status {
            code: tonic::Code::Unavailable as i32,
            message: format!(
                "the worker running this action since before a scheduler restart {why}; \
                 execute it again"
            ),
            details: Vec::new(),
        }),
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(n: u32) -> WorkerId {
        WorkerId::from([("slot".to_owned(), n.to_string())])
    }

    fn digest(n: u8) -> Digest {
        Digest {
            hash: format!("{n:02x}").repeat(32),
            size_bytes: 1,
        }
    }

    fn key(instance: &str, n: u8) -> DedupKey {
        DedupKey::new(instance, 1, &digest(n))
    }

    fn adoptions() -> Adoptions {
        Adoptions::new(Duration::from_secs(1), Duration::from_secs(1))
    }

    fn report<'a>(d: &'a Digest, prefix: &'a str, suffix: &'a str) -> Report<'a> {
        Report {
            action_digest: d,
            prefix,
            echoed: Some((suffix, 1)),
        }
    }

    fn name() -> Option<String> {
        Some("adopted".into())
    }

    fn new_op(ops: &Mutex<Operations>, instance: &str, n: u8) -> Arc<Operation> {
        let (op, new) = ops
            .lock()
            .unwrap()
            .join_or_create(Some(key(instance, n)), || {
                Operation::new("first".into(), instance.into(), digest(n), 1)
            });
        assert!(new);
        op
    }

    #[test]
    fn a_run_is_adopted_under_its_instance_name_and_an_execute_joins_it() {
        let (a, ops) = (adoptions(), Mutex::new(Operations::default()));
        let d = digest(1);
        let verdict = a.executing(&worker(1), report(&d, "farm", "tenant-a"), &ops, name);
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(a.len(), 1);
        // The retried Execute of the same action under the same name joins it.
        let (joined, new) = ops
            .lock()
            .unwrap()
            .join_or_create(Some(key("farm/tenant-a", 1)), || {
                Operation::new("retry".into(), "farm/tenant-a".into(), digest(1), 1)
            });
        assert!(!new, "the retry joined the adopted run");
        assert_eq!(joined.name(), "adopted");
        assert_eq!(joined.current(), Progress::Executing);
        // Under another instance name it does not.
        let (_, new) = ops
            .lock()
            .unwrap()
            .join_or_create(Some(key("farm/tenant-b", 1)), || {
                Operation::new("other".into(), "farm/tenant-b".into(), digest(1), 1)
            });
        assert!(new, "another tenant's Execute never joins it");

        let response = ExecuteResponse {
            message: "done".into(),
            ..Default::default()
        };
        assert!(!a.complete(&worker(1), &digest(2), response.clone()));
        assert!(a.complete(&worker(1), &d, response));
        let Progress::Completed(got) = joined.current() else {
            panic!("not completed");
        };
        assert_eq!(got.message, "done");
        assert!(a.is_empty());
    }

    #[test]
    fn a_queued_execute_that_came_first_is_joined_and_skipped_by_the_queue() {
        let (a, ops) = (adoptions(), Mutex::new(Operations::default()));
        let queued = new_op(&ops, "", 3);
        let d = digest(3);
        a.executing(&worker(1), report(&d, "", ""), &ops, name);
        assert!(queued.is_adopted(), "the queued operation is the run now");
        assert_eq!(queued.current(), Progress::Executing);
    }

    #[test]
    fn an_action_already_running_here_is_not_adopted() {
        let (a, ops) = (adoptions(), Mutex::new(Operations::default()));
        let running = new_op(&ops, "", 4);
        running.executing();
        let d = digest(4);
        a.executing(&worker(1), report(&d, "", ""), &ops, name);
        assert!(!running.is_adopted());
        assert!(a.is_empty());
    }

    #[test]
    fn a_worker_not_echoing_its_instance_name_is_let_finish_unadopted() {
        let (a, ops) = (adoptions(), Mutex::new(Operations::default()));
        let d = digest(5);
        let report = Report {
            action_digest: &d,
            prefix: "",
            echoed: None,
        };
        assert_eq!(
            a.executing(&worker(1), report, &ops, name),
            Verdict::Continue
        );
        assert!(a.is_empty());
        assert!(ops.lock().unwrap().is_empty());
    }

    fn unavailable(op: &Operation) -> bool {
        matches!(op.current(), Progress::Completed(r)
            if r.status.as_ref().is_some_and(|s| s.code == tonic::Code::Unavailable as i32))
    }

    #[test]
    fn a_worker_going_idle_without_a_result_fails_the_adopted_operation_unavailable() {
        let (a, ops) = (adoptions(), Mutex::new(Operations::default()));
        let d = digest(6);
        a.executing(&worker(1), report(&d, "", ""), &ops, name);
        let op = ops.lock().unwrap().get("adopted").unwrap();
        a.idle(&worker(1));
        assert!(unavailable(&op), "{:?}", op.current());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_worker_loses_its_adopted_run() {
        let (a, ops) = (adoptions(), Mutex::new(Operations::default()));
        let d = digest(7);
        a.executing(&worker(1), report(&d, "", ""), &ops, name);
        let op = ops.lock().unwrap().get("adopted").unwrap();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(a.expire(), 0, "within its deadline and the timeout");
        // Reporting keeps it alive.
        a.executing(&worker(1), report(&d, "", ""), &ops, || None);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(a.expire(), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.expire(), 1);
        assert!(unavailable(&op));
    }

    #[test]
    fn a_cancelled_adopted_run_is_dropped_by_the_worker() {
        let (a, ops) = (adoptions(), Mutex::new(Operations::default()));
        let d = digest(8);
        a.executing(&worker(1), report(&d, "", ""), &ops, name);
        let op = ops.lock().unwrap().get("adopted").unwrap();
        op.complete(ExecuteResponse::default());
        assert_eq!(
            a.executing(&worker(1), report(&d, "", ""), &ops, name),
            Verdict::Drop
        );
        assert!(a.is_empty());
    }

    #[test]
    fn instance_names_join_as_workers_join_them() {
        assert_eq!(instance_name("", ""), "");
        assert_eq!(instance_name("a", ""), "a");
        assert_eq!(instance_name("", "b"), "b");
        assert_eq!(instance_name("a", "b"), "a/b");
    }
}
