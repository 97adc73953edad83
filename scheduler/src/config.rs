//! `scheduler.toml`: the scheduler daemon's configuration.
//!
//! `Config::default()` is exactly what `corral up` runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use corral_auth::tls::{ClientTls, ServerTls};
use serde::Deserialize;

use crate::error::Error;
use crate::platform_matching::Matching;

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
    /// How each platform property is matched between actions and workers
    /// (`[platform_matching]`): property name to `"exact"`, `"subset"`
    /// (the action's values are among those the worker offers, a worker
    /// offering a list by repeating the name) or `"minimum"` (numbers:
    /// the worker's is at least the action's, e.g. `cores`,
    /// `memory-gib`) or `"any"` (a worker offering the name takes every
    /// value). Default: empty, every property exact, as Buildbarn
    /// matches, except `container-image`, which is `"any"` (workers
    /// that run images offer `container-image = "*"` and pull whichever
    /// the action names). See `crate::platform_matching`.
    pub platform_matching: BTreeMap<String, Matching>,
    /// How workers are shared between instance names (tenants), and what
    /// each may hold (`[fairness]`). Default: equal weights, no caps.
    pub fairness: FairnessConfig,
    /// Prometheus metrics over HTTP (`GET /metrics`). Default: off; add
    /// a `[metrics]` table to serve them.
    pub metrics: Option<MetricsConfig>,
    /// OpenTelemetry traces over OTLP/gRPC (`[tracing]`, the table every
    /// daemon shares: `endpoint`, `sample_ratio`; docs/config.md): spans of
    /// Execute span, queueing and the hand-over to a worker, whose spans
    /// join the same trace. Default: off, nothing
    /// exported and no connection made.
    pub tracing: Option<corral_trace::TracingConfig>,
    /// TLS on the listening port (`[tls]`), for clients and workers:
    /// certificate, key, and an optional client CA for mTLS. Default:
    /// none, plaintext.
    pub tls: Option<ServerTls>,
    /// TLS for the scheduler's connections to storage (`[client_tls]`).
    /// Default: none, plaintext; `storage` must then be `http://`, and
    /// with it `https://`.
    pub client_tls: Option<ClientTls>,
    /// Who may call, and what each caller may do (`[auth]`, see
    /// docs/config.md and docs/shared-farm.md). Unset: every caller is
    /// anonymous and may do everything.
    pub auth: Option<corral_auth::AuthConfig>,
    /// Size classes learned per action (`[size_classes]`, see
    /// docs/decisions/0014-size-classes.md). Default: off; every action
    /// may run on any worker of its platform, whatever its `size_class`.
    pub size_classes: Option<SizeClassesConfig>,
}

/// The `[size_classes]` table: actions start on the smallest size class
/// workers announce, move up after running out of memory or time, and
/// the scheduler remembers where each action fits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SizeClassesConfig {
    /// What makes two actions "the same" for their history: `command`
    /// (the Command message: arguments, environment, outputs, platform)
    /// or `action_without_input_root` (the Action with its input root
    /// left out: also its timeout and platform). Default `command`.
    pub key: SizeClassKey,
    /// A platform property whose value, when an action sets it, is the
    /// key instead (e.g. `size-class-key = "javac"` groups every javac
    /// run). Default: none.
    pub key_platform_property: Option<String>,
    /// The Action Cache instance name the histories are stored under
    /// (one entry per key, the key naming the action's instance name).
    /// Only the scheduler should hold `ac-read` and `ac-write` on it.
    /// Default `size-class-history`.
    pub history_instance_name: String,
    /// Outcomes kept per key and size class. Default 8.
    pub history_size: usize,
    /// How often, between 0 and 1, an action is tried one class below
    /// where its history says it fits, to learn whether it fits there
    /// now. Each probe that fails costs one run on the smaller class.
    /// Default 0.05.
    pub probe_probability: f64,
    /// How many times slower than on a larger class (median of the
    /// completed runs kept) an action may run on a class that is still
    /// chosen for it; past it the larger class is chosen. At least 1.
    /// Default 2.0.
    pub max_slowdown: f64,
}

/// What a size class history is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeClassKey {
    Command,
    ActionWithoutInputRoot,
}

impl Default for SizeClassesConfig {
    fn default() -> Self {
        Self {
            key: SizeClassKey::Command,
            key_platform_property: None,
            history_instance_name: "size-class-history".to_owned(),
            history_size: 8,
            probe_probability: 0.05,
            max_slowdown: 2.0,
        }
    }
}

/// The `[fairness]` table: instance names take turns for workers, each
/// getting a share in proportion to its weight; inside one, priorities,
/// then client invocations in turn, then first in, first out.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FairnessConfig {
    /// Share of an instance name not listed in `instances`, relative to
    /// the others' (1 to 1000). Default 1: equal turns.
    pub weight: u32,
    /// Most operations an instance name not listed may have queued (not
    /// yet running); an Execute past it is refused with
    /// RESOURCE_EXHAUSTED (joining an identical operation in flight
    /// still works). Default: no cap.
    pub max_queued: Option<u64>,
    /// Most actions of an instance name not listed that run at once; the
    /// rest wait queued while other instance names' actions run.
    /// Default: no cap.
    pub max_executing: Option<u64>,
    /// Per instance name (exact, not a prefix): a table with any of
    /// `weight`, `max_queued`, `max_executing`; a key left out takes the
    /// value above. Default: none.
    pub instances: BTreeMap<String, InstanceFairness>,
}

impl Default for FairnessConfig {
    fn default() -> Self {
        Self {
            weight: 1,
            max_queued: None,
            max_executing: None,
            instances: BTreeMap::new(),
        }
    }
}

/// One `[fairness.instances."NAME"]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceFairness {
    /// This instance name's share (1 to 1000). Default: `fairness.weight`.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Its cap on queued operations. Default: `fairness.max_queued`.
    #[serde(default)]
    pub max_queued: Option<u64>,
    /// Its cap on running actions. Default: `fairness.max_executing`.
    #[serde(default)]
    pub max_executing: Option<u64>,
}

/// The largest weight: turns are counted in strides of 2^20 / weight.
pub const MAX_WEIGHT: u32 = 1000;

impl FairnessConfig {
    /// What applies to `instance`: its weight, queued cap and running cap.
    pub fn of(&self, instance: &str) -> (u32, Option<u64>, Option<u64>) {
        let own = self.instances.get(instance);
        (
            own.and_then(|o| o.weight).unwrap_or(self.weight),
            own.and_then(|o| o.max_queued).or(self.max_queued),
            own.and_then(|o| o.max_executing).or(self.max_executing),
        )
    }

    fn validate(&self) -> Result<(), Error> {
        let own = self.instances.iter().map(|(name, o)| (Some(name), o));
        let tables = std::iter::once((None, self.weight, self.max_executing))
            .chain(own.map(|(name, o)| (name, o.weight.unwrap_or(1), o.max_executing)));
        for (name, weight, max_executing) in tables {
            let table = name.map_or_else(String::new, |n| format!("instances.{n:?}: "));
            if !(1..=MAX_WEIGHT).contains(&weight) {
                return Err(Error::InvalidConfig {
                    field: "fairness.weight",
                    reason: format!("{table}must be between 1 and {MAX_WEIGHT}, got {weight}"),
                });
            }
            if max_executing == Some(0) {
                return Err(Error::InvalidConfig {
                    field: "fairness.max_executing",
                    reason: format!("{table}0 would never run an action; leave it out for no cap"),
                });
            }
        }
        Ok(())
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP server for `GET /metrics`, e.g.
    /// `127.0.0.1:9981`. Required in the table.
    pub listen: SocketAddr,
    /// HTTPS for the page (`[metrics.tls]`). Default: the daemon's
    /// `[tls]`, so that TLS on the daemon covers its metrics too; without
    /// either, plain HTTP.
    #[serde(default)]
    pub tls: Option<ServerTls>,
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
            platform_matching: BTreeMap::new(),
            fairness: FairnessConfig::default(),
            metrics: None,
            tracing: None,
            tls: None,
            client_tls: None,
            auth: None,
            size_classes: None,
        }
    }
}

impl Config {
    /// The TLS of the metrics page and the key it comes from:
    /// `[metrics.tls]`, else `[tls]`.
    pub fn metrics_tls(&self) -> Option<(&ServerTls, &'static str)> {
        let metrics = self.metrics.as_ref()?;
        match (&metrics.tls, &self.tls) {
            (Some(tls), _) => Some((tls, "metrics.tls")),
            (None, Some(tls)) => Some((tls, "tls")),
            (None, None) => None,
        }
    }

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
        self.fairness.validate()?;
        corral_auth::channel::check_endpoint("storage", &self.storage, self.client_tls.is_some())
            .map_err(Error::Client)?;
        if let Some(sizes) = &self.size_classes {
            if !(0.0..=1.0).contains(&sizes.probe_probability) {
                return Err(Error::InvalidConfig {
                    field: "size_classes.probe_probability",
                    reason: format!("must be between 0 and 1, got {}", sizes.probe_probability),
                });
            }
            if sizes.max_slowdown.is_nan() || sizes.max_slowdown < 1.0 {
                return Err(Error::InvalidConfig {
                    field: "size_classes.max_slowdown",
                    reason: format!("must be at least 1, got {}", sizes.max_slowdown),
                });
            }
            if sizes.history_size == 0 {
                return Err(Error::InvalidConfig {
                    field: "size_classes.history_size",
                    reason: "at least one outcome must be kept".to_owned(),
                });
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate("tls").map_err(Error::Tls)?;
        }
        if let Some(tls) = self.metrics.as_ref().and_then(|m| m.tls.as_ref()) {
            tls.validate("metrics.tls").map_err(Error::Tls)?;
        }
        if let Some(client_tls) = &self.client_tls {
            client_tls.validate().map_err(Error::Tls)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fairness_weights_and_caps_out_of_range_are_refused_naming_the_table() {
        let mut cfg = Config::default();
        cfg.validate().unwrap();
        cfg.fairness.instances.insert(
            "ci".to_owned(),
            InstanceFairness {
                weight: Some(0),
                ..InstanceFairness::default()
            },
        );
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("fairness.weight")
                && err.contains("instances.\"ci\": must be between 1 and 1000, got 0"),
            "{err}"
        );
        cfg.fairness.instances.clear();
        cfg.fairness.max_executing = Some(0);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("fairness.max_executing"), "{err}");
        cfg.fairness.max_executing = Some(1);
        cfg.fairness.weight = MAX_WEIGHT + 1;
        assert!(cfg.validate().is_err());
    }
}
