//! `buildbarn.remoteworker.OperationQueue.Synchronize`: how workers take
//! actions and report on them, with Buildbarn's dynamics. An idle worker
//! (or one reporting a completion) is held until work arrives or the poll
//! ends; an executing worker is answered at once with its next deadline.
//!
//! A worker needs `worker` on every instance name its prefix serves
//! ([`crate::access::check_worker_prefix`]), and its id is bound to the
//! first identity that synchronized as it: another caller naming the
//! same id is refused, so it can neither take that worker's actions nor
//! report their results.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use corral_auth::{Authorizer, Caller, Permission};
use corral_proto::protobuf::Empty;
use corral_proto::remoteworker::operation_queue_server::OperationQueue;
use corral_proto::remoteworker::{
    current_state, desired_state, DesiredState, SynchronizeRequest, SynchronizeResponse,
};
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::access;
use crate::adoption::{Adoptions, Report, Verdict};
use crate::assignment::{Assignment, Assignments, ReportError, WorkerId};
use crate::operation::Operations;
use crate::operation_ids::OperationIds;
use crate::queue::PlatformKey;
use crate::task::AbortOnDrop;
use corral_proto::time::timestamp;

/// The Synchronize service over shared [`Assignments`].
pub struct OperationQueueService {
    assignments: Arc<Assignments>,
    /// How long an idle worker's call is held waiting for work.
    long_poll: Duration,
    authorizer: Authorizer,
    /// Adopts runs handed out before a restart; `None`: lets them finish
    /// unadopted.
    adopter: Option<Adopter>,
    /// Keeps the background sweep (which notices silent workers) running
    /// while this service is served.
    _sweeper: Option<Arc<AbortOnDrop>>,
}

impl OperationQueueService {
    pub fn new(assignments: Arc<Assignments>, long_poll: Duration, authorizer: Authorizer) -> Self {
        Self {
            assignments,
            long_poll,
            authorizer,
            adopter: None,
            _sweeper: None,
        }
    }

    /// Adopts runs workers report that this scheduler did not hand out
    /// (a scheduler before a restart did): see [`crate::adoption`].
    pub fn with_adoption(mut self, adopter: Adopter) -> Self {
        self.adopter = Some(adopter);
        self
    }

    /// Ties the background sweep's life to this service's.
    pub fn with_sweeper(mut self, sweeper: Arc<AbortOnDrop>) -> Self {
        self._sweeper = Some(sweeper);
        self
    }
}

/// What adopting a run needs: where adopted runs are kept, the operations
/// a retried Execute looks in, and names for new operations.
pub struct Adopter {
    pub adoptions: Arc<Adoptions>,
    pub operations: Arc<Mutex<Operations>>,
    pub ids: Arc<dyn OperationIds>,
}

fn idle() -> DesiredState {
    DesiredState {
        worker_state: Some(desired_state::WorkerState::Idle(Empty {})),
    }
}

fn executing(assignment: Assignment) -> DesiredState {
    let queued = assignment.queued;
    let inline = queued.operation.inline_asked();
    DesiredState {
        worker_state: Some(desired_state::WorkerState::Executing(
            desired_state::Executing {
                action_digest: Some(queued.action_digest),
                action: Some(queued.action),
                queued_timestamp: Some(timestamp(queued.queued_at)),
                instance_name_suffix: assignment.instance_name_suffix,
                digest_function: queued.digest_function,
                corral_inline_stdout: inline.stdout,
                corral_inline_stderr: inline.stderr,
                w3c_trace_context: queued.operation.handed_out_trace(),
                ..Default::default()
            },
        )),
    }
}

impl OperationQueueService {
    /// A worker reports `executing` an action this scheduler did not hand
    /// it out.
    fn adopt(
        &self,
        worker: &WorkerId,
        prefix: &str,
        executing: &corral_proto::remoteworker::current_state::Executing,
    ) -> Verdict {
        let (Some(adopter), Some(action_digest)) = (&self.adopter, &executing.action_digest) else {
            debug!("an action from before a restart; letting it finish");
            return Verdict::Continue;
        };
        // Unset by workers that do not echo them (Buildbarn's): then the
        // instance name is unknown and the run is not adopted. Ours echo
        // SHA256 for an unset digest function, so set means echoed.
        let echoed = (executing.corral_digest_function != 0).then_some((
            executing.corral_instance_name_suffix.as_str(),
            executing.corral_digest_function,
        ));
        let report = Report {
            action_digest,
            prefix,
            echoed,
        };
        adopter
            .adoptions
            .executing(worker, report, &adopter.operations, || {
                adopter.ids.next_name().ok()
            })
    }
}

#[tonic::async_trait]
impl OperationQueue for OperationQueueService {
    #[tracing::instrument(skip_all, fields(worker = ?request.get_ref().worker_id))]
    async fn synchronize(
        &self,
        request: Request<SynchronizeRequest>,
    ) -> Result<Response<SynchronizeResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        access::check_worker_prefix(
            &self.authorizer,
            &caller,
            Permission::Worker,
            &req.instance_name_prefix,
        )?;
        if req.worker_id.is_empty() {
            return Err(Status::invalid_argument("worker_id must name the worker"));
        }
        let worker: WorkerId = req.worker_id.into_iter().collect();
        self.assignments
            .bind_worker(&worker, caller.name())
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let platform = PlatformKey::of(req.platform);
        // What it offers counts for the platform grace period (whether
        // any worker could ever take a queued action).
        self.assignments
            .saw_worker(&worker, &req.instance_name_prefix, &platform);
        self.assignments.saw_size_class(&worker, req.size_class);
        let state = req.current_state.and_then(|s| s.worker_state);
        let next_sync = SystemTime::now() + self.assignments.next_report_in();
        let answer = |desired: Option<DesiredState>| {
            Response::new(SynchronizeResponse {
                next_synchronization_at: Some(timestamp(next_sync)),
                desired_state: desired,
            })
        };
        match state {
            // Buildbarn's workers report a result as executing, stage
            // completed; so do ours.
            Some(current_state::WorkerState::Executing(current_state::Executing {
                action_digest,
                execution_state: Some(current_state::executing::ExecutionState::Completed(response)),
                ..
            })) => {
                let Some(digest) = action_digest else {
                    return Err(Status::invalid_argument(
                        "executing.completed needs executing.action_digest",
                    ));
                };
                self.assignments.forget_taken_back(&worker);
                match self
                    .assignments
                    .complete(&worker, &digest, response.clone())
                {
                    Ok(()) => {}
                    Err(ReportError::NothingAssigned)
                        if self
                            .adopter
                            .as_ref()
                            .is_some_and(|a| a.adoptions.complete(&worker, &digest, response)) =>
                    {
                        debug!("an adopted run completed");
                    }
                    // A late result from a worker declared gone: the action
                    // runs (or ran) elsewhere; this report changes nothing.
                    Err(err) => debug!(error = %err, "completion refused"),
                }
            }
            Some(current_state::WorkerState::Executing(executing)) => {
                return Ok(match self.assignments.still_running(&worker) {
                    Ok(()) => answer(None),
                    // Handed out before this scheduler started: adopted
                    // (a client's retried Execute joins it) or let finish
                    // (its result reaches the Action Cache, where the
                    // retry finds it).
                    Err(ReportError::NothingAssigned) => {
                        match self.adopt(&worker, &req.instance_name_prefix, &executing) {
                            Verdict::Continue => answer(None),
                            Verdict::Drop => answer(Some(idle())),
                        }
                    }
                    // Given back to the queue (or cancelled) meanwhile.
                    Err(ReportError::TakenBack | ReportError::OtherAction { .. }) => {
                        answer(Some(idle()))
                    }
                });
            }
            Some(current_state::WorkerState::Idle(_)) | None => {
                self.assignments.forget_taken_back(&worker);
                if let Some(adopter) = &self.adopter {
                    adopter.adoptions.idle(&worker);
                }
                if self.assignments.release(&worker) {
                    warn!("worker went idle without reporting its action; queued again");
                }
            }
        }
        if req.prefer_being_idle {
            return Ok(answer(None));
        }
        let assignment = self
            .assignments
            .next_assignment(
                &worker,
                &req.instance_name_prefix,
                &platform,
                self.long_poll,
            )
            .await;
        Ok(answer(assignment.map(executing)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use corral_proto::reapi::{platform::Property, Action, Digest, ExecuteResponse, Platform};
    use corral_proto::remoteworker::CurrentState;

    use super::*;
    use crate::assignment::Queued;
    use crate::operation::{Operation, Progress};

    fn digest(n: u8) -> Digest {
        Digest {
            hash: format!("{n:02x}").repeat(32),
            size_bytes: 1,
        }
    }

    fn linux() -> Platform {
        Platform {
            properties: vec![Property {
                name: "OSFamily".into(),
                value: "linux".into(),
            }],
        }
    }

    fn service() -> (OperationQueueService, Arc<Assignments>) {
        let timing = crate::timing::Timing::from_config(&crate::Config::default());
        let a = Arc::new(Assignments::new(&timing, 2));
        (
            OperationQueueService::new(Arc::clone(&a), Duration::from_secs(30), Authorizer::open()),
            a,
        )
    }

    fn enqueue(a: &Assignments, n: u8) -> Arc<Operation> {
        let operation = Arc::new(Operation::new(
            format!("operations/{n}"),
            "main".into(),
            digest(n),
            1,
        ));
        a.enqueue(
            Queued {
                operation: Arc::clone(&operation),
                action_digest: digest(n),
                action: Action::default(),
                digest_function: 1,
                instance_name: "main".into(),
                platform: PlatformKey::new([("OSFamily".into(), "linux".into())]),
                queued_at: SystemTime::UNIX_EPOCH,
                waiting_since: tokio::time::Instant::now(),
                retries: 0,
                size_class: Default::default(),
            },
            0,
            "",
        );
        operation
    }

    fn request(state: current_state::WorkerState) -> Request<SynchronizeRequest> {
        Request::new(SynchronizeRequest {
            worker_id: BTreeMap::from([("slot".to_owned(), "1".to_owned())]),
            instance_name_prefix: "main".into(),
            platform: Some(linux()),
            current_state: Some(CurrentState {
                worker_state: Some(state),
            }),
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_takes_an_action_reports_and_completes_it() {
        let (svc, a) = service();
        let operation = enqueue(&a, 1);
        let response = svc
            .synchronize(request(current_state::WorkerState::Idle(Empty {})))
            .await
            .unwrap()
            .into_inner();
        let Some(desired_state::WorkerState::Executing(exec)) =
            response.desired_state.unwrap().worker_state
        else {
            panic!("no action given");
        };
        assert_eq!(exec.action_digest, Some(digest(1)));
        assert_eq!(exec.instance_name_suffix, "");
        assert!(response.next_synchronization_at.is_some());

        let running = current_state::WorkerState::Executing(current_state::Executing {
            action_digest: Some(digest(1)),
            execution_state: Some(current_state::executing::ExecutionState::Running(Empty {})),
            ..Default::default()
        });
        let response = svc
            .synchronize(request(running))
            .await
            .unwrap()
            .into_inner();
        assert!(response.desired_state.is_none(), "carry on executing");

        let done = corral_proto::completed(
            digest(1),
            ExecuteResponse {
                message: "done".into(),
                ..Default::default()
            },
        );
        // Nothing more queued: the completion call long-polls, then ends.
        let response = svc.synchronize(request(done)).await.unwrap().into_inner();
        assert!(response.desired_state.is_none());
        let progress = operation.watch().borrow().clone();
        let Progress::Completed(result) = progress else {
            panic!("not completed");
        };
        assert_eq!(result.message, "done");
    }

    fn executing(n: u8) -> current_state::WorkerState {
        current_state::WorkerState::Executing(current_state::Executing {
            action_digest: Some(digest(n)),
            execution_state: None,
            ..Default::default()
        })
    }

    fn told_idle(response: &SynchronizeResponse) -> bool {
        matches!(
            response
                .desired_state
                .as_ref()
                .and_then(|d| d.worker_state.as_ref()),
            Some(desired_state::WorkerState::Idle(_))
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_lost_its_action_is_told_to_be_idle() {
        let (svc, a) = service();
        let operation = enqueue(&a, 9);
        let response = svc
            .synchronize(request(current_state::WorkerState::Idle(Empty {})))
            .await
            .unwrap()
            .into_inner();
        assert!(response.desired_state.is_some(), "the action is handed out");
        assert!(a.cancel(&operation, "nobody waits"));
        let response = svc
            .synchronize(request(executing(9)))
            .await
            .unwrap()
            .into_inner();
        assert!(told_idle(&response), "{response:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_running_an_action_from_before_a_restart_may_finish_it() {
        // A fresh scheduler: it never handed this action out.
        let (svc, _a) = service();
        let response = svc
            .synchronize(request(executing(9)))
            .await
            .unwrap()
            .into_inner();
        assert!(!told_idle(&response), "{response:?}");
        assert!(response.desired_state.is_none(), "carry on executing");
        assert!(response.next_synchronization_at.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_preferring_idle_gets_no_work_and_a_nameless_one_is_refused() {
        let (svc, a) = service();
        enqueue(&a, 2);
        let mut req = request(current_state::WorkerState::Idle(Empty {}));
        req.get_mut().prefer_being_idle = true;
        let response = svc.synchronize(req).await.unwrap().into_inner();
        assert!(response.desired_state.is_none());
        assert_eq!(a.queued(), 1);
        let mut req = request(current_state::WorkerState::Idle(Empty {}));
        req.get_mut().worker_id.clear();
        let err = svc.synchronize(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
