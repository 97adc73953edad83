//! What the tests that run Debian's Bazel 4.2.3 (`bazel-bootstrap`)
//! against a farm share: the check that it is installed, a scratch copy
//! of the workspace in tests/bazel, and what makes its gRPC speak TLS.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether `bazel` is installed; if not, `test` says why it skips (a
/// failure under CI).
pub fn available(test: &str) -> bool {
    let found = Command::new("bazel").arg("--version").output().is_ok();
    if !found {
        corral_testkit::skip(
            test,
            "bazel not installed (apt-get install bazel-bootstrap)",
        );
    }
    found
}

/// A scratch copy of tests/bazel: Bazel writes its convenience symlinks
/// into the workspace, which must not land in the source tree.
pub fn scratch_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("bazel"),
        dir.path(),
    );
    dir
}

/// Copies the directory tree `from` to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read a directory") {
        let entry = entry.expect("read a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Debian's Bazel 4.2.3 links a netty built without the JDK's ALPN, so
/// gRPC over TLS fails with "JDK provider does not support ALPN
/// protocol"; netty's OpenSSL provider works, from Debian's
/// libnetty-tcnative-jni, once the library is found under the name netty
/// looks for. The library checks the name it was loaded by, so it is
/// copied (into `dir`), not linked. Returns the startup option that
/// points Bazel's JVM at it.
pub fn tls_startup_option(dir: &Path) -> String {
    let library = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|lib| Path::new(lib).join("jni/libnetty-tcnative.so"))
    .find(|path| path.exists())
    .expect("libnetty-tcnative-jni is installed (scripts/test.sh installs it)");
    let dir: PathBuf = dir.join("tcnative");
    std::fs::create_dir_all(&dir).expect("create the tcnative directory");
    std::fs::copy(library, dir.join("libnetty_tcnative.so")).expect("copy libnetty-tcnative");
    format!("--host_jvm_args=-Djava.library.path={}", dir.display())
}

/// The count before `label` in Bazel's process summary, e.g.
/// "INFO: 18 processes: 8 remote cache hit, 10 internal."
pub fn processes(summary: &str, label: &str) -> usize {
    summary
        .lines()
        .filter(|l| l.contains(" processes: ") || l.contains(" process: "))
        .flat_map(|l| l.split([':', ',']))
        .filter_map(|part| {
            let part = part.trim().trim_end_matches('.');
            part.strip_suffix(label)?.trim().parse::<usize>().ok()
        })
        .sum()
}
