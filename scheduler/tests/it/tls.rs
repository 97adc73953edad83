//! The scheduler over TLS: its port, its connection to storage (itself
//! over mTLS), and its metrics page over HTTPS.

use std::path::Path;
use std::sync::Arc;

use corral_auth::certs::{Files, TestPki};
use corral_auth::channel::Connector;
use corral_auth::tls::{ClientCertificate, ClientTls, ServerTls};
use corral_proto::reapi::capabilities_client::CapabilitiesClient;
use corral_proto::reapi::GetCapabilitiesRequest;
use tokio::net::TcpListener;

/// `[tls]` with mTLS required, from `files`.
pub(crate) fn server_tls(files: &Files) -> ServerTls {
    ServerTls {
        certificate: files.server_certificate.clone(),
        private_key: files.server_key.clone(),
        client_ca: Some(files.ca.clone()),
        client_certificate: Some(ClientCertificate::Required),
    }
}

/// `[client_tls]` with the client certificate of `files`.
fn client_tls(files: &Files) -> ClientTls {
    ClientTls {
        ca: files.ca.clone(),
        certificate: Some(files.client_certificate.clone()),
        private_key: Some(files.client_key.clone()),
        token_file: None,
    }
}

/// GET /metrics over HTTPS on `addr`, showing the client certificate of
/// `files`: the status line and the body.
async fn https_get_metrics(addr: std::net::SocketAddr, files: &Files) -> (String, String) {
    https_get(addr, files, "/metrics").await
}

/// GET `path` over HTTPS on `addr`, showing the client certificate of
/// `files`: the status line and the body.
pub(crate) async fn https_get(
    addr: std::net::SocketAddr,
    files: &Files,
    path: &str,
) -> (String, String) {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let pem = |path: &Path| std::fs::read(path).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&pem(&files.ca)).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(&pem(&files.client_certificate)).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(&pem(&files.client_key)).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    // The server closes after the response; rustls may see the TCP close
    // without close_notify, which is fine once the body is in.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test]
async fn over_tls_clients_reach_the_scheduler_which_reaches_storage_and_metrics_are_https() {
    let dir = tempfile::tempdir().unwrap();
    let files = TestPki::new().write(dir.path()).unwrap();
    let mut servers = tokio::task::JoinSet::new();

    let storage_url = crate::start_storage(
        &mut servers,
        corral_storage::Config {
            backend: corral_storage::config::Backend::Memory {
                max_size_bytes: 1 << 20,
            },
            tls: Some(server_tls(&files)),
            ..corral_storage::Config::default()
        },
    )
    .await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let metrics_listen = crate::free_address().await;
    let cfg = corral_scheduler::Config {
        storage: storage_url,
        tls: Some(server_tls(&files)),
        client_tls: Some(client_tls(&files)),
        // No [metrics.tls]: the page takes the scheduler's [tls].
        metrics: Some(corral_scheduler::config::MetricsConfig {
            listen: metrics_listen,
            tls: None,
        }),
        ..corral_scheduler::Config::default()
    };
    cfg.validate().unwrap();
    let scheduler = corral_scheduler::Scheduler::builder(cfg)
        .timing(crate::timing())
        .build()
        .unwrap();
    crate::start_scheduler(&mut servers, listener, scheduler);

    // Capabilities come from storage: the scheduler asks it over mTLS.
    let connector = Connector::new(Some(&client_tls(&files))).unwrap();
    let channel = connector.connect_lazy("scheduler", &url).unwrap();
    let caps = CapabilitiesClient::new(channel)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        caps.cache_capabilities.unwrap().max_batch_total_size_bytes,
        4 << 20
    );
    assert!(caps.execution_capabilities.unwrap().exec_enabled);

    // A client without a certificate is turned away at the handshake.
    let anonymous = Connector::new(Some(&ClientTls {
        certificate: None,
        private_key: None,
        ..client_tls(&files)
    }))
    .unwrap();
    let channel = anonymous.connect_lazy("scheduler", &url).unwrap();
    let refused = CapabilitiesClient::new(channel)
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("CertificateRequired"),
        "{refused:?}"
    );

    // The metrics page, over HTTPS with the client certificate.
    let mut page = None;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(metrics_listen).await.is_ok() {
            page = Some(https_get_metrics(metrics_listen, &files).await);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = page.expect("the metrics page listens");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("# TYPE corral_scheduler_"), "{body}");
    // Plain HTTP to the same port gets no page.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain_http_get(metrics_listen),
    )
    .await
    .unwrap();
    assert!(!plain.contains("200 OK"), "{plain}");
}

/// What plain HTTP to `addr` gets back (TLS alert bytes, or nothing).
async fn plain_http_get(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n")
        .await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn a_storage_endpoint_must_agree_with_client_tls_naming_the_key() {
    let cfg = corral_scheduler::Config {
        storage: "https://storage:8980".into(),
        ..corral_scheduler::Config::default()
    };
    assert_eq!(
        cfg.validate().unwrap_err().to_string(),
        "storage: https://storage:8980 needs [client_tls]"
    );
    let cfg = corral_scheduler::Config {
        client_tls: Some(ClientTls {
            ca: "ca.crt".into(),
            certificate: None,
            private_key: None,
            token_file: None,
        }),
        ..corral_scheduler::Config::default()
    };
    let text = cfg.validate().unwrap_err().to_string();
    assert!(
        text.starts_with("storage: http://127.0.0.1:8980 is plaintext"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unreadable_certificate_stops_start_up_naming_the_key() {
    let cfg = corral_scheduler::Config {
        tls: Some(ServerTls {
            certificate: "/nonexistent/server.crt".into(),
            private_key: "/nonexistent/server.key".into(),
            client_ca: None,
            client_certificate: None,
        }),
        ..corral_scheduler::Config::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = corral_scheduler::run(cfg, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls.certificate"), "{err}");
    assert!(err.contains("/nonexistent/server.crt"), "{err}");
}
