//! The undeclared-input report: the files an action opened outside its
//! input root (today from the host's read-only binds; with an image root,
//! from the image), so a team can find the host dependencies that make a
//! build non-hermetic.
//!
//! Collected with fanotify (`docs/decisions/0019-undeclared-input-report.md`
//! says why, with the figures): the caller makes a notification group
//! before the fork; once init has built the action's mounts (and before it
//! forks the action) the caller puts a `FAN_OPEN` mark on each of them,
//! reached through `/proc/<init>/root`. A mount mark sees only opens
//! through that mount, and these mounts exist only in the action's mount
//! namespace, so every event is the action's: no filtering by pid or
//! cgroup, and the host's own file activity costs nothing. Each event
//! carries a descriptor of the opened file; its `/proc/self/fd` link names
//! the file as the action saw it, because the caller holds the action's
//! mount namespace (`/proc/<init>/ns/mnt`) until the events are read.
//!
//! Marking a mount needs CAP_SYS_ADMIN in the initial user namespace:
//! without root the report says it is unavailable and why, and the action
//! runs as it would without it. Nothing here ever fails an action.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::sys;

/// Most paths a report lists; the rest are counted. A report is read by a
/// person, and one action opening tens of thousands of host files says
/// what it needs to say in its first thousand.
pub const MAX_PATHS: usize = 1000;

/// Most distinct paths a run keeps while it runs (about 100 bytes each);
/// past it the report says it is incomplete.
const TRACKED_MAX: usize = 100_000;

/// Mounts of the action's namespace that are not inputs from outside: the
/// kernel's views and the action's own scratch space. The working
/// directory (the input root) is left out as well.
const NOT_INPUTS: [&str; 3] = ["/proc", "/dev", "/tmp"];

/// What the report found for one run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UndeclaredInputs {
    /// The policy turned the report off (`report.undeclared_inputs`).
    #[default]
    Off,
    /// The report was asked for but this host cannot make it.
    Unavailable { reason: String },
    /// The files opened outside the input root.
    Collected {
        /// Sorted, without duplicates, at most [`MAX_PATHS`].
        paths: Vec<PathBuf>,
        /// How many distinct paths there were (more than `paths.len()`
        /// when the list was capped).
        total: usize,
        /// Some opens were not recorded: the kernel's event queue
        /// overflowed, or there were more than 100,000 distinct files.
        overflowed: bool,
    },
}

impl UndeclaredInputs {
    /// The paths listed (none unless collected).
    pub fn paths(&self) -> &[PathBuf] {
        match self {
            UndeclaredInputs::Collected { paths, .. } => paths,
            _ => &[],
        }
    }

    /// The report as text: a heading line, then one path per line. `None`
    /// when the policy turned it off.
    pub fn text(&self) -> Option<String> {
        let mut text = String::new();
        // Writing to a String cannot fail.
        match self {
            UndeclaredInputs::Off => return None,
            UndeclaredInputs::Unavailable { reason } => {
                let _ = writeln!(text, "undeclared inputs: unavailable: {reason}");
            }
            UndeclaredInputs::Collected {
                paths,
                total,
                overflowed,
            } => {
                let _ = writeln!(
                    text,
                    "undeclared inputs: {total} files opened outside the input root"
                );
                if *total > paths.len() {
                    let _ = writeln!(
                        text,
                        "(capped: the first {} in sorted order are listed)",
                        paths.len()
                    );
                }
                if *overflowed {
                    let _ = writeln!(
                        text,
                        "(incomplete: some opens were not recorded: the kernel's event queue \
                         overflowed, or more than {TRACKED_MAX} distinct files were opened)"
                    );
                }
                for path in paths {
                    let _ = writeln!(text, "{}", path.display());
                }
            }
        }
        Some(text)
    }
}

/// Most idle groups a sandbox keeps for later runs.
const IDLE_GROUPS_MAX: usize = 64;

/// Idle fanotify groups, reused from run to run. Closing a group waits
/// in the kernel for every mark it had to be freed (an SRCU grace period:
/// 8-25 ms measured on a loaded 2-core VM, more than the whole spawn),
/// whereas a group whose marks went with the run's mounts is as good as
/// new. A group goes back only with no mark left and no event queued.
#[derive(Debug, Default)]
pub(crate) struct Groups(Mutex<Vec<OwnedFd>>);

impl Groups {
    fn take(&self) -> Option<OwnedFd> {
        self.0.lock().ok()?.pop()
    }

    /// Keeps `group` for a later run if it has no mark left, else closes
    /// it (slowly, see above).
    fn give_back(&self, group: OwnedFd) {
        let fdinfo = format!("/proc/self/fdinfo/{}", group.as_raw_fd());
        // The kernel lists each mark as a line "fanotify mnt_id:..."
        // (or "ino:", "sdev:"), all with "mflags:"; the group's own line
        // is "fanotify flags:...".
        let unmarked = std::fs::read_to_string(fdinfo).is_ok_and(|info| {
            !info
                .lines()
                .any(|l| l.starts_with("fanotify ") && l.contains(" mflags:"))
        });
        if !unmarked {
            return;
        }
        if let Ok(mut idle) = self.0.lock() {
            if idle.len() < IDLE_GROUPS_MAX {
                idle.push(group);
            }
        }
    }
}

/// A run's fanotify group, from before the fork until the report.
#[derive(Debug)]
pub(crate) struct Watch {
    group: Option<OwnedFd>,
    /// The action's mount namespace, held so that paths keep their names
    /// after the action's processes are gone.
    namespace: Option<OwnedFd>,
    /// Why there will be no report, once something failed.
    unavailable: Option<String>,
    /// What the events read so far named.
    seen: BTreeSet<PathBuf>,
    overflowed: bool,
    /// For reading events; allocated at the first read, reused after.
    buf: Vec<u8>,
}

impl Watch {
    /// Takes an idle group or makes one. Never fails: a host that cannot
    /// watch gives a report saying so.
    pub fn new(idle: &Groups) -> Watch {
        // O_NONBLOCK on the events' descriptors too: the kernel opens each
        // file for the reader, and a FIFO opened for reading would
        // otherwise wait for a writer.
        let group = idle.take().map(Ok).unwrap_or_else(|| {
            sys::fanotify_init(
                libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
                libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        });
        match group {
            Ok(group) => Watch {
                group: Some(group),
                namespace: None,
                unavailable: None,
                seen: BTreeSet::new(),
                overflowed: false,
                buf: Vec::new(),
            },
            Err(e) => Watch {
                group: None,
                namespace: None,
                unavailable: Some(why_unavailable("create a fanotify group", &e)),
                seen: BTreeSet::new(),
                overflowed: false,
                buf: Vec::new(),
            },
        }
    }

    /// Whether the group exists (and marks are still to come or made).
    pub fn is_watching(&self) -> bool {
        self.group.is_some()
    }

    /// Marks every mount of init's namespace except the working directory
    /// (and what lies under it), /proc, /dev and /tmp. `init` is init's pid
    /// in the caller's pid namespace; init must be waiting before forking
    /// the action, so nothing is missed and nothing but init has run there.
    pub fn mark(&mut self, init: Option<libc::pid_t>, working_directory: &Path) {
        let marked = match init {
            Some(init) => self.try_mark(init, working_directory),
            None => Err("the sandbox never said which process is its init".to_owned()),
        };
        if let Err(reason) = marked {
            self.unavailable.get_or_insert(reason);
            self.group = None;
        }
    }

    fn try_mark(&mut self, init: libc::pid_t, working_directory: &Path) -> Result<(), String> {
        let Some(group) = &self.group else {
            return Ok(());
        };
        let proc = PathBuf::from(format!("/proc/{init}"));
        let namespace = std::fs::File::open(proc.join("ns/mnt"))
            .map_err(|e| why_unavailable("hold the action's mount namespace", &e))?;
        let mountinfo = std::fs::read_to_string(proc.join("mountinfo"))
            .map_err(|e| why_unavailable("list the action's mounts", &e))?;
        for mount_point in input_mounts(&mountinfo, working_directory) {
            let path = proc.join("root").join(
                mount_point
                    .strip_prefix("/")
                    .unwrap_or(mount_point.as_path()),
            );
            let c_path = CString::new(path.as_os_str().as_bytes())
                .map_err(|_| format!("mount point {} has a NUL byte", mount_point.display()))?;
            sys::fanotify_mark_mount(group.as_fd(), libc::FAN_OPEN, &c_path).map_err(|e| {
                why_unavailable(&format!("mark the mount at {}", mount_point.display()), &e)
            })?;
        }
        self.namespace = Some(namespace.into());
        Ok(())
    }

    /// Reads the events queued now. Called whenever the caller's
    /// supervision wakes (output, the disk check about once a second), so
    /// the kernel's queue (16,384 events) does not fill in a long action,
    /// without waking the caller once more per event. `caller` is this
    /// process's pid.
    pub fn read_events(&mut self, caller: libc::pid_t) {
        let Some(group) = &self.group else {
            return;
        };
        if self.buf.is_empty() {
            self.buf = vec![0u8; 64 * 1024];
        }
        loop {
            let events = match sys::fanotify_read(group.as_fd(), &mut self.buf) {
                Ok(events) => events,
                Err(e) => {
                    self.unavailable = Some(why_unavailable("read the fanotify events", &e));
                    self.group = None;
                    return;
                }
            };
            if events.is_empty() {
                return;
            }
            for event in events {
                if event.mask & libc::FAN_Q_OVERFLOW != 0 {
                    self.overflowed = true;
                }
                // The caller itself (reaching a mount through /proc) is
                // not the action.
                if event.pid == caller {
                    continue;
                }
                let Some(file) = event.file else {
                    continue;
                };
                let link = format!("/proc/self/fd/{}", file.as_raw_fd());
                if let Ok(path) = std::fs::read_link(link) {
                    if self.seen.len() < TRACKED_MAX || self.seen.contains(&path) {
                        self.seen.insert(path);
                    } else {
                        self.overflowed = true;
                    }
                }
            }
        }
    }

    /// Reads the events still queued and makes the report; gives the
    /// group back to `idle`. Call once every process of the action is
    /// gone: opens are queued as they happen, so none is still to come.
    pub fn finish(mut self, caller: libc::pid_t, idle: &Groups) -> UndeclaredInputs {
        self.read_events(caller);
        if let Some(reason) = self.unavailable {
            return UndeclaredInputs::Unavailable { reason };
        }
        let Some(group) = self.group else {
            return UndeclaredInputs::Unavailable {
                reason: "the action's mounts were never marked".to_owned(),
            };
        };
        // The last reference to the action's mounts: their marks go with
        // them, and the group is clean again.
        drop(self.namespace);
        idle.give_back(group);
        let total = self.seen.len();
        UndeclaredInputs::Collected {
            paths: self.seen.into_iter().take(MAX_PATHS).collect(),
            total,
            overflowed: self.overflowed,
        }
    }
}

/// The reason line for a failed step, naming the privilege or kernel
/// feature it lacks where the errno says so.
fn why_unavailable(step: &str, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => format!(
            "failed to {step} ({e}): fanotify mount marks need CAP_SYS_ADMIN in the initial \
             user namespace, and the runner is not root"
        ),
        Some(libc::ENOSYS) => {
            format!("failed to {step} ({e}): this kernel has no fanotify (CONFIG_FANOTIFY)")
        }
        _ => format!("failed to {step} ({e})"),
    }
}

/// Mount points (as init sees them) of the mounts whose opens are
/// undeclared inputs: all but the working directory and what lies under
/// it, and [`NOT_INPUTS`].
fn input_mounts(mountinfo: &str, working_directory: &Path) -> Vec<PathBuf> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let Some(field) = line.split_whitespace().nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(crate::cgroup::mountinfo::unescape(field));
        let excluded = mount_point.starts_with(working_directory)
            || NOT_INPUTS.iter().any(|p| mount_point.starts_with(p));
        if !excluded && !mounts.contains(&mount_point) {
            mounts.push(mount_point);
        }
    }
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
700 650 0:90 / / ro,nosuid,nodev - tmpfs corral rw,size=1024k
701 700 8:1 /usr /usr ro,nosuid,nodev,relatime - ext4 /dev/sda1 rw
702 701 0:91 / /usr/local\\040tools ro,nosuid,nodev - tmpfs t rw
703 700 8:1 /etc /etc ro,nosuid,nodev,relatime - ext4 /dev/sda1 rw
704 700 8:1 /srv/roots/7 /build rw,nosuid,nodev,relatime - ext4 /dev/sda1 rw
705 704 0:92 / /build/out rw - tmpfs t rw
706 700 0:93 / /proc rw,nosuid,nodev,noexec - proc proc rw
707 700 0:94 / /dev ro,nosuid - tmpfs tmpfs rw
708 707 0:95 / /dev/shm rw - tmpfs tmpfs rw
709 700 0:96 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw
";

    #[test]
    fn every_mount_but_the_input_root_proc_dev_and_tmp_is_marked() {
        assert_eq!(
            input_mounts(MOUNTINFO, Path::new("/build")),
            [
                PathBuf::from("/"),
                PathBuf::from("/usr"),
                PathBuf::from("/usr/local tools"),
                PathBuf::from("/etc"),
            ]
        );
    }

    #[test]
    fn a_capped_report_says_so_and_an_unavailable_one_says_why() {
        let capped = UndeclaredInputs::Collected {
            paths: vec![PathBuf::from("/etc/hostname")],
            total: 3,
            overflowed: true,
        };
        let text = capped.text().unwrap();
        assert!(
            text.starts_with("undeclared inputs: 3 files opened outside the input root\n"),
            "{text}"
        );
        assert!(
            text.contains("(capped: the first 1 in sorted order"),
            "{text}"
        );
        assert!(
            text.contains("(incomplete: some opens were not recorded"),
            "{text}"
        );
        assert!(text.ends_with("\n/etc/hostname\n"), "{text}");
        let why = why_unavailable("mark", &io::Error::from_raw_os_error(libc::EPERM));
        assert!(why.contains("CAP_SYS_ADMIN"), "{why}");
        let why = why_unavailable("create", &io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(why.contains("no fanotify (CONFIG_FANOTIFY)"), "{why}");
        assert_eq!(UndeclaredInputs::Off.text(), None);
    }
}
