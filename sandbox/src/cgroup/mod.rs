//! Per-action cgroups: limits, usage, and killing everything an action
//! started.
//!
//! Build hosts come in two layouts, both handled: pure cgroup v2 (current
//! distributions) and the v1/v2 hybrid where the controllers live in v1
//! hierarchies (what CI here has). The layout is detected once, when a
//! `Sandbox` is made; each action then gets its own group under a
//! `corral` parent, named after the action. Both implementations take
//! their root directories as parameters, so tests run them on fake
//! control files.

pub(crate) mod mountinfo;
pub mod v1;
pub mod v2;

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::policy::Limits;

/// Why a cgroup step failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to create cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to remove cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} still has processes after being killed")]
    Unkillable { path: PathBuf },
    #[error("cgroup v2 at {path} has no {controller} controller available")]
    MissingController {
        path: PathBuf,
        controller: &'static str,
    },
}

/// What the cgroup measured for one action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub user_time: Duration,
    pub system_time: Duration,
    /// Peak memory charged to the group, when the kernel reports it.
    pub memory_peak_bytes: Option<u64>,
    /// The OOM killer killed a process of the group.
    pub oom_killed: bool,
    /// Bytes read and written on block devices, when the kernel reports it.
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
}

/// Where action cgroups are created: the host's layout, detected once.
#[derive(Debug, Clone)]
pub enum CgroupRoot {
    V1(v1::Hierarchies),
    V2(v2::Parent),
}

/// One action's cgroup.
#[derive(Debug)]
pub enum Cgroup {
    V1(v1::Group),
    V2(v2::Group),
}

impl CgroupRoot {
    /// Finds this host's cgroup layout from /proc/self/mountinfo and
    /// /proc/self/cgroup, and prepares a `corral` parent group under the
    /// caller's own cgroup. `None` when no usable memory controller exists.
    pub fn detect() -> Result<Option<CgroupRoot>, CgroupError> {
        let read = |p: &str| {
            std::fs::read_to_string(p).map_err(|source| CgroupError::Read {
                path: PathBuf::from(p),
                source,
            })
        };
        let mounts = mountinfo::cgroup_mounts(&read("/proc/self/mountinfo")?);
        let membership = mountinfo::membership(&read("/proc/self/cgroup")?);
        if let Some(unified) = &mounts.unified {
            if let Some(own) = membership.unified.as_deref() {
                let dir = join_cgroup_path(unified, own);
                if v2::Parent::has_controller(&dir, "memory") {
                    return v2::Parent::prepare(&dir).map(|p| Some(CgroupRoot::V2(p)));
                }
            }
        }
        match v1::Hierarchies::from_mounts(&mounts, &membership) {
            Some(h) => h.prepare().map(|h| Some(CgroupRoot::V1(h))),
            None => Ok(None),
        }
    }

    /// Creates the group `name` with `limits` applied.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        match self {
            CgroupRoot::V1(h) => h.create(name, limits).map(Cgroup::V1),
            CgroupRoot::V2(p) => p.create(name, limits).map(Cgroup::V2),
        }
    }

    /// The existing groups whose names start with `prefix`: what a caller
    /// that died left behind, for its watchdog to kill and remove.
    pub fn leftovers(&self, prefix: &str) -> Vec<Cgroup> {
        let names = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        };
        match self {
            CgroupRoot::V1(h) => names(h.listing_dir())
                .iter()
                .map(|n| Cgroup::V1(h.existing(n)))
                .collect(),
            CgroupRoot::V2(p) => names(p.dir())
                .iter()
                .map(|n| Cgroup::V2(p.existing(n)))
                .collect(),
        }
    }
}

impl Cgroup {
    /// Moves process `pid` (and so its future children) into the group.
    pub fn add_process(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        match self {
            Cgroup::V1(g) => g.add_process(pid),
            Cgroup::V2(g) => g.add_process(pid),
        }
    }

    /// Files a single-threaded process writes "0" to, to join the group
    /// itself without the cost of [`add_process`](Self::add_process);
    /// empty where the hierarchy has no such way (v2: `cgroup.threads`
    /// only moves threads within one process's domain).
    pub fn self_join_files(&self) -> Vec<PathBuf> {
        match self {
            Cgroup::V1(g) => g.self_join_files(),
            Cgroup::V2(_) => Vec::new(),
        }
    }

    /// Kills every process in the group and waits until it is empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        match self {
            Cgroup::V1(g) => g.kill_all(),
            Cgroup::V2(g) => g.kill_all(),
        }
    }

    /// Reads what the group used.
    pub fn usage(&self) -> Result<CgroupUsage, CgroupError> {
        match self {
            Cgroup::V1(g) => g.usage(),
            Cgroup::V2(g) => g.usage(),
        }
    }

    /// Whether any process is still in the group.
    fn is_populated(&self) -> Result<bool, CgroupError> {
        let procs = match self {
            Cgroup::V1(g) => g.procs_file(),
            Cgroup::V2(g) => g.procs_file(),
        };
        Ok(!read_pids(&procs)?.is_empty())
    }

    /// Kills what is left and removes the group.
    pub fn remove(self) -> Result<(), CgroupError> {
        // Normally empty by now (init's exit tore the pid namespace down);
        // freezing an empty group would only cost time.
        if self.is_populated()? {
            self.kill_all()?;
        }
        match self {
            Cgroup::V1(g) => g.remove(),
            Cgroup::V2(g) => g.remove(),
        }
    }
}

/// `mount` joined with a cgroup path from /proc/self/cgroup (which starts
/// with '/').
fn join_cgroup_path(mount: &Path, cgroup: &str) -> PathBuf {
    mount.join(cgroup.trim_start_matches('/'))
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes a cgroup directory, retrying briefly: the kernel may still be
/// tearing down the last killed task (EBUSY).
fn remove_dir(path: &Path) -> Result<(), CgroupError> {
    let mut last = None;
    for attempt in 0..50 {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(if attempt < 10 { 1 } else { 10 }));
    }
    Err(CgroupError::Remove {
        path: path.to_owned(),
        source: last.unwrap_or_else(|| io::Error::other("unknown")),
    })
}

/// The pids listed in a `cgroup.procs` file.
fn read_pids(path: &Path) -> Result<Vec<libc::pid_t>, CgroupError> {
    Ok(read_file(path)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// SIGKILLs every pid listed in `procs` until the file is empty.
fn kill_listed(procs: &Path, dir: &Path) -> Result<(), CgroupError> {
    for attempt in 0..200 {
        let pids = read_pids(procs)?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(if attempt < 20 { 1 } else { 10 }));
    }
    Err(CgroupError::Unkillable {
        path: dir.to_owned(),
    })
}

/// Parses "key value" lines (cpu.stat, memory.events, ...) for `key`.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values_are_found_by_exact_key() {
        let text = "usage_usec 10\nuser_usec 7\nsystem_usec 3\n";
        assert_eq!(keyed_value(text, "user_usec"), Some(7));
        assert_eq!(keyed_value(text, "usec"), None);
    }

    #[test]
    fn cgroup_paths_join_under_the_mount() {
        assert_eq!(
            join_cgroup_path(Path::new("/sys/fs/cgroup/memory"), "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
        assert_eq!(
            join_cgroup_path(Path::new("/sys/fs/cgroup"), "/"),
            PathBuf::from("/sys/fs/cgroup/")
        );
    }
}
