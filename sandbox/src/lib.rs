//! The sandbox: turns a policy and a command into an isolated process and
//! reports how it ended.
//!
//! Every action runs in fresh user, mount, pid, network, ipc, uts and
//! cgroup namespaces, on a tmpfs root with only the host paths the policy
//! lists, in a cgroup with limits, with no capabilities, under landlock and
//! a seccomp filter. See `docs/sandbox.md` for the steps in the order the
//! code runs them.
//!
//! Modules:
//! - [`policy`] — what a sandbox allows, read from `policies/*.toml`.
//!
//! This crate must never depend on tokio, tonic or any other crate of
//! ours (tests/architecture.rs checks): it is synchronous Linux code that
//! the runner drives from a single-threaded helper process.

pub mod policy;

pub use policy::{Policy, PolicyError};
