//! The deployment files in deploy/ are checked as CI can:
//!
//! - the systemd units by `systemd-analyze verify` (Debian's systemd),
//!   with their ExecStart pointed at the `corral` this build made; any
//!   warning it prints (an unknown directive, a system call group it does
//!   not know) fails the test;
//! - the runner unit's capability bounding set by running actions in the
//!   sandbox with only those capabilities (`setpriv`, util-linux), under
//!   the unit's read-only root;
//! - the other units' system call filters, by tracing (`strace`) a farm
//!   of the four daemons on the deploy configs through an action, and
//!   checking every call each made is one its unit allows (and its
//!   sockets' families, and that no memory is made executable);
//! - the Kubernetes manifests against the API's schemas, strictly (no
//!   unknown field), with `kubernetes-validate` from PyPI, installed in the
//!   test venv (tests/python/requirements.txt), which bundles the schemas
//!   and needs no cluster and no network;
//! - the configs both use (deploy/config/*.toml) with the daemons' own
//!   parsers, against the documented examples (docs/examples/), and
//!   against the ports and paths the units and manifests give them;
//! - the ConfigMap (deploy/kubernetes/configmap.yaml) as generated from
//!   deploy/config, byte for byte.
//!
//! One module per concern, in tests/deploy/: `systemd`, `capabilities`
//! (the runner unit's), `traced_farm`, `configs`, `kubernetes`; and
//! `unit_emulation`, which does by hand what systemd would do from a unit.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use corral_e2e::test_python;

#[path = "deploy/capabilities.rs"]
mod capabilities;
#[path = "deploy/configs.rs"]
mod configs;
#[path = "deploy/kubernetes.rs"]
mod kubernetes;
#[path = "deploy/systemd.rs"]
mod systemd;
#[path = "deploy/traced_farm.rs"]
mod traced_farm;
#[path = "deploy/unit_emulation.rs"]
mod unit_emulation;

/// The daemons, by the name of their config file and unit.
const DAEMONS: [&str; 4] = ["storage", "scheduler", "worker", "runner"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the repository")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn deploy_config(daemon: &str) -> String {
    read(&repo().join(format!("deploy/config/{daemon}.toml")))
}

fn unit_path(daemon: &str) -> PathBuf {
    repo().join(format!("deploy/systemd/corral-{daemon}.service"))
}

/// The values of `key=` lines in a unit, in order.
fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// Every leaf of `value` by its dotted path (`slots[0].runner`).
fn leaves(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        toml::Value::Table(table) if table.is_empty() => {
            out.insert(prefix.to_owned(), value.clone());
        }
        toml::Value::Table(table) => {
            for (key, value) in table {
                leaves(&join(key), value, out);
            }
        }
        toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
            for (i, item) in items.iter().enumerate() {
                leaves(&format!("{prefix}[{i}]"), item, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned(), value.clone());
        }
    }
}

fn parse_leaves(text: &str) -> BTreeMap<String, toml::Value> {
    let value: toml::Value = toml::from_str(text).unwrap();
    let mut out = BTreeMap::new();
    leaves("", &value, &mut out);
    out
}

/// The `[metrics] listen` port of `daemon`'s deploy config.
fn metrics_port(daemon: &str) -> u16 {
    let leaves = parse_leaves(&deploy_config(daemon));
    let listen = leaves["metrics.listen"].as_str().unwrap();
    listen.parse::<std::net::SocketAddr>().unwrap().port()
}

fn config_value(daemon: &str, key: &str) -> String {
    let leaves = parse_leaves(&deploy_config(daemon));
    leaves[key].as_str().unwrap().to_owned()
}
