//! Crafted input: `RunRequest`s as a broken or hostile worker may send
//! them. Paths with `..`, absolute, empty or holding a NUL; arguments and
//! environments with NULs, `=` in names, or strings longer than the kernel
//! takes; unknown policies. [`RunnerService::checked`], which `run` calls
//! before it leases ids, hands anything over or starts a sandbox, either
//! accepts a command whose every path lies strictly inside the build
//! directory and whose fields the sandbox will not refuse, or refuses
//! with INVALID_ARGUMENT and a message. Nothing is run.
//!
//! CI runs [`CASES`] cases; `PROPTEST_CASES=100000 cargo test -p
//! corral-runner --lib crafted` runs a longer search (docs/spec.md,
//! "Crafted input").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use corral_proto::runner::RunRequest;
use corral_sandbox::Mapping;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

use super::{status, RunnerService};
use crate::action_ids::ActionIds;
use crate::policies::Policies;

/// Cases per property in CI, unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 512;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig {
        // A failure is kept as a named regression test, not a seed file.
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "1/root", "1/stdout", "1/stderr", "", ".", "..", "./", "/", "/etc", "/build/1/root",
            "a/../../b", "1/root/..", "1/./root", "1//root", "1/root\0", "a\0b", "missing",
        ])
        .prop_map(str::to_owned),
        1 => "[./a-z\0]{0,12}",
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec!["/bin/true", "true", "", "-c", "a=b", "PATH", "x\0y"])
            .prop_map(str::to_owned),
        2 => ".{0,20}",
        // MAX_ARG_STRLEN is 131,072 bytes with the NUL.
        1 => prop::sample::select(vec![131_071usize, 131_072, 200_000]).prop_map(|n| "a".repeat(n)),
    ]
}

fn request() -> impl Strategy<Value = RunRequest> {
    (
        prop::collection::vec(string(), 0..6),
        prop_oneof![
            4 => prop::collection::btree_map(string(), string(), 0..3),
            1 => prop::collection::vec(Just(("V".to_owned(), "v".to_owned())), 0..5000)
                .prop_map(|v| v.into_iter().enumerate().map(|(i, (k, v))| (format!("{k}{i}"), v)).collect()),
        ],
        path(),
        path(),
        path(),
        path(),
        prop_oneof![
            3 => prop::sample::select(vec!["", "default", "hermetic", "network"]).prop_map(str::to_owned),
            1 => ".{0,10}",
        ],
    )
        .prop_map(
            |(arguments, environment_variables, working, input_root, stdout, stderr, policy)| {
                RunRequest {
                    arguments,
                    environment_variables: environment_variables.into_iter().collect::<BTreeMap<_, _>>(),
                    working_directory: working,
                    input_root_directory: input_root,
                    stdout_path: stdout,
                    stderr_path: stderr,
                    corral_policy: policy,
                    ..Default::default()
                }
            },
        )
}

/// A build directory with one action's input root, and the service.
fn service() -> (tempfile::TempDir, RunnerService) {
    let build = tempfile::tempdir().expect("a build directory");
    std::fs::create_dir_all(build.path().join("1/root")).expect("an input root");
    let policies = Policies::load(None, "default").expect("the built-in policies");
    let mapping = Mapping::detect();
    let ids = ActionIds::new(&mapping, crate::config::ActionIdsConfig::default().range());
    let service = RunnerService::new(build.path().to_owned(), policies, mapping, ids);
    (build, service)
}

/// Strictly below `dir`, with no NUL and nothing that climbs.
fn strictly_inside(dir: &Path, path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    path.starts_with(dir)
        && path != dir
        && !path.as_os_str().as_bytes().contains(&0)
        && path
            .strip_prefix(dir)
            .is_ok_and(corral_sandbox::command::stays_inside)
}

#[test]
fn a_run_request_is_refused_before_anything_runs_or_lies_inside_the_build_directory() {
    // One service for every case: loading the policies costs more than a
    // case.
    let (build, service) = service();
    let dir: PathBuf = build.path().to_owned();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&request(), |req| {
        match service.checked(&req, None) {
            Ok((_sandbox, command, _image)) => {
                for path in [&command.input_root, &command.stdout, &command.stderr] {
                    prop_assert!(
                        strictly_inside(&dir, path),
                        "{} outside {}",
                        path.display(),
                        dir.display()
                    );
                }
                prop_assert!(command.validate_fields().is_ok());
                prop_assert!(!command.argv.is_empty());
                // What execve takes: MAX_ARG_STRLEN with the NUL.
                let strings = command.env.iter().map(|(k, v)| k.len() + 1 + v.len());
                for bytes in command.argv.iter().map(|a| a.len()).chain(strings) {
                    prop_assert!(bytes < 131_072, "a string of {} bytes", bytes);
                }
            }
            Err(err) => {
                let status = status(&err);
                prop_assert_eq!(
                    status.code(),
                    tonic::Code::InvalidArgument,
                    "{}",
                    status.message()
                );
                prop_assert!(!status.message().is_empty());
            }
        }
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// A missing input root is not the request's fault but the farm's (the
/// worker's build directory is not the runner's): `checked` leaves it to
/// the run, which fails as INTERNAL, so the action is tried again.
#[test]
fn a_missing_input_root_is_not_refused_as_the_requests_fault() {
    let (_build, service) = service();
    let req = RunRequest {
        arguments: vec!["/bin/true".to_owned()],
        input_root_directory: "missing/root".to_owned(),
        stdout_path: "1/stdout".to_owned(),
        stderr_path: "1/stderr".to_owned(),
        ..Default::default()
    };
    assert!(service.checked(&req, None).is_ok());
}
