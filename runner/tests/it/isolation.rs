//! The runner's side of issue 14: its host-side files cannot be redirected
//! by a planted symlink, and an action does not outlive a killed runner.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_proto::runner::{CheckReadinessRequest, RunRequest};
use corral_runner::Config;
use corral_sandbox::cgroup::CgroupRoot;
use std::os::unix::fs::PermissionsExt;

use crate::{privileged, Runner};

#[tokio::test(flavor = "multi_thread")]
async fn the_readiness_probe_does_not_follow_a_planted_symlink() {
    if !privileged("the_readiness_probe_does_not_follow_a_planted_symlink") {
        return;
    }
    let mut runner = Runner::start().await;
    // The name the probe used to write to, as root, in the shared /tmp;
    // planted after the runner is up, and removed before any assertion.
    let predictable = std::env::temp_dir().join(format!("corral-readiness-{}", std::process::id()));
    let victim = tempfile::tempdir().unwrap();
    let _ = std::fs::remove_file(&predictable);
    std::os::unix::fs::symlink(victim.path(), &predictable).unwrap();
    let ready = runner
        .client
        .check_readiness(CheckReadinessRequest {
            path: String::new(),
        })
        .await;
    let planted = std::fs::symlink_metadata(&predictable);
    let _ = std::fs::remove_file(&predictable);
    ready.unwrap();
    assert!(
        planted.is_ok_and(|m| m.file_type().is_symlink()),
        "the planted symlink was replaced or removed"
    );
    let written: Vec<_> = std::fs::read_dir(victim.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(written.is_empty(), "wrote through the symlink: {written:?}");
}

/// Env var naming the directory of a runner started as a separate process
/// (see `runner_daemon_process`).
const DAEMON_DIR: &str = "CORRAL_TEST_RUNNER_DIR";

/// Not a test of its own: the body of the runner daemon that
/// `killing_the_runner_ends_the_action_and_its_cgroup` starts (by
/// re-executing this binary) and then kills. Returns at once otherwise.
#[test]
fn runner_daemon_process() {
    let Some(dir) = std::env::var_os(DAEMON_DIR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let cfg = Config {
        listen_path: dir.join("runner.sock"),
        build_directory: dir.join("build"),
        ..Config::default()
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(corral_runner::run(cfg, std::future::pending()))
        .unwrap();
}

/// Pids of processes whose command line contains `needle` (zombies have
/// none, so they count as gone).
fn processes_running(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_runner_ends_the_action_and_its_cgroup() {
    if !privileged("killing_the_runner_ends_the_action_and_its_cgroup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "isolation::runner_daemon_process", "--nocapture"])
        .env(DAEMON_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.path().join("runner.sock");
    let build = dir.path().join("build");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::create_dir_all(build.join("k1/root")).unwrap();
    std::fs::set_permissions(
        build.join("k1/root"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let request = RunRequest {
        arguments: [
            "/bin/sh",
            "-c",
            "echo started > started; exec sleep 4343.4343",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        environment_variables: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
        stdout_path: "k1/stdout".into(),
        stderr_path: "k1/stderr".into(),
        input_root_directory: "k1/root".into(),
        ..Default::default()
    };
    let mut client = crate::connect(socket).await;
    #[allow(clippy::disallowed_methods)] // awaited below, within the test
    let call = tokio::spawn(async move { client.run(request).await });
    let started = build.join("k1/root/started");
    let deadline = Instant::now() + Duration::from_secs(30);
    // The marker is written just before the shell execs sleep.
    let sleeping = || started.exists() && !processes_running("4343.4343").is_empty();
    while !sleeping() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sleeping(), "the action's sleep never started");
    let prefix = format!("run-{}-", daemon.id());
    let cgroups = CgroupRoot::detect().unwrap();
    if let Some(c) = &cgroups {
        assert_eq!(c.leftovers(&prefix).len(), 1, "the action's cgroup");
    }

    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let killed = Instant::now();
    let gone = || {
        processes_running("4343.4343").is_empty()
            && cgroups
                .as_ref()
                .is_none_or(|c| c.leftovers(&prefix).is_empty())
    };
    while !gone() && killed.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (running, left) = (
        processes_running("4343.4343"),
        cgroups.as_ref().map_or(0, |c| c.leftovers(&prefix).len()),
    );
    if !gone() {
        // Leave nothing behind for the next run.
        for pid in &running {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Some(c) = &cgroups {
            for group in c.leftovers(&prefix) {
                let _ = group.remove();
            }
        }
    }
    assert!(
        running.is_empty() && left == 0,
        "2 s after SIGKILL of the runner: action {running:?} still running, cgroups left: {left}"
    );
    eprintln!(
        "action and cgroup gone {:?} after the runner",
        killed.elapsed()
    );
    assert!(call.await.unwrap().is_err(), "the call must fail");
}
