//! The deployment files in deploy/ are checked as CI can:
//!
//! - the systemd units by `systemd-analyze verify` (Debian's systemd),
//!   with their ExecStart pointed at the `corral` this build made; any
//!   warning it prints (an unknown directive, a system call group it does
//!   not know) fails the test;
//! - the runner unit's capability bounding set by running an action in the
//!   sandbox with only those capabilities (`setpriv`, util-linux);
//! - the Kubernetes manifests against the API's schemas, strictly (no
//!   unknown field), with `kubernetes-validate` from PyPI, installed in the
//!   test venv (tests/python/requirements.txt), which bundles the schemas
//!   and needs no cluster and no network;
//! - the configs both use (deploy/config/*.toml) with the daemons' own
//!   parsers, against the documented examples (docs/examples/), and
//!   against the ports and paths the units and manifests give them;
//! - the ConfigMap (deploy/kubernetes/configmap.yaml) as generated from
//!   deploy/config, byte for byte.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv's Python (scripts/test.sh sets it), with kubernetes-validate
/// and PyYAML.
const PYTHON_VARIABLE: &str = "CORRAL_TEST_PYTHON";

/// The Kubernetes the manifests are checked against: the oldest they are
/// written for (every field they use is GA there).
const KUBERNETES_VERSION: &str = "1.30.0";

/// The daemons, by the name of their config file and unit.
const DAEMONS: [&str; 4] = ["storage", "scheduler", "worker", "runner"];

/// Keys whose value in deploy/config may differ from docs/examples: the
/// addresses, paths and sizes of a deployment. Every other key a deploy
/// config sets must be in the example with the same value.
const DEPLOYMENT_KEYS: &[(&str, &[&str])] = &[
    (
        "storage",
        &[
            "listen",
            "backend.dir",
            "backend.max_size_bytes",
            "metrics.listen",
        ],
    ),
    ("scheduler", &["listen", "storage", "metrics.listen"]),
    (
        "worker",
        &[
            "scheduler",
            "storage",
            "directory",
            "slots[0].runner",
            "metrics.listen",
        ],
    ),
    (
        "runner",
        &["listen_path", "build_directory", "metrics.listen"],
    ),
];

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

// --- systemd ---------------------------------------------------------------

/// Runs `systemd-analyze verify` on `units` (paths); its exit status and
/// everything it printed. None when it is not installed.
fn systemd_verify(test: &str, units: &[PathBuf]) -> Option<(bool, String)> {
    let output = match Command::new("systemd-analyze")
        .arg("verify")
        .args(units)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            corral_testkit::skip(
                test,
                &format!("systemd-analyze cannot run ({e}): Debian package systemd"),
            );
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some((output.status.success(), text))
}

/// Copies the units into `dir` with ExecStart's /usr/local/bin/corral
/// replaced by the built binary: verify refuses a unit whose program is
/// missing.
fn units_with_built_binary(dir: &Path, edit: impl Fn(&str, String) -> String) -> Vec<PathBuf> {
    let binary = corral_e2e::corral_binary();
    DAEMONS
        .iter()
        .map(|daemon| {
            let text = read(&unit_path(daemon));
            assert!(
                text.contains("ExecStart=/usr/local/bin/corral "),
                "corral-{daemon}.service starts /usr/local/bin/corral"
            );
            let text = text.replace(
                "ExecStart=/usr/local/bin/corral ",
                &format!("ExecStart={} ", binary.display()),
            );
            let path = dir.join(format!("corral-{daemon}.service"));
            std::fs::write(&path, edit(daemon, text)).unwrap();
            path
        })
        .collect()
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let test = "systemd_units_pass_systemd_analyze_verify";
    let dir = tempfile::tempdir().unwrap();
    let units = units_with_built_binary(dir.path(), |_, text| text);
    let Some((ok, text)) = systemd_verify(test, &units) else {
        return;
    };
    // verify exits 0 on an unknown directive or system call: it only
    // warns, so any line it prints is a failure here.
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn a_misspelled_directive_or_missing_program_fails_the_unit_check() {
    let test = "a_misspelled_directive_or_missing_program_fails_the_unit_check";
    let dir = tempfile::tempdir().unwrap();
    let units = units_with_built_binary(dir.path(), |daemon, text| match daemon {
        "storage" => text.replace("ProtectSystem=strict", "ProtectSytem=strict"),
        _ => text,
    });
    let Some((ok, text)) = systemd_verify(test, &units) else {
        return;
    };
    assert!(ok, "a misspelled directive is only a warning:\n{text}");
    assert!(text.contains("ProtectSytem"), "{text}");
    // The unit as shipped, whose program is not installed here.
    let Some((ok, text)) = systemd_verify(test, &[unit_path("storage")]) else {
        return;
    };
    if !Path::new("/usr/local/bin/corral").exists() {
        assert!(!ok && text.contains("/usr/local/bin/corral"), "{text}");
    }
}

/// The values of `key=` lines in a unit, in order.
fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// What systemd makes of the runner unit's file system options, as a
/// script that mounts them in a mount namespace of the runner's own
/// (`unshare --mount`) and then runs "$@": the root read-only
/// (ProtectSystem=strict), a private /tmp (PrivateTmp=yes), /home and
/// /root hidden (ProtectHome=yes) unless this checkout is under them.
fn runner_unit_mounts() -> String {
    let checkout = repo();
    let hidden: Vec<&str> = ["/home", "/root"]
        .into_iter()
        .filter(|dir| Path::new(dir).is_dir() && !checkout.starts_with(dir))
        .collect();
    format!(
        "set -e
mount --make-rprivate /
mount -o remount,bind,ro /
mount -t tmpfs -o mode=1777 tmpfs /tmp
for dir in {}; do mount -t tmpfs -o ro,mode=000 tmpfs $dir; done
if touch /usr/.corral-deploy-probe 2>/dev/null; then echo 'root writable' >&2; exit 1; fi
exec \"$@\"",
        hidden.join(" ")
    )
}

/// Runs `corral sandbox run --policy POLICY --timeout TIMEOUT -- sh -c
/// SCRIPT` as root as systemd runs the runner unit: only `capabilities`
/// in the bounding set, no_new_privs, and the unit's file system options
/// ([`runner_unit_mounts`]). Whether it succeeded, what it printed, and
/// how long it took.
fn sandbox_run_with(
    capabilities: &[&str],
    policy: &Path,
    timeout_s: u32,
    script: &str,
) -> (bool, String, std::time::Duration) {
    let bounding = std::iter::once("-all".to_owned())
        .chain(capabilities.iter().map(|c| {
            let name = c.strip_prefix("CAP_").unwrap_or(c).to_ascii_lowercase();
            format!("+{name}")
        }))
        .collect::<Vec<_>>()
        .join(",");
    let started = std::time::Instant::now();
    let output = Command::new("unshare")
        .args(["--mount", "--", "sh", "-c", &runner_unit_mounts(), "sh"])
        .arg("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .arg("--inh-caps=-all")
        .arg("--no-new-privs")
        .arg("--")
        .arg(corral_e2e::corral_binary())
        .args(["sandbox", "run", "--policy"])
        .arg(policy)
        .args([
            "--timeout",
            &timeout_s.to_string(),
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text, started.elapsed())
}

#[test]
fn the_runner_units_capabilities_are_enough_for_the_sandbox() {
    let test = "the_runner_units_capabilities_are_enough_for_the_sandbox";
    if !corral_testkit::privileged(test) {
        return;
    }
    let unit = read(&unit_path("runner"));
    let set = directive(&unit, "CapabilityBoundingSet");
    assert_eq!(set.len(), 1, "one CapabilityBoundingSet line: {set:?}");
    let capabilities: Vec<&str> = set[0].split_whitespace().collect();
    let without = |dropped: &str| -> Vec<&str> {
        assert!(
            capabilities.contains(&dropped),
            "{dropped} in {capabilities:?}"
        );
        capabilities
            .iter()
            .copied()
            .filter(|c| *c != dropped)
            .collect()
    };
    // The default policy with a disk limit a test can pass quickly, where
    // the runner's read-only root shows it (its /tmp is private).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let policy = dir.path().join("small-disk.toml");
    let default = read(&repo().join("policies/default.toml"));
    let small = default
        .lines()
        .map(|line| {
            if line.starts_with("disk_max_bytes =") {
                "disk_max_bytes = 500000"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(small, default.trim_end());
    std::fs::write(&policy, small).unwrap();

    // An action runs, as uid 0 inside; without CAP_SYS_ADMIN the run's
    // namespace cannot get its id maps.
    let hello = "echo sandboxed as $(id -u)";
    let (ok, text, _) = sandbox_run_with(&capabilities, &policy, 30, hello);
    assert!(
        ok && text.contains("sandboxed as 0"),
        "with {capabilities:?}:\n{text}"
    );
    let (ok, text, _) = sandbox_run_with(&without("CAP_SYS_ADMIN"), &policy, 30, hello);
    assert!(
        !ok && text.contains("setgroups"),
        "without CAP_SYS_ADMIN:\n{text}"
    );

    // A directory the action made unreadable is still measured (the
    // DAC capabilities): the action is not killed for it.
    let unreadable = "mkdir d && echo x > d/f && chmod 0 d && sleep 2.5 && echo survived";
    let (ok, text, _) = sandbox_run_with(&capabilities, &policy, 30, unreadable);
    assert!(ok && text.contains("survived"), "{text}");

    // Files unlinked but held open count toward the disk limit
    // (CAP_SYS_PTRACE reads the action's /proc/<pid>/fd): 600 kB of them
    // pass the 500 kB limit.
    let unlinked = "exec 3>a 4>b; head -c 300000 /dev/zero >&3; head -c 300000 /dev/zero >&4; \
                    rm a b; sleep 3; echo survived";
    let (_, text, _) = sandbox_run_with(&capabilities, &policy, 30, unlinked);
    assert!(
        !text.contains("survived") && text.contains("disk_max_bytes"),
        "held files were not counted:\n{text}"
    );
    let (_, text, _) = sandbox_run_with(&without("CAP_SYS_PTRACE"), &policy, 30, unlinked);
    assert!(text.contains("survived"), "without CAP_SYS_PTRACE:\n{text}");

    // The timeout kills the action (CAP_KILL: its processes have the
    // run's ids).
    let (_, text, took) = sandbox_run_with(&capabilities, &policy, 1, "sleep 8; echo survived");
    assert!(
        !text.contains("survived") && took < std::time::Duration::from_secs(6),
        "took {took:?}:\n{text}"
    );
}

// --- configs -----------------------------------------------------------------

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

/// Parses `text` with `daemon`'s own config type (unknown keys refused)
/// and runs its validation.
fn parse_as_daemon(daemon: &str, text: &str) -> Result<(), String> {
    fn check<T: serde::de::DeserializeOwned>(
        text: &str,
        validate: impl Fn(&T) -> Result<(), String>,
    ) -> Result<(), String> {
        let cfg: T = toml::from_str(text).map_err(|e| e.to_string())?;
        validate(&cfg)
    }
    match daemon {
        "storage" => check(text, |c: &corral_storage::Config| {
            c.validate().map_err(|e| e.to_string())
        }),
        "scheduler" => check(text, |c: &corral_scheduler::Config| {
            c.validate().map_err(|e| e.to_string())
        }),
        "worker" => check(text, |c: &corral_worker::Config| {
            c.validate().map_err(|e| e.to_string())
        }),
        "runner" => check(text, |c: &corral_runner::Config| {
            c.validate().map_err(|e| e.to_string())
        }),
        other => panic!("no daemon {other}"),
    }
}

/// What in `deployed` differs from `example`, but for `allowed` keys.
fn drift(
    deployed: &BTreeMap<String, toml::Value>,
    example: &BTreeMap<String, toml::Value>,
    allowed: &[&str],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in deployed {
        match example.get(key) {
            None => problems.push(format!("{key} is not in the example")),
            Some(shown) if shown != value && !allowed.contains(&key.as_str()) => {
                problems.push(format!("{key} = {value}, the example says {shown}"));
            }
            Some(_) => {}
        }
    }
    problems
}

#[test]
fn deploy_configs_parse_with_the_daemons_and_match_the_examples() {
    for (daemon, allowed) in DEPLOYMENT_KEYS {
        let text = deploy_config(daemon);
        parse_as_daemon(daemon, &text)
            .unwrap_or_else(|e| panic!("deploy/config/{daemon}.toml: {e}"));
        let example = read(&repo().join(format!("docs/examples/{daemon}.toml")));
        let problems = drift(&parse_leaves(&text), &parse_leaves(&example), allowed);
        assert!(
            problems.is_empty(),
            "deploy/config/{daemon}.toml against docs/examples/{daemon}.toml:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn a_config_drifting_from_its_example_is_caught() {
    let example = parse_leaves("listen = \"a\"\nx = 1\n[t]\ny = 2\n");
    let allowed = ["listen"];
    let same = parse_leaves("listen = \"b\"\n[t]\ny = 2\n");
    assert!(drift(&same, &example, &allowed).is_empty());
    let changed = parse_leaves("listen = \"b\"\nx = 3\n[t]\nz = 2\n");
    assert_eq!(
        drift(&changed, &example, &allowed),
        ["t.z is not in the example", "x = 3, the example says 1"]
    );
    // The daemons' own parsers refuse a key none of them has.
    let err =
        parse_as_daemon("storage", "listen = \"0.0.0.0:1\"\nlisten_adress = \"x\"\n").unwrap_err();
    assert!(err.contains("listen_adress"), "{err}");
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

#[test]
fn units_give_the_configs_their_paths() {
    let runner = read(&unit_path("runner"));
    let worker = read(&unit_path("worker"));
    let storage = read(&unit_path("storage"));
    // RuntimeDirectory=corral is /run/corral; StateDirectory=x is /var/lib/x.
    let socket = config_value("runner", "listen_path");
    assert_eq!(directive(&runner, "RuntimeDirectory"), ["corral"]);
    assert_eq!(Path::new(&socket).parent(), Some(Path::new("/run/corral")));
    assert_eq!(config_value("worker", "slots[0].runner"), socket);
    let directory = config_value("worker", "directory");
    assert_eq!(directive(&worker, "StateDirectory"), ["corral/worker"]);
    assert_eq!(directory, "/var/lib/corral/worker");
    // The runner's writable path is the worker's whole directory: the
    // worker makes build/ again at start, which a bind mount of build/
    // alone in the runner's namespace would not see.
    assert_eq!(directive(&runner, "StateDirectory"), ["corral/worker"]);
    assert_eq!(
        config_value("runner", "build_directory"),
        format!("{directory}/build")
    );
    assert_eq!(directive(&storage, "StateDirectory"), ["corral-storage"]);
    assert!(config_value("storage", "backend.dir").starts_with("/var/lib/corral-storage/"));
    // The sandbox's cgroups, and no unit mount over /proc for the runner.
    assert_eq!(directive(&runner, "Delegate"), ["yes"]);
    assert_eq!(directive(&runner, "OOMPolicy"), ["continue"]);
    for hides_proc in ["ProtectKernelTunables", "ProtectProc", "ProcSubset"] {
        assert!(directive(&runner, hides_proc).is_empty(), "{hides_proc}");
    }
    for daemon in DAEMONS {
        let unit = read(&unit_path(daemon));
        assert_eq!(
            directive(&unit, "ExecStart"),
            [format!(
                "/usr/local/bin/corral {daemon} --config /etc/corral/{daemon}.toml"
            )]
        );
    }
}

// --- Kubernetes ------------------------------------------------------------------

/// The ConfigMap deploy/kubernetes/configmap.yaml must be: every
/// deploy/config file, as is.
fn generated_configmap() -> String {
    let mut out = String::from(
        "# Generated from deploy/config/*.toml by tests/deploy.rs\n\
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

fn python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os(PYTHON_VARIABLE).map(PathBuf::from);
    if python.is_none() {
        corral_testkit::skip(
            test,
            &format!("{PYTHON_VARIABLE} is not set (scripts/test.sh makes the venv and sets it)"),
        );
    }
    python
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

/// `kubernetes-validate --strict` on `files`: success, and what it said.
fn kubernetes_validate(python: &Path, files: &[PathBuf]) -> (bool, String) {
    let output = Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k"])
        .arg(KUBERNETES_VERSION)
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn kubernetes_manifests_pass_schema_validation() {
    let test = "kubernetes_manifests_pass_schema_validation";
    let Some(python) = python(test) else {
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
    let Some(python) = python(test) else {
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
