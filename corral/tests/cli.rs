//! The `corral` binary's own promises: `--version` names the commit,
//! policies are checked, and `corral sandbox run` passes output and exit
//! codes through.

use std::path::PathBuf;
use std::process::Command;

// `corral sandbox run` maps ids and writes cgroups: root only.
use corral_testkit::privileged as root;

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
    if !root("sandbox_run_passes_output_and_exit_code_through") {
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
    // Root, to drop to another uid with setpriv.
    if !root("sandbox_run_without_root_works_and_says_what_it_left_out") {
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

/// The test user for rootless runs with subordinate ids, made (as root) if
/// missing, with a subordinate uid and gid range: its uid and gid.
#[allow(clippy::unwrap_used)] // test code: a failed step stops the test
fn rootless_user() -> (u32, u32) {
    const USER: &str = "corral-rootless";
    let exists = Command::new("id").args(["-u", USER]).output().unwrap();
    if !exists.status.success() {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(USER)
            .status()
            .unwrap();
        assert!(made.success(), "useradd {USER}");
    }
    // Far from the ranges useradd hands out (100000 up) and from the
    // runner's action_ids default.
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
            let line = format!("{USER}:1800000000:65536\n");
            std::fs::write(file, text + &line).unwrap();
        }
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, USER]).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (id("-u"), id("-g"))
}

#[test]
fn rootless_actions_run_as_a_subordinate_id_and_cannot_rewrite_the_cache() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let test = "rootless_actions_run_as_a_subordinate_id_and_cannot_rewrite_the_cache";
    // Root, to make a test user and drop to it.
    if !root(test) {
        return;
    }
    if !std::path::Path::new("/usr/bin/newuidmap").exists() {
        corral_testkit::skip(test, "newuidmap is not installed (apt package uidmap)");
        return;
    }
    let (uid, gid) = rootless_user();
    // A rootless worker's layout: the cache file and the input root are
    // the user's own; the input is a hardlink of the cache file.
    let dir = std::env::temp_dir().join(format!("corral-rootless-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (cache, root) = (dir.join("cache"), dir.join("root"));
    for d in [&dir, &cache, &root] {
        std::fs::create_dir_all(d).unwrap();
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // As the runner hands it over: writable by the action's gid, which
    // is the user's.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o775)).unwrap();
    let blob = cache.join("blob");
    std::fs::write(&blob, "cached\n").unwrap();
    std::os::unix::fs::chown(&blob, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::hard_link(&blob, root.join("input")).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()])
        .args(["--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_corral"))
        .args(["sandbox", "run", "--root"])
        .arg(&root)
        .args(["--", "/bin/sh", "-c"])
        .arg(
            "cat /proc/self/uid_map; chmod u+w input; echo x > input; \
             mkdir out && echo o > out/f && chmod 000 out/f out",
        )
        .env("CORRAL_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cached = std::fs::read_to_string(&blob).unwrap();
    let meta = std::fs::metadata(&blob).unwrap();
    // Given back to the user after the run, though the action locked it.
    let left: Vec<(u32, u32)> = [root.join("out"), root.join("out/f")]
        .iter()
        .map(|p| std::fs::symlink_metadata(p).map_or((0, 0), |m| (m.uid(), m.mode() & 0o700)))
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(left, [(uid, 0o700), (uid, 0)], "{stdout}\n{stderr}");
    assert_eq!(
        cached, "cached\n",
        "the cache was rewritten\n{stdout}\n{stderr}"
    );
    assert_eq!(meta.mode() & 0o777, 0o444, "{stdout}\n{stderr}");
    // The action's uid 0 is a subordinate id, not the user's.
    let map: Vec<u64> = stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        map.len() == 3 && map[0] == 0 && (1_800_000_000..1_800_065_536).contains(&map[1]),
        "uid_map {map:?}\n{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("not running as root"),
        "subordinate ids were not used\n{stderr}"
    );
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
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
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

#[test]
fn up_on_a_reachable_address_without_secure_or_insecure_refuses_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = corral()
        .args(["up", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("can be reached from other hosts"),
        "{stderr}"
    );
    assert!(stderr.contains("--secure"), "{stderr}");
    assert!(stderr.contains("--insecure"), "{stderr}");
    // Nothing was started or made: the refusal comes first.
    assert!(!dir.path().join("data").exists());
    // The two flags do not go together.
    let out = corral()
        .args(["up", "--secure", "--insecure", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[test]
fn up_takes_its_size_as_storage_does_and_refuses_one_that_overflows() {
    let out = corral()
        .args(["up", "--max-size", "99999999999TiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--max-size"), "{stderr}");
    assert!(stderr.contains("is not a size"), "{stderr}");
}

#[test]
fn sandbox_run_report_lists_the_host_files_read() {
    if !root("sandbox_run_report_lists_the_host_files_read") {
        return;
    }
    let script = ["/bin/sh", "-c", "cat /etc/hostname > /dev/null"];
    let out = corral()
        .args(["sandbox", "run", "--report", "--"])
        .args(script)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(" files opened outside the input root\n"),
        "{stderr}"
    );
    assert!(stderr.lines().any(|l| l == "/etc/hostname"), "{stderr}");

    // Without root there are no fanotify mount marks: the report says so,
    // and the action runs all the same.
    let out = Command::new("setpriv")
        .args(["--reuid", "4242", "--regid", "4242", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_corral"))
        .args(["sandbox", "run", "--report", "--"])
        .args(script)
        .env("CORRAL_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("undeclared inputs: unavailable: ") && stderr.contains("CAP_SYS_ADMIN"),
        "{stderr}"
    );
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `GET path` on loopback `port` over plain HTTP: the whole response, or
/// None while nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Kills the daemon when the test ends, however it ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn storage_scheduler_and_worker_serve_health_on_the_metrics_flags_address() {
    let dir = tempfile::tempdir().unwrap();
    let storage_port = free_port();
    let storage_url = format!("http://127.0.0.1:{storage_port}");
    let daemons: [(&str, Vec<String>); 3] = [
        (
            "storage",
            vec![
                "--listen".into(),
                format!("127.0.0.1:{storage_port}"),
                "--dir".into(),
                dir.path().join("cas").display().to_string(),
            ],
        ),
        (
            "scheduler",
            vec![
                "--listen".into(),
                format!("127.0.0.1:{}", free_port()),
                "--storage".into(),
                storage_url,
            ],
        ),
        // No config: the worker waits for its runner, and serves health
        // meanwhile (alive, not ready).
        ("worker", vec![]),
    ];
    let mut running = Vec::new();
    for (daemon, args) in daemons {
        let port = free_port();
        let child = corral()
            .arg(daemon)
            .args(&args)
            .arg("--metrics")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        running.push(Daemon(child));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let response = loop {
            if let Some(response) = http_get(port, "/healthz") {
                break response;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "corral {daemon} --metrics 127.0.0.1:{port}: nothing answers /healthz"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        assert!(response.starts_with("HTTP/1.1 200"), "{daemon}: {response}");
        let metrics = http_get(port, "/metrics").unwrap();
        assert!(
            metrics.contains(&format!("corral_{daemon}_")),
            "{daemon}'s page:\n{metrics}"
        );
    }
}
