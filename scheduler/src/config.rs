//! `scheduler.toml`: the scheduler daemon's configuration.
//!
//! `Config::default()` is exactly what `corral up` runs.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::error::Error;

/// The scheduler's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address clients and workers connect to. Default `127.0.0.1:8980`.
    pub listen: SocketAddr,
    /// Storage endpoint the scheduler reads Actions, Commands and the
    /// Action Cache from (it never writes). Connected on first use.
    /// Default `http://127.0.0.1:8980`: storage on the same port, as
    /// `corral up` serves it. Change it when storage runs elsewhere.
    pub storage: String,
    /// Execution timeout, in seconds, for actions that set none. Default 900.
    pub default_timeout_s: u64,
    /// Largest execution timeout, in seconds, an action may ask for.
    /// Default 3600.
    pub max_timeout_s: u64,
    /// A worker that has not synchronized for this many seconds past its
    /// deadline is considered gone and its action re-queued. Default 60.
    pub worker_timeout_s: u64,
    /// How many times an action is re-queued after losing its worker
    /// before it fails with UNAVAILABLE. Default 3.
    pub max_retries: u32,
    /// How long, in seconds, an action waits for a worker with a matching
    /// platform to appear before failing with FAILED_PRECONDITION.
    /// Default 60.
    pub platform_grace_s: u64,
    /// How long, in seconds, a queued or executing action survives with
    /// no client waiting on it (every Execute and WaitExecution stream
    /// gone) before it is cancelled and its worker told to stop.
    /// Default 60.
    pub unwatched_grace_s: u64,
    /// Prometheus metrics over HTTP (`GET /metrics`). Default: off; add
    /// a `[metrics]` table to serve them.
    pub metrics: Option<MetricsConfig>,
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP server for `GET /metrics`, e.g.
    /// `127.0.0.1:9981`. Required in the table.
    pub listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8980)),
            storage: "http://127.0.0.1:8980".to_owned(),
            default_timeout_s: 900,
            max_timeout_s: 3600,
            worker_timeout_s: 60,
            max_retries: 3,
            platform_grace_s: 60,
            unwatched_grace_s: 60,
            metrics: None,
        }
    }
}

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.default_timeout_s == 0 || self.default_timeout_s > self.max_timeout_s {
            return Err(Error::InvalidConfig {
                field: "default_timeout_s",
                reason: format!(
                    "must be between 1 and max_timeout_s ({}), got {}",
                    self.max_timeout_s, self.default_timeout_s
                ),
            });
        }
        if self.storage.is_empty() {
            return Err(Error::InvalidConfig {
                field: "storage",
                reason: "must name an endpoint such as http://127.0.0.1:8980".to_owned(),
            });
        }
        Ok(())
    }
}
