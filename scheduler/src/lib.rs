//! The scheduler daemon: REAPI `Execution` and `Operations` for clients, the
//! worker protocol (`buildbarn.remoteworker.OperationQueue`) for workers.
//!
//! It checks the Action Cache, queues actions per instance name and
//! platform, merges identical in-flight actions, and hands them to workers
//! that synchronize with it.
//!
//! Modules:
//! - [`action`] — checking an Action and Command before queueing.
//! - [`assignment`] — queued actions to workers; silent workers' actions
//!   queued again; completions only from the assigned worker.
//! - [`config`] — `scheduler.toml`.
//! - [`operation`] — operations, their watchers, in-flight deduplication.
//! - [`operation_queue_service`] — `Synchronize` for workers.
//! - [`queue`] — per-platform queues: priority, fairness, FIFO.
//! - [`error`] — the crate's error type.
//!
//! The scheduler never runs anything itself.

#![forbid(unsafe_code)]

pub mod action;
pub mod assignment;
pub mod config;
pub mod error;
pub mod operation;
pub mod operation_queue_service;
pub mod queue;

pub use config::Config;
pub use error::Error;
