//! The watchdog: a small process, one per [`Sandbox`](crate::Sandbox),
//! that removes the caller's action cgroups when the caller dies without
//! cleaning up (SIGKILL, OOM kill, a crash).
//!
//! Within a run the sandbox's processes die with the caller through the
//! parent-death signal, but the cgroup directories are the caller's to
//! remove, and a dead caller removes nothing. The watchdog holds the read
//! end of a pipe whose only write end is the caller's: end of file means
//! the caller is gone, and the watchdog then kills and removes every group
//! named `run-<caller pid>-*`. It costs one fork when the sandbox is made,
//! nothing per run (`docs/decisions/0008-sandbox-isolation-fixes.md`).
//!
//! A sandbox dropped normally writes a byte first: its runs have all ended
//! and removed their groups, and other sandboxes of the same process may
//! still be running theirs.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::cgroup::CgroupRoot;
use crate::sys::{self, Fork};

/// What the caller writes before closing the pipe when it drops the
/// sandbox: leave the groups alone.
const QUIT: u8 = b'q';

/// How long the watchdog keeps retrying to empty and remove the groups.
const CLEANUP_FOR: Duration = Duration::from_secs(5);

/// The caller's handle on its watchdog.
#[derive(Debug)]
pub struct Watchdog {
    pid: libc::pid_t,
    pipe: Option<OwnedFd>,
}

/// The prefix of the action cgroups made by the process `pid`.
pub fn group_prefix(pid: u32) -> String {
    format!("run-{pid}-")
}

impl Watchdog {
    /// Forks the watchdog for the calling process's groups under `root`.
    pub fn start(root: &CgroupRoot) -> io::Result<Watchdog> {
        let prefix = group_prefix(std::process::id());
        let (read, write) = sys::pipe()?;
        match sys::fork()? {
            Fork::Child => watch(&read, root, &prefix),
            Fork::Parent(pid) => {
                drop(read);
                Ok(Watchdog {
                    pid,
                    pipe: Some(write),
                })
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            let _ = sys::write_all(pipe.as_fd(), &[QUIT]);
        }
        let _ = sys::wait4(self.pid);
    }
}

/// The watchdog process: waits for the caller to go, then cleans up.
fn watch(pipe: &OwnedFd, root: &CgroupRoot, prefix: &str) -> ! {
    // Hold nothing of the caller's: its other pipes (a run's output, a
    // shell's pipeline) would otherwise stay open until the caller dies,
    // and so would another watchdog's write end.
    sys::close_fds_except(3, &[pipe.as_raw_fd()]);
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        // A caller with closed stdio may have got the pipe as 0, 1 or 2.
        for fd in (0..3).filter(|&fd| fd != pipe.as_raw_fd()) {
            let _ = sys::dup2(null.as_raw_fd(), fd);
        }
    }
    // Out of the caller's session and process group: a Ctrl-C or a kill
    // of the whole group must leave the watchdog to clean up after it.
    let _ = sys::setsid();
    sys::set_process_name(c"corral-watchdog");
    let mut byte = [0u8; 1];
    loop {
        match sys::read(pipe.as_fd(), &mut byte) {
            Ok(1) if byte[0] == QUIT => sys::exit_now(0),
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + CLEANUP_FOR;
    loop {
        let mut left = 0;
        for group in root.leftovers(prefix) {
            if group.remove().is_err() {
                left += 1;
            }
        }
        if left == 0 || Instant::now() >= deadline {
            sys::exit_now(if left == 0 { 0 } else { 1 });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
