//! Actions in container images through a whole farm (issue 19 item 3):
//! Debian's `docker-registry` on loopback, a busybox-static image built
//! here (an OCI layout of two gzip layers, made with tar) and pushed to
//! it, and `corral up` running actions that name
//! `container-image=docker://127.0.0.1:PORT/corral/busybox:1`: they see
//! the image, not the host, and the escape probes fail inside it too,
//! a setuid-root binary included.

// Test code: a failed setup step should stop the test loudly.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use corral_e2e::reapi::{Client, NewAction};
use corral_e2e::Farm;
use corral_proto::reapi::ExecuteResponse;
use corral_testkit::images::{
    busybox_tree, oci_layout, push_layout, Registry, IMAGE_ONLY, REGISTRY,
};

/// Runs `script` with busybox's sh in `image` (an empty input root, the
/// result never cached); the response and its stdout.
async fn run(client: &Client, image: &str, script: &str) -> (ExecuteResponse, String) {
    let action = NewAction::sh(script)
        .env("PATH", "/bin")
        .property("container-image", image);
    let action = client.upload_action(&action).await;
    let response = tokio::time::timeout(Duration::from_secs(120), client.run(&action))
        .await
        .expect("the action ends");
    let stdout = client.stdout(&response).await;
    (response, stdout)
}

/// The registry, the pushed image's `docker://` value and the farm; `None`
/// (said why) without root, docker-registry or busybox-static.
fn setup(test: &str) -> Option<(Registry, String, String, Farm, tempfile::TempDir)> {
    if !corral_testkit::privileged(test) {
        return None;
    }
    if !Path::new(REGISTRY).exists() {
        corral_testkit::skip(test, "docker-registry is not installed");
        return None;
    }
    let scratch = tempfile::tempdir().unwrap();
    if busybox_tree(&scratch.path().join("tree")).is_none() {
        corral_testkit::skip(test, "busybox-static is not installed");
        return None;
    }
    let layout = scratch.path().join("layout");
    let manifest = oci_layout(&scratch.path().join("tree"), &layout, "1");
    let registry = Registry::start();
    push_layout(registry.addr, &layout, "corral/busybox", "1");
    let image = format!("docker://{}/corral/busybox:1", registry.addr);
    // Its data directory is 0700, closed to the actions' ids, like one
    // under /root: the sandbox takes the image's entries before it
    // becomes the action's id, so image actions run from there.
    let farm = Farm::start();
    assert_eq!(
        std::fs::metadata(farm.data_dir.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    Some((registry, image, manifest, farm, scratch))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_action_naming_a_registry_image_runs_in_it_and_not_on_the_host() {
    let Some((_registry, image, manifest, farm, _scratch)) =
        setup("an_action_naming_a_registry_image_runs_in_it_and_not_on_the_host")
    else {
        return;
    };
    let client = Client::of(&farm);
    let script = format!(
        "cat /{}; cat /etc/layer2; test -e /etc/removed-by-layer2 || echo whiteout honoured; \
         for p in /etc/debian_version /usr/bin/python3 /lib /sbin; do \
           test -e $p && echo HOST-VISIBLE $p; done; echo done",
        IMAGE_ONLY.0
    );
    let started = Instant::now();
    let (response, stdout) = run(&client, &image, &script).await;
    let cold = started.elapsed();
    let status = response.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "{status:?}\n{}", farm.logs());
    assert_eq!(
        stdout,
        format!("{}second layer\nwhiteout honoured\ndone\n", IMAGE_ONLY.1),
        "{}",
        farm.logs()
    );
    // The tag resolved to the manifest pushed, on record with the action.
    let log = response
        .server_logs
        .get("container-image.txt")
        .expect("the image log");
    let log = String::from_utf8(client.read(log.digest.as_ref().unwrap()).await).unwrap();
    assert!(log.contains(&format!("digest: {manifest}")), "{log}");
    let started = Instant::now();
    let (response, _) = run(&client, &image, "true").await;
    let warm = started.elapsed();
    assert_eq!(response.status.map_or(0, |s| s.code), 0);
    eprintln!("action in a registry image: cold (pull + unpack) {cold:?}, cached {warm:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn escape_probes_fail_inside_a_registry_image_a_setuid_root_binary_included() {
    let Some((_registry, image, _, farm, _scratch)) =
        setup("escape_probes_fail_inside_a_registry_image_a_setuid_root_binary_included")
    else {
        return;
    };
    let client = Client::of(&farm);
    // As uid 0 inside (the default policy): mapped to an unprivileged
    // host id, with no capabilities.
    let (response, stdout) = run(
        &client,
        &image,
        "echo uid $(/suid/busybox id -u) owner $(stat -c %u:%a /suid/busybox); \
         /suid/busybox cat /etc/secret 2>&1 || echo SECRET-REFUSED; \
         touch /bin/planted 2>&1 || echo BIN-REFUSED; \
         unshare -U true 2>&1 || echo UNSHARE-REFUSED; \
         ls /dev",
    )
    .await;
    assert_eq!(response.status.map_or(0, |s| s.code), 0, "{}", farm.logs());
    // The setuid-root file is owned by an id the namespace does not map
    // (shown as 65534): its bit grants nothing on the nosuid mount.
    assert!(stdout.starts_with("uid 0 owner 65534:4755\n"), "{stdout}");
    assert!(
        stdout.contains("Permission denied\nSECRET-REFUSED"),
        "EACCES: {stdout}"
    );
    assert!(
        stdout.contains("Read-only file system\nBIN-REFUSED"),
        "EROFS: {stdout}"
    );
    assert!(
        stdout.contains("Operation not permitted\nUNSHARE-REFUSED"),
        "EPERM: {stdout}"
    );
    // /dev is the sandbox's own, not the image's or the host's.
    let dev: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("UNSHARE"))
        .skip(1)
        .collect();
    assert!(
        !dev.iter().any(|d| d.starts_with("sd") || *d == "mem"),
        "{dev:?}"
    );
    assert!(dev.contains(&"null"), "{dev:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_tag_or_a_missing_image_fails_the_action_naming_both() {
    let Some((registry, image, _, farm, _scratch)) =
        setup("an_unknown_tag_or_a_missing_image_fails_the_action_naming_both")
    else {
        return;
    };
    let client = Client::of(&farm);
    let missing = format!("docker://{}/corral/absent:1", registry.addr);
    for value in [image.replace(":1", ":2"), missing] {
        let (response, _) = run(&client, &value, "true").await;
        let status = response.status.unwrap_or_default();
        assert_eq!(
            status.code,
            tonic::Code::FailedPrecondition as i32,
            "{status:?}"
        );
        assert!(
            status.message.contains(&value) && status.message.contains("not found"),
            "{}",
            status.message
        );
    }
}

/// The image store outlives the worker: after a restart, with the
/// registry gone, an action naming the pulled image by digest runs from
/// the store (the worker kept the complete image and indexed it).
#[tokio::test(flavor = "multi_thread")]
async fn a_pulled_image_outlives_a_restart_and_runs_by_digest_without_the_registry() {
    let Some((registry, image, manifest, farm, _scratch)) =
        setup("a_pulled_image_outlives_a_restart_and_runs_by_digest_without_the_registry")
    else {
        return;
    };
    let (response, _) = run(&Client::of(&farm), &image, "true").await;
    assert_eq!(response.status.map_or(0, |s| s.code), 0, "{}", farm.logs());
    let started = Instant::now();
    let farm = farm.restart();
    eprintln!(
        "corral up restarted with one image in the store in {:?}",
        started.elapsed()
    );
    drop(registry);
    let by_digest = format!(
        "{}@{manifest}",
        image.strip_suffix(":1").expect("the tag the test pushed")
    );
    let client = Client::of(&farm);
    let (response, stdout) = run(&client, &by_digest, &format!("cat /{}", IMAGE_ONLY.0)).await;
    let status = response.status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "{status:?}\n{}", farm.logs());
    assert_eq!(stdout, IMAGE_ONLY.1, "{}", farm.logs());
    let log = response
        .server_logs
        .get("container-image.txt")
        .expect("the image log");
    let log = String::from_utf8(client.read(log.digest.as_ref().unwrap()).await).unwrap();
    assert!(log.contains("pulled: no, cached"), "{log}");
}

/// Packages whose files make the compiler image: a C/C++ toolchain and
/// the shells Bazel's actions use, as installed on this host. Their
/// dependencies are added; `base-files` is left out, so the host's
/// `/etc/debian_version` is not in the image, and the sanitizer runtimes
/// (only for `-fsanitize`) to keep the image small.
const TOOLCHAIN: &[&str] = &[
    "gcc",
    "g++",
    "bash",
    "coreutils",
    "binutils",
    "libc-bin",
    // Bazel's test wrappers (generate-xml.sh) use sed and grep.
    "sed",
    "grep",
];
const LEFT_OUT: &[&str] = &[
    "base-files",
    "libasan8",
    "libtsan2",
    "liblsan0",
    "libubsan1",
    "libgprofng0",
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Writes a root tree at `tree` holding the files of [`TOOLCHAIN`]'s
/// installed packages and their installed dependencies (docs left out),
/// plus [`IMAGE_ONLY`].
fn toolchain_tree(tree: &Path) {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<String> = TOOLCHAIN.iter().map(|s| (*s).to_owned()).collect();
    while let Some(package) = todo.pop() {
        if LEFT_OUT.contains(&package.as_str()) || !seen.insert(package.clone()) {
            continue;
        }
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Depends},${Pre-Depends}", &package])
            .output()
            .unwrap();
        for dependency in String::from_utf8_lossy(&out.stdout).split(',') {
            // The first installed alternative, without version or arch.
            let chosen = dependency
                .split('|')
                .map(|a| a.trim().split([' ', ':']).next().unwrap_or("").to_owned())
                .find(|a| !a.is_empty() && installed(a));
            todo.extend(chosen);
        }
    }
    let mut paths = std::collections::BTreeSet::new();
    for package in &seen {
        let out = Command::new("dpkg").args(["-L", package]).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let skip = [
                "/usr/share/doc",
                "/usr/share/man",
                "/usr/share/locale",
                "/usr/share/info",
            ];
            if line.starts_with('/') && !skip.iter().any(|s| line.starts_with(s)) {
                paths.insert(line.trim_start_matches('/').to_owned());
            }
        }
    }
    let list = tree.with_extension("list");
    let text: String = paths.iter().map(|p| format!("{p}\n")).collect();
    std::fs::write(&list, text).unwrap();
    // Merged /usr: the host's /bin, /lib, /lib64, /sbin are symlinks
    // into /usr, archived before what lies under them: their targets
    // must exist for the files to land.
    for dir in ["usr/bin", "usr/lib", "usr/lib64", "usr/sbin"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C / --no-recursion -cf - -T {} 2>/dev/null | tar -C {} -xf -",
            list.display(),
            tree.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(tree.join(IMAGE_ONLY.0), IMAGE_ONLY.1).unwrap();
}

#[test]
fn bazel_builds_the_cpp_workspace_in_an_image_from_the_registry() {
    let test = "bazel_builds_the_cpp_workspace_in_an_image_from_the_registry";
    if !corral_testkit::privileged(test) || !corral_e2e::bazel::available(test) {
        return;
    }
    if !Path::new(REGISTRY).exists() {
        corral_testkit::skip(test, "docker-registry is not installed");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("tree");
    toolchain_tree(&tree);
    let layout = scratch.path().join("layout");
    oci_layout(&tree, &layout, "1");
    let registry = Registry::start();
    push_layout(registry.addr, &layout, "corral/cc", "1");
    let image = format!("docker://{}/corral/cc:1", registry.addr);
    let mut farm = Farm::start();
    std::fs::set_permissions(farm.data_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let workspace = corral_e2e::bazel::scratch_workspace();
    let output_root = tempfile::tempdir().unwrap();
    let bazel = |args: &[&str]| {
        let out = Command::new("bazel")
            .arg("--batch")
            .arg(format!(
                "--output_user_root={}",
                output_root.path().display()
            ))
            .args(args)
            .arg(format!("--remote_executor={}", farm.grpc_url()))
            .args(["--spawn_strategy=remote", "--remote_local_fallback=false"])
            .arg(format!(
                "--remote_default_exec_properties=container-image={image}"
            ))
            .args([
                "--nosandbox_debug",
                "--experimental_repository_disable_download",
            ])
            .current_dir(workspace.path())
            .output()
            .unwrap();
        let text = corral_e2e::output_text(&out);
        (out.status.success(), text)
    };
    let (ok, build) = bazel(&["build", "//...", "//image:in_image"]);
    assert!(
        ok,
        "remote build in the image failed\n{build}\n{}",
        farm.logs()
    );
    assert!(
        corral_e2e::bazel::processes(&build, "remote") >= 7,
        "expected remote executions\n{build}"
    );
    let proof =
        std::fs::read_to_string(workspace.path().join("bazel-bin/image/in_image.txt")).unwrap();
    assert_eq!(proof, format!("{}no host python3\n", IMAGE_ONLY.1));
    let hello = Command::new(workspace.path().join("bazel-bin/hello"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&hello.stdout).trim(),
        "hello corral"
    );
    let (ok, tested) = bazel(&["test", "//:greet_test"]);
    assert!(
        ok,
        "remote test in the image failed\n{tested}\n{}",
        farm.logs()
    );
    assert!(farm.stop().success());
}
