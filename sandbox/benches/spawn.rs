//! What a sandboxed spawn costs: N runs of /bin/true each way, in one run
//! so the machine's noise hits every method alike.
//!
//! `cargo bench -p corral-sandbox --bench spawn [-- N]` (root; bwrap from
//! the bubblewrap package is measured when installed). Prints median and
//! p95 per spawn and the ratios to plain fork+exec and to bwrap.

use std::ffi::OsString;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use corral_sandbox::{Command, Policy, Sandbox};

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

fn measure(n: usize, mut once: impl FnMut()) -> (Duration, Duration) {
    once(); // warm caches
    let samples = (0..n)
        .map(|_| {
            let start = Instant::now();
            once();
            start.elapsed()
        })
        .collect();
    stats(samples)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    if !corral_testkit::is_root() {
        eprintln!("spawn bench: needs root (the sandbox maps ids and writes cgroups)");
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");

    let mut rows: Vec<(&str, (Duration, Duration))> = Vec::new();
    rows.push((
        "fork+exec /bin/true",
        measure(n, || {
            let status = Process::new("/bin/true").status().expect("spawn /bin/true");
            assert!(status.success());
        }),
    ));

    let bwrap = Process::new("bwrap").arg("--version").output().is_ok();
    if bwrap {
        rows.push((
            "bwrap --unshare-all, ro /usr /etc, /proc, /dev, tmpfs /tmp",
            measure(n, || {
                let status = Process::new("bwrap")
                    .args(["--unshare-all", "--die-with-parent", "--new-session"])
                    .args(["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"])
                    .args([
                        "--symlink",
                        "usr/bin",
                        "/bin",
                        "--symlink",
                        "usr/lib",
                        "/lib",
                    ])
                    .args(["--symlink", "usr/lib64", "/lib64"])
                    .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
                    .arg("--bind")
                    .arg(root.path())
                    .args(["/build", "--chdir", "/build", "/bin/true"])
                    .status()
                    .expect("spawn bwrap");
                assert!(status.success());
            }),
        ));
    } else {
        eprintln!("bwrap not installed (apt-get install bubblewrap): skipping that baseline");
    }

    for name in ["default", "network"] {
        let policy = Policy::builtin(name).expect("built-in").expect("valid");
        let sandbox = Sandbox::new(policy).expect("sandbox");
        let command = Command {
            argv: vec![OsString::from("/bin/true")],
            env: vec![],
            input_root: root.path().to_owned(),
            working_dir: "".into(),
            stdout: out.path().join("stdout"),
            stderr: out.path().join("stderr"),
            timeout: None,
        };
        let label = if name == "default" {
            "corral sandbox, default policy (all namespaces, cgroup, landlock, seccomp)"
        } else {
            "corral sandbox, network policy (host network namespace)"
        };
        rows.push((
            label,
            measure(n, || {
                let outcome = sandbox.run(&command).expect("sandboxed run");
                assert_eq!(outcome.exit_code(), 0);
            }),
        ));
    }

    // A cached container image as the root (issue 19): the same sandbox,
    // the image's entries bound in place of the policy's host paths. The
    // image holds busybox-static only, so the host's busybox-static under
    // the default policy is the like-for-like baseline (same binary, same
    // exec cost), measured in the same loop, alternating.
    let image = tempfile::tempdir().expect("temp dir");
    if corral_testkit::images::busybox_tree(image.path()).is_some() {
        let policy = Policy::builtin("default")
            .expect("built-in")
            .expect("valid");
        let sandbox = Sandbox::new(policy).expect("sandbox");
        let host_ids = sandbox.mapping().default_ids();
        let command = |program: &str, args: &[&str]| Command {
            argv: std::iter::once(program)
                .chain(args.iter().copied())
                .map(OsString::from)
                .collect(),
            env: vec![],
            input_root: root.path().to_owned(),
            working_dir: "".into(),
            stdout: out.path().join("stdout"),
            stderr: out.path().join("stderr"),
            timeout: None,
        };
        let on_host = command(corral_testkit::images::BUSYBOX, &["true"]);
        let in_image = command("/bin/true", &[]);
        let (mut host, mut img) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..=n {
            for (cmd, image_root, samples) in [
                (&on_host, None, &mut host),
                (&in_image, Some(image.path()), &mut img),
            ] {
                let start = Instant::now();
                let outcome = sandbox
                    .run_in_image(cmd, None, host_ids, image_root)
                    .expect("sandboxed run");
                let took = start.elapsed();
                assert_eq!(outcome.exit_code(), 0);
                // The first of each warms caches.
                if i > 0 {
                    samples.push(took);
                }
            }
        }
        rows.push((
            "corral sandbox, default policy, busybox true (host paths, same loop)",
            stats(host),
        ));
        rows.push((
            "corral sandbox, default policy in a cached busybox image, true",
            stats(img),
        ));
    } else {
        eprintln!("busybox-static not installed: skipping the image rows");
    }

    let base = rows[0].1 .0;
    let bwrap_median = bwrap.then(|| rows[1].1 .0);
    println!("spawn cost, {n} runs of /bin/true each");
    println!(
        "{:<78} {:>8} {:>8} {:>9} {:>9}",
        "method", "median", "p95", "x fork", "x bwrap"
    );
    for (label, (median, p95)) in &rows {
        let vs_bwrap = bwrap_median.map_or("-".to_owned(), |b| {
            format!("{:.2}", median.as_secs_f64() / b.as_secs_f64())
        });
        println!(
            "{label:<78} {:>6.2}ms {:>6.2}ms {:>9.2} {:>9}",
            ms(*median),
            ms(*p95),
            median.as_secs_f64() / base.as_secs_f64(),
            vs_bwrap
        );
    }

    // Paid once per policy, not per spawn: compiling the filters, probing
    // the cgroup tree, forking the cgroup watchdog (and reaping it on drop).
    let policy = Policy::builtin("default")
        .expect("built-in")
        .expect("valid");
    let (median, p95) = measure(n.div_ceil(4), || {
        drop(Sandbox::new(policy.clone()).expect("sandbox"));
    });
    println!(
        "{:<78} {:>6.2}ms {:>6.2}ms  (once per policy)",
        "Sandbox::new + drop, default policy (includes the watchdog's fork)",
        ms(median),
        ms(p95)
    );
}
