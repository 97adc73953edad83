//! Escape probes: each runs an action that tries one way out, and asserts
//! the attempt failed. A probe prints DENIED or ESCAPED where it can, so a
//! failure shows what got through.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use corral_sandbox::{Exit, LandlockState, Policy};

use crate::{default_policy, privileged, python, run_with, sh};

/// Asserts every line of stdout says DENIED (and there is at least one).
fn all_denied(ran: &crate::Ran) {
    assert!(
        !ran.stdout.is_empty(),
        "probe printed nothing\n{}",
        ran.output()
    );
    for line in ran.stdout.lines() {
        assert!(
            line.starts_with("DENIED"),
            "escape: {line}\n{}",
            ran.output()
        );
    }
}

/// A Python probe calling raw system calls through ctypes; each call must
/// fail with the given errno.
fn syscalls_fail(probe: &str, calls: &[(&str, &str, i32)]) {
    if !privileged(probe) {
        return;
    }
    let mut script = String::from(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n",
    );
    for (name, args, errno) in calls {
        script.push_str(&format!(
            "r = libc.syscall({args}); e = ctypes.get_errno()\n\
             print(('DENIED' if r == -1 and e == {errno} else 'ESCAPED'), '{name}', r, e)\n"
        ));
    }
    all_denied(&python(&script));
}

#[test]
fn host_shadow_file_is_unreadable() {
    if !privileged("host_shadow_file_is_unreadable") {
        return;
    }
    all_denied(&sh(
        "cat /etc/shadow >/dev/null 2>&1 && echo ESCAPED || echo DENIED",
    ));
}

#[test]
fn host_root_home_is_not_there() {
    if !privileged("host_root_home_is_not_there") {
        return;
    }
    all_denied(&sh(
        "ls /root >/dev/null 2>&1 && echo ESCAPED || echo DENIED",
    ));
}

#[test]
fn host_processes_are_invisible() {
    if !privileged("host_processes_are_invisible") {
        return;
    }
    let me = std::process::id();
    let ran = sh(&format!(
        "n=$(ls /proc | grep -c '^[0-9]'); [ $n -le 6 ] && [ ! -e /proc/{me} ] && echo DENIED $n || echo ESCAPED $n"
    ));
    all_denied(&ran);
}

#[test]
fn signals_cannot_reach_host_processes() {
    if !privileged("signals_cannot_reach_host_processes") {
        return;
    }
    let me = std::process::id();
    all_denied(&sh(&format!(
        "kill -0 {me} 2>/dev/null && echo ESCAPED || echo DENIED"
    )));
}

#[test]
fn host_loopback_services_are_unreachable() {
    if !privileged("host_loopback_services_are_unreachable") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ran = run_with(
        default_policy(),
        &[
            "/bin/bash",
            "-c",
            &format!(
                "(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo ESCAPED || echo DENIED"
            ),
        ],
        Some(Duration::from_secs(30)),
        |_| {},
    );
    all_denied(&ran);
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "the host listener got a connection"
    );
}

#[test]
fn only_loopback_exists_and_it_is_up() {
    if !privileged("only_loopback_exists_and_it_is_up") {
        return;
    }
    let ran = sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
    assert_eq!(ran.stdout, "lo\n", "{}", ran.output());
    // And it works: a server inside is reachable from inside.
    let ran = python(
        "import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
         c = socket.create_connection(s.getsockname()); print('up')",
    );
    assert_eq!(ran.stdout, "up\n", "{}", ran.output());
}

/// An input file hardlinked from a "cache" file the worker owns: the
/// action may read it but must not change the cache's copy.
fn hardlinked_input_probe(name: &str, attempt: &str) {
    if !privileged(name) {
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let cached = cache.path().join("blob");
    std::fs::write(&cached, "cached content\n").unwrap();
    std::fs::set_permissions(&cached, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::metadata(&cached).unwrap();
    let ran = run_with(
        default_policy(),
        &[
            "/bin/sh",
            "-c",
            &format!("cat input >/dev/null || echo UNREADABLE; {attempt}"),
        ],
        Some(Duration::from_secs(30)),
        |root| std::fs::hard_link(&cached, root.join("input")).unwrap(),
    );
    assert!(
        !ran.stdout.contains("UNREADABLE"),
        "input must stay readable\n{}",
        ran.output()
    );
    let after = std::fs::metadata(&cached).unwrap();
    assert_eq!(
        std::fs::read_to_string(&cached).unwrap(),
        "cached content\n",
        "{}",
        ran.output()
    );
    assert_eq!(
        after.mode(),
        before.mode(),
        "mode changed\n{}",
        ran.output()
    );
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(after.len(), before.len());
}

#[test]
fn hardlinked_input_cannot_be_written() {
    hardlinked_input_probe(
        "hardlinked_input_cannot_be_written",
        "echo evil >> input; printf evil | dd of=input conv=notrunc 2>/dev/null",
    );
}

#[test]
fn hardlinked_input_cannot_be_truncated() {
    hardlinked_input_probe(
        "hardlinked_input_cannot_be_truncated",
        ": > input; truncate -s 0 input",
    );
}

#[test]
fn hardlinked_input_cannot_be_chmodded_or_chowned() {
    hardlinked_input_probe(
        "hardlinked_input_cannot_be_chmodded_or_chowned",
        "chmod 666 input; chown 1:1 input; echo evil > input",
    );
}

#[test]
fn renaming_over_an_input_leaves_the_cache_alone() {
    hardlinked_input_probe(
        "renaming_over_an_input_leaves_the_cache_alone",
        "echo evil > new && mv -f new input && cat input",
    );
}

#[test]
fn nothing_outside_the_working_directory_and_tmp_is_writable() {
    if !privileged("nothing_outside_the_working_directory_and_tmp_is_writable") {
        return;
    }
    let ran = sh(
        "for f in /x /usr/x /etc/x /bin/x /proc/x /dev/x /lib/x; do \
           (echo x > $f) 2>/dev/null && echo ESCAPED $f || echo DENIED $f; done",
    );
    all_denied(&ran);
    let ran =
        sh("echo ok > /tmp/t && echo ok > /dev/shm/t && echo ok > here && echo DENIED-none-failed");
    assert_eq!(ran.stdout, "DENIED-none-failed\n", "{}", ran.output());
}

#[test]
fn mount_is_refused_even_through_a_setuid_binary() {
    if !privileged("mount_is_refused_even_through_a_setuid_binary") {
        return;
    }
    all_denied(&sh(
        "mkdir -p /tmp/m; /usr/bin/mount -t tmpfs none /tmp/m 2>/dev/null && echo ESCAPED || echo DENIED",
    ));
    syscalls_fail(
        "mount_syscall_is_refused",
        &[(
            "mount",
            "165, b'none', b'/tmp', b'tmpfs', 0, None",
            libc::EPERM,
        )],
    );
}

#[test]
fn setuid_binaries_gain_nothing() {
    if !privileged("setuid_binaries_gain_nothing") {
        return;
    }
    // no_new_privs is set and every mount is nosuid, so a setuid binary
    // runs with the caller's (capability-free) credentials.
    let ran = sh(
        "grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status && echo DENIED nnp || echo ESCAPED nnp; \
         awk '$5 == \"/usr\" { print $6 }' /proc/self/mountinfo | grep -q nosuid && echo DENIED nosuid || echo ESCAPED nosuid",
    );
    all_denied(&ran);
}

#[test]
fn a_new_user_namespace_cannot_be_made() {
    if !privileged("a_new_user_namespace_cannot_be_made") {
        return;
    }
    all_denied(&sh(
        "unshare -U true 2>/dev/null && echo ESCAPED || echo DENIED",
    ));
    syscalls_fail(
        "unshare_and_clone_with_namespace_flags_are_refused",
        &[
            ("unshare(NEWUSER)", "272, 0x10000000", libc::EPERM),
            ("unshare(NEWNS)", "272, 0x00020000", libc::EPERM),
            (
                "clone(NEWUSER)",
                "56, 0x10000000 | 17, 0, 0, 0, 0",
                libc::EPERM,
            ),
            ("setns", "308, 0, 0", libc::EPERM),
        ],
    );
}

#[test]
fn clone3_answers_enosys_so_libc_falls_back() {
    syscalls_fail(
        "clone3_answers_enosys_so_libc_falls_back",
        &[("clone3", "435, 0, 0", libc::ENOSYS)],
    );
}

#[test]
fn ptrace_is_refused() {
    syscalls_fail(
        "ptrace_is_refused",
        &[
            ("ptrace(TRACEME)", "101, 0, 0, 0, 0", libc::EPERM),
            ("process_vm_readv", "310, 1, 0, 0, 0, 0, 0", libc::EPERM),
        ],
    );
}

#[test]
fn kernel_attack_surface_is_refused() {
    syscalls_fail(
        "kernel_attack_surface_is_refused",
        &[
            ("bpf", "321, 0, 0, 0", libc::EPERM),
            ("perf_event_open", "298, 0, 0, -1, -1, 0", libc::EPERM),
            ("keyctl", "250, 0, 0, 0, 0, 0", libc::EPERM),
            ("add_key", "248, b'user', b'x', b'y', 1, -1", libc::EPERM),
            ("io_uring_setup", "425, 1, 0", libc::EPERM),
            ("userfaultfd", "323, 0", libc::EPERM),
            ("open_by_handle_at", "304, 0, 0, 0", libc::EPERM),
            ("init_module", "175, 0, 0, 0", libc::EPERM),
            ("kexec_load", "246, 0, 0, 0, 0", libc::EPERM),
            ("reboot", "169, 0, 0, 0, 0", libc::EPERM),
            ("swapon", "167, b'/tmp/x', 0", libc::EPERM),
            ("syslog", "103, 3, 0, 0", libc::EPERM),
            ("acct", "163, 0", libc::EPERM),
            ("iopl", "172, 3", libc::EPERM),
        ],
    );
}

#[test]
fn clocks_cannot_be_set() {
    syscalls_fail(
        "clocks_cannot_be_set",
        &[
            ("settimeofday", "164, 0, 0", libc::EPERM),
            ("clock_settime", "227, 0, 0", libc::EPERM),
            ("adjtimex", "159, 0", libc::EPERM),
        ],
    );
}

#[test]
fn x32_system_call_numbers_are_refused() {
    // getpid through the x32 ABI: a deny list keyed on 64-bit numbers
    // would let every listed call through this way.
    syscalls_fail(
        "x32_system_call_numbers_are_refused",
        &[
            ("x32 getpid", "0x40000000 | 39", libc::EPERM),
            ("x32 mount", "0x40000000 | 165, 0, 0, 0, 0, 0", libc::EPERM),
        ],
    );
}

#[test]
fn odd_personalities_are_refused() {
    syscalls_fail(
        "odd_personalities_are_refused",
        &[(
            "personality(READ_IMPLIES_EXEC)",
            "135, 0x0400000",
            libc::EPERM,
        )],
    );
}

#[test]
fn raw_and_exotic_sockets_are_refused() {
    if !privileged("raw_and_exotic_sockets_are_refused") {
        return;
    }
    let ran = python(
        r#"
import socket
for name, args in [('raw', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                   ('packet', (17, socket.SOCK_RAW, 0)),
                   ('vsock', (40, socket.SOCK_STREAM, 0)),
                   ('alg', (38, socket.SOCK_SEQPACKET, 0))]:
    try:
        socket.socket(*args)
        print('ESCAPED', name)
    except OSError as e:
        print('DENIED', name, e.errno)
"#,
    );
    all_denied(&ran);
}

#[test]
fn proc_sys_and_sys_cannot_be_written() {
    if !privileged("proc_sys_and_sys_cannot_be_written") {
        return;
    }
    let ran = sh(
        "(echo 1 > /proc/sys/kernel/sysrq) 2>/dev/null && echo ESCAPED sysrq || echo DENIED sysrq; \
         (echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null && echo ESCAPED drop_caches || echo DENIED drop_caches; \
         ls /sys >/dev/null 2>&1 && echo ESCAPED sys || echo DENIED sys; \
         (echo c > /proc/sysrq-trigger) 2>/dev/null && echo ESCAPED sysrq-trigger || echo DENIED sysrq-trigger",
    );
    all_denied(&ran);
}

#[test]
fn the_hostname_cannot_be_changed() {
    syscalls_fail(
        "the_hostname_cannot_be_changed",
        &[("sethostname", "170, b'evil', 4", libc::EPERM)],
    );
}

#[test]
fn every_capability_set_is_empty() {
    if !privileged("every_capability_set_is_empty") {
        return;
    }
    let ran = sh("grep '^Cap' /proc/self/status");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", ran.output());
    for line in lines {
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
}

#[test]
fn dev_holds_only_harmless_nodes() {
    if !privileged("dev_holds_only_harmless_nodes") {
        return;
    }
    let ran = sh("ls /dev | sort | tr '\\n' ' '");
    assert_eq!(
        ran.stdout,
        "fd full null random shm stderr stdin stdout tty urandom zero ",
        "{}",
        ran.output()
    );
    all_denied(&sh(
        "(echo x > /dev/sda) 2>/dev/null && echo ESCAPED || echo DENIED; \
                    ls /dev/mem >/dev/null 2>&1 && echo ESCAPED mem || echo DENIED mem",
    ));
}

#[test]
fn a_fork_bomb_hits_the_pids_limit_and_ends() {
    if !privileged("a_fork_bomb_hits_the_pids_limit_and_ends") {
        return;
    }
    let mut policy = default_policy();
    policy.limits.pids_max = 32;
    let ran = run_with(
        policy,
        &[
            "/usr/bin/python3",
            "-c",
            r#"
import os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
    print('ESCAPED', n)
except OSError as e:
    print('DENIED', n, e.errno)
"#,
        ],
        Some(Duration::from_secs(60)),
        |_| {},
    );
    all_denied(&ran);
    let forked: usize = ran
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(forked < 32, "{forked} forks succeeded\n{}", ran.output());
    assert!(
        ran.stdout.trim().ends_with(&libc::EAGAIN.to_string()),
        "{}",
        ran.output()
    );
    // The sleeps were killed with the sandbox, not waited for.
    assert!(ran.outcome.usage.wall_time < Duration::from_secs(20));
}

#[test]
fn a_memory_bomb_is_killed_and_reported_as_oom() {
    if !privileged("a_memory_bomb_is_killed_and_reported_as_oom") {
        return;
    }
    let mut policy = default_policy();
    policy.limits.memory_max_bytes = 64 << 20;
    let ran = run_with(
        policy,
        &[
            "/usr/bin/python3",
            "-c",
            "b = bytearray(512 << 20); print('ESCAPED')",
        ],
        Some(Duration::from_secs(60)),
        |_| {},
    );
    assert!(ran.outcome.oom_killed, "{}", ran.output());
    assert_eq!(
        ran.outcome.exit,
        Exit::Signaled(libc::SIGKILL),
        "{}",
        ran.output()
    );
    assert!(!ran.stdout.contains("ESCAPED"));
}

#[test]
fn filling_tmp_stops_at_its_size() {
    if !privileged("filling_tmp_stops_at_its_size") {
        return;
    }
    let mut policy = default_policy();
    policy.filesystem.tmp_size_bytes = 8 << 20;
    let ran = run_with(
        policy,
        &[
            "/bin/sh",
            "-c",
            "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>/dev/null && echo ESCAPED || echo DENIED $(stat -c %s /tmp/fill)",
        ],
        Some(Duration::from_secs(60)),
        |_| {},
    );
    all_denied(&ran);
    let size: u64 = ran
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(size <= 8 << 20, "{size}");
}

#[test]
fn a_daemon_left_behind_dies_with_the_action() {
    if !privileged("a_daemon_left_behind_dies_with_the_action") {
        return;
    }
    // A unique argument to find the daemon among the host's processes.
    let marker = format!(
        "{}.{}",
        3000 + std::process::id() % 1000,
        std::process::id()
    );
    let ran = sh(&format!(
        "(setsid sh -c 'sleep {marker} & sleep {marker} &' &); sleep 0.3; echo started"
    ));
    assert_eq!(ran.stdout, "started\n", "{}", ran.output());
    std::thread::sleep(Duration::from_millis(200));
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let mut cmdline = String::new();
        if let Ok(mut f) = std::fs::File::open(entry.path().join("cmdline")) {
            let _ = f.read_to_string(&mut cmdline);
        }
        assert!(
            !cmdline.contains(&marker),
            "daemon survived: {:?} {cmdline:?}",
            entry.path()
        );
    }
}

#[test]
fn sleeping_past_the_timeout_is_killed_in_time() {
    if !privileged("sleeping_past_the_timeout_is_killed_in_time") {
        return;
    }
    let started = Instant::now();
    let ran = run_with(
        default_policy(),
        &["/bin/sh", "-c", "trap '' TERM; sleep 60"],
        Some(Duration::from_secs(1)),
        |_| {},
    );
    let took = started.elapsed();
    assert!(ran.outcome.timed_out, "{}", ran.output());
    assert_eq!(ran.outcome.exit, Exit::Signaled(libc::SIGKILL));
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn huge_stdout_is_capped() {
    if !privileged("huge_stdout_is_capped") {
        return;
    }
    let mut policy = default_policy();
    policy.limits.output_max_bytes = 1 << 20;
    let ran = run_with(
        policy,
        &["/bin/sh", "-c", "head -c 10000000 /dev/zero; echo done >&2"],
        Some(Duration::from_secs(60)),
        |_| {},
    );
    assert_eq!(ran.stdout.len(), 1 << 20);
    assert!(ran.outcome.stdout_truncated);
    assert!(!ran.outcome.stderr_truncated);
    assert_eq!(ran.stderr, "done\n");
}

#[test]
fn landlock_is_fully_enforced_on_this_kernel() {
    if !privileged("landlock_is_fully_enforced_on_this_kernel") {
        return;
    }
    let ran = sh("true");
    // CI's kernel has landlock ABI 6 or later; elsewhere partial is fine,
    // but it must never be silently absent on a kernel that has it.
    let abi = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    if abi.contains("landlock") {
        assert_ne!(ran.outcome.landlock, LandlockState::NotEnforced);
    }
    if std::env::var_os("CI").is_some() {
        assert_eq!(ran.outcome.landlock, LandlockState::FullyEnforced);
    }
}

#[test]
fn landlock_stops_reads_outside_the_bound_paths() {
    if !privileged("landlock_stops_reads_outside_the_bound_paths") {
        return;
    }
    // Even where a file is visible (the action's own /proc), landlock
    // allows only what the rules list: writing the root directory fails
    // with EACCES from landlock, not only EROFS from the mount.
    let mut policy: Policy = default_policy();
    policy.confinement.require_landlock = true;
    let ran = run_with(
        policy,
        &["/bin/sh", "-c", "mkdir /tmp/ok && echo DENIED-ok"],
        Some(Duration::from_secs(30)),
        |_| {},
    );
    assert_eq!(ran.stdout, "DENIED-ok\n", "{}", ran.output());
}

/// Runs `script` under the default policy with a disk limit of 8 MiB.
fn with_8_mib_of_disk(script: &str, timeout: Duration) -> crate::Ran {
    let mut policy = default_policy();
    policy.limits.disk_max_bytes = 8 << 20;
    run_with(policy, &["/bin/sh", "-c", script], Some(timeout), |_| {})
}

#[test]
fn filling_the_input_root_past_the_disk_limit_kills_the_action() {
    if !privileged("filling_the_input_root_past_the_disk_limit_kills_the_action") {
        return;
    }
    // 1 MiB every 20 ms: past the limit well before the first check, and
    // never done on its own.
    let ran = with_8_mib_of_disk(
        "i=0; while :; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); sleep 0.02; done",
        Duration::from_secs(30),
    );
    assert!(ran.outcome.disk_exceeded, "{}", ran.output());
    assert!(!ran.outcome.timed_out);
    assert_eq!(ran.outcome.exit, Exit::Signaled(libc::SIGKILL));
    // Killed at a check (about a second of writing), not at the timeout.
    let limit = corral_sandbox::disk::DiskLimit {
        bytes: u64::MAX,
        entries: u64::MAX,
    };
    let written = corral_sandbox::disk::written_by(ran.root.path(), 65534, limit)
        .unwrap()
        .bytes;
    assert!(written > 8 << 20 && written < 1 << 30, "{written}");
}

#[test]
fn writing_under_the_disk_limit_is_left_alone() {
    if !privileged("writing_under_the_disk_limit_is_left_alone") {
        return;
    }
    // Long enough for a check to see the 2 MiB.
    let ran = with_8_mib_of_disk(
        "head -c 2097152 /dev/zero > f; sleep 1.5; echo done",
        Duration::from_secs(30),
    );
    assert_eq!(ran.stdout, "done\n", "{}", ran.output());
    assert!(!ran.outcome.disk_exceeded);
    assert_eq!(ran.outcome.exit, Exit::Exited(0));
}

#[test]
fn an_unlinked_file_held_open_still_counts_against_the_disk_limit() {
    if !privileged("an_unlinked_file_held_open_still_counts_against_the_disk_limit") {
        return;
    }
    // The files have no name once written to: only their open descriptors
    // show they take disk. Two of them, as RLIMIT_FSIZE stops each one at
    // the limit itself.
    let ran = with_8_mib_of_disk(
        "exec 3>h1 4>h2; rm h1 h2; \
         while :; do for fd in 3 4; do head -c 1048576 /dev/zero >&$fd; done; sleep 0.02; done",
        Duration::from_secs(20),
    );
    assert!(ran.outcome.disk_exceeded, "{}", ran.output());
    assert!(!ran.outcome.timed_out);
}

/// Runs the Python `script` under the default policy with a disk limit of
/// 8 MiB.
fn python_with_8_mib_of_disk(script: &str, timeout: Duration) -> crate::Ran {
    let mut policy = default_policy();
    policy.limits.disk_max_bytes = 8 << 20;
    run_with(
        policy,
        &["/usr/bin/python3", "-c", script],
        Some(timeout),
        |_| {},
    )
}

#[test]
fn one_allocation_past_the_disk_limit_fails_at_once() {
    if !privileged("one_allocation_past_the_disk_limit_fails_at_once") {
        return;
    }
    // RLIMIT_FSIZE is the disk limit: allocating 4 GiB, or extending a
    // file to 8 GiB, fails with EFBIG in the call, before any walk (python
    // ignores SIGXFSZ, so it sees the errno). EFBIG is the proof it was
    // the call that failed: the walk kills, it returns no errno (and the
    // outcome then says disk_exceeded). No clock: a loaded VM is slow.
    let script = r#"
import errno, os
for name, grow in [('fallocate', lambda fd: os.posix_fallocate(fd, 0, 4 << 30)),
                   ('truncate', lambda fd: os.ftruncate(fd, 8 << 30))]:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT)
    try:
        grow(fd)
        print('ESCAPED', name, os.fstat(fd).st_blocks * 512)
    except OSError as e:
        print('DENIED' if e.errno == errno.EFBIG else 'ESCAPED', name, e.errno)
# FALLOC_FL_KEEP_SIZE allocates past the end without growing the file,
# so RLIMIT_FSIZE does not see it: the filter answers EOPNOTSUPP.
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open('keep_size', os.O_WRONLY | os.O_CREAT)
r = libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(4 << 30))
e = ctypes.get_errno()
print('DENIED' if r != 0 and e == errno.EOPNOTSUPP else 'ESCAPED', 'keep_size', r, e,
      os.fstat(fd).st_blocks * 512)
# Punching a hole (which needs KEEP_SIZE) frees space and still works.
os.write(fd, bytes(8192))
r = libc.fallocate(fd, 3, ctypes.c_long(0), ctypes.c_long(4096))
print('DENIED punch_hole works' if r == 0 else 'ESCAPED punch_hole refused %d' % ctypes.get_errno())
"#;
    let ran = python_with_8_mib_of_disk(script, Duration::from_secs(30));
    all_denied(&ran);
    assert!(!ran.outcome.disk_exceeded, "{}", ran.output());
}

#[test]
fn writing_below_a_chain_deeper_than_path_max_counts_against_the_disk_limit() {
    if !privileged("writing_below_a_chain_deeper_than_path_max_counts_against_the_disk_limit") {
        return;
    }
    // 1,500 levels of "dd/" are 4,500 bytes of path, past PATH_MAX: a walk
    // by path names cannot reach the files written at the bottom.
    let script = r#"
import os, time
for _ in range(1500):
    os.mkdir('dd'); os.chdir('dd')
i = 0
while True:
    with open('f%d' % i, 'wb') as f: f.write(bytes(1 << 20))
    i += 1; time.sleep(0.02)
"#;
    let ran = python_with_8_mib_of_disk(script, Duration::from_secs(20));
    assert!(ran.outcome.disk_exceeded, "{}", ran.output());
    assert!(!ran.outcome.timed_out);
    assert_eq!(
        ran.outcome.disk_excess,
        Some(corral_sandbox::disk::Excess::Bytes { limit: 8 << 20 })
    );
}
#[test]
fn empty_files_past_the_entry_limit_kill_the_action() {
    if !privileged("empty_files_past_the_entry_limit_kill_the_action") {
        return;
    }
    // Empty files take no blocks, only inodes: the byte limit never sees
    // them, the entry limit does.
    let mut policy = default_policy();
    policy.limits.disk_max_entries = 1000;
    let ran = run_with(
        policy,
        &[
            "/bin/sh",
            "-c",
            // A fixed count, then a wait: on a slow kernel (the VM tests)
            // an endless loop could outrun the walk until the timeout.
            // Builtins only: `: >` makes an empty file without a fork.
            "mkdir d; i=0; while [ $i -lt 1500 ]; do : > e$i; : > d/e$i; i=$((i+1)); done; exec sleep 60",
        ],
        Some(Duration::from_secs(20)),
        |_| {},
    );
    assert!(ran.outcome.disk_exceeded, "{}", ran.output());
    assert!(!ran.outcome.timed_out);
    assert_eq!(
        ran.outcome.disk_excess,
        Some(corral_sandbox::disk::Excess::Entries { limit: 1000 })
    );
}

/// A loop-mounted btrfs image with quotas enabled and one subvolume,
/// `root`; unmounted (with whatever mount of it the test added) on drop.
struct BtrfsImage {
    dir: tempfile::TempDir,
    mounted_at: std::cell::RefCell<Option<std::path::PathBuf>>,
}

impl BtrfsImage {
    /// Makes the image, or says why it cannot (missing tools, no loop
    /// devices).
    fn make() -> Result<BtrfsImage, String> {
        let run = |argv: &[&str]| {
            let out = std::process::Command::new(argv[0])
                .args(&argv[1..])
                .output()
                .map_err(|e| format!("{}: {e}", argv[0]))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{argv:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("btrfs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let (image, mnt) = (
            image.to_str().unwrap().to_owned(),
            dir.path().join("mnt").to_str().unwrap().to_owned(),
        );
        std::fs::create_dir(&mnt).unwrap();
        run(&["mkfs.btrfs", "-q", "-f", &image])?;
        run(&["mount", "-o", "loop", &image, &mnt])?;
        let made = run(&["btrfs", "quota", "enable", &mnt])
            .and_then(|()| run(&["btrfs", "-q", "subvolume", "create", &format!("{mnt}/root")]))
            .and_then(|()| run(&["chmod", "0777", &format!("{mnt}/root")]));
        run(&["umount", &mnt])?;
        made?;
        Ok(BtrfsImage {
            dir,
            mounted_at: std::cell::RefCell::new(None),
        })
    }

    /// Mounts the subvolume `root` at `target`.
    fn mount_root_at(&self, target: &std::path::Path) {
        let image = self.dir.path().join("btrfs.img");
        let status = std::process::Command::new("mount")
            .args(["-o", "loop,subvol=root"])
            .arg(&image)
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success(), "mount the subvolume at {target:?}");
        *self.mounted_at.borrow_mut() = Some(target.to_owned());
    }
}

impl Drop for BtrfsImage {
    fn drop(&mut self) {
        if let Some(target) = self.mounted_at.borrow_mut().take() {
            let _ = std::process::Command::new("umount").arg(&target).status();
            let _ = std::fs::remove_dir(&target);
        }
    }
}

#[test]
fn on_a_btrfs_subvolume_writes_past_the_disk_limit_fail_at_once() {
    let test = "on_a_btrfs_subvolume_writes_past_the_disk_limit_fail_at_once";
    if !privileged(test) {
        return;
    }
    let image = match BtrfsImage::make() {
        Ok(image) => image,
        Err(why) => {
            corral_testkit::skip(test, &format!("no btrfs image: {why}"));
            return;
        }
    };
    // Many files, each under the limit, written as fast as they can be:
    // the walk would see them a second late; the qgroup stops the write
    // that passes 8 MiB.
    let script = r#"
import errno, os
done = 0
try:
    for i in range(32):
        fd = os.open('f%d' % i, os.O_WRONLY | os.O_CREAT)
        try:
            left = 1 << 20
            while left:
                left -= os.write(fd, bytes(left))
                done += 1 << 20 if not left else 0
        finally:
            os.close(fd)
    print('ESCAPED wrote', done >> 20, 'MiB')
except OSError as e:
    print('DENIED' if e.errno == errno.EDQUOT else 'ESCAPED', 'after', done >> 20, 'MiB', errno.errorcode[e.errno])
"#;
    let mut policy = default_policy();
    policy.limits.disk_max_bytes = 8 << 20;
    let ran = run_with(
        policy,
        &["/usr/bin/python3", "-c", script],
        Some(Duration::from_secs(30)),
        |root| image.mount_root_at(root),
    );
    all_denied(&ran);
    assert_eq!(
        ran.outcome.disk_bound,
        corral_sandbox::disk::KernelBound::BtrfsQgroup
    );
    assert_eq!(ran.outcome.exit, Exit::Exited(0), "{}", ran.output());
}

/// The probe's per-run ids: far above any login user's.
fn probe_ids(n: u32) -> corral_sandbox::HostIds {
    corral_sandbox::HostIds {
        uid: 1_899_000_000 + n,
        gid: 1_899_000_000 + n,
    }
}

/// Runs `script` (Python) as `ids` in `root`, writing stdout to
/// `root/../stdout`.
fn python_as(ids: corral_sandbox::HostIds, root: &std::path::Path, script: &str) -> Ran0 {
    let out = root.with_extension("out");
    std::fs::create_dir_all(&out).unwrap();
    let command = corral_sandbox::Command {
        argv: vec!["/usr/bin/python3".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        input_root: root.to_owned(),
        working_dir: std::path::PathBuf::new(),
        stdout: out.join("stdout"),
        stderr: out.join("stderr"),
        timeout: Some(Duration::from_secs(60)),
    };
    let sandbox = corral_sandbox::Sandbox::new(default_policy()).unwrap();
    let outcome = sandbox.run_as(&command, None, ids).unwrap();
    Ran0 {
        exit: outcome.exit,
        stdout: std::fs::read_to_string(&command.stdout).unwrap_or_default(),
        stderr: std::fs::read_to_string(&command.stderr).unwrap_or_default(),
    }
}

/// What [`python_as`] reports.
struct Ran0 {
    exit: Exit,
    stdout: String,
    stderr: String,
}

#[test]
fn an_action_exhausting_inotify_leaves_other_slots_and_the_host_theirs() {
    if !privileged("an_action_exhausting_inotify_leaves_other_slots_and_the_host_theirs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (hog_root, other_root) = (dir.path().join("hog"), dir.path().join("other"));
    for root in [&hog_root, &other_root] {
        std::fs::create_dir(root).unwrap();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    // Takes inotify instances until the kernel refuses one
    // (fs.inotify.max_user_instances), and holds them until released.
    let hog = "import ctypes, os, time\n\
               libc = ctypes.CDLL(None, use_errno=True)\n\
               n = 0\n\
               while libc.inotify_init() >= 0: n += 1\n\
               print('held', n, ctypes.get_errno(), flush=True)\n\
               t = time.time()\n\
               while not os.path.exists('release') and time.time() - t < 30: time.sleep(0.02)\n";
    std::thread::scope(|s| {
        let hogging = s.spawn(|| python_as(probe_ids(1), &hog_root, hog));
        let stdout = hog_root.with_extension("out").join("stdout");
        let started = Instant::now();
        while !std::fs::read_to_string(&stdout).is_ok_and(|s| s.contains("held")) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the hog never filled up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Another slot, while the hog holds every instance it could get.
        let other = python_as(
            probe_ids(2),
            &other_root,
            "import ctypes\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             fd = libc.inotify_init()\n\
             print('DENIED' if fd >= 0 else 'ESCAPED', 'inotify_init', fd, ctypes.get_errno())\n",
        );
        // And the host's root, whose own counter a namespace created by
        // root would have been charged.
        // A host process of root's, as this test is (ctypes: no unsafe here).
        let host = std::process::Command::new("python3")
            .args([
                "-c",
                "import ctypes\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 print(libc.inotify_init(), ctypes.get_errno())\n",
            ])
            .output()
            .unwrap();
        let host = String::from_utf8_lossy(&host.stdout).into_owned();
        let (host_fd, host_errno) = host.trim().split_once(' ').unwrap_or(("-1", "?"));
        let host_fd: i32 = host_fd.parse().unwrap_or(-1);
        std::fs::write(hog_root.join("release"), "").unwrap();
        let hog = hogging.join().unwrap();
        assert!(
            hog.stdout.starts_with("held") && hog.stdout.trim_end().ends_with(" 24"),
            "the hog must have been stopped by EMFILE: {} {}",
            hog.stdout,
            hog.stderr
        );
        assert_eq!(hog.exit, Exit::Exited(0), "{}", hog.stderr);
        assert!(
            other.stdout.starts_with("DENIED"),
            "another slot lost inotify: {}{}",
            other.stdout,
            other.stderr
        );
        assert!(host_fd >= 0, "the host lost inotify: {host_errno}");
    });
}
