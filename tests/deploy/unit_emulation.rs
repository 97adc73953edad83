//! What systemd does from a unit, done by hand where no systemd runs: a
//! mount namespace with the units' file system options, a capability
//! bounding set and no_new_privs (`setpriv`), a user.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use super::*;

/// What systemd makes of the units' file system options, as a
/// script that mounts them in a mount namespace of the runner's own
/// (`unshare --mount`) and then runs "$@": `writable` directories bound
/// writable (StateDirectory=, RuntimeDirectory=), the rest of the root
/// read-only (ProtectSystem=strict), a private /tmp (PrivateTmp=yes),
/// /home and /root hidden (ProtectHome=yes), each unless this checkout
/// (the binary, the test's files) is under it (a /tmp kept for the
/// checkout stays writable, as a private one would be).
pub(crate) fn unit_mounts(writable: &[&Path]) -> String {
    let checkout = repo();
    let outside = |dir: &&str| Path::new(dir).is_dir() && !checkout.starts_with(dir);
    let hidden: Vec<&str> = ["/home", "/root"].into_iter().filter(outside).collect();
    let private: Vec<&str> = ["/tmp"].into_iter().filter(outside).collect();
    // A checkout under /tmp keeps it, but writable as PrivateTmp's is:
    // the daemons make their scratch directories there.
    let kept_tmp = Path::new("/tmp").is_dir() && checkout.starts_with("/tmp");
    let writable: Vec<String> = writable
        .iter()
        .copied()
        .chain(kept_tmp.then_some(Path::new("/tmp")))
        .map(|dir| format!("'{}'", dir.display()))
        .collect();
    format!(
        "set -e
mount --make-rprivate /
for dir in {writable}; do mount --bind $dir $dir; done
mount -o remount,bind,ro /
for dir in {private}; do mount -t tmpfs -o mode=1777 tmpfs $dir; done
for dir in {hidden}; do mount -t tmpfs -o ro,mode=000 tmpfs $dir; done
if touch /usr/.corral-deploy-probe 2>/dev/null; then echo 'root writable' >&2; exit 1; fi
exec \"$@\"",
        writable = writable.join(" "),
        private = private.join(" "),
        hidden = hidden.join(" ")
    )
}

/// A unit's capability bounding set.
pub(crate) fn unit_capabilities(daemon: &str) -> Vec<String> {
    let unit = read(&unit_path(daemon));
    let set = directive(&unit, "CapabilityBoundingSet");
    assert_eq!(set.len(), 1, "one CapabilityBoundingSet line: {set:?}");
    set[0].split_whitespace().map(str::to_owned).collect()
}

/// `command` as systemd runs it from a unit: in a mount namespace with
/// the units' file system options ([`unit_mounts`]), `writable` bound
/// writable, with only `capabilities` in the bounding set, no_new_privs,
/// and as `user` (uid and gid; DynamicUser=) or root.
pub(crate) fn as_unit(
    capabilities: &[String],
    writable: &[&Path],
    user: Option<u32>,
    command: &[&OsStr],
) -> Command {
    let bounding = std::iter::once("-all".to_owned())
        .chain(capabilities.iter().map(|c| {
            let name = c.strip_prefix("CAP_").unwrap_or(c).to_ascii_lowercase();
            format!("+{name}")
        }))
        .collect::<Vec<_>>()
        .join(",");
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--mount", "--", "sh", "-c", &unit_mounts(writable), "sh"])
        .arg("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .args(["--inh-caps=-all", "--no-new-privs"]);
    if let Some(id) = user {
        unshare.args([
            format!("--reuid={id}"),
            format!("--regid={id}"),
            "--clear-groups".to_owned(),
        ]);
    }
    unshare.arg("--").args(command);
    unshare
}
