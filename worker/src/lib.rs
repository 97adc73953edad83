//! The worker daemon: from a queued action to a stored result.
//!
//! Each build slot synchronizes with the scheduler (`buildbarn.remoteworker`),
//! lays out the action's input root as hardlinks into a local
//! content-addressed file cache, asks its runner to run the command
//! (`buildbarn.runner`, over a Unix socket), uploads the outputs and reports
//! the `ActionResult`.
//!
//! Modules:
//! - [`config`] — `worker.toml`.
//! - [`error`] — the crate's error type.
//!
//! The worker writes executables and never forks: a child forked while
//! another thread has an executable open for writing inherits that fd, and
//! exec of the file then fails with ETXTBSY. So running commands is the
//! runner's job, and this crate never links the sandbox
//! (tests/architecture.rs checks).

#![forbid(unsafe_code)]

pub mod config;
pub mod error;

pub use config::Config;
pub use error::Error;
