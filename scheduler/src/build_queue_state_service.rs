//! `buildbarn.buildqueuestate.BuildQueueState`, whole: the operator's
//! view of the scheduler (operations, platform queues, invocations,
//! workers) and its levers (KillOperations, drains, TerminateWorkers).
//! Same wire shape as bb_scheduler's, so its tooling (and a web UI built
//! on these calls) works here; `corral drain` is ours. How Corral's
//! state maps onto Buildbarn's model is in [`crate::queue_state`].
//!
//! Access (grants in `auth/`, rules in [`crate::access`]):
//! - Listing and reading (GetOperation, ListOperations,
//!   ListPlatformQueues, ListInvocationChildren, ListQueuedOperations,
//!   ListWorkers) needs `operations-all` or `admin` on an operation's
//!   instance name to show or count it. What the caller may not list is
//!   left out, never refused: a tenant sees its own instance names only,
//!   and learns no other tenant's operation names, invocations or
//!   workers. GetOperation of an operation the caller may not list is
//!   PERMISSION_DENIED naming `operations-all` and its instance name,
//!   as google.longrunning's GetOperation is.
//! - KillOperations of one operation: `admin` on its instance name, or
//!   what CancelOperation allows (`operations-all`; `operations-own`
//!   for an operation nobody else shares): a kill is a cancel with the
//!   status chosen. Of a size class queue without workers: `admin` over
//!   every instance name the queue serves.
//! - Drains and TerminateWorkers need `admin` over the workers they reach
//!   ([`crate::access::check_worker_prefix`]): over the queue's instance
//!   name prefix when it names a queue, else over every instance name (a
//!   grant on `*`), since a drain of no queue, and TerminateWorkers, stop
//!   workers of every tenant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use corral_auth::{Authorizer, Caller, Permission};
use corral_proto::buildqueuestate::build_queue_state_server::BuildQueueState;
use corral_proto::buildqueuestate::{
    kill_operations_request, list_invocation_children_request, list_workers_request,
    AddOrRemoveDrainRequest, DrainState, GetOperationRequest, GetOperationResponse,
    InvocationChildState, InvocationName, KillOperationsRequest, ListDrainsRequest,
    ListDrainsResponse, ListInvocationChildrenRequest, ListInvocationChildrenResponse,
    ListOperationsRequest, ListOperationsResponse, ListPlatformQueuesResponse,
    ListQueuedOperationsRequest, ListQueuedOperationsResponse, ListWorkersRequest,
    ListWorkersResponse, PaginationInfo, PlatformQueueState, SizeClassQueueName,
    SizeClassQueueState, TerminateWorkersRequest, WorkerState,
};
use corral_proto::protobuf::Empty;
use corral_proto::reapi::execution_stage::Value as ExecutionStage;
use corral_proto::reapi::ExecuteResponse;
use corral_proto::time::timestamp;
use corral_storage::status::excerpt;
use tonic::{Request, Response, Status};

use crate::access;
use crate::assignment::{Assignments, WorkerId};
use crate::drain::DrainQueue;
use crate::operation::{Operation, Operations};
use crate::queue::PlatformKey;
use crate::queue_state::{self, InvocationKey, Placed, QueueName, QueueState, Stage, View};
use crate::timing::{wall_clock, Timing};

/// The largest page a list call returns, whatever page_size asks, so one
/// call cannot copy a whole busy farm's state; pagination_info says
/// where to go on.
const MAX_PAGE: u32 = 1000;

/// How often TerminateWorkers looks whether the drained workers are idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

pub struct BuildQueueStateService {
    assignments: Arc<Assignments>,
    operations: Arc<Mutex<Operations>>,
    timing: Timing,
    authorizer: Authorizer,
}

impl BuildQueueStateService {
    pub fn new(
        assignments: Arc<Assignments>,
        operations: Arc<Mutex<Operations>>,
        timing: Timing,
        authorizer: Authorizer,
    ) -> Self {
        Self {
            assignments,
            operations,
            timing,
            authorizer,
        }
    }

    /// The state now, as `caller` may see it.
    fn view(&self, caller: &Caller) -> View {
        // Workers first: an operation handed out in between shows queued,
        // never as executing on no worker.
        let workers = self.assignments.workers_view();
        let (operations, removals) = {
            let operations = self
                .operations
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let list = operations.list();
            let removals: HashMap<String, tokio::time::Instant> = list
                .iter()
                .filter_map(|op| {
                    operations
                        .removal_at(
                            op.name(),
                            self.timing.keep_completed,
                            self.timing.unwatched_grace,
                        )
                        .map(|at| (op.name().to_owned(), at))
                })
                .collect();
            (list, removals)
        };
        let authorizer = self.authorizer.clone();
        let caller = caller.clone();
        View::new(
            workers,
            &operations,
            removals,
            self.timing.platform_grace,
            move |instance| may_list(&authorizer, &caller, instance),
        )
    }

    fn find(&self, name: &str) -> Result<Arc<Operation>, Status> {
        self.operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .ok_or_else(|| Status::not_found(format!("no operation {}", excerpt(name))))
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

/// Whether `caller` may list the operations of `instance`.
fn may_list(authorizer: &Authorizer, caller: &Caller, instance: &str) -> bool {
    authorizer.allows(caller, Permission::OperationsAll, instance)
        || authorizer.allows(caller, Permission::Admin, instance)
}

/// The platform queue a request names (size classes are not told apart:
/// every queue has class 0).
fn queue_name(name: Option<&SizeClassQueueName>) -> Result<QueueName, Status> {
    let platform_queue = name
        .and_then(|n| n.platform_queue_name.as_ref())
        .ok_or_else(|| Status::invalid_argument("no size class queue name"))?;
    Ok((
        platform_queue.instance_name_prefix.clone(),
        PlatformKey::of(platform_queue.platform.clone()),
    ))
}

fn no_queue((prefix, platform): &QueueName) -> Status {
    Status::not_found(format!(
        "no size class queue of platform {platform} for instance name prefix {:?}",
        excerpt(prefix)
    ))
}

/// The queue and invocation path an invocation name names, in `view`.
fn invocation<'a>(
    view: &'a View,
    name: Option<&InvocationName>,
) -> Result<(QueueName, &'a QueueState, Vec<InvocationKey>), Status> {
    let name = name.ok_or_else(|| Status::invalid_argument("no invocation name"))?;
    let queue = queue_name(name.size_class_queue_name.as_ref())?;
    let state = view.queues.get(&queue).ok_or_else(|| no_queue(&queue))?;
    let mut path = Vec::with_capacity(name.ids.len());
    for (level, id) in name.ids.iter().enumerate() {
        let key = InvocationKey::of(id)
            .filter(|k| {
                matches!(
                    (level, k),
                    (0, InvocationKey::Instance(_)) | (1, InvocationKey::Tool(_))
                )
            })
            .ok_or_else(|| {
                Status::not_found(format!(
                    "invocation id {level} ({}) is not one this scheduler gives",
                    excerpt(&id.type_url)
                ))
            })?;
        path.push(key);
    }
    if !path.is_empty() && View::under(state, &path).is_empty() {
        return Err(Status::not_found(format!(
            "no invocation {} with operations queued or executing",
            excerpt(&queue_state::describe(&path))
        )));
    }
    Ok((queue, state, path))
}

/// The page of `total` entries after the first `start` entries.
fn page(start: usize, total: usize, page_size: u32) -> (std::ops::Range<usize>, PaginationInfo) {
    let size = page_size.min(MAX_PAGE) as usize;
    let end = total.min(start.saturating_add(size));
    (
        start..end,
        PaginationInfo {
            start_index: start as u32,
            total_entries: total as u32,
        },
    )
}

/// Buildbarn's state of a worker; what it runs only if `view`'s caller
/// may list it.
fn worker_state(view: &View, worker: &crate::assignment::WorkerView) -> WorkerState {
    let (current_operation, timeout) = match &worker.running {
        Some((operation, gone_at)) => (
            view.visible(operation.instance_name())
                .then(|| view.operation_state(operation)),
            Some(timestamp(wall_clock(*gone_at))),
        ),
        None => (None, None),
    };
    WorkerState {
        id: worker.id.clone().into_iter().collect(),
        timeout,
        current_operation,
        drained: worker.drained,
    }
}

#[tonic::async_trait]
impl BuildQueueState for BuildQueueStateService {
    #[tracing::instrument(skip_all, fields(operation = %excerpt(&request.get_ref().operation_name)))]
    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<GetOperationResponse>, Status> {
        let caller = Caller::of(&request);
        let operation = self.find(&request.get_ref().operation_name)?;
        if !may_list(&self.authorizer, &caller, operation.instance_name()) {
            // Refused naming what would have let it through.
            self.authorizer.check(
                &caller,
                Permission::OperationsAll,
                operation.instance_name(),
            )?;
        }
        let view = self.view(&caller);
        Ok(Response::new(GetOperationResponse {
            operation: Some(view.operation_state(&operation)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let filter_key = match &req.filter_invocation_id {
            Some(any) => Some(InvocationKey::of(any).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "filter_invocation_id: {} is not an invocation id this scheduler gives",
                    excerpt(&any.type_url)
                ))
            })?),
            None => None,
        };
        let filter_stage = ExecutionStage::try_from(req.filter_stage)
            .map_err(|_| Status::invalid_argument("filter_stage: not an ExecutionStage"))?;
        let view = self.view(&caller);
        let all = self
            .operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list();
        // Sorted by name (Operations::list): the page after start_after
        // starts where names pass it, whatever came or went since.
        let listed: Vec<&Arc<Operation>> = all
            .iter()
            .filter(|op| view.visible(op.instance_name()))
            .filter(|op| {
                filter_key
                    .as_ref()
                    .is_none_or(|key| queue_state::invocation_path(op).contains(key))
            })
            .filter(|op| {
                let stage = match view.stage(op) {
                    Stage::Queued => ExecutionStage::Queued,
                    Stage::Executing => ExecutionStage::Executing,
                    Stage::Completed(_) => ExecutionStage::Completed,
                };
                filter_stage == ExecutionStage::Unknown || filter_stage == stage
            })
            .collect();
        let start = match &req.start_after {
            Some(after) => listed.partition_point(|op| op.name() <= after.operation_name.as_str()),
            None => 0,
        };
        let (range, pagination_info) = page(start, listed.len(), req.page_size);
        Ok(Response::new(ListOperationsResponse {
            operations: listed[range]
                .iter()
                .map(|op| view.operation_state(op))
                .collect(),
            pagination_info: Some(pagination_info),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn kill_operations(
        &self,
        request: Request<KillOperationsRequest>,
    ) -> Result<Response<Empty>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let status = req
            .status
            .filter(|s| s.code != tonic::Code::Ok as i32)
            .ok_or_else(|| {
                Status::invalid_argument(
                    "status: the clients must get an error (a code other than OK)",
                )
            })?;
        let response = ExecuteResponse {
            status: Some(status),
            ..Default::default()
        };
        use kill_operations_request::filter::Type;
        match req.filter.and_then(|f| f.r#type) {
            Some(Type::OperationName(name)) => {
                let operation = self.find(&name)?;
                if !self
                    .authorizer
                    .allows(&caller, Permission::Admin, operation.instance_name())
                {
                    access::check_cancel(&self.authorizer, &caller, &operation)?;
                }
                // Killing an operation that has ended changes nothing,
                // as cancelling one does not.
                if self.assignments.kill(&operation, response) {
                    tracing::info!(operation = %operation.name(), "operation killed");
                }
            }
            Some(Type::SizeClassQueueWithoutWorkers(queue)) => {
                let name = queue_name(Some(&queue))?;
                access::check_worker_prefix(&self.authorizer, &caller, Permission::Admin, &name.0)?;
                // Admin over the prefix may list every name under it: the
                // view holds all the operations concerned.
                let view = self.view(&caller);
                if let Some(served) = view.queues.get(&name).filter(|q| !q.workers.is_empty()) {
                    return Err(Status::failed_precondition(format!(
                        "the size class queue has {} workers; its operations are killed only without any",
                        served.workers.len()
                    )));
                }
                // Without workers the queue's operations sit in queues of
                // their own instance names (those under the prefix), so an
                // autoscaler's kill reaches them whether the queue's
                // workers never came or have gone.
                let unserved: Vec<&QueueState> = view
                    .queues
                    .iter()
                    .filter(|((prefix, platform), q)| {
                        *platform == name.1
                            && q.workers.is_empty()
                            && crate::assignment::instance_matches(&name.0, prefix)
                    })
                    .map(|(_, q)| q)
                    .collect();
                if unserved.is_empty() {
                    return Err(no_queue(&name));
                }
                let mut killed = 0;
                for placed in unserved
                    .iter()
                    .flat_map(|q| &q.operations)
                    .filter(|p| !p.executing)
                {
                    if self.assignments.kill(&placed.operation, response.clone()) {
                        killed += 1;
                    }
                }
                tracing::info!(
                    killed,
                    "queued operations of a queue without workers killed"
                );
            }
            None => {
                return Err(Status::invalid_argument(
                    "filter: name an operation or a size class queue without workers",
                ))
            }
        }
        Ok(Response::new(Empty {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_platform_queues(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<ListPlatformQueuesResponse>, Status> {
        let view = self.view(&Caller::of(&request));
        let platform_queues = view
            .queues
            .iter()
            .map(|(name, queue)| {
                let operations = View::under(queue, &[]);
                PlatformQueueState {
                    name: Some(queue_state::platform_queue_name(name)),
                    size_class_queues: vec![SizeClassQueueState {
                        size_class: 0,
                        timeout: queue.timeout.map(timestamp),
                        workers_count: queue.workers.len() as u32,
                        drains_count: queue.drains as u32,
                        root_invocation: Some(queue_state::invocation_state(queue, &operations, 0)),
                    }],
                }
            })
            .collect();
        Ok(Response::new(ListPlatformQueuesResponse {
            platform_queues,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_invocation_children(
        &self,
        request: Request<ListInvocationChildrenRequest>,
    ) -> Result<Response<ListInvocationChildrenResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        use list_invocation_children_request::Filter;
        let filter = Filter::try_from(req.filter)
            .map_err(|_| Status::invalid_argument("filter: not ALL, ACTIVE or QUEUED"))?;
        let view = self.view(&caller);
        let (_, queue, path) = invocation(&view, req.invocation_name.as_ref())?;
        let operations = View::under(queue, &path);
        let depth = path.len();
        let mut children: Vec<(&InvocationKey, Vec<&Placed>)> =
            queue_state::children(&operations, depth)
                .into_iter()
                .collect();
        if filter == Filter::Queued {
            // Those with queued operations, the one whose first queued
            // operation runs first (priority, then age) first.
            children.retain(|(_, ops)| ops.iter().any(|p| !p.executing));
            children.sort_by_cached_key(|(_, ops)| {
                ops.iter()
                    .filter(|p| !p.executing)
                    .map(|p| queue_state::queued_order(&p.operation))
                    .min()
            });
        }
        // ALL and ACTIVE are the same here: Corral keeps no idle workers
        // per invocation. Both come sorted by id (a BTreeMap's order).
        let children = children
            .into_iter()
            .map(|(key, ops)| InvocationChildState {
                id: Some(key.to_any()),
                state: Some(queue_state::invocation_state(queue, &ops, depth + 1)),
            })
            .collect();
        Ok(Response::new(ListInvocationChildrenResponse { children }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_queued_operations(
        &self,
        request: Request<ListQueuedOperationsRequest>,
    ) -> Result<Response<ListQueuedOperationsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let view = self.view(&caller);
        let (_, queue, path) = invocation(&view, req.invocation_name.as_ref())?;
        // An invocation's own operations: only the innermost level has any.
        let mut queued: Vec<&Placed> = View::under(queue, &path)
            .into_iter()
            .filter(|p| !p.executing && p.path.len() == path.len())
            .collect();
        queued.sort_by_cached_key(|p| queue_state::queued_order(&p.operation));
        let start = match &req.start_after {
            Some(after) => {
                let at = after
                    .queued_timestamp
                    .as_ref()
                    .map(|t| {
                        std::time::UNIX_EPOCH
                            + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
                    })
                    .unwrap_or(std::time::UNIX_EPOCH);
                queued.partition_point(|p| {
                    let (priority, queued_at, _) = queue_state::queued_order(&p.operation);
                    (priority, queued_at) <= (after.priority, at)
                })
            }
            None => 0,
        };
        let (range, pagination_info) = page(start, queued.len(), req.page_size);
        Ok(Response::new(ListQueuedOperationsResponse {
            queued_operations: queued[range]
                .iter()
                .map(|p| view.operation_state(&p.operation))
                .collect(),
            pagination_info: Some(pagination_info),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_workers(
        &self,
        request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let view = self.view(&caller);
        use list_workers_request::filter::Type;
        let workers: Vec<&crate::assignment::WorkerView> = match req.filter.and_then(|f| f.r#type) {
            Some(Type::All(name)) => {
                let name = queue_name(Some(&name))?;
                let queue = view.queues.get(&name).ok_or_else(|| no_queue(&name))?;
                queue.workers.values().collect()
            }
            Some(Type::Executing(name)) => {
                let (_, queue, path) = invocation(&view, Some(&name))?;
                // Only operations the caller may list are in the view:
                // a worker running another tenant's is not listed here.
                let executing: Vec<&Placed> = View::under(queue, &path)
                    .into_iter()
                    .filter(|p| p.executing)
                    .collect();
                // A worker of a shorter prefix may run it: look at all.
                let mut found: Vec<&crate::assignment::WorkerView> = view
                    .queues
                    .values()
                    .flat_map(|q| q.workers.values())
                    .filter(|w| {
                        w.running.as_ref().is_some_and(|(op, _)| {
                            executing.iter().any(|p| Arc::ptr_eq(&p.operation, op))
                        })
                    })
                    .collect();
                found.sort_by(|a, b| a.id.cmp(&b.id));
                found
            }
            Some(Type::IdleSynchronizing(name)) => {
                let (_, queue, path) = invocation(&view, Some(&name))?;
                // Idle workers belong to the root invocation only.
                if path.is_empty() {
                    queue
                        .workers
                        .values()
                        .filter(|w| w.running.is_none())
                        .collect()
                } else {
                    Vec::new()
                }
            }
            None => {
                return Err(Status::invalid_argument(
                    "filter: name a size class queue or an invocation",
                ))
            }
        };
        // The queue's workers come sorted by id (a BTreeMap's order).
        let start = match &req.start_after {
            Some(after) => {
                let after: WorkerId = after.worker_id.clone().into_iter().collect();
                workers.partition_point(|w| w.id <= after)
            }
            None => 0,
        };
        let (range, pagination_info) = page(start, workers.len(), req.page_size);
        Ok(Response::new(ListWorkersResponse {
            workers: workers[range]
                .iter()
                .map(|w| worker_state(&view, w))
                .collect(),
            pagination_info: Some(pagination_info),
        }))
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_where_asked_and_stop_at_the_end_or_the_cap() {
        let (range, info) = page(0, 5, 2);
        assert_eq!(range, 0..2);
        assert_eq!((info.start_index, info.total_entries), (0, 5));
        assert_eq!(page(4, 5, 2).0, 4..5);
        assert_eq!(page(5, 5, 2).0, 5..5);
        assert_eq!(page(0, 5, 0).0, 0..0, "page_size 0: none, as bb_scheduler");
        assert_eq!(page(0, 5000, u32::MAX).0, 0..MAX_PAGE as usize);
    }
}
