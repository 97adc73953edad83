//! A farm of the four daemons on the deploy configs, each run as its unit
//! would run it and traced through an action, against its unit's system
//! call filter, address families and W^X rule.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::unit_emulation::{as_unit, unit_capabilities};
use super::*;

/// Every system call in systemd's `group` (or `name` itself), groups
/// inside it expanded.
fn syscall_group(group: &str) -> std::collections::BTreeSet<String> {
    if !group.starts_with('@') {
        return [group.to_owned()].into();
    }
    let output = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "systemd-analyze syscall-filter {group}"
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .skip(1) // the group's own name
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|name| !name.is_empty())
        .flat_map(syscall_group)
        .collect()
}

/// What a unit's `SystemCallFilter=` lines allow: the allow list less
/// the `~` deny lists.
fn allowed_syscalls(unit: &str) -> std::collections::BTreeSet<String> {
    let mut allowed = std::collections::BTreeSet::new();
    let mut denied = std::collections::BTreeSet::new();
    for line in directive(unit, "SystemCallFilter") {
        match line.strip_prefix('~') {
            Some(deny) => deny
                .split_whitespace()
                .for_each(|g| denied.extend(syscall_group(g))),
            None => line
                .split_whitespace()
                .for_each(|g| allowed.extend(syscall_group(g))),
        }
    }
    assert!(!allowed.is_empty(), "no allow list");
    allowed.difference(&denied).cloned().collect()
}

/// The part of an `strace -f -o` file from the exec of `corral` on: what
/// ran before it, unshare and setpriv setting up a unit's options, is
/// systemd's part.
fn since_corral(trace: &str) -> &str {
    let exec = format!("execve(\"{}\"", corral_e2e::corral_binary().display());
    let from = trace
        .find(&exec)
        .unwrap_or_else(|| panic!("no {exec} in the trace"));
    &trace[from..]
}

/// The system calls a trace shows, by name.
fn traced_syscalls(trace: &str) -> std::collections::BTreeSet<String> {
    since_corral(trace)
        .lines()
        .filter_map(|line| {
            let call = line.split_once(' ')?.1.trim_start();
            let name = &call[..call.find('(')?];
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .then(|| name.to_owned())
        })
        .collect()
}

/// `deploy/config/<daemon>.toml` with `changes` (dotted key, value)
/// applied, written into `dir`.
fn local_config(dir: &Path, daemon: &str, changes: &[(&str, String)]) -> PathBuf {
    let mut table: toml::Table = toml::from_str(&deploy_config(daemon)).unwrap();
    for (key, value) in changes {
        let mut at = &mut table;
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap();
        for part in parts {
            at = match part.strip_suffix("[0]") {
                Some(array) => at[array].as_array_mut().unwrap()[0].as_table_mut().unwrap(),
                None => at[part].as_table_mut().unwrap(),
            };
        }
        assert!(at.contains_key(last), "{daemon}: {key}");
        at.insert(last.to_owned(), toml::Value::String(value.clone()));
    }
    let path = dir.join(format!("{daemon}.toml"));
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    path
}

/// A daemon of the test farm; killed (the traced process, not strace,
/// which would only detach) if the test ends early.
struct Traced {
    tracer: std::process::Child,
}

impl Traced {
    /// The process strace started: the daemon.
    fn daemon_pid(&self) -> Option<u32> {
        let tracer = self.tracer.id();
        let children = std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"));
        children.ok()?.split_whitespace().next()?.parse().ok()
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.daemon_pid() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // Only while strace runs: once it is reaped its pid may be
        // another process's, whose child this must not kill.
        if matches!(self.tracer.try_wait(), Ok(None)) {
            self.signal("KILL");
            let _ = self.tracer.wait();
        }
    }
}

/// GET `path` on loopback `port`: the status line's code, if anything
/// answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
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
    response.split_whitespace().nth(1)?.parse().ok()
}

/// The uid and gid storage and the scheduler run as here, for the
/// DynamicUser= of their units: one that owns nothing.
const NOBODY: u32 = 65534;

/// Uploads and executes one action through storage and the scheduler,
/// with the test's REAPI client (tests/python); its outputs include a
/// directory the action made unreadable, which the worker must read, and
/// a sticky one, from which it must remove what the action's uid owns.
const CLIENT: &str = r#"
import os, subprocess, sys
stubs, tests, storage, scheduler = sys.argv[1:5]
protos = os.path.join(tests, "python", "protos")
ours = os.path.join(tests, "..", "proto", "protos")
subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + protos, "-I" + ours,
                "--python_out=" + stubs, "--grpc_python_out=" + stubs,
                "build/bazel/remote/execution/v2/remote_execution_subset.proto",
                "google/longrunning/operations.proto", "google/rpc/status.proto",
                "google/rpc/precondition_failure.proto"], check=True)
sys.path[:0] = [stubs, os.path.join(tests, "python")]
import reapi_client as rc
p = rc.prepare(["/bin/sh", "-c", "mkdir -p out/d out/s && cat in.txt > out/a && echo x > out/d/f"
                " && chmod 0 out/d && echo y > out/s/g && chmod 1777 out/s"],
               inputs={"in.txt": b"input"}, output_paths=["out"], salt=os.urandom(8))
cas, ex = rc.Client(storage), rc.Client(scheduler)
cas.upload(*p.blobs())
r = rc.response(ex.execute(rc.digest_of(rc.encode(p.action)))[-1])
tree = cas.read(r.result.output_directories[0].tree_digest)
print("status", r.status.code, "exit", r.result.exit_code, "tree", len(tree))
"#;

#[test]
fn storage_scheduler_and_worker_stay_within_their_units_system_call_filters() {
    let test = "storage_scheduler_and_worker_stay_within_their_units_system_call_filters";
    if !corral_testkit::privileged(test) {
        return;
    }
    let Some(python) = test_python(test) else {
        return;
    };
    for tool in ["strace", "systemd-analyze"] {
        if Command::new(tool).arg("--version").output().is_err() {
            corral_testkit::skip(test, &format!("{tool} is not installed"));
            return;
        }
    }
    // The deploy configs, on loopback ports and under a scratch directory
    // that the runner's read-only root still shows (its /tmp is private).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let scratch = dir.path();
    // The runner's StateDirectory= and RuntimeDirectory=, writable to it;
    // storage's, its user's.
    let writable = [scratch.join("worker"), scratch.join("run")];
    for dir in &writable {
        std::fs::create_dir_all(dir).unwrap();
    }
    let cas = scratch.join("cas");
    std::fs::create_dir_all(&cas).unwrap();
    std::os::unix::fs::chown(&cas, Some(NOBODY), Some(NOBODY)).unwrap();
    let port = corral_e2e::free_port;
    let (storage_port, scheduler_port) = (port(), port());
    let (worker_http, scheduler_http) = (port(), port());
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let socket = scratch.join("run/runner.sock").display().to_string();
    let worker_dir = scratch.join("worker").display().to_string();
    let configs = [
        (
            "storage",
            local_config(
                scratch,
                "storage",
                &[
                    ("listen", addr(storage_port)),
                    ("backend.dir", cas.join("store").display().to_string()),
                    ("metrics.listen", addr(port())),
                ],
            ),
        ),
        (
            "scheduler",
            local_config(
                scratch,
                "scheduler",
                &[
                    ("listen", addr(scheduler_port)),
                    ("storage", format!("http://{}", addr(storage_port))),
                    ("metrics.listen", addr(scheduler_http)),
                ],
            ),
        ),
        (
            "runner",
            local_config(
                scratch,
                "runner",
                &[
                    ("listen_path", socket.clone()),
                    ("build_directory", format!("{worker_dir}/build")),
                    ("metrics.listen", addr(port())),
                ],
            ),
        ),
        (
            "worker",
            local_config(
                scratch,
                "worker",
                &[
                    ("scheduler", format!("http://{}", addr(scheduler_port))),
                    ("storage", format!("http://{}", addr(storage_port))),
                    ("directory", worker_dir),
                    ("slots[0].runner", socket),
                    ("metrics.listen", addr(worker_http)),
                ],
            ),
        ),
    ];
    // Every daemon traced, the runner too: its calls (namespaces,
    // mounts) must fail the check, or the check proves nothing. The runner
    // runs with its unit's capabilities and file system options, and so
    // shows them enough for a worker's action.
    let daemons: Vec<(&str, Traced)> = configs
        .iter()
        .map(|(daemon, config)| {
            let log = std::fs::File::create(scratch.join(format!("{daemon}.log"))).unwrap();
            let binary = corral_e2e::corral_binary();
            let command = [
                binary.as_os_str(),
                OsStr::new(daemon),
                OsStr::new("--config"),
                config.as_os_str(),
            ];
            // Each daemon as its unit runs it: its capabilities, its file
            // system options, storage and the scheduler as a user that
            // owns nothing but storage's directory (DynamicUser=).
            let (writable, user): (Vec<&Path>, _) = match *daemon {
                "runner" => (writable.iter().map(PathBuf::as_path).collect(), None),
                "worker" => (vec![writable[0].as_path()], None),
                "storage" => (vec![cas.as_path()], Some(NOBODY)),
                _ => (Vec::new(), Some(NOBODY)),
            };
            let unit = as_unit(&unit_capabilities(daemon), &writable, user, &command);
            let command: Vec<_> = std::iter::once(unit.get_program())
                .chain(unit.get_args())
                .map(OsStr::to_owned)
                .collect();
            let tracer = Command::new("strace")
                .args(["-f", "-qq", "-o"])
                .arg(scratch.join(format!("{daemon}.trace")))
                .args(command)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            (*daemon, Traced { tracer })
        })
        .collect();
    let logs = || {
        DAEMONS
            .iter()
            .map(|d| format!("--- {d}\n{}", read(&scratch.join(format!("{d}.log")))))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Up: storage answers the scheduler, and the worker serves. Not the
    // worker's /readyz: an idle worker is ready only once its first
    // Synchronize is answered, a long poll of up to 50 s; the action
    // below waits in the queue until the worker takes it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while http_status(scheduler_http, "/readyz") != Some(200)
        || http_status(worker_http, "/healthz") != Some(200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the farm is not up within 60 s\n{}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::fs::create_dir_all(scratch.join("stubs")).unwrap();
    let output = Command::new(&python)
        .args(["-c", CLIENT])
        .arg(scratch.join("stubs"))
        .arg(repo().join("tests"))
        .arg(addr(storage_port))
        .arg(addr(scheduler_port))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let said = corral_e2e::output_text(&output);
    assert!(
        output.status.success() && said.contains("status 0 exit 0 tree"),
        "the action through the farm:\n{said}\n{}",
        logs()
    );
    // The worker removed the action's directory, what the action's uid
    // owns in it included (its unit's capabilities): nothing is left
    // but the marker files of its start-up check and its image cache.
    let build = scratch.join("worker/build");
    let left = || -> Vec<String> {
        std::fs::read_dir(&build)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with("corral-build-directory-check-") && name != "images")
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        left().is_empty(),
        "left in {}: {:?}\n{}",
        build.display(),
        left(),
        logs()
    );
    // Storage wrote its blobs as its unit's user.
    let store = std::fs::metadata(cas.join("store")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&store),
        NOBODY,
        "storage ran as root"
    );
    // SIGTERM, so that the stop is traced too, one daemon after the other
    // in the order systemd stops the units (the reverse of their start):
    // the worker first, so that its last reports find the scheduler, whose
    // stop would otherwise wait on the worker's held Synchronize.
    for (name, mut daemon) in daemons.into_iter().rev() {
        daemon.signal("TERM");
        let status = daemon.tracer.wait().unwrap();
        assert!(
            status.success(),
            "{name} under strace: {status}\n{}",
            logs()
        );
    }
    for daemon in ["storage", "scheduler", "worker", "runner"] {
        let trace = read(&scratch.join(format!("{daemon}.trace")));
        let used = traced_syscalls(&trace);
        assert!(
            used.contains("connect") || used.contains("accept4"),
            "{daemon}: {used:?}"
        );
        let unit_of = if daemon == "runner" {
            "storage"
        } else {
            daemon
        };
        let allowed = allowed_syscalls(&read(&unit_path(unit_of)));
        let outside: Vec<&String> = used.difference(&allowed).collect();
        if daemon == "runner" {
            assert!(
                outside.iter().any(|c| *c == "unshare" || *c == "mount"),
                "storage's filter would have let the runner's sandbox through: {outside:?}"
            );
        } else {
            assert!(
                outside.is_empty(),
                "corral {daemon} made calls its unit's SystemCallFilter refuses: {outside:?}"
            );
            let unit = read(&unit_path(daemon));
            check_families_and_memory(daemon, since_corral(&trace), &unit)
                .unwrap_or_else(|refused| panic!("corral {daemon}: {refused}"));
        }
    }
}

/// Whether a trace keeps to the unit's RestrictAddressFamilies= (every
/// `socket()` of a listed family) and MemoryDenyWriteExecute= (no
/// mapping both writable and executable, no mprotect adding execute).
fn check_families_and_memory(daemon: &str, trace: &str, unit: &str) -> Result<(), String> {
    let families: Vec<&str> = directive(unit, "RestrictAddressFamilies")
        .iter()
        .flat_map(|line| line.split_whitespace())
        .collect();
    assert!(!families.is_empty(), "{daemon}: no RestrictAddressFamilies");
    for line in trace.lines() {
        if let Some(rest) = line.split_once("socket(").map(|(_, rest)| rest) {
            let family = rest.split([',', ')']).next().unwrap_or("");
            if !families.contains(&family) {
                return Err(format!("socket of {family}, outside {families:?}: {line}"));
            }
        }
    }
    if directive(unit, "MemoryDenyWriteExecute") == ["yes"] {
        for line in trace.lines() {
            let writable_executable =
                line.contains("PROT_WRITE|PROT_EXEC") || line.contains("PROT_EXEC|PROT_WRITE");
            let mprotect_exec = line.contains("mprotect(") && line.contains("PROT_EXEC");
            if writable_executable || mprotect_exec {
                return Err(format!("memory made executable: {line}"));
            }
        }
    }
    Ok(())
}

#[test]
fn a_trace_outside_the_units_families_or_memory_rules_is_caught() {
    let unit = "RestrictAddressFamilies=AF_INET AF_UNIX\nMemoryDenyWriteExecute=yes\n";
    let fine = "12 socket(AF_INET, SOCK_STREAM, 0) = 3\n\
                12 mmap(NULL, 4096, PROT_READ|PROT_EXEC, MAP_PRIVATE, 3, 0) = 0x7f\n";
    assert_eq!(check_families_and_memory("t", fine, unit), Ok(()));
    for bad in [
        "12 socket(AF_NETLINK, SOCK_RAW, 0) = 3",
        "12 mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE, -1, 0) = 0x7f",
        "12 mprotect(0x7f, 4096, PROT_READ|PROT_EXEC) = 0",
    ] {
        assert!(check_families_and_memory("t", bad, unit).is_err(), "{bad}");
    }
}
