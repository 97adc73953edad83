//! The `corral` binary's own promises: `--version` names the commit,
//! policies are checked, and `corral sandbox run` passes output and exit
//! codes through.

use std::path::PathBuf;
use std::process::Command;

fn corral() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corral"))
}

#[test]
fn version_names_the_git_commit() {
    let out = corral().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("corral 0."), "{text}");
    assert!(text.contains("(commit "), "{text}");
}

#[test]
fn check_policy_accepts_the_shipped_policies_and_refuses_a_bad_one() {
    let policies = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let out = corral()
        .args(["sandbox", "check-policy"])
        .arg(policies.join("default.toml"))
        .arg(policies.join("hermetic.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = std::env::temp_dir().join(format!("corral-bad-policy-{}.toml", std::process::id()));
    std::fs::write(&bad, "[filesystem]\nread_only_paths = [\"usr\"]\n").unwrap();
    let out = corral()
        .args(["sandbox", "check-policy"])
        .arg(&bad)
        .output()
        .unwrap();
    std::fs::remove_file(&bad).unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("must be an absolute path"), "{stderr}");
}

#[test]
fn json_log_format_is_accepted() {
    let out = corral()
        .args(["--log-format", "json", "--version"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn sandbox_run_passes_output_and_exit_code_through() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        eprintln!("skipped: corral sandbox run needs root (id maps, cgroups)");
        return;
    }
    let out = corral()
        .args(["sandbox", "run", "--env", "GREETING=hi", "--json", "--"])
        .args(["/bin/sh", "-c", "echo $GREETING; echo oops >&2; exit 3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "hi\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("oops\n"), "{stderr}");
    assert!(stderr.contains("\"exited\": 3"), "{stderr}");
}

#[test]
fn sandbox_run_without_root_works_and_says_what_it_left_out() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        eprintln!("skipped: needs root to drop to another uid with setpriv");
        return;
    }
    // An unprivileged uid with user namespaces: no id map to nobody, no
    // cgroups; the sandbox must still run, and warn about both.
    let out = Command::new("setpriv")
        .args(["--reuid", "4242", "--regid", "4242", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_corral"))
        .args(["sandbox", "run", "--"])
        .args([
            "/bin/sh",
            "-c",
            "grep CapEff /proc/self/status; ls /proc | grep -c '^[0-9]'",
        ])
        .env("CORRAL_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stderr.contains("not running as root"), "{stderr}");
    assert!(
        stderr.contains("no resource limits") || stderr.contains("cgroup"),
        "{stderr}"
    );
}

/// True when `corral sandbox run` can run here; says why not otherwise.
fn root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI must run as root");
        eprintln!("skipped {test}: corral sandbox run needs root (id maps, cgroups)");
        return false;
    }
    true
}

#[test]
fn sandbox_run_drops_the_callers_supplementary_groups() {
    if !root("sandbox_run_drops_the_callers_supplementary_groups") {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--groups", "4,24"])
        .arg(env!("CARGO_BIN_EXE_corral"))
        .args([
            "sandbox",
            "run",
            "--",
            "/bin/grep",
            "^Groups:",
            "/proc/self/status",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim_end(), "Groups:", "{stdout:?}");
}

#[test]
fn sandbox_run_names_a_root_its_uid_cannot_enter_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    if !root("sandbox_run_names_a_root_its_uid_cannot_enter_and_the_fix") {
        return;
    }
    // What `mktemp -d` makes: 0700, owned by root.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = corral()
        .args(["sandbox", "run", "--root"])
        .arg(dir.path())
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert!(stderr.contains("chmod"), "{stderr}");
}

#[test]
fn killing_sandbox_run_ends_the_action_and_its_cgroup() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};
    if !root("killing_sandbox_run_ends_the_action_and_its_cgroup") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cli = corral()
        .args(["sandbox", "run", "--root"])
        .arg(dir.path())
        .args([
            "--",
            "/bin/sh",
            "-c",
            "echo > started; exec sleep 4444.4444",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_string_lossy().parse().ok()?;
                let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains("4444.4444")
                    .then_some(pid)
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // The marker is written just before the shell execs sleep.
    let sleeping = || dir.path().join("started").exists() && !running().is_empty();
    while !sleeping() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running().is_empty(), "the action's sleep never started");
    let prefix = format!("run-{}-", cli.id());
    let cgroups = corral_sandbox::cgroup::CgroupRoot::detect().unwrap();
    let left = || cgroups.as_ref().map_or(0, |c| c.leftovers(&prefix).len());
    assert!(cgroups.is_none() || left() == 1, "the action's cgroup");

    cli.kill().unwrap();
    cli.wait().unwrap();
    let killed = Instant::now();
    while (!running().is_empty() || left() > 0) && killed.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (pids, groups) = (running(), left());
    for pid in &pids {
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(
        pids.is_empty() && groups == 0,
        "2 s after SIGKILL of corral sandbox run: action {pids:?}, {groups} cgroups left"
    );
}

#[test]
fn sandbox_run_without_root_says_the_groups_stay() {
    if !root("sandbox_run_without_root_says_the_groups_stay") {
        return;
    }
    // Without CAP_SETGID the groups cannot be dropped: the log must say
    // so rather than let an operator believe they were.
    let out = Command::new("setpriv")
        .args(["--reuid", "4242", "--regid", "4242", "--groups", "4"])
        .arg(env!("CARGO_BIN_EXE_corral"))
        .args(["sandbox", "run", "--", "/bin/true"])
        .env("CORRAL_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("supplementary groups [4] cannot be dropped"),
        "{stderr}"
    );
}
