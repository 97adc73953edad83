//! What a grant may allow: one word per kind of call, as operators write
//! them in the grants file.

use std::fmt;
use std::str::FromStr;

/// A permission a grant gives on the instance names it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// `Execute`: queue actions.
    Execute,
    /// Read blobs: FindMissingBlobs, BatchReadBlobs, GetTree, ByteStream Read.
    CasRead,
    /// Write blobs: BatchUpdateBlobs, ByteStream Write.
    CasWrite,
    /// Read Action Cache entries.
    AcRead,
    /// Write Action Cache entries. Only workers need it: a client that may
    /// write results can poison what every other client of the instance
    /// name gets.
    AcWrite,
    /// See, wait on and cancel the operations this caller started.
    OperationsOwn,
    /// See, wait on and cancel every operation of the instance name.
    OperationsAll,
    /// Drains and TerminateWorkers: take workers out of service.
    Admin,
    /// Take actions and report their results over the worker protocol.
    Worker,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::Execute,
        Permission::CasRead,
        Permission::CasWrite,
        Permission::AcRead,
        Permission::AcWrite,
        Permission::OperationsOwn,
        Permission::OperationsAll,
        Permission::Admin,
        Permission::Worker,
    ];

    /// The word for it in the grants file and in refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Execute => "execute",
            Permission::CasRead => "cas-read",
            Permission::CasWrite => "cas-write",
            Permission::AcRead => "ac-read",
            Permission::AcWrite => "ac-write",
            Permission::OperationsOwn => "operations-own",
            Permission::OperationsAll => "operations-all",
            Permission::Admin => "admin",
            Permission::Worker => "worker",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no permission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a permission (one of execute, cas-read, cas-write, ac-read, ac-write, operations-own, operations-all, admin, worker)")]
pub struct UnknownPermission(pub String);

impl FromStr for Permission {
    type Err = UnknownPermission;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == word)
            .ok_or_else(|| UnknownPermission(word.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_reads_back_from_its_word() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
        }
        assert!("Execute".parse::<Permission>().is_err());
        assert!("".parse::<Permission>().is_err());
    }
}
