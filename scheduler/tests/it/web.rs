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
    let closed = free_address().await;
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

/// A farm with one action of each kind, as the web UI shows them.
struct Shown {
    farm: Farm,
    /// Completed by worker 1, with stdout in storage; its command line
    /// holds HTML.
    finished: Digest,
    finished_name: String,
    command: Vec<u8>,
    /// Held by worker 2.
    executing: Digest,
    /// For macOS, which no worker serves.
    queued: Digest,
    _streams: Vec<Streaming<Operation>>,
}

const SCRIPT: &str = "<script>alert(1)</script>";
const STDOUT: &[u8] = b"built <b>ok</b>\n";

async fn shown() -> Shown {
    let farm = farm().await;
    let finished = farm.action(&["echo", SCRIPT], LINUX).await;
    let command = Command {
        arguments: vec!["echo".to_owned(), SCRIPT.to_owned()],
        output_paths: vec!["out".into()],
        ..Default::default()
    }
    .encode_to_vec();
    let mut stream = farm.execute(&finished, 0).await;
    let finished_name = stream.next().await.unwrap().unwrap().name;
    farm.upload(&[STDOUT.to_vec()]).await;
    let mut worker = farm.worker("1", LINUX);
    let exec = worker.take().await.unwrap();
    assert_eq!(exec.action_digest.as_ref(), Some(&finished));
    let result = ActionResult {
        exit_code: 3,
        stdout_digest: Some(digest_of(STDOUT)),
        execution_metadata: Some(corral_proto::reapi::ExecutedActionMetadata {
            worker: "host-1/slot-1".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    worker.complete_with(&finished, result).await;
    rest(&mut stream).await;

    let executing = farm.action(&["sleep", "100"], LINUX).await;
    let executing_stream = farm.execute(&executing, 0).await;
    let mut worker = farm.worker("2", LINUX);
    assert!(worker.take().await.is_some());
    worker.running(&executing).await;
    let queued = farm.action(&["sw_vers"], MACOS).await;
    let queued_stream = farm.execute(&queued, 0).await;
    Shown {
        farm,
        finished,
        finished_name,
        command,
        executing,
        queued,
        _streams: vec![executing_stream, queued_stream],
    }
}

fn href(kind: &str, digest: &Digest) -> String {
    format!("/{kind}/{}-{}", digest.hash, digest.size_bytes)
}

#[tokio::test]
async fn the_home_page_shows_queues_workers_and_recent_operations() {
    let shown = shown().await;
    let started = std::time::Instant::now();
    let (status, page) = http_get(shown.farm.metrics, "/").await;
    eprintln!("/ rendered and fetched in {:?}", started.elapsed());
    assert_eq!(status, "HTTP/1.1 200 OK", "{page}");
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    // Both queues (size class, queued, executing): linux with its two
    // workers, one executing; macOS with one queued and no worker.
    assert!(
        page.contains("<code>OSFamily=linux</code></td><td>0</td><td>0</td><td>1</td>"),
        "{page}"
    );
    assert!(
        page.contains("<code>OSFamily=macos</code></td><td>0</td><td>1</td><td>0</td>"),
        "{page}"
    );
    // Worker 2 and what it runs, with links to its operation and action.
    assert!(page.contains("<code>slot=2</code>"), "{page}");
    assert!(page.contains(&href("action", &shown.executing)), "{page}");
    // ... and since when: a time, then how long ago.
    let workers = page.split("<h2>Workers</h2>").nth(1).unwrap();
    let workers = workers.split("<h2>").next().unwrap();
    assert!(workers.contains("<th>since</th>"), "{page}");
    assert!(workers.contains("Z ("), "{page}");
    // Every operation, the finished one with its exit code.
    assert!(
        page.contains(&format!("/operation/{}", shown.finished_name)),
        "{page}"
    );
    assert!(page.contains("completed, exit code 3"), "{page}");
    assert!(page.contains(&href("action", &shown.queued)), "{page}");
    assert!(page.contains("executing"), "{page}");
}

#[tokio::test]
async fn the_operation_page_shows_the_worker_exit_code_and_stdout() {
    let shown = shown().await;
    let path = format!("/operation/{}", shown.finished_name);
    let started = std::time::Instant::now();
    let (status, page) = http_get(shown.farm.metrics, &path).await;
    eprintln!("{path} rendered and fetched in {:?}", started.elapsed());
    assert_eq!(status, "HTTP/1.1 200 OK", "{page}");
    assert!(page.contains(&shown.finished_name), "{page}");
    assert!(page.contains("<code>host-1/slot-1</code>"), "{page}");
    assert!(page.contains("<th>exit code</th><td>3</td>"), "{page}");
    // stdout read from storage, escaped.
    assert!(page.contains("built &lt;b&gt;ok&lt;/b&gt;"), "{page}");
    assert!(page.contains(&href("action", &shown.finished)), "{page}");
    assert_eq!(
        http_get(shown.farm.metrics, "/operation/operations/none")
            .await
            .0,
        "HTTP/1.1 404 Not Found"
    );
}

#[tokio::test]
async fn the_action_page_shows_the_command_line_escaped_and_the_input_root() {
    let shown = shown().await;
    let path = href("action", &shown.finished);
    let started = std::time::Instant::now();
    let (status, page) = http_get(shown.farm.metrics, &path).await;
    eprintln!("{path} rendered and fetched in {:?}", started.elapsed());
    assert_eq!(status, "HTTP/1.1 200 OK", "{page}");
    // The command line as text: the script never reaches the page as HTML.
    assert!(
        page.contains("echo '&lt;script&gt;alert(1)&lt;/script&gt;'"),
        "{page}"
    );
    assert!(!page.contains(SCRIPT), "{page}");
    assert!(
        page.contains(&href("blob", &digest_of(&shown.command))),
        "{page}"
    );
    assert!(page.contains("<code>OSFamily=linux</code>"), "{page}");
    // The empty input root, and no cached result (nothing wrote one).
    assert!(page.contains("Empty."), "{page}");
    assert!(page.contains("the Action Cache has no result"), "{page}");
    // The Command downloads as it was uploaded.
    let (status, body) = http_get(
        shown.farm.metrics,
        &href("blob", &digest_of(&shown.command)),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body.as_bytes(), shown.command.as_slice());
    let (status, _) = http_get(shown.farm.metrics, "/action/nothex-1").await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
}

/// A blob past one gRPC message (4 MiB) downloads whole: it streams from
/// storage through ByteStream, not one batch read.
#[tokio::test]
async fn a_blob_larger_than_a_grpc_message_downloads_whole() {
    let farm = farm().await;
    let blob: Vec<u8> = b"0123456789abcdef\n".repeat(5 << 20 >> 4);
    let digest = digest_of(&blob);
    corral_cas_client::CasClient::from_channel(
        corral_auth::channel::Connector::plaintext().wrap(farm.storage.clone()),
    )
    .upload(vec![(digest.clone(), blob.clone())])
    .await
    .unwrap();
    let (status, body) = http_get(farm.metrics, &href("blob", &digest)).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body.len(), blob.len());
    assert!(body.as_bytes() == blob.as_slice(), "the download differs");
    let missing = digest_of(b"never uploaded");
    let (status, _) = http_get(farm.metrics, &href("blob", &missing)).await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn with_auth_the_web_ui_refuses_callers_without_a_client_certificate() {
    let farm = farm_with_authorizer(corral_auth::Authorizer::with_grants(
        corral_auth::Grants::parse(
            "[[grant]]\nwho = [\"anonymous\"]\ninstance_names = [\"*\"]\npermissions = [\"execute\"]\n",
        )
        .unwrap(),
    ))
    .await;
    for path in ["/", "/operation/operations/x", "/action/ab-1", "/blob/ab-1"] {
        let (status, page) = http_get(farm.metrics, path).await;
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "{path}");
        assert!(page.contains("client certificate"), "{page}");
    }
    // Metrics and health stay open: they name no tenant's work.
    assert_eq!(
        http_get(farm.metrics, "/healthz").await.0,
        "HTTP/1.1 200 OK"
    );
}

/// With `[auth]`, the caller of the UI is the client certificate it
/// presented on the HTTPS port, and the grants decide what it sees.
#[tokio::test]
async fn with_auth_a_certificate_sees_only_the_instance_names_its_grants_allow() {
    let dir = tempfile::tempdir().unwrap();
    let files = corral_auth::certs::TestPki::new()
        .write(dir.path())
        .unwrap();
    let grants = corral_auth::Grants::parse(
        r#"
[[grant]]
who = ["anonymous"]
instance_names = ["*"]
permissions = ["execute"]

[[grant]]
who = ["cert:cn=client"]
instance_names = ["team-a"]
permissions = ["operations-all", "cas-read"]
"#,
    )
    .unwrap();
    let mut servers = tokio::task::JoinSet::new();
    let storage_url = start_storage(&mut servers, corral_storage::Config::default()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let metrics = free_address().await;
    let cfg = corral_scheduler::Config {
        storage: storage_url.clone(),
        metrics: Some(corral_scheduler::config::MetricsConfig {
            listen: metrics,
            tls: Some(crate::tls::server_tls(&files)),
        }),
        ..corral_scheduler::Config::default()
    };
    let scheduler = Scheduler::builder(cfg)
        .timing(timing())
        .authorizer(corral_auth::Authorizer::with_grants(grants))
        .build()
        .unwrap();
    start_scheduler(&mut servers, listener, scheduler);
    let farm = Farm::of(servers, &url, &storage_url, metrics);
    let mut names = Vec::new();
    let mut streams = Vec::new();
    let mut digests = Vec::new();
    for team in ["team-a", "team-b"] {
        let digest = farm.action(&["echo", team], MACOS).await;
        let mut stream = farm
            .execute_request(ExecuteRequest {
                instance_name: team.to_owned(),
                action_digest: Some(digest.clone()),
                ..Default::default()
            })
            .await;
        names.push(stream.next().await.unwrap().unwrap().name);
        streams.push(stream);
        digests.push(digest);
    }
    let get = |path: String| {
        let files = &files;
        async move { crate::tls::https_get(metrics, files, &path).await }
    };
    let (status, page) = get("/".to_owned()).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{page}");
    assert!(
        page.contains(&names[0]),
        "team-a's operation is listed: {page}"
    );
    assert!(
        !page.contains(&names[1]),
        "team-b's operation is not: {page}"
    );
    assert!(!page.contains(&digests[1].hash), "{page}");
    let action = |i: usize, team: &str| {
        format!(
            "/action/{team}/{}-{}",
            digests[i].hash, digests[i].size_bytes
        )
    };
    let (status, page) = get(action(0, "team-a")).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{page}");
    assert!(page.contains("echo team-a"), "{page}");
    let (status, page) = get(action(1, "team-b")).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden", "{page}");
    assert!(page.contains("cas-read"), "{page}");
    let (status, _) = get(format!("/operation/{}", names[1])).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
}
