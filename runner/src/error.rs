//! The runner's errors.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the runner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error(transparent)]
    Policy(#[from] corral_sandbox::PolicyError),
    #[error("failed to list policies in {dir}")]
    ListPolicies {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("policy {name} cannot be applied on this host")]
    Sandbox {
        name: String,
        #[source]
        source: corral_sandbox::Error,
    },
    #[error("failed to listen for metrics on {addr}")]
    BindMetrics {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the default policy {name:?} does not exist")]
    NoDefaultPolicy { name: String },
    #[error("unknown sandbox policy {name:?} (known: {known})")]
    UnknownPolicy { name: String, known: String },
    #[error("{field} {path:?} must be a relative path inside the build directory")]
    PathEscapes { field: &'static str, path: String },
    #[error("{field} {path:?} {reason}")]
    BadPath {
        field: &'static str,
        path: String,
        reason: &'static str,
    },
    #[error("failed to prepare {path} for the action")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to listen on {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the runner's server failed")]
    Serve(#[source] tonic::transport::Error),
    #[error("the sandbox failed to run the action")]
    Run(#[source] corral_sandbox::Error),
    #[error("the action timed out after {seconds:.1} s")]
    TimedOut { seconds: f64 },
    #[error("the action {excess} and was killed (a limit of its policy)")]
    DiskExceeded {
        excess: corral_sandbox::disk::Excess,
    },
    #[error(
        "every one of the {count} host ids is in use by a running action \
         (action_ids.count in runner.toml)"
    )]
    NoFreeIds { count: usize },
    #[error("failed to give the input root to the action's host ids or take it back")]
    Ids(#[source] corral_sandbox::ids::IdError),
    #[error("the action's image root {path} is not a directory of the build directory")]
    NoImageRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the runner stopped while the action ran")]
    Cancelled,
}
