//! The worker against an in-process storage (memory backend), a real
//! runner, and a fake scheduler: inputs laid out, commands run in the
//! sandbox, outputs and failures reported as REAPI clients expect.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

mod crafted;
mod fake_scheduler;
mod full_disk;
mod health;
mod images;
mod runner_faults;
mod stopping;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_proto::reapi::action_cache_client::ActionCacheClient;
use corral_proto::reapi::command::EnvironmentVariable;
use corral_proto::reapi::{
    Action, ActionResult, Command, Digest, Directory, DirectoryNode, ExecuteResponse, FileNode,
    GetActionResultRequest, SymlinkNode, Tree,
};
use corral_worker::cas_client::{digest_of, Blob, CasClient};
use corral_worker::directory_cache::DirectoryCache;
use corral_worker::executor::{Executor, Job, Shared, Stage};
use corral_worker::file_cache::FileCache;
use corral_worker::input_root::materialize;
use corral_worker::metrics::Metrics;
use corral_worker::runner_client::RunnerClient;
use prost::Message;
use tokio::task::JoinSet;
use tonic::Code;

/// `input_root_max_entries` of the tests' layouts: the default, far past
/// any tree here.
const MAX_ENTRIES: u64 = 1_000_000;

// The runner's sandbox maps ids and writes cgroups: root only.
use corral_testkit::privileged;
use fake_scheduler::FakeScheduler;

/// Starts an in-process storage (memory backend) on loopback; returns
/// its endpoint.
async fn start_storage(servers: &mut JoinSet<()>) -> String {
    start_storage_isolating(servers, false).await
}

/// The same, with `isolate_instances` as given.
async fn start_storage_isolating(servers: &mut JoinSet<()>, isolate_instances: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let storage = format!("http://{}", listener.local_addr().unwrap());
    let cfg = corral_storage::config::Config {
        backend: corral_storage::config::Backend::Memory {
            max_size_bytes: 64 << 20,
        },
        isolate_instances,
        ..Default::default()
    };
    servers.spawn(async move {
        corral_storage::run(cfg, listener, std::future::pending())
            .await
            .unwrap();
    });
    storage
}

/// Storage, a runner, and an executor over them, in one test.
struct Farm {
    dir: tempfile::TempDir,
    storage: String,
    cas: CasClient,
    cache: Arc<FileCache>,
    executor: Executor,
    runner_socket: PathBuf,
    _servers: JoinSet<()>,
}

impl Farm {
    async fn start() -> Farm {
        Farm::start_with(corral_worker::config::Limits::default()).await
    }

    /// A farm whose worker has these `[limits]`.
    async fn start_with(output_limits: corral_worker::config::Limits) -> Farm {
        Farm::start_full(output_limits, false).await
    }

    /// A farm whose worker runs container images, its store under
    /// `build/images`, in a 0700 directory closed to the actions' ids
    /// (the sandbox takes the image with the runner's privilege).
    async fn start_with_images() -> Farm {
        Farm::start_full(corral_worker::config::Limits::default(), true).await
    }

    async fn start_full(output_limits: corral_worker::config::Limits, images: bool) -> Farm {
        let dir = tempfile::tempdir().unwrap();
        let mut servers = JoinSet::new();
        let storage = start_storage(&mut servers).await;
        let worker_dir = dir.path().join("worker");
        let build = worker_dir.join("build");
        std::fs::create_dir_all(&build).unwrap();
        let runner_socket = dir.path().join("runner.sock");
        let runner_cfg = corral_runner::Config {
            listen_path: runner_socket.clone(),
            build_directory: build.clone(),
            ..Default::default()
        };
        servers.spawn(async move {
            corral_runner::run(runner_cfg, std::future::pending())
                .await
                .unwrap();
        });
        for _ in 0..500 {
            if runner_socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cas = CasClient::new(&storage).unwrap();
        let cache = Arc::new(FileCache::open(worker_dir.join("cache"), 1 << 30).unwrap());
        let images = images.then(|| {
            corral_image::ImageStore::open(build.join("images"), &corral_image::Config::default())
                .unwrap()
        });
        let shared = Shared {
            images,
            cas: cas.clone(),
            cache: Arc::clone(&cache),
            directories: Arc::new(DirectoryCache::new(64 << 20)),
            input_root_max_entries: MAX_ENTRIES,
            output_limits,
            metrics: Arc::new(Metrics::new(1)),
        };
        let executor = Executor::new(
            "test-worker".into(),
            build,
            "t".into(),
            shared,
            RunnerClient::new(&runner_socket),
        );
        Farm {
            dir,
            storage,
            cas,
            cache,
            executor,
            runner_socket,
            _servers: servers,
        }
    }

    fn build(&self) -> PathBuf {
        self.dir.path().join("worker").join("build")
    }

    async fn put_message(&self, m: &impl Message) -> Digest {
        put_message(&self.cas, m).await
    }

    async fn read(&self, digest: &Option<Digest>) -> Vec<u8> {
        self.cas.read(digest.as_ref().unwrap()).await.unwrap()
    }

    /// Uploads the command and action; returns the job.
    async fn job(&self, command: Command, root: Digest, timeout_s: Option<i64>) -> Job {
        let action = Action {
            command_digest: Some(self.put_message(&command).await),
            input_root_digest: Some(root),
            timeout: timeout_s.map(|s| corral_proto::protobuf::Duration {
                seconds: s,
                nanos: 0,
            }),
            ..Default::default()
        };
        Job {
            action_digest: self.put_message(&action).await,
            action,
            instance_name: String::new(),
            queued: None,
            digest_function: 0,
            inline_stdout: false,
            inline_stderr: false,
            trace_context: Default::default(),
        }
    }

    /// The Action Cache entry of `action`, as a client reads it.
    async fn cached_result(&self, action: &Digest) -> ActionResult {
        ActionCacheClient::connect(self.storage.clone())
            .await
            .unwrap()
            .get_action_result(GetActionResultRequest {
                action_digest: Some(action.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn execute(&self, job: &Job) -> ExecuteResponse {
        let (stage, _) = tokio::sync::watch::channel(Stage::Started);
        self.executor.execute(job, &stage).await.unwrap()
    }

    fn build_is_empty(&self) -> bool {
        std::fs::read_dir(self.build()).unwrap().next().is_none()
    }

    async fn input_root(&self) -> (Digest, usize) {
        input_root(&self.cas).await
    }
}

async fn put(cas: &CasClient, data: &[u8]) -> Digest {
    let digest = digest_of(data);
    cas.upload(vec![(digest.clone(), data.to_vec())])
        .await
        .unwrap();
    digest
}

async fn put_message(cas: &CasClient, m: &impl Message) -> Digest {
    put(cas, &m.encode_to_vec()).await
}

/// An input root with nested and empty directories, an executable and a
/// symlink; returns its digest and the number of distinct files. Three of
/// its Directories are read from the CAS: the empty one never is, its
/// digest says it all.
async fn input_root(cas: &CasClient) -> (Digest, usize) {
    let deep = Directory {
        files: vec![FileNode {
            name: "deep.txt".into(),
            digest: Some(put(cas, b"deep\n").await),
            ..Default::default()
        }],
        ..Default::default()
    };
    let data = Directory {
        directories: vec![DirectoryNode {
            name: "nested".into(),
            digest: Some(put_message(cas, &deep).await),
        }],
        ..Default::default()
    };
    let empty = Directory::default();
    let root = Directory {
        files: vec![FileNode {
            name: "tool.sh".into(),
            digest: Some(put(cas, b"#!/bin/sh\necho hi from tool\n").await),
            is_executable: true,
            ..Default::default()
        }],
        directories: vec![
            DirectoryNode {
                name: "data".into(),
                digest: Some(put_message(cas, &data).await),
            },
            DirectoryNode {
                name: "empty".into(),
                digest: Some(put_message(cas, &empty).await),
            },
        ],
        symlinks: vec![SymlinkNode {
            name: "link".into(),
            target: "data/nested/deep.txt".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    (put_message(cas, &root).await, 2)
}

/// Checks a layout of [`input_root`] at `dest`.
fn assert_input_root_at(dest: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let tool = dest.join("tool.sh");
    assert_eq!(
        std::fs::read(&tool).unwrap(),
        b"#!/bin/sh\necho hi from tool\n"
    );
    assert_eq!(
        std::fs::metadata(&tool).unwrap().permissions().mode() & 0o777,
        0o555
    );
    let deep = dest.join("data/nested/deep.txt");
    assert_eq!(std::fs::read(&deep).unwrap(), b"deep\n");
    assert_eq!(
        std::fs::metadata(&deep).unwrap().permissions().mode() & 0o777,
        0o444
    );
    assert!(dest.join("empty").is_dir());
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("data/nested/deep.txt")
    );
}

fn shell(script: &str) -> Command {
    Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        environment_variables: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        ..Default::default()
    }
}

const SCRIPT: &str = "set -e
test -x ./tool.sh
test -d empty
./tool.sh > out/tool.txt
cat link > out/copy.txt
mkdir -p outdir/sub
echo x > outdir/sub/f
ln -s ../copy.txt outdir/l
printf '#!/bin/sh\\n' > out/run.sh
chmod +x out/run.sh
ln -s copy.txt out/sym
echo to-stdout
echo to-stderr >&2";

fn code(response: &ExecuteResponse) -> i32 {
    response.status.as_ref().map_or(0, |s| s.code)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_runs_and_every_output_kind_is_reported() {
    if !privileged("an_action_runs_and_every_output_kind_is_reported") {
        return;
    }
    let farm = Farm::start().await;
    let (root, files) = farm.input_root().await;
    let mut command = shell(SCRIPT);
    command.output_paths = [
        "out/tool.txt",
        "out/copy.txt",
        "out/run.sh",
        "out/sym",
        "outdir",
        "out/never-made",
    ]
    .map(String::from)
    .to_vec();
    let job = farm.job(command, root.clone(), None).await;
    let response = farm.execute(&job).await;
    assert_eq!(code(&response), 0, "{:?}", response.status);
    let result = response.result.clone().unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(farm.read(&result.stdout_digest).await, b"to-stdout\n");
    assert_eq!(farm.read(&result.stderr_digest).await, b"to-stderr\n");
    assert!(
        result.stdout_raw.is_empty() && result.stderr_raw.is_empty(),
        "nobody asked for output inline"
    );

    let file = |path: &str| {
        result
            .output_files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path} in {:?}", result.output_files))
            .clone()
    };
    assert_eq!(
        farm.read(&file("out/tool.txt").digest).await,
        b"hi from tool\n"
    );
    assert_eq!(farm.read(&file("out/copy.txt").digest).await, b"deep\n");
    assert!(file("out/run.sh").is_executable);
    assert!(!file("out/copy.txt").is_executable);
    assert_eq!(result.output_files.len(), 3);
    assert_eq!(result.output_symlinks.len(), 1);
    assert_eq!(result.output_symlinks[0].path, "out/sym");
    assert_eq!(result.output_symlinks[0].target, "copy.txt");

    assert_eq!(result.output_directories.len(), 1);
    let outdir = &result.output_directories[0];
    let tree = Tree::decode(farm.read(&outdir.tree_digest).await.as_slice()).unwrap();
    let tree_root = tree.root.clone().unwrap();
    assert_eq!(
        Some(digest_of(&tree_root.encode_to_vec())),
        outdir.root_directory_digest
    );
    assert_eq!(tree_root.directories[0].name, "sub");
    assert_eq!(tree_root.symlinks[0].name, "l");
    assert_eq!(tree_root.symlinks[0].target, "../copy.txt");
    assert_eq!(tree.children.len(), 1);
    assert_eq!(farm.read(&tree.children[0].files[0].digest).await, b"x\n");

    let meta = result.execution_metadata.clone().unwrap();
    assert_eq!(meta.worker, "test-worker");
    for t in [
        &meta.worker_start_timestamp,
        &meta.input_fetch_start_timestamp,
        &meta.input_fetch_completed_timestamp,
        &meta.execution_start_timestamp,
        &meta.execution_completed_timestamp,
        &meta.output_upload_start_timestamp,
        &meta.output_upload_completed_timestamp,
        &meta.worker_completed_timestamp,
    ] {
        assert!(t.is_some());
    }
    assert!(!meta.auxiliary_metadata.is_empty(), "runner resource usage");

    // The Action Cache holds the result.
    let cached = farm.cached_result(&job.action_digest).await;
    assert_eq!(cached.output_files.len(), 3);
    assert!(farm.build_is_empty(), "the build directory is removed");
    assert_eq!(farm.cache.downloads(), files as u64);

    // A second action on the same inputs, in the pre-2.1 fields Bazel
    // 4.2.3 uses: nothing is downloaded again.
    #[allow(deprecated)]
    let old = {
        let mut command = shell(&format!("{SCRIPT}\necho again"));
        command.output_files = ["out/copy.txt", "out/sym"].map(String::from).to_vec();
        command.output_directories = vec!["outdir".into()];
        command
    };
    let job = farm.job(old, root, None).await;
    let response = farm.execute(&job).await;
    assert_eq!(code(&response), 0, "{:?}", response.status);
    let result = response.result.unwrap();
    assert_eq!(farm.cache.downloads(), files as u64, "all inputs cached");
    assert_eq!(result.output_files.len(), 1);
    #[allow(deprecated)]
    {
        assert_eq!(result.output_file_symlinks.len(), 1);
        assert_eq!(result.output_file_symlinks[0].target, "copy.txt");
    }
    assert_eq!(result.output_directories.len(), 1);
    assert!(farm.build_is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_input_fails_the_precondition_naming_the_blob() {
    if !privileged("a_missing_input_fails_the_precondition_naming_the_blob") {
        return;
    }
    let farm = Farm::start().await;
    let absent = digest_of(b"never uploaded");
    let root = Directory {
        files: vec![FileNode {
            name: "gone".into(),
            digest: Some(absent.clone()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root = farm.put_message(&root).await;
    let job = farm.job(shell("true"), root, None).await;
    let response = farm.execute(&job).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, Code::FailedPrecondition as i32);
    assert_eq!(status.details.len(), 1);
    assert_eq!(
        status.details[0].type_url,
        "type.googleapis.com/google.rpc.PreconditionFailure"
    );
    let failure = corral_proto::error_details::PreconditionFailure::decode(
        status.details[0].value.as_slice(),
    )
    .unwrap();
    assert_eq!(failure.violations[0].r#type, "MISSING");
    assert_eq!(
        failure.violations[0].subject,
        format!("blobs/{}/{}", absent.hash, absent.size_bytes)
    );
    assert!(farm.build_is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_is_deadline_exceeded_with_the_output_so_far() {
    if !privileged("a_timeout_is_deadline_exceeded_with_the_output_so_far") {
        return;
    }
    let farm = Farm::start().await;
    let root = farm.put_message(&Directory::default()).await;
    let job = farm
        .job(shell("echo started; exec sleep 30"), root, Some(1))
        .await;
    let response = farm.execute(&job).await;
    assert_eq!(code(&response), Code::DeadlineExceeded as i32);
    let message = &response.status.as_ref().unwrap().message;
    assert_eq!(message, "the action timed out after 1.0 s");
    let result = response.result.unwrap();
    assert_eq!(farm.read(&result.stdout_digest).await, b"started\n");
    assert!(farm.build_is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_output_is_uploaded_whole_from_disk() {
    if !privileged("a_large_output_is_uploaded_whole_from_disk") {
        return;
    }
    let farm = Farm::start().await;
    let root = farm.put_message(&Directory::default()).await;
    let mut command = shell("head -c 5000001 /dev/urandom > big.bin");
    command.output_paths = vec!["big.bin".into()];
    let job = farm.job(command, root, None).await;
    let response = farm.execute(&job).await;
    assert_eq!(code(&response), 0, "{:?}", response.status);
    let output = &response.result.unwrap().output_files[0];
    assert_eq!(output.digest.as_ref().unwrap().size_bytes, 5_000_001);
    // Read back and verified against its digest by the client.
    assert_eq!(farm.read(&output.digest).await.len(), 5_000_001);
    assert!(farm.build_is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn output_is_inlined_only_when_asked_and_small() {
    if !privileged("output_is_inlined_only_when_asked_and_small") {
        return;
    }
    let farm = Farm::start().await;
    let root = farm.put_message(&Directory::default()).await;
    // stdout is small, stderr one byte over the limit.
    let big = corral_proto::MAX_INLINE_BYTES + 1;
    let script = format!("echo small; head -c {big} /dev/zero >&2");
    let mut job = farm.job(shell(&script), root, None).await;
    job.inline_stdout = true;
    job.inline_stderr = true;
    let response = farm.execute(&job).await;
    assert_eq!(code(&response), 0, "{:?}", response.status);
    let result = response.result.unwrap();
    assert_eq!(result.stdout_raw, b"small\n");
    assert!(result.stderr_raw.is_empty(), "too large to inline");
    assert_eq!(farm.read(&result.stderr_digest).await.len() as u64, big);
    assert_eq!(farm.read(&result.stdout_digest).await, b"small\n");

    // The cache entry names output by digest only: a later client that
    // did not ask must not get it inline.
    let cached = farm.cached_result(&job.action_digest).await;
    assert!(cached.stdout_raw.is_empty());
    assert_eq!(cached.stdout_digest, result.stdout_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_programs_and_escaping_outputs_are_invalid_arguments() {
    if !privileged("bad_programs_and_escaping_outputs_are_invalid_arguments") {
        return;
    }
    let farm = Farm::start().await;
    let root = farm.put_message(&Directory::default()).await;
    let mut missing = shell("");
    missing.arguments = vec!["/no/such/tool".into()];
    let response = farm
        .execute(&farm.job(missing, root.clone(), None).await)
        .await;
    assert_eq!(code(&response), Code::InvalidArgument as i32);

    let mut escaping = shell("ln -s /etc/passwd out/evil");
    escaping.output_paths = vec!["out/evil".into()];
    let response = farm.execute(&farm.job(escaping, root, None).await).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32);
    assert!(status.message.contains("out/evil"), "{}", status.message);
    assert!(farm.build_is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_takes_an_action_from_the_scheduler_and_reports_it() {
    if !privileged("the_worker_takes_an_action_from_the_scheduler_and_reports_it") {
        return;
    }
    let farm = Farm::start().await;
    let (root, _) = farm.input_root().await;
    let mut command = shell("cat link > out.txt; echo done; echo err >&2");
    command.output_paths = vec!["out.txt".into()];
    let job = farm.job(command, root, None).await;
    let (queue, mut seen) =
        FakeScheduler::new(vec![(job.action_digest.clone(), job.action.clone())]);
    let mut tasks = JoinSet::new();
    let scheduler = queue.serve(&mut tasks).await;
    let worker_dir: &Path = &farm.dir.path().join("worker");
    let cfg = corral_worker::Config {
        scheduler,
        storage: farm.storage.clone(),
        directory: worker_dir.to_owned(),
        cache_max_size_bytes: 1 << 20,
        directory_cache_max_size_bytes: 1 << 20,
        input_root_max_entries: MAX_ENTRIES,
        instance_name_prefix: String::new(),
        worker_id: Default::default(),
        slots: vec![corral_worker::config::SlotGroup {
            concurrency: 1,
            runner: farm.runner_socket.clone(),
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
    };
    let worker = corral_worker::Worker::new(cfg).unwrap();
    let metrics = worker.metrics_page();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tasks.spawn(async move {
        worker
            .run(std::future::pending(), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let (worker_id, response) = fake_scheduler::completed(&mut seen).await;
    assert_eq!(worker_id.get("slot").map(String::as_str), Some("0"));
    assert!(worker_id.contains_key("hostname"));
    assert_eq!(code(&response), 0, "{:?}", response.status);
    let result = response.result.unwrap();
    assert_eq!(farm.read(&result.output_files[0].digest).await, b"deep\n");
    // The scheduler asked for stdout inline, not for stderr.
    assert_eq!(result.stdout_raw, b"done\n");
    assert!(result.stderr_raw.is_empty());
    // The worker's page counts the action and what it downloaded.
    let page = metrics.render();
    for line in [
        "corral_worker_actions_total{code=\"OK\"} 1",
        "corral_worker_stage_seconds_count{stage=\"execute\"} 1",
        "corral_worker_slots{state=\"idle\"} 1",
    ] {
        assert!(page.lines().any(|l| l == line), "{line} not in\n{page}");
    }
    assert!(
        !page.contains("corral_worker_file_cache_downloads_total 0"),
        "{page}"
    );
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread")]
async fn large_blobs_travel_by_bytestream_and_small_ones_in_batches() {
    let mut servers = JoinSet::new();
    let storage = start_storage(&mut servers).await;
    let cas = CasClient::new(&storage).unwrap();
    let large: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    let small: Vec<Vec<u8>> = (0..50u32).map(|i| i.to_le_bytes().repeat(100)).collect();
    let mut blobs = vec![(digest_of(&large), large.clone())];
    blobs.extend(small.iter().map(|d| (digest_of(d), d.clone())));
    cas.upload(blobs.clone()).await.unwrap();
    // Present now: a second upload sends nothing and still succeeds.
    cas.upload(blobs.clone()).await.unwrap();
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();
    let read = cas.read_many(&digests).await.unwrap();
    assert_eq!(read.len(), 51);
    assert_eq!(read[&digests[0].hash], large);
    assert_eq!(cas.reads(), 51);
    // A digest naming other contents is never accepted.
    let mut lying = digest_of(b"something else");
    lying.size_bytes = 4;
    assert!(cas.read(&lying).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_read_only_when_the_cas_lacks_them_and_streamed_whole() {
    let mut servers = JoinSet::new();
    let cas = CasClient::new(&start_storage(&mut servers).await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hash =
        |path: &Path| Blob::hash_file(std::fs::File::open(path).unwrap(), path.to_owned()).unwrap();

    // Present already: the file is never opened, so its being gone does
    // not matter.
    let gone = dir.path().join("gone");
    std::fs::write(&gone, b"present").unwrap();
    let (present, blob) = hash(&gone);
    assert_eq!(present, digest_of(b"present"));
    std::fs::remove_file(&gone).unwrap();
    put(&cas, b"present").await;
    cas.upload(vec![(present, blob)]).await.unwrap();

    // Large (ByteStream, in chunks) and small (a batch) files arrive
    // whole.
    let large: Vec<u8> = (0..(5 << 20) + 7).map(|i| (i % 253) as u8).collect();
    let (large_path, small_path) = (dir.path().join("large"), dir.path().join("small"));
    std::fs::write(&large_path, &large).unwrap();
    std::fs::write(&small_path, b"small").unwrap();
    let (large_digest, large_blob) = hash(&large_path);
    let (small_digest, small_blob) = hash(&small_path);
    assert_eq!(large_digest, digest_of(&large));
    cas.upload(vec![
        (large_digest.clone(), large_blob),
        (small_digest.clone(), small_blob),
    ])
    .await
    .unwrap();
    assert_eq!(cas.read(&large_digest).await.unwrap(), large);
    assert_eq!(cas.read(&small_digest).await.unwrap(), b"small");

    // A file cut short after hashing is an error, never a short blob.
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &large[..(2 << 20) + 1]).unwrap();
    let (cut_digest, cut_blob) = hash(&cut);
    std::fs::write(&cut, &large[..1 << 20]).unwrap();
    let err = cas
        .upload(vec![(cut_digest.clone(), cut_blob)])
        .await
        .unwrap_err();
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(
        source.contains("ended at byte 1048576 of 2097153"),
        "{err}: {source}"
    );
    assert!(cas.read(&cut_digest).await.is_err(), "stored a short blob");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_seen_before_is_laid_out_without_reading_its_directories_again() {
    let mut servers = JoinSet::new();
    let cas = CasClient::new(&start_storage(&mut servers).await).unwrap();
    let (root, files) = input_root(&cas).await;
    let dir = tempfile::tempdir().unwrap();
    let directories = DirectoryCache::new(1 << 20);
    let lay_out = |cache: Arc<FileCache>, name: &str| {
        let dest = dir.path().join(name);
        std::fs::create_dir(&dest).unwrap();
        let (cas, root, directories) = (&cas, &root, &directories);
        async move {
            materialize(cas, &cache, directories, root, &dest, MAX_ENTRIES)
                .await
                .unwrap();
            dest
        }
    };
    let cache = Arc::new(FileCache::open(dir.path().join("cache"), 1 << 20).unwrap());
    let reads = cas.reads();
    assert_input_root_at(&lay_out(Arc::clone(&cache), "first").await);
    assert_eq!(cas.reads() - reads, files as u64 + 3, "every blob once");

    let reads = cas.reads();
    assert_input_root_at(&lay_out(Arc::clone(&cache), "second").await);
    assert_eq!(cas.reads(), reads, "nothing read again");

    // A file cache too small to keep any file once a root is laid out:
    // files are fetched again every time, Directories never.
    let tiny = Arc::new(FileCache::open(dir.path().join("tiny"), 1).unwrap());
    for name in ["third", "fourth"] {
        let reads = cas.reads();
        assert_input_root_at(&lay_out(Arc::clone(&tiny), name).await);
        assert_eq!(cas.reads() - reads, files as u64, "only the files");
        // Evicted once unpinned; the files go on a blocking thread.
        let mut left = usize::MAX;
        for _ in 0..500 {
            left = std::fs::read_dir(tiny.directory()).unwrap().count();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(left, 0, "evicted files left in the cache");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_input_files_are_streamed_to_disk_and_verified() {
    let mut servers = JoinSet::new();
    let cas = CasClient::new(&start_storage(&mut servers).await).unwrap();
    let big: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 241) as u8).collect();
    let other: Vec<u8> = big.iter().rev().copied().collect();
    let small = b"small".to_vec();
    let mut entries = Vec::new();
    for (name, data, executable) in [
        ("big", &big, true),
        ("other", &other, false),
        ("small", &small, false),
    ] {
        entries.push(FileNode {
            name: name.into(),
            digest: Some(put(&cas, data).await),
            is_executable: executable,
            ..Default::default()
        });
    }
    let root = put_message(
        &cas,
        &Directory {
            files: entries,
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(FileCache::open(dir.path().join("cache"), 1 << 30).unwrap());
    let dest = dir.path().join("root");
    std::fs::create_dir(&dest).unwrap();
    let directories = DirectoryCache::new(1 << 20);
    materialize(&cas, &cache, &directories, &root, &dest, MAX_ENTRIES)
        .await
        .unwrap();
    assert_eq!(std::fs::read(dest.join("big")).unwrap(), big);
    assert_eq!(std::fs::read(dest.join("other")).unwrap(), other);
    assert_eq!(std::fs::read(dest.join("small")).unwrap(), small);
    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| {
        std::fs::metadata(dest.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("big"), 0o555);
    assert_eq!(mode("other"), 0o444);
    assert_eq!(cache.downloads(), 3);
    let names: Vec<String> = std::fs::read_dir(cache.directory())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "no temporary file left: {names:?}");

    // A large file missing from the CAS fails as missing, naming it, and
    // leaves nothing behind.
    let mut absent_data = big.clone();
    absent_data[0] ^= 1;
    let lie = digest_of(&absent_data);
    let liar = Directory {
        files: vec![FileNode {
            name: "absent".into(),
            digest: Some(lie.clone()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let liar_root = put_message(&cas, &liar).await;
    let dest = dir.path().join("absent");
    std::fs::create_dir(&dest).unwrap();
    let err = materialize(&cas, &cache, &directories, &liar_root, &dest, MAX_ENTRIES)
        .await
        .unwrap_err();
    assert_eq!(err.missing_digest(), Some(&lie));
    assert_eq!(std::fs::read_dir(cache.directory()).unwrap().count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_action_sharing_the_input_root_reads_only_its_command() {
    if !privileged("a_second_action_sharing_the_input_root_reads_only_its_command") {
        return;
    }
    let farm = Farm::start().await;
    let (root, files) = farm.input_root().await;
    let first = farm.job(shell("cat link"), root.clone(), None).await;
    let response = farm.execute(&first).await;
    assert_eq!(code(&response), 0, "{:?}", response.status);
    assert_eq!(farm.cache.downloads(), files as u64);

    let second = farm.job(shell("./tool.sh"), root, None).await;
    let reads = farm.cas.reads();
    let response = farm.execute(&second).await;
    assert_eq!(code(&response), 0, "{:?}", response.status);
    let result = response.result.unwrap();
    assert_eq!(
        farm.cas.reads() - reads,
        1,
        "the Command only: no Directory, no file"
    );
    assert_eq!(farm.cache.downloads(), files as u64);
    assert_eq!(farm.read(&result.stdout_digest).await, b"hi from tool\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_layout_stops_writing_and_releases_its_files() {
    let mut servers = JoinSet::new();
    let cas = CasClient::new(&start_storage(&mut servers).await).unwrap();
    // 4,000 files in 40 directories: long enough to lay out that the
    // layout is dropped midway.
    let mut blobs = Vec::new();
    let mut root = Directory::default();
    for d in 0..40 {
        let mut dir = Directory::default();
        for f in 0..100 {
            let data = format!("{d}/{f}").into_bytes();
            let digest = digest_of(&data);
            dir.files.push(FileNode {
                name: format!("f{f}"),
                digest: Some(digest.clone()),
                ..Default::default()
            });
            blobs.push((digest, data));
        }
        let data = dir.encode_to_vec();
        let digest = digest_of(&data);
        root.directories.push(DirectoryNode {
            name: format!("d{d:02}"),
            digest: Some(digest.clone()),
        });
        blobs.push((digest, data));
    }
    let data = root.encode_to_vec();
    let root = digest_of(&data);
    blobs.push((root.clone(), data));
    cas.upload(blobs).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(FileCache::open(dir.path().join("cache"), 1 << 30).unwrap());
    let directories = DirectoryCache::new(1 << 20);
    let warm = dir.path().join("warm");
    std::fs::create_dir(&warm).unwrap();
    materialize(&cas, &cache, &directories, &root, &warm, MAX_ENTRIES)
        .await
        .unwrap();
    assert_eq!(cache.pinned(), 0);

    // Dropped after longer and longer waits, until one finishes: some
    // land while it writes, whatever the machine's speed.
    let mut midway = 0;
    let mut after = Duration::from_micros(200);
    for attempt in 0.. {
        let dest = dir.path().join(format!("abandoned-{attempt}"));
        std::fs::create_dir(&dest).unwrap();
        let layout = materialize(&cas, &cache, &directories, &root, &dest, MAX_ENTRIES);
        let finished = tokio::time::timeout(after, layout).await.is_ok();
        // Dropped (or done): nothing writes into dest any more, so it
        // can be removed at once, and no file stays pinned.
        let written = entries_under(&dest);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(entries_under(&dest), written, "attempt {attempt}");
        std::fs::remove_dir_all(&dest).unwrap();
        assert_eq!(cache.pinned(), 0, "attempt {attempt}");
        if finished {
            assert_eq!(written, 4040);
            break;
        }
        if written > 0 {
            midway += 1;
        }
        after = after * 3 / 2;
    }
    assert!(
        midway > 0,
        "no layout was dropped midway; the tree is too small"
    );
}

/// Files and directories under `dir`.
fn entries_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            1 + if path.is_dir() {
                entries_under(&path)
            } else {
                0
            }
        })
        .sum()
}

/// Uploads `directories` in one batch; returns the digest of the last.
async fn put_directories(cas: &CasClient, directories: &[Directory]) -> Digest {
    let blobs: Vec<(Digest, Vec<u8>)> = directories
        .iter()
        .map(|d| {
            let data = d.encode_to_vec();
            (digest_of(&data), data)
        })
        .collect();
    let last = blobs.last().unwrap().0.clone();
    cas.upload(blobs).await.unwrap();
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn an_input_root_expanding_past_its_limit_is_refused_before_it_is_read_or_written() {
    let mut servers = JoinSet::new();
    let cas = CasClient::new(&start_storage(&mut servers).await).unwrap();
    // Three small messages naming each other: 20 + 20×20 + 20×20×1 = 820
    // entries.
    let leaf = Directory {
        files: vec![FileNode {
            name: "f".into(),
            digest: Some(put(&cas, b"leaf\n").await),
            ..Default::default()
        }],
        ..Default::default()
    };
    let twenty = |digest: &Digest| Directory {
        directories: (0..20)
            .map(|i| DirectoryNode {
                name: format!("d{i}"),
                digest: Some(digest.clone()),
            })
            .collect(),
        ..Default::default()
    };
    let leaf_digest = put_message(&cas, &leaf).await;
    let middle = twenty(&leaf_digest);
    let root = twenty(&put_message(&cas, &middle).await);
    let root = put_message(&cas, &root).await;

    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(FileCache::open(dir.path().join("cache"), 1 << 20).unwrap());
    let dest = dir.path().join("refused");
    std::fs::create_dir(&dest).unwrap();
    let reads = cas.reads();
    let directories = DirectoryCache::new(1 << 20);
    let refused = materialize(&cas, &cache, &directories, &root, &dest, 100)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            corral_worker::input_root::Error::TooManyEntries { limit: 100 }
        ),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("input_root_max_entries"),
        "{refused}"
    );
    // Refused within the second level: the leaves were never read.
    assert_eq!(cas.reads() - reads, 2, "the root and the middle only");
    assert_eq!(entries_under(&dest), 0, "nothing written");
    assert_eq!(cache.downloads(), 0, "no file fetched");
    assert_eq!(cache.pinned(), 0);

    // Every occurrence counts, and the limit itself is allowed.
    let directories = DirectoryCache::new(1 << 20);
    let refused = materialize(&cas, &cache, &directories, &root, &dest, 819).await;
    assert!(
        matches!(
            refused,
            Err(corral_worker::input_root::Error::TooManyEntries { limit: 819 })
        ),
        "{refused:?}"
    );
    assert_eq!(entries_under(&dest), 0, "nothing written");
    materialize(&cas, &cache, &directories, &root, &dest, 820)
        .await
        .unwrap();
    assert_eq!(entries_under(&dest), 820);
    assert_eq!(std::fs::read(dest.join("d19/d19/f")).unwrap(), b"leaf\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_input_root_deeper_than_path_max_fails_the_action_as_invalid() {
    if !privileged("an_input_root_deeper_than_path_max_fails_the_action_as_invalid") {
        return;
    }
    let farm = Farm::start().await;
    // "d/d/…/d": 3,000 levels, each path two bytes longer than its
    // parent's; the one at depth 2,049 is 4,097 bytes long.
    let mut chain = vec![Directory::default()];
    for _ in 0..3000 {
        let data = chain.last().unwrap().encode_to_vec();
        chain.push(Directory {
            directories: vec![DirectoryNode {
                name: "d".into(),
                digest: Some(digest_of(&data)),
            }],
            ..Default::default()
        });
    }
    let root = put_directories(&farm.cas, &chain).await;
    let job = farm.job(shell("true"), root, None).await;
    let reads = farm.cas.reads();
    let response = farm.execute(&job).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
    assert!(status.message.contains("4097 bytes"), "{}", status.message);
    assert!(status.message.contains("PATH_MAX"), "{}", status.message);
    // The Command, the root and the 2,048 levels under it whose paths
    // fit: none deeper.
    assert_eq!(farm.cas.reads() - reads, 1 + 1 + 2048);
    assert!(farm.build_is_empty());
}

/// Runs `script` with `output_paths` in a farm whose outputs may take at
/// most 1 GiB and 100 entries; asserts RESOURCE_EXHAUSTED naming `key`,
/// and that the file `marker` (written beside the culprit) never reached
/// the CAS.
async fn outputs_past_a_limit_are_refused(script: &str, output_paths: &[&str], key: &str) {
    let farm = Farm::start_with(corral_worker::config::Limits {
        output_max_bytes: 1 << 30,
        output_max_files: 100,
    })
    .await;
    let root = farm.put_message(&Directory::default()).await;
    let mut command = shell(script);
    command.output_paths = output_paths.iter().map(|p| (*p).to_owned()).collect();
    let job = farm.job(command, root, None).await;
    let started = std::time::Instant::now();
    let response = farm.execute(&job).await;
    let status = response.status.clone().unwrap_or_default();
    assert_eq!(status.code, Code::ResourceExhausted as i32, "{status:?}");
    assert!(status.message.contains(key), "{}", status.message);
    // Refused before hashing: 8 GiB of zeros would take many seconds.
    assert!(started.elapsed() < Duration::from_secs(20));
    let result = response.result.unwrap_or_default();
    assert!(result.output_files.is_empty() && result.output_directories.is_empty());
    let marker = corral_worker::cas_client::digest_of(b"marker\n");
    assert!(
        farm.cas.read(&marker).await.is_err(),
        "an output reached the CAS"
    );
    assert!(farm.build_is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sparse_8_gib_output_is_resource_exhausted_and_not_uploaded() {
    if !privileged("a_sparse_8_gib_output_is_resource_exhausted_and_not_uploaded") {
        return;
    }
    // 8 GiB that take no disk (under any disk limit), but would be hashed
    // and uploaded whole.
    outputs_past_a_limit_are_refused(
        "mkdir out && echo marker > out/marker && truncate -s 8G out/sparse",
        &["out"],
        "limits.output_max_bytes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_output_files_are_resource_exhausted_and_not_uploaded() {
    if !privileged("too_many_output_files_are_resource_exhausted_and_not_uploaded") {
        return;
    }
    outputs_past_a_limit_are_refused(
        "mkdir out && echo marker > out/marker && \
         i=0; while [ $i -lt 200 ]; do : > out/f$i; i=$((i+1)); done",
        &["out"],
        "limits.output_max_files",
    )
    .await;
}

/// With storage's `isolate_instances`, the worker's caches (keyed by
/// digest) must not lay out for tenant B what only tenant A's actions
/// brought in: B names A's file by digest in its own input root, and the
/// layout fails as if the file were missing, until B uploads it.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_input_of_another_instance_name_is_not_laid_out_for_it() {
    let mut servers = JoinSet::new();
    let storage = CasClient::new(&start_storage_isolating(&mut servers, true).await).unwrap();
    let (a, b) = (
        storage.with_instance("team-a"),
        storage.with_instance("team-b"),
    );
    let secret = put(&a, b"tenant a's secret\n").await;
    let root = Directory {
        files: vec![FileNode {
            name: "secret.txt".into(),
            digest: Some(secret.clone()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root_digest = put_message(&a, &root).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(FileCache::open(dir.path().join("cache"), 1 << 20).unwrap());
    let directories = DirectoryCache::new(1 << 20);
    let lay_out = |cas: &CasClient, name: &str| {
        let dest = dir.path().join(name);
        std::fs::create_dir(&dest).unwrap();
        let (cas, cache, directories, root_digest) = (
            cas.clone(),
            Arc::clone(&cache),
            &directories,
            root_digest.clone(),
        );
        async move { materialize(&cas, &cache, directories, &root_digest, &dest, MAX_ENTRIES).await }
    };
    lay_out(&a, "a").await.unwrap();

    // The root Directory is cached, but B does not hold it.
    let err = lay_out(&b, "b1").await.unwrap_err();
    assert_eq!(err.missing_digest(), Some(&root_digest), "{err:?}");
    // B uploads the Directory (not the file): the cached file is refused.
    put_message(&b, &root).await;
    let err = lay_out(&b, "b2").await.unwrap_err();
    assert_eq!(err.missing_digest(), Some(&secret), "{err:?}");
    assert!(!dir.path().join("b2/secret.txt").exists());
    // Holding the content itself, B gets the layout.
    put(&b, b"tenant a's secret\n").await;
    lay_out(&b, "b3").await.unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("b3/secret.txt")).unwrap(),
        b"tenant a's secret\n"
    );
}
