//! The runner over its Unix socket, driven by the generated client, as a
//! worker (ours or bb_worker) drives it.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

mod isolation;

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_proto::any::Packable;
use corral_proto::resourceusage::PosixResourceUsage;
use corral_proto::runner::runner_client::RunnerClient;
use corral_proto::runner::{CheckReadinessRequest, RunRequest};
use corral_runner::Config;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

// The sandbox maps ids and writes cgroups.
use corral_testkit::privileged;

struct Runner {
    dir: tempfile::TempDir,
    client: RunnerClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Runner {
    async fn start() -> Runner {
        Runner::start_with_policies(&[]).await
    }

    /// A runner with `policies` (name, TOML) added to the built-in ones.
    async fn start_with_policies(policies: &[(&str, &str)]) -> Runner {
        Runner::start_with(policies, |_| {}).await
    }

    /// A runner with `policies`, its config changed by `tweak`.
    async fn start_with(policies: &[(&str, &str)], tweak: impl FnOnce(&mut Config)) -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("runner.sock");
        let policies_directory = (!policies.is_empty()).then(|| {
            let path = dir.path().join("policies");
            std::fs::create_dir(&path).unwrap();
            for (name, toml) in policies {
                std::fs::write(path.join(format!("{name}.toml")), toml).unwrap();
            }
            path
        });
        let mut cfg = Config {
            listen_path: socket.clone(),
            build_directory: dir.path().join("build"),
            policies_directory,
            ..Config::default()
        };
        tweak(&mut cfg);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        #[allow(clippy::disallowed_methods)] // a test server, dropped with the test
        tokio::spawn(async move {
            corral_runner::run(cfg, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Runner {
            dir,
            client: connect(socket).await,
            _stop: stop,
        }
    }

    fn build(&self) -> PathBuf {
        self.dir.path().join("build")
    }

    /// Makes `build/<action>/root` and returns the request skeleton.
    fn action(&self, action: &str, argv: &[&str]) -> RunRequest {
        std::fs::create_dir_all(self.build().join(action).join("root")).unwrap();
        RunRequest {
            arguments: argv.iter().map(|s| (*s).to_owned()).collect(),
            environment_variables: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
            working_directory: String::new(),
            stdout_path: format!("{action}/stdout"),
            stderr_path: format!("{action}/stderr"),
            input_root_directory: format!("{action}/root"),
            temporary_directory: format!("{action}/tmp"),
            server_logs_directory: format!("{action}/logs"),
            ..Default::default()
        }
    }

    fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.build().join(relative)).unwrap()
    }
}

/// A client of the runner listening on `socket`. The socket file appears
/// at bind(), a moment before listen(): retry a refused connection.
async fn connect(socket: PathBuf) -> RunnerClient<Channel> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let path = socket.clone();
        let result = Endpoint::from_static("http://runner")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            }))
            .await;
        match result {
            Ok(channel) => return RunnerClient::new(channel),
            Err(e) if std::time::Instant::now() >= deadline => {
                panic!("connecting to the runner at {}: {e:?}", socket.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn exists(path: &Path) -> bool {
    path.exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_runs_in_the_sandbox_and_reports_usage() {
    if !privileged("a_request_runs_in_the_sandbox_and_reports_usage") {
        return;
    }
    let mut runner = Runner::start().await;
    runner
        .client
        .check_readiness(CheckReadinessRequest {
            path: String::new(),
        })
        .await
        .unwrap();
    let request = runner.action(
        "a1",
        &[
            "/bin/sh",
            "-c",
            "pwd; echo out > out.txt; echo err >&2; exit 3",
        ],
    );
    let response = runner.client.run(request).await.unwrap().into_inner();
    assert_eq!(response.exit_code, 3);
    assert_eq!(runner.read("a1/stdout"), "/build\n");
    assert_eq!(runner.read("a1/stderr"), "err\n");
    assert_eq!(runner.read("a1/root/out.txt"), "out\n");
    let usage = PosixResourceUsage::unpack(&response.resource_usage[0])
        .expect("POSIX usage")
        .unwrap();
    assert!(usage.maximum_resident_set_size > 0);
    assert!(exists(&runner.build().join("a1/root")));
}

/// GETs `/metrics` on `addr` over plain HTTP/1.1; the body.
async fn metrics_page(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: runner\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_port_counts_a_timeout_kill_the_landlock_level_and_spawn_time() {
    if !privileged("the_metrics_port_counts_a_timeout_kill_the_landlock_level_and_spawn_time") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = port.local_addr().unwrap();
    drop(port);
    let mut runner = Runner::start_with(&[], |cfg| {
        cfg.metrics = Some(corral_runner::config::MetricsConfig { listen: addr });
    })
    .await;
    let ok = runner.action("m1", &["/bin/true"]);
    runner.client.run(ok).await.unwrap();
    let mut slow = runner.action("m2", &["/bin/sleep", "30"]);
    slow.corral_timeout = Some(corral_proto::protobuf::Duration {
        seconds: 1,
        nanos: 0,
    });
    let err = runner.client.run(slow).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    let page = metrics_page(addr).await;
    assert_eq!(corral_metrics_check(&page), Ok(()), "{page}");
    let series = |prefix: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{page}"))
    };
    assert_eq!(series("corral_runner_killed_total{reason=\"timeout\"}"), 1);
    assert_eq!(series("corral_runner_killed_total{reason=\"oom\"}"), 0);
    assert_eq!(series("corral_runner_spawn_seconds_count"), 2);
    let runs: u64 = ["not_enforced", "partially_enforced", "fully_enforced"]
        .iter()
        .map(|level| series(&format!("corral_runner_runs_total{{landlock=\"{level}\"}}")))
        .sum();
    assert_eq!(runs, 2);
    // Both ran host binaries (true, sleep) under the default policy,
    // whose undeclared-input report is on.
    assert_eq!(series("corral_runner_undeclared_input_actions_total"), 2);
    assert!(series("corral_runner_undeclared_input_paths_total") >= 2);
}

/// Every metric the runner declares is on `page`, and nothing else.
fn corral_metrics_check(page: &str) -> Result<(), String> {
    for (name, kind, _) in corral_runner::metrics::DECLARED {
        if !page.contains(&format!("# TYPE {name} {kind}\n")) {
            return Err(format!("{name} missing"));
        }
    }
    match page
        .lines()
        .find(|l| !l.starts_with('#') && !l.starts_with("corral_runner_"))
    {
        Some(other) => Err(format!("undeclared: {other}")),
        None => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_actions_timeout_answers_deadline_exceeded() {
    if !privileged("the_actions_timeout_answers_deadline_exceeded") {
        return;
    }
    let mut runner = Runner::start().await;
    let mut request = runner.action("t1", &["/bin/sleep", "30"]);
    request.corral_timeout = Some(corral_proto::protobuf::Duration {
        seconds: 1,
        nanos: 0,
    });
    let started = std::time::Instant::now();
    let err = runner.client.run(request).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn signals_are_reported_the_shell_way() {
    if !privileged("signals_are_reported_the_shell_way") {
        return;
    }
    let mut runner = Runner::start().await;
    let request = runner.action("s1", &["/bin/sh", "-c", "kill -KILL $$"]);
    let response = runner.client.run(request).await.unwrap().into_inner();
    assert_eq!(response.exit_code, 128 + 9);
    let usage = PosixResourceUsage::unpack(&response.resource_usage[0])
        .unwrap()
        .unwrap();
    assert_eq!(usage.termination_signal, "KILL");
    assert!(!usage.corral_oom_killed, "a KILL of its own is no OOM kill");
}

/// The scheduler moves an action to a larger size class on this flag
/// (docs/decisions/0014-size-classes.md): the cgroup's OOM kill, told
/// apart from any other KILL.
#[tokio::test(flavor = "multi_thread")]
async fn an_oom_kill_is_reported_in_the_resource_usage() {
    if !privileged("an_oom_kill_is_reported_in_the_resource_usage") {
        return;
    }
    let default = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default.toml"),
    )
    .unwrap();
    let line = default
        .lines()
        .find(|l| l.trim_start().starts_with("memory_max_bytes"))
        .unwrap();
    let small = default.replace(line, "memory_max_bytes = 67108864");
    let mut runner = Runner::start_with_policies(&[("small", &small)]).await;
    let mut request = runner.action(
        "m1",
        &["/usr/bin/python3", "-c", "b = bytearray(256 << 20)"],
    );
    request.corral_policy = "small".into();
    let response = runner.client.run(request).await.unwrap().into_inner();
    assert_eq!(response.exit_code, 128 + 9);
    let usage = PosixResourceUsage::unpack(&response.resource_usage[0])
        .unwrap()
        .unwrap();
    assert!(usage.corral_oom_killed, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_invalid_argument_naming_the_problem() {
    if !privileged("bad_requests_get_invalid_argument_naming_the_problem") {
        return;
    }
    let mut runner = Runner::start().await;
    let mut escaping = runner.action("b1", &["true"]);
    escaping.stdout_path = "../../etc/owned".into();
    let err = runner.client.run(escaping).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("stdout_path"), "{}", err.message());

    let mut unknown = runner.action("b2", &["true"]);
    unknown.corral_policy = "no-such-policy".into();
    let err = runner.client.run(unknown).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("no-such-policy"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("hermetic"),
        "lists known policies: {}",
        err.message()
    );

    let missing = runner.action("b3", &["/no/such/tool"]);
    let err = runner.client.run(missing).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("executing the command"),
        "{}",
        err.message()
    );

    let err = runner
        .client
        .check_readiness(CheckReadinessRequest {
            path: "not-there".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_named_policy_is_applied() {
    if !privileged("the_named_policy_is_applied") {
        return;
    }
    let mut runner = Runner::start().await;
    // network.toml shares the host network: more than loopback is visible.
    let script = "tail -n +3 /proc/net/dev | wc -l";
    let default = runner.action("p1", &["/bin/sh", "-c", script]);
    runner.client.run(default).await.unwrap();
    let mut network = runner.action("p2", &["/bin/sh", "-c", script]);
    network.corral_policy = "network".into();
    runner.client.run(network).await.unwrap();
    assert_eq!(runner.read("p1/stdout").trim(), "1");
    let host_interfaces: usize = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count()
        - 2;
    assert_eq!(runner.read("p2/stdout").trim(), host_interfaces.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_request_kills_its_action() {
    if !privileged("an_abandoned_request_kills_its_action") {
        return;
    }
    let mut runner = Runner::start().await;
    let request = runner.action("c1", &["/bin/sh", "-c", "sleep 2; echo late > marker"]);
    // The worker gives up on the call (the action was cancelled, or the
    // worker is stopping): dropping the call resets its stream.
    let abandoned =
        tokio::time::timeout(Duration::from_millis(500), runner.client.run(request)).await;
    assert!(
        abandoned.is_err(),
        "the action ended before it was abandoned"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !exists(&runner.build().join("c1/root/marker")),
        "the action ran on after its caller left"
    );
    // The runner still serves.
    let request = runner.action("c2", &["/bin/true"]);
    assert_eq!(
        runner
            .client
            .run(request)
            .await
            .unwrap()
            .into_inner()
            .exit_code,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn filling_the_disk_past_the_policy_limit_is_resource_exhausted() {
    if !privileged("filling_the_disk_past_the_policy_limit_is_resource_exhausted") {
        return;
    }
    let tight = include_str!("../../../policies/default.toml")
        .replace("disk_max_bytes = 17179869184", "disk_max_bytes = 8388608");
    assert!(tight.contains("disk_max_bytes = 8388608"), "{tight}");
    let mut runner = Runner::start_with_policies(&[("tight", &tight)]).await;
    let script = "i=0; while :; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); sleep 0.02; done";
    let mut request = runner.action("d1", &["/bin/sh", "-c", script]);
    request.corral_policy = "tight".into();
    // The action (host uid nobody) writes into its root.
    use std::os::unix::fs::PermissionsExt;
    let root = runner.build().join("d1/root");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let status = runner.client.run(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("more than 8388608 bytes"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_entries_in_the_input_root_is_resource_exhausted_naming_the_limit() {
    let test = "too_many_entries_in_the_input_root_is_resource_exhausted_naming_the_limit";
    if !privileged(test) {
        return;
    }
    let tight = include_str!("../../../policies/default.toml")
        .replace("disk_max_entries = 1048576", "disk_max_entries = 1000");
    assert!(tight.contains("disk_max_entries = 1000"), "{tight}");
    let mut runner = Runner::start_with_policies(&[("tight", &tight)]).await;
    // Empty files: no blocks, only entries.
    let script = "i=0; while :; do : > e$i; i=$((i+1)); done";
    let mut request = runner.action("e1", &["/bin/sh", "-c", script]);
    request.corral_policy = "tight".into();
    use std::os::unix::fs::PermissionsExt;
    let root = runner.build().join("e1/root");
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let status = runner.client.run(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limits.disk_max_entries"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_actions_get_their_own_host_ids_and_roots_no_world_write() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !privileged("concurrent_actions_get_their_own_host_ids_and_roots_no_world_write") {
        return;
    }
    let ids = corral_runner::config::ActionIdsConfig {
        first_uid: 1_899_100_000,
        first_gid: 1_899_200_000,
        count: 2,
    };
    let runner = Runner::start_with(&[], |cfg| cfg.action_ids = ids).await;
    // A cached input: the worker's, read-only, hardlinked into the root.
    let cache = runner.dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let cached = cache.join("blob");
    std::fs::write(&cached, "cached\n").unwrap();
    std::fs::set_permissions(&cached, std::fs::Permissions::from_mode(0o444)).unwrap();
    let script = "mkdir -p out/deep && echo made > out/deep/file; \
                  chmod u+w input; echo x > input; sleep 1; \
                  [ -w . ] && echo ROOT-WRITABLE";
    let mut requests = Vec::new();
    for action in ["i1", "i2"] {
        requests.push(runner.action(action, &["/bin/sh", "-c", script]));
        let root = runner.build().join(action).join("root");
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::hard_link(&cached, root.join("input")).unwrap();
    }
    let third = runner.action("i3", &["/bin/true"]);
    let (mut c1, mut c2, mut c3) = (
        runner.client.clone(),
        runner.client.clone(),
        runner.client.clone(),
    );
    let [r1, r2] = [requests.remove(0), requests.remove(0)];
    // Both run at once (each sleeps 1 s): a third finds no free id.
    let late = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c3.run(third).await
    };
    let (a, b, refused) = tokio::join!(c1.run(r1), c2.run(r2), late);
    let refused = refused.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("action_ids.count"),
        "{refused:?}"
    );
    for response in [a, b] {
        assert_eq!(response.unwrap().into_inner().exit_code, 0);
    }
    let mut owners = Vec::new();
    for action in ["i1", "i2"] {
        assert_eq!(runner.read(&format!("{action}/stdout")), "ROOT-WRITABLE\n");
        let root = runner.build().join(action).join("root");
        for dir in [root.clone(), root.join("sub")] {
            let meta = std::fs::metadata(&dir).unwrap();
            assert_eq!(
                meta.mode() & 0o022,
                0,
                "{} is writable by others: {:o}",
                dir.display(),
                meta.mode()
            );
        }
        let made = std::fs::metadata(root.join("out/deep/file")).unwrap();
        owners.push((made.uid(), made.gid()));
    }
    owners.sort_unstable();
    assert_eq!(
        owners,
        [
            (1_899_100_000, 1_899_200_000),
            (1_899_100_001, 1_899_200_001)
        ],
        "each concurrent action has its own host ids"
    );
    assert_eq!(std::fs::read_to_string(&cached).unwrap(), "cached\n");
    assert_eq!(
        std::fs::metadata(&cached).unwrap().mode() & 0o777,
        0o444,
        "the cached input's mode changed"
    );
}
