//! Sandbox policies: what an action may see and use.
//!
//! A policy is data, kept in `policies/<name>.toml` and chosen per action
//! through the `corral-policy` platform property. `policies/README.md`
//! documents the schema; every field has a default that is the strict
//! choice, so an empty file is the tightest sandbox.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("failed to read policy {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse policy {path}")]
    Parse {
        path: PathBuf,
        // Boxed: toml's error is large and would bloat every Result.
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid policy {path}: {field} must be an absolute path, got {value:?}")]
    RelativePath {
        path: PathBuf,
        field: &'static str,
        value: PathBuf,
    },
    #[error("invalid policy {path}: {field} must be greater than zero")]
    Zero { path: PathBuf, field: &'static str },
}

/// Everything a sandbox allows one action.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Who the action runs as inside its user namespace.
    pub identity: Identity,
    /// The action's view of the file system.
    pub filesystem: Filesystem,
    /// What the action may reach over the network.
    pub network: Network,
    /// cgroup limits.
    pub limits: Limits,
    /// Kernel-enforced confinement beyond namespaces.
    pub confinement: Confinement,
    /// Changes to the default seccomp deny list.
    pub seccomp: SeccompPolicy,
    /// What the sandbox reports about a run besides how it ended.
    pub report: Reporting,
}

/// Reports the sandbox makes about each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reporting {
    /// List the files the action opened outside its input root (the host
    /// paths of `filesystem.read_only_paths`, or an image root), collected
    /// with fanotify mount marks; see `sandbox/src/access_report.rs`.
    /// Needs the runner to be root, else the report says it is
    /// unavailable. Default true; its cost per action is in
    /// docs/benchmarks.md (decision 0019).
    pub undeclared_inputs: bool,
}

impl Default for Reporting {
    fn default() -> Self {
        Self {
            undeclared_inputs: true,
        }
    }
}

/// Changes to the built-in seccomp deny list (see `sandbox/src/seccomp.rs`
/// for the list and why each entry is there). Names are system call names
/// as in `man 2 syscalls`; an unknown name is an error.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeccompPolicy {
    /// System calls to remove from the deny list.
    pub allow: Vec<String>,
    /// System calls to refuse in addition.
    pub deny: Vec<String>,
}

/// The action's uid and gid inside its user namespace. They are mapped to
/// an unprivileged host id that owns no files.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    /// uid inside the sandbox. Default 0: many toolchains expect root-like
    /// ownership of their build tree; it grants nothing outside.
    pub uid: u32,
    /// gid inside the sandbox. Default 0.
    pub gid: u32,
}

/// The action's file system: a tmpfs root holding only what is listed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filesystem {
    /// Where the input root is mounted, the same on every worker so that
    /// outputs that embed paths are reproducible. Default `/build`.
    pub working_directory: PathBuf,
    /// Host paths bound read-only, nosuid, nodev at the same path inside.
    /// Paths missing on the host are skipped (e.g. /lib64 on some arches).
    /// Default: none; the shipped policies list the toolchain paths.
    pub read_only_paths: Vec<PathBuf>,
    /// Size of the tmpfs mounted at /tmp, in bytes. Default 256 MiB.
    /// Files written there are charged to the action's memory limit.
    pub tmp_size_bytes: u64,
}

/// Network access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// Share the host's network namespace. Default false: the action gets
    /// a namespace with only loopback, so nothing of the host is reachable.
    pub allow_host_network: bool,
}

/// Resource limits, enforced by the action's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Memory limit in bytes (swap is always 0). Default 4 GiB.
    pub memory_max_bytes: u64,
    /// Most processes and threads alive at once. Default 1024; stops fork
    /// bombs without hindering parallel compilers.
    pub pids_max: u64,
    /// CPU bandwidth in thousandths of a CPU (1000 = one core). Default
    /// 0 = unlimited.
    pub cpu_millis: u64,
    /// Most open file descriptors per process (RLIMIT_NOFILE). Default 8192.
    pub open_files: u64,
    /// Largest file a process may write (RLIMIT_FSIZE), in bytes. Default
    /// 8 GiB: stops a runaway write from filling the worker's disk. The
    /// sandbox lowers it to `disk_max_bytes` when that is smaller, so one
    /// allocation past the disk limit fails at once (EFBIG).
    pub file_size_bytes: u64,
    /// Bytes of stdout, and of stderr, kept; the rest is discarded and the
    /// outcome says so. Default 64 MiB.
    pub output_max_bytes: u64,
    /// Bytes the action may write into its input root, on the worker's
    /// disk: what it owns there, summed about once a second (see
    /// `disk.rs`), and the most any one file may take at once (RLIMIT_FSIZE
    /// is lowered to it). Where the input root is a btrfs subvolume with
    /// quotas, also its qgroup's limit: writes past it fail with EDQUOT.
    /// Past it the action is killed and the outcome says so. Default
    /// 16 GiB.
    pub disk_max_bytes: u64,
    /// Files, directories and symlinks the action may make in its input
    /// root (inodes: empty ones cost no blocks, yet the file system has a
    /// fixed number), counted with `disk_max_bytes`. Default 1,048,576.
    pub disk_max_entries: u64,
}

/// seccomp and landlock settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Confinement {
    /// Refuse landlock's absence: when true, a kernel without landlock
    /// fails the action instead of running it with namespaces alone.
    /// Default false (logged), because Debian 12's kernel has only ABI 2.
    pub require_landlock: bool,
}

impl Default for Filesystem {
    fn default() -> Self {
        Self {
            working_directory: PathBuf::from("/build"),
            read_only_paths: Vec::new(),
            tmp_size_bytes: 256 << 20,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_max_bytes: 4 << 30,
            pids_max: 1024,
            cpu_millis: 0,
            open_files: 8192,
            file_size_bytes: 8 << 30,
            output_max_bytes: 64 << 20,
            disk_max_bytes: 16 << 30,
            disk_max_entries: 1 << 20,
        }
    }
}

/// The policies shipped in `policies/`, built into the binary so that a
/// farm needs no policy files to start.
pub const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../../policies/default.toml")),
    ("hermetic", include_str!("../../policies/hermetic.toml")),
    ("network", include_str!("../../policies/network.toml")),
];

impl Policy {
    /// The built-in policy `name` (`default`, `hermetic`, `network`).
    pub fn builtin(name: &str) -> Option<Result<Self, PolicyError>> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| Self::parse(text, Path::new(&format!("<built-in {n}>"))))
    }

    /// Reads and validates the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates policy text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|source| PolicyError::Parse {
            path: origin.to_owned(),
            source: Box::new(source),
        })?;
        policy.validate(origin)?;
        Ok(policy)
    }

    fn validate(&self, origin: &Path) -> Result<(), PolicyError> {
        let absolute = |field: &'static str, value: &Path| {
            if value.is_absolute() {
                Ok(())
            } else {
                Err(PolicyError::RelativePath {
                    path: origin.to_owned(),
                    field,
                    value: value.to_owned(),
                })
            }
        };
        absolute(
            "filesystem.working_directory",
            &self.filesystem.working_directory,
        )?;
        for path in &self.filesystem.read_only_paths {
            absolute("filesystem.read_only_paths", path)?;
        }
        let positive = |field: &'static str, value: u64| {
            if value > 0 {
                Ok(())
            } else {
                Err(PolicyError::Zero {
                    path: origin.to_owned(),
                    field,
                })
            }
        };
        positive("limits.memory_max_bytes", self.limits.memory_max_bytes)?;
        positive("limits.pids_max", self.limits.pids_max)?;
        positive("limits.open_files", self.limits.open_files)?;
        positive("limits.file_size_bytes", self.limits.file_size_bytes)?;
        positive("limits.disk_max_bytes", self.limits.disk_max_bytes)?;
        positive("limits.disk_max_entries", self.limits.disk_max_entries)?;
        positive("filesystem.tmp_size_bytes", self.filesystem.tmp_size_bytes)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_policy_is_the_strict_default() {
        let policy = parse("").unwrap();
        assert_eq!(policy, Policy::default());
        assert!(!policy.network.allow_host_network);
        assert!(policy.filesystem.read_only_paths.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("[network]\nallow_internet = true\n").unwrap_err();
        assert!(matches!(err, PolicyError::Parse { .. }), "{err}");
    }

    #[test]
    fn relative_bind_is_refused_with_the_field_named() {
        let err = parse("[filesystem]\nread_only_paths = [\"usr\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("filesystem.read_only_paths"),
            "{err}"
        );
    }

    #[test]
    fn zero_pids_limit_is_refused() {
        let err = parse("[limits]\npids_max = 0\n").unwrap_err();
        assert!(err.to_string().contains("limits.pids_max"), "{err}");
    }

    #[test]
    fn every_shipped_policy_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut seen = 0;
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Policy::load(&path).unwrap_or_else(|e| panic!("{e}: {:?}", e.source()));
                seen += 1;
            }
        }
        assert!(
            seen >= 2,
            "expected the shipped policies in {}",
            dir.display()
        );
    }

    use std::error::Error as _;

    #[test]
    fn every_builtin_policy_is_the_shipped_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        for (name, _) in BUILTIN {
            let built_in = Policy::builtin(name).unwrap().unwrap();
            let file = Policy::load(&dir.join(format!("{name}.toml"))).unwrap();
            assert_eq!(built_in, file, "{name}");
        }
        assert!(Policy::builtin("nope").is_none());
    }
}
