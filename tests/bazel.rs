//! Real Bazel against a Corral farm: Debian's Bazel 4.2.3, offline, on
//! the small C++ workspace in tests/bazel.
//!
//! Needs `bazel` (the bazel-bootstrap package, which scripts/test.sh
//! installs as root). Without it the test says why and passes; under CI
//! a missing Bazel is a failure.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use corral_e2e::bazel::{self, processes};
use corral_e2e::Farm;

/// Bazel in a scratch copy of tests/bazel with its own output root, run
/// with `--batch`; both directories go when it is dropped.
struct Bazel {
    workspace: tempfile::TempDir,
    output_root: tempfile::TempDir,
    /// Startup options before the command (`--host_jvm_args=…`).
    startup: Vec<String>,
}

impl Bazel {
    fn scratch() -> Bazel {
        Bazel {
            workspace: bazel::scratch_workspace(),
            output_root: tempfile::tempdir().unwrap(),
            startup: Vec::new(),
        }
    }

    /// A Bazel that can speak TLS to a gRPC server
    /// ([`bazel::tls_startup_option`]).
    fn scratch_with_tls() -> Bazel {
        let mut bazel = Bazel::scratch();
        let option = bazel::tls_startup_option(bazel.output_root.path());
        bazel.startup.push(option);
        bazel
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("bazel")
            .arg("--batch")
            .arg(format!(
                "--output_user_root={}",
                self.output_root.path().display()
            ))
            .args(&self.startup)
            .args(args)
            // The system bazelrc turns on --sandbox_debug; offline, any
            // download must fail at once instead of hanging.
            .args([
                "--nosandbox_debug",
                "--experimental_repository_disable_download",
            ])
            .current_dir(self.workspace.path())
            .output()
            .unwrap();
        let text = corral_e2e::output_text(&out);
        (out.status.success(), text)
    }

    /// `command` (build, test) of `targets` executed on `farm` only: a
    /// spawn that cannot run remotely fails the build. FARM_PORT is the
    /// farm's port, for the probes.
    fn remote(&self, farm: &Farm, command: &str, targets: &[&str]) -> (bool, String) {
        self.remote_with(farm, command, &[], targets)
    }

    /// [`remote`](Self::remote) with more flags (credentials).
    fn remote_with(
        &self,
        farm: &Farm,
        command: &str,
        flags: &[String],
        targets: &[&str],
    ) -> (bool, String) {
        let executor = format!("--remote_executor={}", farm.grpc_url());
        let port = format!("--define=FARM_PORT={}", farm.port);
        let mut args = vec![
            command,
            &executor,
            "--spawn_strategy=remote",
            "--remote_local_fallback=false",
            &port,
        ];
        args.extend(flags.iter().map(String::as_str));
        args.extend(targets);
        self.run(&args)
    }
}

#[test]
fn bazel_uses_the_farm_as_a_remote_cache() {
    if !bazel::available("bazel_uses_the_farm_as_a_remote_cache") {
        return;
    }
    let mut farm = Farm::start();
    let bazel = Bazel::scratch();
    let cache = format!("--remote_cache={}", farm.grpc_url());

    let (ok, first) = bazel.run(&["build", &cache, "//..."]);
    assert!(ok, "first build failed\n{first}\n{}", farm.logs());
    assert_eq!(processes(&first, "remote cache hit"), 0, "{first}");

    let (ok, text) = bazel.run(&["clean"]);
    assert!(ok, "{text}");
    let (ok, second) = bazel.run(&["build", &cache, "//..."]);
    assert!(ok, "second build failed\n{second}\n{}", farm.logs());
    // Every compile, link and the genrule comes back from Corral's cache.
    assert!(
        processes(&second, "remote cache hit") >= 6,
        "expected remote cache hits\n{second}"
    );
    assert_eq!(
        processes(&second, "linux-sandbox"),
        0,
        "nothing ran locally\n{second}"
    );

    let (ok, test) = bazel.run(&["test", &cache, "//:greet_test"]);
    assert!(ok, "bazel test failed\n{test}");
    farm.assert_stops_cleanly();
}

#[test]
fn bazel_executes_remotely_on_the_farm() {
    if !bazel::available("bazel_executes_remotely_on_the_farm") {
        return;
    }
    let mut farm = Farm::start();
    let bazel = Bazel::scratch();
    let (ok, first) = bazel.remote(&farm, "build", &["//..."]);
    assert!(ok, "remote build failed\n{first}\n{}", farm.logs());
    // Two compiles, an archive, two links (the binary and the test) and
    // the genrule, at least: all of them ran on the farm.
    assert!(
        processes(&first, "remote") >= 6,
        "expected remote executions\n{first}"
    );
    assert_eq!(processes(&first, "remote cache hit"), 0, "{first}");
    let hello = Command::new(bazel.workspace.path().join("bazel-bin/hello"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout).trim(),
        "hello corral",
        "the remotely linked binary runs here"
    );

    let (ok, text) = bazel.run(&["clean"]);
    assert!(ok, "{text}");
    let (ok, second) = bazel.remote(&farm, "build", &["//..."]);
    assert!(ok, "second remote build failed\n{second}\n{}", farm.logs());
    assert!(
        processes(&second, "remote cache hit") >= 6,
        "a clean rebuild is served from the Action Cache\n{second}"
    );
    assert_eq!(
        processes(&second, "remote"),
        0,
        "nothing executes again\n{second}"
    );

    let (ok, test) = bazel.remote(&farm, "test", &["//:greet_test"]);
    assert!(ok, "remote bazel test failed\n{test}\n{}", farm.logs());
    assert!(test.contains("PASSED"), "{test}");

    // The control genrule runs; the probes, the same shell, do not get
    // what they try for.
    let (ok, control) = bazel.remote(&farm, "build", &["//probes:control"]);
    assert!(ok, "the control genrule failed\n{control}\n{}", farm.logs());
    assert_eq!(processes(&control, "remote"), 1, "{control}");
    let (ok, shadow) = bazel.remote(&farm, "build", &["//probes:read_shadow"]);
    assert!(!ok, "an action read /etc/shadow\n{shadow}");
    assert!(
        shadow.contains("/etc/shadow: Permission denied")
            || shadow.contains("/etc/shadow: No such file"),
        "the read failed for another reason than the sandbox\n{shadow}"
    );
    let (ok, network) = bazel.remote(&farm, "build", &["//probes:reach_host"]);
    assert!(!ok, "an action reached the host's loopback\n{network}");
    assert!(
        network.contains("Connection refused") || network.contains("Network is unreachable"),
        "the connection failed for another reason than the sandbox\n{network}"
    );

    farm.assert_stops_cleanly();
}

#[test]
fn an_unprivileged_farm_executes_remotely_and_says_what_it_cannot_enforce() {
    let test = "an_unprivileged_farm_executes_remotely_and_says_what_it_cannot_enforce";
    if !bazel::available(test) {
        return;
    }
    if !corral_testkit::is_root() {
        corral_testkit::skip(test, "needs root to start the farm as nobody");
        return;
    }
    let mut farm = Farm::start_unprivileged();
    assert!(
        farm.logs().contains("not running as root"),
        "the runner says what it cannot protect\n{}",
        farm.logs()
    );
    let bazel = Bazel::scratch();
    let (ok, build) = bazel.remote(&farm, "build", &["//:hello"]);
    assert!(ok, "remote build failed\n{build}\n{}", farm.logs());
    assert!(processes(&build, "remote") >= 3, "{build}");
    let (ok, shadow) = bazel.remote(&farm, "build", &["//probes:read_shadow"]);
    assert!(!ok, "an action read /etc/shadow\n{shadow}");
    assert!(
        shadow.contains("/etc/shadow: Permission denied"),
        "the read failed for another reason than the sandbox\n{shadow}"
    );
    farm.assert_stops_cleanly();
}

#[test]
fn the_process_summary_is_parsed() {
    let line = "INFO: 18 processes: 8 remote cache hit, 10 internal.";
    assert_eq!(processes(line, "remote cache hit"), 8);
    assert_eq!(processes(line, "internal"), 10);
    assert_eq!(processes(line, "remote"), 0);
    assert_eq!(processes("INFO: 1 process: 1 remote.", "remote"), 1);
}

#[test]
fn bazel_builds_over_tls_with_the_certificate_or_the_token_and_not_without() {
    if !bazel::available("bazel_builds_over_tls_with_the_certificate_or_the_token_and_not_without")
    {
        return;
    }
    let mut farm = Farm::start_secure(None);
    let bazel = Bazel::scratch_with_tls();
    let ca = format!("--tls_certificate={}", farm.secure_file("ca.crt").display());
    let certificate = [
        ca.clone(),
        format!(
            "--tls_client_certificate={}",
            farm.secure_file("client.crt").display()
        ),
        format!(
            "--tls_client_key={}",
            farm.secure_file("client.key").display()
        ),
    ];
    let (ok, first) = bazel.remote_with(&farm, "build", &certificate, &["//..."]);
    assert!(ok, "build over mTLS failed\n{first}\n{}", farm.logs());
    assert!(
        processes(&first, "remote") >= 6,
        "expected remote executions\n{first}"
    );

    // The token alone (no client certificate), executing again.
    let token = std::fs::read_to_string(farm.secure_file("token")).unwrap();
    let bearer = [
        ca.clone(),
        format!("--remote_header=Authorization=Bearer {}", token.trim()),
        "--noremote_accept_cached".to_owned(),
    ];
    let (ok, test) = bazel.remote_with(&farm, "test", &bearer, &["//:greet_test"]);
    assert!(
        ok,
        "bazel test with the token failed\n{test}\n{}",
        farm.logs()
    );
    assert!(processes(&test, "remote") >= 1, "{test}");

    // Neither: the farm refuses before anything runs, and says why.
    let (ok, text) = bazel.run(&["clean"]);
    assert!(ok, "{text}");
    let (ok, refused) = bazel.remote_with(&farm, "build", &[ca], &["//:hello"]);
    assert!(!ok, "a build without credentials succeeded\n{refused}");
    assert!(
        refused.contains("UNAUTHENTICATED"),
        "Bazel shows UNAUTHENTICATED\n{refused}"
    );
    farm.assert_stops_cleanly();
}
