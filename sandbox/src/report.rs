//! What the sandbox's processes tell the caller, over a pipe.
//!
//! Between fork and exec nothing may log, so each step that fails writes a
//! fixed-size record (the stage and the errno) and exits; the caller turns
//! it into a typed error. Records are 12 bytes, below PIPE_BUF, so writes
//! from several processes never interleave.

use std::fmt;
use std::os::fd::BorrowedFd;

use crate::sys;

/// A setup step done inside the sandbox, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Stage {
    Unshare = 1,
    WaitForMaps,
    SetIds,
    UnshareCgroup,
    ForkInit,
    PrivateMounts,
    OpenBindSource,
    MountRoot,
    BindMount,
    RemountReadOnly,
    MountProc,
    MountDev,
    MountTmp,
    PivotRoot,
    DetachOldRoot,
    Hostname,
    Loopback,
    LimitUserNamespaces,
    ForkAction,
    Stdio,
    Chdir,
    Rlimits,
    SecureBits,
    DropBoundingSet,
    DropCapabilities,
    NoNewPrivs,
    Landlock,
    Seccomp,
    Exec,
    Reap,
    DropGroups,
    ParentDeath,
    OpenInputRoot,
    WaitForWatch,
    TakeImage,
    JoinCgroup,
}

impl Stage {
    const ALL: [Stage; 36] = [
        Stage::Unshare,
        Stage::WaitForMaps,
        Stage::SetIds,
        Stage::UnshareCgroup,
        Stage::ForkInit,
        Stage::PrivateMounts,
        Stage::OpenBindSource,
        Stage::MountRoot,
        Stage::BindMount,
        Stage::RemountReadOnly,
        Stage::MountProc,
        Stage::MountDev,
        Stage::MountTmp,
        Stage::PivotRoot,
        Stage::DetachOldRoot,
        Stage::Hostname,
        Stage::Loopback,
        Stage::LimitUserNamespaces,
        Stage::ForkAction,
        Stage::Stdio,
        Stage::Chdir,
        Stage::Rlimits,
        Stage::SecureBits,
        Stage::DropBoundingSet,
        Stage::DropCapabilities,
        Stage::NoNewPrivs,
        Stage::Landlock,
        Stage::Seccomp,
        Stage::Exec,
        Stage::Reap,
        Stage::DropGroups,
        Stage::ParentDeath,
        Stage::OpenInputRoot,
        Stage::WaitForWatch,
        Stage::TakeImage,
        Stage::JoinCgroup,
    ];

    fn from_i32(value: i32) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as i32 == value)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Stage::Unshare => "creating the namespaces",
            Stage::WaitForMaps => "waiting for the id maps",
            Stage::SetIds => "switching to the sandbox's uid and gid",
            Stage::UnshareCgroup => "creating the cgroup namespace",
            Stage::ForkInit => "starting the pid namespace's init",
            Stage::PrivateMounts => "making mounts private",
            Stage::OpenBindSource => "opening a path to bind",
            Stage::MountRoot => "mounting the tmpfs root",
            Stage::BindMount => "bind-mounting a path",
            Stage::RemountReadOnly => "remounting a bind read-only",
            Stage::MountProc => "mounting /proc",
            Stage::MountDev => "populating /dev",
            Stage::MountTmp => "mounting /tmp",
            Stage::PivotRoot => "pivoting to the new root",
            Stage::DetachOldRoot => "detaching the old root",
            Stage::Hostname => "setting the hostname",
            Stage::Loopback => "bringing loopback up",
            Stage::LimitUserNamespaces => "forbidding nested user namespaces",
            Stage::ForkAction => "starting the action",
            Stage::Stdio => "connecting stdin, stdout and stderr",
            Stage::Chdir => "entering the working directory",
            Stage::Rlimits => "setting resource limits",
            Stage::SecureBits => "locking the securebits",
            Stage::DropBoundingSet => "dropping the capability bounding set",
            Stage::DropCapabilities => "dropping capabilities",
            Stage::NoNewPrivs => "setting no_new_privs",
            Stage::Landlock => "installing the landlock ruleset",
            Stage::Seccomp => "installing the seccomp filter",
            Stage::Exec => "executing the command",
            Stage::Reap => "waiting for the action",
            Stage::DropGroups => "dropping the supplementary groups",
            Stage::ParentDeath => "tying the sandbox's life to its caller's",
            Stage::OpenInputRoot => "opening the input root",
            Stage::WaitForWatch => "waiting for the caller to watch the mounts",
            Stage::TakeImage => "taking the image's entries",
            Stage::JoinCgroup => "joining the action's cgroup",
        };
        f.write_str(text)
    }
}

/// One message from the sandbox's processes to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// The first child has created its namespaces and waits for id maps.
    Unshared,
    /// A step failed with this errno; the sender exits.
    Failed { stage: Stage, errno: i32 },
    /// The action exited with this code.
    Exited(i32),
    /// A signal ended the action.
    Signaled(i32),
    /// How far landlock could be enforced.
    Landlock(LandlockState),
    /// Init started, with this pid in the caller's pid namespace (sent by
    /// setup when the caller watches the action's opens).
    InitStarted(i32),
    /// Init has built the file system and waits for the caller to watch
    /// it before forking the action.
    Mounted,
}

/// How far the landlock ruleset was enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LandlockState {
    /// The kernel has no landlock (or the policy turned it off).
    NotEnforced,
    /// Enforced with the rights this kernel's ABI knows.
    PartiallyEnforced,
    /// Every requested right is enforced.
    FullyEnforced,
}

const SIZE: usize = 12;

impl Record {
    fn encode(self) -> [u8; SIZE] {
        let (tag, a, b): (i32, i32, i32) = match self {
            Record::Unshared => (1, 0, 0),
            Record::Failed { stage, errno } => (2, stage as i32, errno),
            Record::Exited(code) => (3, code, 0),
            Record::Signaled(sig) => (4, sig, 0),
            Record::Landlock(state) => (5, state as i32, 0),
            Record::InitStarted(pid) => (6, pid, 0),
            Record::Mounted => (7, 0, 0),
        };
        let mut out = [0u8; SIZE];
        out[0..4].copy_from_slice(&tag.to_le_bytes());
        out[4..8].copy_from_slice(&a.to_le_bytes());
        out[8..12].copy_from_slice(&b.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; SIZE]) -> Option<Record> {
        let word =
            |i: usize| i32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (a, b) = (word(4), word(8));
        Some(match word(0) {
            1 => Record::Unshared,
            2 => Record::Failed {
                stage: Stage::from_i32(a)?,
                errno: b,
            },
            3 => Record::Exited(a),
            4 => Record::Signaled(a),
            5 => Record::Landlock(match a {
                0 => LandlockState::NotEnforced,
                1 => LandlockState::PartiallyEnforced,
                2 => LandlockState::FullyEnforced,
                _ => return None,
            }),
            6 => Record::InitStarted(a),
            7 => Record::Mounted,
            _ => return None,
        })
    }

    /// Sends the record; errors are ignored because the sender has no one
    /// else to tell (the caller treats a missing record as a failure).
    pub fn send(self, fd: BorrowedFd<'_>) {
        let _ = sys::write_all(fd, &self.encode());
    }
}

/// Reassembles records from the bytes read off the pipe.
#[derive(Debug, Default)]
pub struct RecordReader {
    pending: Vec<u8>,
}

impl RecordReader {
    /// Adds bytes read from the pipe and returns the complete records.
    /// Unknown records are dropped: they can only come from a bug.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Record> {
        self.pending.extend_from_slice(bytes);
        let whole = self.pending.len() / SIZE * SIZE;
        let records = self.pending[..whole]
            .chunks_exact(SIZE)
            .filter_map(|c| {
                c.try_into()
                    .ok()
                    .and_then(|c: &[u8; SIZE]| Record::decode(c))
            })
            .collect();
        self.pending.drain(..whole);
        records
    }
}

/// Sends a failure record for `stage` with the error's errno, then exits.
pub fn fail(fd: BorrowedFd<'_>, stage: Stage, err: &std::io::Error) -> ! {
    Record::Failed {
        stage,
        errno: err.raw_os_error().unwrap_or(libc::EIO),
    }
    .send(fd);
    sys::exit_now(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_round_trips_even_when_split() {
        let records = [
            Record::Unshared,
            Record::Failed {
                stage: Stage::Seccomp,
                errno: libc::EPERM,
            },
            Record::Exited(3),
            Record::Signaled(9),
            Record::Landlock(LandlockState::PartiallyEnforced),
            Record::InitStarted(4242),
            Record::Mounted,
        ];
        let bytes: Vec<u8> = records.iter().flat_map(|r| r.encode()).collect();
        let mut reader = RecordReader::default();
        let mut got = Vec::new();
        for chunk in bytes.chunks(5) {
            got.extend(reader.push(chunk));
        }
        assert_eq!(got, records);
    }

    #[test]
    fn every_stage_decodes_to_itself() {
        for stage in Stage::ALL {
            assert_eq!(Stage::from_i32(stage as i32), Some(stage));
        }
    }
}
