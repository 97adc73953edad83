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
    /// Host ids for actions, one uid and gid per concurrent run, so no two
    /// running actions share per-user kernel counters. Used when the
    /// runner runs as root; without root, the runner's subordinate range
    /// in /etc/subuid is used instead (at most `count` of it).
    pub action_ids: ActionIdsConfig,
    /// Prometheus metrics over plain HTTP (`GET /metrics`, `/healthz`)
    /// on their own port: spawn latency, kills, landlock levels. Default:
    /// off; add a `[metrics]` table to serve them. Bind it to loopback or
    /// a private network: the page has no TLS.
    pub metrics: Option<MetricsConfig>,
    /// OpenTelemetry traces over OTLP/gRPC (`[tracing]`, the table every
    /// daemon shares: `endpoint`, `sample_ratio`; docs/config.md): spans of
    /// the run of each action (spawn and wait), in the worker's trace. Default: off, nothing
    /// exported and no connection made.
    pub tracing: Option<corral_trace::TracingConfig>,
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP server for `GET /metrics`, e.g.
    /// `127.0.0.1:9983`. Required in the table.
    pub listen: std::net::SocketAddr,
}

/// The `[action_ids]` table: `count` consecutive uids from `first_uid`
/// and gids from `first_gid`. They must belong to no user or file on the
/// host: an action can read what its id owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionIdsConfig {
    /// First host uid. Default 1,900,000,000: above the ranges Linux
    /// distributions give users, system services and containers.
    pub first_uid: u32,
    /// First host gid. Default 1,900,000,000.
    pub first_gid: u32,
    /// How many ids: the most actions this runner runs at once; a run
    /// past it fails with UNAVAILABLE. Default 256; at least the slots of
    /// every worker using this runner.
    pub count: u32,
}

impl Default for ActionIdsConfig {
    fn default() -> Self {
        Self {
            first_uid: 1_900_000_000,
            first_gid: 1_900_000_000,
            count: 256,
        }
    }
}

impl ActionIdsConfig {
    /// The range, for the sandbox.
    pub fn range(&self) -> corral_sandbox::IdRange {
        corral_sandbox::IdRange {
            uid: self.first_uid,
            gid: self.first_gid,
            count: self.count,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_path: PathBuf::from("corral-data/runner.sock"),
            build_directory: PathBuf::from("corral-data/worker/build"),
            policies_directory: None,
            default_policy: "default".to_owned(),
            action_ids: ActionIdsConfig::default(),
            metrics: None,
            tracing: None,
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
        let ids = &self.action_ids;
        if ids.count == 0 {
            return Err(Error::InvalidConfig {
                field: "action_ids.count",
                reason: "at least one id is needed".to_owned(),
            });
        }
        for (field, first) in [
            ("action_ids.first_uid", ids.first_uid),
            ("action_ids.first_gid", ids.first_gid),
        ] {
            // 0 is root, 65534 nobody (the sandbox's default), and
            // 4294967295 is (uid_t)-1, which no process can have.
            let last = u64::from(first) + u64::from(ids.count) - 1;
            if first == 0 || last >= u64::from(u32::MAX) || (first..=last as u32).contains(&65534) {
                return Err(Error::InvalidConfig {
                    field,
                    reason: format!("{first}..={last} must leave out 0, 65534 and 4294967295"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_must_leave_out_root_nobody_and_minus_one() {
        let with = |first_uid, count| Config {
            action_ids: ActionIdsConfig {
                first_uid,
                count,
                ..ActionIdsConfig::default()
            },
            ..Config::default()
        };
        assert!(Config::default().validate().is_ok());
        assert!(with(1_000_000, 1).validate().is_ok());
        for (first, count) in [(0, 1), (65_500, 100), (u32::MAX - 1, 2), (10_000, 0)] {
            let err = with(first, count).validate().unwrap_err();
            assert!(
                err.to_string().contains("action_ids"),
                "{first} {count}: {err}"
            );
        }
    }
}
