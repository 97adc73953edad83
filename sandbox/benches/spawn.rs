//! What a sandboxed spawn costs: N runs of /bin/true each way, in one run
//! so the machine's noise hits every method alike.
//!
//! `cargo bench -p corral-sandbox --bench spawn [-- N]` (root; bwrap from
//! the bubblewrap package is measured when installed). Prints median and
//! p95 per spawn and the ratios to plain fork+exec and to bwrap.
//!
//! The CLI row execs `corral sandbox run -- /bin/true` as a command, like
//! the bwrap row: build it first (`cargo build --release -p corral`), or
//! name another binary with `CORRAL_BIN`.

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
    let sandbox = |name: &str| {
        let policy = Policy::builtin(name).expect("built-in").expect("valid");
        Sandbox::new(policy).expect("sandbox")
    };
    let default = sandbox("default");
    let network = sandbox("network");
    let true_ = command("/bin/true", &[]);
    let image = tempfile::tempdir().expect("temp dir");
    let on_host = command(corral_testkit::images::BUSYBOX, &["true"]);

    // Every method once per round, round after round: load from other
    // work on the machine drifts over a run, and interleaving spreads it
    // over every row alike.
    type Method<'a> = (&'static str, Box<dyn FnMut() + 'a>);
    let mut methods: Vec<Method<'_>> = Vec::new();
    methods.push((
        "fork+exec /bin/true",
        Box::new(|| {
            let status = Process::new("/bin/true").status().expect("spawn /bin/true");
            assert!(status.success());
        }),
    ));

    let bwrap = Process::new("bwrap").arg("--version").output().is_ok();
    if bwrap {
        let root = root.path().to_owned();
        methods.push((
            "bwrap --unshare-all, ro /usr /etc, /proc, /dev, tmpfs /tmp",
            Box::new(move || {
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
                    .arg(&root)
                    .args(["/build", "--chdir", "/build", "/bin/true"])
                    .status()
                    .expect("spawn bwrap");
                assert!(status.success());
            }),
        ));
    } else {
        eprintln!("bwrap not installed (apt-get install bubblewrap): skipping that baseline");
    }

    // The CLI as a command: process start, policy, sandbox preparation
    // (watchdog fork), one run, exit; what a user of bwrap compares.
    let corral = std::env::var_os("CORRAL_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/corral")
        });
    if corral.is_file() {
        methods.push((
            "corral sandbox run -- /bin/true, as a command (default policy)",
            Box::new(move || {
                let status = Process::new(&corral)
                    .args(["sandbox", "run", "--", "/bin/true"])
                    .status()
                    .expect("spawn corral");
                assert!(status.success());
            }),
        ));
    } else {
        eprintln!(
            "{} not built (cargo build --release -p corral): skipping the CLI row",
            corral.display()
        );
    }

    for (label, sandbox) in [
        (
            "corral sandbox, default policy (all namespaces, cgroup, landlock, seccomp)",
            &default,
        ),
        (
            "corral sandbox, network policy (host network namespace)",
            &network,
        ),
    ] {
        let true_ = &true_;
        methods.push((
            label,
            Box::new(move || {
                let outcome = sandbox.run(true_).expect("sandboxed run");
                assert_eq!(outcome.exit_code(), 0);
            }),
        ));
    }

    // A cached container image as the root (issue 19): the same sandbox,
    // the image's entries bound in place of the policy's host paths. The
    // image holds busybox-static only, so the host's busybox-static under
    // the default policy is the like-for-like baseline (same binary, same
    // exec cost).
    if corral_testkit::images::busybox_tree(image.path()).is_some() {
        let host_ids = default.mapping().default_ids();
        for (label, cmd, image_root) in [
            (
                "corral sandbox, default policy, busybox true (host paths)",
                &on_host,
                None,
            ),
            (
                "corral sandbox, default policy in a cached busybox image, true",
                &true_,
                Some(image.path()),
            ),
        ] {
            let default = &default;
            methods.push((
                label,
                Box::new(move || {
                    let outcome = default
                        .run_in_image(cmd, None, host_ids, image_root)
                        .expect("sandboxed run");
                    assert_eq!(outcome.exit_code(), 0);
                }),
            ));
        }
    } else {
        eprintln!("busybox-static not installed: skipping the image rows");
    }

    let mut samples: Vec<Vec<Duration>> = methods.iter().map(|_| Vec::with_capacity(n)).collect();
    let count = methods.len();
    for round in 0..=n {
        // Each round starts one method later: what a method's teardown
        // leaves the kernel to do (a network namespace's cleanup holds
        // locks for milliseconds) falls on every method alike.
        for i in (0..count).map(|i| (i + round) % count) {
            let start = Instant::now();
            (methods[i].1)();
            // The first round warms caches.
            if round > 0 {
                samples[i].push(start.elapsed());
            }
        }
    }
    let mut rows: Vec<(&str, (Duration, Duration))> = methods
        .iter()
        .zip(samples)
        .map(|((label, _), samples)| (*label, stats(samples)))
        .collect();
    drop(methods);

    // Back to back, as a runner's slot runs actions: the pool of network
    // namespaces has only the run itself to make the next one in.
    rows.push((
        "corral sandbox, default policy, back to back (not interleaved)",
        measure(n, || {
            let outcome = default.run(&true_).expect("sandboxed run");
            assert_eq!(outcome.exit_code(), 0);
        }),
    ));

    let base = rows[0].1 .0;
    let bwrap_median = bwrap.then(|| rows[1].1 .0);
    // Other work on the machine skews every row alike, but a loaded
    // machine widens the tails: say how loaded it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "spawn cost, {n} runs of /bin/true each; load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
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
