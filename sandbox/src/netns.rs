//! Network namespaces made ahead of time, off the spawn's critical path.
//!
//! A fresh network namespace costs about 0.7 ms to create (more in its
//! slow tail), the largest single step of a spawn. As root, a
//! [`NetnsPool`] keeps a few ready, loopback up, made by a background
//! thread: that thread unshares a new one for itself each time and keeps
//! a descriptor of it (`/proc/thread-self/ns/net`). The setup process
//! joins one with `setns` while it still has the caller's privilege,
//! before it creates the user namespace
//! (`docs/decisions/0020-prepared-network-namespaces.md`).
//!
//! What holds:
//! - Each namespace is handed out once ([`NetnsPool::take`] removes it)
//!   and the caller drops its descriptor once the setup process has it:
//!   no two actions ever share one, and a used one is never seen again.
//! - The namespace is owned by the caller's user namespace, not the
//!   action's: nothing in the sandbox (init included) holds
//!   CAP_NET_ADMIN over it, so the action cannot bring an interface down
//!   or up, add an address or a route, or change its sysctls.
//! - The ready namespaces are descriptors of the caller only, close-on-
//!   exec; the setup process closes every descriptor it was not given
//!   right after joining its own.
//!
//! When none is ready (a burst of runs, or making one failed), the run
//! falls back to creating its namespace with the others, as without a
//! pool: never slower than before, only not faster.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sys;

/// How many namespaces are kept ready: a runner spawns one action per slot
/// at a time, and actions of one sandbox rarely start more than two at
/// once; past that, runs make their own.
const DEPTH: usize = 2;

/// How long a run waits for the namespace being made when none is ready,
/// before making its own: waiting for one half made is never slower than
/// making one, unless the thread is stuck; this bounds that case.
const WAIT_FOR_ONE: Duration = Duration::from_millis(250);

/// A background supply of fresh network namespaces with loopback up.
pub struct NetnsPool {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    ready: VecDeque<OwnedFd>,
    /// The thread is making one now.
    making: bool,
    /// A run is waiting for the one being made.
    waiting: bool,
    /// The pool is being dropped, or making a namespace failed: no more.
    stopped: bool,
    /// How many more the thread may make (`None`: no end).
    left: Option<usize>,
}

impl fmt::Debug for NetnsPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ready = self.lock().ready.len();
        f.debug_struct("NetnsPool").field("ready", &ready).finish()
    }
}

impl NetnsPool {
    /// Starts the thread that makes namespaces, at most `total` of them
    /// (`None`: as many as runs take, [`DEPTH`] ahead). Needs
    /// CAP_SYS_ADMIN (and CAP_NET_ADMIN for loopback) in the caller's user
    /// namespace; the first failure stops the pool, and every run then
    /// makes its own.
    pub fn start(total: Option<usize>) -> io::Result<NetnsPool> {
        let shared = Arc::new(Shared::default());
        {
            let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            state.making = true;
            state.left = total;
        }
        let filler = Arc::clone(&shared);
        // Not joined: dropping the pool stops it, and the thread ends
        // after the namespace it may be making, without holding up the
        // caller (a one-run CLI would wait for a namespace nobody uses).
        std::thread::Builder::new()
            .name("corral-netns".to_owned())
            .spawn(move || fill(&filler))?;
        Ok(NetnsPool { shared })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever a panicking holder did: it
        // only moves descriptors and flags.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh namespace for one run, never handed out again; `None` when
    /// none is ready in time (the run then makes its own).
    pub fn take(&self) -> Option<OwnedFd> {
        let deadline = Instant::now() + WAIT_FOR_ONE;
        let mut state = self.lock();
        loop {
            if let Some(fd) = state.ready.pop_front() {
                self.shared.changed.notify_all();
                return Some(fd);
            }
            // Only one run waits for the namespace being made: others
            // would queue behind a single thread.
            if state.stopped || !state.making || state.waiting {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state.waiting = true;
            let (next, _) = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            state.waiting = false;
        }
    }
}

impl Drop for NetnsPool {
    fn drop(&mut self) {
        let mut state = self.lock();
        state.stopped = true;
        // The ready namespaces go with their descriptors.
        state.ready.clear();
        drop(state);
        self.shared.changed.notify_all();
    }
}

/// The thread: keeps [`DEPTH`] namespaces ready until stopped.
fn fill(shared: &Shared) {
    let lock = || shared.state.lock().unwrap_or_else(|e| e.into_inner());
    // The thread goes back here after each one: it never stays a member
    // of a namespace it handed out.
    let home = std::fs::File::open("/proc/thread-self/ns/net").map(OwnedFd::from);
    loop {
        let mut state = lock();
        state.making = false;
        if state.left == Some(0) {
            shared.changed.notify_all();
            return;
        }
        while !state.stopped && state.ready.len() >= DEPTH {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.stopped {
            shared.changed.notify_all();
            return;
        }
        state.making = true;
        state.left = state.left.map(|n| n - 1);
        drop(state);
        let made = home.as_ref().map_err(clone_error).and_then(make);
        let mut state = lock();
        match made {
            // Made while the pool was dropped: nobody will take it.
            Ok(_) if state.stopped => {}
            Ok(fd) => state.ready.push_back(fd),
            Err(_) => {
                // Not allowed here (no privilege, a container's seccomp):
                // runs make their own, as without a pool.
                state.stopped = true;
                state.making = false;
                shared.changed.notify_all();
                return;
            }
        }
        shared.changed.notify_all();
    }
}

fn clone_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// A new network namespace with loopback up, made by the calling thread
/// (which only ever serves this pool), which then returns `home`.
fn make(home: &OwnedFd) -> io::Result<OwnedFd> {
    sys::unshare(libc::CLONE_NEWNET)?;
    // Opened before loopback is touched, so the descriptor is the
    // namespace the socket below configures. Rust opens it close-on-exec.
    let fd = std::fs::File::open("/proc/thread-self/ns/net")?;
    sys::loopback_up()?;
    sys::setns(home.as_fd(), libc::CLONE_NEWNET)?;
    Ok(fd.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn inode(fd: &OwnedFd) -> u64 {
        use std::os::fd::AsRawFd;
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    /// Every namespace taken is a new one, never the caller's, with
    /// loopback up.
    #[test]
    fn each_take_is_a_fresh_namespace() {
        if !corral_testkit::privileged("each_take_is_a_fresh_namespace") {
            return;
        }
        let pool = NetnsPool::start(None).unwrap();
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        // All held, so no inode number is freed and reused meanwhile.
        let mut taken = Vec::new();
        for _ in 0..6 {
            // Waiting is bounded: a loaded machine may fall back to None.
            let fd = (0..500)
                .find_map(|_| {
                    let fd = pool.take();
                    if fd.is_none() {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    fd
                })
                .expect("a namespace within a second");
            taken.push(fd);
        }
        let inodes: std::collections::BTreeSet<u64> = taken.iter().map(inode).collect();
        assert_eq!(
            inodes.len(),
            taken.len(),
            "a namespace was handed out twice"
        );
        assert!(
            !inodes.contains(&own),
            "the caller's own namespace was handed out"
        );
    }
}
