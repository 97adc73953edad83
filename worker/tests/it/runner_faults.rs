//! Runner failures are the farm's, not the action's: a runner that dies
//! mid-action costs a retry, not the client's result; a runner that
//! resolves paths under another build directory stops the worker at
//! start, before any action fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::fake_scheduler::{next, FakeScheduler, Seen};
use crate::{code, privileged, shell, Farm, MAX_ENTRIES};

/// A Unix socket forwarding to the runner's, which the test can cut and
/// open again: to the worker, exactly a runner that dies (every
/// connection drops, the socket refuses) and restarts.
struct RunnerProxy {
    path: PathBuf,
    runner: PathBuf,
    tasks: Option<JoinSet<()>>,
}

impl RunnerProxy {
    fn new(path: PathBuf, runner: PathBuf) -> RunnerProxy {
        RunnerProxy {
            path,
            runner,
            tasks: None,
        }
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).unwrap();
        let runner = self.runner.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            // Connections live in this task: aborting it drops them all.
            let mut connections = JoinSet::new();
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let runner = runner.clone();
                connections.spawn(async move {
                    let mut server = UnixStream::connect(runner).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Drops every connection and stops listening.
    async fn kill(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A one-slot worker in `directory` with its runner at `runner`.
pub(crate) fn worker_config(
    scheduler: String,
    storage: String,
    directory: &Path,
    runner: &Path,
) -> corral_worker::Config {
    corral_worker::Config {
        scheduler,
        storage,
        directory: directory.to_owned(),
        cache_max_size_bytes: 1 << 20,
        directory_cache_max_size_bytes: 1 << 20,
        input_root_max_entries: MAX_ENTRIES,
        instance_name_prefix: String::new(),
        worker_id: Default::default(),
        slots: vec![corral_worker::config::SlotGroup {
            concurrency: 1,
            runner: runner.to_owned(),
            platform: [("OSFamily".to_owned(), "linux".to_owned())].into(),
            platform_lists: Default::default(),
            size_class: 0,
        }],
        metrics: None,
        tracing: None,
        limits: Default::default(),
        client_tls: None,
        stop_grace_s: 60,
        images: corral_image::Config {
            enabled: false,
            ..Default::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_dying_mid_action_costs_a_retry_and_the_client_gets_the_real_result() {
    if !privileged("a_runner_dying_mid_action_costs_a_retry_and_the_client_gets_the_real_result") {
        return;
    }
    let farm = Farm::start().await;
    let (root, _) = farm.input_root().await;
    let job = farm
        .job(shell("sleep 2; echo ran; exit 7"), root, None)
        .await;
    let (queue, mut seen) =
        FakeScheduler::new(vec![(job.action_digest.clone(), job.action.clone())]);
    let mut tasks = JoinSet::new();
    let scheduler = queue.serve(&mut tasks).await;
    let mut proxy = RunnerProxy::new(
        farm.dir.path().join("proxy.sock"),
        farm.runner_socket.clone(),
    );
    proxy.start();
    let cfg = worker_config(
        scheduler,
        farm.storage.clone(),
        &farm.dir.path().join("worker"),
        &proxy.path,
    );
    let worker = corral_worker::Worker::new(cfg).unwrap();
    tasks.spawn(async move {
        worker
            .run(std::future::pending(), std::future::pending())
            .await
            .unwrap()
    });

    loop {
        match next(&mut seen).await {
            Seen::Running => break,
            other => assert!(
                matches!(other, Seen::Idle { .. } | Seen::Assigned),
                "{other:?}"
            ),
        }
    }
    // The command sleeps now; the runner dies under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.kill().await;
    let mut given_back = None;
    while given_back.is_none() {
        match next(&mut seen).await {
            Seen::GivenBack { prefer_being_idle } => given_back = Some(prefer_being_idle),
            Seen::Running | Seen::Idle { .. } => {}
            Seen::Completed { response, .. } => {
                panic!("the runner's death reached the client as its result: {response:?}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        given_back,
        Some(true),
        "the worker gave the action back without preferring to be idle while its runner is down"
    );
    // Down a while: the worker asks for no work meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.start();
    let response = loop {
        match next(&mut seen).await {
            Seen::Completed { response, .. } => break response,
            Seen::GivenBack { .. } => panic!("given back again with the runner up"),
            Seen::Idle { .. } | Seen::Assigned | Seen::Running => {}
        }
    };
    assert_eq!(code(&response), 0, "{:?}", response.status);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 7, "the action's own exit code");
    assert_eq!(result.stdout_raw, b"ran\n");
    // The abandoned run's build directory went with it.
    let build = farm.build();
    let left: Vec<_> = std::fs::read_dir(&build).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?} left in {}", build.display());
    proxy.kill().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_with_another_build_directory_stops_the_worker_naming_both() {
    if !privileged("a_runner_with_another_build_directory_stops_the_worker_naming_both") {
        return;
    }
    let farm = Farm::start().await;
    let elsewhere = farm.dir.path().join("elsewhere");
    let cfg = worker_config(
        // Never reached: the worker stops before its slots start.
        "http://127.0.0.1:1".to_owned(),
        farm.storage.clone(),
        &elsewhere,
        &farm.runner_socket,
    );
    let worker = corral_worker::Worker::new(cfg).unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        worker.run(std::future::pending(), std::future::pending()),
    )
    .await
    .expect("the worker stops at once")
    .unwrap_err();
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    for path in [
        elsewhere.join("build"),
        farm.build().canonicalize().unwrap(),
    ] {
        assert!(
            message.contains(&*path.to_string_lossy()),
            "{} not named in: {message}",
            path.display()
        );
    }
    assert!(
        message.contains("does not share the worker's build directory"),
        "{message}"
    );
    // The marker it asked about is not left behind.
    let left: Vec<_> = std::fs::read_dir(elsewhere.join("build"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_that_cannot_be_reached_gives_the_action_back_without_a_result() {
    if !privileged("a_runner_that_cannot_be_reached_gives_the_action_back_without_a_result") {
        return;
    }
    let farm = Farm::start().await;
    let (root, _) = farm.input_root().await;
    let job = farm.job(shell("exit 0"), root, None).await;
    let shared = corral_worker::executor::Shared {
        images: None,
        cas: farm.cas.clone(),
        cache: std::sync::Arc::clone(&farm.cache),
        directories: std::sync::Arc::new(corral_worker::directory_cache::DirectoryCache::new(
            1 << 20,
        )),
        input_root_max_entries: MAX_ENTRIES,
        output_limits: Default::default(),
        metrics: std::sync::Arc::new(corral_worker::metrics::Metrics::new(1)),
    };
    let executor = corral_worker::executor::Executor::new(
        "test-worker".into(),
        farm.build(),
        "gone".into(),
        shared,
        corral_worker::runner_client::RunnerClient::new(&farm.dir.path().join("no-runner.sock")),
    );
    let (stage, _) = tokio::sync::watch::channel(corral_worker::executor::Stage::Started);
    let lost = executor
        .execute(&job, &stage)
        .await
        .expect_err("no runner, no result");
    assert_eq!(lost.0.code(), tonic::Code::Unavailable, "{lost}");
    let left: Vec<_> = std::fs::read_dir(farm.build()).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
}
