//! What the undeclared-input report costs per action: the default policy
//! with `report.undeclared_inputs` on against the same policy with it off,
//! runs interleaved so the machine's noise hits both alike.
//!
//! `cargo bench -p corral-sandbox --bench undeclared_inputs [-- N]` (root).
//! Two actions: `/bin/true` (a bare spawn: the marks and the hand-off
//! with init) and `cat` of 200 host headers (a compile-like action: one
//! event per file read and its path resolved). Prints minimum, median and
//! p95 of each and the differences of the minimums and of the medians;
//! then the median CPU time of the caller's thread and of the action.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_sandbox::{Command, Policy, Sandbox, UndeclaredInputs};

/// Minimum, median and p95: on a shared machine the minimum is the
/// mechanism, the median what a loaded worker sees.
fn stats(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.0), at(0.5), at(0.95))
}

/// CPU time this thread has run, from the scheduler's own count
/// (nanoseconds, unlike the 10 ms ticks of /proc/.../stat).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("schedstat's first field");
    Duration::from_nanos(ns)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 200 regular files under /usr/include, in a stable order.
fn headers() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::from("/usr/include")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => dirs.push(path),
                Ok(m) if m.is_file() => found.push(path),
                _ => {}
            }
        }
    }
    found.truncate(200);
    found
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    if !corral_testkit::is_root() {
        eprintln!("undeclared_inputs bench: needs root (fanotify mount marks, id maps, cgroups)");
        return;
    }
    let headers = headers();
    if headers.len() < 200 {
        eprintln!("undeclared_inputs bench: needs 200 files under /usr/include (libc6-dev)");
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let command = |argv: Vec<OsString>| Command {
        argv,
        env: vec![],
        input_root: root.path().to_owned(),
        working_dir: "".into(),
        stdout: out.path().join("stdout"),
        stderr: out.path().join("stderr"),
        timeout: None,
    };
    let spawn = command(vec!["/bin/true".into()]);
    let mut cat_argv = vec![OsString::from("/bin/cat")];
    cat_argv.extend(headers.iter().map(|h| h.clone().into_os_string()));
    let compile = command(cat_argv);

    let default = Policy::builtin("default")
        .expect("built-in")
        .expect("valid");
    let mut off = default.clone();
    off.report.undeclared_inputs = false;
    let with_report = Sandbox::new(default).expect("sandbox");
    let without = Sandbox::new(off).expect("sandbox");

    println!("undeclared-input report, {n} interleaved runs of each action");
    println!(
        "{:<38} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "action",
        "off min",
        "off med",
        "off p95",
        "on min",
        "on med",
        "on p95",
        "+ms min",
        "+ms med",
        "paths"
    );
    let mut cpu_rows = Vec::new();
    for (label, cmd) in [
        ("/bin/true", &spawn),
        ("cat of 200 /usr/include headers", &compile),
    ] {
        // Warm caches, and check the report sees what it should.
        let warm = with_report.run(cmd).expect("sandboxed run");
        assert_eq!(warm.exit_code(), 0);
        let paths = match &warm.undeclared_inputs {
            UndeclaredInputs::Collected { total, .. } => *total,
            other => panic!("no report: {other:?}"),
        };
        without.run(cmd).expect("sandboxed run");
        let mut on = Vec::with_capacity(n);
        let mut offs = Vec::with_capacity(n);
        // CPU, less hostage to the machine's load than wall time: the
        // caller's (this thread: setup, supervision, the report) and the
        // action's (its cgroup).
        let mut cpu = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        for _ in 0..n {
            for (i, (sandbox, walls)) in [(&without, &mut offs), (&with_report, &mut on)]
                .into_iter()
                .enumerate()
            {
                let (start, caller) = (Instant::now(), thread_cpu());
                let outcome = sandbox.run(cmd).expect("sandboxed run");
                walls.push(start.elapsed());
                cpu[i][0].push(thread_cpu() - caller);
                cpu[i][1].push(outcome.usage.user_time + outcome.usage.system_time);
            }
        }
        let [[caller_off, action_off], [caller_on, action_on]] = cpu.map(|c| c.map(median));
        cpu_rows.push(format!(
            "{:<38} {:>8.3} {:>8.3} {:>+8.3} {:>8.3} {:>8.3} {:>+8.3}",
            label,
            ms(caller_off),
            ms(caller_on),
            ms(caller_on) - ms(caller_off),
            ms(action_off),
            ms(action_on),
            ms(action_on) - ms(action_off),
        ));
        let (off_min, off_median, off_p95) = stats(offs);
        let (on_min, on_median, on_p95) = stats(on);
        println!(
            "{:<38} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>+8.3} {:>+8.3} {:>6}",
            label,
            ms(off_min),
            ms(off_median),
            ms(off_p95),
            ms(on_min),
            ms(on_median),
            ms(on_p95),
            ms(on_min) - ms(off_min),
            ms(on_median) - ms(off_median),
            paths
        );
    }
    println!("CPU medians, ms: the caller's thread, the action's cgroup");
    println!(
        "{:<38} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "action", "call off", "call on", "+ms", "act off", "act on", "+ms"
    );
    for row in cpu_rows {
        println!("{row}");
    }
}
