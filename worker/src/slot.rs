//! One build slot: synchronizes with the scheduler
//! (`buildbarn.remoteworker.OperationQueue`) and runs what it is given.
//!
//! Buildbarn's dynamics: the slot says Idle and the scheduler holds the
//! call until it has an action (or answers with nothing); while running,
//! the slot reports its stage at least by `next_synchronization_at`, and
//! an Idle answer then means the action went elsewhere, so it is dropped;
//! the Completed report carries the response and its answer may carry the
//! next action.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use corral_auth::channel::Channel;
use corral_proto::protobuf::{Empty, Timestamp};
use corral_proto::reapi::{Digest, ExecuteResponse, Platform};
use corral_proto::remoteworker::operation_queue_client::OperationQueueClient;
use corral_proto::remoteworker::{
    current_state, desired_state, CurrentState, SynchronizeRequest, SynchronizeResponse,
};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::executor::{Executor, Job, RunnerLost, Stage};
use crate::runner_client::RunnerClient;

/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// First wait after a failed synchronization.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause while idle before asking again: the scheduler long-polls,
/// so this only paces a scheduler that answers at once.
const IDLE_PAUSE_MAX: Duration = Duration::from_millis(200);
/// Progress reports while executing are sent at least this often, even if
/// the scheduler asks for less.
const REPORT_MAX: Duration = Duration::from_secs(10);

/// What a slot tells the scheduler about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub worker_id: BTreeMap<String, String>,
    pub instance_name_prefix: String,
    pub platform: Platform,
    pub size_class: u32,
}

/// A slot: its identity, the scheduler, its runner and its executor.
pub struct Slot {
    pub identity: Identity,
    pub scheduler: OperationQueueClient<Channel>,
    pub runner: RunnerClient,
    pub executor: Executor,
}

fn state(s: current_state::WorkerState) -> CurrentState {
    CurrentState {
        worker_state: Some(s),
    }
}

/// How long until `at`, capped at `max`; zero if it has passed.
fn until(at: Option<&Timestamp>, max: Duration) -> Duration {
    let Some(at) = at else { return max };
    corral_proto::time::system_time(at)
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(max)
}

/// What to report once an action ended: executing, completed with its
/// response (Buildbarn's report of a result), or,
/// when the runner failed rather than the action, Idle. Buildbarn's
/// protocol has no "run it again" message; Idle from a worker the
/// scheduler thinks busy is how a worker that lost its action says so,
/// and the scheduler queues the action again (counting against its
/// `max_retries`). The next synchronization then prefers being idle until
/// the runner is ready again (docs/decisions/0012-runner-failures.md).
fn ended_state(action_digest: Digest, ended: Result<ExecuteResponse, RunnerLost>) -> CurrentState {
    match ended {
        Ok(response) => state(corral_proto::completed(action_digest, response)),
        Err(lost) => {
            warn!(action = %action_digest.hash, error = %lost, "giving the action back to the scheduler");
            state(current_state::WorkerState::Idle(Empty {}))
        }
    }
}

impl Slot {
    /// Synchronizes forever; the caller stops it by dropping the future.
    pub async fn run(mut self) {
        let mut current = state(current_state::WorkerState::Idle(Empty {}));
        loop {
            let idle = matches!(
                current.worker_state,
                Some(current_state::WorkerState::Idle(_))
            );
            // An unready runner would fail every action; the scheduler
            // keeps them for a slot that can run them.
            let prefer_being_idle = idle && self.runner.check_readiness().await.is_err();
            if prefer_being_idle {
                debug!(socket = %self.runner.socket().display(), "runner not ready");
            }
            let response = self.synchronize(current.clone(), prefer_being_idle).await;
            match response.desired_state.and_then(|d| d.worker_state) {
                Some(desired_state::WorkerState::Executing(exec)) => {
                    current = self.execute(exec, response.next_synchronization_at).await;
                }
                _ => {
                    current = state(current_state::WorkerState::Idle(Empty {}));
                    let pause = if prefer_being_idle {
                        until(response.next_synchronization_at.as_ref(), BACKOFF_MAX)
                    } else {
                        until(response.next_synchronization_at.as_ref(), IDLE_PAUSE_MAX)
                    };
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn request(&self, current: CurrentState, prefer_being_idle: bool) -> SynchronizeRequest {
        SynchronizeRequest {
            worker_id: self.identity.worker_id.clone(),
            instance_name_prefix: self.identity.instance_name_prefix.clone(),
            platform: Some(self.identity.platform.clone()),
            current_state: Some(current),
            size_class: self.identity.size_class,
            prefer_being_idle,
        }
    }

    /// Sends `current` until the scheduler takes it, backing off while it
    /// is unreachable; a completed result is never dropped on the way.
    async fn synchronize(
        &mut self,
        current: CurrentState,
        prefer_being_idle: bool,
    ) -> SynchronizeResponse {
        let mut backoff = BACKOFF_MIN;
        loop {
            let request = self.request(current.clone(), prefer_being_idle);
            match self.scheduler.synchronize(request).await {
                Ok(response) => return response.into_inner(),
                Err(status) => {
                    warn!(code = ?status.code(), message = status.message(), "synchronizing with the scheduler failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Runs one action, reporting progress; returns the state to report
    /// next (Completed, or Idle if the scheduler took the action back or
    /// the runner failed under it).
    async fn execute(
        &self,
        exec: corral_proto::remoteworker::desired_state::Executing,
        next_sync: Option<Timestamp>,
    ) -> CurrentState {
        let action_digest = exec.action_digest.unwrap_or_default();
        let instance_name = [
            self.identity.instance_name_prefix.as_str(),
            exec.instance_name_suffix.as_str(),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
        // Echoed in every progress report: a scheduler that restarted
        // since adopts the run by them (remoteworker.proto).
        let suffix = exec.instance_name_suffix.clone();
        // Unset means SHA-256 (REAPI); echoed set, so that the scheduler
        // tells an echo from a worker that does not echo.
        let digest_function = match exec.digest_function {
            0 => corral_proto::reapi::digest_function::Value::Sha256 as i32,
            f => f,
        };
        let job = Job {
            action_digest: action_digest.clone(),
            action: exec.action.unwrap_or_default(),
            instance_name,
            queued: exec.queued_timestamp,
            digest_function: exec.digest_function,
            inline_stdout: exec.corral_inline_stdout,
            inline_stderr: exec.corral_inline_stderr,
        };
        let (stage_tx, mut stage_rx) = watch::channel(Stage::Started);
        let mut report_in = until(next_sync.as_ref(), REPORT_MAX);
        let executor = &self.executor;
        let run = executor.execute(&job, &stage_tx);
        tokio::pin!(run);
        let mut report_now = true;
        // A failed report is retried soon, then less often: the first
        // call after a scheduler restart fails on the old connection, and
        // the restarted scheduler adopts the run only once it hears of it.
        let mut backoff = BACKOFF_MIN;
        loop {
            if report_now {
                let stage = *stage_rx.borrow_and_update();
                let executing = current_state::Executing {
                    action_digest: Some(action_digest.clone()),
                    execution_state: Some(match stage {
                        Stage::Started => {
                            current_state::executing::ExecutionState::Started(Empty {})
                        }
                        Stage::FetchingInputs => {
                            current_state::executing::ExecutionState::FetchingInputs(Empty {})
                        }
                        Stage::Running => {
                            current_state::executing::ExecutionState::Running(Empty {})
                        }
                        Stage::UploadingOutputs => {
                            current_state::executing::ExecutionState::UploadingOutputs(Empty {})
                        }
                    }),
                    corral_instance_name_suffix: suffix.clone(),
                    corral_digest_function: digest_function,
                };
                let request = SynchronizeRequest {
                    worker_id: self.identity.worker_id.clone(),
                    instance_name_prefix: self.identity.instance_name_prefix.clone(),
                    platform: Some(self.identity.platform.clone()),
                    current_state: Some(state(current_state::WorkerState::Executing(executing))),
                    size_class: self.identity.size_class,
                    prefer_being_idle: false,
                };
                // The run goes on while the report is out: both are
                // polled together.
                let mut scheduler = self.scheduler.clone();
                let report = scheduler.synchronize(request);
                tokio::pin!(report);
                let answer = tokio::select! {
                    ended = &mut run => return ended_state(action_digest, ended),
                    answer = &mut report => answer,
                };
                match answer {
                    Ok(response) => {
                        let response = response.into_inner();
                        if let Some(desired_state::WorkerState::Idle(_)) =
                            response.desired_state.and_then(|d| d.worker_state)
                        {
                            warn!(action = %action_digest.hash, "the scheduler took the action back; abandoning it");
                            return state(current_state::WorkerState::Idle(Empty {}));
                        }
                        report_in = until(response.next_synchronization_at.as_ref(), REPORT_MAX);
                        backoff = BACKOFF_MIN;
                    }
                    Err(status) => {
                        warn!(code = ?status.code(), message = status.message(), "progress report failed");
                        report_in = backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            tokio::select! {
                ended = &mut run => return ended_state(action_digest, ended),
                changed = stage_rx.changed() => report_now = changed.is_ok(),
                () = tokio::time::sleep(report_in) => report_now = true,
            }
        }
    }
}
