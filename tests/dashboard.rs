//! The Grafana dashboard (deploy/grafana/corral.json) uses only metrics
//! the daemons serve: each daemon's tests prove its page holds exactly
//! its declared list, so every name a panel queries must be in one of
//! those lists, or the panel would be empty on every farm.

use std::collections::BTreeSet;
use std::path::Path;

/// Every metric any daemon serves, as written on its page.
fn served() -> BTreeSet<&'static str> {
    corral_scheduler::metrics::DECLARED
        .iter()
        .chain(&corral_worker::metrics::DECLARED)
        .chain(&corral_storage::metrics::DECLARED)
        .chain(&corral_runner::metrics::DECLARED)
        .map(|(name, _, _)| *name)
        .collect()
}

/// The `corral_*` names in a PromQL expression.
fn names_in(expr: &str) -> Vec<&str> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    expr.split(|c: char| !is_name(c))
        .filter(|word| word.starts_with("corral_"))
        .collect()
}

/// Every `expr` of every panel's targets.
fn exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().expect("expr").to_owned())
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_is_served_by_a_daemon() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/corral.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let served = served();
    let mut queried = BTreeSet::new();
    for expr in exprs(&dashboard) {
        for name in names_in(&expr) {
            // A histogram's series are its name with a suffix.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|base| served.contains(base))
                .unwrap_or(name);
            assert!(
                served.contains(base),
                "the dashboard queries {name}, which no daemon serves: {expr}"
            );
            queried.insert(base.to_owned());
        }
    }
    // A dashboard of every daemon: each has at least one panel.
    for daemon in ["scheduler", "worker", "storage", "runner"] {
        let prefix = format!("corral_{daemon}_");
        assert!(
            queried.iter().any(|name| name.starts_with(&prefix)),
            "no panel shows the {daemon}"
        );
    }
}

#[test]
fn a_name_no_daemon_serves_is_caught() {
    let served = served();
    let names = names_in("rate(corral_storage_nonexistent_total[5m]) / corral_worker_slots");
    assert_eq!(
        names,
        ["corral_storage_nonexistent_total", "corral_worker_slots"]
    );
    assert!(!served.contains(names[0]));
    assert!(served.contains(names[1]));
}
