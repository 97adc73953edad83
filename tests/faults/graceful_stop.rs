//! A worker told to stop (SIGTERM) while it runs an action, in a farm of
//! separate processes ([`SplitFarm`]): it takes no new action, lets the
//! running one finish and reports it, then exits 0. Past its
//! `stop_grace_s`, or on a second SIGTERM, it kills the action and gives
//! it back, so the scheduler queues it again at once rather than after
//! its liveness timeout (about 70 s with the default `worker_timeout_s`).
//!
//! The scheduler's queue is read from its metrics page before any worker
//! comes back: a restarted worker with the same id would give the action
//! back itself, hiding a worker that did not.

use std::time::{Duration, Instant};

use corral_e2e::reapi::Client;
use corral_e2e::{free_port, metrics_page, Daemon, SplitFarm};

use tokio::task::JoinSet;

use crate::restarts::{assert_result, execute, upload_script, Outcome};

/// A hang must not eat CI's time.
const LIMIT: Duration = Duration::from_secs(120);

/// A farm whose scheduler serves metrics (and otherwise runs on its
/// defaults: `worker_timeout_s` 60) and whose worker has `worker_keys`.
fn farm_with(worker_keys: &str) -> (SplitFarm, u16) {
    let metrics_port = free_port();
    let scheduler = format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
    let farm = tokio::task::block_in_place(|| SplitFarm::start_with(&scheduler, worker_keys));
    (farm, metrics_port)
}

/// Actions the scheduler holds in its queues now.
fn queued(metrics_port: u16) -> u64 {
    metrics_page(metrics_port)
        .lines()
        .filter(|l| l.starts_with("corral_scheduler_queued_actions{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits up to `within` for the scheduler to hold `n` queued actions;
/// returns how long it took.
async fn until_queued(metrics_port: u16, n: u64, within: Duration, farm: &SplitFarm) -> Duration {
    let start = Instant::now();
    loop {
        if queued(metrics_port) == n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "the scheduler did not hold {n} queued action(s) within {within:?}\n{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to `within` for the worker to exit; returns its status and
/// how long it took.
fn worker_exit(farm: &mut SplitFarm, within: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    let status = tokio::task::block_in_place(|| farm.wait_exit(Daemon::Worker, within));
    let status =
        status.unwrap_or_else(|| panic!("the worker still runs after {within:?}\n{}", farm.logs()));
    (status, start.elapsed())
}

/// Executes `action` in a task of its own; `executing` learns when a
/// worker runs it.
fn running(
    client: Client,
    action: corral_proto::reapi::Digest,
    executing: Option<tokio::sync::oneshot::Sender<String>>,
) -> JoinSet<Outcome> {
    let mut task = JoinSet::new();
    task.spawn(async move { execute(&client, &action, executing).await });
    task
}

/// The outcome of a [`running`] execution.
async fn outcome_of(mut task: JoinSet<Outcome>) -> Outcome {
    task.join_next()
        .await
        .expect("one execution")
        .expect("the execution did not panic")
}

/// Processes whose command line is exactly `cmdline` (words joined by
/// spaces): the sandboxed command, seen from the host.
/// `sleep` for about `seconds`, spelled so that no other test run on this
/// host has the same command line (this process's id in the last
/// digits): [`processes`] then counts this run's alone, even while
/// another checkout runs the same tests.
pub(crate) fn sleep_command(seconds: &str) -> String {
    format!("sleep {seconds}{:07}", std::process::id())
}

pub(crate) fn processes(cmdline: &str) -> usize {
    corral_e2e::processes::running()
        .iter()
        .filter(|p| p.command_line() == cmdline)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_finishes_its_action_reports_it_and_takes_no_other() {
    let (mut farm, metrics_port) = farm_with("");
    let client = Client::of_split(&farm);
    let first = upload_script(&client, "sleep 3; echo 'first, slept 3s'; exit 5").await;
    let second = upload_script(&client, "echo 'second (graceful)'").await;
    let (tx, executing) = tokio::sync::oneshot::channel();
    let first_run = running(Client::of_split(&farm), first, Some(tx));
    tokio::time::timeout(LIMIT, executing)
        .await
        .expect("the first action ran")
        .unwrap();
    let mut second_run = running(Client::of_split(&farm), second, None);
    // The second waits behind the first: the worker has one slot.
    until_queued(metrics_port, 1, Duration::from_secs(10), &farm).await;

    farm.signal(Daemon::Worker, "TERM");
    let (status, took) = worker_exit(&mut farm, Duration::from_secs(20));
    eprintln!("the worker exited {took:?} after SIGTERM ({status})");
    assert!(status.success(), "{status}\n{}", farm.logs());
    // Its action ran to its end, once, and the client has its real result
    // before any worker is back.
    let outcome = tokio::time::timeout(Duration::from_secs(5), outcome_of(first_run))
        .await
        .unwrap_or_else(|_| panic!("no result for the first action\n{}", farm.logs()));
    assert_result(&client, &farm, &outcome, 5, "first, slept 3s\n").await;
    let worker_log = farm.log_of(Daemon::Worker);
    assert_eq!(
        worker_log.matches("action done").count(),
        1,
        "the worker ran one action\n{worker_log}"
    );
    for step in [
        "stopping: taking no new work",
        "every action finished and was reported",
        "worker stopped",
    ] {
        assert!(
            worker_log.contains(step),
            "{step:?} not logged\n{worker_log}"
        );
    }
    // The second was not taken: still queued, a while after, and never
    // handed out (a give-back would have cost it one of its retries).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(queued(metrics_port), 1, "{}", farm.logs());
    let scheduler_log = farm.log_of(Daemon::Scheduler);
    assert!(
        !scheduler_log.contains("went idle without reporting its action"),
        "the stopping worker was handed the second action\n{scheduler_log}"
    );
    assert!(
        second_run.try_join_next().is_none(),
        "the second action ended with no worker\n{}",
        farm.logs()
    );

    // Another worker takes it.
    tokio::task::block_in_place(|| farm.restart(Daemon::Worker));
    let outcome = tokio::time::timeout(LIMIT, outcome_of(second_run))
        .await
        .expect("the second action ran on the next worker");
    assert_result(&client, &farm, &outcome, 0, "second (graceful)\n").await;
}

/// How the test makes the worker kill its action.
#[derive(Clone, Copy)]
enum Kill {
    /// `stop_grace_s = 1` runs out.
    GraceOver,
    /// A second SIGTERM, two seconds into the default 60 s grace.
    SecondSigterm,
}

/// SIGTERM while a 9 s action runs, then a kill (`how`): the worker exits
/// within seconds, the action's sandbox is gone, the scheduler holds it
/// queued again before any worker is back, and a new worker completes it
/// well before the liveness timeout would have given it back.
async fn killed_on_stop_the_action_is_queued_again_at_once(how: Kill, sleep: &str) {
    let keys = match how {
        Kill::GraceOver => "stop_grace_s = 1\n",
        Kill::SecondSigterm => "",
    };
    let (mut farm, metrics_port) = farm_with(keys);
    let client = Client::of_split(&farm);
    let sleeping = sleep_command(sleep);
    let action = upload_script(&client, &format!("{sleeping}; echo 'slept {sleep}s'")).await;
    let (tx, executing) = tokio::sync::oneshot::channel();
    let run = running(Client::of_split(&farm), action, Some(tx));
    tokio::time::timeout(LIMIT, executing)
        .await
        .expect("the action ran")
        .unwrap();
    // The command itself runs.
    let start = Instant::now();
    while processes(&sleeping) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{sleeping} never ran\n{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stopped_at = Instant::now();
    farm.signal(Daemon::Worker, "TERM");
    if let Kill::SecondSigterm = how {
        // Draining: the action goes on, and so does the worker.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(processes(&sleeping), 1, "{}", farm.logs());
        let still = tokio::task::block_in_place(|| {
            farm.wait_exit(Daemon::Worker, Duration::from_millis(10))
        });
        assert!(still.is_none(), "the worker left before its action ended");
        farm.signal(Daemon::Worker, "TERM");
    }
    let (status, _) = worker_exit(&mut farm, Duration::from_secs(20));
    let exited = stopped_at.elapsed();
    eprintln!("the worker exited {exited:?} after the first SIGTERM ({status})");
    assert!(status.success(), "{status}\n{}", farm.logs());
    assert!(
        exited < Duration::from_secs(6),
        "the worker took {exited:?} to stop: it waited for the action\n{}",
        farm.logs()
    );
    let worker_log = farm.log_of(Daemon::Worker);
    for step in [
        "stopping: taking no new work",
        "stopping now: killing the running actions",
        "killed the action; giving it back",
        "worker stopped",
    ] {
        assert!(
            worker_log.contains(step),
            "{step:?} not logged\n{worker_log}"
        );
    }
    // Given back: queued again, with no worker connected.
    until_queued(metrics_port, 1, Duration::from_secs(10), &farm).await;
    eprintln!(
        "queued again {:?} after the first SIGTERM",
        stopped_at.elapsed()
    );
    // The runner killed the command when the worker cancelled its run.
    let start = Instant::now();
    while processes(&sleeping) != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{sleeping} still runs after its worker stopped\n{}",
            farm.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tokio::task::block_in_place(|| farm.restart(Daemon::Worker));
    let outcome = tokio::time::timeout(LIMIT, outcome_of(run))
        .await
        .expect("the action ran again");
    let done = stopped_at.elapsed();
    eprintln!("the client had the result {done:?} after the first SIGTERM");
    assert_result(&client, &farm, &outcome, 0, &format!("slept {sleep}s\n")).await;
    // Without the give-back the scheduler would queue it again only past
    // its liveness timeout (about 70 s); the action runs 9 s.
    assert!(
        done < Duration::from_secs(20),
        "the action completed {done:?} after the stop\n{}",
        farm.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_past_its_stop_grace_kills_its_action_which_is_queued_again_at_once() {
    killed_on_stop_the_action_is_queued_again_at_once(Kill::GraceOver, "9.17").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_kills_the_action_which_is_queued_again_at_once() {
    killed_on_stop_the_action_is_queued_again_at_once(Kill::SecondSigterm, "9.23").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_stops_at_once_and_leaves_no_poll_to_take_work() {
    let (mut farm, metrics_port) = farm_with("");
    let client = Client::of_split(&farm);
    // Idle: its slot's Synchronize is held by the scheduler (a long poll).
    tokio::time::sleep(Duration::from_secs(1)).await;
    farm.signal(Daemon::Worker, "TERM");
    let (status, took) = worker_exit(&mut farm, Duration::from_secs(10));
    eprintln!("the idle worker exited {took:?} after SIGTERM ({status})");
    assert!(status.success(), "{status}\n{}", farm.logs());
    assert!(
        took < Duration::from_secs(3),
        "an idle worker took {took:?} to stop\n{}",
        farm.logs()
    );
    // Had the scheduler kept serving the dropped long poll, it would hand
    // this action to it, to wait out the worker timeout.
    let action = upload_script(&client, "echo 'after the stop'").await;
    let run = running(Client::of_split(&farm), action, None);
    until_queued(metrics_port, 1, Duration::from_secs(10), &farm).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(queued(metrics_port), 1, "{}", farm.logs());

    tokio::task::block_in_place(|| farm.restart(Daemon::Worker));
    let outcome = tokio::time::timeout(LIMIT, outcome_of(run))
        .await
        .expect("the action ran on the next worker");
    assert_result(&client, &farm, &outcome, 0, "after the stop\n").await;
}
