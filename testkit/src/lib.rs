//! Test support shared by the crates' tests (a dev-dependency only).
//!
//! - [`skip`]: the one way a test says it cannot run here. It prints one
//!   line starting with [`SKIP_MARKER`], which `scripts/summary.awk` counts
//!   as skipped (libtest counts such a test as passed); under CI it fails.
//! - [`privileged`]: the root check of tests that need root.
//! - [`Tmpfs`]: a size-limited file system for full-disk tests.
//! - [`images`]: container images from busybox-static, as OCI layouts,
//!   pushed to a registry.
//!
//! It must never depend on our other crates, tokio or tonic: the sandbox's
//! tests use it too.

#![forbid(unsafe_code)]

pub mod images;

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// How a skip line starts; `scripts/summary.awk` counts these lines.
pub const SKIP_MARKER: &str = "SKIP:";

/// The line [`skip`] prints.
pub fn skip_line(test: &str, why: &str) -> String {
    format!("{SKIP_MARKER} {test}: {why}\n")
}

/// Says why `test` does not run here; the caller then returns. Under CI
/// (`CI` set) a skip is a failure: CI runs as root with every package.
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run under CI: {why}"
    );
    write_skip_line(test, why);
}

fn write_skip_line(test: &str, why: &str) {
    // Straight to fd 2 in one write, past libtest's capture of `eprintln!`:
    // a passing test's captured output is never shown, and the summary must
    // see this line, whole, among other threads' lines.
    let _ = std::io::stderr().write_all(skip_line(test, why).as_bytes());
}

/// True when this process runs as root (its effective uid owns
/// `/proc/self`).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// True when `test`, which needs root (id maps, cgroups, mounts), may run;
/// otherwise skips saying so.
pub fn privileged(test: &str) -> bool {
    let root = is_root();
    if !root {
        skip(test, "needs root");
    }
    root
}

/// A mount point unmounted when dropped.
#[derive(Debug)]
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        // Lazily: a descriptor a child of another test thread briefly holds
        // (inherited until its exec) must not leave the mount behind.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A tmpfs on a fresh directory, unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    // Field order is drop order: unmount, then remove the directory.
    _mounted: Mounted,
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `size` (mount's syntax: "8m"); `None` after a skip line
    /// when not root.
    pub fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        if !is_root() {
            skip(test, "needs root to mount a tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount tmpfs on {}", dir.path().display());
        Some(Tmpfs {
            _mounted: Mounted(dir.path().to_owned()),
            dir,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes the file at `path` and frees its blocks at once: truncated
/// first, then unlinked. An unlinked file keeps its blocks while any
/// process holds it open, and a child that another test thread forks (to
/// run `mount`, say) holds a copy of every descriptor of this process,
/// close-on-exec ones included, until its exec: a test that frees space
/// on a small file system by unlinking alone can find it still full under
/// load.
pub fn remove_freeing_space(path: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|file| file.set_len(0))
        .unwrap_or_else(|err| panic!("truncate {}: {err}", path.display()));
    std::fs::remove_file(path).unwrap_or_else(|err| panic!("remove {}: {err}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scripts/summary.awk`'s line for `log` and the suite's exit `status`.
    fn summary(log: &str, status: i32) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/summary.awk");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log");
        std::fs::write(&file, log).unwrap();
        let out = std::process::Command::new("awk")
            .arg("-v")
            .arg(format!("status={status}"))
            .arg("-f")
            .arg(script)
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    }

    /// In the child of the test below only: prints a skip line as a
    /// passing test, with libtest capturing its output.
    #[test]
    fn child_prints_a_skip_line() {
        if std::env::var_os("CORRAL_TESTKIT_CHILD").is_some() {
            write_skip_line("child", "shown past the capture");
        }
    }

    #[test]
    fn a_skip_line_is_shown_although_libtest_captures_output() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::child_prints_a_skip_line"])
            .env("CORRAL_TESTKIT_CHILD", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains(&skip_line("child", "shown past the capture")),
            "{stderr}"
        );
    }

    const HOST_OK: &str = "   Compiling corral-proto v0.1.0
     Running unittests src/lib.rs (target/debug/deps/corral_proto-1)
test a ... ok
test b ... ok
test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s

     Running tests/it/main.rs (target/debug/deps/it-2)
test c ... ok
test d ... ok
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

   Doc-tests corral_proto
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
";

    #[test]
    fn a_green_suite_counts_passed_and_ignored() {
        assert_eq!(summary(HOST_OK, 0), "6 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn a_run_time_skip_counts_as_skipped_not_passed() {
        let log = HOST_OK.replace(
            "test c ... ok\n",
            &format!("{}test c ... ok\n", skip_line("c", "needs root (cgroups)")),
        );
        assert_eq!(summary(&log, 0), "5 passed, 0 failed, 2 skipped");
    }

    #[test]
    fn a_skip_line_amid_another_threads_output_still_counts() {
        let log = HOST_OK.replace(
            "test d ... ok\n",
            &format!("test d ... {}ok\n", skip_line("c", "why")),
        );
        assert_eq!(summary(&log, 0), "5 passed, 0 failed, 2 skipped");
    }

    const VM_FAILED_GUEST: &str = "vm-tests: building the test binaries
vm-tests: booting 6.1.0-56-amd64 with cgroup v2 (tcg)
corral-vm: running /work/target/debug/deps/it-3
SKIP: v1_only: cgroup v1 layout only
test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\r
corral-vm: running /work/target/debug/deps/it-4
test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s
corral-vm: done, status 1
vm-tests: cgroup v2 FAILED (status 1) after 20s; console:
console| corral-vm: running /work/target/debug/deps/it-4
console| test result: FAILED. 1 passed; 2 failed; 0 ignored
console| SKIP: v1_only: cgroup v1 layout only
";

    #[test]
    fn failures_in_the_guest_count_once() {
        let log = format!("{HOST_OK}{VM_FAILED_GUEST}");
        assert_eq!(summary(&log, 1), "FAILED: 10 passed, 2 failed, 2 skipped");
    }

    #[test]
    fn a_guest_binary_that_never_reports_is_a_named_failure() {
        let log = format!(
            "{HOST_OK}vm-tests: booting k with cgroup v1 (tcg)
corral-vm: running /tmp/clone/target/debug/deps/it-5
/bin/sh: /tmp/clone/target/debug/deps/it-5: not found
corral-vm: done, status 1
vm-tests: cgroup v1 FAILED (status 1) after 9s; console:
"
        );
        assert_eq!(
            summary(&log, 1),
            "FAILED: 6 passed, 1 failed, 1 skipped \
             (guest /tmp/clone/target/debug/deps/it-5 ended without a test result)"
        );
    }

    #[test]
    fn a_guest_that_never_boots_is_a_failure() {
        let log = format!(
            "{HOST_OK}vm-tests: booting k with cgroup v1 (tcg)
vm-tests: cgroup v1 FAILED (status missing) after 900s; console:
"
        );
        assert_eq!(
            summary(&log, 1),
            "FAILED: 6 passed, 1 failed, 1 skipped \
             (vm-tests: cgroup v1 FAILED (status missing) after 900s; console:)"
        );
    }

    #[test]
    fn a_crashed_host_binary_is_a_named_failure() {
        let log = HOST_OK.replace(
            "test c ... ok\ntest d ... ok\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n",
            "error: test failed, to rerun pass `-p corral-proto --test it`\n",
        );
        assert_eq!(
            summary(&log, 101),
            "FAILED: 3 passed, 1 failed, 1 skipped \
             (tests/it/main.rs (target/debug/deps/it-2) ended without a test result)"
        );
    }

    #[test]
    fn a_build_error_or_a_bare_exit_status_says_failed() {
        let log = "error: could not compile `corral-proto` (lib) due to 1 previous error\n";
        assert_eq!(
            summary(log, 101),
            "FAILED: 0 passed, 0 failed, 0 skipped \
             (error: could not compile `corral-proto` (lib) due to 1 previous error)"
        );
        assert_eq!(
            summary(HOST_OK, 1),
            "FAILED: 6 passed, 0 failed, 1 skipped (exit status 1 with no failed test (see above))"
        );
    }

    #[test]
    fn a_whole_suite_skipped_counts_once() {
        let log = format!("{HOST_OK}SKIP: vm-tests: needs root\n");
        assert_eq!(summary(&log, 0), "6 passed, 0 failed, 2 skipped");
    }
}
