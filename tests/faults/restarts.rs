//! A farm of separate processes ([`SplitFarm`]) losing one daemon to
//! `kill -9` in the middle of an action, then getting it back: the client
//! still gets the action's real result (exit code, stdout). Losing the
//! scheduler costs the client one retried Execute, as Bazel does it; the
//! worker's result then comes from the Action Cache. Real Bazel survives
//! a scheduler restart mid-build.
//!
//! The runner's death is the hook [`Daemon::Runner`]: same harness.
//! docs/failures.md says what each death costs.

use std::time::{Duration, Instant};

use corral_e2e::reapi::{response, stage, Client, NewAction};
use corral_e2e::{Daemon, SplitFarm};
use corral_proto::longrunning::Operation;
use corral_proto::reapi::{execution_stage, Digest, ExecuteRequest, ExecuteResponse};
use tonic::{Code, Status};

/// How long an action of these tests runs: long enough to kill and
/// restart a daemon in the middle.
const ACTION_SECONDS: u32 = 4;

/// Whether `status` says the connection to the server was lost: what
/// Bazel (grpc-java) reports as UNAVAILABLE and retries. tonic reports a
/// connection that broke mid-stream as UNKNOWN with hyper's error.
fn connection_lost(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || (status.code() == Code::Unknown && status.message().starts_with("h2 protocol error"))
}

/// How an Execute or WaitExecution stream ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done(Box<ExecuteResponse>),
    /// The call failed, after naming the operation if it got that far.
    Broken(Option<String>, Status),
}

/// Uploads a cacheable action running `script` in `sh` (empty input
/// root) and returns its digest.
pub(crate) async fn upload_script(client: &Client, script: &str) -> Digest {
    client
        .upload_action(&NewAction::sh(script).cacheable())
        .await
}

/// Follows an Execute stream (stdout inline) to its end; `executing`
/// learns the operation's name once a worker runs it.
pub(crate) async fn execute(
    client: &Client,
    action: &Digest,
    executing: Option<tokio::sync::oneshot::Sender<String>>,
) -> Outcome {
    let call = client
        .execute(ExecuteRequest {
            action_digest: Some(action.clone()),
            inline_stdout: true,
            ..Default::default()
        })
        .await;
    match call {
        Ok(stream) => follow(stream, executing).await,
        Err(status) => Outcome::Broken(None, status),
    }
}

/// Execute, and once more if the connection breaks (the scheduler went
/// away), as Bazel does; the first attempt's operation name is sent on
/// `executing` once it runs.
async fn execute_with_one_retry(
    client: &Client,
    action: &Digest,
    executing: tokio::sync::oneshot::Sender<String>,
) -> (Outcome, Option<Outcome>) {
    let first = execute(client, action, Some(executing)).await;
    let retry = match &first {
        Outcome::Broken(_, status) if connection_lost(status) => {
            // The retried call waits for the scheduler to be back:
            // Bazel backs off between attempts for the same reason.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match execute(client, action, None).await {
                    Outcome::Broken(None, s)
                        if s.code() == Code::Unavailable && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    outcome => break Some(outcome),
                }
            }
        }
        _ => None,
    };
    (first, retry)
}

async fn wait_execution(client: &Client, name: &str) -> Outcome {
    match client.wait_execution(name).await {
        Ok(stream) => follow(stream, None).await,
        Err(status) => Outcome::Broken(Some(name.to_owned()), status),
    }
}

async fn follow(
    mut stream: tonic::Streaming<Operation>,
    mut executing: Option<tokio::sync::oneshot::Sender<String>>,
) -> Outcome {
    let mut name = None;
    loop {
        match stream.message().await {
            Ok(Some(op)) => {
                name = Some(op.name.clone());
                if stage(&op) == Some(execution_stage::Value::Executing) {
                    if let Some(tx) = executing.take() {
                        let _ = tx.send(op.name.clone());
                    }
                }
                if let Some(response) = response(&op) {
                    return Outcome::Done(Box::new(response));
                }
            }
            Ok(None) => return Outcome::Broken(name, Status::unknown("the stream ended early")),
            Err(status) => return Outcome::Broken(name, status),
        }
    }
}

/// The action every test runs: `ACTION_SECONDS` of sleep, then a line on
/// stdout and `exit_code`. `salt` keeps tests apart in the cache.
fn script(salt: &str, exit_code: i32) -> (String, String) {
    let line = format!("slept {ACTION_SECONDS}s ({salt})");
    (
        format!("sleep {ACTION_SECONDS}; echo '{line}'; exit {exit_code}"),
        format!("{line}\n"),
    )
}

/// Asserts `outcome` is the action's own result: `exit_code`, and
/// `stdout` inline (asked for) or in the CAS.
pub(crate) async fn assert_result(
    client: &Client,
    farm: &SplitFarm,
    outcome: &Outcome,
    exit_code: i32,
    stdout: &str,
) {
    let Outcome::Done(response) = outcome else {
        panic!("no result: {outcome:?}\n{}", farm.logs());
    };
    assert_eq!(
        response.status.clone().unwrap_or_default().code,
        0,
        "{response:?}\n{}",
        farm.logs()
    );
    let result = response.result.clone().unwrap();
    assert_eq!(result.exit_code, exit_code, "{result:?}");
    assert_eq!(client.stdout(response).await, stdout, "{result:?}");
}

/// Kills `daemon`, waits half a second and starts it again. The harness
/// blocks (it polls the daemon's port): off the runtime's threads.
fn kill_and_restart(farm: &mut SplitFarm, daemon: Daemon) {
    tokio::task::block_in_place(|| {
        farm.kill(daemon);
        std::thread::sleep(Duration::from_millis(500));
        farm.restart(daemon);
    });
}

/// Kills and restarts `daemon` one second after the action started
/// running (`executing` says when).
async fn chaos(
    farm: &mut SplitFarm,
    daemon: Daemon,
    executing: tokio::sync::oneshot::Receiver<String>,
) {
    executing.await.expect("the action never ran");
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill_and_restart(farm, daemon);
}

/// Kills and restarts `daemon` mid-action; the client's one stream (no
/// retry) gets the action's result.
async fn killed_mid_action_the_action_still_completes(daemon: Daemon, salt: &str) {
    let mut farm = SplitFarm::start();
    let client = Client::of_split(&farm);
    let (script, stdout) = script(salt, 7);
    let action = upload_script(&client, &script).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (outcome, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(120),
            execute(&client, &action, Some(tx))
        ),
        chaos(&mut farm, daemon, rx),
    );
    let outcome = outcome.expect("no result within 2 minutes");
    assert_result(&client, &farm, &outcome, 7, &stdout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_killed_mid_action_and_restarted_the_client_gets_the_result() {
    killed_mid_action_the_action_still_completes(Daemon::Storage, "storage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_down_when_the_outputs_go_up_is_unavailable_and_a_retry_gets_the_result() {
    let mut farm = SplitFarm::start();
    let client = Client::of_split(&farm);
    let (script, stdout) = script("storage-down", 7);
    let action = upload_script(&client, &script).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let down = async {
        rx.await.expect("the action never ran");
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::block_in_place(|| farm.kill(Daemon::Storage));
    };
    let (first, ()) = tokio::join!(execute(&client, &action, Some(tx)), down);
    // The worker could not upload stdout: the farm's failure, which the
    // client may retry, not the action's.
    let Outcome::Done(response) = &first else {
        panic!("{first:?}\n{}", farm.logs());
    };
    let status = response.status.clone().unwrap_or_default();
    assert_eq!(status.code, Code::Unavailable as i32, "{status:?}");
    tokio::task::block_in_place(|| farm.restart(Daemon::Storage));
    let again = execute(&client, &action, None).await;
    assert_result(&client, &farm, &again, 7, &stdout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_action_and_restarted_the_action_runs_again_and_completes() {
    killed_mid_action_the_action_still_completes(Daemon::Worker, "worker").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_killed_mid_action_one_retried_execute_gets_the_result() {
    let mut farm = SplitFarm::start();
    let client = Client::of_split(&farm);
    let (script, stdout) = script("scheduler", 0);
    let action = upload_script(&client, &script).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (outcomes, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(120),
            execute_with_one_retry(&client, &action, tx)
        ),
        chaos(&mut farm, Daemon::Scheduler, rx),
    );
    let (first, retry) = outcomes.expect("no result within 2 minutes");
    let Outcome::Broken(_, status) = &first else {
        panic!("the stream outlived its scheduler: {first:?}");
    };
    assert!(connection_lost(status), "{status:?}");
    let retry = retry.expect("Execute was retried");
    assert_result(&client, &farm, &retry, 0, &stdout).await;
}

/// Runs a cacheable action, kills the scheduler one second into it and
/// restarts it: before the action ends when `back_before_the_end`, else
/// only once the result is in the Action Cache (written while no
/// scheduler could take the report). Then the client does what Bazel
/// does: WaitExecution, NOT_FOUND, Execute again, a cache hit.
async fn the_retried_execute_is_a_cache_hit(back_before_the_end: bool, salt: &str) {
    let mut farm = SplitFarm::start();
    let client = Client::of_split(&farm);
    let (script, stdout) = script(salt, 0);
    let action = upload_script(&client, &script).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let killed = async {
        let name = rx.await.expect("the action never ran");
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::block_in_place(|| farm.kill(Daemon::Scheduler));
        name
    };
    let (first, name) = tokio::join!(execute(&client, &action, Some(tx)), killed);
    assert!(
        matches!(&first, Outcome::Broken(_, s) if connection_lost(s)),
        "{first:?}"
    );
    if back_before_the_end {
        // The worker then reports the action to a scheduler that never
        // handed it out.
        tokio::task::block_in_place(|| farm.restart(Daemon::Scheduler));
    }
    // The worker finishes it and writes the Action Cache entry.
    let deadline = Instant::now() + Duration::from_secs(3 * u64::from(ACTION_SECONDS));
    while client.cached(&action).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the action's result never reached the Action Cache\n{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !back_before_the_end {
        tokio::task::block_in_place(|| farm.restart(Daemon::Scheduler));
    }
    let waited = wait_execution(&client, &name).await;
    assert!(
        matches!(&waited, Outcome::Broken(_, s) if s.code() == Code::NotFound),
        "a restarted scheduler does not know the operation: {waited:?}"
    );
    let again = execute(&client, &action, None).await;
    assert_result(&client, &farm, &again, 0, &stdout).await;
    let Outcome::Done(response) = again else {
        unreachable!()
    };
    assert!(response.cached_result, "{response:?}");
    // The worker's slot, whose completion the new scheduler refused,
    // takes new work.
    let next = upload_script(&client, &format!("echo 'next ({salt})'")).await;
    let done = tokio::time::timeout(Duration::from_secs(60), execute(&client, &next, None))
        .await
        .expect("the worker took no new work");
    assert_result(&client, &farm, &done, 0, &format!("next ({salt})\n")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_outliving_its_scheduler_is_a_cache_hit_for_the_retried_execute() {
    the_retried_execute_is_a_cache_hit(true, "cache, back before the end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_ending_while_no_scheduler_runs_is_a_cache_hit_for_the_retried_execute() {
    the_retried_execute_is_a_cache_hit(false, "cache, back after the end").await;
}

/// Kills the scheduler one second into a cacheable action and restarts
/// it at once. The client does what Bazel does (WaitExecution, NOT_FOUND,
/// Execute again) while the action still runs; the retry is queued, and
/// the worker's next progress report makes the restarted scheduler adopt
/// the running action, which the queued retry joins. The result is the
/// first run's: it started before the restart, and ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_execute_joins_the_action_still_running_from_before_the_restart() {
    // Longer than the worker's report interval (10 s), so the worker
    // reports to the restarted scheduler before the action ends.
    let seconds = 14;
    let line = "ran once, across a scheduler restart";
    let script = format!("sleep {seconds}; echo '{line}'");
    let mut farm = SplitFarm::start();
    let client = Client::of_split(&farm);
    let action = upload_script(&client, &script).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let restarted = async {
        let name = rx.await.expect("the action never ran");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at = std::time::SystemTime::now();
        kill_and_restart(&mut farm, Daemon::Scheduler);
        (name, at)
    };
    let (first, (name, restarted_at)) =
        tokio::join!(execute(&client, &action, Some(tx)), restarted);
    assert!(
        matches!(&first, Outcome::Broken(_, s) if connection_lost(s)),
        "{first:?}"
    );
    let waited = wait_execution(&client, &name).await;
    assert!(
        matches!(&waited, Outcome::Broken(_, s) if s.code() == Code::NotFound),
        "a restarted scheduler does not know the operation: {waited:?}"
    );
    let again = tokio::time::timeout(
        Duration::from_secs(3 * seconds),
        execute(&client, &action, None),
    )
    .await
    .expect("no result for the retried Execute");
    assert_result(&client, &farm, &again, 0, &format!("{line}\n")).await;
    let Outcome::Done(response) = again else {
        unreachable!()
    };
    assert!(!response.cached_result, "{response:?}");
    let started = response
        .result
        .as_ref()
        .and_then(|r| r.execution_metadata.as_ref())
        .and_then(|m| m.execution_start_timestamp.as_ref())
        .expect("execution metadata");
    let started =
        std::time::UNIX_EPOCH + Duration::new(started.seconds as u64, started.nanos as u32);
    assert!(
        started < restarted_at,
        "the result is a second run's, started after the restart\n{}",
        farm.logs()
    );
    assert!(
        farm.logs()
            .contains("adopted an action running since before a restart"),
        "{}",
        farm.logs()
    );
    // The queue skipped the retry the adopted run answered: the slot
    // takes new work.
    let next = upload_script(&client, "echo 'next (adopted)'").await;
    let done = tokio::time::timeout(Duration::from_secs(60), execute(&client, &next, None))
        .await
        .expect("the worker took no new work");
    assert_result(&client, &farm, &done, 0, "next (adopted)\n").await;
}

/// Whether a process whose command line contains `marker` runs (the
/// host sees the sandboxes' processes).
fn running(marker: &str) -> bool {
    corral_e2e::processes::running()
        .iter()
        .any(|p| p.command_line().contains(marker))
}

#[test]
fn bazel_builds_green_across_a_scheduler_restart_mid_build() {
    let test = "bazel_builds_green_across_a_scheduler_restart_mid_build";
    if !corral_e2e::bazel::available(test) {
        return;
    }
    let mut farm = SplitFarm::start();
    let workspace = corral_e2e::bazel::scratch_workspace();
    let output_root = tempfile::tempdir().unwrap();
    let bazel = std::process::Command::new("bazel")
        .arg("--batch")
        .arg(format!(
            "--output_user_root={}",
            output_root.path().display()
        ))
        .arg("build")
        .arg(format!(
            "--remote_executor={}",
            farm.scheduler_url().replace("http", "grpc")
        ))
        .arg(format!(
            "--remote_cache={}",
            farm.storage_url().replace("http", "grpc")
        ))
        .args([
            "--spawn_strategy=remote",
            "--remote_local_fallback=false",
            "--nosandbox_debug",
            "--experimental_repository_disable_download",
            "//faults:slow",
            "//:hello",
        ])
        .current_dir(workspace.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The slow genrule runs on the farm: kill the scheduler under it.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !running("corral-faults-slow-genrule") {
        assert!(
            Instant::now() < deadline,
            "the slow genrule never ran\n{}",
            farm.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    farm.kill(Daemon::Scheduler);
    std::thread::sleep(Duration::from_millis(500));
    farm.restart(Daemon::Scheduler);
    let out = bazel.wait_with_output().unwrap();
    let text = corral_e2e::output_text(&out);
    assert!(
        out.status.success(),
        "the build failed across a scheduler restart\n{text}\n{}",
        farm.logs()
    );
    let slow = std::fs::read_to_string(workspace.path().join("bazel-bin/faults/slow.txt")).unwrap();
    assert_eq!(slow, "slow\n");
}
