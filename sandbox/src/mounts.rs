//! The action's file system: a read-only tmpfs root holding only the paths
//! the policy lists, the input root, /proc, a minimal /dev and a /tmp.
//!
//! The plan is computed by the caller (paths checked, strings prepared);
//! [`MountPlan::apply`] runs inside the sandbox's pid namespace init, in
//! the order `docs/sandbox.md` gives, and ends with `pivot_root`, so
//! nothing of the host is reachable afterwards.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::report::Stage;
use crate::sys;

/// Where the new root is assembled before `pivot_root`. Any existing
/// directory would do: the mount lands in the sandbox's private mount
/// namespace. Sources are opened before it is covered, so host paths under
/// it (a build directory in /tmp) stay reachable.
const STAGING: &str = "/tmp";

/// Device nodes bound from the host's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Symlinks in /dev that programs expect.
const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// One host path made visible inside.
#[derive(Debug, Clone)]
pub enum Entry {
    /// Bind-mount the host directory or file `source` at `target`.
    Bind {
        source: CString,
        target: PathBuf,
        writable: bool,
        /// Opened as the working directory the setup process entered
        /// before it left the caller's credentials (see
        /// [`MountPlan::input_root`]).
        from_working_directory: bool,
    },
    /// Recreate the host symlink at `target` (e.g. merged-/usr systems'
    /// `/bin -> usr/bin`), pointing where it points on the host.
    Symlink { target: PathBuf, points_to: PathBuf },
    /// An entry of a container image: cloned whole from `source` by the
    /// setup process while it can still reach it (see
    /// [`MountPlan::take_image`]), made read-only, nosuid and nodev while
    /// detached, then attached at `target`.
    Image { source: CString, target: PathBuf },
}

/// The image's entries as detached mount trees, in plan order, taken by
/// the setup process and attached by init ([`MountPlan::apply`]).
#[derive(Debug, Default)]
pub struct ImageTrees {
    trees: Vec<OwnedFd>,
    /// Whether `mount_setattr` restricted the trees while detached; before
    /// Linux 5.12 init remounts them once attached.
    restricted: bool,
}

/// Everything needed to build the root, prepared before forking.
#[derive(Debug, Clone)]
pub struct MountPlan {
    entries: Vec<Entry>,
    tmp_size_bytes: u64,
    with_network_namespace: bool,
}

/// Why a path of the policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MountPlanError {
    #[error("failed to inspect {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} contains a NUL byte")]
    Nul { path: PathBuf },
    #[error("{path} is not an absolute path inside the sandbox")]
    NotAbsolute { path: PathBuf },
}

fn c_path(path: &Path) -> Result<CString, MountPlanError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountPlanError::Nul {
        path: path.to_owned(),
    })
}

impl MountPlan {
    /// Plans the read-only host paths. Missing paths are skipped (a policy
    /// may list /lib64 for hosts that have it); symlinks are recreated.
    pub fn new(
        read_only_paths: &[PathBuf],
        tmp_size_bytes: u64,
        with_network_namespace: bool,
    ) -> Result<MountPlan, MountPlanError> {
        let mut entries = Vec::new();
        for path in read_only_paths {
            let meta = match std::fs::symlink_metadata(path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(MountPlanError::Inspect {
                        path: path.clone(),
                        source,
                    })
                }
            };
            if meta.file_type().is_symlink() {
                let points_to =
                    std::fs::read_link(path).map_err(|source| MountPlanError::Inspect {
                        path: path.clone(),
                        source,
                    })?;
                entries.push(Entry::Symlink {
                    target: path.clone(),
                    points_to,
                });
            } else {
                entries.push(Entry::Bind {
                    source: c_path(path)?,
                    target: path.clone(),
                    writable: false,
                    from_working_directory: false,
                });
            }
        }
        Ok(MountPlan {
            entries,
            tmp_size_bytes,
            with_network_namespace,
        })
    }

    /// The plan for one action: the policy's paths plus the input root,
    /// bound writable at `working_directory`.
    pub fn with_input_root(
        &self,
        input_root: &Path,
        working_directory: &Path,
    ) -> Result<MountPlan, MountPlanError> {
        if !working_directory.is_absolute() {
            return Err(MountPlanError::NotAbsolute {
                path: working_directory.to_owned(),
            });
        }
        let mut plan = self.clone();
        plan.entries.push(Entry::Bind {
            source: c_path(input_root)?,
            target: working_directory.to_owned(),
            writable: true,
            from_working_directory: true,
        });
        Ok(plan)
    }

    /// The plan with an unpacked container image as the root file system
    /// in place of the policy's host paths: each top-level entry of
    /// `image` mounted read-only, nosuid, nodev at `/<name>` (symlinks,
    /// such as merged-/usr's `bin -> usr/bin`, recreated), except the
    /// entries the sandbox makes itself (`proc`, `dev`, `tmp`) and the one
    /// the working directory lies in. Everything else (the tmpfs root,
    /// /proc, /dev, /tmp, the input root) is as without an image. Mounting
    /// entry by entry, not the tree as a whole, leaves the sandbox's own
    /// mount points on its tmpfs root: a read-only image has none to offer.
    pub fn with_image(
        &self,
        image: &Path,
        working_directory: &Path,
    ) -> Result<MountPlan, MountPlanError> {
        let inspect = |source| MountPlanError::Inspect {
            path: image.to_owned(),
            source,
        };
        let own = working_directory.components().nth(1).map(|c| c.as_os_str());
        let mut names: Vec<_> = std::fs::read_dir(image)
            .map_err(inspect)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(inspect)?;
        // The order binds are made in: stable, whatever the directory's.
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            if matches!(name.as_bytes(), b"proc" | b"dev" | b"tmp") || Some(name.as_os_str()) == own
            {
                continue;
            }
            let source = image.join(&name);
            let target = Path::new("/").join(&name);
            let meta = std::fs::symlink_metadata(&source).map_err(|source_err| {
                MountPlanError::Inspect {
                    path: source.clone(),
                    source: source_err,
                }
            })?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                let points_to =
                    std::fs::read_link(&source).map_err(|e| MountPlanError::Inspect {
                        path: source.clone(),
                        source: e,
                    })?;
                entries.push(Entry::Symlink { target, points_to });
            } else if kind.is_dir() || kind.is_file() {
                entries.push(Entry::Image {
                    source: c_path(&source)?,
                    target,
                });
            }
        }
        // The input root, if already added, stays.
        entries.extend(
            self.entries
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        Entry::Bind {
                            from_working_directory: true,
                            ..
                        }
                    )
                })
                .cloned(),
        );
        Ok(MountPlan {
            entries,
            tmp_size_bytes: self.tmp_size_bytes,
            with_network_namespace: self.with_network_namespace,
        })
    }

    /// The input root on the host, for the setup process to enter while it
    /// still has the caller's credentials. Its ancestors may be closed to
    /// the sandbox's id (a data directory under /root, or in a 0700
    /// temporary directory); a working directory needs no path to be
    /// searched again, and unshare moves it into the new mount namespace,
    /// where [`apply`](Self::apply) opens it as ".".
    pub fn input_root(&self) -> Option<&CStr> {
        self.entries.iter().find_map(|e| match e {
            Entry::Bind {
                source,
                from_working_directory: true,
                ..
            } => Some(source.as_c_str()),
            _ => None,
        })
    }

    /// Paths bound read-only, as seen inside (for landlock).
    pub fn read_only_targets(&self) -> impl Iterator<Item = &Path> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Bind {
                target,
                writable: false,
                ..
            }
            | Entry::Image { target, .. } => Some(target.as_path()),
            _ => None,
        })
    }

    /// Whether the plan mounts a container image's entries.
    pub fn has_image(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e, Entry::Image { .. }))
    }

    /// Clones each of the image's entries as a detached mount tree
    /// (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`) and makes it
    /// read-only, nosuid, nodev and private, submounts included, before
    /// it is attached anywhere. Runs in the setup process while it holds
    /// the privilege to reach the image: as root before it becomes the
    /// run's host ids, or, without root, in its new user namespace before
    /// the id maps (its host uid still the caller's). Opened later, as
    /// the action's host id, the image would need every directory above
    /// it searchable by others, which a data directory under /root is not.
    /// The descriptors never reach the action: init attaches them and
    /// closes them before it forks it.
    pub fn take_image(&self) -> io::Result<ImageTrees> {
        const MOUNT_ATTR_RDONLY: u64 = 0x1;
        const MOUNT_ATTR_NOSUID: u64 = 0x2;
        const MOUNT_ATTR_NODEV: u64 = 0x4;
        let mut taken = ImageTrees {
            trees: Vec::new(),
            restricted: true,
        };
        for entry in &self.entries {
            let Entry::Image { source, .. } = entry else {
                continue;
            };
            let tree = sys::clone_tree(source)?;
            if taken.restricted {
                match sys::set_tree_attributes(
                    tree.as_fd(),
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                    libc::MS_PRIVATE,
                ) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => taken.restricted = false,
                    Err(e) => return Err(e),
                }
            }
            taken.trees.push(tree);
        }
        Ok(taken)
    }

    /// Whether loopback must be brought up (a private network namespace).
    pub fn with_network_namespace(&self) -> bool {
        self.with_network_namespace
    }

    /// Builds the root and pivots into it. Runs in the sandbox's init
    /// process, single-threaded, with full capabilities in its own user
    /// namespace and none outside. `image` holds the trees
    /// [`take_image`](Self::take_image) took (none without an image).
    pub fn apply(&self, image: ImageTrees) -> Result<(), (Stage, io::Error)> {
        let at = |stage: Stage| move |e: io::Error| (stage, e);
        // Nothing mounted from here on may propagate back to the host.
        sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
            .map_err(at(Stage::PrivateMounts))?;

        // Open every source before STAGING is covered: a source may lie
        // beneath it. Binds then go through /proc/self/fd.
        let mut sources: Vec<Option<OwnedFd>> = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            sources.push(match entry {
                Entry::Bind {
                    source,
                    from_working_directory,
                    ..
                } => {
                    // The input root's own failure has its own stage, so
                    // the caller can name the path and the id.
                    let (path, stage) = if *from_working_directory {
                        (c".", Stage::OpenInputRoot)
                    } else {
                        (source.as_c_str(), Stage::OpenBindSource)
                    };
                    Some(sys::open_path(path).map_err(at(stage))?)
                }
                Entry::Symlink { .. } | Entry::Image { .. } => None,
            });
        }

        let staging = CString::new(STAGING).expect("constant without NUL");
        sys::mount(
            Some(c"corral"),
            &staging,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"mode=0755,size=1m"),
        )
        .map_err(at(Stage::MountRoot))?;
        let root = Path::new(STAGING);

        let restricted = image.restricted;
        let mut trees = image.trees.into_iter();
        for (entry, fd) in self.entries.iter().zip(&sources) {
            match (entry, fd) {
                (
                    Entry::Bind {
                        target, writable, ..
                    },
                    Some(fd),
                ) => bind(root, fd, target, *writable)?,
                (Entry::Symlink { target, points_to }, _) => {
                    let inside = inside(root, target);
                    make_parents(&inside).map_err(at(Stage::BindMount))?;
                    std::os::unix::fs::symlink(points_to, &inside).map_err(at(Stage::BindMount))?;
                }
                (Entry::Image { target, .. }, _) => {
                    let tree = trees.next().ok_or_else(|| {
                        (Stage::TakeImage, io::Error::from_raw_os_error(libc::EBADF))
                    })?;
                    attach(root, tree, target, restricted)?;
                }
                _ => {}
            }
        }
        drop(sources);

        mount_proc(root).map_err(at(Stage::MountProc))?;
        mount_dev(root).map_err(at(Stage::MountDev))?;
        mount_tmp(root, self.tmp_size_bytes).map_err(at(Stage::MountTmp))?;

        // The root itself becomes read-only: only the working directory,
        // /tmp and /dev/shm remain writable.
        sys::mount(
            None,
            &staging,
            None,
            libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )
        .map_err(at(Stage::RemountReadOnly))?;

        // pivot_root(".", ".") stacks the old root on the new one; detaching
        // it leaves the new root alone, with no path back to the host.
        sys::chdir(&staging).map_err(at(Stage::PivotRoot))?;
        sys::pivot_root(c".", c".").map_err(at(Stage::PivotRoot))?;
        sys::umount2(c".", libc::MNT_DETACH).map_err(at(Stage::DetachOldRoot))?;
        sys::chdir(c"/").map_err(at(Stage::DetachOldRoot))?;
        Ok(())
    }
}

/// `target` (absolute, as seen inside) under the staging root.
fn inside(root: &Path, target: &Path) -> PathBuf {
    root.join(target.strip_prefix("/").unwrap_or(target))
}

fn make_parents(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent),
        None => Ok(()),
    }
}

fn c(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Makes the mount point for `fd` (a directory or a file, as `fd` is)
/// at `target` inside; returns its path.
fn mount_point(root: &Path, fd: &OwnedFd, target: &Path) -> io::Result<CString> {
    let inside = inside(root, target);
    make_parents(&inside)?;
    let is_dir = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))?.is_dir();
    if is_dir {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&inside)?;
    } else {
        std::fs::File::create(&inside)?;
    }
    c(&inside)
}

/// Attaches an image entry's detached tree at `target` inside. It was
/// made read-only, nosuid, nodev and private while detached; before
/// Linux 5.12 (no `mount_setattr`, `restricted` false) that is done here,
/// once attached, as for a bind.
fn attach(
    root: &Path,
    tree: OwnedFd,
    target: &Path,
    restricted: bool,
) -> Result<(), (Stage, io::Error)> {
    let at = |stage: Stage| move |e: io::Error| (stage, e);
    let to = mount_point(root, &tree, target).map_err(at(Stage::BindMount))?;
    sys::move_mount(tree.as_fd(), &to).map_err(at(Stage::BindMount))?;
    if !restricted {
        sys::mount(None, &to, None, libc::MS_REC | libc::MS_PRIVATE, None)
            .map_err(at(Stage::RemountReadOnly))?;
        restrict(&tree, &to, false)?;
    }
    Ok(())
}

/// Binds `fd` (opened from `source`) at `target` inside, then remounts it
/// nosuid, nodev and, unless writable, read-only.
fn bind(
    root: &Path,
    fd: &OwnedFd,
    target: &Path,
    writable: bool,
) -> Result<(), (Stage, io::Error)> {
    let at = |stage: Stage| move |e: io::Error| (stage, e);
    let to = mount_point(root, fd, target).map_err(at(Stage::BindMount))?;
    let from =
        c(Path::new(&format!("/proc/self/fd/{}", fd.as_raw_fd()))).map_err(at(Stage::BindMount))?;
    sys::mount(Some(&from), &to, None, libc::MS_BIND | libc::MS_REC, None)
        .map_err(at(Stage::BindMount))?;
    restrict(fd, &to, writable)
}

/// Remounts the mount at `to` (whose source `fd` is) nosuid, nodev and,
/// unless writable, read-only, its submounts too.
fn restrict(fd: &OwnedFd, to: &CStr, writable: bool) -> Result<(), (Stage, io::Error)> {
    let at = |stage: Stage| move |e: io::Error| (stage, e);
    // In a user namespace, a remount must keep the flags the host locked on
    // the source mount (noexec, atime settings), or it fails with EPERM.
    let locked = sys::mount_flags(fd.as_fd()).map_err(at(Stage::RemountReadOnly))?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    for (st, ms) in [
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
        (libc::ST_RDONLY, libc::MS_RDONLY),
    ] {
        if locked & st != 0 {
            flags |= ms;
        }
    }
    sys::mount(None, to, None, flags, None).map_err(at(Stage::RemountReadOnly))?;
    if !writable {
        read_only_submounts(to).map_err(at(Stage::RemountReadOnly))?;
    }
    Ok(())
}

/// A remount changes one mount: the host's submounts under a read-only
/// path (a tmpfs under /usr/local, say) came along with `MS_REC` and would
/// stay writable. `mount_setattr` makes the whole tree read-only; kernels
/// before 5.12 lack it, and there each submount is remounted.
fn read_only_submounts(target: &CStr) -> io::Result<()> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    match sys::set_mount_attributes_recursively(
        target,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    ) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        other => return other,
    }
    let target = Path::new(std::ffi::OsStr::from_bytes(target.to_bytes()));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for mount_point in submounts(&mountinfo, target) {
        let path = c(&mount_point)?;
        let locked = {
            let fd = sys::open_path(&path)?;
            sys::mount_flags(fd.as_fd())?
        };
        let mut flags =
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        for (st, ms) in [
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ] {
            if locked & st != 0 {
                flags |= ms;
            }
        }
        sys::mount(None, &path, None, flags, None)?;
    }
    Ok(())
}

/// Mount points strictly below `target` in a mountinfo text (field 5,
/// with the kernel's octal escapes for space, tab, newline and backslash).
fn submounts(mountinfo: &str, target: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|p| p != target && p.starts_with(target))
        .collect()
}

fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// A fresh /proc for the new pid namespace: it shows only the action's
/// processes.
fn mount_proc(root: &Path) -> io::Result<()> {
    let dir = root.join("proc");
    mkdir(&dir, 0o555)?;
    sys::mount(
        Some(c"proc"),
        &c(&dir)?,
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// A minimal /dev: a few harmless devices bound from the host, the usual
/// symlinks, and /dev/shm as a tmpfs. Then read-only.
fn mount_dev(root: &Path) -> io::Result<()> {
    let dir = root.join("dev");
    mkdir(&dir, 0o755)?;
    let dev = c(&dir)?;
    sys::mount(
        Some(c"corral-dev"),
        &dev,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"mode=0755,size=64k"),
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let node = dir.join(name);
        std::fs::File::create(&node)?;
        sys::mount(Some(&c(&host)?), &c(&node)?, None, libc::MS_BIND, None)?;
    }
    for (name, points_to) in DEV_LINKS {
        std::os::unix::fs::symlink(points_to, dir.join(name))?;
    }
    let shm = dir.join("shm");
    mkdir(&shm, 0o1777)?;
    sys::mount(
        Some(c"corral-shm"),
        &c(&shm)?,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"mode=1777,size=64m"),
    )?;
    sys::mount(
        None,
        &dev,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"mode=0755,size=64k"),
    )
}

/// /tmp as a tmpfs of the policy's size. Its pages are charged to the
/// action's memory cgroup, so it cannot outgrow the memory limit either.
fn mount_tmp(root: &Path, size: u64) -> io::Result<()> {
    let dir = root.join("tmp");
    mkdir(&dir, 0o1777)?;
    let options = CString::new(format!("mode=1777,size={size}"))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::mount(
        Some(c"corral-tmp"),
        &c(&dir)?,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(&options),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_paths_are_skipped_and_symlinks_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        let missing = dir.path().join("missing");
        let plan = MountPlan::new(&[real.clone(), link.clone(), missing], 1 << 20, true).unwrap();
        assert_eq!(plan.entries.len(), 2);
        assert!(
            matches!(&plan.entries[0], Entry::Bind { target, writable: false, .. } if *target == real)
        );
        assert!(
            matches!(&plan.entries[1], Entry::Symlink { target, points_to } if *target == link && points_to == Path::new("real"))
        );
        assert_eq!(
            plan.read_only_targets().collect::<Vec<_>>(),
            [real.as_path()]
        );
    }

    #[test]
    fn submounts_are_found_below_the_target_only() {
        let mountinfo = "1 0 0:1 / / rw - ext4 /dev/root rw\n\
            2 1 0:2 / /tmp/usr rw - tmpfs x rw\n\
            3 2 0:3 / /tmp/usr/local/my\\040dir rw - tmpfs x rw\n\
            4 1 0:4 / /tmp/usrx rw - tmpfs x rw\n";
        assert_eq!(
            submounts(mountinfo, Path::new("/tmp/usr")),
            [PathBuf::from("/tmp/usr/local/my dir")]
        );
    }

    #[test]
    fn an_image_replaces_the_policys_paths_entry_by_entry() {
        let image = tempfile::tempdir().unwrap();
        for dir in ["usr", "etc", "proc", "dev", "tmp", "build", "opt"] {
            std::fs::create_dir(image.path().join(dir)).unwrap();
        }
        std::os::unix::fs::symlink("usr/bin", image.path().join("bin")).unwrap();
        std::fs::write(image.path().join(".marker"), "").unwrap();
        let policy = MountPlan::new(&[PathBuf::from("/usr"), PathBuf::from("/lib")], 1, true)
            .unwrap()
            .with_input_root(Path::new("/host/root"), Path::new("/build"))
            .unwrap();
        let plan = policy
            .with_image(image.path(), Path::new("/build"))
            .unwrap();
        let targets: Vec<_> = plan
            .entries
            .iter()
            .map(|e| match e {
                Entry::Bind {
                    target, writable, ..
                } => (target.clone(), *writable),
                Entry::Symlink { target, .. } | Entry::Image { target, .. } => {
                    (target.clone(), false)
                }
            })
            .collect();
        assert_eq!(
            targets,
            [
                (PathBuf::from("/.marker"), false),
                (PathBuf::from("/bin"), false),
                (PathBuf::from("/etc"), false),
                (PathBuf::from("/opt"), false),
                (PathBuf::from("/usr"), false),
                (PathBuf::from("/build"), true),
            ]
        );
        // The host's /usr is gone: /usr now comes from the image.
        assert!(plan.read_only_targets().all(|t| t != Path::new("/lib")));
        let usr = plan
            .entries
            .iter()
            .find_map(|e| match e {
                Entry::Image { source, target } if target == Path::new("/usr") => Some(source),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            usr.to_bytes(),
            image.path().join("usr").as_os_str().as_bytes()
        );
    }

    #[test]
    fn the_input_root_is_bound_writable_at_the_working_directory() {
        let plan = MountPlan::new(&[], 1, false).unwrap();
        let plan = plan
            .with_input_root(Path::new("/host/build/1/root"), Path::new("/build"))
            .unwrap();
        assert!(
            matches!(&plan.entries[0], Entry::Bind { target, writable: true, .. } if target == Path::new("/build"))
        );
        assert!(MountPlan::new(&[], 1, false)
            .unwrap()
            .with_input_root(Path::new("/x"), Path::new("build"))
            .is_err());
    }
}
