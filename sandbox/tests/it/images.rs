//! An unpacked container image as the action's root (issue 19): what the
//! action sees, and the escape probes inside it. The image is built here
//! from the host's busybox-static, as the worker's store leaves images:
//! a tree owned by the caller (root, which the sandbox does not map),
//! with a setuid-root copy of busybox and a 0600 file, under a 0700
//! directory (a data directory under /root, or `mktemp -d`) that the
//! action's host id cannot search.

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
    "sh", "cat", "id", "touch", "test", "echo", "unshare", "ls", "stat", "awk", "umount", "mount",
];

/// An image tree at `<0700 dir>/images/x/rootfs`, as the worker's store
/// lays images out in a closed data directory.
struct Image {
    closed: tempfile::TempDir,
}

impl Image {
    fn path(&self) -> PathBuf {
        self.closed.path().join("images/x/rootfs")
    }
}

/// The image tree, or `None` (after saying why) without busybox.
fn image() -> Option<Image> {
    if !Path::new(BUSYBOX).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{BUSYBOX} missing under CI (busybox-static is in scripts/test.sh)"
        );
        eprintln!("skipped: {BUSYBOX} (busybox-static) is not installed");
        return None;
    }
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = Image { closed };
    let root = &dir.path();
    std::fs::create_dir_all(root).unwrap();
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
        &image.path(),
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
        &image.path(),
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

/// A tmpfs mounted under a host directory, unmounted when dropped.
struct Submount(PathBuf);

impl Submount {
    fn new(at: PathBuf) -> Submount {
        std::fs::create_dir_all(&at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=1777,size=1m", "corral-probe"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", at.display());
        Submount(at)
    }
}

impl Drop for Submount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The image's entries are taken as detached mount trees while the
/// sandbox still has the caller's privilege: an image under a directory
/// the action's host id cannot search runs (it failed with EACCES when
/// init opened the entries as that id), and the trees are read-only,
/// nosuid and nodev, a host submount of an entry included, with no way
/// back to the host path they came from.
#[test]
fn an_image_under_a_closed_directory_runs_read_only_nosuid_nodev_and_out_of_reach() {
    let test = "an_image_under_a_closed_directory_runs_read_only_nosuid_nodev_and_out_of_reach";
    if !privileged(test) {
        return;
    }
    let Some(image) = image() else { return };
    let root = image.path();
    let _submount = Submount::new(root.join("usr/sub"));
    let mut policy = default_policy();
    policy.identity.uid = 1000;
    policy.identity.gid = 1000;
    let script = format!(
        "cat /etc/only-in-image; \
         awk '$5 ~ /^\\/(bin|etc|usr|usr\\/sub|suid)$/ {{ print $5, $6 }}' /proc/self/mountinfo; \
         touch /usr/sub/x || echo SUB-REFUSED; \
         umount /etc || echo UMOUNT-REFUSED; \
         mount -o remount,rw /etc || echo REMOUNT-REFUSED; \
         ls {host} || echo HOST-PATH-ABSENT; \
         test -d /etc/../build -a -d /etc/../proc && echo DOTDOT-IS-THE-SANDBOX-ROOT; \
         echo done",
        host = image.closed.path().display()
    );
    let ran = run_in_image(policy, &root, &script);
    let out = ran.output();
    assert_eq!(ran.outcome.exit_code(), 0, "{out}");
    assert!(ran.stdout.starts_with("image\n"), "{out}");
    // Each entry (and the submount beneath /usr) is its own mount, with
    // ro, nosuid and nodev in its per-mount options.
    let mounts: Vec<(&str, &str)> = ran
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(point, _)| point.starts_with('/'))
        .collect();
    let points: Vec<&str> = mounts.iter().map(|(p, _)| *p).collect();
    for entry in ["/bin", "/etc", "/suid", "/usr", "/usr/sub"] {
        assert!(points.contains(&entry), "{entry} is a mount: {out}");
    }
    for (point, options) in &mounts {
        let options: Vec<&str> = options.split(',').collect();
        for flag in ["ro", "nosuid", "nodev"] {
            assert!(options.contains(&flag), "{point} lacks {flag}: {out}");
        }
    }
    // EROFS from the read-only submount; EPERM for unmounting or
    // remounting an entry (no capability, and seccomp).
    assert!(ran.stdout.contains("SUB-REFUSED"), "{out}");
    assert!(ran.stderr.contains("Read-only file system"), "EROFS: {out}");
    assert!(ran.stdout.contains("UMOUNT-REFUSED"), "{out}");
    assert!(ran.stdout.contains("REMOUNT-REFUSED"), "{out}");
    assert!(
        ran.stderr.contains("Operation not permitted"),
        "EPERM: {out}"
    );
    // The store's host path does not exist inside (ENOENT), and `..` of
    // an entry is the sandbox's root, not the image's host directory.
    assert!(ran.stdout.contains("HOST-PATH-ABSENT"), "{out}");
    assert!(
        ran.stderr.contains("No such file or directory"),
        "ENOENT: {out}"
    );
    assert!(
        ran.stdout.ends_with("DOTDOT-IS-THE-SANDBOX-ROOT\ndone\n"),
        "{out}"
    );
    assert!(!root.join("usr/sub/x").exists());
}

/// The undeclared-input report sees the image's mounts as it sees the
/// host binds: they are attached with `move_mount`, not bound, and the
/// caller marks every mount of init's namespace all the same.
#[test]
fn the_undeclared_input_report_lists_the_files_read_from_the_image() {
    if !privileged("the_undeclared_input_report_lists_the_files_read_from_the_image") {
        return;
    }
    let Some(image) = image() else { return };
    let ran = run_in_image(
        default_policy(),
        &image.path(),
        "cat /etc/only-in-image > /dev/null",
    );
    assert_eq!(ran.outcome.exit_code(), 0, "{}", ran.output());
    let listed = match &ran.outcome.undeclared_inputs {
        corral_sandbox::UndeclaredInputs::Collected { paths, .. } => paths,
        other => panic!("expected a collected report, got {other:?}"),
    };
    for read in ["/etc/only-in-image", "/bin/busybox"] {
        assert!(
            listed.iter().any(|p| p == Path::new(read)),
            "{read} not in {listed:?}"
        );
    }
}
