//! The undeclared-input report (`sandbox/src/access_report.rs`): the files
//! an action opened outside its input root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_sandbox::UndeclaredInputs;

use crate::{default_policy, privileged, run_with};

const SCRIPT: &str = "cat /etc/hostname input.txt > /dev/null";

fn paths(report: &UndeclaredInputs) -> &[PathBuf] {
    match report {
        UndeclaredInputs::Collected { paths, .. } => paths,
        other => panic!("expected a collected report, got {other:?}"),
    }
}

#[test]
fn the_report_lists_a_host_file_read_and_not_an_input() {
    if !privileged("the_report_lists_a_host_file_read_and_not_an_input") {
        return;
    }
    let ran = run_with(
        default_policy(),
        &["/bin/sh", "-c", SCRIPT],
        Some(Duration::from_secs(30)),
        |root| std::fs::write(root.join("input.txt"), "declared\n").unwrap(),
    );
    assert_eq!(ran.outcome.exit_code(), 0, "{}", ran.output());
    let listed = paths(&ran.outcome.undeclared_inputs);
    assert!(
        listed.iter().any(|p| p == Path::new("/etc/hostname")),
        "/etc/hostname not in {listed:?}"
    );
    // The shell and cat themselves come from the host too.
    assert!(
        listed.iter().any(|p| p.ends_with("bin/cat")),
        "cat not in {listed:?}"
    );
    for path in listed {
        assert!(
            !path.starts_with("/build") && !path.ends_with("input.txt"),
            "an input (or the input root) is listed: {path:?} in {listed:?}"
        );
        assert!(
            !path.starts_with("/dev") && !path.starts_with("/proc"),
            "{path:?} is listed"
        );
    }
    let mut sorted = listed.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, listed, "the list is sorted, without duplicates");
}

#[test]
fn with_the_switch_off_there_is_no_report() {
    if !privileged("with_the_switch_off_there_is_no_report") {
        return;
    }
    let mut policy = default_policy();
    policy.report.undeclared_inputs = false;
    let ran = run_with(
        policy,
        &["/bin/sh", "-c", SCRIPT],
        Some(Duration::from_secs(30)),
        |root| std::fs::write(root.join("input.txt"), "declared\n").unwrap(),
    );
    assert_eq!(ran.outcome.exit_code(), 0, "{}", ran.output());
    assert_eq!(ran.outcome.undeclared_inputs, UndeclaredInputs::Off);
    assert_eq!(ran.outcome.undeclared_inputs.text(), None);
}

#[test]
fn a_report_holds_its_own_runs_opens_only() {
    if !privileged("a_report_holds_its_own_runs_opens_only") {
        return;
    }
    // One sandbox, as the runner keeps one per policy: its fanotify
    // groups go from run to run, and nothing of one run may reach the next.
    let sandbox = corral_sandbox::Sandbox::new(default_policy()).unwrap();
    let root = crate::input_root();
    let out = tempfile::tempdir().unwrap();
    let run = |script: &str| {
        let command = corral_sandbox::Command {
            argv: ["/bin/sh", "-c", script]
                .iter()
                .map(std::ffi::OsString::from)
                .collect(),
            env: vec![],
            input_root: root.path().to_owned(),
            working_dir: PathBuf::new(),
            stdout: out.path().join("o"),
            stderr: out.path().join("e"),
            timeout: Some(Duration::from_secs(30)),
        };
        let outcome = sandbox.run(&command).unwrap();
        assert_eq!(outcome.exit_code(), 0, "{outcome:?}");
        outcome.undeclared_inputs
    };
    for _ in 0..3 {
        let first = run("cat /etc/hostname > /dev/null");
        assert!(
            paths(&first).contains(&PathBuf::from("/etc/hostname")),
            "{first:?}"
        );
        let second = run("cat /etc/passwd > /dev/null");
        assert!(
            paths(&second).contains(&PathBuf::from("/etc/passwd")),
            "{second:?}"
        );
        assert!(
            !paths(&second).contains(&PathBuf::from("/etc/hostname")),
            "the previous run's open is in this one's report: {second:?}"
        );
    }
}
