//! `corral up` with its runner child killed (SIGKILL) mid-action: the
//! farm restarts the runner, and the client gets the action's result.
//! `corral up` told to stop (SIGTERM) mid-action: its worker finishes
//! the action and reports it before storage and the scheduler stop; a
//! second signal stops everything at once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use corral_e2e::Farm;
use corral_proto::longrunning::{operation, Operation};
use corral_proto::reapi::command::EnvironmentVariable;
use corral_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use corral_proto::reapi::execution_client::ExecutionClient;
use corral_proto::reapi::{
    batch_update_blobs_request, execution_stage, Action, BatchUpdateBlobsRequest,
    Command as ReapiCommand, Digest, Directory, ExecuteOperationMetadata, ExecuteRequest,
    ExecuteResponse,
};
use prost::Message;
use sha2::Digest as _;
use tonic::transport::Channel;

/// A hang must not eat CI's time; the test takes about ten seconds.
const LIMIT: Duration = Duration::from_secs(120);

fn digest(data: &[u8]) -> Digest {
    Digest {
        hash: hex::encode(sha2::Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// Uploads `script` run by /bin/sh as an action with an empty input root
/// and a result never cached; returns its digest.
async fn upload_action(channel: &Channel, script: &str) -> Digest {
    let command = ReapiCommand {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let root = Directory::default().encode_to_vec();
    let action = Action {
        command_digest: Some(digest(&command)),
        input_root_digest: Some(digest(&root)),
        do_not_cache: true,
        ..Default::default()
    }
    .encode_to_vec();
    let action_digest = digest(&action);
    let requests = [command, root, action]
        .into_iter()
        .map(|data| batch_update_blobs_request::Request {
            digest: Some(digest(&data)),
            data,
            ..Default::default()
        })
        .collect();
    let responses = ContentAddressableStorageClient::new(channel.clone())
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .responses;
    for response in responses {
        let code = response.status.map_or(0, |s| s.code);
        assert_eq!(code, 0, "uploading {:?}", response.digest);
    }
    action_digest
}

fn stage(operation: &Operation) -> Option<execution_stage::Value> {
    let meta = ExecuteOperationMetadata::decode(operation.metadata.as_ref()?.value.as_slice());
    execution_stage::Value::try_from(meta.ok()?.stage).ok()
}

fn response(operation: Operation) -> ExecuteResponse {
    match operation.result {
        Some(operation::Result::Response(any)) => {
            ExecuteResponse::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("a done operation without a response: {other:?}"),
    }
}

/// The pid of the farm's runner: the process whose command line is
/// `corral runner` with a socket in the farm's data directory.
fn runner_pid(data_dir: &Path) -> Option<u32> {
    let data = data_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_runner = args.get(1).is_some_and(|a| a == "runner")
                && args.iter().any(|a| a.starts_with(&data));
            is_runner.then_some(pid)
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn corral_up_restarts_a_killed_runner_and_the_action_completes() {
    let farm = Farm::start();
    let data_dir = farm.data_dir.path().to_owned();
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", farm.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let action_digest = upload_action(&channel, "sleep 3; echo slept; exit 3").await;
    let mut stream = ExecutionClient::new(channel.clone())
        .execute(ExecuteRequest {
            action_digest: Some(action_digest),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + LIMIT;
    // Executing: the worker has the action; a second more and the
    // sandbox runs `sleep 3`.
    loop {
        let operation = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .expect("the action starts")
            .unwrap()
            .expect("the stream goes on until the action is done");
        assert!(!operation.done, "done before the runner was killed");
        if stage(&operation) == Some(execution_stage::Value::Executing) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = runner_pid(&data_dir).expect("the farm's runner runs");
    let killed = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let done = loop {
        let operation = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .unwrap_or_else(|_| panic!("the action never completed\n{}", farm.logs()))
            .unwrap_or_else(|status| panic!("the client got {status:?}\n{}", farm.logs()))
            .unwrap_or_else(|| panic!("the stream ended early\n{}", farm.logs()));
        if operation.done {
            break response(operation);
        }
    };
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "{status:?}\n{}", farm.logs());
    let result = done.result.unwrap();
    assert_eq!(result.exit_code, 3, "the action's own exit code");
    assert_eq!(result.stdout_digest, Some(digest(b"slept\n")));

    let logs = farm.logs();
    assert!(logs.contains("restarting it"), "{logs}");
    let second = runner_pid(&data_dir).expect("a new runner runs");
    assert_ne!(first, second);
    // The farm goes on: another action runs on the new runner.
    let again = upload_action(&channel, "exit 0").await;
    let mut stream = ExecutionClient::new(channel.clone())
        .execute(ExecuteRequest {
            action_digest: Some(again),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let done = loop {
        let operation = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if operation.done {
            break response(operation);
        }
    };
    assert_eq!(done.status.map_or(0, |s| s.code), 0);

    // The restarted runner still stops with the farm.
    let mut farm = farm;
    assert!(farm.stop().success(), "{}", farm.logs());
    let left = farm.leftover_processes();
    assert!(left.is_empty(), "left running: {left:?}");
}

/// Starts `script` on `farm` and returns its Execute stream once a worker
/// runs it.
async fn executing(farm: &Farm, script: &str) -> tonic::Streaming<Operation> {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", farm.port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let action_digest = upload_action(&channel, script).await;
    let mut stream = ExecutionClient::new(channel)
        .execute(ExecuteRequest {
            action_digest: Some(action_digest),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let operation = tokio::time::timeout(LIMIT, stream.message())
            .await
            .expect("the action starts")
            .unwrap()
            .expect("the stream goes on until the action is done");
        if stage(&operation) == Some(execution_stage::Value::Executing) {
            return stream;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corral_up_on_sigterm_finishes_the_running_action_then_stops() {
    let mut farm = Farm::start();
    let mut stream = executing(&farm, "sleep 3; echo slept; exit 4").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_at = Instant::now();
    farm.signal("TERM");
    // The scheduler still serves the stream: the result reaches it.
    let done = loop {
        let operation = tokio::time::timeout(LIMIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("the action never completed\n{}", farm.logs()))
            .unwrap_or_else(|status| panic!("the client got {status:?}\n{}", farm.logs()))
            .unwrap_or_else(|| panic!("the stream ended early\n{}", farm.logs()));
        if operation.done {
            break response(operation);
        }
    };
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "{status:?}\n{}", farm.logs());
    let result = done.result.unwrap();
    assert_eq!(result.exit_code, 4, "the action's own exit code");
    assert_eq!(result.stdout_digest, Some(digest(b"slept\n")));
    let exit = tokio::task::block_in_place(|| farm.wait_exit(Duration::from_secs(20)))
        .unwrap_or_else(|| panic!("corral up still runs\n{}", farm.logs()));
    eprintln!("corral up exited {:?} after SIGTERM", stopped_at.elapsed());
    assert!(exit.success(), "{exit}\n{}", farm.logs());
    let logs = farm.logs();
    for step in [
        "draining the worker",
        "every action finished and was reported",
        "the worker stopped; stopping storage, the scheduler and the runner",
    ] {
        assert!(logs.contains(step), "{step:?} not logged\n{logs}");
    }
    let left = farm.leftover_processes();
    assert!(left.is_empty(), "left running: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn corral_up_on_a_second_signal_kills_the_running_action_and_stops_at_once() {
    let mut farm = Farm::start();
    let sleeping = crate::graceful_stop::sleep_command("30.11");
    let _stream = executing(&farm, &format!("{sleeping}; exit 0")).await;
    let start = Instant::now();
    while crate::graceful_stop::processes(&sleeping) == 0 {
        assert!(
            start.elapsed() < LIMIT,
            "the action never ran\n{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_at = Instant::now();
    farm.signal("TERM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tokio::task::block_in_place(|| farm.wait_exit(Duration::ZERO)).is_none(),
        "corral up stopped without waiting for its action\n{}",
        farm.logs()
    );
    farm.signal("INT");
    let exit = tokio::task::block_in_place(|| farm.wait_exit(Duration::from_secs(20)))
        .unwrap_or_else(|| panic!("corral up still runs\n{}", farm.logs()));
    let took = stopped_at.elapsed();
    eprintln!("corral up exited {took:?} after SIGTERM, then SIGINT at 1 s");
    assert!(exit.success(), "{exit}\n{}", farm.logs());
    // The scheduler gives open streams 5 s (shutdown::GRACE).
    assert!(
        took < Duration::from_secs(15),
        "corral up took {took:?} to stop\n{}",
        farm.logs()
    );
    let logs = farm.logs();
    assert!(logs.contains("killed the action"), "{logs}");
    assert_eq!(
        crate::graceful_stop::processes(&sleeping),
        0,
        "the action outlived corral up"
    );
    let left = farm.leftover_processes();
    assert!(left.is_empty(), "left running: {left:?}");
}
