//! One build slot: synchronizes with the scheduler
//! (`buildbarn.remoteworker.OperationQueue`) and runs what it is given.
//!
//! Buildbarn's dynamics: the slot says Idle and the scheduler holds the
//! call until it has an action (or answers with nothing); while running,
//! the slot reports its stage by `next_synchronization_at`, and
//! an Idle answer then means the action went elsewhere, so it is dropped;
//! the Completed report carries the response and its answer may carry the
//! next action.
//!
//! Stopping ([`Stop`]): draining, a slot takes no new action (its last
//! report prefers being idle, which the scheduler answers at once with
//! nothing) but finishes and reports the one it runs; stopping now, it
//! drops the run, which cancels the runner's call and so kills the
//! command, and says Idle: the scheduler queues the action again at once
//! (docs/decisions/0012-runner-failures.md, the same give-back).

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
/// How long a stopping slot keeps trying to reach the scheduler with its
/// last report, once it is told to stop now (a result) or at once (Idle).
/// Past it the worker exits anyway: a scheduler it cannot reach queues
/// the action again when it notices the worker is gone.
pub const LAST_REPORT_MAX: Duration = Duration::from_secs(5);

/// How far the worker is in stopping; it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Taking work.
    Running,
    /// Taking no new work; the running action finishes and is reported.
    Drain,
    /// The running action is killed and given back.
    Now,
}

/// Completes once `stop` reaches `level`.
async fn reached(stop: &mut watch::Receiver<Stop>, level: Stop) {
    if stop.wait_for(|s| *s >= level).await.is_err() {
        // The sender outlives the slots (the worker holds it until they
        // end): never reached.
        std::future::pending::<()>().await;
    }
}

fn idle() -> CurrentState {
    state(current_state::WorkerState::Idle(Empty {}))
}

fn is_idle(current: &CurrentState) -> bool {
    matches!(
        current.worker_state,
        Some(current_state::WorkerState::Idle(_))
    )
}

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
    /// How far the worker is in stopping.
    pub stop: watch::Receiver<Stop>,
    /// Where answered and failed Synchronizes are noted, for `/readyz`.
    pub contact: std::sync::Arc<crate::health::SchedulerContact>,
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
            idle()
        }
    }
}

impl Slot {
    /// Synchronizes until told to stop (see [`Stop`]), then sends its
    /// last report and returns.
    pub async fn run(mut self) {
        let mut stop = self.stop.clone();
        let mut current = idle();
        // Introduce the slot first with a Synchronize that asks for no
        // work, which a scheduler has no reason to hold: an idle long
        // poll is answered only when work comes or the poll ends (50 s),
        // and `/readyz` waits for an answer, so an idle new worker would
        // stay unready that long (a rolling update waits on it).
        tokio::select! {
            _ = self.synchronize(idle(), true) => {}
            () = reached(&mut stop, Stop::Drain) => {}
        }
        loop {
            if *stop.borrow() != Stop::Running {
                return self.last_report(current).await;
            }
            let idle_now = is_idle(&current);
            // An unready runner would fail every action; the scheduler
            // keeps them for a slot that can run them.
            let prefer_being_idle = idle_now
                && tokio::select! {
                    ready = self.runner.check_readiness() => ready.is_err(),
                    () = reached(&mut stop, Stop::Drain) => continue,
                };
            if prefer_being_idle {
                debug!(socket = %self.runner.socket().display(), "runner not ready");
            }
            // An idle call is a long poll: a drain drops it, and the last
            // report gives back what the scheduler may have handed to it
            // meanwhile.
            let response = tokio::select! {
                response = self.synchronize(current.clone(), prefer_being_idle) => response,
                () = reached(&mut stop, Stop::Drain) => continue,
            };
            match response.desired_state.and_then(|d| d.worker_state) {
                Some(desired_state::WorkerState::Executing(exec)) => {
                    current = self.execute(exec, response.next_synchronization_at).await;
                }
                _ => {
                    current = idle();
                    let pause = if prefer_being_idle {
                        until(response.next_synchronization_at.as_ref(), BACKOFF_MAX)
                    } else {
                        until(response.next_synchronization_at.as_ref(), IDLE_PAUSE_MAX)
                    };
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = reached(&mut stop, Stop::Drain) => {}
                    }
                }
            }
        }
    }

    /// The stopping slot's last words: the result it holds, if any, then
    /// Idle, each preferring to be idle so that the scheduler hands out
    /// nothing more. The Idle report gives back an action the scheduler
    /// still counts as this slot's: one killed by [`Stop::Now`], or one
    /// handed to a long poll the drain dropped. A result is retried until
    /// [`LAST_REPORT_MAX`] after [`Stop::Now`]; the Idle report for
    /// [`LAST_REPORT_MAX`].
    async fn last_report(&mut self, current: CurrentState) {
        let mut stop = self.stop.clone();
        if !is_idle(&current) {
            let give_up = async {
                reached(&mut stop, Stop::Now).await;
                tokio::time::sleep(LAST_REPORT_MAX).await;
            };
            tokio::select! {
                _ = self.synchronize(current, true) => {}
                () = give_up => {
                    warn!("could not report the action's result to the scheduler before stopping; \
                           it queues the action again once it notices the worker is gone");
                    return;
                }
            }
        }
        tokio::select! {
            _ = self.synchronize(idle(), true) => {}
            () = tokio::time::sleep(LAST_REPORT_MAX) => {
                warn!("could not tell the scheduler this slot stops; it notices once the \
                       worker is silent");
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
                Ok(response) => {
                    self.contact.answered();
                    return response.into_inner();
                }
                Err(status) => {
                    self.contact.failed(&status);
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
            trace_context: exec.w3c_trace_context,
        };
        let (stage_tx, stage_rx) = watch::channel(Stage::Started);
        let mut report_in = until(next_sync.as_ref(), REPORT_MAX);
        let executor = &self.executor;
        let run = executor.execute(&job, &stage_tx);
        tokio::pin!(run);
        // Progress goes out when the scheduler asks for it
        // (`next_synchronization_at`), not at each change of stage: the
        // scheduler only needs to know the slot is alive, and a report per
        // stage was up to four Synchronize calls per action, most of the
        // farm's gRPC work for a short one. The stage is whatever it is
        // when the report goes.
        let mut report_now = false;
        // A failed report is retried soon, then less often: the first
        // call after a scheduler restart fails on the old connection, and
        // the restarted scheduler adopts the run only once it hears of it.
        let mut backoff = BACKOFF_MIN;
        let mut stop = self.stop.clone();
        // Stopping now drops `run`: the runner's call is cancelled, which
        // kills the command, and the slot says Idle, giving it back.
        let killed = |action_digest: &Digest| {
            warn!(action = %action_digest.hash, "stopping now: killed the action; giving it back to the scheduler");
            idle()
        };
        loop {
            if report_now {
                let stage = *stage_rx.borrow();
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
                    () = reached(&mut stop, Stop::Now) => return killed(&action_digest),
                };
                match answer {
                    Ok(response) => {
                        let response = response.into_inner();
                        if let Some(desired_state::WorkerState::Idle(_)) =
                            response.desired_state.and_then(|d| d.worker_state)
                        {
                            warn!(action = %action_digest.hash, "the scheduler took the action back; abandoning it");
                            return idle();
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
                () = tokio::time::sleep(report_in) => report_now = true,
                () = reached(&mut stop, Stop::Now) => return killed(&action_digest),
            }
        }
    }
}
