//! `worker.toml`: the worker daemon's configuration.
//!
//! `Config::default()` is exactly what `corral up` runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use corral_auth::tls::{ClientTls, ServerTls};
use serde::Deserialize;

use crate::error::Error;

/// The worker's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The scheduler's worker endpoint. Default `http://127.0.0.1:8980`.
    pub scheduler: String,
    /// The storage (CAS) endpoint. Default `http://127.0.0.1:8980`.
    pub storage: String,
    /// Holds `cache/` (the file cache) and `build/` (one directory per
    /// running action). Must be on one file system, for hardlinks. Default
    /// `corral-data/worker`.
    pub directory: PathBuf,
    /// Largest total size of the file cache, in bytes. Default 10 GiB.
    /// An upper bound, not a reservation: if the disk fills first (build
    /// directories share it), unpinned files are evicted to make room.
    pub cache_max_size_bytes: u64,
    /// Memory for Directory messages already read, in bytes (an estimate
    /// of what the decoded entries take): an input root met again is laid
    /// out without reading its tree from the CAS. Default 64 MiB, about
    /// 400,000 files and directories; raise it when many large, distinct
    /// input roots alternate. 0 keeps nothing.
    pub directory_cache_max_size_bytes: u64,
    /// Most entries an input root may expand to: its files, directories
    /// and symlinks, each occurrence counted (a Directory named twice
    /// counts twice). A few small Directory messages can name each other
    /// into more entries than memory holds; an action past this fails
    /// with INVALID_ARGUMENT before the rest of its tree is read or
    /// anything is written. Default 1,000,000; raise it for actions with
    /// larger input roots: each occurrence costs memory while the root is
    /// laid out (a directory holds its full path).
    pub input_root_max_entries: u64,
    /// Instance name prefix this worker serves. Default empty: all.
    pub instance_name_prefix: String,
    /// Pairs added to every slot's worker id, which is otherwise
    /// `{"hostname": …, "slot": "N"}`, e.g. `{ pool = "large" }`. The
    /// scheduler knows a worker by its id: two workers on one host must
    /// differ here, or each would report on the other's actions. Keep it
    /// across restarts (a restarted worker then gives back what it was
    /// running at once). `hostname` and `slot` are set by the worker.
    /// Default: none.
    pub worker_id: BTreeMap<String, String>,
    /// Build slots. Default: one slot group with a slot per core, on the
    /// local runner.
    pub slots: Vec<SlotGroup>,
    /// Prometheus metrics over HTTP (`GET /metrics`). Default: off; add
    /// a `[metrics]` table to serve them.
    pub metrics: Option<MetricsConfig>,
    /// OpenTelemetry traces over OTLP/gRPC (`[tracing]`, the table every
    /// daemon shares: `endpoint`, `sample_ratio`; docs/config.md): spans of
    /// its stages (fetch inputs, layout, run, upload outputs), in the
    /// trace the scheduler started. Default: off, nothing
    /// exported and no connection made.
    pub tracing: Option<corral_trace::TracingConfig>,
    /// What one action's outputs may take: the `[limits]` table.
    pub limits: Limits,
    /// TLS for the worker's connections to the scheduler and storage
    /// (`[client_tls]`), and the bearer token it authenticates with.
    /// Default: none, plaintext; `scheduler` and `storage` must then be
    /// `http://`, and with it `https://`.
    pub client_tls: Option<ClientTls>,
    /// How long running actions may still take once the worker is told
    /// to stop (SIGTERM), in seconds. The worker takes no new action at
    /// once; the running ones finish and are reported within this grace.
    /// Past it (or on a second SIGTERM, or SIGINT) they are killed and
    /// given back to the scheduler, which queues them again at once.
    /// Default 60. Keep it below what the service manager waits before
    /// SIGKILL (systemd's `TimeoutStopSec`, default 90 s; Kubernetes'
    /// `terminationGracePeriodSeconds`, default 30 s: raise that) with a
    /// few seconds to spare for the last reports. 0 kills at once.
    pub stop_grace_s: u64,
    /// Actions in container images (`[images]`): the `container-image`
    /// platform property names an image (`docker://host/repo:tag`,
    /// `oci:/path`) that the worker pulls, verifies, unpacks and keeps
    /// under `<directory>/build/images`, and the runner uses as the
    /// action's root. On by default.
    pub images: corral_image::Config,
}

/// The `[limits]` table: bounds on an action's outputs, checked before
/// any is hashed or uploaded. Past one, the action fails with
/// RESOURCE_EXHAUSTED naming the key, and no output is uploaded (stdout
/// and stderr still are: the policy's `limits.output_max_bytes` caps
/// those). They live here, not in the sandbox policies, because the
/// worker gathers and uploads outputs and never reads a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Sum of the apparent sizes (st_size) of the output files, in bytes,
    /// the files inside output directories included: a sparse file counts
    /// in full and a hardlink to an input at its size, as that is what
    /// would be hashed and uploaded. Default 16 GiB (the default policy's
    /// disk limit); lower it to protect a small CAS.
    pub output_max_bytes: u64,
    /// Most files, directories and symlinks in the outputs, output
    /// directories' contents included. Default 1,000,000, as
    /// `input_root_max_entries`.
    pub output_max_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            output_max_bytes: 16 << 30,
            output_max_files: 1_000_000,
        }
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP server for `GET /metrics`, e.g.
    /// `127.0.0.1:9982`. Required in the table.
    pub listen: std::net::SocketAddr,
    /// HTTPS for the page (`[metrics.tls]`). Default: none, plain HTTP
    /// (the worker serves nothing else, so it has no `[tls]` to reuse).
    #[serde(default)]
    pub tls: Option<ServerTls>,
}

/// Identical build slots that share a runner and a platform.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotGroup {
    /// How many actions run at once. 0 = one per core.
    #[serde(default)]
    pub concurrency: usize,
    /// The runner's Unix socket. Default `corral-data/runner.sock`,
    /// where `corral up` and a default runner.toml put it.
    #[serde(default = "default_runner")]
    pub runner: PathBuf,
    /// Platform properties offered to the scheduler. Actions go only to
    /// slots whose platform matches theirs.
    #[serde(default)]
    pub platform: BTreeMap<String, String>,
    /// Platform properties offered with several values: the worker sends
    /// the name once per value (REAPI allows repeated names), which a
    /// scheduler matching the name as `subset` reads as "any of these",
    /// e.g. `cpu-feature = ["avx2", "sse4_2"]`. A name may not be in
    /// `platform` too. Default: none.
    #[serde(default)]
    pub platform_lists: BTreeMap<String, Vec<String>>,
    /// Size class reported to the scheduler. Default 0.
    #[serde(default)]
    pub size_class: u32,
}

/// `slots[].runner` when left out: the runner's default `listen_path`.
fn default_runner() -> PathBuf {
    PathBuf::from("corral-data/runner.sock")
}

impl SlotGroup {
    /// The platform properties offered, `platform` and every value of
    /// `platform_lists`, sorted by name then value, as REAPI requires.
    pub fn offered(&self) -> Vec<(String, String)> {
        let lists = self
            .platform_lists
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |value| (name, value)));
        let mut offered: Vec<(String, String)> = self
            .platform
            .iter()
            .chain(lists)
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        offered.sort();
        offered.dedup();
        offered
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduler: "http://127.0.0.1:8980".to_owned(),
            storage: "http://127.0.0.1:8980".to_owned(),
            directory: PathBuf::from("corral-data/worker"),
            cache_max_size_bytes: 10 << 30,
            directory_cache_max_size_bytes: 64 << 20,
            input_root_max_entries: 1_000_000,
            instance_name_prefix: String::new(),
            worker_id: BTreeMap::new(),
            slots: vec![SlotGroup {
                concurrency: 0,
                runner: default_runner(),
                platform: BTreeMap::new(),
                platform_lists: BTreeMap::new(),
                size_class: 0,
            }],
            metrics: None,
            tracing: None,
            limits: Limits::default(),
            client_tls: None,
            stop_grace_s: 60,
            images: corral_image::Config::default(),
        }
    }
}

impl Config {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.slots.is_empty() {
            return Err(Error::InvalidConfig {
                field: "slots",
                reason: "a worker needs at least one slot group".to_owned(),
            });
        }
        for (key, url) in [("scheduler", &self.scheduler), ("storage", &self.storage)] {
            corral_auth::channel::check_endpoint(key, url, self.client_tls.is_some())
                .map_err(Error::Client)?;
        }
        if let Some(key) = ["hostname", "slot"]
            .into_iter()
            .find(|k| self.worker_id.contains_key(*k))
        {
            return Err(Error::InvalidConfig {
                field: "worker_id",
                reason: format!("{key} is set by the worker; name the worker with another key"),
            });
        }
        for group in &self.slots {
            if let Some(name) = group
                .platform_lists
                .keys()
                .find(|n| group.platform.contains_key(*n))
            {
                return Err(Error::InvalidConfig {
                    field: "slots.platform_lists",
                    reason: format!("{name} is in slots.platform too; list every value here"),
                });
            }
        }
        if let Some(client_tls) = &self.client_tls {
            client_tls.validate().map_err(Error::Tls)?;
        }
        if let Some(tls) = self.metrics.as_ref().and_then(|m| m.tls.as_ref()) {
            tls.validate("metrics.tls").map_err(Error::Tls)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_id_names_the_worker_but_not_its_host_or_slot() {
        let mut cfg = Config {
            worker_id: [("pool".to_owned(), "large".to_owned())].into(),
            ..Config::default()
        };
        cfg.validate().unwrap();
        cfg.worker_id.insert("slot".to_owned(), "7".to_owned());
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("worker_id") && err.contains("slot"), "{err}");
    }

    #[test]
    fn a_platform_list_is_offered_once_per_value_sorted() {
        let mut cfg = Config::default();
        let group = &mut cfg.slots[0];
        group.platform = [("OSFamily".to_owned(), "linux".to_owned())].into();
        group.platform_lists = [(
            "cpu-feature".to_owned(),
            vec!["sse4_2".to_owned(), "avx2".to_owned()],
        )]
        .into();
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            group.offered(),
            [
                pair("OSFamily", "linux"),
                pair("cpu-feature", "avx2"),
                pair("cpu-feature", "sse4_2")
            ]
        );
        cfg.validate().unwrap();
        cfg.slots[0].platform_lists = [("OSFamily".to_owned(), vec!["linux".to_owned()])].into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("slots.platform_lists"), "{err}");
    }
}
