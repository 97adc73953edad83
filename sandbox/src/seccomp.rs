//! The seccomp filter: system calls that builds never need are refused
//! with EPERM (not killed, so tools that probe for a feature fall back).
//!
//! The deny list follows Docker's default profile plus what the threat
//! model adds (new mount API, io_uring, userfaultfd, namespace creation).
//! A policy can drop entries (`seccomp.allow`) or add some
//! (`seccomp.deny`); every name is checked against this table, so a typo
//! is an error before anything runs.
//!
//! Four programs are installed, last to first in effect:
//! 1. on x86_64, a guard that refuses x32 system call numbers
//!    (`nr | 0x40000000`): a deny list written for the 64-bit numbers
//!    would otherwise be bypassed on kernels with the x32 ABI (Debian's);
//! 2. `clone3` answered with ENOSYS, so libc falls back to `clone`, whose
//!    flags a filter can inspect (clone3 passes them in memory);
//! 3. `fallocate` with `FALLOC_FL_KEEP_SIZE` (and no hole punching)
//!    answered with EOPNOTSUPP, as a file system without it would: it
//!    allocates blocks past the end of the file without growing it, so
//!    RLIMIT_FSIZE (the disk limit per file) does not see it, and one call
//!    could fill the disk before the walk notices;
//! 4. the deny list, answered with EPERM.
//!
//! Filters are compiled once per policy, when the `Sandbox` is made;
//! installing them is all that happens per action.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::policy::SeccompPolicy;

/// Why a filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("unknown system call {name:?} in seccomp.{field}")]
    UnknownSyscall { name: String, field: &'static str },
    #[error("this architecture ({arch}) has no seccomp support in the sandbox")]
    UnsupportedArch { arch: &'static str },
    #[error("failed to compile the seccomp filter")]
    Compile(#[source] seccompiler::BackendError),
    #[error("failed to install a seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// The compiled programs for one policy.
#[derive(Debug, Clone)]
pub struct Filters {
    programs: Vec<BpfProgram>,
}

/// System calls refused with EPERM by default: each with why.
const DEFAULT_DENY: &[&str] = &[
    // Changing the mount table, old and new API: the sandbox's view of the
    // file system is fixed by the policy.
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // Joining other namespaces (namespace creation is refused by flag, below).
    "setns",
    // Debugging other processes and reading their memory.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    // Kernel attack surface no build needs.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "lookup_dcookie",
    "open_by_handle_at",
    "name_to_handle_at",
    "fanotify_init",
    "vhangup",
    // Machine-wide state.
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "syslog",
    // Clocks: builds read time, never set it.
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    // NUMA placement (Docker allows it only with CAP_SYS_NICE).
    "mbind",
    "set_mempolicy",
    "move_pages",
    "migrate_pages",
];

/// x86_64-only entries of the deny list.
#[cfg(target_arch = "x86_64")]
const ARCH_DENY: &[&str] = &[
    // Per-process segment descriptors: only 16-bit and Wine-like programs
    // need them, and the LDT code has had privilege-escalation bugs.
    "modify_ldt",
    "ioperm",
    "iopl",
    "nfsservctl",
    "uselib",
    "_sysctl",
    "sysfs",
    "ustat",
];
#[cfg(not(target_arch = "x86_64"))]
const ARCH_DENY: &[&str] = &[];

/// Namespace flags of clone/unshare: a new user namespace would give the
/// action capabilities again, and the others would let it leave the
/// sandbox's view of the system.
const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// Socket families allowed; every other one is refused. The kernel
/// autoloads the modules of families nobody uses (RDS, TIPC, CAN, X25,
/// KCM, SMC...), which have been a steady source of exploitable bugs;
/// vsock reaches the hypervisor, AF_ALG is the kernel crypto API,
/// AF_PACKET sniffs.
const ALLOWED_SOCKET_FAMILIES: [u64; 4] = [
    libc::AF_UNIX as u64,
    libc::AF_INET as u64,
    libc::AF_INET6 as u64,
    libc::AF_NETLINK as u64,
];

/// The one netlink protocol allowed: NETLINK_ROUTE (addresses, routes,
/// what `getaddrinfo` and `ip` read). Audit, netfilter, generic netlink
/// and the rest are refused.
const NETLINK_ROUTE: u64 = 0;

/// personality() values allowed (Docker's set): the default, the query,
/// and the 32-bit variants used by `setarch`/`linux32`.
const ALLOWED_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `TIOCSTI` pushes characters into a terminal's input queue.
const TIOCSTI: u64 = 0x5412;

/// Defines a lookup from `SYS_<name>` to the number libc gives it.
macro_rules! syscall_table {
    ($fn_name:ident: $($sys:ident),* $(,)?) => {
        fn $fn_name(sys_name: &str) -> Option<i64> {
            match sys_name {
                $(stringify!($sys) => Some(libc::$sys as i64),)*
                _ => None,
            }
        }
    };
}

syscall_table!(common_number:
    SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot, SYS_fsopen, SYS_fsconfig,
    SYS_fsmount, SYS_fspick, SYS_move_mount, SYS_open_tree, SYS_mount_setattr, SYS_setns,
    SYS_unshare, SYS_clone, SYS_clone3, SYS_ptrace, SYS_process_vm_readv,
    SYS_process_vm_writev, SYS_kcmp, SYS_bpf, SYS_perf_event_open, SYS_userfaultfd,
    SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register, SYS_keyctl, SYS_add_key,
    SYS_request_key, SYS_lookup_dcookie, SYS_open_by_handle_at, SYS_name_to_handle_at,
    SYS_fanotify_init, SYS_vhangup, SYS_kexec_load, SYS_kexec_file_load, SYS_init_module,
    SYS_finit_module, SYS_delete_module, SYS_reboot, SYS_swapon, SYS_swapoff, SYS_acct,
    SYS_quotactl, SYS_quotactl_fd, SYS_syslog, SYS_settimeofday, SYS_clock_settime,
    SYS_clock_adjtime, SYS_adjtimex, SYS_mbind, SYS_set_mempolicy, SYS_move_pages,
    SYS_migrate_pages, SYS_socket, SYS_personality, SYS_ioctl, SYS_sethostname,
    SYS_setdomainname, SYS_memfd_create, SYS_mlock, SYS_mlockall, SYS_pidfd_open,
    SYS_pidfd_getfd, SYS_seccomp, SYS_landlock_create_ruleset, SYS_fallocate,
);

#[cfg(target_arch = "x86_64")]
syscall_table!(arch_number:
    SYS_modify_ldt, SYS_ioperm, SYS_iopl,
    SYS_nfsservctl, SYS_uselib, SYS__sysctl, SYS_sysfs, SYS_ustat,
);

#[cfg(not(target_arch = "x86_64"))]
fn arch_number(_: &str) -> Option<i64> {
    None
}

/// The number of system call `name` on this architecture, for the names
/// a policy may use.
fn number(name: &str) -> Option<i64> {
    let sys_name = format!("SYS_{name}");
    common_number(&sys_name).or_else(|| arch_number(&sys_name))
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|_| SeccompError::UnsupportedArch {
        arch: std::env::consts::ARCH,
    })
}

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, len, op, value).expect("argument index is below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("rules are built with at least one condition")
}

/// One rule per namespace flag: `(arg0 & flag) == flag`.
fn namespace_flag_rules() -> Vec<SeccompRule> {
    NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            rule(vec![cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )])
        })
        .collect()
}

/// Refuses `socket()` for a family outside the allow list (the conditions
/// of one rule must all hold), and netlink sockets of any protocol but
/// NETLINK_ROUTE.
fn socket_rules() -> Vec<SeccompRule> {
    let family_not_allowed = ALLOWED_SOCKET_FAMILIES
        .iter()
        .map(|&f| cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, f))
        .collect();
    let netlink_not_route = vec![
        cond(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_NETLINK as u64,
        ),
        cond(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, NETLINK_ROUTE),
    ];
    vec![rule(family_not_allowed), rule(netlink_not_route)]
}

impl Filters {
    /// Compiles the filters for `policy`.
    pub fn build(policy: &SeccompPolicy) -> Result<Filters, SeccompError> {
        let arch = target_arch()?;
        let known = |name: &String, field: &'static str| {
            number(name)
                .map(|_| ())
                .ok_or_else(|| SeccompError::UnknownSyscall {
                    name: name.clone(),
                    field,
                })
        };
        for name in &policy.allow {
            known(name, "allow")?;
        }
        for name in &policy.deny {
            known(name, "deny")?;
        }

        let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let listed = DEFAULT_DENY
            .iter()
            .chain(ARCH_DENY)
            .map(|s| (*s).to_owned())
            .filter(|name| !policy.allow.contains(name))
            .chain(policy.deny.iter().cloned());
        for name in listed {
            if let Some(nr) = number(&name) {
                deny.insert(nr, Vec::new());
            }
        }
        let allowed = |name: &str| policy.allow.iter().any(|a| a == name);
        if !allowed("clone") {
            deny.entry(libc::SYS_clone)
                .or_insert_with(namespace_flag_rules);
        }
        if !allowed("unshare") {
            deny.entry(libc::SYS_unshare)
                .or_insert_with(namespace_flag_rules);
        }
        if !allowed("socket") {
            deny.entry(libc::SYS_socket).or_insert_with(socket_rules);
        }
        if !allowed("personality") {
            deny.entry(libc::SYS_personality).or_insert_with(|| {
                vec![rule(
                    ALLOWED_PERSONALITIES
                        .iter()
                        .map(|&p| cond(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, p))
                        .collect(),
                )]
            });
        }
        if !allowed("ioctl") {
            deny.entry(libc::SYS_ioctl).or_insert_with(|| {
                vec![rule(vec![cond(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    TIOCSTI,
                )])]
            });
        }

        let compile = |rules, action| -> Result<BpfProgram, SeccompError> {
            SeccompFilter::new(rules, SeccompAction::Allow, action, arch)
                .and_then(BpfProgram::try_from)
                .map_err(SeccompError::Compile)
        };
        let mut programs = Vec::new();
        if let Some(guard) = x32_guard() {
            programs.push(guard);
        }
        if !allowed("clone3") {
            let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
            programs.push(compile(clone3, SeccompAction::Errno(libc::ENOSYS as u32))?);
        }
        if !allowed("fallocate") {
            let keep_size = libc::FALLOC_FL_KEEP_SIZE as u64;
            let punch_hole = libc::FALLOC_FL_PUNCH_HOLE as u64;
            // Punching a hole needs KEEP_SIZE too, and frees blocks: allowed.
            let rules = vec![rule(vec![cond(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(keep_size | punch_hole),
                keep_size,
            )])];
            let fallocate = BTreeMap::from([(libc::SYS_fallocate, rules)]);
            programs.push(compile(
                fallocate,
                SeccompAction::Errno(libc::EOPNOTSUPP as u32),
            )?);
        }
        programs.push(compile(deny, SeccompAction::Errno(libc::EPERM as u32))?);
        Ok(Filters { programs })
    }

    /// Installs the filters on the calling thread. Needs no_new_privs (or
    /// CAP_SYS_ADMIN). Allocates nothing.
    pub fn install(&self) -> Result<(), SeccompError> {
        for program in &self.programs {
            seccompiler::apply_filter(program).map_err(SeccompError::Install)?;
        }
        Ok(())
    }

    /// Total BPF instructions installed per action.
    #[cfg(test)]
    fn instructions(&self) -> usize {
        self.programs.iter().map(Vec::len).sum()
    }
}

/// A program refusing x32 system call numbers with EPERM on x86_64.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> Option<BpfProgram> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    Some(vec![
        // seccomp_data.arch is at offset 4, .nr at offset 0.
        ins(LD_W_ABS, 0, 0, 4),
        ins(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        ins(LD_W_ABS, 0, 0, 0),
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
        ins(RET_K, 0, 0, RET_ALLOW),
    ])
}

#[cfg(not(target_arch = "x86_64"))]
fn x32_guard() -> Option<BpfProgram> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_compiles() {
        let filters = Filters::build(&SeccompPolicy::default()).unwrap();
        assert!(filters.instructions() > 50, "{}", filters.instructions());
    }

    #[test]
    fn every_default_entry_is_a_known_syscall() {
        for name in DEFAULT_DENY.iter().chain(ARCH_DENY) {
            assert!(number(name).is_some(), "{name}");
        }
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it() {
        let policy = SeccompPolicy {
            allow: vec![],
            deny: vec!["mkdir_everything".into()],
        };
        let err = Filters::build(&policy).unwrap_err();
        assert!(err.to_string().contains("mkdir_everything"), "{err}");
        assert!(err.to_string().contains("seccomp.deny"), "{err}");
    }
}
