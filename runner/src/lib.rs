//! The runner daemon: the one privileged process of a worker machine.
//!
//! It serves the runner protocol (`buildbarn.runner.Runner`) on a Unix
//! socket and runs each `RunRequest` in the sandbox, under the policy the
//! action names. A stock bb_worker can use it in place of bb_runner.
//!
//! Modules:
//! - [`config`] — `runner.toml`.
//! - [`error`] — the crate's error type.
//!
//! The runner never talks to storage or the scheduler, and never spawns an
//! action from its async threads: namespaces cannot be created from a
//! multithreaded process, so actions start from a single-threaded helper.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;

pub use config::Config;
pub use error::Error;
