//! The sandbox runs commands faithfully: arguments, environment, working
//! directory, exit codes, signals, output, many at once.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use corral_sandbox::{Command, Exit, Sandbox};

use crate::{default_policy, input_root, privileged, run_with, sh};

#[test]
fn arguments_and_environment_are_passed_exactly() {
    if !privileged("arguments_and_environment_are_passed_exactly") {
        return;
    }
    let root = input_root();
    let out = tempfile::tempdir().unwrap();
    let command = Command {
        argv: [
            "/bin/sh",
            "-c",
            r#"printf '%s|' "$@"; env | sort"#,
            "zero",
            "a b",
            "",
            "c\"d",
        ]
        .iter()
        .map(OsString::from)
        .collect(),
        env: vec![("ONE".into(), "1".into()), ("SPACED".into(), "x y".into())],
        input_root: root.path().to_owned(),
        working_dir: PathBuf::new(),
        stdout: out.path().join("o"),
        stderr: out.path().join("e"),
        timeout: None,
    };
    let outcome = Sandbox::new(default_policy())
        .unwrap()
        .run(&command)
        .unwrap();
    assert_eq!(outcome.exit, Exit::Exited(0));
    let stdout = std::fs::read_to_string(out.path().join("o")).unwrap();
    let (args, env) = stdout.split_at(stdout.rfind('|').unwrap() + 1);
    assert_eq!(args, "a b||c\"d|");
    // Nothing of the caller's environment leaks in: only what was given,
    // plus what sh itself sets (PWD, SHLVL, _).
    let names: Vec<&str> = env.lines().map(|l| l.split('=').next().unwrap()).collect();
    for name in &names {
        assert!(
            ["ONE", "SPACED", "PWD", "SHLVL", "_"].contains(name),
            "unexpected variable {name} in {env}"
        );
    }
    assert!(
        env.contains("ONE=1\n") && env.contains("SPACED=x y\n"),
        "{env}"
    );
}

#[test]
fn the_working_directory_is_the_input_root_at_a_fixed_path() {
    if !privileged("the_working_directory_is_the_input_root_at_a_fixed_path") {
        return;
    }
    let ran = run_with(
        default_policy(),
        &[
            "/bin/sh",
            "-c",
            "pwd; cat input.txt; echo out > sub/output.txt",
        ],
        None,
        |root| {
            std::fs::write(root.join("input.txt"), "from the host\n").unwrap();
            std::fs::create_dir(root.join("sub")).unwrap();
            std::fs::set_permissions(
                root.join("sub"),
                std::os::unix::fs::PermissionsExt::from_mode(0o777),
            )
            .unwrap();
        },
    );
    assert_eq!(ran.stdout, "/build\nfrom the host\n", "{}", ran.output());
    let written = std::fs::read_to_string(ran.root.path().join("sub/output.txt")).unwrap();
    assert_eq!(written, "out\n");
}

#[test]
fn an_input_root_under_a_directory_closed_to_the_sandbox_is_used() {
    if !privileged("an_input_root_under_a_directory_closed_to_the_sandbox_is_used") {
        return;
    }
    // A data directory under /root (0700) or in `mktemp -d`: the caller
    // can reach the input root, the sandbox's id could not.
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        closed.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let root = closed.path().join("build");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(root.join("input.txt"), "reached\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let command = corral_sandbox::Command {
        argv: ["/bin/sh", "-c", "cat input.txt; echo out > output.txt"]
            .iter()
            .map(std::ffi::OsString::from)
            .collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        input_root: root.clone(),
        working_dir: std::path::PathBuf::new(),
        stdout: out.path().join("stdout"),
        stderr: out.path().join("stderr"),
        timeout: Some(std::time::Duration::from_secs(30)),
    };
    let sandbox = corral_sandbox::Sandbox::new(default_policy()).unwrap();
    let outcome = sandbox.run(&command).expect("the sandbox runs the command");
    let stdout = std::fs::read_to_string(&command.stdout).unwrap_or_default();
    let stderr = std::fs::read_to_string(&command.stderr).unwrap_or_default();
    assert_eq!(stdout, "reached\n", "{outcome:?}\n{stderr}");
    assert_eq!(
        std::fs::read_to_string(root.join("output.txt")).unwrap(),
        "out\n"
    );
}

#[test]
fn a_relative_working_directory_is_entered() {
    if !privileged("a_relative_working_directory_is_entered") {
        return;
    }
    let root = input_root();
    std::fs::create_dir_all(root.path().join("a/b")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let command = Command {
        argv: vec!["/bin/pwd".into()],
        env: vec![],
        input_root: root.path().to_owned(),
        working_dir: "a/b".into(),
        stdout: out.path().join("o"),
        stderr: out.path().join("e"),
        timeout: None,
    };
    Sandbox::new(default_policy())
        .unwrap()
        .run(&command)
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("o")).unwrap(),
        "/build/a/b\n"
    );
}

#[test]
fn exit_codes_and_signals_are_reported() {
    if !privileged("exit_codes_and_signals_are_reported") {
        return;
    }
    assert_eq!(sh("exit 7").outcome.exit, Exit::Exited(7));
    let killed = sh("kill -SEGV $$");
    assert_eq!(killed.outcome.exit, Exit::Signaled(libc::SIGSEGV));
    assert_eq!(killed.outcome.exit_code(), 128 + libc::SIGSEGV);
    assert_eq!(killed.outcome.signal_name(), Some("SEGV"));
}

#[test]
fn stdout_and_stderr_go_to_their_files() {
    if !privileged("stdout_and_stderr_go_to_their_files") {
        return;
    }
    let ran = sh("echo to-out; echo to-err >&2");
    assert_eq!(ran.stdout, "to-out\n");
    assert_eq!(ran.stderr, "to-err\n");
}

#[test]
fn a_program_is_found_on_the_commands_path() {
    if !privileged("a_program_is_found_on_the_commands_path") {
        return;
    }
    let ran = run_with(default_policy(), &["echo", "found"], None, |_| {});
    assert_eq!(ran.stdout, "found\n", "{}", ran.output());
}

#[test]
fn a_missing_program_is_a_setup_error_naming_exec() {
    if !privileged("a_missing_program_is_a_setup_error_naming_exec") {
        return;
    }
    let root = input_root();
    let out = tempfile::tempdir().unwrap();
    let command = Command {
        argv: vec!["/no/such/program".into()],
        env: vec![],
        input_root: root.path().to_owned(),
        working_dir: PathBuf::new(),
        stdout: out.path().join("o"),
        stderr: out.path().join("e"),
        timeout: None,
    };
    let err = Sandbox::new(default_policy())
        .unwrap()
        .run(&command)
        .unwrap_err();
    assert!(err.to_string().contains("executing the command"), "{err}");
}

#[test]
fn many_actions_run_concurrently_without_interference() {
    if !privileged("many_actions_run_concurrently_without_interference") {
        return;
    }
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let ran = run_with(
                    default_policy(),
                    &[
                        "/bin/sh",
                        "-c",
                        &format!(
                            "echo {i} > mine; sleep 0.2; cat mine; ls /proc | grep -c '^[0-9]'"
                        ),
                    ],
                    Some(Duration::from_secs(30)),
                    |_| {},
                );
                (i, ran)
            })
        })
        .collect();
    for handle in handles {
        let (i, ran) = handle.join().unwrap();
        let mut lines = ran.stdout.lines();
        assert_eq!(
            lines.next(),
            Some(i.to_string().as_str()),
            "{}",
            ran.output()
        );
        // Each sees only its own processes: init, sh, ls, grep (and maybe a
        // subshell), never the other actions'.
        let pids: usize = lines.next().unwrap().parse().unwrap();
        assert!(pids <= 5, "action {i} sees {pids} processes");
    }
}

#[test]
fn usage_is_reported() {
    if !privileged("usage_is_reported") {
        return;
    }
    let ran = sh("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done");
    let usage = ran.outcome.usage;
    assert!(
        usage.user_time + usage.system_time > Duration::from_millis(10),
        "{usage:?}"
    );
    assert!(usage.memory_peak_bytes > 0, "{usage:?}");
    assert!(usage.wall_time >= usage.user_time / 2, "{usage:?}");
    // The command started before it ended: spawn time is part of the
    // wall time, and well under the loop's.
    let spawned = ran.outcome.spawn_time.expect("the command was spawned");
    assert!(spawned < usage.wall_time, "{spawned:?} {usage:?}");
}

/// A command in a fresh input root that writes `marker` after `delay`
/// seconds, and the directory its outputs go to.
fn delayed_marker(delay: u32) -> (Command, tempfile::TempDir, tempfile::TempDir) {
    let root = input_root();
    let out = tempfile::tempdir().unwrap();
    let command = Command {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("sleep {delay}; echo late > marker").into(),
        ],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        input_root: root.path().to_owned(),
        working_dir: PathBuf::new(),
        stdout: out.path().join("o"),
        stderr: out.path().join("e"),
        timeout: Some(Duration::from_secs(60)),
    };
    (command, root, out)
}

#[test]
fn a_cancelled_run_is_killed_at_once() {
    if !privileged("a_cancelled_run_is_killed_at_once") {
        return;
    }
    let (command, root, _out) = delayed_marker(3);
    let sandbox = Sandbox::new(default_policy()).unwrap();
    let cancel = corral_sandbox::Cancellation::new().unwrap();
    let canceller = cancel.clone();
    let started = std::time::Instant::now();
    let result = std::thread::scope(|scope| {
        scope.spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            canceller.cancel();
        });
        sandbox.run_cancellable(&command, Some(&cancel))
    });
    let took = started.elapsed();
    assert!(
        matches!(result, Err(corral_sandbox::Error::Cancelled)),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(3), "cancelling took {took:?}");
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !root.path().join("marker").exists(),
        "the command lived on after its run was cancelled"
    );
    // Cancelled before it starts: nothing runs.
    assert!(matches!(
        sandbox.run_cancellable(&command, Some(&cancel)),
        Err(corral_sandbox::Error::Cancelled)
    ));
}

#[test]
fn a_short_run_ends_while_a_long_one_started_beside_it_goes_on() {
    if !privileged("a_short_run_ends_while_a_long_one_started_beside_it_goes_on") {
        return;
    }
    // Runs forked at the same moment inherit each other's pipes; the
    // short one must not wait for the long one to let go of them.
    let sandbox = Sandbox::new(default_policy()).unwrap();
    for _ in 0..3 {
        let (long, _long_root, _long_out) = delayed_marker(2);
        let (mut short, _short_root, _short_out) = delayed_marker(0);
        short.argv = vec!["/bin/true".into()];
        let short_took = std::thread::scope(|scope| {
            scope.spawn(|| sandbox.run(&long).unwrap());
            let started = std::time::Instant::now();
            sandbox.run(&short).unwrap();
            started.elapsed()
        });
        assert!(
            short_took < Duration::from_millis(1500),
            "the short run waited {short_took:?}, for the long one"
        );
    }
}
