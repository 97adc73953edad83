//! What the undeclared-input report costs per action: the default policy
//! with `report.undeclared_inputs` on against the same policy with it off,
//! runs interleaved so the machine's noise hits both alike.
//!
//! `cargo bench -p corral-sandbox --bench undeclared_inputs [-- N]` (root).
//! Two actions: `/bin/true` (a bare spawn: the marks and the hand-off
//! with init) and `cat` of 200 host headers (a compile-like action: one
//! event per file read and its path resolved). Prints minimum, median and
//! p95 of each and the differences of the minimums and of the medians.

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
        for _ in 0..n {
            let start = Instant::now();
            without.run(cmd).expect("sandboxed run");
            offs.push(start.elapsed());
            let start = Instant::now();
            with_report.run(cmd).expect("sandboxed run");
            on.push(start.elapsed());
        }
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
}
