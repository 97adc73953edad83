//! cgroup v2: one unified hierarchy.
//!
//! v2 forbids processes in a group whose controllers are delegated to its
//! children ("no internal processes"), so the runner's own group cannot
//! hold action groups directly while the runner sits in it. `prepare`
//! moves the calling process into a `runner` leaf first, then enables the
//! memory, pids and cpu controllers for the action groups beside it. Run
//! the runner in a group of its own (systemd `Delegate=yes`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    create_dir, keyed_value, kill_listed, read_file, remove_dir, write_file, CgroupError,
    CgroupUsage,
};
use crate::policy::Limits;

/// The group under which action groups are created.
#[derive(Debug, Clone, PartialEq)]
pub struct Parent {
    dir: PathBuf,
}

/// One action's group.
#[derive(Debug)]
pub struct Group {
    dir: PathBuf,
}

impl Parent {
    /// Whether `controller` is available in the group at `dir`.
    pub fn has_controller(dir: &Path, controller: &str) -> bool {
        std::fs::read_to_string(dir.join("cgroup.controllers"))
            .is_ok_and(|text| text.split_whitespace().any(|c| c == controller))
    }

    /// Makes `dir` (the caller's own group) able to hold action groups.
    pub fn prepare(dir: &Path) -> Result<Parent, CgroupError> {
        let procs = dir.join("cgroup.procs");
        // The root group is exempt from the rule (and has no cgroup.type):
        // controllers can be delegated from it with processes inside.
        let is_root = !dir.join("cgroup.type").exists();
        if !is_root && !super::read_pids(&procs)?.is_empty() {
            let leaf = dir.join("runner");
            create_dir(&leaf)?;
            write_file(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
        }
        let parent = Parent::at(dir);
        parent.enable_controllers()?;
        Ok(parent)
    }

    /// The parent's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The existing group `name`.
    pub fn existing(&self, name: &str) -> Group {
        Group {
            dir: self.dir.join(name),
        }
    }

    /// A parent at an explicit directory (tests, fixed layouts).
    pub fn at(dir: &Path) -> Parent {
        Parent {
            dir: dir.to_owned(),
        }
    }

    fn enable_controllers(&self) -> Result<(), CgroupError> {
        for controller in ["memory", "pids"] {
            if !Parent::has_controller(&self.dir, controller) {
                return Err(CgroupError::MissingController {
                    path: self.dir.clone(),
                    controller,
                });
            }
        }
        let mut wanted = String::from("+memory +pids");
        if Parent::has_controller(&self.dir, "cpu") {
            wanted.push_str(" +cpu");
        }
        write_file(&self.dir.join("cgroup.subtree_control"), &wanted)
    }

    /// Creates the group `name` and applies `limits`.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Group, CgroupError> {
        let group = Group {
            dir: self.dir.join(name),
        };
        create_dir(&group.dir)?;
        if let Err(e) = group.apply(limits) {
            let _ = remove_dir(&group.dir);
            return Err(e);
        }
        Ok(group)
    }
}

impl Group {
    fn apply(&self, limits: &Limits) -> Result<(), CgroupError> {
        write_file(
            &self.dir.join("memory.max"),
            &limits.memory_max_bytes.to_string(),
        )?;
        let swap = self.dir.join("memory.swap.max");
        if swap.exists() {
            write_file(&swap, "0")?;
        }
        write_file(&self.dir.join("pids.max"), &limits.pids_max.to_string())?;
        if limits.cpu_millis > 0 {
            const PERIOD_US: u64 = 100_000;
            let quota = (limits.cpu_millis * PERIOD_US / 1000).max(1000);
            write_file(&self.dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
        }
        Ok(())
    }

    /// The `cgroup.procs` file listing the group's processes.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Moves `pid` into the group.
    pub fn add_process(&self, pid: libc::pid_t) -> Result<(), CgroupError> {
        write_file(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// Kills every process: `cgroup.kill` where the kernel has it (5.14+),
    /// else freeze, kill each, thaw.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let kill = self.dir.join("cgroup.kill");
        if kill.exists() {
            write_file(&kill, "1")?;
        } else {
            let freeze = self.dir.join("cgroup.freeze");
            if freeze.exists() {
                write_file(&freeze, "1")?;
                for pid in super::read_pids(&self.dir.join("cgroup.procs"))? {
                    let _ = crate::sys::kill(pid, libc::SIGKILL);
                }
                write_file(&freeze, "0")?;
            }
        }
        kill_listed(&self.dir.join("cgroup.procs"), &self.dir)
    }

    /// Reads cpu time, peak memory, block I/O and OOM kills.
    pub fn usage(&self) -> Result<CgroupUsage, CgroupError> {
        let cpu = read_file(&self.dir.join("cpu.stat"))?;
        let usec = |key| Duration::from_micros(keyed_value(&cpu, key).unwrap_or(0));
        let events = read_file(&self.dir.join("memory.events"))?;
        let peak = std::fs::read_to_string(self.dir.join("memory.peak"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let (mut read_bytes, mut write_bytes) = (None, None);
        if let Ok(io) = std::fs::read_to_string(self.dir.join("io.stat")) {
            for word in io.split_whitespace() {
                if let Some(v) = word
                    .strip_prefix("rbytes=")
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    *read_bytes.get_or_insert(0) += v;
                }
                if let Some(v) = word
                    .strip_prefix("wbytes=")
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    *write_bytes.get_or_insert(0) += v;
                }
            }
        }
        Ok(CgroupUsage {
            user_time: usec("user_usec"),
            system_time: usec("system_usec"),
            memory_peak_bytes: peak,
            oom_killed: keyed_value(&events, "oom_kill").unwrap_or(0) > 0,
            io_read_bytes: read_bytes,
            io_write_bytes: write_bytes,
        })
    }

    /// Removes the group's directory.
    pub fn remove(self) -> Result<(), CgroupError> {
        remove_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn fake_parent(controllers: &str) -> (tempfile::TempDir, Parent) {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(root.path().join("cgroup.procs"), "").unwrap();
        std::fs::write(root.path().join("cgroup.type"), "domain\n").unwrap();
        let parent = Parent::prepare(root.path()).unwrap();
        (root, parent)
    }

    #[test]
    fn controllers_are_enabled_for_action_groups() {
        let (root, _p) = fake_parent("cpuset cpu io memory pids\n");
        let text = std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(text, "+memory +pids +cpu");
    }

    #[test]
    fn a_parent_without_the_memory_controller_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "pids\n").unwrap();
        std::fs::write(root.path().join("cgroup.procs"), "").unwrap();
        let err = Parent::prepare(root.path()).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[test]
    fn limits_are_written_in_v2_syntax() {
        let (_root, p) = fake_parent("memory pids cpu\n");
        let mut limits = Policy::default().limits;
        limits.cpu_millis = 500;
        let g = p.create("a", &limits).unwrap();
        let read = |f: &str| std::fs::read_to_string(g.dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (4u64 << 30).to_string());
        assert_eq!(read("pids.max"), "1024");
        assert_eq!(read("cpu.max"), "50000 100000");
    }

    #[test]
    fn usage_reads_cpu_stat_events_peak_and_io() {
        let (_root, p) = fake_parent("memory pids\n");
        let g = p.create("a", &Policy::default().limits).unwrap();
        std::fs::write(
            g.dir.join("cpu.stat"),
            "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\n",
        )
        .unwrap();
        std::fs::write(
            g.dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(g.dir.join("memory.peak"), "4096\n").unwrap();
        std::fs::write(
            g.dir.join("io.stat"),
            "8:0 rbytes=10 wbytes=20 rios=1\n8:16 rbytes=5 wbytes=0\n",
        )
        .unwrap();
        let u = g.usage().unwrap();
        assert_eq!(u.user_time, Duration::from_millis(2));
        assert_eq!(u.system_time, Duration::from_millis(1));
        assert!(u.oom_killed);
        assert_eq!(u.memory_peak_bytes, Some(4096));
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (Some(15), Some(20)));
    }
}
