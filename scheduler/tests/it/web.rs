//! The scheduler's HTTP port beyond `/metrics`: health and readiness,
//! fetched over HTTP as an orchestrator's probe does.

use tokio::net::TcpListener;

use super::*;

#[tokio::test]
async fn healthz_and_readyz_are_ok_while_storage_answers() {
    let farm = farm().await;
    assert_eq!(
        http_get(farm.metrics, "/healthz").await,
        ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned())
    );
    assert_eq!(
        http_get(farm.metrics, "/readyz").await,
        ("HTTP/1.1 200 OK".to_owned(), "storage: ok\n".to_owned())
    );
}

#[tokio::test]
async fn readyz_is_unavailable_while_storage_does_not_answer() {
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = corral_scheduler::Config {
        storage: format!("http://{closed}"),
        ..corral_scheduler::Config::default()
    };
    let scheduler = Scheduler::builder(cfg).timing(timing()).build().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut server = tokio::task::JoinSet::new();
    server.spawn(corral_metrics::serve(
        corral_metrics::Listener::plaintext(tcp),
        scheduler.http_routes(),
        std::future::pending(),
    ));
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(body.starts_with("storage: Unavailable: "), "{body}");
    // Alive all the same: a restart would not bring storage back.
    assert_eq!(http_get(addr, "/healthz").await.0, "HTTP/1.1 200 OK");
}
