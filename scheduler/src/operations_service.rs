//! `google.longrunning.Operations` over the scheduler's operations:
//! GetOperation, ListOperations, CancelOperation and WaitOperation, the
//! way REAPI clients and operators' tools (such as `grpcurl`) reach an
//! operation by the name Execute returned.
//!
//! Each call follows [`crate::access`]: Get, Wait and Cancel of an
//! operation the caller may not reach are refused with PERMISSION_DENIED
//! naming the permission and the instance name; List leaves such
//! operations out without a word.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use corral_auth::{Authorizer, Caller};
use corral_proto::longrunning::operations_server::Operations as OperationsApi;
use corral_proto::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation as ProtoOperation, WaitOperationRequest,
};
use corral_proto::protobuf::Empty;
use corral_storage::status::excerpt;
use tonic::{Request, Response, Status};

use crate::access;
use crate::assignment::Assignments;
use crate::operation::{Operation, Operations};

/// Page size of ListOperations when the client asks for none.
const DEFAULT_PAGE: usize = 100;
/// Largest page, so one call cannot copy a whole busy farm's state.
const MAX_PAGE: usize = 1000;
/// How long WaitOperation waits when the client sets no timeout. Under a
/// minute, like the workers' long poll, for the same proxies.
const DEFAULT_WAIT: Duration = Duration::from_secs(50);

/// The Operations service.
pub struct OperationsService {
    operations: Arc<Mutex<Operations>>,
    assignments: Arc<Assignments>,
    authorizer: Authorizer,
}

impl OperationsService {
    pub fn new(
        operations: Arc<Mutex<Operations>>,
        assignments: Arc<Assignments>,
        authorizer: Authorizer,
    ) -> Self {
        Self {
            operations,
            assignments,
            authorizer,
        }
    }

    fn find(&self, name: &str) -> Result<Arc<Operation>, Status> {
        self.operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            // A name of any size is quoted short: the message travels in
            // a header clients cap (storage::status::ECHO_MAX_BYTES).
            .ok_or_else(|| Status::not_found(format!("no operation {}", excerpt(name))))
    }
}

fn now(operation: &Operation) -> ProtoOperation {
    operation.to_proto(&operation.current())
}

#[tonic::async_trait]
impl OperationsApi for OperationsService {
    #[tracing::instrument(skip_all)]
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        if !req.filter.is_empty() {
            return Err(Status::invalid_argument(
                "filter is not supported; leave it empty",
            ));
        }
        let page = match usize::try_from(req.page_size) {
            Ok(0) => DEFAULT_PAGE,
            Ok(n) => n.min(MAX_PAGE),
            Err(_) => return Err(Status::invalid_argument("page_size must not be negative")),
        };
        let all = self
            .operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list();
        let all: Vec<_> = all
            .into_iter()
            .filter(|op| access::may_watch(&self.authorizer, &caller, op))
            .collect();
        // The token is the last name of the previous page: names sort, so
        // the next page starts after it even if operations came or went.
        let rest = all
            .iter()
            .filter(|op| req.page_token.is_empty() || op.name() > req.page_token.as_str());
        let operations: Vec<ProtoOperation> = rest.take(page).map(|op| now(op)).collect();
        let next_page_token = match operations.last() {
            Some(last) if all.last().is_some_and(|op| op.name() != last.name) => last.name.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token,
            // Every operation lives in this one process: none unreachable.
            unreachable: Vec::new(),
        }))
    }

    #[tracing::instrument(skip_all, fields(operation = %request.get_ref().name))]
    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<ProtoOperation>, Status> {
        let operation = self.find(&request.get_ref().name)?;
        access::check_watch(&self.authorizer, &Caller::of(&request), &operation)?;
        Ok(Response::new(now(&operation)))
    }

    async fn delete_operation(
        &self,
        _request: Request<DeleteOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        // Operations are forgotten on their own a minute after they end;
        // deleting one that others may be waiting on would break them.
        Err(Status::unimplemented(
            "operations are removed automatically after they complete",
        ))
    }

    #[tracing::instrument(skip_all, fields(operation = %request.get_ref().name))]
    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        let operation = self.find(&request.get_ref().name)?;
        access::check_cancel(&self.authorizer, &Caller::of(&request), &operation)?;
        // Cancelling a finished operation is not an error (google.longrunning).
        self.assignments
            .cancel(&operation, "cancelled by CancelOperation");
        Ok(Response::new(Empty {}))
    }

    #[tracing::instrument(skip_all, fields(operation = %request.get_ref().name))]
    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<ProtoOperation>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let operation = self.find(&req.name)?;
        access::check_watch(&self.authorizer, &caller, &operation)?;
        let wait = match req.timeout {
            Some(t) if t.seconds > 0 || t.nanos > 0 => corral_proto::time::std_duration(&t),
            _ => DEFAULT_WAIT,
        };
        let mut watch = operation.watch();
        // Not done by the deadline: the operation as it is, done = false.
        let _ = tokio::time::timeout(
            wait,
            watch.wait_for(|p| matches!(p, crate::operation::Progress::Completed(_))),
        )
        .await;
        Ok(Response::new(now(&operation)))
    }
}

#[cfg(test)]
mod tests {
    use corral_proto::reapi::{Digest, ExecuteResponse};

    use super::*;
    use crate::timing::Timing;

    fn service(names: &[&str]) -> (OperationsService, Vec<Arc<Operation>>) {
        let mut ops = Operations::default();
        let mut made = Vec::new();
        for name in names {
            let op = Arc::new(Operation::new(
                (*name).to_owned(),
                String::new(),
                Digest::default(),
                0,
            ));
            ops.insert(Arc::clone(&op));
            made.push(op);
        }
        let timing = Timing::from_config(&crate::Config::default());
        let service = OperationsService::new(
            Arc::new(Mutex::new(ops)),
            Arc::new(Assignments::new(&timing, 3)),
            Authorizer::open(),
        );
        (service, made)
    }

    #[tokio::test]
    async fn operations_are_listed_in_pages_by_name() {
        let (svc, _ops) = service(&["operations/c", "operations/a", "operations/b"]);
        let list = |token: &str| ListOperationsRequest {
            page_size: 2,
            page_token: token.to_owned(),
            ..Default::default()
        };
        let first = svc
            .list_operations(Request::new(list("")))
            .await
            .unwrap()
            .into_inner();
        let names: Vec<_> = first.operations.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["operations/a", "operations/b"]);
        assert_eq!(first.next_page_token, "operations/b");
        let second = svc
            .list_operations(Request::new(list(&first.next_page_token)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.operations.len(), 1);
        assert_eq!(second.next_page_token, "");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_operation_returns_at_completion_or_deadline() {
        let (svc, ops) = service(&["operations/w"]);
        let wait = |seconds| {
            Request::new(WaitOperationRequest {
                name: "operations/w".into(),
                timeout: Some(corral_proto::protobuf::Duration { seconds, nanos: 0 }),
            })
        };
        let early = svc.wait_operation(wait(5)).await.unwrap().into_inner();
        assert!(!early.done);
        let completer = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            ops[0].complete(ExecuteResponse::default());
        };
        let (done, ()) = tokio::join!(svc.wait_operation(wait(30)), completer);
        assert!(done.unwrap().into_inner().done);
    }

    #[tokio::test]
    async fn cancel_completes_the_operation_and_unknown_names_are_not_found() {
        let (svc, ops) = service(&["operations/x"]);
        svc.cancel_operation(Request::new(CancelOperationRequest {
            name: "operations/x".into(),
        }))
        .await
        .unwrap();
        let got = svc
            .get_operation(Request::new(GetOperationRequest {
                name: "operations/x".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(got.done);
        assert!(ops[0].is_completed());
        let err = svc
            .get_operation(Request::new(GetOperationRequest {
                name: "operations/nope".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    /// Like storage's `a_huge_resource_name_is_refused_as_invalid`: quoted
    /// whole, a 100 KB name made the NOT_FOUND an HTTP/2 error.
    #[tokio::test]
    async fn a_huge_unknown_name_is_not_found_in_a_short_message() {
        let (svc, _ops) = service(&[]);
        let err = svc
            .get_operation(Request::new(GetOperationRequest {
                name: "x".repeat(100_000),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(
            err.message().ends_with("… (100000 bytes)"),
            "{}",
            &err.message()[..300]
        );
        assert!(err.message().len() < 1024);
    }
}
