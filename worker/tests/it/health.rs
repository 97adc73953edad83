//! The worker's `/readyz`: not ready while its runner or the scheduler
//! does not answer, and saying which.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

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
