//! The sandbox's report of one run, written into the run's server logs
//! directory (`RunRequest.server_logs_directory`, Buildbarn's): the worker
//! uploads each file there to the CAS and names it in
//! `ExecuteResponse.server_logs`, so a user whose action failed learns
//! why — which policy, which limits, what killed it, what it used —
//! without access to the farm's own logs.
//!
//! One human-readable file, [`REPORT_NAME`]: build tools print server logs
//! as text; and, when the policy asks for it, [`UNDECLARED_INPUTS_NAME`]:
//! the files the action opened outside its input root, one per line.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use corral_sandbox::disk::KernelBound;
use corral_sandbox::{Exit, LandlockState, Outcome, Policy, UndeclaredInputs};

/// The report's file name, and its key in `ExecuteResponse.server_logs`.
pub const REPORT_NAME: &str = "sandbox.txt";

/// The undeclared-input report's file name, and its key in
/// `ExecuteResponse.server_logs`.
pub const UNDECLARED_INPUTS_NAME: &str = "undeclared-inputs.txt";

/// What a run's report says.
#[derive(Debug)]
pub struct Report<'a> {
    /// The policy's name (the runner's default when the request named none).
    pub policy_name: &'a str,
    pub policy: &'a Policy,
    /// The timeout the run had, if any.
    pub timeout: Option<Duration>,
    pub outcome: &'a Outcome,
}

impl Report<'_> {
    /// The report as text, one fact per line.
    pub fn text(&self) -> String {
        let mut text = String::new();
        let limits = &self.policy.limits;
        let o = self.outcome;
        // Writing to a String cannot fail.
        let _ = writeln!(text, "policy: {}", self.policy_name);
        let _ = writeln!(
            text,
            "ended: {}",
            ended(o, self.timeout, limits.memory_max_bytes)
        );
        let _ = writeln!(
            text,
            "exit: {}",
            match o.exit {
                Exit::Exited(code) => format!("code {code}"),
                Exit::Signaled(_) => format!(
                    "signal SIG{} (exit code {})",
                    o.signal_name().unwrap_or("?"),
                    o.exit_code()
                ),
            }
        );
        let _ = writeln!(
            text,
            "timeout: {}",
            self.timeout.map_or_else(
                || "none".to_owned(),
                |t| format!("{:.1} s", t.as_secs_f64())
            )
        );
        let _ = writeln!(
            text,
            "landlock: {}",
            match o.landlock {
                LandlockState::FullyEnforced => "fully enforced",
                LandlockState::PartiallyEnforced =>
                    "partially enforced (the rights this kernel knows)",
                LandlockState::NotEnforced => "not enforced (no landlock on this kernel)",
            }
        );
        let _ = writeln!(
            text,
            "network: {}",
            if self.policy.network.allow_host_network {
                "the host's"
            } else {
                "none (loopback only)"
            }
        );
        let _ = writeln!(
            text,
            "limits: memory {}, processes {}, cpu {}, open files {}, file size {}, disk {} in {} entries ({})",
            bytes(limits.memory_max_bytes),
            limits.pids_max,
            if limits.cpu_millis == 0 {
                "unlimited".to_owned()
            } else {
                format!("{:.2} cores", limits.cpu_millis as f64 / 1000.0)
            },
            limits.open_files,
            bytes(limits.file_size_bytes),
            bytes(limits.disk_max_bytes),
            limits.disk_max_entries,
            match o.disk_bound {
                KernelBound::None => "summed by a walk about once a second",
                KernelBound::BtrfsQgroup => "bounded by a btrfs qgroup",
            }
        );
        let u = &o.usage;
        let _ = writeln!(
            text,
            "used: wall {:.3} s, user {:.3} s, system {:.3} s, peak memory {}",
            u.wall_time.as_secs_f64(),
            u.user_time.as_secs_f64(),
            u.system_time.as_secs_f64(),
            bytes(u.memory_peak_bytes)
        );
        match &o.undeclared_inputs {
            UndeclaredInputs::Off => {}
            UndeclaredInputs::Unavailable { reason } => {
                let _ = writeln!(text, "undeclared inputs: unavailable: {reason}");
            }
            UndeclaredInputs::Collected { total, .. } => {
                let _ = writeln!(
                    text,
                    "undeclared inputs: {total} files opened outside the input root \
                     (listed in {UNDECLARED_INPUTS_NAME})"
                );
            }
        }
        for (name, cut) in [
            ("stdout", o.stdout_truncated),
            ("stderr", o.stderr_truncated),
        ] {
            if cut {
                let _ = writeln!(
                    text,
                    "{name}: cut at {} (limits.output_max_bytes)",
                    bytes(limits.output_max_bytes)
                );
            }
        }
        text
    }

    /// Writes the report (and the undeclared-input report, when there is
    /// one) into `directory` (made by the worker, outside the action's
    /// reach). New files, never through a symlink.
    pub fn write(&self, directory: &Path) -> std::io::Result<()> {
        write_new(&directory.join(REPORT_NAME), &self.text())?;
        if let Some(text) = self.outcome.undeclared_inputs.text() {
            write_new(&directory.join(UNDECLARED_INPUTS_NAME), &text)?;
        }
        Ok(())
    }
}

fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// What ended the run, in words.
fn ended(o: &Outcome, timeout: Option<Duration>, memory: u64) -> String {
    if o.timed_out {
        let after =
            timeout.map_or_else(String::new, |t| format!(" after {:.1} s", t.as_secs_f64()));
        format!("killed at its timeout{after}")
    } else if o.oom_killed {
        format!(
            "killed by the out-of-memory killer: it needed more than its memory limit, {}",
            bytes(memory)
        )
    } else if let Some(excess) = &o.disk_excess {
        format!("killed: it {excess}")
    } else {
        match o.exit {
            Exit::Exited(_) => "exited by itself".to_owned(),
            Exit::Signaled(_) => "ended by a signal it did not catch".to_owned(),
        }
    }
}

/// `n` bytes, in the largest binary unit that keeps it readable.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_sandbox::disk::Excess;

    fn outcome(exit: Exit) -> Outcome {
        Outcome {
            exit,
            timed_out: false,
            oom_killed: false,
            disk_exceeded: false,
            disk_excess: None,
            disk_bound: KernelBound::None,
            usage: Default::default(),
            stdout_truncated: false,
            stderr_truncated: false,
            landlock: LandlockState::PartiallyEnforced,
            spawn_time: None,
            undeclared_inputs: UndeclaredInputs::Off,
        }
    }

    fn text(outcome: &Outcome) -> String {
        let policy = Policy::default();
        Report {
            policy_name: "hermetic",
            policy: &policy,
            timeout: Some(Duration::from_secs(10)),
            outcome,
        }
        .text()
    }

    #[test]
    fn the_report_names_the_policy_the_limits_landlock_and_how_it_ended() {
        let text = text(&outcome(Exit::Exited(3)));
        for line in [
            "policy: hermetic\n",
            "ended: exited by itself\n",
            "exit: code 3\n",
            "timeout: 10.0 s\n",
            "landlock: partially enforced",
            "network: none (loopback only)\n",
            "limits: memory 4 GiB, processes 1024",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }

    #[test]
    fn the_report_says_what_killed_the_run() {
        let mut o = outcome(Exit::Signaled(libc::SIGKILL));
        o.timed_out = true;
        assert!(text(&o).contains("ended: killed at its timeout after 10.0 s\n"));
        assert!(text(&o).contains("exit: signal SIGKILL (exit code 137)\n"));
        o.timed_out = false;
        o.oom_killed = true;
        assert!(
            text(&o).contains("out-of-memory killer: it needed more than its memory limit, 4 GiB")
        );
        o.oom_killed = false;
        o.disk_excess = Some(Excess::Bytes { limit: 1 << 20 });
        assert!(text(&o).contains("ended: killed: it wrote more than 1048576 bytes"));
        o.stdout_truncated = true;
        assert!(text(&o).contains("stdout: cut at 64 MiB"));
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(4 << 30), "4 GiB");
    }

    #[test]
    fn the_report_is_a_new_file_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let o = outcome(Exit::Exited(0));
        let policy = Policy::default();
        let report = Report {
            policy_name: "default",
            policy: &policy,
            timeout: None,
            outcome: &o,
        };
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(REPORT_NAME)).unwrap();
        assert!(report.write(dir.path()).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        std::fs::remove_file(dir.path().join(REPORT_NAME)).unwrap();
        report.write(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join(REPORT_NAME)).unwrap();
        assert!(written.starts_with("policy: default\n"), "{written}");
    }

    #[test]
    fn undeclared_inputs_get_their_own_file_and_a_line_in_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = outcome(Exit::Exited(0));
        let policy = Policy::default();
        let report = |o: &Outcome, dir: &Path| {
            Report {
                policy_name: "default",
                policy: &policy,
                timeout: None,
                outcome: o,
            }
            .write(dir)
        };
        report(&o, dir.path()).unwrap();
        assert!(!dir.path().join(UNDECLARED_INPUTS_NAME).exists());
        let dir = tempfile::tempdir().unwrap();
        o.undeclared_inputs = UndeclaredInputs::Collected {
            paths: vec!["/etc/hostname".into(), "/usr/bin/cat".into()],
            total: 2,
            overflowed: false,
        };
        report(&o, dir.path()).unwrap();
        let listed = std::fs::read_to_string(dir.path().join(UNDECLARED_INPUTS_NAME)).unwrap();
        assert_eq!(
            listed,
            "undeclared inputs: 2 files opened outside the input root\n/etc/hostname\n/usr/bin/cat\n"
        );
        let text = std::fs::read_to_string(dir.path().join(REPORT_NAME)).unwrap();
        assert!(text.contains("undeclared inputs: 2 files opened outside the input root (listed in undeclared-inputs.txt)\n"), "{text}");
    }
}
