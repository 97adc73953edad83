//! REAPI `Execution`: Execute checks an action, answers from the Action
//! Cache when it can, merges it with an identical one in flight or queues
//! it, and streams the operation until it completes; WaitExecution joins
//! an operation by name.
//!
//! Every call asks the [`Authorizer`]: Execute needs `execute` on its
//! instance name, and the grant of any sandbox policy the action asks for
//! (`corral-policy`), before anything is read or queued. A caller without
//! `ac-read` is never answered from the Action Cache: its action runs (or
//! joins an identical one in flight), so it learns nothing a run would not
//! tell it. WaitExecution follows [`crate::access`].

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use corral_auth::{Authorizer, Caller, Permission};
use corral_proto::longrunning::Operation as ProtoOperation;
use corral_proto::precondition;
use corral_proto::reapi::execution_server::Execution;
use corral_proto::reapi::{
    Action, Command, Digest, ExecuteRequest, ExecuteResponse, RequestMetadata, WaitExecutionRequest,
};
use futures_util::Stream;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::access;
use crate::action::{check_command, platform, policies, timeout};
use crate::assignment::{Assignments, Queued};
use crate::capabilities_service::PRIORITIES;
use crate::operation::{DedupKey, Description, Inline, Operation, Operations, Progress};
use crate::operation_ids::OperationIds;
use crate::size_class::{self, SizeClasses};
use crate::storage_client::StorageClient;
use crate::task::AbortOnDrop;

/// The gRPC header carrying `RequestMetadata` (REAPI).
const REQUEST_METADATA_HEADER: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

type OperationStream = Pin<Box<dyn Stream<Item = Result<ProtoOperation, Status>> + Send>>;

/// The Execution service.
pub struct ExecutionService {
    storage: StorageClient,
    assignments: Arc<Assignments>,
    operations: Arc<Mutex<Operations>>,
    ids: Arc<dyn OperationIds>,
    default_timeout: Duration,
    max_timeout: Duration,
    authorizer: Authorizer,
    /// Where each action starts; `None`: size classes are off.
    size_classes: Option<Arc<SizeClasses>>,
    /// Keeps the background sweep running while this service is served.
    _sweeper: Option<Arc<AbortOnDrop>>,
}

impl ExecutionService {
    pub fn new(
        storage: StorageClient,
        assignments: Arc<Assignments>,
        operations: Arc<Mutex<Operations>>,
        ids: Arc<dyn OperationIds>,
        default_timeout: Duration,
        max_timeout: Duration,
        authorizer: Authorizer,
    ) -> Self {
        Self {
            storage,
            assignments,
            operations,
            ids,
            default_timeout,
            max_timeout,
            authorizer,
            size_classes: None,
            _sweeper: None,
        }
    }

    /// Starts each action on the size class its history points to.
    pub fn with_size_classes(mut self, size_classes: Arc<SizeClasses>) -> Self {
        self.size_classes = Some(size_classes);
        self
    }

    /// Ties the background sweep's life to this service's.
    pub fn with_sweeper(mut self, sweeper: Arc<AbortOnDrop>) -> Self {
        self._sweeper = Some(sweeper);
        self
    }

    fn next_name(&self) -> Result<String, Status> {
        self.ids
            .next_name()
            .map_err(|e| match std::error::Error::source(&e) {
                Some(cause) => Status::unavailable(format!("{e}: {cause}")),
                None => Status::unavailable(e.to_string()),
            })
    }

    fn operations(&self) -> std::sync::MutexGuard<'_, Operations> {
        self.operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A digest the client sent: present, lowercase hex of 64 digits (SHA-256
/// and BLAKE3 both), non-negative size.
fn check_digest(field: &str, digest: Option<&Digest>) -> Result<Digest, Status> {
    let digest = digest.ok_or_else(|| Status::invalid_argument(format!("{field} is missing")))?;
    let hex_ok = digest.hash.len() == 64
        && digest
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok || digest.size_bytes < 0 {
        return Err(Status::invalid_argument(format!(
            "{field} {}/{} is not a valid digest",
            digest.hash, digest.size_bytes
        )));
    }
    Ok(digest.clone())
}

fn find<'a>(found: &'a [(Digest, Vec<u8>)], digest: &Digest) -> Option<&'a [u8]> {
    found
        .iter()
        .find(|(d, _)| d == digest)
        .map(|(_, data)| data.as_slice())
}

/// Where a client's stream of one operation is.
enum Follow {
    First,
    Next,
    Done,
}

/// Streams `operation` from its current stage to its completion
/// (inclusive), then ends. The result carries inline only the outputs in
/// `inline`.
pub fn follow(operation: Arc<Operation>, inline: Inline) -> OperationStream {
    let receiver = operation.watch();
    let stream = futures_util::stream::unfold(
        (operation, receiver, Follow::First),
        move |(operation, mut receiver, at)| async move {
            match at {
                Follow::Done => return None,
                Follow::First => {}
                // The sender lives in the operation we hold: changed()
                // fails only if it is gone, which ends the stream.
                Follow::Next => receiver.changed().await.ok()?,
            }
            let mut progress = receiver.borrow_and_update().clone();
            let next = match &mut progress {
                Progress::Completed(response) => {
                    if let Some(result) = &mut response.result {
                        inline.keep_only_asked(result);
                    }
                    Follow::Done
                }
                _ => Follow::Next,
            };
            let item = Ok(operation.to_proto(&progress));
            Some((item, (operation, receiver, next)))
        },
    );
    Box::pin(stream)
}

/// The client's `RequestMetadata` (empty when it sent none, or one that
/// does not decode): its tool invocation, for fairness, and its target,
/// for BuildQueueState.
fn request_metadata<T>(request: &Request<T>) -> RequestMetadata {
    request
        .metadata()
        .get_bin(REQUEST_METADATA_HEADER)
        .and_then(|v| v.to_bytes().ok())
        .and_then(|bytes| RequestMetadata::decode(bytes.as_ref()).ok())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    // tool_invocation_id and mnemonic: from the client's RequestMetadata,
    // attributes of the action's trace (docs/decisions/0017-tracing.md).
    #[tracing::instrument(skip_all, fields(action = tracing::field::Empty, instance = %request.get_ref().instance_name, tool_invocation_id = tracing::field::Empty, mnemonic = tracing::field::Empty))]
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let caller = Caller::of(&request);
        self.authorizer.check(
            &caller,
            Permission::Execute,
            &request.get_ref().instance_name,
        )?;
        let may_read_cache = self.authorizer.allows(
            &caller,
            Permission::AcRead,
            &request.get_ref().instance_name,
        );
        let metadata = request_metadata(&request);
        let span = tracing::Span::current();
        if !metadata.tool_invocation_id.is_empty() {
            span.record("tool_invocation_id", metadata.tool_invocation_id.as_str());
        }
        if !metadata.action_mnemonic.is_empty() {
            span.record("mnemonic", metadata.action_mnemonic.as_str());
        }
        let req = request.into_inner();
        let inline = Inline::of(&req);
        let instance = req.instance_name.clone();
        let function = req.digest_function;
        corral_storage::DigestFunction::from_proto(function)
            .map_err(|e| Status::invalid_argument(format!("digest_function: {e}")))?;
        check_execution_digest_function(function)?;
        let action_digest = check_digest("action_digest", req.action_digest.as_ref())?;
        tracing::Span::current().record(
            "action",
            format!("{}/{}", action_digest.hash, action_digest.size_bytes),
        );

        // Independent reads go to storage together: two round trips before
        // queueing, not four.
        let lookup = async {
            if req.skip_cache_lookup || !may_read_cache {
                Ok(None)
            } else {
                self.storage
                    .cached_result(&instance, function, &action_digest, inline)
                    .await
            }
        };
        let (fetched, cached) = tokio::try_join!(
            self.storage
                .fetch(&instance, function, std::slice::from_ref(&action_digest)),
            lookup
        )?;
        if !fetched.missing.is_empty() {
            return Err(precondition::missing_blobs(
                "the Action is not in the CAS",
                &fetched.missing,
            ));
        }
        let mut action = find(&fetched.found, &action_digest)
            .ok_or_else(|| Status::internal("storage returned another blob than asked"))
            .and_then(|bytes| {
                Action::decode(bytes).map_err(|e| {
                    Status::invalid_argument(format!("action_digest is not an Action: {e}"))
                })
            })?;
        let command_digest = check_digest("action.command_digest", action.command_digest.as_ref())?;
        let input_root = check_digest(
            "action.input_root_digest",
            action.input_root_digest.as_ref(),
        )?;
        let (fetched, missing_root) = tokio::try_join!(
            self.storage
                .fetch(&instance, function, std::slice::from_ref(&command_digest)),
            self.storage
                .find_missing(&instance, function, std::slice::from_ref(&input_root))
        )?;
        let mut missing = fetched.missing;
        missing.extend(missing_root);
        if !missing.is_empty() {
            return Err(precondition::missing_blobs(
                "blobs the action needs are not in the CAS",
                &missing,
            ));
        }
        let command = find(&fetched.found, &command_digest)
            .ok_or_else(|| Status::internal("storage returned another blob than asked"))
            .and_then(|bytes| {
                Command::decode(bytes).map_err(|e| {
                    Status::invalid_argument(format!("action.command_digest is not a Command: {e}"))
                })
            })?;
        check_command(&command).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Refused before a cached result is returned too: the policy is
        // part of the action, which this caller may not ask for.
        for policy in policies(&action, &command) {
            self.authorizer
                .check_sandbox_policy(&caller, &instance, policy)?;
        }
        let platform = platform(&action, &command);
        self.assignments
            .check_platform(&platform)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let run_for = timeout(
            action.timeout.as_ref(),
            self.default_timeout,
            self.max_timeout,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        action.timeout = Some(corral_proto::time::duration(run_for));
        let priority = req.execution_policy.map_or(0, |p| {
            p.priority.clamp(*PRIORITIES.start(), *PRIORITIES.end())
        });
        let queued_at = SystemTime::now();
        let description = Description {
            platform: platform.clone(),
            priority,
            tool_invocation_id: metadata.tool_invocation_id,
            target_id: metadata.target_id,
            queued_at,
        };

        // A do_not_cache action's result is never cached by us; an entry
        // another client wrote for it is not its result either.
        if let Some(result) = cached.filter(|_| !action.do_not_cache) {
            let operation = Arc::new(Operation::new(
                self.next_name()?,
                instance.clone(),
                action_digest,
                function,
            ));
            operation.add_owner(caller.name());
            operation.describe(description);
            operation.complete(ExecuteResponse {
                result: Some(result),
                cached_result: true,
                ..Default::default()
            });
            self.assignments.metrics().result(tonic::Code::Ok, true);
            // Reachable by name too: a client whose stream broke
            // reconnects with WaitExecution.
            self.operations().insert(Arc::clone(&operation));
            return Ok(Response::new(follow(operation, inline)));
        }

        // Read before the operation exists, so that no other client
        // joins one that is not queued yet.
        let size_class = match &self.size_classes {
            Some(sizes) => {
                let key = size_class::key(sizes.config(), &instance, &action, &command, &platform);
                let offered = self.assignments.offered_size_classes(&instance, &platform);
                sizes.choose(key, &offered).await
            }
            None => size_class::Choice::default(),
        };

        let key =
            (!action.do_not_cache).then(|| DedupKey::new(&instance, function, &action_digest));
        // Drawn before the lock, and used only if no identical action is
        // in flight.
        let name = self.next_name()?;
        let (operation, new) = self.operations().join_or_create(key, || {
            Operation::new(name, instance.clone(), action_digest.clone(), function)
        });
        // Each client that joins owns it too: it may watch it as its own.
        operation.add_owner(caller.name());
        operation.ask_inline(inline);
        if new {
            let invocation = description.tool_invocation_id.clone();
            operation.describe(description);
            operation.trace_queued();
            let queued = self.assignments.enqueue_within_cap(
                Queued {
                    operation: Arc::clone(&operation),
                    action_digest,
                    action,
                    digest_function: function,
                    instance_name: instance,
                    platform,
                    queued_at,
                    waiting_since: tokio::time::Instant::now(),
                    retries: 0,
                    size_class,
                },
                priority,
                &invocation,
            );
            if let Err(full) = queued {
                // Ended, so that no later Execute joins an operation that
                // will never run; one that joined meanwhile sees this.
                let refusal = Status::resource_exhausted(full.to_string());
                operation.complete(ExecuteResponse {
                    status: Some(corral_proto::rpc::Status {
                        code: refusal.code() as i32,
                        message: refusal.message().to_owned(),
                        details: Vec::new(),
                    }),
                    ..Default::default()
                });
                return Err(refusal);
            }
        }
        Ok(Response::new(follow(operation, inline)))
    }

    #[tracing::instrument(skip_all, fields(operation = %request.get_ref().name))]
    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let caller = Caller::of(&request);
        let name = request.into_inner().name;
        let operation = self.operations().get(&name).ok_or_else(|| {
            Status::not_found(format!(
                "no operation {}",
                corral_storage::status::excerpt(&name)
            ))
        })?;
        access::check_watch(&self.authorizer, &caller, &operation)?;
        // WaitExecution cannot ask; it resumes what Execute asked for.
        let inline = operation.inline_asked();
        Ok(Response::new(follow(operation, inline)))
    }
}

/// Refuses a digest function workers cannot execute with, before anything
/// is read or queued (unset means SHA-256, as REAPI says).
fn check_execution_digest_function(function: i32) -> Result<(), Status> {
    use crate::capabilities_service::EXECUTION_DIGEST_FUNCTIONS;
    use corral_proto::reapi::digest_function::Value;
    if function == Value::Unknown as i32
        || EXECUTION_DIGEST_FUNCTIONS
            .iter()
            .any(|f| *f as i32 == function)
    {
        return Ok(());
    }
    let name = Value::try_from(function)
        .map_or_else(|_| function.to_string(), |v| v.as_str_name().to_owned());
    Err(Status::invalid_argument(format!(
        "digest_function {name}: actions execute with SHA256 only (GetCapabilities' execution_capabilities)"
    )))
}
