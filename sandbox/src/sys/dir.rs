//! Directories read through descriptors: `openat`, `fstatat` and
//! `readdir` relative to an open directory, so a tree of any depth can be
//! walked (a path longer than PATH_MAX is never built) and a component
//! swapped for a symlink is never followed.
//!
//! Unlike the rest of `sys`, these allocate: they run in the supervisor,
//! never between fork and exec.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr::NonNull;

use super::check;

/// `struct btrfs_ioctl_qgroup_limit_args` of <linux/btrfs.h>: a qgroup id
/// and its `struct btrfs_qgroup_limit`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `_IOR(BTRFS_IOCTL_MAGIC, 43, struct btrfs_ioctl_qgroup_limit_args)`.
const BTRFS_IOC_QGROUP_LIMIT: libc::c_ulong = 0x8030_942B;
const BTRFS_QGROUP_LIMIT_MAX_EXCL: u64 = 1 << 1;
const _: () = assert!(std::mem::size_of::<QgroupLimitArgs>() == 48);

/// An open directory stream (`DIR *`), closed on drop.
#[derive(Debug)]
pub struct Dir {
    stream: NonNull<libc::DIR>,
}

// SAFETY: the stream is owned by this value alone and libc's DIR has no
// thread affinity; moving it to another thread is sound.
unsafe impl Send for Dir {}

/// What `fstatat` says of an entry, the fields the disk watch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub uid: u32,
    pub mode: u32,
    /// 512-byte units, whatever the file system's block size.
    pub blocks: u64,
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

impl Dir {
    /// Opens the directory `path`, a path the caller chose (symlinks in it
    /// are followed, as the sandbox's bind of it does).
    pub fn open(path: &CStr) -> io::Result<Dir> {
        // SAFETY: path is NUL-terminated; the flags create nothing.
        let fd = check(unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: open succeeded, the descriptor is ours.
        Dir::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Opens the subdirectory `name` of this one, never through a symlink
    /// (ELOOP or ENOTDIR if `name` is one now).
    pub fn open_at(&self, name: &CStr) -> io::Result<Dir> {
        // SAFETY: the stream is open, so its descriptor is; name is
        // NUL-terminated; the flags create nothing.
        let fd = check(unsafe {
            libc::openat(
                libc::dirfd(self.stream.as_ptr()),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: openat succeeded, the descriptor is ours.
        Dir::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Dir> {
        use std::os::fd::IntoRawFd;
        let raw = fd.into_raw_fd();
        // SAFETY: raw is an open directory descriptor we own; on success
        // the stream owns it.
        match NonNull::new(unsafe { libc::fdopendir(raw) }) {
            Some(stream) => Ok(Dir { stream }),
            None => {
                let err = io::Error::last_os_error();
                // SAFETY: fdopendir failed, so the descriptor is still ours.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                Err(err)
            }
        }
    }

    /// `fstatat(name, AT_SYMLINK_NOFOLLOW)`: the entry itself, a symlink
    /// included.
    pub fn stat_at(&self, name: &CStr) -> io::Result<Stat> {
        // SAFETY: stat is plain old data; zeroed is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open, name NUL-terminated, st valid
        // for writes.
        check(unsafe {
            libc::fstatat(
                libc::dirfd(self.stream.as_ptr()),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
        Ok(Stat {
            uid: st.st_uid,
            mode: st.st_mode,
            blocks: st.st_blocks.max(0) as u64,
        })
    }

    /// The `f_type` magic of the file system holding this directory.
    pub fn fs_type(&self) -> io::Result<i64> {
        // SAFETY: statfs is plain old data; zeroed is valid.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open; st is valid for writes.
        check(unsafe { libc::fstatfs(libc::dirfd(self.stream.as_ptr()), &mut st) })?;
        Ok(st.f_type as i64)
    }

    /// The stream's descriptor, for tests that build trees through it.
    #[cfg(test)]
    pub fn raw_fd(&self) -> libc::c_int {
        // SAFETY: the stream is open.
        unsafe { libc::dirfd(self.stream.as_ptr()) }
    }

    /// The inode number of this directory.
    pub fn inode(&self) -> io::Result<u64> {
        // SAFETY: stat is plain old data; zeroed is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the descriptor is open; st is valid for writes.
        check(unsafe { libc::fstat(libc::dirfd(self.stream.as_ptr()), &mut st) })?;
        Ok(st.st_ino)
    }

    /// Limits the exclusive bytes of the btrfs subvolume this directory
    /// is the root of (its qgroup `0/<id>`): past it, writes and
    /// allocations in it fail with EDQUOT. ENOTCONN if the file system
    /// has quotas off; EPERM without CAP_SYS_ADMIN.
    pub fn limit_btrfs_subvolume(&self, max_exclusive_bytes: u64) -> io::Result<()> {
        let mut args = QgroupLimitArgs {
            // 0: the qgroup of the subvolume the descriptor is in.
            qgroupid: 0,
            flags: BTRFS_QGROUP_LIMIT_MAX_EXCL,
            max_rfer: 0,
            max_excl: max_exclusive_bytes,
            rsv_rfer: 0,
            rsv_excl: 0,
        };
        // SAFETY: the descriptor is open; args is the struct this ioctl
        // number encodes (48 bytes), valid for reads and writes.
        check(unsafe {
            libc::ioctl(
                libc::dirfd(self.stream.as_ptr()),
                BTRFS_IOC_QGROUP_LIMIT,
                &mut args,
            )
        })
        .map(drop)
    }

    /// The next entry's name, `.` and `..` left out; `None` at the end.
    pub fn next_name(&mut self) -> Option<io::Result<CString>> {
        loop {
            // SAFETY: errno is thread-local; readdir sets it only on error,
            // so it is cleared first to tell the end from a failure.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: the stream is open and used by this thread only.
            let entry = unsafe { libc::readdir64(self.stream.as_ptr()) };
            if entry.is_null() {
                let err = io::Error::last_os_error();
                return (err.raw_os_error() != Some(0)).then_some(Err(err));
            }
            // SAFETY: readdir returned an entry whose d_name is a
            // NUL-terminated string, valid until the next readdir; it is
            // copied out at once.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                return Some(Ok(name.to_owned()));
            }
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: the stream is open and closed only here.
        unsafe { libc::closedir(self.stream.as_ptr()) };
    }
}
