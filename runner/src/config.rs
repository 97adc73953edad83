//! `runner.toml`: the runner daemon's configuration.
//!
//! `Config::default()` is exactly what `corral up` runs.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::Error;

/// The runner's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket the runner listens on; the worker's slots point at it.
    /// Created with mode 0660. Default `corral-data/runner.sock`.
    pub listen_path: PathBuf,
    /// The worker's build directory. Paths in a `RunRequest` are relative
    /// to it, and the runner refuses any that leaves it. Default
    /// `corral-data/worker/build`.
    pub build_directory: PathBuf,
    /// A directory of `<name>.toml` sandbox policies, added to (and
    /// overriding) the built-in ones. Unset: the built-in policies only.
    pub policies_directory: Option<PathBuf>,
    /// The policy for requests that name none (every request from a stock
    /// bb_worker). Default `default`.
    pub default_policy: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_path: PathBuf::from("corral-data/runner.sock"),
            build_directory: PathBuf::from("corral-data/worker/build"),
            policies_directory: None,
            default_policy: "default".to_owned(),
        }
    }
}

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.default_policy.is_empty() || self.default_policy.contains('/') {
            return Err(Error::InvalidConfig {
                field: "default_policy",
                reason: format!("{:?} is not a policy name", self.default_policy),
            });
        }
        Ok(())
    }
}
