//! A worker told to stop, seen from the scheduler's side of the wire:
//! draining, it reports its running action's result preferring to be
//! idle and is handed nothing more; stopped now, it kills the action and
//! gives it back with an Idle report, also preferring to be idle.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::fake_scheduler::{self, FakeScheduler, Seen};
use crate::runner_faults::worker_config;
use crate::{code, privileged, shell, Farm};

/// What the fake scheduler heard, in order, as these tests compare it.
#[derive(Debug, PartialEq)]
enum Heard {
    Assigned,
    Running,
    /// A result, with the action's exit code and the status code.
    Completed {
        exit_code: i32,
        code: i32,
        prefer_being_idle: bool,
    },
    /// Idle while it had an action: given back.
    GivenBack {
        prefer_being_idle: bool,
    },
    /// Idle with nothing assigned.
    Idle {
        prefer_being_idle: bool,
    },
}

impl From<Seen> for Heard {
    fn from(seen: Seen) -> Heard {
        match seen {
            Seen::Idle { prefer_being_idle } => Heard::Idle { prefer_being_idle },
            Seen::Assigned => Heard::Assigned,
            Seen::Running => Heard::Running,
            Seen::GivenBack { prefer_being_idle } => Heard::GivenBack { prefer_being_idle },
            Seen::Completed {
                response,
                prefer_being_idle,
                ..
            } => Heard::Completed {
                exit_code: response.result.as_ref().map_or(-1, |r| r.exit_code),
                code: code(&response),
                prefer_being_idle,
            },
        }
    }
}

/// A farm, a fake scheduler queuing `scripts` and a one-slot worker with `stop_grace_s`, run until
/// `stop` or `stop_now` fires. Returns what the scheduler hears and the
/// worker's task.
struct Stopping {
    farm: Farm,
    heard: mpsc::UnboundedReceiver<Seen>,
    worker: JoinSet<Result<(), corral_worker::Error>>,
    stop: Option<oneshot::Sender<()>>,
    stop_now: Option<oneshot::Sender<()>>,
    _scheduler: JoinSet<()>,
}

impl Stopping {
    async fn start(scripts: &[&str], stop_grace_s: u64) -> Stopping {
        let farm = Farm::start().await;
        let (root, _) = farm.input_root().await;
        let mut queued = Vec::new();
        for script in scripts {
            let job = farm.job(shell(script), root.clone(), None).await;
            queued.push((job.action_digest, job.action));
        }
        let (queue, heard) = FakeScheduler::new(queued);
        let mut servers = JoinSet::new();
        let scheduler = queue.serve(&mut servers).await;
        let mut cfg = worker_config(
            scheduler,
            farm.storage.clone(),
            &farm.dir.path().join("worker"),
            &farm.runner_socket,
        );
        cfg.stop_grace_s = stop_grace_s;
        let worker = corral_worker::Worker::new(cfg).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (stop_now, stopped_now) = oneshot::channel::<()>();
        let mut task = JoinSet::new();
        task.spawn(async move {
            worker
                .run(
                    async {
                        let _ = stopped.await;
                    },
                    async {
                        let _ = stopped_now.await;
                    },
                )
                .await
        });
        Stopping {
            farm,
            heard,
            worker: task,
            stop: Some(stop),
            stop_now: Some(stop_now),
            _scheduler: servers,
        }
    }

    async fn next(&mut self) -> Heard {
        fake_scheduler::next(&mut self.heard).await.into()
    }

    /// Waits until the first action's command runs.
    async fn until_running(&mut self) {
        // The slot's introduction, then its first request for work.
        for prefer_being_idle in [true, false] {
            assert_eq!(self.next().await, Heard::Idle { prefer_being_idle });
        }
        let first = self.next().await;
        assert_eq!(first, Heard::Assigned);
        while self.next().await != Heard::Running {}
        // The command itself starts a moment after its stage.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Waits for the worker's `run` to return; returns what the scheduler
    /// heard until then.
    async fn stopped(&mut self, within: Duration) -> Vec<Heard> {
        let ended = tokio::time::timeout(within, self.worker.join_next())
            .await
            .unwrap_or_else(|_| panic!("the worker still runs after {within:?}"))
            .expect("the worker's task")
            .expect("the worker did not panic");
        ended.expect("the worker stopped without an error");
        let mut heard = Vec::new();
        while let Ok(h) = self.heard.try_recv().map(Heard::from) {
            if h != Heard::Running {
                heard.push(h);
            }
        }
        heard
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_worker_reports_its_result_preferring_idle_and_takes_nothing_more() {
    if !privileged("a_draining_worker_reports_its_result_preferring_idle_and_takes_nothing_more") {
        return;
    }
    let mut s = Stopping::start(&["sleep 2; exit 3", "exit 4"], 60).await;
    s.until_running().await;
    let _ = s.stop.take().unwrap().send(());
    let heard = s.stopped(Duration::from_secs(20)).await;
    assert_eq!(
        heard,
        [
            Heard::Completed {
                exit_code: 3,
                code: 0,
                prefer_being_idle: true
            },
            // The last report: nothing to give back.
            Heard::Idle {
                prefer_being_idle: true
            },
        ],
        "the second action must stay queued"
    );
    drop(s.stop_now.take());
    let left: Vec<_> = std::fs::read_dir(s.farm.build())
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_now_kills_its_action_and_gives_it_back_preferring_idle() {
    if !privileged("a_worker_stopped_now_kills_its_action_and_gives_it_back_preferring_idle") {
        return;
    }
    let mut s = Stopping::start(&["sleep 30; exit 3"], 60).await;
    s.until_running().await;
    let _ = s.stop.take().unwrap().send(());
    // Draining: the action runs on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.worker.try_join_next().is_none(),
        "stopped without its action"
    );
    let _ = s.stop_now.take().unwrap().send(());
    let heard = s.stopped(Duration::from_secs(10)).await;
    assert_eq!(
        heard,
        [Heard::GivenBack {
            prefer_being_idle: true
        }]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_past_its_stop_grace_gives_its_action_back() {
    if !privileged("a_worker_past_its_stop_grace_gives_its_action_back") {
        return;
    }
    let mut s = Stopping::start(&["sleep 30; exit 3"], 1).await;
    s.until_running().await;
    let _ = s.stop.take().unwrap().send(());
    let heard = s.stopped(Duration::from_secs(10)).await;
    assert_eq!(
        heard,
        [Heard::GivenBack {
            prefer_being_idle: true
        }]
    );
    drop(s.stop_now.take());
}
