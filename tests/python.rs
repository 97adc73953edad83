//! A client that is not Bazel against a Corral farm: the small Python
//! REAPI client of tests/python (grpcio), with stubs that grpcio-tools
//! generates here, at test time, from our subset of the REAPI protos.
//!
//! Needs a Python with grpcio and grpcio-tools, named by
//! CORRAL_TEST_PYTHON; scripts/test.sh makes that venv and sets it.
//! Without it the test says why and passes; under CI it is a failure.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use corral_proto::time::unix_now;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_e2e::{test_python, Farm};

/// Where the client finds the farm (host:port).
const ENDPOINT_VARIABLE: &str = "CORRAL_TEST_ENDPOINT";

/// The protos the stubs are generated from, relative to the include
/// directories below. PreconditionFailure and the Buildbarn protos (the
/// worker protocol and the admin calls the tenant tests try) are the ones
/// Corral's own proto crate declares; the rest are the client's subset of
/// REAPI, and the shim that makes the Buildbarn protos import it.
const PROTOS: &[&str] = &[
    "build/bazel/remote/execution/v2/remote_execution_subset.proto",
    "build/bazel/remote/execution/v2/remote_execution.proto",
    "google/longrunning/operations.proto",
    "google/rpc/status.proto",
    "google/rpc/precondition_failure.proto",
    "buildbarn/remoteworker.proto",
    "buildbarn/buildqueuestate.proto",
];

/// Every call the client makes has its own 60 s deadline and the whole
/// suite takes seconds; this only keeps a hang from eating CI's time.
const SUITE_LIMIT: Duration = Duration::from_secs(300);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `command` to its end or until `limit`, killing it then; returns
/// whether it succeeded and what it printed.
fn run(mut command: Command, limit: Duration, scratch: &Path) -> (bool, String) {
    let out = scratch.join("python.out");
    let file = std::fs::File::create(&out).unwrap();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = std::fs::read_to_string(&out).unwrap_or_default();
    if status.is_none() {
        text.push_str(&format!("\n--- killed after {limit:?}\n"));
    }
    (status.is_some_and(|s| s.success()), text)
}

/// Generates the Python stubs into `into` with grpc_tools.protoc, which
/// brings google/protobuf's own protos (Any, Duration).
fn generate_stubs(python: &Path, into: &Path) {
    let protos = manifest_dir().join("python/protos");
    let ours = manifest_dir().join("../proto/protos");
    let mut protoc = Command::new(python);
    protoc
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", protos.display()))
        .arg(format!("-I{}", ours.display()))
        .arg(format!("--python_out={}", into.display()))
        .arg(format!("--grpc_python_out={}", into.display()))
        .args(PROTOS);
    let (ok, text) = run(protoc, Duration::from_secs(60), into);
    assert!(ok, "grpc_tools.protoc failed\n{text}");
}

/// The N of unittest's "Ran N tests".
fn tests_ran(output: &str) -> usize {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs the unittest module `module` of tests/python against `farm`,
/// with the stubs in `stubs` and `env` set; asserts that every test ran
/// and passed, and returns what it printed.
fn run_suite(
    python: &Path,
    farm: &Farm,
    stubs: &Path,
    module: &str,
    env: &[(&str, String)],
) -> String {
    let started = Instant::now();
    let mut unittest = Command::new(python);
    unittest
        .args(["-m", "unittest", "-v", module])
        .current_dir(manifest_dir().join("python"))
        .env("PYTHONPATH", stubs)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env(ENDPOINT_VARIABLE, format!("127.0.0.1:{}", farm.port))
        .envs(env.iter().map(|(k, v)| (k, v)));
    let (ok, output) = run(unittest, SUITE_LIMIT, stubs);
    assert!(
        ok,
        "the Python client's tests failed\n{output}\n{}",
        farm.logs()
    );
    assert!(tests_ran(&output) > 0, "no Python test ran\n{output}");
    assert!(
        !output.contains("skipped="),
        "no Python test may skip\n{output}"
    );
    println!("{output}python client ({module}): {:?}", started.elapsed());
    output
}

#[test]
fn a_python_reapi_client_drives_the_farm() {
    let test = "a_python_reapi_client_drives_the_farm";
    let Some(python) = test_python(test) else {
        return;
    };
    let mut farm = Farm::start();
    let stubs = tempfile::tempdir().unwrap();
    generate_stubs(&python, stubs.path());
    run_suite(&python, &farm, stubs.path(), "test_reapi", &[]);

    // One page has the scheduler's, the worker's, storage's and the runner's metrics, and counts
    // the actions the client ran.
    let page = farm.metrics();
    let ok_actions: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("corral_worker_actions_total{code=\"OK\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no successful action counted\n{page}"));
    assert!(ok_actions >= 5, "{ok_actions} actions\n{page}");
    assert!(
        page.contains("# TYPE corral_scheduler_results_total counter"),
        "{page}"
    );
    assert!(page.contains("corral_worker_file_cache_files "), "{page}");
    // And storage's (the same port serves storage to the client): its
    // calls, and the blobs the client uploaded.
    for (name, kind, _) in corral_storage::metrics::DECLARED {
        assert!(
            page.contains(&format!("# TYPE {name} {kind}\n")),
            "{name}\n{page}"
        );
    }
    assert!(
        page.lines().any(|l| l.starts_with(
            "corral_storage_requests_total{method=\"FindMissingBlobs\",code=\"OK\"} "
        )),
        "{page}"
    );
    let written: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("corral_storage_written_bytes_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(written > 0, "nothing written\n{page}");
    // And the runner child's: every action the worker ran went through it.
    let runs: u64 = page
        .lines()
        .filter_map(|l| l.strip_prefix("corral_runner_runs_total{landlock="))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert!(
        runs >= ok_actions,
        "{runs} runs, {ok_actions} actions\n{page}"
    );
    assert!(
        page.contains("# TYPE corral_runner_spawn_seconds histogram\n"),
        "{page}"
    );

    farm.assert_stops_cleanly();
}

/// Two tenants known by their tokens' `sub`, each on its own instance
/// name; the farm's own worker by its certificate (the grant `corral up
/// --secure` writes for it); and a token holding the worker permission,
/// to forge the farm's worker with.
const TENANT_GRANTS: &str = r#"
[[grant]]
who = ["claim:sub=tenant-a"]
instance_names = ["tenant-a"]
permissions = ["execute", "cas-read", "cas-write", "ac-read", "operations-own"]
sandbox_policies = ["default"]

[[grant]]
who = ["claim:sub=tenant-b"]
instance_names = ["tenant-b"]
permissions = ["execute", "cas-read", "cas-write", "ac-read", "operations-own"]
sandbox_policies = ["default"]

[[grant]]
who = ["cert:cn=corral-up-worker"]
instance_names = ["*"]
permissions = ["worker", "cas-read", "cas-write", "ac-read", "ac-write"]

[[grant]]
who = ["claim:sub=rogue-worker"]
instance_names = ["*"]
permissions = ["worker"]
"#;

/// What `corral up --secure` checks a token's `iss` and `aud` against.
const ISSUER: &str = "corral-up";
const AUDIENCE: &str = "corral";

/// A token for `sub` signed with `secret`, valid from `iat` to `exp`.
fn token(secret: &[u8], sub: &str, aud: &str, iat: u64, exp: u64) -> String {
    let claims = serde_json::json!({
        "sub": sub, "iss": ISSUER, "aud": aud, "iat": iat, "exp": exp,
    });
    corral_auth::token::sign_hs256(secret, &claims).unwrap()
}

/// The `N` of corral up's "worker: N slot(s)" line.
fn worker_slots(logs: &str) -> usize {
    logs.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("worker: ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("corral up did not say how many slots it runs\n{logs}"))
}

#[test]
fn a_python_client_is_held_to_each_tenants_grants() {
    let test = "a_python_client_is_held_to_each_tenants_grants";
    let Some(python) = test_python(test) else {
        return;
    };
    let mut farm = Farm::start_secure(Some(TENANT_GRANTS));
    let stubs = tempfile::tempdir().unwrap();
    generate_stubs(&python, stubs.path());

    let secret = std::fs::read(farm.secure_file("token.key")).unwrap();
    let secret = secret.trim_ascii();
    let now = unix_now();
    let day = 24 * 3600;
    let valid = |sub: &str| token(secret, sub, AUDIENCE, now, now + day);
    // Expired an hour ago: well past the verifier's leeway (30 s).
    let expired = token(secret, "tenant-a", AUDIENCE, now - day, now - 3600);
    let other_audience = token(secret, "tenant-a", "another-farm", now, now + day);
    let other_key = token(&[7u8; 32], "tenant-a", AUDIENCE, now, now + day);

    // A CA the farm does not trust, and a client certificate it signed.
    let other_ca = tempfile::tempdir().unwrap();
    let other = corral_auth::certs::TestPki::named("other CA")
        .write(other_ca.path())
        .unwrap();
    let path = |p: PathBuf| p.display().to_string();
    let env = [
        ("CORRAL_TEST_CA", path(farm.secure_file("ca.crt"))),
        (
            "CORRAL_TEST_CLIENT_CERT",
            path(farm.secure_file("client.crt")),
        ),
        (
            "CORRAL_TEST_CLIENT_KEY",
            path(farm.secure_file("client.key")),
        ),
        ("CORRAL_TEST_OTHER_CA", path(other.ca)),
        ("CORRAL_TEST_OTHER_CA_CERT", path(other.client_certificate)),
        ("CORRAL_TEST_OTHER_CA_KEY", path(other.client_key)),
        ("CORRAL_TEST_TOKEN_TENANT_A", valid("tenant-a")),
        ("CORRAL_TEST_TOKEN_TENANT_B", valid("tenant-b")),
        ("CORRAL_TEST_TOKEN_ROGUE_WORKER", valid("rogue-worker")),
        ("CORRAL_TEST_TOKEN_EXPIRED", expired),
        ("CORRAL_TEST_TOKEN_OTHER_AUDIENCE", other_audience),
        ("CORRAL_TEST_TOKEN_OTHER_KEY", other_key),
        (
            "CORRAL_TEST_WORKER_SLOTS",
            worker_slots(&farm.logs()).to_string(),
        ),
        // gRPC's core logs TLS alerts at ERROR: kept on, whatever the
        // caller's environment says, for the check below.
        ("GRPC_VERBOSITY", "ERROR".to_owned()),
    ];
    let output = run_suite(&python, &farm, stubs.path(), "test_tenants", &env);
    assert!(tests_ran(&output) >= 10, "{output}");
    // The certificate from another CA was refused by the farm, for that
    // reason: its TLS alert reached the client.
    assert!(
        output.contains("TLSV1_ALERT_UNKNOWN_CA"),
        "the farm did not send unknown_ca for the other CA's certificate\n{output}"
    );

    farm.assert_stops_cleanly();
}

#[test]
fn slot_counts_are_read_from_the_banner() {
    assert_eq!(
        worker_slots("corral up: serving\n  worker: 2 slot(s), runner at /x\n"),
        2
    );
}

#[test]
fn unittest_summaries_are_parsed() {
    assert_eq!(tests_ran("...\nRan 9 tests in 3.2s\n\nOK\n"), 9);
    assert_eq!(tests_ran("Ran 1 test in 0.1s"), 1);
    assert_eq!(tests_ran("nothing"), 0);
}
