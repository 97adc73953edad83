//! Host ids: which host uid and gid an action runs as, how its user
//! namespace's maps are written, and how its input root is handed to that
//! id and back.
//!
//! Per-user kernel counters are kept per host uid: pipe buffer pages per
//! uid, and the `ucounts` (inotify instances and watches, pending
//! signals, POSIX message queue bytes, processes) at every user namespace
//! level, charged at the parent level to the uid that *created* the
//! namespace. So, as root, the setup process becomes the run's host id
//! before it creates the user namespace ([`enter_as_creator`]): a
//! namespace created by root would charge every action's inotify
//! instances to root itself, and one action could starve the others and
//! the host's own daemons.
//!
//! Three ways to map, chosen once per process ([`Mapping::detect`]):
//! - **root**: the caller writes the maps; any host id, one per slot from
//!   a range the caller leases (`runner.toml`'s `action_ids`).
//! - **subordinate**: without root, through `newuidmap` and the caller's
//!   range in `/etc/subuid`: the action's uid is a subordinate id that
//!   owns nothing; its gid is the caller's own (written directly), so the
//!   input root's directories can be group-writable rather than
//!   world-writable, and the caller, not the action, owns them.
//! - **own**: neither: the action runs as the caller's own ids, which own
//!   the caller's files; a warning says so, and a worker lays inputs out
//!   as copies.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sys::{self, Fork};

/// The host uid and gid an action runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIds {
    pub uid: u32,
    pub gid: u32,
}

/// `count` consecutive host uids from `uid` and gids from `gid`: one per
/// concurrent run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub uid: u32,
    pub gid: u32,
    pub count: u32,
}

impl IdRange {
    /// The `n`th ids of the range, if it has that many.
    pub fn nth(&self, n: u32) -> Option<HostIds> {
        if n >= self.count {
            return None;
        }
        Some(HostIds {
            uid: self.uid.checked_add(n)?,
            gid: self.gid.checked_add(n)?,
        })
    }
}

/// "nobody", which owns no files: the host ids of a root caller's runs
/// that were given none.
pub const NOBODY: HostIds = HostIds {
    uid: 65534,
    gid: 65534,
};

/// How the caller maps actions to host ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// The caller is root: it writes the maps itself.
    Root,
    /// Without root, through `newuidmap` and the caller's subordinate uid
    /// range (`uids.count` ids from `uids.uid`; gids are the caller's).
    Subordinate {
        newuidmap: PathBuf,
        uids: IdRange,
        caller: HostIds,
    },
    /// Without root and without subordinate ids: the caller's own.
    Own { caller: HostIds, why: String },
}

/// What went wrong mapping ids or handing an input root over.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("failed to write the id map {path}")]
    WriteMap {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to run {helper} for process {pid}")]
    RunHelper {
        helper: PathBuf,
        pid: libc::pid_t,
        #[source]
        source: io::Error,
    },
    #[error("{helper} refused to map process {pid}: {stderr}")]
    HelperFailed {
        helper: PathBuf,
        pid: libc::pid_t,
        stderr: String,
    },
    #[error("failed to hand {path} over to host uid {uid}")]
    HandOver {
        path: PathBuf,
        uid: u32,
        #[source]
        source: io::Error,
    },
    #[error("failed to {step} while reclaiming {path} from host uid {uid}")]
    Reclaim {
        step: &'static str,
        path: PathBuf,
        uid: u32,
        #[source]
        source: io::Error,
    },
}

/// Where setuid helpers are looked for; never the caller's PATH, which a
/// daemon's environment may not control.
const HELPER_DIRECTORIES: [&str; 4] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"];

impl Mapping {
    /// The mapping this process can do: root, subordinate ids (both
    /// `newuidmap` and a range in `/etc/subuid` for the caller), or its
    /// own ids.
    pub fn detect() -> Mapping {
        let (uid, gid) = sys::effective_ids();
        if uid == 0 {
            return Mapping::Root;
        }
        let caller = HostIds { uid, gid };
        let name = user_name(uid, &read_or_empty("/etc/passwd"));
        let helper = HELPER_DIRECTORIES
            .iter()
            .map(|dir| Path::new(dir).join("newuidmap"))
            .find(|path| path.is_file());
        let range = subordinate_range(uid, name.as_deref(), &read_or_empty("/etc/subuid"));
        match (helper, range) {
            // newuidmap looks the caller up by name, and refuses without.
            (Some(_), Some(_)) if name.is_none() => Mapping::Own {
                caller,
                why: format!("uid {uid} has no entry in /etc/passwd, which newuidmap needs"),
            },
            (Some(newuidmap), Some((start, count))) => Mapping::Subordinate {
                newuidmap,
                uids: IdRange {
                    uid: start,
                    gid,
                    count,
                },
                caller,
            },
            (None, _) => Mapping::Own {
                caller,
                why: "newuidmap is not installed (Debian package uidmap)".to_owned(),
            },
            (Some(_), None) => Mapping::Own {
                caller,
                why: format!("/etc/subuid gives uid {uid} no subordinate range"),
            },
        }
    }

    /// The ids of a run given none.
    pub fn default_ids(&self) -> HostIds {
        match self {
            Mapping::Root => NOBODY,
            Mapping::Subordinate { uids, .. } => HostIds {
                uid: uids.uid,
                gid: uids.gid,
            },
            Mapping::Own { caller, .. } => *caller,
        }
    }

    /// The ids to give concurrent runs, one each: `configured` as root;
    /// without root, the first `configured.count` subordinate uids, each
    /// with the caller's gid; none when every run has the caller's own
    /// ids.
    pub fn per_run_ids(&self, configured: IdRange) -> Vec<HostIds> {
        match self {
            Mapping::Root => (0..configured.count)
                .filter_map(|n| configured.nth(n))
                .collect(),
            Mapping::Subordinate { uids, caller, .. } => (0..uids.count.min(configured.count))
                .filter_map(|n| uids.nth(n))
                .map(|ids| HostIds {
                    uid: ids.uid,
                    gid: caller.gid,
                })
                .collect(),
            Mapping::Own { .. } => Vec::new(),
        }
    }

    /// For operators: what this mapping does not protect, if anything.
    pub fn warning(&self) -> Option<String> {
        match self {
            Mapping::Own { caller, why } => Some(format!(
                "not running as root, and no subordinate ids ({why}): actions run as host uid \
                 {}, the caller's own, so files the caller owns (such as a worker's cache) are \
                 not protected from them, and every action shares the caller's per-user kernel \
                 counters",
                caller.uid
            )),
            _ => None,
        }
    }

    /// The ids the setup process takes before it creates the user
    /// namespace, so the namespace is owned, and its counters charged, per
    /// run: `host` as root; nothing without root (no choice).
    pub fn creator(&self, host: HostIds) -> Option<HostIds> {
        matches!(self, Mapping::Root).then_some(host)
    }

    /// Writes `pid`'s maps: `inside` uid and gid to `host`. `setgroups` is
    /// denied first: required before an unprivileged gid_map write, and it
    /// keeps the action from joining groups.
    pub fn write_maps(
        &self,
        pid: libc::pid_t,
        inside: HostIds,
        host: HostIds,
    ) -> Result<(), IdError> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let write = |file: &str, text: String| {
            let path = proc.join(file);
            std::fs::write(&path, text).map_err(|source| IdError::WriteMap { path, source })
        };
        write("setgroups", "deny".to_owned())?;
        match self {
            Mapping::Subordinate { newuidmap, .. } => {
                run_helper(newuidmap, pid, &[(inside.uid, host.uid)])?;
            }
            Mapping::Root | Mapping::Own { .. } => {
                write("uid_map", format!("{} {} 1\n", inside.uid, host.uid))?;
            }
        }
        // Without root, the caller's own gid: allowed once setgroups is
        // denied.
        write("gid_map", format!("{} {} 1\n", inside.gid, host.gid))
    }

    /// Makes `input_root`'s directories writable by `host` and by nobody
    /// else but their owner: as root, chowned to `host` with mode 0755;
    /// with subordinate ids, 0775 in the caller's group (the action's
    /// gid); with the caller's own ids, 0755. Files keep their owner and
    /// mode: hardlinked inputs stay read-only to the action. Symlinks are
    /// never followed.
    pub fn hand_over(&self, input_root: &Path, host: HostIds) -> Result<(), IdError> {
        let fail = |path: &Path, source| IdError::HandOver {
            path: path.to_owned(),
            uid: host.uid,
            source,
        };
        let (owner, mode) = match self {
            Mapping::Root => (Some(host), 0o755),
            Mapping::Subordinate { .. } => (None, 0o775),
            Mapping::Own { .. } => (None, 0o755),
        };
        walk_directories(input_root, host.uid, &mut |dir| {
            if let Some(ids) = owner {
                std::os::unix::fs::lchown(dir, Some(ids.uid), Some(ids.gid))
                    .map_err(|e| fail(dir, e))?;
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| fail(dir, e))
        })
    }

    /// After a run with subordinate ids: gives everything the action left
    /// in `input_root` back to the caller (owner, and u+rwx on
    /// directories), so the caller can read the outputs and remove the
    /// tree. Runs in a user namespace mapping the caller's uid and the
    /// action's. Nothing to do otherwise: root reads anything, and the
    /// caller's own ids already own it all.
    pub fn reclaim(&self, input_root: &Path, host: HostIds) -> Result<(), IdError> {
        let Mapping::Subordinate {
            newuidmap, caller, ..
        } = self
        else {
            return Ok(());
        };
        let fail = |step, source| IdError::Reclaim {
            step,
            path: input_root.to_owned(),
            uid: host.uid,
            source,
        };
        let (ready_r, ready_w) = sys::pipe().map_err(|e| fail("create a pipe", e))?;
        let (go_r, go_w) = sys::pipe().map_err(|e| fail("create a pipe", e))?;
        let pid = match sys::fork().map_err(|e| fail("fork", e))? {
            Fork::Child => {
                drop((ready_r, go_w));
                // Inside: 0 is the caller, 1 the action's uid.
                let code = (|| -> io::Result<()> {
                    sys::unshare(libc::CLONE_NEWUSER)?;
                    sys::write_all(ready_w.as_fd(), &[1])?;
                    let mut byte = [0u8; 1];
                    if sys::read(go_r.as_fd(), &mut byte)? != 1 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    give_back(input_root, 1, 0)
                })()
                .map_or(1, |()| 0);
                sys::exit_now(code)
            }
            Fork::Parent(pid) => pid,
        };
        drop((ready_w, go_r));
        let mapped = (|| {
            let mut byte = [0u8; 1];
            if sys::read(ready_r.as_fd(), &mut byte).map_err(|e| fail("wait for the helper", e))?
                != 1
            {
                return Err(fail(
                    "create the helper's user namespace",
                    io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            run_helper(newuidmap, pid, &[(0, caller.uid), (1, host.uid)])?;
            let proc = PathBuf::from(format!("/proc/{pid}"));
            for (file, text) in [
                ("setgroups", "deny".to_owned()),
                ("gid_map", format!("0 {} 1\n", caller.gid)),
            ] {
                let path = proc.join(file);
                std::fs::write(&path, text).map_err(|source| IdError::WriteMap { path, source })?;
            }
            sys::write_all(go_w.as_fd(), &[1]).map_err(|e| fail("start the helper", e))
        })();
        if mapped.is_err() {
            let _ = sys::kill(pid, libc::SIGKILL);
        }
        drop(go_w);
        let (_, status, _) = sys::wait4(pid).map_err(|e| fail("wait for the helper", e))?;
        mapped?;
        match status {
            sys::WaitStatus::Exited(0) => Ok(()),
            _ => Err(fail(
                "give the files back",
                io::Error::other(format!("the helper ended with {status:?}")),
            )),
        }
    }
}

/// In the reclaiming helper's namespace: every entry owned by `from`
/// becomes `to`'s, and directories get u+rwx. Symlinks are chowned
/// themselves, never followed.
fn give_back(root: &Path, from: u32, to: u32) -> io::Result<()> {
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        let meta = std::fs::symlink_metadata(&dir)?;
        if meta.uid() == from {
            std::os::unix::fs::lchown(&dir, Some(to), None)?;
        }
        std::fs::set_permissions(
            &dir,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777 | 0o700),
        )?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                todo.push(path);
            } else if meta.uid() == from {
                std::os::unix::fs::lchown(&path, Some(to), None)?;
            }
        }
    }
    Ok(())
}

/// Calls `each` on `root` and every directory below it, never following
/// symlinks.
fn walk_directories(
    root: &Path,
    uid: u32,
    each: &mut dyn FnMut(&Path) -> Result<(), IdError>,
) -> Result<(), IdError> {
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        each(&dir)?;
        let read = std::fs::read_dir(&dir).map_err(|source| IdError::HandOver {
            path: dir.clone(),
            uid,
            source,
        })?;
        for entry in read {
            let entry = entry.map_err(|source| IdError::HandOver {
                path: dir.clone(),
                uid,
                source,
            })?;
            // file_type() is the entry's own: a symlink is not a directory.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Runs `newuidmap pid inside host 1 ...` and waits for it.
fn run_helper(helper: &Path, pid: libc::pid_t, ranges: &[(u32, u32)]) -> Result<(), IdError> {
    let mut command = std::process::Command::new(helper);
    command.arg(pid.to_string());
    for (inside, host) in ranges {
        command.args([inside.to_string(), host.to_string(), "1".to_owned()]);
    }
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| IdError::RunHelper {
            helper: helper.to_owned(),
            pid,
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(IdError::HelperFailed {
        helper: helper.to_owned(),
        pid,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// In the setup process, before it creates the user namespace: drops
/// the caller's supplementary groups and takes `creator`'s ids, then
/// re-arms the parent-death signal, which the kernel clears when the ids
/// change.
///
/// Root's capabilities are kept across the change (SECBIT_NO_SETUID_FIXUP,
/// then the bits are reset): a user namespace made without CAP_SYS_ADMIN
/// is refused or confined where the host restricts unprivileged ones
/// (Debian's `kernel.unprivileged_userns_clone=0`, Ubuntu's AppArmor
/// `apparmor_restrict_unprivileged_userns`). The namespace's owner, and
/// so the uid its counters are charged to, is the effective uid all the
/// same; and creating it leaves no capability in the host's namespace.
pub(crate) fn enter_as_creator(creator: HostIds) -> io::Result<()> {
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    sys::drop_supplementary_groups()?;
    sys::prctl(libc::PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0)?;
    sys::setresgid(creator.gid)?;
    sys::setresuid(creator.uid)?;
    sys::prctl(libc::PR_SET_SECUREBITS, 0, 0)?;
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0).map(drop)
}

fn read_or_empty(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The login name of `uid` in `passwd` (the text of /etc/passwd).
fn user_name(uid: u32, passwd: &str) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

/// The first range (start, count) `subids` (the text of /etc/subuid)
/// gives the user, by name or by number.
fn subordinate_range(uid: u32, name: Option<&str>, subids: &str) -> Option<(u32, u32)> {
    let number = uid.to_string();
    subids.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let owner = fields.next()?;
        if owner != number && Some(owner) != name {
            return None;
        }
        let start: u32 = fields.next()?.parse().ok()?;
        let count: u32 = fields.next()?.parse().ok()?;
        (count > 0 && start.checked_add(count - 1).is_some()).then_some((start, count))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_found_by_name_or_number() {
        let subuid = "# comment\nalice:100000:65536\n1001:200000:10\nbob:300000:0\n";
        assert_eq!(
            subordinate_range(1000, Some("alice"), subuid),
            Some((100000, 65536))
        );
        assert_eq!(subordinate_range(1001, None, subuid), Some((200000, 10)));
        assert_eq!(subordinate_range(1002, Some("bob"), subuid), None, "empty");
        assert_eq!(subordinate_range(1003, Some("carol"), subuid), None);
        assert_eq!(
            subordinate_range(1, Some("x"), "x:4294967295:2\n"),
            None,
            "past the last id"
        );
    }

    #[test]
    fn user_names_come_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(user_name(1000, passwd).as_deref(), Some("alice"));
        assert_eq!(user_name(7, passwd), None);
    }

    #[test]
    fn runs_get_ids_from_the_configured_range_as_root_and_the_subordinate_one_without() {
        let configured = IdRange {
            uid: 5000,
            gid: 6000,
            count: 8,
        };
        let ids = Mapping::Root.per_run_ids(configured);
        assert_eq!(ids.len(), 8);
        assert_eq!(
            ids[0],
            HostIds {
                uid: 5000,
                gid: 6000
            }
        );
        assert_eq!(
            configured.nth(7),
            Some(HostIds {
                uid: 5007,
                gid: 6007
            })
        );
        assert_eq!(configured.nth(8), None);
        let top = IdRange {
            uid: u32::MAX,
            gid: 1,
            count: 2,
        };
        assert_eq!(top.nth(1), None, "past the last id");
        let caller = HostIds {
            uid: 1000,
            gid: 1000,
        };
        let sub = Mapping::Subordinate {
            newuidmap: PathBuf::from("/usr/bin/newuidmap"),
            uids: IdRange {
                uid: 100000,
                gid: 1000,
                count: 4,
            },
            caller,
        };
        let ids = sub.per_run_ids(configured);
        assert_eq!(ids.len(), 4);
        assert_eq!(
            ids[3],
            HostIds {
                uid: 100003,
                gid: 1000
            },
            "the caller's gid"
        );
        assert_eq!(sub.creator(caller), None);
        assert_eq!(Mapping::Root.creator(caller), Some(caller));
        let own = Mapping::Own {
            caller,
            why: String::new(),
        };
        assert!(own.per_run_ids(configured).is_empty());
        assert!(own.warning().is_some());
    }
}
