//! Credential helpers against a real registry: Debian's docker-registry
//! on loopback with htpasswd authentication (Basic), the busybox test
//! image pushed to it with the login, and a fake `docker-credential-test`
//! on a PATH this test sets, named by config.json's `credHelpers`. The
//! test runs itself again as a child process with that PATH (the
//! worker's helpers come from its PATH, and a test may not change its
//! own process's environment).

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use corral_image::{Blame, Config, ImageStore};
use corral_testkit::images::{busybox_tree, oci_layout, push_layout_as, Registry, REGISTRY};

/// A helper script at `<dir>/docker-credential-<name>` that keeps the
/// address it was given in `<dir>/<name>.asked` and answers `answer`.
fn helper(dir: &Path, name: &str, answer: &str) {
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\ncat > {}\necho '{answer}'\n",
            dir.join(format!("{name}.asked")).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn basic(login: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(login)
}

/// Set in the child run: the directory of the fake helpers, which its
/// PATH starts with.
const HELPERS: &str = "CORRAL_TEST_CREDENTIAL_HELPERS";

#[test]
fn a_credential_helper_logs_the_worker_in_to_a_registry_that_wants_a_login() {
    let test = "a_credential_helper_logs_the_worker_in_to_a_registry_that_wants_a_login";
    if let Some(bin) = std::env::var_os(HELPERS) {
        return with_helpers_on_path(Path::new(&bin));
    }
    if !Path::new(REGISTRY).exists() {
        corral_testkit::skip(test, "docker-registry is not installed");
        return;
    }
    if !Path::new(corral_testkit::images::BUSYBOX).exists() {
        corral_testkit::skip(test, "busybox-static is not installed");
        return;
    }
    let bin = tempfile::tempdir().unwrap();
    helper(
        bin.path(),
        "test",
        r#"{"Username": "farm", "Secret": "s3cret"}"#,
    );
    helper(
        bin.path(),
        "wrong",
        r#"{"Username": "farm", "Secret": "not-it"}"#,
    );
    let path = std::env::var("PATH").unwrap_or_default();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env("PATH", format!("{}:{path}", bin.path().display()))
        .env(HELPERS, bin.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the run with the helpers on PATH: {status}"
    );
}

fn with_helpers_on_path(bin: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("tree");
    busybox_tree(&tree).expect("busybox-static");
    let layout = scratch.path().join("layout");
    let manifest = oci_layout(&tree, &layout, "1");
    let registry = Registry::start_with_login("farm", "s3cret");
    let addr = registry.addr.to_string();
    push_layout_as(
        registry.addr,
        Some(&format!("Basic {}", basic("farm:s3cret"))),
        &layout,
        "corral/busybox",
        "1",
    );

    let config = |name: &str, json: String| {
        let file = scratch.path().join(name);
        std::fs::write(&file, json).unwrap();
        Config {
            credentials_file: Some(file),
            ..Config::default()
        }
    };
    // The file's own login for the registry is wrong: the helper wins.
    let with_helper = config(
        "helper.json",
        format!(
            r#"{{"auths": {{"{addr}": {{"auth": "{}"}}}}, "credsStore": "wrong",
                "credHelpers": {{"{addr}": "test"}}}}"#,
            basic("farm:stale")
        ),
    );
    let wrong = config("wrong.json", r#"{"credsStore": "wrong"}"#.to_owned());
    let absent = config(
        "absent.json",
        format!(r#"{{"credHelpers": {{"{addr}": "absent"}}}}"#),
    );
    let image = format!("docker://{addr}/corral/busybox:1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = ImageStore::open(scratch.path().join("images-1"), &with_helper).unwrap();
        let pulled = store.get(&image).await.unwrap();
        assert_eq!(pulled.digest.to_string(), manifest);
        assert!(pulled.root().join("etc/only-in-image").exists());
        // Asked with the registry's host on stdin, once for the pull.
        assert_eq!(
            std::fs::read_to_string(bin.join("test.asked")).unwrap(),
            addr
        );
        assert!(!bin.join("wrong.asked").exists(), "credHelpers wins");

        // The helper's login is the one sent: a wrong one is refused.
        let store = ImageStore::open(scratch.path().join("images-2"), &wrong).unwrap();
        let err = store.get(&image).await.unwrap_err();
        let text = format!("{err}: {}", err.error);
        assert!(
            text.contains("registry refused") && text.contains("401"),
            "{text}"
        );
        assert_eq!(err.error.blame(), Blame::Image);

        // A helper that is not on PATH: FAILED_PRECONDITION's blame,
        // naming the helper and the registry.
        let store = ImageStore::open(scratch.path().join("images-3"), &absent).unwrap();
        let err = store.get(&image).await.unwrap_err();
        let text = err.error.to_string();
        assert!(
            text.contains("docker-credential-absent")
                && text.contains(&addr)
                && text.contains("not found on the worker's PATH"),
            "{text}"
        );
        assert_eq!(err.error.blame(), Blame::Image);
    });
}
