//! A client that is not Bazel against a Corral farm: the small Python
//! REAPI client of tests/python (grpcio), with stubs that grpcio-tools
//! generates here, at test time, from our subset of the REAPI protos.
//!
//! Needs a Python with grpcio and grpcio-tools, named by
//! CORRAL_TEST_PYTHON; scripts/test.sh makes that venv and sets it.
//! Without it the test says why and passes; under CI it is a failure.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_e2e::Farm;

/// The Python to run the client with: a venv's, with grpcio and
/// grpcio-tools installed (tests/python/requirements.txt).
const PYTHON_VARIABLE: &str = "CORRAL_TEST_PYTHON";

/// Where the client finds the farm (host:port).
const ENDPOINT_VARIABLE: &str = "CORRAL_TEST_ENDPOINT";

/// The protos the stubs are generated from, relative to the include
/// directories below. PreconditionFailure is the one Corral's own proto
/// crate declares; the rest are the client's subset of REAPI.
const PROTOS: &[&str] = &[
    "build/bazel/remote/execution/v2/remote_execution_subset.proto",
    "google/longrunning/operations.proto",
    "google/rpc/status.proto",
    "google/rpc/precondition_failure.proto",
];

/// Every call the client makes has its own 60 s deadline and the whole
/// suite takes seconds; this only keeps a hang from eating CI's time.
const SUITE_LIMIT: Duration = Duration::from_secs(300);

fn python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os(PYTHON_VARIABLE).map(PathBuf::from);
    if python.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: CI must set {PYTHON_VARIABLE} (scripts/test.sh does)"
        );
        eprintln!(
            "skipped {test}: {PYTHON_VARIABLE} is not set (scripts/test.sh makes the venv and sets it)"
        );
    }
    python
}

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

#[test]
fn a_python_reapi_client_drives_the_farm() {
    let test = "a_python_reapi_client_drives_the_farm";
    let Some(python) = python(test) else {
        return;
    };
    let mut farm = Farm::start();
    let stubs = tempfile::tempdir().unwrap();
    generate_stubs(&python, stubs.path());

    let started = Instant::now();
    let mut unittest = Command::new(&python);
    unittest
        .args(["-m", "unittest", "-v", "test_reapi"])
        .current_dir(manifest_dir().join("python"))
        .env("PYTHONPATH", stubs.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env(ENDPOINT_VARIABLE, format!("127.0.0.1:{}", farm.port));
    let (ok, output) = run(unittest, SUITE_LIMIT, stubs.path());
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
    println!("{output}python client: {:?}", started.elapsed());

    // One page has the scheduler's and the worker's metrics, and counts
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

    assert!(farm.stop().success(), "corral up did not exit cleanly");
    let leftovers = farm.leftover_processes();
    assert!(
        leftovers.is_empty(),
        "processes outlived corral up: {leftovers:?}"
    );
}

#[test]
fn unittest_summaries_are_parsed() {
    assert_eq!(tests_ran("...\nRan 9 tests in 3.2s\n\nOK\n"), 9);
    assert_eq!(tests_ran("Ran 1 test in 0.1s"), 1);
    assert_eq!(tests_ran("nothing"), 0);
}
