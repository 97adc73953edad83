//! Probes for the isolation fixes of issue 14: supplementary groups, the
//! action's life tied to its supervisor's, the socket allow list and
//! other seccomp entries checked against what the kernel would answer
//! without the filter, recursive read-only binds, and an input root the
//! sandbox's uid cannot enter.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_sandbox::cgroup::CgroupRoot;
use corral_sandbox::{Command, Error, Sandbox};

use crate::{default_policy, input_root, privileged, python, run_with};

/// Set in the run of this test binary that `supplementary_groups_are_dropped`
/// starts with supplementary groups.
const WITH_GROUPS: &str = "CORRAL_TEST_WITH_GROUPS";

#[test]
fn supplementary_groups_are_dropped() {
    if !privileged("supplementary_groups_are_dropped") {
        return;
    }
    // Groups 4 (adm) and 24 (cdrom), as a daemon under systemd may have:
    // setpriv gives them to a fresh run of this test, whose sandbox then
    // forks from a process that has them (setgroups here would need unsafe,
    // which the workspace denies outside the sandbox's sys module).
    if std::env::var_os(WITH_GROUPS).is_none() {
        let test = "isolation::supplementary_groups_are_dropped";
        let out = std::process::Command::new("setpriv")
            .args(["--groups", "4,24", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", test, "--test-threads=1"])
            .env(WITH_GROUPS, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Groups:", "4", "24"])),
        "setpriv did not give the groups\n{status}"
    );
    let ran = run_with(
        default_policy(),
        &[
            "/usr/bin/python3",
            "-c",
            r#"
import errno
groups = [l for l in open('/proc/self/status') if l.startswith('Groups:')][0]
print('DENIED groups' if groups.split() == ['Groups:'] else 'ESCAPED ' + groups.strip())
try:
    open('adm-only').read()
    print('ESCAPED read a 0440 file of group 4')
except OSError as e:
    print(('DENIED' if e.errno == errno.EACCES else 'ESCAPED'), 'adm-only', e.errno)
"#,
        ],
        Some(Duration::from_secs(30)),
        |root| {
            let file = root.join("adm-only");
            std::fs::write(&file, "secret\n").unwrap();
            std::os::unix::fs::chown(&file, Some(0), Some(4)).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        },
    );
    assert_eq!(ran.stdout.lines().count(), 2, "{}", ran.output());
    for line in ran.stdout.lines() {
        assert!(line.starts_with("DENIED"), "{line}\n{}", ran.output());
    }
}

/// Env var naming the input root when this test binary is re-executed as
/// a supervisor (see `supervisor_process`).
const SUPERVISOR_ROOT: &str = "CORRAL_TEST_SUPERVISOR_ROOT";

/// Not a test of its own: the body of the supervisor process that
/// `killing_the_supervisor_ends_the_action_and_its_cgroup` starts (by
/// re-executing this binary) and then kills. Returns at once otherwise.
#[test]
fn supervisor_process() {
    let Some(root) = std::env::var_os(SUPERVISOR_ROOT) else {
        return;
    };
    let root = PathBuf::from(root);
    let out = root.with_extension("out");
    std::fs::create_dir_all(&out).unwrap();
    let sandbox = Sandbox::new(default_policy()).unwrap();
    let command = Command {
        argv: [
            "/bin/sh",
            "-c",
            "echo started > started; exec sleep 4242.4242",
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        input_root: root,
        working_dir: PathBuf::new(),
        stdout: out.join("stdout"),
        stderr: out.join("stderr"),
        timeout: Some(Duration::from_secs(120)),
    };
    let _ = sandbox.run(&command);
}

/// Pids of processes whose command line contains `needle`.
fn processes_running(needle: &str) -> Vec<libc::pid_t> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        // A zombie has an empty command line: it is gone for our purpose.
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Polls `done` until it holds or `within` passes; returns how long it took.
fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done().then(|| start.elapsed())
}

#[test]
fn killing_the_supervisor_ends_the_action_and_its_cgroup() {
    if !privileged("killing_the_supervisor_ends_the_action_and_its_cgroup") {
        return;
    }
    let root = input_root();
    let mut supervisor = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "isolation::supervisor_process", "--nocapture"])
        .env(SUPERVISOR_ROOT, root.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The marker is written just before the shell execs sleep.
    let started = wait_until(Duration::from_secs(30), || {
        root.path().join("started").exists() && !processes_running("4242.4242").is_empty()
    });
    assert!(started.is_some(), "the action's sleep never started");
    let prefix = format!("run-{}-", supervisor.id());
    let cgroups = CgroupRoot::detect().unwrap();
    if let Some(cgroups) = &cgroups {
        assert_eq!(cgroups.leftovers(&prefix).len(), 1, "the action's cgroup");
    } else {
        eprintln!("no cgroup memory controller: only the action's end is checked");
    }

    supervisor.kill().unwrap();
    supervisor.wait().unwrap();
    let gone = wait_until(Duration::from_secs(2), || {
        processes_running("4242.4242").is_empty()
            && cgroups
                .as_ref()
                .is_none_or(|c| c.leftovers(&prefix).is_empty())
    });
    let (running, left) = (
        processes_running("4242.4242"),
        cgroups.as_ref().map_or(0, |c| c.leftovers(&prefix).len()),
    );
    if gone.is_none() {
        // Leave nothing behind for the next test run.
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
        gone.is_some(),
        "2 s after SIGKILL of the supervisor: action {running:?} still running, cgroups left: {left}"
    );
    eprintln!(
        "action and cgroup gone {:?} after the supervisor",
        gone.unwrap()
    );
    let _ = std::fs::remove_dir_all(root.path().with_extension("out"));
}

#[test]
fn socket_families_outside_the_allow_list_are_refused() {
    if !privileged("socket_families_outside_the_allow_list_are_refused") {
        return;
    }
    // Without the filter the kernel creates the audit, xfrm and generic
    // netlink sockets, and answers EAFNOSUPPORT (or creates the socket,
    // if the module loads) for the rest: only the filter gives EPERM.
    let ran = python(
        r#"
import errno, socket
refused = [('netlink audit', 16, 3, 9), ('netlink xfrm', 16, 3, 6),
           ('netlink generic', 16, 3, 16), ('netlink netfilter', 16, 3, 12),
           ('rds', 21, 5, 0), ('tipc', 30, 4, 0), ('can', 29, 3, 1),
           ('x25', 9, 5, 0), ('kcm', 41, 2, 0), ('smc', 43, 1, 0),
           ('llc', 26, 2, 0), ('bluetooth', 31, 3, 0), ('appletalk', 5, 2, 0)]
for name, family, kind, proto in refused:
    try:
        socket.socket(family, kind, proto).close()
        print('ESCAPED', name)
    except OSError as e:
        print('DENIED' if e.errno == errno.EPERM else 'ESCAPED', name, e.errno)
allowed = [('unix', 1, 1, 0), ('inet', 2, 2, 0), ('inet6', 10, 2, 0), ('netlink route', 16, 3, 0)]
for name, family, kind, proto in allowed:
    try:
        socket.socket(family, kind, proto).close()
        print('ALLOWED', name)
    except OSError as e:
        print('BROKEN', name, e.errno)
"#,
    );
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 17, "{}", ran.output());
    for line in &lines[..13] {
        assert!(line.starts_with("DENIED"), "{line}\n{}", ran.output());
    }
    for line in &lines[13..] {
        assert!(line.starts_with("ALLOWED"), "{line}\n{}", ran.output());
    }
}

#[test]
fn calls_an_unprivileged_process_could_make_are_refused_by_the_filter() {
    if !privileged("calls_an_unprivileged_process_could_make_are_refused_by_the_filter") {
        return;
    }
    // Each call is made so that it would succeed without the filter (or
    // fail with another errno: perf_event_open gives EACCES where
    // perf_event_paranoid is 3), so EPERM can only come from the filter.
    let ran = python(
        r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def probe(name, *args):
    r = libc.syscall(*args); e = ctypes.get_errno()
    print(('DENIED' if r == -1 and e == errno.EPERM else 'ESCAPED'), name, r, e)
UFFD_USER_MODE_ONLY = 1
probe('userfaultfd(UFFD_USER_MODE_ONLY)', 323, UFFD_USER_MODE_ONLY)
params = ctypes.create_string_buffer(120)
probe('io_uring_setup', 425, 4, params)
KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING = 0, -3
probe('keyctl(GET_KEYRING_ID)', 250, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1)
attr = (ctypes.c_uint8 * 128)()
ctypes.c_uint32.from_buffer(attr, 0).value = 1       # PERF_TYPE_SOFTWARE
ctypes.c_uint32.from_buffer(attr, 4).value = 128     # size
ctypes.c_uint64.from_buffer(attr, 8).value = 0       # PERF_COUNT_SW_CPU_CLOCK
ctypes.c_uint64.from_buffer(attr, 40).value = 1 | 1 << 5 | 1 << 6  # disabled, exclude_kernel, exclude_hv
probe('perf_event_open(exclude_kernel)', 298, attr, 0, -1, -1, 0)
buf = ctypes.create_string_buffer(64)
probe('modify_ldt(read)', 154, 0, buf, 64)
"#,
    );
    assert_eq!(ran.stdout.lines().count(), 5, "{}", ran.output());
    for line in ran.stdout.lines() {
        assert!(line.starts_with("DENIED"), "{line}\n{}", ran.output());
    }
}

/// A host directory with a tmpfs mounted under it, unmounted when dropped.
struct WithSubmount {
    dir: tempfile::TempDir,
}

impl WithSubmount {
    fn new() -> WithSubmount {
        // Not under /tmp: the sandbox's own /tmp would cover it.
        let dir = tempfile::Builder::new()
            .prefix("corral-probe-")
            .tempdir_in("/run")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=1777,size=1m", "corral-probe"])
            .arg(&sub)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs under {}",
            dir.path().display()
        );
        WithSubmount { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for WithSubmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path().join("sub"))
            .status();
    }
}

#[test]
fn submounts_of_read_only_paths_are_read_only_too() {
    if !privileged("submounts_of_read_only_paths_are_read_only_too") {
        return;
    }
    let host = WithSubmount::new();
    let mut policy = default_policy();
    policy
        .filesystem
        .read_only_paths
        .push(host.path().to_owned());
    // Without the recursive remount the tmpfs stays writable (landlock
    // would then answer EACCES where the kernel has it): only a read-only
    // mount gives EROFS.
    let script = format!(
        "import errno\n\
         for p in ['{top}/x', '{top}/sub/x']:\n    \
             try:\n        open(p, 'w').close(); print('ESCAPED wrote', p)\n    \
             except OSError as e:\n        \
                 print('DENIED' if e.errno == errno.EROFS else 'ESCAPED', p, e.errno)\n",
        top = host.path().display()
    );
    let ran = run_with(
        policy,
        &["/usr/bin/python3", "-c", &script],
        Some(Duration::from_secs(30)),
        |_| {},
    );
    assert_eq!(ran.stdout.lines().count(), 2, "{}", ran.output());
    for line in ran.stdout.lines() {
        assert!(line.starts_with("DENIED"), "{line}\n{}", ran.output());
    }
    assert!(!host.path().join("sub/x").exists());
}

#[test]
fn an_input_root_the_sandbox_uid_cannot_enter_is_named_with_the_fix() {
    if !privileged("an_input_root_the_sandbox_uid_cannot_enter_is_named_with_the_fix") {
        return;
    }
    // What `mktemp -d` makes: 0700, owned by root.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(default_policy()).unwrap();
    let err = sandbox
        .run(&Command {
            argv: vec!["/bin/true".into()],
            env: vec![],
            input_root: root.path().to_owned(),
            working_dir: PathBuf::new(),
            stdout: out.path().join("stdout"),
            stderr: out.path().join("stderr"),
            timeout: Some(Duration::from_secs(30)),
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, Error::InputRootAccess { path, uid: 65534, .. } if path == root.path()),
        "{err:?}"
    );
    assert!(text.contains(&root.path().display().to_string()), "{text}");
    assert!(text.contains("65534"), "{text}");
    assert!(text.contains("chmod"), "{text}");

    // The same directory opened to others works like any other.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let outcome = sandbox
        .run(&Command {
            argv: vec!["/bin/true".into()],
            env: vec![],
            input_root: root.path().to_owned(),
            working_dir: PathBuf::new(),
            stdout: out.path().join("stdout"),
            stderr: out.path().join("stderr"),
            timeout: Some(Duration::from_secs(30)),
        })
        .unwrap();
    assert_eq!(outcome.exit_code(), 0);
}
