//! The disk limit: what an action has written into its input root.
//!
//! The input root is a directory of the worker's disk (hardlinks from its
//! file cache), so no cgroup bounds it. Two things bound it here (see
//! docs/decisions/0006 and 0007):
//!
//! - The kernel, for one file: RLIMIT_FSIZE is lowered to the disk limit
//!   (`privileges.rs`), so a single write, `truncate` or `fallocate` past
//!   it fails at once with EFBIG.
//! - The kernel, for the sum, where the file system offers it: an input
//!   root that is a btrfs subvolume on a file system with quotas gets a
//!   qgroup limit on its exclusive bytes ([`bound_by_kernel`]), so writes
//!   past the limit fail at once with EDQUOT. Elsewhere (ext4 and XFS
//!   without quota support in the kernel, or a plain directory) the walk
//!   below is all there is; it runs in both cases, for entries and
//!   unlinked files.
//! - The supervisor, for the sum: it walks the tree from time to time and
//!   adds up the blocks, and counts the entries, of what the action owns
//!   there: the host uid the sandbox maps the action to. The worker's
//!   inputs belong to the worker, so they do not count, except when the
//!   sandbox runs without root and the action gets the caller's own uid
//!   (then everything counts, an overestimate).
//!
//! The walk goes by directory descriptors (`openat`, `fstatat`), so no
//! depth hides anything, and it skips only what vanished while it looked.
//! What it cannot read otherwise (a directory the action made unreadable
//! to a supervisor without root, more nested directories than descriptors)
//! fails the check: an action whose use cannot be measured is stopped as
//! if over the limit.
//!
//! A file the action unlinked but still holds open is invisible to the
//! walk yet takes disk until closed, so the walk also looks through the
//! open descriptors of every process in the action's pid namespace and
//! counts the unlinked files it owns on the input root's file system.
//!
//! A walk costs a stat per entry, so the next one waits ten times as long
//! as the last took, and at least [`MIN_INTERVAL`]: the check never takes
//! more than a tenth of a core, whatever the tree's size. A walk stops as
//! soon as it has seen more than a limit, so its cost is bounded by the
//! limits.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::sys::dir::Dir;

/// Shortest time between two walks: how far past the limit an action
/// writing fast may get (about a second of its write speed).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// A walk's share of the time between walks, at most: 1 in 10.
const INTERVAL_PER_WALK: u32 = 10;

/// What an action may leave in its input root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimit {
    /// `limits.disk_max_bytes`: bytes allocated.
    pub bytes: u64,
    /// `limits.disk_max_entries`: files, directories and symlinks.
    pub entries: u64,
}

/// What a walk found the action owns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Bytes allocated (st_blocks), a hardlink at each of its names.
    pub bytes: u64,
    /// Files, directories and symlinks (each name once).
    pub entries: u64,
}

impl Written {
    /// Which limit this is past, if any.
    pub fn past(&self, limit: DiskLimit) -> Option<Excess> {
        if self.bytes > limit.bytes {
            Some(Excess::Bytes { limit: limit.bytes })
        } else if self.entries > limit.entries {
            Some(Excess::Entries {
                limit: limit.entries,
            })
        } else {
            None
        }
    }
}

/// Why the disk watch stopped an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Excess {
    /// More than `limits.disk_max_bytes` allocated.
    Bytes { limit: u64 },
    /// More than `limits.disk_max_entries` files, directories, symlinks.
    Entries { limit: u64 },
    /// The walk could not read an entry, so the use is unknown.
    Unmeasurable { entry: String, errno: i32 },
}

impl fmt::Display for Excess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Excess::Bytes { limit } => write!(
                f,
                "wrote more than {limit} bytes into its input root (limits.disk_max_bytes)"
            ),
            Excess::Entries { limit } => write!(
                f,
                "made more than {limit} files, directories and symlinks in its input root \
                 (limits.disk_max_entries)"
            ),
            Excess::Unmeasurable { entry, errno } => write!(
                f,
                "left {entry:?} in its input root, which the disk watch cannot read ({}), so \
                 its disk use cannot be held to limits.disk_max_bytes",
                io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

/// An entry the walk could not read, for a reason other than its
/// vanishing.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {entry:?}, {depth} directories below the input root")]
pub struct Unreadable {
    pub entry: String,
    pub depth: usize,
    #[source]
    pub source: io::Error,
}

impl Unreadable {
    fn excess(&self) -> Excess {
        Excess::Unmeasurable {
            entry: self.entry.clone(),
            errno: self.source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Watches one action's input root against its limit.
#[derive(Debug)]
pub struct DiskWatch {
    root: PathBuf,
    uid: u32,
    limit: DiskLimit,
    next: Instant,
    /// The sandbox's setup process, whose children are the action's pid
    /// namespace.
    setup: libc::pid_t,
    /// That namespace, as /proc names it (`pid:[inode]`), and the input
    /// root's file system, once known.
    unlinked_scope: Option<(PathBuf, u64)>,
}

impl DiskWatch {
    /// Watches `root` for more than `limit` owned by `uid`, written by
    /// the processes under the setup process `setup`; the first walk is
    /// due one interval after `start`.
    pub fn new(
        root: PathBuf,
        uid: u32,
        limit: DiskLimit,
        setup: libc::pid_t,
        start: Instant,
    ) -> DiskWatch {
        DiskWatch {
            root,
            uid,
            limit,
            next: start + MIN_INTERVAL,
            setup,
            unlinked_scope: None,
        }
    }

    /// When the next walk is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Walks the tree if a walk is due at `now`; which limit the action
    /// is past, if any.
    pub fn over_limit(&mut self, now: Instant) -> Option<Excess> {
        if now < self.next {
            return None;
        }
        let walk = Instant::now();
        if self.unlinked_scope.is_none() {
            let link = format!("/proc/{}/ns/pid_for_children", self.setup);
            let namespace = std::fs::read_link(link).ok();
            let dev = std::fs::metadata(&self.root).ok().map(|m| m.dev());
            self.unlinked_scope = namespace.zip(dev);
        }
        let excess = match written_by(&self.root, self.uid, self.limit) {
            Ok(mut used) => {
                if let Some((namespace, dev)) = &self.unlinked_scope {
                    let held = held_unlinked(namespace, self.uid, *dev);
                    used.bytes = used.bytes.saturating_add(held);
                }
                used.past(self.limit)
            }
            Err(unreadable) => Some(unreadable.excess()),
        };
        let took = walk.elapsed();
        self.next = now.max(Instant::now()) + MIN_INTERVAL.max(took * INTERVAL_PER_WALK);
        excess
    }
}

/// Whether an error means the entry vanished (or was swapped for a file
/// or symlink) while the walk looked: nothing left to count there.
fn vanished(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
    )
}

/// A directory being walked, and its subdirectories not yet walked.
struct Frame {
    dir: Dir,
    depth: usize,
    subdirs: Vec<CString>,
}

/// What `uid` owns under `root`: bytes allocated to its files,
/// directories and symlinks (a hardlink at each of its names) and their
/// number. Symlinks are never followed and every directory is opened
/// relative to its parent, so depth hides nothing. Entries that vanish
/// while the walk looks are skipped; any other failure to read one is an
/// error. The walk stops early, with what it has counted, once that is
/// past `stop_past`.
pub fn written_by(root: &Path, uid: u32, stop_past: DiskLimit) -> Result<Written, Unreadable> {
    let unreadable = |entry: &OsStr, depth, source| Unreadable {
        entry: entry.to_string_lossy().into_owned(),
        depth,
        source,
    };
    let mut written = Written::default();
    let top = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| unreadable(root.as_os_str(), 0, io::ErrorKind::InvalidInput.into()))?;
    let top = match Dir::open(&top) {
        Ok(dir) => dir,
        Err(e) if vanished(&e) => return Ok(written),
        Err(e) => return Err(unreadable(root.as_os_str(), 0, e)),
    };
    let mut stack = vec![Frame {
        dir: top,
        depth: 0,
        subdirs: Vec::new(),
    }];
    read_entries(&mut stack[0], uid, stop_past, &mut written)?;
    while let Some(frame) = stack.last_mut() {
        if written.past(stop_past).is_some() {
            break;
        }
        let Some(name) = frame.subdirs.pop() else {
            stack.pop();
            continue;
        };
        let depth = frame.depth + 1;
        let opened = frame.dir.open_at(&name);
        if frame.subdirs.is_empty() {
            // Nothing more to open from the parent: close it before going
            // down, so a long chain of directories holds one descriptor,
            // not one per level.
            stack.pop();
        }
        let dir = match opened {
            Ok(dir) => dir,
            Err(e) if vanished(&e) => continue,
            Err(e) => return Err(unreadable(OsStr::from_bytes(name.as_bytes()), depth, e)),
        };
        stack.push(Frame {
            dir,
            depth,
            subdirs: Vec::new(),
        });
        let last = stack.len() - 1;
        read_entries(&mut stack[last], uid, stop_past, &mut written)?;
    }
    Ok(written)
}

/// Counts the entries of `frame`'s directory into `written` and notes its
/// subdirectories; stops once `written` is past `stop_past`.
fn read_entries(
    frame: &mut Frame,
    uid: u32,
    stop_past: DiskLimit,
    written: &mut Written,
) -> Result<(), Unreadable> {
    let depth = frame.depth;
    let unreadable = |entry: &[u8], source| Unreadable {
        entry: String::from_utf8_lossy(entry).into_owned(),
        depth,
        source,
    };
    while let Some(name) = frame.dir.next_name() {
        let name = name.map_err(|e| unreadable(b"a directory's entries", e))?;
        let stat = match frame.dir.stat_at(&name) {
            Ok(stat) => stat,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(unreadable(name.as_bytes(), e)),
        };
        if stat.uid == uid {
            // st_blocks is in 512-byte units, whatever the block size.
            written.bytes = written
                .bytes
                .saturating_add(stat.blocks.saturating_mul(512));
            written.entries += 1;
            if written.past(stop_past).is_some() {
                return Ok(());
            }
        }
        if stat.is_dir() {
            frame.subdirs.push(name);
        }
    }
    Ok(())
}

/// What bounds the sum of an input root in the kernel, beyond the
/// per-file rlimit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelBound {
    /// Nothing: the walk alone bounds the sum, about a second late.
    #[default]
    None,
    /// The input root is a btrfs subvolume on a file system with quotas:
    /// its qgroup's exclusive bytes are limited to `limits.disk_max_bytes`.
    BtrfsQgroup,
}

/// `f_type` of btrfs.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The inode number of every btrfs subvolume's root directory.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

/// Has the kernel bound what may be written under `root` to `bytes`, where
/// its file system offers a way: a btrfs subvolume on a file system with
/// quotas gets a limit on its qgroup's exclusive bytes (inputs reflinked
/// from the worker's cache share their extents, so they do not count).
/// Anything else, or a failure (quotas off, no CAP_SYS_ADMIN), leaves the
/// walk alone in charge: [`KernelBound::None`].
pub fn bound_by_kernel(root: &Path, bytes: u64) -> KernelBound {
    let Ok(path) = CString::new(root.as_os_str().as_bytes()) else {
        return KernelBound::None;
    };
    let Ok(dir) = Dir::open(&path) else {
        return KernelBound::None;
    };
    let subvolume = dir.fs_type().ok() == Some(BTRFS_SUPER_MAGIC)
        && dir.inode().ok() == Some(BTRFS_FIRST_FREE_OBJECTID);
    if subvolume && dir.limit_btrfs_subvolume(bytes).is_ok() {
        KernelBound::BtrfsQgroup
    } else {
        KernelBound::None
    }
}

/// How the disk limit is enforced for input roots on the file system of
/// `build_directory`, for the daemon's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    /// The file system's name (or its magic number).
    pub file_system: String,
}

impl Enforcement {
    /// Looks at the file system holding `build_directory`.
    pub fn of(build_directory: &Path) -> io::Result<Enforcement> {
        let path = CString::new(build_directory.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let magic = Dir::open(&path)?.fs_type()?;
        let file_system = match magic {
            0xEF53 => "ext4".to_owned(),
            0x5846_5342 => "xfs".to_owned(),
            BTRFS_SUPER_MAGIC => "btrfs".to_owned(),
            0x0102_1994 => "tmpfs".to_owned(),
            0x794C_7630 => "overlay".to_owned(),
            other => format!("{other:#x}"),
        };
        Ok(Enforcement { file_system })
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "disk limit: each file capped at limits.disk_max_bytes by RLIMIT_FSIZE; the sum \
             (limits.disk_max_bytes) and entries (limits.disk_max_entries) checked by walking \
             the input root at least {} s apart; ",
            MIN_INTERVAL.as_secs(),
        )?;
        if self.file_system == "btrfs" {
            write!(
                f,
                "the build directory is on btrfs: an input root that is a subvolume, on a file \
                 system with quotas enabled, also gets a qgroup limit (EDQUOT at once)"
            )?;
        } else {
            write!(
                f,
                "no kernel quota bounds the sum on the build directory's file system ({})",
                self.file_system
            )?;
        }
        write!(f, " (docs/decisions/0007)")
    }
}

/// Bytes of the files that processes in `pid_namespace` hold open after
/// unlinking them, owned by `uid` on the file system `dev`; each file
/// once, however many descriptors hold it.
pub fn held_unlinked(pid_namespace: &Path, uid: u32, dev: u64) -> u64 {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    for process in processes.flatten() {
        let dir = process.path();
        let is_pid = process
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid || std::fs::read_link(dir.join("ns/pid")).ok().as_deref() != Some(pid_namespace)
        {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // stat follows the descriptor's link to the open file itself.
            let Ok(meta) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if meta.is_file()
                && meta.nlink() == 0
                && meta.uid() == uid
                && meta.dev() == dev
                && seen.insert(meta.ino())
            {
                total = total.saturating_add(meta.blocks().saturating_mul(512));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_LIMIT: DiskLimit = DiskLimit {
        bytes: u64::MAX,
        entries: u64::MAX,
    };

    fn own_uid() -> u32 {
        std::fs::metadata("/proc/self").unwrap().uid()
    }

    #[test]
    fn counts_what_the_uid_owns_at_any_depth_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), vec![1u8; 256 << 10]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("usr")).unwrap();
        let used = written_by(dir.path(), own_uid(), NO_LIMIT).unwrap();
        // The root itself may be named through a symlink.
        let alias = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(dir.path(), alias.path().join("root")).unwrap();
        assert_eq!(
            written_by(&alias.path().join("root"), own_uid(), NO_LIMIT).unwrap(),
            used
        );
        // The file's 256 KiB, plus a few blocks of directories; /usr,
        // behind the symlink, not at all.
        assert!((256 << 10..1 << 20).contains(&used.bytes), "{used:?}");
        // a, b, c, f and the symlink.
        assert_eq!(used.entries, 5);
        let other = written_by(dir.path(), own_uid().wrapping_add(1), NO_LIMIT).unwrap();
        assert_eq!(other, Written::default());
        let gone = written_by(&dir.path().join("gone"), own_uid(), NO_LIMIT).unwrap();
        assert_eq!(gone, Written::default());
    }

    #[test]
    fn walks_wait_at_least_the_minimum_interval() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 64 << 10]).unwrap();
        let start = Instant::now();
        let limit = DiskLimit {
            bytes: 1024,
            entries: 100,
        };
        let mut watch = DiskWatch::new(dir.path().to_owned(), own_uid(), limit, 0, start);
        assert_eq!(watch.over_limit(start), None, "not due yet");
        assert_eq!(watch.due(), start + MIN_INTERVAL);
        assert_eq!(
            watch.over_limit(watch.due()),
            Some(Excess::Bytes { limit: 1024 })
        );
        assert!(watch.due() >= start + MIN_INTERVAL * 2);
    }

    #[test]
    fn counts_below_a_chain_deeper_than_path_max() {
        let dir = tempfile::tempdir().unwrap();
        // 1,500 levels of "dd/": 4,500 bytes of path, past PATH_MAX, so
        // only descriptors reach the bottom.
        let mut at = Dir::open(&CString::new(dir.path().as_os_str().as_bytes()).unwrap()).unwrap();
        let dd = CString::new("dd").unwrap();
        for _ in 0..1500 {
            mkdir_at(&at, &dd);
            at = at.open_at(&dd).unwrap();
        }
        let bottom = format!("/proc/self/fd/{}/f", dirfd(&at));
        std::fs::write(&bottom, vec![1u8; 1 << 20]).unwrap();
        let used = written_by(dir.path(), own_uid(), NO_LIMIT).unwrap();
        assert!(used.bytes >= 1 << 20, "{used:?}");
        assert_eq!(used.entries, 1501);
    }

    #[test]
    fn stops_past_the_entry_limit() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        let limit = DiskLimit {
            bytes: u64::MAX,
            entries: 10,
        };
        let used = written_by(dir.path(), own_uid(), limit).unwrap();
        assert_eq!(used.entries, 11, "stopped at the first entry past");
        assert_eq!(used.past(limit), Some(Excess::Entries { limit: 10 }));
    }

    fn dirfd(dir: &Dir) -> i32 {
        dir.raw_fd()
    }

    fn mkdir_at(dir: &Dir, name: &CString) {
        let path = format!("/proc/self/fd/{}/{}", dirfd(dir), name.to_str().unwrap());
        std::fs::create_dir(path).unwrap();
    }
}
