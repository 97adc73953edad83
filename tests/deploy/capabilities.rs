//! The runner unit's capabilities: each needed, all enough, for actions run
//! in the sandbox as the unit runs the runner.

use std::ffi::OsStr;
use std::path::Path;

use super::unit_emulation::{as_unit, unit_capabilities};
use super::*;

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
    let text = corral_e2e::output_text(&output);
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

/// The timeout kills the action: the run ends well before the action's
/// 8 s sleep would (without CAP_KILL it lasts the whole sleep, its output
/// dropped), leaving 5 s for a loaded machine.
const KILLS_AT_TIMEOUT: Case = Case {
    script: "sleep 8; echo survived",
    timeout_s: 1,
    holds: |_, text, took| !text.contains("survived") && took < std::time::Duration::from_secs(6),
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
