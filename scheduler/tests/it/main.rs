//! The scheduler over gRPC, with real (in-memory) storage served on
//! 127.0.0.1:0 and fake workers driven by the test through the worker
//! protocol. Intervals are shortened with `Timing`, on real time: the
//! servers' sockets need the clock to run.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

mod authz;
mod build_queue_state;
mod crafted;
mod fairness;
mod size_classes;
mod tls;
mod web;

use std::collections::BTreeMap;
use std::time::Duration;

use corral_proto::longrunning::operations_client::OperationsClient;
use corral_proto::longrunning::{operation, CancelOperationRequest, Operation};
use corral_proto::precondition::missing_subjects;
use corral_proto::protobuf::Empty;
use corral_proto::reapi::action_cache_client::ActionCacheClient;
use corral_proto::reapi::capabilities_client::CapabilitiesClient;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::execution_client::ExecutionClient;
use corral_proto::reapi::{
    batch_update_blobs_request, execution_stage, platform, Action, ActionResult,
    BatchUpdateBlobsRequest, Command, Digest, ExecuteOperationMetadata, ExecuteRequest,
    ExecuteResponse, ExecutionPolicy, GetCapabilitiesRequest, Platform, UpdateActionResultRequest,
    WaitExecutionRequest,
};
use corral_proto::remoteworker::operation_queue_client::OperationQueueClient;
use corral_proto::remoteworker::{
    current_state, desired_state, CurrentState, SynchronizeRequest, SynchronizeResponse,
};
use corral_scheduler::{Scheduler, Timing};
use futures_util::StreamExt as _;
use prost::Message;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

fn digest_of(data: &[u8]) -> Digest {
    Digest {
        hash: hex::encode(Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// Short intervals, so that a lost worker or an unserved platform shows
/// within a test.
fn timing() -> Timing {
    Timing {
        sync_interval: Duration::from_millis(200),
        long_poll: Duration::from_millis(300),
        worker_timeout: Duration::from_millis(200),
        platform_grace: Duration::from_secs(30),
        unwatched_grace: Duration::from_secs(30),
        keep_completed: Duration::from_secs(30),
        sweep_every: Duration::from_millis(50),
    }
}

/// Storage (memory backend) and a scheduler, each on its own port.
struct Farm {
    scheduler: Channel,
    storage: Channel,
    /// Where the scheduler's `GET /metrics` is served.
    metrics: std::net::SocketAddr,
    _servers: tokio::task::JoinSet<()>,
}

async fn farm() -> Farm {
    farm_with(timing()).await
}

async fn farm_with(timing: Timing) -> Farm {
    farm_built(timing, None, |_| ()).await
}

/// A farm whose scheduler's config `configure` changes.
async fn farm_configured(configure: impl FnOnce(&mut corral_scheduler::Config)) -> Farm {
    farm_built(timing(), None, configure).await
}

/// A farm whose scheduler asks `authorizer`, with each call's caller
/// taken from its `x-test-sub` header (see `authz::as_test_caller`), in
/// place of the authentication layer.
async fn farm_with_authorizer(authorizer: corral_auth::Authorizer) -> Farm {
    farm_built(timing(), Some(authorizer), |_| ()).await
}

async fn farm_built(
    timing: Timing,
    authorizer: Option<corral_auth::Authorizer>,
    configure: impl FnOnce(&mut corral_scheduler::Config),
) -> Farm {
    let mut servers = tokio::task::JoinSet::new();
    let storage_url = start_storage(&mut servers, memory_storage()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = corral_scheduler::Config {
        storage: storage_url.clone(),
        max_retries: 1,
        ..corral_scheduler::Config::default()
    };
    configure(&mut cfg);
    let mut builder = Scheduler::builder(cfg).timing(timing);
    if let Some(authorizer) = &authorizer {
        builder = builder.authorizer(authorizer.clone());
    }
    let scheduler = builder.build().unwrap();
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = metrics_listener.local_addr().unwrap();
    servers.spawn(corral_metrics::serve(
        corral_metrics::Listener::plaintext(metrics_listener),
        scheduler.http_routes(),
        std::future::pending(),
    ));
    match authorizer {
        None => start_scheduler(&mut servers, listener, scheduler),
        Some(_) => {
            servers.spawn(async move {
                tonic::transport::Server::builder()
                    .layer(tonic::service::InterceptorLayer::new(authz::as_test_caller))
                    .add_routes(scheduler.routes())
                    .serve_with_incoming(corral_storage::no_delay(listener))
                    .await
                    .unwrap();
            });
        }
    };
    Farm::of(servers, &url, &storage_url, metrics)
}

/// Storage in memory, 64 MiB.
fn memory_storage() -> corral_storage::Config {
    corral_storage::Config {
        backend: corral_storage::config::Backend::Memory {
            max_size_bytes: 64 << 20,
        },
        ..corral_storage::Config::default()
    }
}

/// Serves storage with `cfg` on a free loopback port, among `servers`;
/// its URL (`https://` with `[tls]`).
async fn start_storage(
    servers: &mut tokio::task::JoinSet<()>,
    cfg: corral_storage::Config,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    servers.spawn(async move {
        corral_storage::run(cfg, listener, std::future::pending())
            .await
            .unwrap();
    });
    url
}

/// Serves `scheduler` on `listener` (and its `[metrics]` page, if its
/// config has one), among `servers`.
fn start_scheduler(
    servers: &mut tokio::task::JoinSet<()>,
    listener: TcpListener,
    scheduler: Scheduler,
) {
    servers.spawn(async move {
        scheduler
            .serve(listener, std::future::pending())
            .await
            .unwrap();
    });
}

/// A loopback address nothing listens on right now, for a `[metrics]`
/// `listen`.
async fn free_address() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Farm {
    /// The farm `servers` run: the scheduler at `scheduler_url`, storage
    /// at `storage_url` (both plain HTTP), the web UI at `metrics`.
    fn of(
        servers: tokio::task::JoinSet<()>,
        scheduler_url: &str,
        storage_url: &str,
        metrics: std::net::SocketAddr,
    ) -> Farm {
        let lazy = |url: &str| {
            Endpoint::from_shared(url.to_owned())
                .unwrap()
                .connect_lazy()
        };
        Farm {
            scheduler: lazy(scheduler_url),
            storage: lazy(storage_url),
            metrics,
            _servers: servers,
        }
    }

    async fn upload(&self, blobs: &[Vec<u8>]) {
        ContentAddressableStorageClient::new(self.storage.clone())
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: blobs
                    .iter()
                    .map(|b| batch_update_blobs_request::Request {
                        digest: Some(digest_of(b)),
                        data: b.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// An action running `args` on `platform`, uploaded with its command.
    async fn action(&self, args: &[&str], platform: &[(&str, &str)]) -> Digest {
        self.action_with(args, platform, false).await
    }

    /// [`action`](Self::action), with `do_not_cache` set as given.
    async fn action_with(
        &self,
        args: &[&str],
        platform: &[(&str, &str)],
        do_not_cache: bool,
    ) -> Digest {
        let command = Command {
            arguments: args.iter().map(|s| (*s).to_owned()).collect(),
            output_paths: vec!["out".into()],
            ..Default::default()
        }
        .encode_to_vec();
        let action = Action {
            command_digest: Some(digest_of(&command)),
            // The empty Directory: the empty blob, always present.
            input_root_digest: Some(digest_of(b"")),
            platform: Some(to_platform(platform)),
            do_not_cache,
            ..Default::default()
        }
        .encode_to_vec();
        self.upload(&[action.clone(), command]).await;
        digest_of(&action)
    }

    /// Writes an empty result for `digest` into the Action Cache.
    async fn cache_empty_result(&self, digest: &Digest) {
        self.cache_empty_result_in("", digest).await;
    }

    /// Writes an empty result for `digest` into `instance`'s Action Cache.
    async fn cache_empty_result_in(&self, instance: &str, digest: &Digest) {
        ActionCacheClient::new(self.storage.clone())
            .update_action_result(UpdateActionResultRequest {
                instance_name: instance.into(),
                action_digest: Some(digest.clone()),
                action_result: Some(ActionResult::default()),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn execute(&self, digest: &Digest, priority: i32) -> Streaming<Operation> {
        self.execute_request(ExecuteRequest {
            action_digest: Some(digest.clone()),
            execution_policy: Some(ExecutionPolicy { priority }),
            ..Default::default()
        })
        .await
    }

    /// Executes `digest` asking for its stdout inline.
    async fn execute_inline_stdout(&self, digest: &Digest) -> Streaming<Operation> {
        self.execute_request(ExecuteRequest {
            action_digest: Some(digest.clone()),
            inline_stdout: true,
            ..Default::default()
        })
        .await
    }

    async fn execute_request(&self, request: ExecuteRequest) -> Streaming<Operation> {
        ExecutionClient::new(self.scheduler.clone())
            .execute(request)
            .await
            .unwrap()
            .into_inner()
    }

    fn worker(&self, slot: &str, platform: &[(&str, &str)]) -> FakeWorker {
        FakeWorker {
            client: OperationQueueClient::new(self.scheduler.clone()),
            slot: slot.to_owned(),
            platform: to_platform(platform),
            identity: None,
            size_class: 0,
        }
    }
}

fn to_platform(properties: &[(&str, &str)]) -> Platform {
    Platform {
        properties: properties
            .iter()
            .map(|(name, value)| platform::Property {
                name: (*name).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
    }
}

const LINUX: &[(&str, &str)] = &[("OSFamily", "linux")];
const MACOS: &[(&str, &str)] = &[("OSFamily", "macos")];

/// A worker the test drives one Synchronize at a time.
struct FakeWorker {
    client: OperationQueueClient<Channel>,
    slot: String,
    platform: Platform,
    /// Who it authenticates as (`x-test-sub`); anonymous when `None`.
    identity: Option<String>,
    /// The size class it announces.
    size_class: u32,
}

impl FakeWorker {
    async fn sync(
        &mut self,
        state: current_state::WorkerState,
        prefer_being_idle: bool,
    ) -> SynchronizeResponse {
        self.try_sync(state, prefer_being_idle).await.unwrap()
    }

    /// [`sync`](Self::sync), returning a refusal.
    async fn try_sync(
        &mut self,
        state: current_state::WorkerState,
        prefer_being_idle: bool,
    ) -> Result<SynchronizeResponse, tonic::Status> {
        let mut request = tonic::Request::new(SynchronizeRequest {
            worker_id: BTreeMap::from([("slot".to_owned(), self.slot.clone())]),
            platform: Some(self.platform.clone()),
            current_state: Some(CurrentState {
                worker_state: Some(state),
            }),
            prefer_being_idle,
            size_class: self.size_class,
            ..Default::default()
        });
        if let Some(identity) = &self.identity {
            request
                .metadata_mut()
                .insert(authz::CALLER_HEADER, identity.parse().unwrap());
        }
        Ok(self.client.synchronize(request).await?.into_inner())
    }

    /// Idle: long-polls once; the action given, if any.
    async fn take(&mut self) -> Option<desired_state::Executing> {
        let response = self
            .sync(current_state::WorkerState::Idle(Empty {}), false)
            .await;
        match response.desired_state.and_then(|d| d.worker_state) {
            Some(desired_state::WorkerState::Executing(exec)) => Some(exec),
            _ => None,
        }
    }

    /// Reports `digest` running; the scheduler's answer.
    async fn running(&mut self, digest: &Digest) -> SynchronizeResponse {
        let state = current_state::WorkerState::Executing(current_state::Executing {
            action_digest: Some(digest.clone()),
            execution_state: Some(current_state::executing::ExecutionState::Running(Empty {})),
            ..Default::default()
        });
        self.sync(state, false).await
    }

    /// Reports `digest` done with `exit_code`, asking for no more work.
    async fn complete(&mut self, digest: &Digest, exit_code: i32) {
        let result = ActionResult {
            exit_code,
            ..Default::default()
        };
        self.complete_with(digest, result).await;
    }

    /// Reports `digest` done with `result`, asking for no more work.
    async fn complete_with(&mut self, digest: &Digest, result: ActionResult) {
        let done = corral_proto::completed(
            digest.clone(),
            ExecuteResponse {
                result: Some(result),
                message: format!("ran on slot {}", self.slot),
                ..Default::default()
            },
        );
        self.sync(done, true).await;
    }

    /// Takes the next action and completes it with `exit_code`.
    async fn work_once(&mut self, exit_code: i32) -> Digest {
        let exec = self.take().await.expect("the worker got no action");
        let digest = exec.action_digest.unwrap();
        self.complete(&digest, exit_code).await;
        digest
    }
}

fn stage(op: &Operation) -> i32 {
    ExecuteOperationMetadata::decode(op.metadata.as_ref().unwrap().value.as_slice())
        .unwrap()
        .stage
}

fn response(op: &Operation) -> ExecuteResponse {
    let Some(operation::Result::Response(any)) = &op.result else {
        panic!("operation has no response: {op:?}");
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
    );
    ExecuteResponse::decode(any.value.as_slice()).unwrap()
}

/// Every operation left on `stream`, until it ends.
async fn rest(stream: &mut Streaming<Operation>) -> Vec<Operation> {
    let mut ops = Vec::new();
    while let Some(op) = stream.next().await {
        ops.push(op.unwrap());
    }
    ops
}

#[tokio::test]
async fn an_action_is_queued_run_by_a_worker_and_its_result_streamed() {
    let farm = farm().await;
    let digest = farm.action(&["/bin/true"], LINUX).await;
    let mut stream = farm.execute(&digest, 0).await;
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(stage(&first), execution_stage::Value::Queued as i32);
    assert_eq!(
        first.metadata.as_ref().unwrap().type_url,
        "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
    );
    assert!(first.name.starts_with("operations/"));
    let mut worker = farm.worker("1", LINUX);
    let exec = worker.take().await.unwrap();
    assert_eq!(
        exec.action.unwrap().timeout.unwrap().seconds,
        900,
        "default timeout filled in"
    );
    assert_eq!(exec.action_digest.as_ref(), Some(&digest));
    worker.complete(&digest, 7).await;
    let ops = rest(&mut stream).await;
    let last = ops.last().unwrap();
    assert!(last.done);
    assert_eq!(stage(last), execution_stage::Value::Completed as i32);
    assert_eq!(response(last).result.unwrap().exit_code, 7);
}

#[tokio::test]
async fn identical_actions_in_flight_share_one_execution() {
    let farm = farm().await;
    let digest = farm.action(&["cc", "-c", "x.c"], LINUX).await;
    let mut a = farm.execute(&digest, 0).await;
    let mut b = farm.execute(&digest, 0).await;
    let name_a = a.next().await.unwrap().unwrap().name;
    let name_b = b.next().await.unwrap().unwrap().name;
    assert_eq!(name_a, name_b);
    let mut worker = farm.worker("1", LINUX);
    worker.work_once(0).await;
    // One execution: nothing else is queued for the worker.
    assert!(worker.take().await.is_none());
    // A late joiner by name sees the same result.
    let mut waiter = ExecutionClient::new(farm.scheduler.clone())
        .wait_execution(WaitExecutionRequest { name: name_a })
        .await
        .unwrap()
        .into_inner();
    for stream in [&mut a, &mut b, &mut waiter] {
        let ops = rest(stream).await;
        assert_eq!(response(ops.last().unwrap()).result.unwrap().exit_code, 0);
    }
}

#[tokio::test]
async fn urgent_actions_run_first_whatever_the_order_they_came_in() {
    let farm = farm().await;
    let later = farm.action(&["later"], LINUX).await;
    let normal = farm.action(&["normal"], LINUX).await;
    let urgent = farm.action(&["urgent"], LINUX).await;
    let _s1 = farm.execute(&later, 10).await;
    let _s2 = farm.execute(&normal, 0).await;
    let _s3 = farm.execute(&urgent, -10).await;
    let mut worker = farm.worker("1", LINUX);
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(worker.work_once(0).await);
    }
    assert_eq!(order, [urgent, normal, later]);
}

#[tokio::test]
async fn actions_go_only_to_workers_of_their_platform() {
    let farm = farm().await;
    let on_linux = farm.action(&["linux-only"], LINUX).await;
    let on_mac = farm.action(&["mac-only"], MACOS).await;
    let mut linux_stream = farm.execute(&on_linux, 0).await;
    let mut mac_stream = farm.execute(&on_mac, 0).await;
    let mut mac = farm.worker("mac", MACOS);
    let mut linux = farm.worker("linux", LINUX);
    assert_eq!(mac.work_once(1).await, on_mac);
    assert!(mac.take().await.is_none(), "the linux action is not for it");
    assert_eq!(linux.work_once(2).await, on_linux);
    let mac_ops = rest(&mut mac_stream).await;
    assert_eq!(response(mac_ops.last().unwrap()).message, "ran on slot mac");
    let linux_ops = rest(&mut linux_stream).await;
    assert_eq!(
        response(linux_ops.last().unwrap())
            .result
            .unwrap()
            .exit_code,
        2
    );
}

#[tokio::test]
async fn a_worker_vanishing_mid_action_loses_it_to_another_and_the_client_sees_one_result() {
    let farm = farm().await;
    let digest = farm.action(&["flaky", "host"], LINUX).await;
    let mut stream = farm.execute(&digest, 0).await;
    let mut first = farm.worker("first", LINUX);
    let mut second = farm.worker("second", LINUX);
    assert!(first.take().await.is_some());
    assert!(first.running(&digest).await.desired_state.is_none());
    // `first` goes silent: past its deadline (200 ms) and the grace
    // (200 ms), the action is queued again and `second` gets it.
    let exec = second.take().await;
    let exec = match exec {
        Some(exec) => exec,
        None => second
            .take()
            .await
            .expect("the action came back to the queue"),
    };
    assert_eq!(exec.action_digest.as_ref(), Some(&digest));
    // The vanished worker comes back: told to stop, its result refused.
    let told = first.running(&digest).await;
    assert!(matches!(
        told.desired_state.and_then(|d| d.worker_state),
        Some(desired_state::WorkerState::Idle(_))
    ));
    first.complete(&digest, 99).await;
    second.complete(&digest, 0).await;
    let ops = rest(&mut stream).await;
    let completed: Vec<_> = ops.iter().filter(|op| op.done).collect();
    assert_eq!(completed.len(), 1, "one result: {ops:?}");
    let result = response(completed[0]);
    assert_eq!(result.message, "ran on slot second");
    assert_eq!(result.result.unwrap().exit_code, 0);
}

#[tokio::test]
async fn a_client_reconnects_with_wait_execution_after_its_stream_dropped() {
    let farm = farm().await;
    let digest = farm.action(&["long", "link"], LINUX).await;
    let mut stream = farm.execute(&digest, 0).await;
    let name = stream.next().await.unwrap().unwrap().name;
    drop(stream);
    let mut worker = farm.worker("1", LINUX);
    let exec = worker.take().await.unwrap();
    let mut again = ExecutionClient::new(farm.scheduler.clone())
        .wait_execution(WaitExecutionRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    let now = again.next().await.unwrap().unwrap();
    assert_eq!(now.name, name);
    assert_eq!(stage(&now), execution_stage::Value::Executing as i32);
    worker.complete(&exec.action_digest.unwrap(), 3).await;
    let ops = rest(&mut again).await;
    assert_eq!(response(ops.last().unwrap()).result.unwrap().exit_code, 3);
}

#[tokio::test]
async fn an_action_no_worker_can_take_fails_naming_the_platforms_on_offer() {
    let farm = farm_with(Timing {
        platform_grace: Duration::from_millis(300),
        ..timing()
    })
    .await;
    let digest = farm.action(&["needs", "a", "mac"], MACOS).await;
    let mut stream = farm.execute(&digest, 0).await;
    // A linux worker keeps polling; none offers macos.
    let mut linux = farm.worker("1", LINUX);
    let poller = async {
        for _ in 0..4 {
            assert!(linux.take().await.is_none());
        }
    };
    let (ops, ()) = tokio::join!(rest(&mut stream), poller);
    let status = response(ops.last().unwrap()).status.unwrap();
    assert_eq!(status.code, tonic::Code::FailedPrecondition as i32);
    assert!(
        status
            .message
            .starts_with("no worker offers platform {OSFamily=macos} for instance \"\""),
        "{}",
        status.message
    );
    assert!(
        status.message.ends_with(
            ": property OSFamily (exact) asks macos, workers offer linux; \
             workers offer: {OSFamily=linux}"
        ),
        "{}",
        status.message
    );
}

#[tokio::test]
async fn a_cancelled_operation_ends_for_the_client_and_its_worker_is_told_to_stop() {
    let farm = farm().await;
    let digest = farm.action(&["sleep", "1000"], LINUX).await;
    let mut stream = farm.execute(&digest, 0).await;
    let name = stream.next().await.unwrap().unwrap().name;
    let mut worker = farm.worker("1", LINUX);
    worker.take().await.unwrap();
    OperationsClient::new(farm.scheduler.clone())
        .cancel_operation(CancelOperationRequest { name })
        .await
        .unwrap();
    let ops = rest(&mut stream).await;
    let status = response(ops.last().unwrap()).status.unwrap();
    assert_eq!(status.code, tonic::Code::Cancelled as i32);
    let told = worker.running(&digest).await;
    assert!(matches!(
        told.desired_state.and_then(|d| d.worker_state),
        Some(desired_state::WorkerState::Idle(_))
    ));
}

#[tokio::test]
async fn a_missing_command_is_a_precondition_failure_naming_it() {
    let farm = farm().await;
    let command = Command {
        arguments: vec!["never".into(), "uploaded".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let action = Action {
        command_digest: Some(digest_of(&command)),
        input_root_digest: Some(digest_of(b"")),
        ..Default::default()
    }
    .encode_to_vec();
    farm.upload(std::slice::from_ref(&action)).await;
    let err = ExecutionClient::new(farm.scheduler.clone())
        .execute(ExecuteRequest {
            action_digest: Some(digest_of(&action)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // missing_subjects reads only the exact shape Bazel reads: a
    // google.rpc.Status in the details, a PreconditionFailure Any,
    // violations of type MISSING.
    let d = digest_of(&command);
    assert_eq!(
        missing_subjects(&err),
        [format!("blobs/{}/{}", d.hash, d.size_bytes)]
    );
}

#[tokio::test]
async fn a_cached_result_completes_at_once() {
    let farm = farm().await;
    let digest = farm.action(&["cached"], LINUX).await;
    farm.cache_empty_result(&digest).await;
    let mut stream = farm.execute(&digest, 0).await;
    let op = stream.next().await.unwrap().unwrap();
    assert!(op.done);
    assert!(response(&op).cached_result);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn stdout_is_inlined_for_the_clients_that_asked_only() {
    let farm = farm().await;
    let digest = farm.action(&["echo", "hi"], LINUX).await;
    let mut plain = farm.execute(&digest, 0).await;
    let mut asking = farm.execute_inline_stdout(&digest).await;
    plain.next().await.unwrap().unwrap();
    asking.next().await.unwrap().unwrap();
    let mut worker = farm.worker("1", LINUX);
    let exec = worker.take().await.unwrap();
    assert!(exec.corral_inline_stdout, "one client sharing it asked");
    assert!(!exec.corral_inline_stderr);
    let stdout = b"hi\n".to_vec();
    farm.upload(std::slice::from_ref(&stdout)).await;
    let result = ActionResult {
        stdout_digest: Some(digest_of(&stdout)),
        stdout_raw: stdout.clone(),
        ..Default::default()
    };
    worker.complete_with(&digest, result).await;
    let got = |ops: Vec<Operation>| response(ops.last().unwrap()).result.unwrap();
    assert_eq!(got(rest(&mut asking).await).stdout_raw, stdout);
    let unasked = got(rest(&mut plain).await);
    assert!(unasked.stdout_raw.is_empty(), "inlined unasked");
    assert_eq!(unasked.stdout_digest, Some(digest_of(&stdout)));

    // From the Action Cache, too: inlined when asked, only then.
    ActionCacheClient::new(farm.storage.clone())
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(digest.clone()),
            action_result: Some(ActionResult {
                stdout_digest: Some(digest_of(&stdout)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let hit = got(rest(&mut farm.execute_inline_stdout(&digest).await).await);
    assert_eq!(hit.stdout_raw, stdout);
    let hit = got(rest(&mut farm.execute(&digest, 0).await).await);
    assert!(hit.stdout_raw.is_empty());
}

#[tokio::test]
async fn one_instances_cached_result_is_not_anothers() {
    let farm = farm().await;
    let digest = farm.action(&["tenant"], LINUX).await;
    farm.cache_empty_result_in("tenant-a", &digest).await;
    let execute = |instance: &str| {
        farm.execute_request(ExecuteRequest {
            instance_name: instance.into(),
            action_digest: Some(digest.clone()),
            ..Default::default()
        })
    };
    let hit = execute("tenant-a").await.next().await.unwrap().unwrap();
    assert!(hit.done && response(&hit).cached_result);
    let other = execute("tenant-b").await.next().await.unwrap().unwrap();
    assert!(
        !other.done,
        "served tenant-a's result to tenant-b: {other:?}"
    );
}

#[tokio::test]
async fn a_do_not_cache_action_runs_even_with_a_cache_entry() {
    let farm = farm().await;
    let digest = farm.action_with(&["uncached"], LINUX, true).await;
    farm.cache_empty_result(&digest).await;
    let mut stream = farm.execute(&digest, 0).await;
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.done, "served from the cache: {first:?}");
    let mut worker = farm.worker("1", LINUX);
    assert_eq!(worker.work_once(0).await, digest);
    let last = rest(&mut stream).await.pop().unwrap();
    assert!(!response(&last).cached_result);
}

#[tokio::test]
async fn bad_input_is_refused_with_invalid_argument() {
    let farm = farm().await;
    let mut client = ExecutionClient::new(farm.scheduler.clone());
    let err = client
        .execute(ExecuteRequest {
            action_digest: Some(Digest {
                hash: "XYZ".into(),
                size_bytes: 1,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // An escaping output path.
    let command = Command {
        arguments: vec!["x".into()],
        output_paths: vec!["../../etc/owned".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let action = Action {
        command_digest: Some(digest_of(&command)),
        input_root_digest: Some(digest_of(b"")),
        ..Default::default()
    }
    .encode_to_vec();
    farm.upload(&[action.clone(), command]).await;
    let err = client
        .execute(ExecuteRequest {
            action_digest: Some(digest_of(&action)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("output_paths"), "{}", err.message());
    // A Command blob that is not a Command.
    let not_a_command = vec![0xff, 0xff, 0xff];
    let action = Action {
        command_digest: Some(digest_of(&not_a_command)),
        input_root_digest: Some(digest_of(b"")),
        ..Default::default()
    }
    .encode_to_vec();
    farm.upload(&[action.clone(), not_a_command]).await;
    let err = client
        .execute(ExecuteRequest {
            action_digest: Some(digest_of(&action)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("not a Command"), "{}", err.message());
    // A digest function storage knows but workers do not execute with:
    // refused before anything is queued, not failed on a worker.
    let err = client
        .execute(ExecuteRequest {
            action_digest: Some(Digest {
                hash: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262".into(),
                size_bytes: 1,
            }),
            digest_function: corral_proto::reapi::digest_function::Value::Blake3 as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("SHA256 only"), "{}", err.message());
}

#[tokio::test]
async fn capabilities_report_storage_and_execution() {
    let farm = farm().await;
    let caps = CapabilitiesClient::new(farm.scheduler.clone())
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cache = caps.cache_capabilities.unwrap();
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    let exec = caps.execution_capabilities.unwrap();
    assert!(exec.exec_enabled);
    assert_eq!(
        exec.digest_function,
        corral_proto::reapi::digest_function::Value::Sha256 as i32
    );
    assert!(!exec
        .execution_priority_capabilities
        .unwrap()
        .priorities
        .is_empty());
}

#[tokio::test]
async fn one_port_serves_storage_and_the_scheduler_as_corral_up_will() {
    let storage_cfg = corral_storage::Config {
        backend: corral_storage::config::Backend::Memory {
            max_size_bytes: 64 << 20,
        },
        ..corral_storage::Config::default()
    };
    let stores = corral_storage::open(&storage_cfg).await.unwrap();
    let cache = corral_storage::capabilities_service::CapabilitiesService::new(
        storage_cfg.max_batch_total_size_bytes,
        stores.max_size_bytes,
    )
    .capabilities()
    .cache_capabilities
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = corral_scheduler::Config {
        storage: url.clone(),
        ..corral_scheduler::Config::default()
    };
    let scheduler = Scheduler::builder(cfg)
        .timing(timing())
        .cache_capabilities(cache.clone())
        .build()
        .unwrap();
    // The scheduler's Capabilities, storage's other services.
    let routes = scheduler.add_routes(corral_storage::routes_without_capabilities(
        &storage_cfg,
        &stores,
        &corral_auth::Authorizer::open(),
    ));
    // The routes keep the scheduler's state and sweep alive.
    drop(scheduler);
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let farm = Farm {
        scheduler: Endpoint::from_shared(url.clone()).unwrap().connect_lazy(),
        storage: Endpoint::from_shared(url).unwrap().connect_lazy(),
        metrics: "127.0.0.1:9".parse().unwrap(),
        _servers: servers,
    };
    let caps = CapabilitiesClient::new(farm.scheduler.clone())
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.cache_capabilities, Some(cache));
    assert!(caps.execution_capabilities.unwrap().exec_enabled);
    let digest = farm.action(&["one", "port"], LINUX).await;
    let mut stream = farm.execute(&digest, 0).await;
    farm.worker("1", LINUX).work_once(0).await;
    let ops = rest(&mut stream).await;
    assert_eq!(response(ops.last().unwrap()).result.unwrap().exit_code, 0);
}

/// The body of an HTTP GET of `path` on `addr`.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test]
async fn every_declared_metric_is_recorded_and_served() {
    let farm = farm().await;
    let done = farm.action(&["metered"], LINUX).await;
    let mut stream = farm.execute(&done, 0).await;
    let mut worker = farm.worker("1", LINUX);
    worker.work_once(0).await;
    rest(&mut stream).await;
    let waiting = farm.action(&["waiting"], MACOS).await;
    let _waiting = farm.execute(&waiting, 0).await;
    let (status, page) = http_get(farm.metrics, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        corral_metrics::check_page(&page, &corral_scheduler::metrics::DECLARED),
        Ok(()),
        "{page}"
    );
    assert!(page.contains(
        "corral_scheduler_queued_actions{instance=\"\",platform=\"{OSFamily=macos}\"} 1\n"
    ));
    assert!(page.contains("corral_scheduler_results_total{code=\"OK\",cached=\"false\"} 1\n"));
    assert!(page.contains("corral_scheduler_execution_seconds_count 1\n"));
    assert!(page.contains("corral_scheduler_workers{state=\"idle\"} 1\n"));
    let (status, _) = http_get(farm.metrics, "/other").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn terminate_workers_waits_for_the_drained_worker_to_finish_and_it_takes_no_more() {
    use corral_proto::buildqueuestate::build_queue_state_client::BuildQueueStateClient;
    use corral_proto::buildqueuestate::{
        AddOrRemoveDrainRequest, ListDrainsRequest, PlatformQueueName, SizeClassQueueName,
        TerminateWorkersRequest,
    };
    let farm = farm().await;
    let mut admin = BuildQueueStateClient::new(farm.scheduler.clone());
    let first = farm.action(&["/bin/true", "1"], LINUX).await;
    let second = farm.action(&["/bin/true", "2"], LINUX).await;
    let mut first_stream = farm.execute(&first, 0).await;
    let mut worker = farm.worker("old", LINUX);
    let exec = worker.take().await.unwrap();
    assert_eq!(exec.action_digest.as_ref(), Some(&first));

    // TerminateWorkers returns only once the worker is idle.
    let pattern = BTreeMap::from([("slot".to_owned(), "old".to_owned())]);
    let mut terminate_client = admin.clone();
    let terminate_pattern = pattern.clone();
    let mut terminate = tokio::task::JoinSet::new();
    terminate.spawn(async move {
        terminate_client
            .terminate_workers(TerminateWorkersRequest {
                worker_id_pattern: terminate_pattern,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        terminate.try_join_next().is_none(),
        "TerminateWorkers returned while the worker still ran its action"
    );
    worker.complete(&first, 0).await;
    let done = tokio::time::timeout(Duration::from_secs(5), terminate.join_next())
        .await
        .expect("TerminateWorkers returns once the worker is idle")
        .unwrap();
    done.unwrap().expect("TerminateWorkers succeeds");
    assert!(rest(&mut first_stream).await.last().unwrap().done);

    // Drained: the next action waits for another worker.
    let mut second_stream = farm.execute(&second, 0).await;
    assert!(worker.take().await.is_none(), "a drained worker got work");
    let mut other = farm.worker("new", LINUX);
    assert_eq!(other.work_once(0).await, second);
    assert!(rest(&mut second_stream).await.last().unwrap().done);

    // Drains are listed, removed once, and a queue-scoped drain applies
    // to its queue only.
    let drains = admin
        .list_drains(ListDrainsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .drains;
    assert_eq!(drains.len(), 1);
    assert_eq!(drains[0].worker_id_pattern, pattern);
    assert!(drains[0].created_timestamp.is_some());
    let remove = AddOrRemoveDrainRequest {
        size_class_queue_name: None,
        worker_id_pattern: pattern.clone(),
    };
    admin.remove_drain(remove.clone()).await.unwrap();
    let again = admin.remove_drain(remove).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::NotFound, "{again:?}");

    let macos_queue = SizeClassQueueName {
        platform_queue_name: Some(PlatformQueueName {
            instance_name_prefix: String::new(),
            platform: Some(to_platform(MACOS)),
        }),
        size_class: 0,
    };
    admin
        .add_drain(AddOrRemoveDrainRequest {
            size_class_queue_name: Some(macos_queue.clone()),
            worker_id_pattern: BTreeMap::new(),
        })
        .await
        .unwrap();
    let third = farm.action(&["/bin/true", "3"], LINUX).await;
    let mut third_stream = farm.execute(&third, 0).await;
    assert_eq!(
        worker.work_once(0).await,
        third,
        "a drain of the macOS queue leaves Linux workers working"
    );
    assert!(rest(&mut third_stream).await.last().unwrap().done);
    let listed = |queue: SizeClassQueueName| ListDrainsRequest {
        size_class_queue_name: Some(queue),
    };
    let mac = admin
        .list_drains(listed(macos_queue))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mac.drains.len(), 1);
    let linux_queue = SizeClassQueueName {
        platform_queue_name: Some(PlatformQueueName {
            instance_name_prefix: String::new(),
            platform: Some(to_platform(LINUX)),
        }),
        size_class: 0,
    };
    let linux = admin
        .list_drains(listed(linux_queue))
        .await
        .unwrap()
        .into_inner();
    assert!(linux.drains.is_empty());
}
