//! The one fake scheduler of the worker's tests: it hands out queued
//! actions, one at a time, to a worker that does not prefer being idle,
//! and, like the real one, queues an action again when its worker says
//! Idle while it runs it; it reports what it sees, in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use corral_proto::protobuf::Timestamp;
use corral_proto::reapi::{Action, Digest, ExecuteResponse};
use corral_proto::remoteworker::operation_queue_server::{OperationQueue, OperationQueueServer};
use corral_proto::remoteworker::{
    current_state, desired_state, DesiredState, SynchronizeRequest, SynchronizeResponse,
};
use tokio::sync::mpsc;

/// What the fake scheduler saw, in order.
#[derive(Debug)]
pub enum Seen {
    /// The worker said Idle with nothing assigned.
    Idle {
        prefer_being_idle: bool,
    },
    Assigned,
    Running,
    /// The worker said Idle while it had the action: it gave it back.
    GivenBack {
        prefer_being_idle: bool,
    },
    Completed {
        worker_id: BTreeMap<String, String>,
        response: Box<ExecuteResponse>,
        prefer_being_idle: bool,
    },
}

/// An action to hand out.
type Job = (Digest, Action);

/// Queued actions, and the one assigned (to the one slot).
#[derive(Default)]
struct Jobs {
    queued: VecDeque<Job>,
    assigned: Option<Job>,
}

pub struct FakeScheduler {
    jobs: Mutex<Jobs>,
    seen: mpsc::UnboundedSender<Seen>,
    /// Holds an idle worker's request for work with nothing queued, as
    /// a real scheduler's long poll does, instead of answering at once.
    hold_idle_polls: bool,
}

impl FakeScheduler {
    /// Serves it on a free loopback port, as a task of `tasks`; its URL.
    pub async fn serve(self, tasks: &mut tokio::task::JoinSet<()>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(OperationQueueServer::new(self))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        url
    }

    /// A scheduler with `actions` queued, in order, and what it will see.
    pub fn new(actions: Vec<Job>) -> (FakeScheduler, mpsc::UnboundedReceiver<Seen>) {
        let (seen, receiver) = mpsc::unbounded_channel();
        let scheduler = FakeScheduler {
            jobs: Mutex::new(Jobs {
                queued: actions.into(),
                assigned: None,
            }),
            seen,
            hold_idle_polls: false,
        };
        (scheduler, receiver)
    }

    /// The same, holding requests for work while nothing is queued (for
    /// longer than any test runs), as a long poll with no work does.
    pub fn holding_idle_polls(self) -> Self {
        Self {
            hold_idle_polls: true,
            ..self
        }
    }
}

/// The next thing the scheduler saw, within 60 s.
pub async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(60), seen.recv())
        .await
        .expect("the fake scheduler heard from the worker within 60 s")
        .unwrap()
}

/// The first completion the scheduler sees: who sent it, and the result.
pub async fn completed(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
) -> (BTreeMap<String, String>, ExecuteResponse) {
    loop {
        if let Seen::Completed {
            worker_id,
            response,
            ..
        } = next(seen).await
        {
            return (worker_id, *response);
        }
    }
}

/// A second from now: when the worker is to synchronize again.
pub fn soon() -> Timestamp {
    corral_proto::time::timestamp(SystemTime::now() + Duration::from_secs(1))
}

#[tonic::async_trait]
impl OperationQueue for FakeScheduler {
    async fn synchronize(
        &self,
        request: tonic::Request<SynchronizeRequest>,
    ) -> Result<tonic::Response<SynchronizeResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut desired = None;
        match req.current_state.and_then(|s| s.worker_state) {
            // As bb_scheduler reads a result: executing, stage completed.
            Some(current_state::WorkerState::Executing(current_state::Executing {
                execution_state: Some(current_state::executing::ExecutionState::Completed(response)),
                ..
            })) => {
                self.jobs.lock().unwrap().assigned = None;
                let _ = self.seen.send(Seen::Completed {
                    worker_id: req.worker_id,
                    response: Box::new(response),
                    prefer_being_idle: req.prefer_being_idle,
                });
            }
            Some(current_state::WorkerState::Executing(executing)) => {
                if let Some(current_state::executing::ExecutionState::Running(_)) =
                    executing.execution_state
                {
                    let _ = self.seen.send(Seen::Running);
                }
            }
            Some(current_state::WorkerState::Idle(_)) | None => {
                let next = {
                    let mut jobs = self.jobs.lock().unwrap();
                    let prefer_being_idle = req.prefer_being_idle;
                    if let Some(lost) = jobs.assigned.take() {
                        let _ = self.seen.send(Seen::GivenBack { prefer_being_idle });
                        jobs.queued.push_front(lost);
                    } else {
                        let _ = self.seen.send(Seen::Idle { prefer_being_idle });
                    }
                    if prefer_being_idle {
                        None
                    } else {
                        let next = jobs.queued.pop_front();
                        jobs.assigned.clone_from(&next);
                        next
                    }
                };
                match next {
                    Some((digest, action)) => {
                        let _ = self.seen.send(Seen::Assigned);
                        desired = Some(DesiredState {
                            worker_state: Some(desired_state::WorkerState::Executing(
                                desired_state::Executing {
                                    action_digest: Some(digest),
                                    action: Some(action),
                                    corral_inline_stdout: true,
                                    ..Default::default()
                                },
                            )),
                        });
                    }
                    None if self.hold_idle_polls && !req.prefer_being_idle => {
                        std::future::pending::<()>().await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Ok(tonic::Response::new(SynchronizeResponse {
            next_synchronization_at: Some(soon()),
            desired_state: desired,
        }))
    }
}
