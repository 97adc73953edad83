//! The code that runs in the sandbox's processes, between fork and exec.
//!
//! Three processes, each in its own role:
//! 1. **setup** (forked by the caller): joins the action's cgroup (v1),
//!    creates the user, mount, pid, network, ipc and uts namespaces, waits for the caller to write its
//!    id maps and put it in the cgroup, takes the sandbox's ids, enters a
//!    cgroup namespace, and forks
//! 2. **init** (pid 1 of the new pid namespace): builds the file system
//!    and pivots into it, brings loopback up, forks the action, reaps
//!    every process, reports how the action ended and exits, which kills
//!    whatever the action left behind;
//! 3. **action**: connects stdio, enters the working directory, sets
//!    limits, drops every privilege, installs landlock and seccomp, execs.
//!
//! Nothing here logs or panics: a failed step sends a record (stage and
//! errno) to the caller and exits. Processes forked from the caller use
//! glibc's fork, which leaves malloc usable, so allocating is safe; the
//! caller's other locks (stdio, env) are never taken.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use crate::landlock::Rules;
use crate::mounts::{ImageTrees, MountPlan};
use crate::policy::Limits;
use crate::report::{fail, LandlockState, Record, Stage};
use crate::seccomp::Filters;
use crate::sys::{self, Fork, WaitStatus};

/// Everything the sandbox's processes need, prepared by the caller.
pub struct Plan<'a> {
    pub namespaces: libc::c_int,
    /// Files the setup process writes "0" to, to join the action's cgroup
    /// itself (v1 `tasks`); empty: the caller moves it (v2, or none).
    pub cgroup_tasks: Vec<std::path::PathBuf>,
    /// The host ids to take before creating the user namespace (as
    /// root), so that it is owned, and its counters charged, per run.
    pub creator: Option<crate::ids::HostIds>,
    /// The caller's pid: the setup process's parent while the caller lives.
    pub caller: libc::pid_t,
    /// Whether to drop the caller's supplementary groups (the caller has
    /// CAP_SETGID); when it cannot, `Sandbox::warnings` says so.
    pub drop_groups: bool,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub mounts: MountPlan,
    pub landlock: Rules,
    pub require_landlock: bool,
    pub filters: &'a Filters,
    pub limits: Limits,
    pub last_capability: u32,
    /// Absolute, inside the sandbox.
    pub cwd: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    /// PATH entries of the command's environment, for argv[0] lookup.
    pub search_path: Vec<Vec<u8>>,
}

/// The descriptors the children use; all others are closed before exec.
/// Borrowed from the caller's pipes, which stay open across the fork.
pub struct Fds<'a> {
    pub report: BorrowedFd<'a>,
    pub go: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    /// When the caller watches the action's opens (`access_report.rs`):
    /// init waits on it, once its mounts are built, until the caller has
    /// marked them.
    pub watch: Option<BorrowedFd<'a>>,
}

/// Process 1: namespaces, ids, then the init process.
pub fn setup(plan: &Plan<'_>, fds: &Fds<'_>) -> ! {
    // First, before anything else is made, so every process of the sandbox is
    // in the group: this process moves itself (single-threaded, so the
    // thread is the process), which costs the kernel far less than the
    // caller moving it (see `cgroup::v1::Group::self_join_files`).
    for tasks in &plan.cgroup_tasks {
        if let Err(e) = std::fs::write(tasks, "0") {
            fail(fds.report, Stage::JoinCgroup, &e);
        }
    }
    // Everything else the caller had open came along with fork: other
    // runs' pipes among them, which must not stay open for as long as
    // this action lives (their reader would wait for this one to end).
    let mut keep = [fds.report, fds.go, fds.stdout, fds.stderr]
        .map(|fd| fd.as_raw_fd())
        .to_vec();
    keep.extend(fds.watch.map(|fd| fd.as_raw_fd()));
    sys::close_fds_except(3, &keep);
    let report = fds.report;
    // If the caller dies, so does the sandbox.
    tie_to_caller(report, plan.caller);
    // setgroups=deny (written by the caller with the id maps) freezes the
    // groups this process has when it enters the user namespace: a 0440
    // file of one of the caller's groups would stay readable. Drop them
    // while the caller's privilege is still ours.
    if plan.drop_groups {
        if let Err(e) = sys::drop_supplementary_groups() {
            fail(report, Stage::DropGroups, &e);
        }
    }
    // With the caller's credentials still: see MountPlan::input_root.
    if let Some(input_root) = plan.mounts.input_root() {
        if let Err(e) = sys::chdir(input_root) {
            fail(report, Stage::OpenInputRoot, &e);
        }
    }
    // The image's entries likewise, as root before becoming the run's ids
    // (see MountPlan::take_image); without root, once this process is
    // privileged in its own namespace, below.
    let mut image = None;
    if plan.creator.is_some() {
        image = Some(take_image(plan, report));
    }
    if let Some(creator) = plan.creator {
        if let Err(e) = crate::ids::enter_as_creator(creator) {
            fail(report, Stage::SetIds, &e);
        }
        // The id change cleared the parent-death signal.
        tie_to_caller(report, plan.caller);
    }
    if let Err(e) = sys::unshare(plan.namespaces) {
        fail(report, Stage::Unshare, &e);
    }
    let image = image.unwrap_or_else(|| take_image(plan, report));
    Record::Unshared.send(report);
    let mut byte = [0u8; 1];
    match sys::read(fds.go, &mut byte) {
        Ok(1) => {}
        // The caller gave up (or died) before writing the maps.
        Ok(_) => sys::exit_now(1),
        Err(e) => fail(report, Stage::WaitForMaps, &e),
    }
    // Take the one mapped id, so files created inside (the tmpfs root,
    // outputs) have an owner the kernel can represent.
    if let Err(e) = sys::setresgid(plan.gid).and_then(|()| sys::setresuid(plan.uid)) {
        fail(report, Stage::SetIds, &e);
    }
    // The kernel cleared the parent-death signal when the ids changed.
    tie_to_caller(report, plan.caller);
    // Entered once in the action's cgroup (joined above on v1, moved by
    // the caller before the go on v2), so that group is the root of the
    // action's view.
    if let Err(e) = sys::unshare(libc::CLONE_NEWCGROUP) {
        fail(report, Stage::UnshareCgroup, &e);
    }
    match sys::fork() {
        Err(e) => fail(report, Stage::ForkInit, &e),
        Ok(Fork::Child) => init(plan, fds, image),
        Ok(Fork::Parent(pid)) => {
            // Init holds its own copies of the trees.
            drop(image);
            // The caller reaches init's mounts through /proc/<pid>; only
            // this process knows the pid in the caller's namespace.
            if fds.watch.is_some() {
                Record::InitStarted(pid).send(report);
            }
            let _ = sys::wait4(pid);
            sys::exit_now(0)
        }
    }
}

/// The image's entries as detached trees, or nothing without an image.
fn take_image(plan: &Plan<'_>, report: BorrowedFd<'_>) -> ImageTrees {
    if !plan.mounts.has_image() {
        return ImageTrees::default();
    }
    match plan.mounts.take_image() {
        Ok(trees) => trees,
        Err(e) => fail(report, Stage::TakeImage, &e),
    }
}

/// Arms the parent-death signal, then checks that the caller did not die
/// before it was armed (the signal would never come): exits if it did.
fn tie_to_caller(report: BorrowedFd<'_>, caller: libc::pid_t) {
    if let Err(e) = sys::kill_me_with_parent() {
        fail(report, Stage::ParentDeath, &e);
    }
    if sys::parent_pid() != caller {
        sys::exit_now(1);
    }
}

/// Process 2: pid 1 of the sandbox.
fn init(plan: &Plan<'_>, fds: &Fds<'_>, image: ImageTrees) -> ! {
    let report = fds.report;
    // Its parent (setup) is outside this pid namespace, so getppid() says
    // 0 and cannot tell whether setup died before this was armed; the
    // caller's watchdog kills the cgroup in that case.
    if let Err(e) = sys::kill_me_with_parent() {
        fail(report, Stage::ParentDeath, &e);
    }
    if let Err((stage, e)) = plan.mounts.apply(image) {
        fail(report, stage, &e);
    }
    if let Err(e) = sys::sethostname(b"corral") {
        fail(report, Stage::Hostname, &e);
    }
    if plan.mounts.with_network_namespace() {
        if let Err(e) = sys::loopback_up() {
            fail(report, Stage::Loopback, &e);
        }
    }
    // Defence in depth behind seccomp's clone/unshare flag checks: no
    // nested user namespaces at all.
    let _ = std::fs::write("/proc/sys/user/max_user_namespaces", "0");

    // The mounts are final and nothing of the action has run yet: let the
    // caller mark them, so the report misses no open.
    if let Some(watch) = fds.watch {
        Record::Mounted.send(report);
        let mut byte = [0u8; 1];
        match sys::read(watch, &mut byte) {
            Ok(1) => {}
            // The caller gave up (or died).
            Ok(_) => sys::exit_now(1),
            Err(e) => fail(report, Stage::WaitForWatch, &e),
        }
    }

    let action = match sys::fork() {
        Err(e) => fail(report, Stage::ForkAction, &e),
        Ok(Fork::Child) => action(plan, fds),
        Ok(Fork::Parent(pid)) => pid,
    };
    // The action holds the output pipes now; init must not keep them open
    // or the caller would never see end of file.
    sys::close_fds_except(3, &[fds.report.as_raw_fd()]);
    loop {
        match sys::wait4(-1) {
            Ok((pid, status, _)) if pid == action => {
                let record = match status {
                    WaitStatus::Exited(code) => Record::Exited(code),
                    WaitStatus::Signaled(signal) => Record::Signaled(signal),
                };
                record.send(report);
                // Exiting kills every process left in the namespace.
                sys::exit_now(0)
            }
            Ok(_) => {}
            Err(e) => fail(report, Stage::Reap, &e),
        }
    }
}

/// Process 3: the action.
fn action(plan: &Plan<'_>, fds: &Fds<'_>) -> ! {
    let report = fds.report;
    let step = |stage: Stage, result: io::Result<()>| {
        if let Err(e) = result {
            fail(report, stage, &e);
        }
    };
    step(Stage::Stdio, sys::setsid());
    step(Stage::Stdio, stdio(fds));
    step(Stage::Chdir, sys::chdir(&plan.cwd));
    if let Err((stage, e)) = crate::privileges::set_rlimits(&plan.limits) {
        fail(report, stage, &e);
    }
    if let Err((stage, e)) = crate::privileges::drop_all(plan.last_capability) {
        fail(report, stage, &e);
    }
    let landlock = match plan.landlock.restrict_self() {
        Ok(state) => state,
        Err(_) => fail(
            report,
            Stage::Landlock,
            &io::Error::from_raw_os_error(libc::EINVAL),
        ),
    };
    Record::Landlock(landlock).send(report);
    if plan.require_landlock && landlock == LandlockState::NotEnforced {
        fail(
            report,
            Stage::Landlock,
            &io::Error::from_raw_os_error(libc::ENOSYS),
        );
    }
    if let Err(e) = plan.filters.install() {
        let errno = match e {
            crate::seccomp::SeccompError::Install(seccompiler::Error::Seccomp(io)) => io,
            _ => io::Error::from_raw_os_error(libc::EINVAL),
        };
        fail(report, Stage::Seccomp, &errno);
    }
    sys::close_fds_except(3, &[fds.report.as_raw_fd()]);
    let err = exec(plan);
    fail(report, Stage::Exec, &err)
}

/// stdin from /dev/null, stdout and stderr to the caller's pipes.
fn stdio(fds: &Fds<'_>) -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    sys::dup2(null.as_raw_fd(), 0)?;
    sys::dup2(fds.stdout.as_raw_fd(), 1)?;
    sys::dup2(fds.stderr.as_raw_fd(), 2)
}

/// execs argv[0], searching the command's PATH like execvp when it has no
/// slash. Returns the error to report (EACCES wins over ENOENT, as in
/// execvp, so "found but not executable" is not hidden).
fn exec(plan: &Plan<'_>) -> io::Error {
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let program = plan.argv[0].as_bytes();
    if program.contains(&b'/') || plan.search_path.is_empty() {
        return sys::execve(&plan.argv[0], &argv, &envp);
    }
    let mut result = io::Error::from_raw_os_error(libc::ENOENT);
    for dir in &plan.search_path {
        let mut full = dir.clone();
        if !full.is_empty() && !full.ends_with(b"/") {
            full.push(b'/');
        }
        full.extend_from_slice(program);
        let Ok(full) = CString::new(full) else {
            continue;
        };
        let err = sys::execve(&full, &argv, &envp);
        if err.raw_os_error() == Some(libc::EACCES) {
            result = err;
        }
    }
    result
}

/// PATH entries from an environment, for [`Plan::search_path`].
pub fn search_path(env: &[(std::ffi::OsString, std::ffi::OsString)]) -> Vec<Vec<u8>> {
    env.iter()
        .find(|(name, _)| name == OsStr::new("PATH"))
        .map(|(_, value)| {
            value
                .as_bytes()
                .split(|b| *b == b':')
                .map(|d| {
                    if d.is_empty() {
                        b".".to_vec()
                    } else {
                        d.to_vec()
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}
