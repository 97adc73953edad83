//! The disk limit: what an action has written into its input root.
//!
//! The input root is a directory of the worker's disk (hardlinks from its
//! file cache), so no cgroup bounds it, and RLIMIT_FSIZE bounds only one
//! file. The supervisor walks the tree from time to time and sums the
//! blocks of what the action owns there: the host uid the sandbox maps
//! the action to. The worker's inputs belong to the worker, so they do
//! not count, except when the sandbox runs without root and the action
//! gets the caller's own uid (then everything counts, an overestimate).
//!
//! A file the action unlinked but still holds open is invisible to the
//! walk yet takes disk until closed, so the walk also looks through the
//! open descriptors of every process in the action's pid namespace and
//! counts the unlinked files it owns on the input root's file system.
//!
//! A walk costs a stat per entry, so the next one waits ten times as long
//! as the last took, and at least [`MIN_INTERVAL`]: the check never takes
//! more than a tenth of a core, whatever the tree's size.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Shortest time between two walks: how far past the limit an action
/// writing fast may get (about a second of its write speed).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// A walk's share of the time between walks, at most: 1 in 10.
const INTERVAL_PER_WALK: u32 = 10;

/// Watches one action's input root against its limit.
#[derive(Debug)]
pub struct DiskWatch {
    root: PathBuf,
    uid: u32,
    limit: u64,
    next: Instant,
    /// The sandbox's setup process, whose children are the action's pid
    /// namespace.
    setup: libc::pid_t,
    /// That namespace, as /proc names it (`pid:[inode]`), and the input
    /// root's file system, once known.
    unlinked_scope: Option<(PathBuf, u64)>,
}

impl DiskWatch {
    /// Watches `root` for more than `limit` bytes owned by `uid`, written
    /// by the processes under the setup process `setup`; the first walk
    /// is due one interval after `start`.
    pub fn new(
        root: PathBuf,
        uid: u32,
        limit: u64,
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

    /// Walks the tree if a walk is due at `now`; true if the action is
    /// over its limit.
    pub fn over_limit(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        let walk = Instant::now();
        if self.unlinked_scope.is_none() {
            let link = format!("/proc/{}/ns/pid_for_children", self.setup);
            let namespace = std::fs::read_link(link).ok();
            let dev = std::fs::metadata(&self.root).ok().map(|m| m.dev());
            self.unlinked_scope = namespace.zip(dev);
        }
        let mut used = written_by(&self.root, self.uid);
        if let Some((namespace, dev)) = &self.unlinked_scope {
            used = used.saturating_add(held_unlinked(namespace, self.uid, *dev));
        }
        let took = walk.elapsed();
        self.next = now.max(Instant::now()) + MIN_INTERVAL.max(took * INTERVAL_PER_WALK);
        used > self.limit
    }
}

/// Bytes allocated to the files, directories and symlinks under `root`
/// that `uid` owns; a hardlink counts at each of its names. Entries that
/// vanish or cannot be read while the action runs are skipped; symlinks
/// are never followed.
pub fn written_by(root: &Path, uid: u32) -> u64 {
    let mut total = 0u64;
    let mut directories = vec![root.to_owned()];
    while let Some(directory) = directories.pop() {
        let Ok(entries) = std::fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            // DirEntry::metadata does not follow a symlink.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.uid() == uid {
                // st_blocks is in 512-byte units, whatever the block size.
                total = total.saturating_add(meta.blocks().saturating_mul(512));
            }
            if meta.is_dir() {
                directories.push(entry.path());
            }
        }
    }
    total
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
        let used = written_by(dir.path(), own_uid());
        // The file's 256 KiB, plus a few blocks of directories; /usr,
        // behind the symlink, not at all.
        assert!((256 << 10..1 << 20).contains(&used), "{used}");
        assert_eq!(written_by(dir.path(), own_uid().wrapping_add(1)), 0);
        assert_eq!(written_by(&dir.path().join("gone"), own_uid()), 0);
    }

    #[test]
    fn walks_wait_at_least_the_minimum_interval() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 64 << 10]).unwrap();
        let start = Instant::now();
        let mut watch = DiskWatch::new(dir.path().to_owned(), own_uid(), 1024, 0, start);
        assert!(!watch.over_limit(start), "not due yet");
        assert_eq!(watch.due(), start + MIN_INTERVAL);
        assert!(watch.over_limit(watch.due()));
        assert!(watch.due() >= start + MIN_INTERVAL * 2);
    }
}
