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

#[test]
fn a_tls_mistake_in_a_config_stops_the_daemon_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("corral-tls-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |daemon: &str, toml: &str| {
        let file = dir.join(format!("{daemon}.toml"));
        std::fs::write(&file, toml).unwrap();
        let out = corral()
            .arg(daemon)
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let stderr = run(
        "storage",
        "[backend]\nkind = \"remote\"\nendpoint = \"https://s:8980\"\n",
    );
    assert!(
        stderr.contains("backend.endpoint: https://s:8980 needs [client_tls]"),
        "{stderr}"
    );
    let stderr = run(
        "scheduler",
        "listen = \"127.0.0.1:0\"\n[tls]\ncertificate = \"/nonexistent/s.crt\"\n\
         private_key = \"/nonexistent/s.key\"\n",
    );
    assert!(
        stderr.contains("tls.certificate: failed to read /nonexistent/s.crt"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
