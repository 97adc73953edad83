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

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv's Python (scripts/test.sh sets it), with kubernetes-validate
/// and PyYAML.
const PYTHON_VARIABLE: &str = "CORRAL_TEST_PYTHON";

/// The Kubernetes versions the manifests are checked against: the oldest
/// they are written for (every field they use is GA there) and the newest
/// kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

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

/// What systemd makes of the units' file system options, as a
/// script that mounts them in a mount namespace of the runner's own
/// (`unshare --mount`) and then runs "$@": `writable` directories bound
/// writable (StateDirectory=, RuntimeDirectory=), the rest of the root
/// read-only (ProtectSystem=strict), a private /tmp (PrivateTmp=yes),
/// /home and /root hidden (ProtectHome=yes), each unless this checkout
/// (the binary, the test's files) is under it.
fn unit_mounts(writable: &[&Path]) -> String {
    let checkout = repo();
    let outside = |dir: &&str| Path::new(dir).is_dir() && !checkout.starts_with(dir);
    let hidden: Vec<&str> = ["/home", "/root"].into_iter().filter(outside).collect();
    let private: Vec<&str> = ["/tmp"].into_iter().filter(outside).collect();
    let writable: Vec<String> = writable
        .iter()
        .map(|dir| format!("'{}'", dir.display()))
        .collect();
    format!(
        "set -e
mount --make-rprivate /
for dir in {writable}; do mount --bind $dir $dir; done
mount -o remount,bind,ro /
for dir in {private}; do mount -t tmpfs -o mode=1777 tmpfs $dir; done
for dir in {hidden}; do mount -t tmpfs -o ro,mode=000 tmpfs $dir; done
if touch /usr/.corral-deploy-probe 2>/dev/null; then echo 'root writable' >&2; exit 1; fi
exec \"$@\"",
        writable = writable.join(" "),
        private = private.join(" "),
        hidden = hidden.join(" ")
    )
}

/// A unit's capability bounding set.
fn unit_capabilities(daemon: &str) -> Vec<String> {
    let unit = read(&unit_path(daemon));
    let set = directive(&unit, "CapabilityBoundingSet");
    assert_eq!(set.len(), 1, "one CapabilityBoundingSet line: {set:?}");
    set[0].split_whitespace().map(str::to_owned).collect()
}

/// `command` as systemd runs it from a unit: in a mount namespace with
/// the units' file system options ([`unit_mounts`]), `writable` bound
/// writable, with only `capabilities` in the bounding set, no_new_privs,
/// and as `user` (uid and gid; DynamicUser=) or root.
fn as_unit(
    capabilities: &[String],
    writable: &[&Path],
    user: Option<u32>,
    command: &[&OsStr],
) -> Command {
    let bounding = std::iter::once("-all".to_owned())
        .chain(capabilities.iter().map(|c| {
            let name = c.strip_prefix("CAP_").unwrap_or(c).to_ascii_lowercase();
            format!("+{name}")
        }))
        .collect::<Vec<_>>()
        .join(",");
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--mount", "--", "sh", "-c", &unit_mounts(writable), "sh"])
        .arg("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .args(["--inh-caps=-all", "--no-new-privs"]);
    if let Some(id) = user {
        unshare.args([
            format!("--reuid={id}"),
            format!("--regid={id}"),
            "--clear-groups".to_owned(),
        ]);
    }
    unshare.arg("--").args(command);
    unshare
}

/// Runs `corral sandbox run --policy POLICY --timeout TIMEOUT -- sh -c
/// SCRIPT` as the runner unit runs ([`as_unit`]): whether it
/// succeeded, what it printed, and how long it took.
fn sandbox_run_with(
    capabilities: &[String],
    policy: &Path,
    timeout_s: u32,
    script: &str,
) -> (bool, String, std::time::Duration) {
    let binary = corral_e2e::corral_binary();
    let timeout = timeout_s.to_string();
    let command: Vec<&OsStr> = vec![
        binary.as_os_str(),
        OsStr::new("sandbox"),
        OsStr::new("run"),
        OsStr::new("--policy"),
        policy.as_os_str(),
        OsStr::new("--timeout"),
        OsStr::new(&timeout),
        OsStr::new("--"),
        OsStr::new("/bin/sh"),
        OsStr::new("-c"),
        OsStr::new(script),
    ];
    let started = std::time::Instant::now();
    let output = as_unit(capabilities, &[], None, &command).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text, started.elapsed())
}

/// A run in the sandbox and what it must show.
struct Case {
    script: &'static str,
    timeout_s: u32,
    /// Whether what the run said and how long it took is what the
    /// protection gives.
    holds: fn(ok: bool, text: &str, took: std::time::Duration) -> bool,
}

/// An action runs, as uid 0 inside.
const RUNS: Case = Case {
    script: "echo sandboxed as $(id -u)",
    timeout_s: 30,
    holds: |ok, text, _| ok && text.contains("sandboxed as 0"),
};

/// A directory the action made unreadable is still measured: the action
/// is not killed for it.
const MEASURES_UNREADABLE: Case = Case {
    script: "mkdir d && echo x > d/f && chmod 0 d && sleep 2.5 && echo survived",
    timeout_s: 30,
    holds: |ok, text, _| ok && text.contains("survived"),
};

/// Files unlinked but held open count toward the disk limit: 600 kB of
/// them pass the policy's 500 kB, and the action is killed.
const COUNTS_HELD_FILES: Case = Case {
    script: "exec 3>a 4>b; head -c 300000 /dev/zero >&3; head -c 300000 /dev/zero >&4; \
             rm a b; sleep 3; echo survived",
    timeout_s: 30,
    holds: |_, text, _| !text.contains("survived") && text.contains("disk_max_bytes"),
};

/// The timeout kills the action.
const KILLS_AT_TIMEOUT: Case = Case {
    script: "sleep 5; echo survived",
    timeout_s: 1,
    holds: |_, text, took| !text.contains("survived") && took < std::time::Duration::from_secs(4),
};

/// The case each capability of the runner unit is there for: it holds
/// with the unit's set, and fails without that capability.
const NEEDED_FOR: &[(&str, &Case)] = &[
    ("CAP_SETUID", &RUNS),
    ("CAP_SETGID", &RUNS),
    ("CAP_SYS_ADMIN", &RUNS),
    ("CAP_SETPCAP", &RUNS),
    ("CAP_CHOWN", &RUNS),
    ("CAP_FOWNER", &RUNS),
    ("CAP_DAC_READ_SEARCH", &MEASURES_UNREADABLE),
    ("CAP_KILL", &KILLS_AT_TIMEOUT),
    ("CAP_SYS_PTRACE", &COUNTS_HELD_FILES),
];

#[test]
fn each_of_the_runner_units_capabilities_is_needed_and_they_are_enough() {
    let test = "each_of_the_runner_units_capabilities_is_needed_and_they_are_enough";
    if !corral_testkit::privileged(test) {
        return;
    }
    let capabilities = unit_capabilities("runner");
    let mut listed: Vec<&str> = capabilities.iter().map(String::as_str).collect();
    let mut needed: Vec<&str> = NEEDED_FOR.iter().map(|(c, _)| *c).collect();
    listed.sort_unstable();
    needed.sort_unstable();
    assert_eq!(
        listed, needed,
        "every capability of the unit has its case here"
    );
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
    let check = |set: &[String], case: &Case| {
        let (ok, text, took) = sandbox_run_with(set, &policy, case.timeout_s, case.script);
        (
            (case.holds)(ok, &text, took),
            format!("took {took:?}:\n{text}"),
        )
    };
    for case in [
        &RUNS,
        &MEASURES_UNREADABLE,
        &COUNTS_HELD_FILES,
        &KILLS_AT_TIMEOUT,
    ] {
        let (holds, said) = check(&capabilities, case);
        assert!(holds, "with the unit's set, `{}` {said}", case.script);
    }
    for (capability, case) in NEEDED_FOR {
        let fewer: Vec<String> = capabilities
            .iter()
            .filter(|c| c != capability)
            .cloned()
            .collect();
        let (holds, said) = check(&fewer, case);
        assert!(
            !holds,
            "without {capability}, `{}` still {said}",
            case.script
        );
    }
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

// --- the units' system call filters, against a build ------------------------------

/// Every system call in systemd's `group` (or `name` itself), groups
/// inside it expanded.
fn syscall_group(group: &str) -> std::collections::BTreeSet<String> {
    if !group.starts_with('@') {
        return [group.to_owned()].into();
    }
    let output = Command::new("systemd-analyze")
        .args(["syscall-filter", group])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "systemd-analyze syscall-filter {group}"
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .skip(1) // the group's own name
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|name| !name.is_empty())
        .flat_map(syscall_group)
        .collect()
}

/// What a unit's `SystemCallFilter=` lines allow: the allow list less
/// the `~` deny lists.
fn allowed_syscalls(unit: &str) -> std::collections::BTreeSet<String> {
    let mut allowed = std::collections::BTreeSet::new();
    let mut denied = std::collections::BTreeSet::new();
    for line in directive(unit, "SystemCallFilter") {
        match line.strip_prefix('~') {
            Some(deny) => deny
                .split_whitespace()
                .for_each(|g| denied.extend(syscall_group(g))),
            None => line
                .split_whitespace()
                .for_each(|g| allowed.extend(syscall_group(g))),
        }
    }
    assert!(!allowed.is_empty(), "no allow list");
    allowed.difference(&denied).cloned().collect()
}

/// The part of an `strace -f -o` file from the exec of `corral` on: what
/// ran before it, unshare and setpriv setting up a unit's options, is
/// systemd's part.
fn since_corral(trace: &str) -> &str {
    let exec = format!("execve(\"{}\"", corral_e2e::corral_binary().display());
    let from = trace
        .find(&exec)
        .unwrap_or_else(|| panic!("no {exec} in the trace"));
    &trace[from..]
}

/// The system calls a trace shows, by name.
fn traced_syscalls(trace: &str) -> std::collections::BTreeSet<String> {
    since_corral(trace)
        .lines()
        .filter_map(|line| {
            let call = line.split_once(' ')?.1.trim_start();
            let name = &call[..call.find('(')?];
            (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .then(|| name.to_owned())
        })
        .collect()
}

/// `deploy/config/<daemon>.toml` with `changes` (dotted key, value)
/// applied, written into `dir`.
fn local_config(dir: &Path, daemon: &str, changes: &[(&str, String)]) -> PathBuf {
    let mut table: toml::Table = toml::from_str(&deploy_config(daemon)).unwrap();
    for (key, value) in changes {
        let mut at = &mut table;
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap();
        for part in parts {
            at = match part.strip_suffix("[0]") {
                Some(array) => at[array].as_array_mut().unwrap()[0].as_table_mut().unwrap(),
                None => at[part].as_table_mut().unwrap(),
            };
        }
        assert!(at.contains_key(last), "{daemon}: {key}");
        at.insert(last.to_owned(), toml::Value::String(value.clone()));
    }
    let path = dir.join(format!("{daemon}.toml"));
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    path
}

/// A daemon of the test farm; killed (the traced process, not strace,
/// which would only detach) if the test ends early.
struct Traced {
    tracer: std::process::Child,
}

impl Traced {
    /// The process strace started: the daemon.
    fn daemon_pid(&self) -> Option<u32> {
        let tracer = self.tracer.id();
        let children = std::fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"));
        children.ok()?.split_whitespace().next()?.parse().ok()
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.daemon_pid() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // Only while strace runs: once it is reaped its pid may be
        // another process's, whose child this must not kill.
        if matches!(self.tracer.try_wait(), Ok(None)) {
            self.signal("KILL");
            let _ = self.tracer.wait();
        }
    }
}

/// GET `path` on loopback `port`: the status line's code, if anything
/// answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// The uid and gid storage and the scheduler run as here, for the
/// DynamicUser= of their units: one that owns nothing.
const NOBODY: u32 = 65534;

/// Uploads and executes one action through storage and the scheduler,
/// with the test's REAPI client (tests/python); its outputs include a
/// directory the action made unreadable, which the worker must read, and
/// a sticky one, from which it must remove what the action's uid owns.
const CLIENT: &str = r#"
import os, subprocess, sys
stubs, tests, storage, scheduler = sys.argv[1:5]
protos = os.path.join(tests, "python", "protos")
ours = os.path.join(tests, "..", "proto", "protos")
subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + protos, "-I" + ours,
                "--python_out=" + stubs, "--grpc_python_out=" + stubs,
                "build/bazel/remote/execution/v2/remote_execution_subset.proto",
                "google/longrunning/operations.proto", "google/rpc/status.proto",
                "google/rpc/precondition_failure.proto"], check=True)
sys.path[:0] = [stubs, os.path.join(tests, "python")]
import reapi_client as rc
p = rc.prepare(["/bin/sh", "-c", "mkdir -p out/d out/s && cat in.txt > out/a && echo x > out/d/f"
                " && chmod 0 out/d && echo y > out/s/g && chmod 1777 out/s"],
               inputs={"in.txt": b"input"}, output_paths=["out"], salt=os.urandom(8))
cas, ex = rc.Client(storage), rc.Client(scheduler)
cas.upload(*p.blobs())
r = rc.response(ex.execute(rc.digest_of(rc.encode(p.action)))[-1])
tree = cas.read(r.result.output_directories[0].tree_digest)
print("status", r.status.code, "exit", r.result.exit_code, "tree", len(tree))
"#;

#[test]
fn storage_scheduler_and_worker_stay_within_their_units_system_call_filters() {
    let test = "storage_scheduler_and_worker_stay_within_their_units_system_call_filters";
    if !corral_testkit::privileged(test) {
        return;
    }
    let Some(python) = python(test) else {
        return;
    };
    for tool in ["strace", "systemd-analyze"] {
        if Command::new(tool).arg("--version").output().is_err() {
            corral_testkit::skip(test, &format!("{tool} is not installed"));
            return;
        }
    }
    // The deploy configs, on loopback ports and under a scratch directory
    // that the runner's read-only root still shows (its /tmp is private).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let scratch = dir.path();
    // The runner's StateDirectory= and RuntimeDirectory=, writable to it;
    // storage's, its user's.
    let writable = [scratch.join("worker"), scratch.join("run")];
    for dir in &writable {
        std::fs::create_dir_all(dir).unwrap();
    }
    let cas = scratch.join("cas");
    std::fs::create_dir_all(&cas).unwrap();
    std::os::unix::fs::chown(&cas, Some(NOBODY), Some(NOBODY)).unwrap();
    let port = corral_e2e::free_port;
    let (storage_port, scheduler_port) = (port(), port());
    let (worker_http, scheduler_http) = (port(), port());
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let socket = scratch.join("run/runner.sock").display().to_string();
    let worker_dir = scratch.join("worker").display().to_string();
    let configs = [
        (
            "storage",
            local_config(
                scratch,
                "storage",
                &[
                    ("listen", addr(storage_port)),
                    ("backend.dir", cas.join("store").display().to_string()),
                    ("metrics.listen", addr(port())),
                ],
            ),
        ),
        (
            "scheduler",
            local_config(
                scratch,
                "scheduler",
                &[
                    ("listen", addr(scheduler_port)),
                    ("storage", format!("http://{}", addr(storage_port))),
                    ("metrics.listen", addr(scheduler_http)),
                ],
            ),
        ),
        (
            "runner",
            local_config(
                scratch,
                "runner",
                &[
                    ("listen_path", socket.clone()),
                    ("build_directory", format!("{worker_dir}/build")),
                    ("metrics.listen", addr(port())),
                ],
            ),
        ),
        (
            "worker",
            local_config(
                scratch,
                "worker",
                &[
                    ("scheduler", format!("http://{}", addr(scheduler_port))),
                    ("storage", format!("http://{}", addr(storage_port))),
                    ("directory", worker_dir),
                    ("slots[0].runner", socket),
                    ("metrics.listen", addr(worker_http)),
                ],
            ),
        ),
    ];
    // Every daemon traced, the runner too: its calls (namespaces,
    // mounts) must fail the check, or the check proves nothing. The runner
    // runs with its unit's capabilities and file system options, and so
    // shows them enough for a worker's action.
    let daemons: Vec<(&str, Traced)> = configs
        .iter()
        .map(|(daemon, config)| {
            let log = std::fs::File::create(scratch.join(format!("{daemon}.log"))).unwrap();
            let binary = corral_e2e::corral_binary();
            let command = [
                binary.as_os_str(),
                OsStr::new(daemon),
                OsStr::new("--config"),
                config.as_os_str(),
            ];
            // Each daemon as its unit runs it: its capabilities, its file
            // system options, storage and the scheduler as a user that
            // owns nothing but storage's directory (DynamicUser=).
            let (writable, user): (Vec<&Path>, _) = match *daemon {
                "runner" => (writable.iter().map(PathBuf::as_path).collect(), None),
                "worker" => (vec![writable[0].as_path()], None),
                "storage" => (vec![cas.as_path()], Some(NOBODY)),
                _ => (Vec::new(), Some(NOBODY)),
            };
            let unit = as_unit(&unit_capabilities(daemon), &writable, user, &command);
            let command: Vec<_> = std::iter::once(unit.get_program())
                .chain(unit.get_args())
                .map(OsStr::to_owned)
                .collect();
            let tracer = Command::new("strace")
                .args(["-f", "-qq", "-o"])
                .arg(scratch.join(format!("{daemon}.trace")))
                .args(command)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            (*daemon, Traced { tracer })
        })
        .collect();
    let logs = || {
        DAEMONS
            .iter()
            .map(|d| format!("--- {d}\n{}", read(&scratch.join(format!("{d}.log")))))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Up: storage answers the scheduler, and the worker serves. Not the
    // worker's /readyz: an idle worker is ready only once its first
    // Synchronize is answered, a long poll of up to 50 s; the action
    // below waits in the queue until the worker takes it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while http_status(scheduler_http, "/readyz") != Some(200)
        || http_status(worker_http, "/healthz") != Some(200)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the farm is not up within 60 s\n{}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::fs::create_dir_all(scratch.join("stubs")).unwrap();
    let output = Command::new(&python)
        .args(["-c", CLIENT])
        .arg(scratch.join("stubs"))
        .arg(repo().join("tests"))
        .arg(addr(storage_port))
        .arg(addr(scheduler_port))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.contains("status 0 exit 0 tree"),
        "the action through the farm:\n{said}\n{}",
        logs()
    );
    // The worker removed the action's directory, what the action's uid
    // owns in it included (its unit's capabilities): nothing is left
    // but the marker files of its start-up check.
    let build = scratch.join("worker/build");
    let left = || -> Vec<String> {
        std::fs::read_dir(&build)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with("corral-build-directory-check-"))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        left().is_empty(),
        "left in {}: {:?}\n{}",
        build.display(),
        left(),
        logs()
    );
    // Storage wrote its blobs as its unit's user.
    let store = std::fs::metadata(cas.join("store")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&store),
        NOBODY,
        "storage ran as root"
    );
    // SIGTERM, so that the stop is traced too.
    for (_, daemon) in daemons.iter().rev() {
        daemon.signal("TERM");
    }
    for (name, mut daemon) in daemons {
        let status = daemon.tracer.wait().unwrap();
        assert!(
            status.success(),
            "{name} under strace: {status}\n{}",
            logs()
        );
    }
    for daemon in ["storage", "scheduler", "worker", "runner"] {
        let trace = read(&scratch.join(format!("{daemon}.trace")));
        let used = traced_syscalls(&trace);
        assert!(
            used.contains("connect") || used.contains("accept4"),
            "{daemon}: {used:?}"
        );
        let unit_of = if daemon == "runner" {
            "storage"
        } else {
            daemon
        };
        let allowed = allowed_syscalls(&read(&unit_path(unit_of)));
        let outside: Vec<&String> = used.difference(&allowed).collect();
        if daemon == "runner" {
            assert!(
                outside.iter().any(|c| *c == "unshare" || *c == "mount"),
                "storage's filter would have let the runner's sandbox through: {outside:?}"
            );
        } else {
            assert!(
                outside.is_empty(),
                "corral {daemon} made calls its unit's SystemCallFilter refuses: {outside:?}"
            );
            let unit = read(&unit_path(daemon));
            check_families_and_memory(daemon, since_corral(&trace), &unit)
                .unwrap_or_else(|refused| panic!("corral {daemon}: {refused}"));
        }
    }
}

/// Whether a trace keeps to the unit's RestrictAddressFamilies= (every
/// `socket()` of a listed family) and MemoryDenyWriteExecute= (no
/// mapping both writable and executable, no mprotect adding execute).
fn check_families_and_memory(daemon: &str, trace: &str, unit: &str) -> Result<(), String> {
    let families: Vec<&str> = directive(unit, "RestrictAddressFamilies")
        .iter()
        .flat_map(|line| line.split_whitespace())
        .collect();
    assert!(!families.is_empty(), "{daemon}: no RestrictAddressFamilies");
    for line in trace.lines() {
        if let Some(rest) = line.split_once("socket(").map(|(_, rest)| rest) {
            let family = rest.split([',', ')']).next().unwrap_or("");
            if !families.contains(&family) {
                return Err(format!("socket of {family}, outside {families:?}: {line}"));
            }
        }
    }
    if directive(unit, "MemoryDenyWriteExecute") == ["yes"] {
        for line in trace.lines() {
            let writable_executable =
                line.contains("PROT_WRITE|PROT_EXEC") || line.contains("PROT_EXEC|PROT_WRITE");
            let mprotect_exec = line.contains("mprotect(") && line.contains("PROT_EXEC");
            if writable_executable || mprotect_exec {
                return Err(format!("memory made executable: {line}"));
            }
        }
    }
    Ok(())
}

#[test]
fn a_trace_outside_the_units_families_or_memory_rules_is_caught() {
    let unit = "RestrictAddressFamilies=AF_INET AF_UNIX\nMemoryDenyWriteExecute=yes\n";
    let fine = "12 socket(AF_INET, SOCK_STREAM, 0) = 3\n\
                12 mmap(NULL, 4096, PROT_READ|PROT_EXEC, MAP_PRIVATE, 3, 0) = 0x7f\n";
    assert_eq!(check_families_and_memory("t", fine, unit), Ok(()));
    for bad in [
        "12 socket(AF_NETLINK, SOCK_RAW, 0) = 3",
        "12 mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE, -1, 0) = 0x7f",
        "12 mprotect(0x7f, 4096, PROT_READ|PROT_EXEC) = 0",
    ] {
        assert!(check_families_and_memory("t", bad, unit).is_err(), "{bad}");
    }
}
