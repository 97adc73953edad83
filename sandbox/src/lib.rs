//! The sandbox: turns a policy and a command into an isolated process and
//! reports how it ended.
//!
//! Every action runs in fresh user, mount, pid, network, ipc, uts and
//! cgroup namespaces, on a read-only tmpfs root holding only the host
//! paths the policy lists, in a cgroup with limits, with no capabilities,
//! under landlock and a seccomp filter. `docs/sandbox.md` lists the steps
//! in the order the code runs them.
//!
//! Modules:
//! - [`policy`] — what a sandbox allows, read from `policies/*.toml`.
//! - [`access_report`] — the undeclared-input report: files the action
//!   opened outside its input root, seen with fanotify mount marks.
//! - [`command`] — what to run; `outcome` — how it ended.
//! - `sandbox` — the caller's side: prepare, fork, supervise, collect.
//! - `child` — the sandbox's own processes, between fork and exec.
//! - `mounts`, [`cgroup`], `seccomp`, `landlock`, `privileges`,
//!   [`disk`], [`ids`] — one protection each.
//! - `report` — the records the children send back; `sys` — the only
//!   place with `unsafe` (the workspace's `unsafe_code = "deny"` lint
//!   enforces it; the one `#[allow(unsafe_code)]` is on `mod sys`).
//! - `watchdog` — removes the cgroups of a caller that died.
//!
//! This crate must never depend on tokio, tonic or any other crate of
//! ours (tests/architecture.rs checks): it is synchronous Linux code. Call
//! [`Sandbox::run`] from a process that may fork (it uses glibc's fork,
//! which is safe in a multithreaded caller); it blocks until the command
//! and everything it started are gone.

pub mod access_report;
mod cancellation;
pub mod cgroup;
mod child;
pub mod command;
pub mod disk;
mod error;
pub mod ids;
mod landlock;
mod mounts;
mod outcome;
pub mod policy;
mod privileges;
mod report;
mod sandbox;
mod seccomp;
// The one place `unsafe` is allowed; the workspace denies it elsewhere.
#[allow(unsafe_code)]
mod sys;
mod watchdog;

pub use access_report::UndeclaredInputs;
pub use cancellation::Cancellation;
pub use command::Command;
pub use error::Error;
pub use ids::{HostIds, IdRange, Mapping};
pub use outcome::{Exit, Outcome, Usage};
pub use policy::{Policy, PolicyError};
pub use report::{LandlockState, Stage};
pub use sandbox::Sandbox;
