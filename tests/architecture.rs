//! The direction of dependencies is the architecture (docs/README.md):
//! this test reads `cargo metadata` and fails when an edge points the
//! wrong way. It also checks that every path the "where to change what"
//! table of docs/README.md names exists: the table is the tree's map.

#![allow(clippy::unwrap_used)] // a test: a missing metadata field should fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

const OURS: &[&str] = &[
    "corral-proto",
    "corral-metrics",
    "corral-trace",
    "corral-auth",
    "corral-cas-client",
    "corral-sandbox",
    "corral-runner",
    "corral-storage",
    "corral-worker",
    "corral-scheduler",
    "corral",
    "corral-e2e",
    "corral-testkit",
    "corral-lru",
    "corral-image",
];

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host")
}

/// Normal (non-dev, non-build) dependency edges, by package name.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // Only this platform's dependencies: the others need not be downloaded,
    // and what runs here is what matters.
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host_triple()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut graph = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve nodes") {
        let from = names[node["id"].as_str().unwrap()].to_owned();
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| names[d["pkg"].as_str().unwrap()].to_owned())
            .collect();
        graph.insert(from, deps);
    }
    graph
}

/// Everything `root` links, directly or not.
fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(name) = todo.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

fn ours(set: &BTreeSet<String>) -> BTreeSet<&str> {
    set.iter()
        .map(String::as_str)
        .filter(|n| OURS.contains(n))
        .collect()
}

#[test]
fn every_crate_of_ours_is_in_the_graph() {
    let graph = graph();
    for name in OURS {
        assert!(
            graph.contains_key(*name),
            "{name} missing from the workspace"
        );
    }
}

#[test]
fn proto_and_sandbox_depend_on_nothing_of_ours() {
    let graph = graph();
    for leaf in [
        "corral-proto",
        "corral-metrics",
        "corral-trace",
        "corral-auth",
        "corral-sandbox",
        "corral-testkit",
        "corral-lru",
    ] {
        let reached = reaches(&graph, leaf);
        assert!(
            ours(&reached).is_empty(),
            "{leaf} reaches {:?}",
            ours(&reached)
        );
    }
}

#[test]
fn sandbox_never_links_tokio_or_tonic() {
    let reached = reaches(&graph(), "corral-sandbox");
    for banned in ["tokio", "tonic", "hyper", "h2"] {
        assert!(!reached.contains(banned), "corral-sandbox reaches {banned}");
    }
}

#[test]
fn worker_never_links_the_sandbox() {
    let reached = reaches(&graph(), "corral-worker");
    assert!(
        !reached.contains("corral-sandbox"),
        "the worker must reach the runner only over the runner protocol"
    );
}

#[test]
fn daemon_crates_depend_only_where_the_design_allows() {
    let graph = graph();
    let allowed: &[(&str, &[&str])] = &[
        (
            "corral-runner",
            &[
                "corral-proto",
                "corral-sandbox",
                "corral-metrics",
                "corral-trace",
            ],
        ),
        // Container images: references to directories, and nothing else
        // of ours but the cache index.
        ("corral-image", &["corral-lru"]),
        // The one CAS client: the protocols, and the channel it speaks on.
        ("corral-cas-client", &["corral-proto", "corral-auth"]),
        (
            "corral-storage",
            &[
                "corral-proto",
                "corral-auth",
                "corral-cas-client",
                "corral-lru",
                "corral-metrics",
                "corral-trace",
            ],
        ),
        (
            "corral-worker",
            &[
                "corral-proto",
                "corral-metrics",
                "corral-trace",
                "corral-auth",
                "corral-cas-client",
                "corral-lru",
                "corral-image",
            ],
        ),
        (
            "corral-scheduler",
            &[
                "corral-proto",
                "corral-metrics",
                "corral-trace",
                "corral-auth",
                "corral-cas-client",
                "corral-storage",
                "corral-lru",
            ],
        ),
    ];
    for (krate, may) in allowed {
        let reached = reaches(&graph, krate);
        let bad: Vec<_> = ours(&reached)
            .into_iter()
            .filter(|d| !may.contains(d))
            .collect();
        assert!(bad.is_empty(), "{krate} must not depend on {bad:?}");
    }
}

#[test]
fn the_check_itself_catches_a_wrong_edge() {
    // A graph where the worker links the sandbox through the runner must
    // be caught, or the tests above prove nothing.
    let mut graph = BTreeMap::new();
    graph.insert(
        "corral-worker".to_owned(),
        BTreeSet::from(["corral-runner".to_owned()]),
    );
    graph.insert(
        "corral-runner".to_owned(),
        BTreeSet::from(["corral-sandbox".to_owned()]),
    );
    assert!(reaches(&graph, "corral-worker").contains("corral-sandbox"));
}

/// The "where to change what" table of docs/README.md, one row per line.
fn where_to_change_what() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("docs/README.md")).unwrap();
    let table = readme
        .split("## Where to change what")
        .nth(1)
        .expect("docs/README.md has a \"Where to change what\" section");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and its rule
        .map(str::to_owned)
        .collect()
}

/// Whether `path` (from the repository's root; `*` allowed in its last
/// component) names at least one file or directory.
fn exists(root: &std::path::Path, path: &str) -> bool {
    let Some((dir, pattern)) = path.rsplit_once('/').filter(|(_, last)| last.contains('*')) else {
        return root.join(path).exists();
    };
    let (prefix, suffix) = pattern.split_once('*').unwrap();
    std::fs::read_dir(root.join(dir)).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.len() >= prefix.len() + suffix.len()
                && name.starts_with(prefix)
                && name.ends_with(suffix)
        })
    })
}

#[test]
fn every_path_in_the_where_to_change_what_table_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rows = where_to_change_what();
    assert!(rows.len() > 10, "the table was not found: {rows:?}");
    let mut checked = 0;
    for row in &rows {
        // Code spans with a slash are paths from the root; `<crate>` and
        // the like are placeholders.
        for span in row.split('`').skip(1).step_by(2) {
            if !span.contains('/') || span.contains('<') || span.contains(' ') {
                continue;
            }
            assert!(
                exists(&root, span),
                "docs/README.md names {span}, which does not exist"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} paths found in the table");
    // What a newcomer looks for first: each has a row.
    let table = rows.join("\n");
    for thing in [
        "the queue",
        "file cache",
        "directory cache",
        "disk blob store",
        "the Action Cache",
        "read-through tier",
        "seccomp profile",
        "policies",
        "worker protocol",
    ] {
        assert!(table.contains(thing), "no row names {thing}");
    }
}

#[test]
fn the_path_check_itself_catches_a_missing_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(exists(&root, "storage/src/*_service.rs"));
    assert!(!exists(&root, "storage/src/no_such_file.rs"));
    assert!(!exists(&root, "storage/src/*_nothing.rs"));
}
