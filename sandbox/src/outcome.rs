//! How a sandboxed command ended, and what it used.

use std::time::Duration;

use serde::Serialize;

use crate::access_report::UndeclaredInputs;
use crate::disk::{Excess, KernelBound};
use crate::report::LandlockState;

/// How the command's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it (SIGKILL at the timeout, or from the OOM killer).
    Signaled(i32),
}

/// What the command used, from its cgroup and from wait4(2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// From the start of setup to the end of the last process.
    pub wall_time: Duration,
    /// CPU time of every process of the action (the cgroup's count when
    /// there is one, else wait4's).
    pub user_time: Duration,
    pub system_time: Duration,
    /// Peak memory of the whole action (cgroup), or the largest resident
    /// set of one process (wait4) when there is no cgroup.
    pub memory_peak_bytes: u64,
    pub page_reclaims: i64,
    pub page_faults: i64,
    pub block_input_operations: i64,
    pub block_output_operations: i64,
    pub voluntary_context_switches: i64,
    pub involuntary_context_switches: i64,
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
}

/// The outcome of one sandboxed command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub exit: Exit,
    /// The timeout ended it.
    pub timed_out: bool,
    /// The OOM killer killed a process of the action.
    pub oom_killed: bool,
    /// It wrote more than `limits.disk_max_bytes` (or made more than
    /// `limits.disk_max_entries`) into its input root and was killed for it.
    pub disk_exceeded: bool,
    /// Which disk limit, when `disk_exceeded`.
    pub disk_excess: Option<Excess>,
    /// What bounded the input root's sum in the kernel, besides the walk.
    pub disk_bound: KernelBound,
    pub usage: Usage,
    /// stdout or stderr passed the policy's cap and was cut there.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// How far landlock was enforced.
    pub landlock: LandlockState,
    /// From the start of setup until the command was about to exec (its
    /// last setup step reported); `None` when setup never got there.
    pub spawn_time: Option<Duration>,
    /// The files the action opened outside its input root, when the policy
    /// asks (`report.undeclared_inputs`).
    pub undeclared_inputs: UndeclaredInputs,
}

impl Outcome {
    /// The exit code a shell would report: the code, or 128 + signal.
    pub fn exit_code(&self) -> i32 {
        match self.exit {
            Exit::Exited(code) => code,
            Exit::Signaled(signal) => 128 + signal,
        }
    }

    /// The signal's name without "SIG" (e.g. "KILL"), if one ended it.
    pub fn signal_name(&self) -> Option<&'static str> {
        match self.exit {
            Exit::Exited(_) => None,
            Exit::Signaled(signal) => Some(signal_name(signal)),
        }
    }
}

/// The name of `signal` without "SIG".
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "HUP",
        libc::SIGINT => "INT",
        libc::SIGQUIT => "QUIT",
        libc::SIGILL => "ILL",
        libc::SIGTRAP => "TRAP",
        libc::SIGABRT => "ABRT",
        libc::SIGBUS => "BUS",
        libc::SIGFPE => "FPE",
        libc::SIGKILL => "KILL",
        libc::SIGUSR1 => "USR1",
        libc::SIGSEGV => "SEGV",
        libc::SIGUSR2 => "USR2",
        libc::SIGPIPE => "PIPE",
        libc::SIGALRM => "ALRM",
        libc::SIGTERM => "TERM",
        libc::SIGXCPU => "XCPU",
        libc::SIGXFSZ => "XFSZ",
        libc::SIGSYS => "SYS",
        _ => "UNKNOWN",
    }
}
