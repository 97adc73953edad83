//! Kernel-effect tests of the sandbox: escape probes and functional tests.
//!
//! They create namespaces with id maps to another uid and write cgroups,
//! so they need root. Without root they print why and pass vacuously;
//! under CI (`CI` set) a missing privilege is a failure, never a skip.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

mod functional;
mod images;
mod isolation;
mod netns;
mod probes;
mod undeclared;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_sandbox::{Command, Outcome, Policy, Sandbox};

// The kernel-effect tests map ids to another uid and write cgroups.
pub use corral_testkit::privileged;

/// A run's outcome with its captured output.
pub struct Ran {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
    pub root: tempfile::TempDir,
}

impl Ran {
    /// Output of both streams, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.outcome.exit, self.stdout, self.stderr
        )
    }
}

/// A fresh input root the action (host uid nobody) can write.
pub fn input_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Runs `argv` under `policy` in a fresh input root prepared by `prepare`.
pub fn run_with(
    policy: Policy,
    argv: &[&str],
    timeout: Option<Duration>,
    prepare: impl FnOnce(&Path),
) -> Ran {
    let root = input_root();
    prepare(root.path());
    let out = tempfile::tempdir().unwrap();
    let command = Command {
        argv: argv.iter().map(OsString::from).collect(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("HOME".into(), "/tmp".into()),
        ],
        input_root: root.path().to_owned(),
        working_dir: PathBuf::new(),
        stdout: out.path().join("stdout"),
        stderr: out.path().join("stderr"),
        timeout,
    };
    let sandbox = Sandbox::new(policy).expect("sandbox for the policy");
    let outcome = sandbox.run(&command).expect("the sandbox runs the command");
    Ran {
        outcome,
        stdout: std::fs::read_to_string(&command.stdout).unwrap_or_default(),
        stderr: std::fs::read_to_string(&command.stderr).unwrap_or_default(),
        root,
    }
}

/// The built-in default policy.
pub fn default_policy() -> Policy {
    Policy::builtin("default").unwrap().unwrap()
}

/// Runs a shell script under the default policy.
pub fn sh(script: &str) -> Ran {
    run_with(
        default_policy(),
        &["/bin/sh", "-c", script],
        Some(Duration::from_secs(30)),
        |_| {},
    )
}

/// Runs a Python 3 script under the default policy; probes that need a
/// raw system call use ctypes.
pub fn python(script: &str) -> Ran {
    run_with(
        default_policy(),
        &["/usr/bin/python3", "-c", script],
        Some(Duration::from_secs(30)),
        |_| {},
    )
}
