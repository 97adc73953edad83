//! Dropping every privilege before exec: capabilities (bounding, ambient,
//! effective, permitted, inheritable), the securebits that would let root
//! regain them, resource limits, and `no_new_privs`.
//!
//! Order matters: the bounding set can only be dropped while
//! CAP_SETPCAP is held, so it goes first, and the securebits are locked
//! before the capability sets are cleared.

use std::io;

use crate::policy::Limits;
use crate::report::Stage;
use crate::sys;

// From linux/securebits.h: root gains no capabilities by exec or setuid,
// and the choice is locked.
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

/// The highest capability number the running kernel knows, read once by
/// the caller (reading /proc after pivot_root would see the sandbox's).
pub fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Sets the policy's resource limits on the calling process (never above
/// the limits it already has).
pub fn set_rlimits(limits: &Limits) -> Result<(), (Stage, io::Error)> {
    let at = |e| (Stage::Rlimits, e);
    // No core dumps: they would land in the input root and fill disks.
    sys::lower_rlimit(libc::RLIMIT_CORE, 0).map_err(at)?;
    sys::lower_rlimit(libc::RLIMIT_NOFILE, limits.open_files).map_err(at)?;
    // One file can never take more than the whole disk limit: a single
    // write, truncate or fallocate past it fails at once with EFBIG,
    // rather than being seen by the next walk (disk.rs).
    let file_size = limits.file_size_bytes.min(limits.disk_max_bytes);
    sys::lower_rlimit(libc::RLIMIT_FSIZE, file_size).map_err(at)
}

/// Drops every capability and sets no_new_privs.
pub fn drop_all(last_cap: u32) -> Result<(), (Stage, io::Error)> {
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    sys::prctl(libc::PR_SET_SECUREBITS, bits, 0).map_err(|e| (Stage::SecureBits, e))?;
    for cap in 0..=last_cap {
        match sys::prctl(libc::PR_CAPBSET_DROP, cap.into(), 0) {
            Ok(_) => {}
            // A number this kernel does not know: nothing to drop.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err((Stage::DropBoundingSet, e)),
        }
    }
    match sys::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    ) {
        Ok(_) => {}
        // Kernels before 4.3 have no ambient set.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err((Stage::DropCapabilities, e)),
    }
    sys::clear_capability_sets().map_err(|e| (Stage::DropCapabilities, e))?;
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(|e| (Stage::NoNewPrivs, e))?;
    Ok(())
}
