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
//! - [`cas_client`] — blobs and Action Cache entries, verified by digest.
//! - [`file_cache`] — content-addressed, read-only files to hardlink.
//! - [`input_root`] — lays out an action's input root.
//! - [`runner_client`] — the runner over its Unix socket.
//! - [`outputs`] — output parents before the run, outputs after it.
//!
//! The worker writes executables and never forks: a child forked while
//! another thread has an executable open for writing inherits that fd, and
//! exec of the file then fails with ETXTBSY. So running commands is the
//! runner's job, and this crate never links the sandbox
//! (tests/architecture.rs checks).

#![forbid(unsafe_code)]

pub mod cas_client;
pub mod config;
pub mod error;
pub mod executor;
pub mod file_cache;
pub mod input_root;
pub mod outputs;
pub mod runner_client;

pub use config::Config;
pub use error::Error;
