//! The Kubernetes manifests: the generated ConfigMap, the API's schemas
//! (kubernetes-validate), and the probes, ports and mounts against the
//! configs and units.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// The Kubernetes versions the manifests are checked against: the oldest
/// they are written for (every field they use is GA there) and the newest
/// kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// The ConfigMap deploy/kubernetes/configmap.yaml must be: every
/// deploy/config file, as is.
fn generated_configmap() -> String {
    let mut out = String::from(
        "# Generated from deploy/config/*.toml by tests/deploy/kubernetes.rs\n\
         # (configmap_is_generated_from_deploy_config): edit those files,\n\
         # then copy the file the failing test writes here.\n\
         apiVersion: v1\n\
         kind: ConfigMap\n\
         metadata:\n  name: corral-config\n  labels:\n    app.kubernetes.io/name: corral\n\
         data:\n",
    );
    for daemon in DAEMONS {
        out.push_str(&format!("  {daemon}.toml: |\n"));
        for line in deploy_config(daemon).lines() {
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

#[test]
fn configmap_is_generated_from_deploy_config() {
    let path = repo().join("deploy/kubernetes/configmap.yaml");
    let expected = generated_configmap();
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        let fresh = Path::new(env!("CARGO_TARGET_TMPDIR")).join("configmap.yaml");
        std::fs::write(&fresh, &expected).unwrap();
        panic!(
            "{} is not what deploy/config/*.toml make: cp {} {}",
            path.display(),
            fresh.display(),
            path.display()
        );
    }
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate --strict` on `files` against every version of
/// [`KUBERNETES_VERSIONS`]: success, and what it said.
fn kubernetes_validate(python: &Path, files: &[PathBuf]) -> (bool, String) {
    let mut ok = true;
    let mut text = String::new();
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(python)
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--quiet",
                "-k",
                version,
            ])
            .args(files)
            .output()
            .unwrap();
        ok &= output.status.success();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        text.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    (ok, text)
}

#[test]
fn kubernetes_manifests_pass_schema_validation() {
    let test = "kubernetes_manifests_pass_schema_validation";
    let Some(python) = test_python(test) else {
        return;
    };
    let files = manifests();
    assert_eq!(files.len(), 4, "{files:?}");
    let (ok, text) = kubernetes_validate(&python, &files);
    assert!(ok, "kubernetes-validate:\n{text}");
    // A field the API does not have is refused, not ignored.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("worker.yaml");
    let worker = read(&repo().join("deploy/kubernetes/worker.yaml"));
    let misspelled = worker.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem");
    assert_ne!(misspelled, worker);
    std::fs::write(&bad, misspelled).unwrap();
    let (ok, text) = kubernetes_validate(&python, &[bad]);
    assert!(!ok && text.contains("readOnlyRootFileSystem"), "{text}");
}

/// Every document of every manifest, as JSON (PyYAML, in the venv).
fn manifest_documents(python: &Path) -> Vec<serde_json::Value> {
    let output = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
             print(json.dumps(docs))",
        ])
        .args(manifests())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(workload: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The containerPort of the port named by a probe (`port: http`).
fn probed_port(container: &serde_json::Value, probe: &str) -> (String, u64) {
    let get = &container[probe]["httpGet"];
    let name = &get["port"];
    let port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| &p["name"] == name)
        .unwrap_or_else(|| panic!("{probe} names port {name}, which is not declared"));
    (
        get["path"].as_str().unwrap().to_owned(),
        port["containerPort"].as_u64().unwrap(),
    )
}

#[test]
fn manifests_use_the_configmap_and_probe_the_configs_ports() {
    let test = "manifests_use_the_configmap_and_probe_the_configs_ports";
    let Some(python) = test_python(test) else {
        return;
    };
    let docs = manifest_documents(&python);
    // The ConfigMap holds the deploy configs (generated, checked above).
    let configmap = find(&docs, "ConfigMap", "corral-config");
    for daemon in DAEMONS {
        assert_eq!(
            configmap["data"][format!("{daemon}.toml")].as_str(),
            Some(deploy_config(daemon).as_str()),
            "{daemon}.toml in the ConfigMap"
        );
    }
    let storage = find(&docs, "StatefulSet", "corral-storage");
    let scheduler = find(&docs, "StatefulSet", "corral-scheduler");
    let workers = find(&docs, "Deployment", "corral-worker");
    let pods = [
        ("storage", storage, "storage", true),
        ("scheduler", scheduler, "scheduler", true),
        ("worker", workers, "worker", true),
        ("runner", workers, "runner", false),
    ];
    for (daemon, workload, name, ready) in pods {
        let c = container(workload, name);
        assert_eq!(
            c["args"],
            serde_json::json!([daemon, "--config", format!("/etc/corral/{daemon}.toml")])
        );
        let port = u64::from(metrics_port(daemon));
        assert_eq!(
            probed_port(c, "livenessProbe"),
            ("/healthz".to_owned(), port)
        );
        if ready {
            assert_eq!(
                probed_port(c, "readinessProbe"),
                ("/readyz".to_owned(), port)
            );
        }
    }
    // Services serve the ports the daemons listen on, by the names the
    // configs use.
    for (daemon, url_of) in [("storage", "storage"), ("scheduler", "scheduler")] {
        let service = find(&docs, "Service", &format!("corral-{daemon}"));
        let listen: std::net::SocketAddr = config_value(daemon, "listen").parse().unwrap();
        let grpc = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "grpc")
            .unwrap();
        assert_eq!(grpc["port"].as_u64(), Some(u64::from(listen.port())));
        assert_eq!(
            config_value("worker", url_of),
            format!("http://corral-{daemon}:{}", listen.port())
        );
    }
    assert_eq!(
        config_value("scheduler", "storage"),
        config_value("worker", "storage")
    );
    // The runner's socket and the build directory are shared at the same
    // paths by both containers of a worker pod.
    let mounts = |name: &str| -> BTreeMap<String, String> {
        container(workers, name)["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap().to_owned(),
                    m["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (worker_mounts, runner_mounts) = (mounts("worker"), mounts("runner"));
    for path in ["/run/corral", "/var/lib/corral/worker"] {
        assert!(worker_mounts.contains_key(path), "{path}");
        assert_eq!(worker_mounts.get(path), runner_mounts.get(path), "{path}");
    }
    // The runner is the one privileged container, and the worker's
    // capabilities are the unit's.
    assert_eq!(
        container(workers, "runner")["securityContext"]["privileged"],
        true
    );
    let unit = read(&unit_path("worker"));
    let unit_caps: Vec<String> = directive(&unit, "CapabilityBoundingSet")[0]
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    let added: Vec<String> = container(workers, "worker")["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(added, unit_caps);
    for (_, workload, name, _) in pods {
        if name != "runner" {
            let privileged = &container(workload, name)["securityContext"]["privileged"];
            assert!(privileged.is_null() || privileged == false, "{name}");
        }
    }
}
