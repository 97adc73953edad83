//! The landlock ruleset: a second, kernel-enforced fence around the file
//! system, independent of the mount layout. Reading is allowed only under
//! the paths the policy binds read-only (and /proc, /dev); writing only in
//! the working directory, /tmp and /dev/shm.
//!
//! Rules bind to inodes, so the ruleset is built after `pivot_root`, in the
//! action process itself, just before exec (`restrict_self` applies to the
//! calling thread only). Paths are opened here, not by
//! `path_beneath_rules`, which silently skips paths it cannot open:
//! a path that cannot be opened is an error, never a missing rule.

use std::path::{Path, PathBuf};

use ::landlock::{
    Access, AccessFs, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};

use crate::report::LandlockState;

/// The ABI whose rights we ask for; older kernels get what they know
/// (best effort), and the outcome reports how much was enforced.
const TARGET_ABI: ABI = ABI::V6;

/// Why the ruleset could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("failed to open {path} for a landlock rule")]
    Open {
        path: PathBuf,
        #[source]
        source: ::landlock::PathFdError,
    },
    #[error("failed to build or install the landlock ruleset")]
    Ruleset(#[source] ::landlock::RulesetError),
}

/// The paths and rights of one action's ruleset.
#[derive(Debug, Clone)]
pub struct Rules {
    read_only: Vec<PathBuf>,
    writable: Vec<PathBuf>,
}

impl Rules {
    /// Read-only trees, and writable trees (the working directory).
    pub fn new<'a>(read_only: impl Iterator<Item = &'a Path>, working_directory: &Path) -> Rules {
        Rules {
            read_only: read_only.map(Path::to_owned).collect(),
            writable: vec![
                working_directory.to_owned(),
                PathBuf::from("/tmp"),
                PathBuf::from("/dev/shm"),
            ],
        }
    }

    /// Installs the ruleset on the calling thread.
    pub fn restrict_self(&self) -> Result<LandlockState, LandlockError> {
        let all = AccessFs::from_all(TARGET_ABI);
        let read = AccessFs::from_read(TARGET_ABI);
        let rule = |path: &Path, access: BitFlags<AccessFs>| {
            PathFd::new(path)
                .map(|fd| PathBeneath::new(fd, access))
                .map_err(|source| LandlockError::Open {
                    path: path.to_owned(),
                    source,
                })
        };
        let mut ruleset = Ruleset::default()
            .handle_access(all)
            .and_then(|r| r.scope(Scope::from_all(TARGET_ABI)))
            .and_then(Ruleset::create)
            .map_err(LandlockError::Ruleset)?;
        for path in &self.read_only {
            ruleset = ruleset
                .add_rule(rule(path, read)?)
                .map_err(LandlockError::Ruleset)?;
        }
        for path in &self.writable {
            ruleset = ruleset
                .add_rule(rule(path, all)?)
                .map_err(LandlockError::Ruleset)?;
        }
        // Listing directories anywhere is harmless: the root holds only
        // what the policy put there. `ls /` and path walks need it.
        ruleset = ruleset
            .add_rule(rule(Path::new("/"), AccessFs::ReadDir.into())?)
            .map_err(LandlockError::Ruleset)?;
        // /proc: the action reads its own entries (and writes a few, like
        // /proc/self/oom_score_adj); the pid namespace hides everyone else.
        let proc = AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::WriteFile;
        ruleset = ruleset
            .add_rule(rule(Path::new("/proc"), proc)?)
            .map_err(LandlockError::Ruleset)?;
        // /dev: read and write the few device nodes there (null, tty, ...).
        let dev = AccessFs::ReadFile | AccessFs::ReadDir | AccessFs::WriteFile | AccessFs::IoctlDev;
        ruleset = ruleset
            .add_rule(rule(Path::new("/dev"), dev)?)
            .map_err(LandlockError::Ruleset)?;
        let status = ruleset.restrict_self().map_err(LandlockError::Ruleset)?;
        Ok(match status.ruleset {
            RulesetStatus::FullyEnforced => LandlockState::FullyEnforced,
            RulesetStatus::PartiallyEnforced => LandlockState::PartiallyEnforced,
            RulesetStatus::NotEnforced => LandlockState::NotEnforced,
        })
    }
}
