//! The crate's error type: every module's errors, plus the failures of the
//! steps the caller itself takes around a run.

use std::io;
use std::path::PathBuf;

use crate::report::Stage;

/// Everything that can keep a command from running, or from being
/// accounted for.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Command(#[from] crate::command::CommandError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    MountPlan(#[from] crate::mounts::MountPlanError),
    #[error(transparent)]
    Ids(#[from] crate::ids::IdError),
    #[error("failed to open {path} for the command's {stream}")]
    OpenOutput {
        stream: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write the command's {stream} to {path}")]
    WriteOutput {
        stream: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to {step}")]
    Spawn {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sandbox setup failed while {stage}")]
    Setup {
        stage: Stage,
        #[source]
        source: io::Error,
    },
    #[error(
        "the sandbox's host uid {uid} cannot enter {path}: the action runs as that uid; let \
         it in with `chmod o+rwx {path}` (or `chown {uid} {path}`), or use another directory"
    )]
    InputRootAccess {
        path: PathBuf,
        uid: u32,
        #[source]
        source: io::Error,
    },
    #[error("the policy requires landlock, and this kernel does not enforce it")]
    LandlockRequired,
    #[error("the sandbox ended without reporting how the command ended")]
    Lost,
    #[error("the run was cancelled; the command was killed")]
    Cancelled,
}
