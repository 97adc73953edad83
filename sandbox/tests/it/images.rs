//! An unpacked container image as the action's root (issue 19): what the
//! action sees, and the escape probes inside it. The image is built here
//! from the host's busybox-static, as the worker's store leaves images:
//! a tree owned by the caller (root, which the sandbox does not map),
//! with a setuid-root copy of busybox and a 0600 file.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_sandbox::{Command, Policy, Sandbox};

use crate::{default_policy, input_root, privileged, Ran};

/// busybox-static (scripts/test.sh installs it).
const BUSYBOX: &str = "/bin/busybox";

/// Applets the scripts below use, as busybox's symlinks.
const APPLETS: &[&str] = &[
    "sh", "cat", "id", "touch", "test", "echo", "unshare", "ls", "stat",
];

/// The image tree, or `None` (after saying why) without busybox.
fn image() -> Option<tempfile::TempDir> {
    if !Path::new(BUSYBOX).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{BUSYBOX} missing under CI (busybox-static is in scripts/test.sh)"
        );
        eprintln!("skipped: {BUSYBOX} (busybox-static) is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["bin", "etc", "usr", "proc", "tmp", "dev"] {
        std::fs::create_dir(root.join(sub)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    // A setuid-root binary: owned by root on the host, mode 4755.
    // busybox picks its applet from argv[0] or, named busybox, argv[1].
    std::fs::create_dir(root.join("suid")).unwrap();
    let suid = root.join("suid/busybox");
    std::fs::copy(BUSYBOX, &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(root.join("etc/only-in-image"), "image\n").unwrap();
    let secret = root.join("etc/secret");
    std::fs::write(&secret, "secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    Some(dir)
}

fn run_in_image(policy: Policy, image: &Path, script: &str) -> Ran {
    let root = input_root();
    let out = tempfile::tempdir().unwrap();
    let command = Command {
        argv: ["/bin/sh", "-c", script].map(OsString::from).to_vec(),
        env: vec![("PATH".into(), "/bin".into())],
        input_root: root.path().to_owned(),
        working_dir: PathBuf::new(),
        stdout: out.path().join("stdout"),
        stderr: out.path().join("stderr"),
        timeout: Some(Duration::from_secs(30)),
    };
    let sandbox = Sandbox::new(policy).expect("sandbox for the policy");
    let host = sandbox.mapping().default_ids();
    let outcome = sandbox
        .run_in_image(&command, None, host, Some(image))
        .expect("the sandbox runs the command");
    Ran {
        outcome,
        stdout: std::fs::read_to_string(&command.stdout).unwrap_or_default(),
        stderr: std::fs::read_to_string(&command.stderr).unwrap_or_default(),
        root,
    }
}

#[test]
fn an_action_in_an_image_sees_the_image_and_not_the_host() {
    if !privileged("an_action_in_an_image_sees_the_image_and_not_the_host") {
        return;
    }
    let Some(image) = image() else { return };
    let ran = run_in_image(
        default_policy(),
        image.path(),
        "cat /etc/only-in-image; \
         for p in /etc/debian_version /usr/bin/python3 /lib /sbin; do \
           test -e $p && echo HOST-VISIBLE $p; done; \
         echo out > /build/out; ls /; echo done",
    );
    assert_eq!(ran.outcome.exit_code(), 0, "{}", ran.output());
    assert!(ran.stdout.starts_with("image\n"), "{}", ran.output());
    assert!(!ran.stdout.contains("HOST-VISIBLE"), "{}", ran.output());
    assert!(ran.stdout.ends_with("done\n"), "{}", ran.output());
    // The root holds the image's entries and the sandbox's own.
    for entry in ["bin", "build", "dev", "etc", "proc", "tmp", "usr"] {
        assert!(
            ran.stdout.lines().any(|l| l == entry),
            "{entry}: {}",
            ran.output()
        );
    }
    assert_eq!(
        std::fs::read_to_string(ran.root.path().join("out")).unwrap(),
        "out\n"
    );
}

#[test]
fn a_setuid_root_binary_in_an_image_grants_nothing_and_the_image_is_read_only() {
    if !privileged("a_setuid_root_binary_in_an_image_grants_nothing_and_the_image_is_read_only") {
        return;
    }
    let Some(image) = image() else { return };
    // A non-root uid inside, so that gaining root would show.
    let mut policy = default_policy();
    policy.identity.uid = 1000;
    policy.identity.gid = 1000;
    let ran = run_in_image(
        policy,
        image.path(),
        "echo uid $(/suid/busybox id -u) owner $(stat -c %u:%a /suid/busybox); \
         /suid/busybox cat /etc/secret || echo SECRET-REFUSED; \
         touch /bin/planted || echo BIN-REFUSED; \
         touch /etc/planted || echo ETC-REFUSED; \
         unshare -U -r id -u || echo UNSHARE-REFUSED",
    );
    let out = ran.output();
    // The setuid bit changes nothing: the euid is the caller's 1000
    // (nosuid mount, no_new_privs, and an owner the namespace does not map).
    // The file is setuid and owned by the host's root, which appears as
    // the overflow id 65534.
    assert!(ran.stdout.starts_with("uid 1000 owner 65534:4755"), "{out}");
    assert!(ran.stdout.contains("SECRET-REFUSED"), "{out}");
    assert!(
        ran.stderr.contains("Permission denied"),
        "EACCES on the 0600 file: {out}"
    );
    assert!(ran.stdout.contains("BIN-REFUSED"), "{out}");
    assert!(ran.stdout.contains("ETC-REFUSED"), "{out}");
    assert!(ran.stderr.contains("Read-only file system"), "EROFS: {out}");
    assert!(ran.stdout.contains("UNSHARE-REFUSED"), "{out}");
    assert!(
        ran.stderr.contains("Operation not permitted"),
        "EPERM: {out}"
    );
    for planted in ["bin/planted", "etc/planted"] {
        assert!(!image.path().join(planted).exists(), "{planted}");
    }
}
