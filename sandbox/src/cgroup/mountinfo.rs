//! Reading where cgroup hierarchies are mounted and which group the
//! current process belongs to in each.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// cgroup mount points found in /proc/self/mountinfo.
#[derive(Debug, Default, PartialEq)]
pub struct Mounts {
    /// The cgroup2 mount, if any.
    pub unified: Option<PathBuf>,
    /// v1 controller name → mount point (co-mounted controllers share one).
    pub v1: BTreeMap<String, PathBuf>,
}

/// The current process's group in each hierarchy, from /proc/self/cgroup.
#[derive(Debug, Default, PartialEq)]
pub struct Membership {
    pub unified: Option<String>,
    pub v1: BTreeMap<String, String>,
}

/// The v1 controllers; other super options of a cgroup mount (rw, xattr,
/// name=systemd, ...) are not controllers.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// Parses /proc/self/mountinfo text.
pub fn cgroup_mounts(mountinfo: &str) -> Mounts {
    let mut mounts = Mounts::default();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mut right = right.split_whitespace();
        let fstype = right.next();
        let super_options = right.nth(1).unwrap_or_default();
        let mount_point = PathBuf::from(unescape(mount_point));
        match fstype {
            Some("cgroup2") => mounts.unified = Some(mount_point),
            Some("cgroup") => {
                for option in super_options.split(',') {
                    if V1_CONTROLLERS.contains(&option) {
                        mounts.v1.insert(option.to_owned(), mount_point.clone());
                    }
                }
            }
            _ => {}
        }
    }
    mounts
}

/// Parses /proc/self/cgroup text.
pub fn membership(cgroup: &str) -> Membership {
    let mut out = Membership::default();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            out.unified = Some(path.to_owned());
        } else {
            for c in controllers.split(',') {
                out.v1.insert(c.to_owned(), path.to_owned());
            }
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
pub(crate) fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(byte) => out.push(byte as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_layout_is_read() {
        let m = cgroup_mounts(HYBRID);
        assert_eq!(m.unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(m.v1["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m.v1["cpuacct"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m.v1["cpu"], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(!m.v1.contains_key("name=systemd"));
        assert!(
            !m.v1.contains_key("xattr"),
            "mount options are not controllers"
        );
    }

    #[test]
    fn membership_is_read_per_controller() {
        let m = membership("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(m.v1["memory"], "/a/b");
        assert_eq!(m.v1["cpuacct"], "/");
        assert_eq!(m.unified.as_deref(), Some("/user.slice"));
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }
}
