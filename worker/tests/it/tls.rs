//! The worker over TLS: to a scheduler and a storage that both require a
//! client certificate, authenticating to the scheduler with its token.
//! The fake scheduler also shows that handlers see the client's
//! certificate (`Request::peer_certs`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use corral_auth::certs::{Files, TestPki};
use corral_auth::tls::{ClientCertificate, ClientTls, ServerTls};
use corral_proto::remoteworker::operation_queue_server::OperationQueueServer;
use tokio::task::JoinSet;

use crate::fake_scheduler::{self, FakeScheduler};
use crate::{code, privileged, shell, Farm, MAX_ENTRIES};

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
        client_tls,
        stop_grace_s: 60,
        images: corral_image::Config {
            enabled: false,
            ..Default::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn over_mtls_the_worker_runs_an_action_and_shows_its_token_to_the_scheduler() {
    if !privileged("over_mtls_the_worker_runs_an_action_and_shows_its_token_to_the_scheduler") {
        return;
    }
    let farm = Farm::start().await;
    let files = TestPki::new().write(farm.dir.path()).unwrap();
    // The worker's token: a JWT that storage verifies (a daemon with no
    // token keys refuses a call that shows a token).
    let secret = farm.dir.path().join("token.key");
    std::fs::write(&secret, "a secret of at least thirty-two bytes\n").unwrap();
    let now = corral_proto::time::unix_now();
    let claims = serde_json::json!({
        "sub": "worker", "iss": "test", "aud": "corral", "exp": now + 3600,
    });
    let jwt =
        corral_auth::token::sign_hs256(b"a secret of at least thirty-two bytes", &claims).unwrap();
    let token = farm.dir.path().join("worker.token");
    std::fs::write(&token, format!("{jwt}\n")).unwrap();
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
        auth: Some(corral_auth::AuthConfig {
            allow_anonymous: false,
            client_certificates: true,
            tokens: Some(corral_auth::token::TokenConfig {
                jwks_file: None,
                public_key_files: Vec::new(),
                hs256_secret_file: Some(secret),
                issuers: vec!["test".into()],
                audiences: vec!["corral".into()],
                leeway_s: 30,
            }),
            grants: None,
        }),
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
    let (queue, mut seen) =
        FakeScheduler::new(vec![(job.action_digest.clone(), job.action.clone())]);
    let shown = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = {
        let shown = Arc::clone(&shown);
        move |request: tonic::Request<()>| {
            let value = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            // The client certificate reaches the server's handlers too:
            // what identities from mTLS are read from.
            let certs = request.peer_certs().map_or(0, |c| c.len());
            shown
                .lock()
                .unwrap()
                .push(format!("{value}; certs={certs}"));
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
    let mut cfg = worker_config(
        farm.dir.path(),
        &farm.runner_socket,
        scheduler,
        storage,
        Some(client_tls),
    );
    // The metrics page over HTTPS, without client certificates.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    cfg.metrics = Some(corral_worker::config::MetricsConfig {
        listen: metrics,
        tls: Some(ServerTls {
            client_ca: None,
            client_certificate: None,
            ..server_tls(&files)
        }),
    });
    let worker = corral_worker::Worker::new(cfg).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tasks.spawn(async move {
        worker
            .run(std::future::pending(), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let (_, response) = fake_scheduler::completed(&mut seen).await;
    assert_eq!(code(&response), 0, "{:?}", response.status);
    let result = response.result.unwrap();
    // Uploaded through the TLS front, readable from the storage behind it.
    assert_eq!(farm.read(&result.output_files[0].digest).await, b"deep\n");
    let shown = shown.lock().unwrap().clone();
    assert!(!shown.is_empty());
    assert!(
        shown.iter().all(|v| *v == format!("Bearer {jwt}; certs=1")),
        "{shown:?}"
    );
    let page = https_get(metrics, &files.ca).await;
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        page.contains("corral_worker_actions_total{code=\"OK\"} 1"),
        "{page}"
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

/// GET /metrics over HTTPS on `addr`, trusting `ca`: the whole response.
async fn https_get(addr: std::net::SocketAddr, ca: &Path) -> String {
    use rustls_pki_types::pem::PemObject as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls_pki_types::CertificateDer::from_pem_file(ca).unwrap();
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    // The page closes the connection after the body; a close without
    // close_notify is no error here.
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8(response).unwrap()
}
