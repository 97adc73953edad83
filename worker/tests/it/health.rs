//! The worker's `/readyz`: not ready while its runner or the scheduler
//! does not answer, and saying which.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::fake_scheduler::FakeScheduler;
use super::{privileged, Farm};

/// GET /readyz on `addr`: the whole response.
async fn readyz(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    response
}

/// Serves `worker`'s HTTP port on a fresh address, in `tasks`.
async fn serve_port(
    worker: &corral_worker::Worker,
    tasks: &mut tokio::task::JoinSet<()>,
) -> std::net::SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tasks.spawn(corral_metrics::serve(
        corral_metrics::Listener::plaintext(tcp),
        worker.http_routes(),
        std::future::pending(),
    ));
    addr
}

/// A worker with one slot on `farm`'s runner and storage, synchronizing
/// with `scheduler`, run as a task of `tasks`; its HTTP port's address.
async fn start_worker(
    farm: &Farm,
    scheduler: String,
    tasks: &mut tokio::task::JoinSet<()>,
) -> std::net::SocketAddr {
    let cfg = corral_worker::Config {
        scheduler,
        storage: farm.storage.clone(),
        directory: farm.dir.path().join("worker"),
        slots: vec![corral_worker::config::SlotGroup {
            concurrency: 1,
            runner: farm.runner_socket.clone(),
            platform: Default::default(),
            platform_lists: Default::default(),
            size_class: 0,
        }],
        ..corral_worker::Config::default()
    };
    let worker = corral_worker::Worker::new(cfg).unwrap();
    let addr = serve_port(&worker, tasks).await;
    tasks.spawn(async move {
        worker
            .run(std::future::pending(), std::future::pending())
            .await
            .unwrap();
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_ok_once_the_runner_answers_and_the_scheduler_answered() {
    if !privileged("readyz_is_ok_once_the_runner_answers_and_the_scheduler_answered") {
        return;
    }
    let farm = Farm::start().await;
    let mut tasks = tokio::task::JoinSet::new();
    let (queue, _seen) = FakeScheduler::new(vec![]);
    let scheduler = queue.serve(&mut tasks).await;
    let addr = start_worker(&farm, scheduler, &mut tasks).await;
    // Ready once a slot's first Synchronize is answered.
    let mut response = String::new();
    for _ in 0..200 {
        response = readyz(addr).await;
        if response.starts_with("HTTP/1.1 200 OK\r\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with("\r\n\r\nrunner: ok\nscheduler: ok\n"),
        "{response}"
    );
}

/// A new idle worker is ready at once, though its scheduler holds every
/// request for work (a long poll with nothing queued): each slot first
/// introduces itself with a Synchronize asking for no work, which is
/// answered at once. Without it `/readyz` waited for the long poll, 50 s.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_is_ready_before_its_first_long_poll_ends() {
    if !privileged("an_idle_worker_is_ready_before_its_first_long_poll_ends") {
        return;
    }
    let farm = Farm::start().await;
    let mut tasks = tokio::task::JoinSet::new();
    let (queue, mut seen) = FakeScheduler::new(vec![]);
    let scheduler = queue.holding_idle_polls().serve(&mut tasks).await;
    let addr = start_worker(&farm, scheduler, &mut tasks).await;
    // The long poll is held: its request reached the scheduler.
    for prefer_being_idle in [true, false] {
        match super::fake_scheduler::next(&mut seen).await {
            super::fake_scheduler::Seen::Idle {
                prefer_being_idle: p,
            } => {
                assert_eq!(p, prefer_being_idle);
            }
            other => panic!("expected Idle, got {other:?}"),
        }
    }
    let response = readyz(addr).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("scheduler: ok\n"), "{response}");
}

#[tokio::test]
async fn readyz_names_a_missing_runner_and_an_unreached_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = corral_worker::Config {
        scheduler: format!("http://{closed}"),
        storage: format!("http://{closed}"),
        directory: dir.path().join("worker"),
        slots: vec![corral_worker::config::SlotGroup {
            concurrency: 1,
            runner: dir.path().join("no-runner.sock"),
            platform: Default::default(),
            platform_lists: Default::default(),
            size_class: 0,
        }],
        ..corral_worker::Config::default()
    };
    let worker = corral_worker::Worker::new(cfg).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut server = tokio::task::JoinSet::new();
    server.spawn(corral_metrics::serve(
        corral_metrics::Listener::plaintext(tcp),
        worker.http_routes(),
        std::future::pending(),
    ));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{response}"
    );
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let lines: Vec<&str> = body.lines().collect();
    assert!(
        lines[0].starts_with("runner: ") && lines[0].contains("no-runner.sock"),
        "{body}"
    );
    assert_eq!(lines[1], "scheduler: no Synchronize answered yet", "{body}");
}
