//! Thin wrappers over the Linux system calls the sandbox needs: the only
//! place in the crate with `unsafe`.
//!
//! Each wrapper turns a `-1`/errno return into `io::Error` and takes Rust
//! types, so callers stay safe. The wrappers the children call between
//! fork and exec allocate nothing, except `close_fds_except`, which sorts
//! the few descriptors to keep in a `Vec`: the children are forked with
//! glibc's `fork` (see [`fork`]), which leaves malloc usable in them.
//! `supplementary_groups` allocates too, and is for the caller only; the
//! `dir` module allocates, and runs in the supervisor.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

pub mod dir;

/// Converts a libc return value into a `Result`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The result of `fork`.
pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// `fork(2)` through glibc, which takes malloc's locks around the fork so
/// that the child may allocate even when the parent has other threads.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: fork has no memory-safety preconditions. The child is
    // single-threaded; glibc's fork leaves malloc usable in it, and the
    // callers take no other lock (stdio, env) before exec or _exit.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// `unshare(2)`.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes only flags.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `mount(2)`.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let ptr_of = |s: Option<&CStr>| s.map_or(ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // for the duration of the call.
    check(unsafe {
        libc::mount(
            ptr_of(source),
            target.as_ptr(),
            ptr_of(fstype),
            flags,
            ptr_of(data).cast(),
        )
    })
    .map(drop)
}

/// `umount2(2)`.
pub fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: target is a NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(2)`, which libc does not wrap.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both arguments are NUL-terminated strings.
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
        .map(drop)
}

/// `chdir(2)`.
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: path is a NUL-terminated string.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// `sethostname(2)`.
pub fn sethostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `pipe2(2)` with `O_CLOEXEC`: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `write(2)` of all of `buf`, retrying on EINTR.
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// `read(2)` into `buf`, retrying on EINTR; 0 means end of file.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `buf`.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// How a waited-for process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

/// `wait4(2)` for `pid` (or any child with -1), retrying on EINTR.
pub fn wait4(pid: libc::pid_t) -> io::Result<(libc::pid_t, WaitStatus, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and usage are valid for writes.
        let ret = unsafe { libc::wait4(pid, &mut status, libc::__WALL, &mut usage) };
        if ret >= 0 {
            let ws = if libc::WIFSIGNALED(status) {
                WaitStatus::Signaled(libc::WTERMSIG(status))
            } else {
                WaitStatus::Exited(libc::WEXITSTATUS(status))
            };
            return Ok((ret, ws, usage));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// `_exit(2)`: ends the process without running destructors or atexit
/// handlers, which belong to the parent's copy of the program.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// `dup2(2)`.
pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 takes plain descriptors; `to` is replaced atomically.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

/// Closes every descriptor from `lowest` up, except those in `keep`.
/// Allocates (a sorted copy of `keep`): safe in a child of [`fork`].
pub fn close_fds_except(lowest: RawFd, keep: &[RawFd]) {
    let mut kept: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd >= lowest).collect();
    kept.sort_unstable();
    kept.dedup();
    let mut first = lowest;
    for fd in kept {
        if fd > first {
            close_range(first, fd - 1);
        }
        first = fd + 1;
    }
    close_range(first, RawFd::MAX);
}

/// Closes descriptors `first..=last`.
fn close_range(first: RawFd, last: RawFd) {
    if first > last {
        return;
    }
    // SAFETY: close_range takes plain integers and only closes
    // descriptors, which nothing in this process uses afterwards.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0,
        )
    };
    if ret == 0 {
        return;
    }
    // Kernels before 5.9: walk the numbers up to the soft limit
    // (listing /proc/self/fd may be impossible after pivot_root).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: limit is valid for writes.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 16) as RawFd
    } else {
        1024
    };
    for fd in first..=last.min(max) {
        // SAFETY: as above; EBADF for unused numbers is harmless.
        unsafe { libc::close(fd) };
    }
}

/// `eventfd(2)`, close-on-exec and non-blocking.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes plain integers and creates a new descriptor.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: eventfd succeeded, the descriptor is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `execve(2)`; returns only on failure.
pub fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to
    // NUL-terminated strings that outlive the call (the caller keeps them).
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `prctl(2)` with up to two arguments.
pub fn prctl(
    option: libc::c_int,
    arg2: libc::c_ulong,
    arg3: libc::c_ulong,
) -> io::Result<libc::c_int> {
    // SAFETY: the options used by this crate take integer arguments only.
    check(unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) })
}

/// Sets the effective, permitted and inheritable capability sets to empty.
pub fn clear_capability_sets() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data have the kernel's v3 layout (two 32-bit
    // words of each set) and live for the duration of the call.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) }).map(drop)
}

/// `setresuid(2)` with the same id for real, effective and saved.
pub fn setresuid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: plain integers.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// `setresgid(2)` with the same id for real, effective and saved.
pub fn setresgid(gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain integers.
    check(unsafe { libc::setresgid(gid, gid, gid) }).map(drop)
}

/// Sets soft and hard limit to `value`, or to the current hard limit if
/// that is lower: raising a hard limit needs CAP_SYS_RESOURCE in the
/// host's user namespace, which a sandbox never has (a host whose default
/// hard NOFILE is 4096 would otherwise refuse every action).
pub fn lower_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: current is valid for writes.
    check(unsafe { libc::getrlimit(resource, &mut current) })?;
    let value = value.min(current.rlim_max);
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: limit is a valid rlimit.
    check(unsafe { libc::setrlimit(resource, &limit) }).map(drop)
}

/// `setsid(2)`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    check(unsafe { libc::setsid() }).map(drop)
}

/// Brings the loopback interface up, in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes integers; the result is checked.
    let sock =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: socket succeeded, the descriptor is ours.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: ifreq is plain old data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq naming "lo"; the ioctls read and write it.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the union's flags member is the one SIOCGIFFLAGS filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: as above.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// `poll(2)` on `fds` for up to `timeout_ms` (-1: forever), retrying on
/// EINTR; returns how many descriptors are ready.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: fds is a valid slice of pollfd for the call.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Opens `path` with `O_PATH | O_CLOEXEC`: a handle for bind mounts.
pub fn open_path(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: path is NUL-terminated; the flags create nothing.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) })?;
    // SAFETY: open succeeded, the descriptor is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatvfs(3)` mount flags (`ST_*`) of the mount holding `fd` (an
/// `O_PATH` descriptor is enough).
pub fn mount_flags(fd: BorrowedFd<'_>) -> io::Result<libc::c_ulong> {
    // SAFETY: statvfs is plain old data; zeroed is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: st is valid for writes; fd is open.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st.f_flag)
}

/// The calling process's effective uid and gid.
pub fn effective_ids() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: getters with no failure mode.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// `setgroups(0, NULL)`: no supplementary groups. Needs CAP_SETGID.
pub fn drop_supplementary_groups() -> io::Result<()> {
    // SAFETY: a zero-length list; the pointer is never read.
    check(unsafe { libc::setgroups(0, ptr::null()) }).map(drop)
}

/// The supplementary groups of the calling process (allocates: for the
/// caller only, never between fork and exec).
pub fn supplementary_groups() -> io::Result<Vec<libc::gid_t>> {
    // SAFETY: a zero-length query writes nothing.
    let n = check(unsafe { libc::getgroups(0, ptr::null_mut()) })?;
    let mut groups = vec![0; n as usize];
    // SAFETY: groups has room for n entries.
    let n = check(unsafe { libc::getgroups(n, groups.as_mut_ptr()) })?;
    groups.truncate(n as usize);
    Ok(groups)
}

/// `getppid(2)`.
pub fn parent_pid() -> libc::pid_t {
    // SAFETY: no arguments, no failure mode.
    unsafe { libc::getppid() }
}

/// Arms the parent-death signal: SIGKILL when the thread that forked us
/// dies. The kernel clears it on every credential change, so it must be
/// armed again after each.
pub fn kill_me_with_parent() -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0).map(drop)
}

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)` on the mount tree at `path`, submounts included:
/// sets the `MOUNT_ATTR_*` bits in `set`. Linux 5.12+.
pub fn set_mount_attributes_recursively(path: &CStr, set: u64) -> io::Result<()> {
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: path is NUL-terminated; attr is a valid mount_attr of the
    // size passed, alive for the call.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// `open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`: a detached copy of the
/// mount tree at `path` (submounts included), reachable only through the
/// returned descriptor until [`move_mount`] attaches it; closing the
/// descriptor first dissolves it. A symlink at `path` is not followed.
/// Needs CAP_SYS_ADMIN over the caller's mount namespace. Linux 5.2+.
pub fn clone_tree(path: &CStr) -> io::Result<OwnedFd> {
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let flags = libc::OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | AT_RECURSIVE
        | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    // SAFETY: path is NUL-terminated and alive for the call.
    let fd = check_long(unsafe {
        libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags)
    })?;
    // SAFETY: open_tree succeeded, the descriptor is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount_setattr(2)` on the (detached or attached) mount tree `tree`
/// refers to, submounts included: sets the `MOUNT_ATTR_*` bits in `set`
/// and, unless 0, the propagation type (`MS_PRIVATE`, …). Linux 5.12+.
pub fn set_tree_attributes(tree: BorrowedFd<'_>, set: u64, propagation: u64) -> io::Result<()> {
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    // SAFETY: the empty path is NUL-terminated; attr is a valid
    // mount_attr of the size passed, alive for the call.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            AT_RECURSIVE | libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// `move_mount(2)`: attaches the detached tree `tree` (from
/// [`clone_tree`]) at `target`, in the caller's mount namespace.
pub fn move_mount(tree: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    // SAFETY: both paths are NUL-terminated and alive for the call.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// Names the calling thread (`PR_SET_NAME`), as `ps` shows it.
pub fn set_process_name(name: &CStr) {
    // SAFETY: name is NUL-terminated and alive for the call; the kernel
    // copies at most 16 bytes of it.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

/// `fanotify_init(2)` for a notification group whose events carry an open
/// descriptor of the file (opened by the kernel, in the reader, with
/// `event_flags`).
pub fn fanotify_init(flags: libc::c_uint, event_flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: fanotify_init takes only flags.
    let fd = check(unsafe { libc::fanotify_init(flags, event_flags as libc::c_uint) })?;
    // SAFETY: fanotify_init succeeded, the descriptor is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fanotify_mark(2)`: adds `mask` on the whole mount holding `path`.
pub fn fanotify_mark_mount(group: BorrowedFd<'_>, mask: u64, path: &CStr) -> io::Result<()> {
    // SAFETY: path is NUL-terminated; the call only reads it.
    check(unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT,
            mask,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    })
    .map(drop)
}

/// One fanotify event: its mask, the pid that caused it, and the file's
/// descriptor when the event has one.
pub struct FanotifyEvent {
    pub mask: u64,
    pub pid: i32,
    pub file: Option<OwnedFd>,
}

/// Reads the events queued on the non-blocking fanotify `group` into
/// `buf`; an empty list when none is queued.
pub fn fanotify_read(group: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Vec<FanotifyEvent>> {
    let n = match read(group, buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let header = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut events = Vec::new();
    let mut at = 0;
    while n - at >= header {
        // SAFETY: `header` bytes from `at` are inside the `n` bytes the
        // kernel wrote; read_unaligned copes with any alignment of buf.
        let meta: libc::fanotify_event_metadata =
            unsafe { ptr::read_unaligned(buf.as_ptr().add(at).cast()) };
        let len = meta.event_len as usize;
        if len < header || len > n - at {
            break;
        }
        let file = (meta.fd >= 0).then(|| {
            // SAFETY: the kernel installed this descriptor in our table
            // for this event, and nothing else owns it.
            unsafe { OwnedFd::from_raw_fd(meta.fd) }
        });
        events.push(FanotifyEvent {
            mask: meta.mask,
            pid: meta.pid,
            file,
        });
        at += len;
    }
    Ok(events)
}
