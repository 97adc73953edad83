//! The worker over TLS: to a scheduler and a storage that both require a
//! client certificate, authenticating to the scheduler with its token.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_auth::certs::{Files, TestPki};
use corral_auth::tls::{ClientCertificate, ClientTls, ServerTls};
use corral_proto::remoteworker::operation_queue_server::OperationQueueServer;
use tokio::task::JoinSet;

use crate::{code, privileged, shell, FakeQueue, Farm, MAX_ENTRIES};

fn server_tls(files: &Files) -> ServerTls {
    ServerTls {
        certificate: files.server_certificate.clone(),
        private_key: files.server_key.clone(),
        client_ca: Some(files.ca.clone()),
        client_certificate: Some(ClientCertificate::Required),
    }
}

/// A worker configuration in `dir` with the runner at `runner`,
/// connecting to `scheduler` and `storage` with `client_tls`.
fn worker_config(
    dir: &Path,
    runner: &Path,
    scheduler: String,
    storage: String,
    client_tls: Option<ClientTls>,
) -> corral_worker::Config {
    corral_worker::Config {
        scheduler,
        storage,
        directory: dir.join("worker"),
        cache_max_size_bytes: 1 << 20,
        directory_cache_max_size_bytes: 1 << 20,
        input_root_max_entries: MAX_ENTRIES,
        instance_name_prefix: String::new(),
        slots: vec![corral_worker::config::SlotGroup {
            concurrency: 1,
            runner: runner.to_owned(),
            platform: [("OSFamily".to_owned(), "linux".to_owned())].into(),
            size_class: 0,
        }],
        metrics: None,
        limits: Default::default(),
        client_tls,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn over_mtls_the_worker_runs_an_action_and_shows_its_token_to_the_scheduler() {
    if !privileged("over_mtls_the_worker_runs_an_action_and_shows_its_token_to_the_scheduler") {
        return;
    }
    let farm = Farm::start().await;
    let files = TestPki::new().write(farm.dir.path()).unwrap();
    let token = farm.dir.path().join("worker.token");
    std::fs::write(&token, "worker-token\n").unwrap();
    let mut tasks = JoinSet::new();

    // Storage over mTLS: a front whose backend is the farm's storage.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let storage = format!("https://{}", listener.local_addr().unwrap());
    let storage_cfg = corral_storage::Config {
        backend: corral_storage::config::Backend::Remote {
            endpoint: farm.storage.clone(),
            instance_name: String::new(),
            cache: None,
        },
        tls: Some(server_tls(&files)),
        ..corral_storage::Config::default()
    };
    tasks.spawn(async move {
        corral_storage::run(storage_cfg, listener, std::future::pending())
            .await
            .unwrap();
    });

    // The scheduler over mTLS, recording the authorization it is shown.
    let (root, _) = farm.input_root().await;
    let mut command = shell("cat link > out.txt");
    command.output_paths = vec!["out.txt".into()];
    let job = farm.job(command, root, None).await;
    let (done, mut completed) = tokio::sync::mpsc::unbounded_channel();
    let queue = FakeQueue {
        pending: Mutex::new(Some((job.action_digest.clone(), job.action.clone()))),
        done,
    };
    let shown = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = {
        let shown = Arc::clone(&shown);
        move |request: tonic::Request<()>| {
            let value = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            shown.lock().unwrap().push(value);
            Ok(request)
        }
    };
    let tls = server_tls(&files).load("tls").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheduler = format!("https://{}", listener.local_addr().unwrap());
    tasks.spawn(async move {
        corral_auth::tls::server(tonic::transport::Server::builder(), Some(&tls))
            .unwrap()
            .layer(tonic::service::InterceptorLayer::new(record))
            .add_service(OperationQueueServer::new(queue))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let client_tls = ClientTls {
        ca: files.ca.clone(),
        certificate: Some(files.client_certificate.clone()),
        private_key: Some(files.client_key.clone()),
        token_file: Some(token),
    };
    let cfg = worker_config(
        farm.dir.path(),
        &farm.runner_socket,
        scheduler,
        storage,
        Some(client_tls),
    );
    let worker = corral_worker::Worker::new(cfg).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tasks.spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let (_, response) = tokio::time::timeout(Duration::from_secs(60), completed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code(&response), 0, "{:?}", response.status);
    let result = response.result.unwrap();
    // Uploaded through the TLS front, readable from the storage behind it.
    assert_eq!(farm.read(&result.output_files[0].digest).await, b"deep\n");
    let shown = shown.lock().unwrap().clone();
    assert!(!shown.is_empty());
    assert!(
        shown.iter().all(|v| v == "Bearer worker-token"),
        "{shown:?}"
    );
    let _ = stop.send(());
}

#[test]
fn https_endpoints_without_client_tls_stop_the_worker_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = worker_config(
        dir.path(),
        &dir.path().join("runner.sock"),
        "https://scheduler:8980".into(),
        "http://storage:8980".into(),
        None,
    );
    let err = corral_worker::Worker::new(cfg).err().unwrap().to_string();
    assert_eq!(err, "scheduler: https://scheduler:8980 needs [client_tls]");
}
