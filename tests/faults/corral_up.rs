//! `corral up` with its runner child killed (SIGKILL) mid-action: the
//! farm restarts the runner, and the client gets the action's result.
//! `corral up` told to stop (SIGTERM) mid-action: its worker finishes
//! the action and reports it before storage and the scheduler stop; a
//! second signal stops everything at once.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use corral_e2e::reapi::{digest, response, stage, Client, NewAction};
use corral_e2e::Farm;
use corral_proto::longrunning::Operation;
use corral_proto::reapi::{execution_stage, Digest};

/// A hang must not eat CI's time; the test takes about ten seconds.
const LIMIT: Duration = Duration::from_secs(120);

/// Uploads `script` run by /bin/sh as an action with an empty input root
/// and a result never cached; returns its digest.
async fn upload_action(client: &Client, script: &str) -> Digest {
    let action = NewAction::sh(script).env("PATH", "/usr/bin:/bin");
    client.upload_action(&action).await
}

/// Reads `stream` until its action is done, by `deadline`, and asserts
/// the action's own result: `slept` on stdout, then `exit_code`. A hang,
/// or a stream that fails or ends first, fails with the farm's logs.
async fn assert_slept_then_exited(
    farm: &Farm,
    stream: &mut tonic::Streaming<Operation>,
    deadline: Instant,
    exit_code: i32,
) {
    let done = loop {
        let operation = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .unwrap_or_else(|_| panic!("the action never completed\n{}", farm.logs()))
            .unwrap_or_else(|status| panic!("the client got {status:?}\n{}", farm.logs()))
            .unwrap_or_else(|| panic!("the stream ended early\n{}", farm.logs()));
        if let Some(response) = response(&operation) {
            break response;
        }
    };
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "{status:?}\n{}", farm.logs());
    let result = done.result.unwrap();
    assert_eq!(result.exit_code, exit_code, "the action's own exit code");
    assert_eq!(result.stdout_digest, Some(digest(b"slept\n")));
}

/// The pid of the farm's runner: the process whose command line is
/// `corral runner` with a socket in the farm's data directory.
fn runner_pid(data_dir: &Path) -> Option<u32> {
    let data = data_dir.to_string_lossy().into_owned();
    corral_e2e::processes::running().into_iter().find_map(|p| {
        let is_runner = p.args.get(1).is_some_and(|a| a == "runner")
            && p.args.iter().any(|a| a.starts_with(&data));
        is_runner.then_some(p.pid)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn corral_up_restarts_a_killed_runner_and_the_action_completes() {
    let farm = Farm::start();
    let data_dir = farm.data_dir.path().to_owned();
    let client = Client::of(&farm);
    let action_digest = upload_action(&client, "sleep 3; echo slept; exit 3").await;
    let mut stream = client.start(&action_digest).await;
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

    assert_slept_then_exited(&farm, &mut stream, deadline, 3).await;

    let logs = farm.logs();
    assert!(logs.contains("restarting it"), "{logs}");
    let second = runner_pid(&data_dir).expect("a new runner runs");
    assert_ne!(first, second);
    // The farm goes on: another action runs on the new runner.
    let again = upload_action(&client, "exit 0").await;
    let done = tokio::time::timeout_at(deadline.into(), client.run(&again))
        .await
        .unwrap();
    assert_eq!(done.status.map_or(0, |s| s.code), 0);

    // The restarted runner still stops with the farm.
    let mut farm = farm;
    farm.assert_stops_cleanly();
}

/// Starts `script` on `farm` and returns its Execute stream once a worker
/// runs it.
async fn executing(farm: &Farm, script: &str) -> tonic::Streaming<Operation> {
    let client = Client::of(farm);
    let action_digest = upload_action(&client, script).await;
    let mut stream = client.start(&action_digest).await;
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
    assert_slept_then_exited(&farm, &mut stream, Instant::now() + LIMIT, 4).await;
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
