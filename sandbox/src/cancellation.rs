//! Stopping a run from another thread: the caller keeps a
//! [`Cancellation`], and [`Sandbox::run_cancellable`](crate::Sandbox::run_cancellable)
//! kills the command as soon as it is cancelled.
//!
//! It is an eventfd the supervising thread polls with the command's
//! pipes, so cancelling needs no signal and no lock. Cancelling writes to
//! it; closing it would not do, since every process forked meanwhile
//! holds a copy until it closes its inherited descriptors.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::sys;

/// A handle that stops a run; clones share it.
#[derive(Debug, Clone)]
pub struct Cancellation(Arc<OwnedFd>);

impl Cancellation {
    pub fn new() -> io::Result<Cancellation> {
        Ok(Cancellation(Arc::new(sys::eventfd()?)))
    }

    /// Kills the run (or the next one) that watches this handle. Idempotent.
    pub fn cancel(&self) {
        // An eventfd counter only overflows after 2^64 - 2 writes; a
        // failed write leaves it readable anyway.
        let _ = sys::write_all(self.0.as_fd(), &1u64.to_ne_bytes());
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        let mut pfd = [libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        sys::poll(&mut pfd, 0).is_ok_and(|n| n > 0)
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
