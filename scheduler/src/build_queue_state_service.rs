//! `buildbarn.buildqueuestate.BuildQueueState`, the part that drains
//! workers: the admin call that lets an operator take workers out of
//! service without losing an action. Same wire shape as bb_scheduler's,
//! so its tooling works here; `corral drain` is ours.
//!
//! Every call needs `admin` over the workers it reaches
//! ([`crate::access::check_worker_prefix`]): over the queue's instance
//! name prefix when it names a queue, else over every instance name (a
//! grant on `*`), since a drain of no queue, and TerminateWorkers, stop
//! workers of every tenant.

use std::sync::Arc;
use std::time::Duration;

use corral_auth::{Authorizer, Caller, Permission};
use corral_proto::buildqueuestate::build_queue_state_server::BuildQueueState;
use corral_proto::buildqueuestate::{
    AddOrRemoveDrainRequest, DrainState, ListDrainsRequest, ListDrainsResponse, SizeClassQueueName,
    TerminateWorkersRequest,
};
use corral_proto::protobuf::Empty;
use tonic::{Request, Response, Status};

use crate::access;
use crate::assignment::{Assignments, WorkerId};
use crate::drain::DrainQueue;
use crate::queue::PlatformKey;
use crate::timing::timestamp;

/// How often TerminateWorkers looks whether the drained workers are idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

pub struct BuildQueueStateService {
    assignments: Arc<Assignments>,
    authorizer: Authorizer,
}

impl BuildQueueStateService {
    pub fn new(assignments: Arc<Assignments>, authorizer: Authorizer) -> Self {
        Self {
            assignments,
            authorizer,
        }
    }

    /// Ok if `caller` is admin over the workers of `queue` (`None`: of
    /// every queue).
    fn check_admin(&self, caller: &Caller, queue: Option<&DrainQueue>) -> Result<(), Status> {
        let prefix = queue.map_or("", |q| q.instance_name_prefix.as_str());
        access::check_worker_prefix(&self.authorizer, caller, Permission::Admin, prefix)
    }
}

/// The queue a request names. Size classes are not told apart: a worker
/// reports one, and drains apply to the platform queue whatever it is.
fn queue(name: Option<SizeClassQueueName>) -> Option<DrainQueue> {
    let platform_queue = name?.platform_queue_name.unwrap_or_default();
    Some(DrainQueue {
        instance_name_prefix: platform_queue.instance_name_prefix,
        platform: PlatformKey::of(platform_queue.platform),
    })
}

fn pattern(map: impl IntoIterator<Item = (String, String)>) -> WorkerId {
    map.into_iter().collect()
}

#[tonic::async_trait]
impl BuildQueueState for BuildQueueStateService {
    #[tracing::instrument(skip_all, fields(pattern = ?request.get_ref().worker_id_pattern))]
    async fn terminate_workers(
        &self,
        request: Request<TerminateWorkersRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.check_admin(&Caller::of(&request), None)?;
        let pattern = pattern(request.into_inner().worker_id_pattern);
        self.assignments.drain(None, pattern.clone());
        tracing::info!("draining workers until idle");
        // Returns once none of them runs anything; a client that stops
        // waiting leaves the drain in place.
        while self.assignments.running_matching(&pattern) > 0 {
            tokio::time::sleep(IDLE_POLL).await;
        }
        Ok(Response::new(Empty {}))
    }

    async fn list_drains(
        &self,
        request: Request<ListDrainsRequest>,
    ) -> Result<Response<ListDrainsResponse>, Status> {
        let caller = Caller::of(&request);
        let queue = queue(request.into_inner().size_class_queue_name);
        self.check_admin(&caller, queue.as_ref())?;
        let drains = self
            .assignments
            .drains(queue.as_ref())
            .into_iter()
            .map(|d| DrainState {
                worker_id_pattern: d.pattern.into_iter().collect(),
                created_timestamp: Some(timestamp(d.created)),
            })
            .collect();
        Ok(Response::new(ListDrainsResponse { drains }))
    }

    #[tracing::instrument(skip_all, fields(pattern = ?request.get_ref().worker_id_pattern))]
    async fn add_drain(
        &self,
        request: Request<AddOrRemoveDrainRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let queue = queue(req.size_class_queue_name);
        self.check_admin(&caller, queue.as_ref())?;
        self.assignments
            .drain(queue, pattern(req.worker_id_pattern));
        tracing::info!("drain added");
        Ok(Response::new(Empty {}))
    }

    #[tracing::instrument(skip_all, fields(pattern = ?request.get_ref().worker_id_pattern))]
    async fn remove_drain(
        &self,
        request: Request<AddOrRemoveDrainRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let queue = queue(req.size_class_queue_name);
        self.check_admin(&caller, queue.as_ref())?;
        let pattern = pattern(req.worker_id_pattern);
        if !self.assignments.undrain(queue.as_ref(), &pattern) {
            return Err(Status::not_found(format!(
                "no drain of workers matching {pattern:?}{}",
                queue
                    .map(|q| format!(" in queue {} {:?}", q.platform, q.instance_name_prefix))
                    .unwrap_or_default()
            )));
        }
        tracing::info!("drain removed");
        Ok(Response::new(Empty {}))
    }

    async fn get_operation(
        &self,
        _request: Request<corral_proto::buildqueuestate::GetOperationRequest>,
    ) -> Result<Response<corral_proto::buildqueuestate::GetOperationResponse>, Status> {
        Err(Status::unimplemented("GetOperation"))
    }

    async fn list_operations(
        &self,
        _request: Request<corral_proto::buildqueuestate::ListOperationsRequest>,
    ) -> Result<Response<corral_proto::buildqueuestate::ListOperationsResponse>, Status> {
        Err(Status::unimplemented("ListOperations"))
    }

    async fn kill_operations(
        &self,
        _request: Request<corral_proto::buildqueuestate::KillOperationsRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("KillOperations"))
    }

    async fn list_platform_queues(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<corral_proto::buildqueuestate::ListPlatformQueuesResponse>, Status> {
        Err(Status::unimplemented("ListPlatformQueues"))
    }

    async fn list_invocation_children(
        &self,
        _request: Request<corral_proto::buildqueuestate::ListInvocationChildrenRequest>,
    ) -> Result<Response<corral_proto::buildqueuestate::ListInvocationChildrenResponse>, Status>
    {
        Err(Status::unimplemented("ListInvocationChildren"))
    }

    async fn list_queued_operations(
        &self,
        _request: Request<corral_proto::buildqueuestate::ListQueuedOperationsRequest>,
    ) -> Result<Response<corral_proto::buildqueuestate::ListQueuedOperationsResponse>, Status> {
        Err(Status::unimplemented("ListQueuedOperations"))
    }

    async fn list_workers(
        &self,
        _request: Request<corral_proto::buildqueuestate::ListWorkersRequest>,
    ) -> Result<Response<corral_proto::buildqueuestate::ListWorkersResponse>, Status> {
        Err(Status::unimplemented("ListWorkers"))
    }
}
