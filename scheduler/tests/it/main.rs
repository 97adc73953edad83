//! The scheduler over gRPC, with real (in-memory) storage and a fake
//! worker driven by the test through the worker protocol.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use corral_proto::longrunning::{operation, Operation};
use corral_proto::precondition::missing_subjects;
use corral_proto::protobuf::Empty;
use corral_proto::reapi::action_cache_client::ActionCacheClient;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::execution_client::ExecutionClient;
use corral_proto::reapi::{
    batch_update_blobs_request, execution_stage, Action, ActionResult, BatchUpdateBlobsRequest,
    Command, Digest, ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse,
    UpdateActionResultRequest, WaitExecutionRequest,
};
use corral_proto::remoteworker::operation_queue_client::OperationQueueClient;
use corral_proto::remoteworker::{current_state, desired_state, CurrentState, SynchronizeRequest};
use futures_util::StreamExt as _;
use prost::Message;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tonic::transport::Channel;

fn digest_of(data: &[u8]) -> Digest {
    Digest {
        hash: hex::encode(Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

struct Farm {
    channel: Channel,
    _servers: tokio::task::JoinSet<()>,
}

async fn farm() -> Farm {
    let mut servers = tokio::task::JoinSet::new();
    let storage_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let storage_url = format!("http://{}", storage_listener.local_addr().unwrap());
    let storage_cfg = corral_storage::Config {
        backend: corral_storage::config::Backend::Memory {
            max_size_bytes: 64 << 20,
        },
        ..corral_storage::Config::default()
    };
    servers.spawn(async move {
        corral_storage::run(storage_cfg, storage_listener, std::future::pending())
            .await
            .unwrap();
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = corral_scheduler::Config {
        storage: storage_url.clone(),
        ..corral_scheduler::Config::default()
    };
    servers.spawn(async move {
        corral_scheduler::run(cfg, listener, std::future::pending())
            .await
            .unwrap();
    });
    // The test talks to both through one channel per server; storage
    // calls go to storage_url, the rest to the scheduler.
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect_lazy();
    let storage = tonic::transport::Endpoint::from_shared(storage_url)
        .unwrap()
        .connect_lazy();
    STORAGE.with(|s| *s.borrow_mut() = Some(storage));
    Farm {
        channel,
        _servers: servers,
    }
}

thread_local! {
    static STORAGE: std::cell::RefCell<Option<Channel>> = const { std::cell::RefCell::new(None) };
}

fn storage() -> Channel {
    STORAGE.with(|s| s.borrow().clone().unwrap())
}

async fn upload(blobs: &[Vec<u8>]) {
    ContentAddressableStorageClient::new(storage())
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

/// An action (and its command) uploaded, with `do_not_cache` as given.
async fn action(args: &[&str], do_not_cache: bool, upload_command: bool) -> Digest {
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
        do_not_cache,
        ..Default::default()
    }
    .encode_to_vec();
    let mut blobs = vec![action.clone()];
    if upload_command {
        blobs.push(command);
    }
    upload(&blobs).await;
    digest_of(&action)
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
    ExecuteResponse::decode(any.value.as_slice()).unwrap()
}

fn worker_request(slot: &str, state: current_state::WorkerState) -> SynchronizeRequest {
    SynchronizeRequest {
        worker_id: BTreeMap::from([("slot".to_owned(), slot.to_owned())]),
        current_state: Some(CurrentState {
            worker_state: Some(state),
        }),
        ..Default::default()
    }
}

/// The fake worker: takes the next action and completes it with exit code
/// `exit_code`; returns the digest it ran.
async fn work_once(channel: Channel, slot: &str, exit_code: i32) -> Digest {
    let mut queue = OperationQueueClient::new(channel);
    let response = queue
        .synchronize(worker_request(
            slot,
            current_state::WorkerState::Idle(Empty {}),
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(desired_state::WorkerState::Executing(exec)) =
        response.desired_state.and_then(|d| d.worker_state)
    else {
        panic!("the worker got no action");
    };
    let action = exec.action.unwrap();
    assert_eq!(
        action.timeout.unwrap().seconds,
        900,
        "default timeout filled in"
    );
    let digest = exec.action_digest.unwrap();
    let done = current_state::WorkerState::Completed(current_state::Completed {
        action_digest: Some(digest.clone()),
        execute_response: Some(ExecuteResponse {
            result: Some(ActionResult {
                exit_code,
                ..Default::default()
            }),
            ..Default::default()
        }),
    });
    // prefer_being_idle: report the result without waiting for more work.
    let mut report = worker_request(slot, done);
    report.prefer_being_idle = true;
    queue.synchronize(report).await.unwrap();
    digest
}

#[tokio::test]
async fn an_action_is_queued_run_by_a_worker_and_its_result_streamed() {
    let farm = farm().await;
    let digest = action(&["/bin/true"], false, true).await;
    let mut stream = ExecutionClient::new(farm.channel.clone())
        .execute(ExecuteRequest {
            action_digest: Some(digest.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(stage(&first), execution_stage::Value::Queued as i32);
    assert!(first.name.starts_with("operations/"));
    assert_eq!(work_once(farm.channel.clone(), "1", 7).await, digest);
    let mut last = first;
    while let Some(op) = stream.next().await {
        last = op.unwrap();
    }
    assert!(last.done);
    assert_eq!(stage(&last), execution_stage::Value::Completed as i32);
    assert_eq!(response(&last).result.unwrap().exit_code, 7);
}

#[tokio::test]
async fn identical_actions_in_flight_share_one_execution() {
    let farm = farm().await;
    let digest = action(&["cc", "-c", "x.c"], false, true).await;
    let mut client = ExecutionClient::new(farm.channel.clone());
    let request = ExecuteRequest {
        action_digest: Some(digest.clone()),
        ..Default::default()
    };
    let mut a = client.execute(request.clone()).await.unwrap().into_inner();
    let mut b = client.execute(request).await.unwrap().into_inner();
    let name_a = a.next().await.unwrap().unwrap().name;
    let name_b = b.next().await.unwrap().unwrap().name;
    assert_eq!(name_a, name_b);
    work_once(farm.channel.clone(), "1", 0).await;
    // A late joiner by name sees the same result.
    let mut waiter = client
        .wait_execution(WaitExecutionRequest {
            name: name_a.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    for stream in [&mut a, &mut b, &mut waiter] {
        let mut last = None;
        while let Some(op) = stream.next().await {
            last = Some(op.unwrap());
        }
        assert_eq!(response(&last.unwrap()).result.unwrap().exit_code, 0);
    }
}

#[tokio::test]
async fn a_missing_command_is_a_precondition_failure_naming_it() {
    let farm = farm().await;
    let digest = action(&["never", "uploaded"], false, false).await;
    let err = ExecutionClient::new(farm.channel.clone())
        .execute(ExecuteRequest {
            action_digest: Some(digest),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let command = Command {
        arguments: vec!["never".into(), "uploaded".into()],
        output_paths: vec!["out".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let d = digest_of(&command);
    assert_eq!(
        missing_subjects(&err),
        [format!("blobs/{}/{}", d.hash, d.size_bytes)]
    );
}

#[tokio::test]
async fn a_cached_result_completes_at_once() {
    let farm = farm().await;
    let digest = action(&["cached"], false, true).await;
    ActionCacheClient::new(storage())
        .update_action_result(UpdateActionResultRequest {
            action_digest: Some(digest.clone()),
            action_result: Some(ActionResult {
                exit_code: 0,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stream = ExecutionClient::new(farm.channel.clone())
        .execute(ExecuteRequest {
            action_digest: Some(digest),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let op = stream.next().await.unwrap().unwrap();
    assert!(op.done);
    assert!(response(&op).cached_result);
    assert!(stream.next().await.is_none());
}

#[tokio::test]
async fn bad_input_is_refused_with_invalid_argument() {
    let farm = farm().await;
    let mut client = ExecutionClient::new(farm.channel.clone());
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
    upload(&[action.clone(), command]).await;
    let err = client
        .execute(ExecuteRequest {
            action_digest: Some(digest_of(&action)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("output_paths"), "{}", err.message());
}
