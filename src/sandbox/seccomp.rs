//! The seccomp filter of the program steps: deny what untrusted code never needs.
//!
//! Three filters stack: the deny list answers EPERM, `clone3` answers ENOSYS so that libc
//! falls back to `clone`, whose flags the deny list can inspect (new user namespaces are
//! refused there), and sockets are allowed by family ([`SOCKET_FAMILIES`]): any other
//! answers EAFNOSUPPORT.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Syscalls refused with EPERM, whatever their arguments.
pub const DENIED: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("syslog", libc::SYS_syslog),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("kcmp", libc::SYS_kcmp),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("uselib", libc::SYS_uselib),
    ("ustat", libc::SYS_ustat),
    ("sysfs", libc::SYS_sysfs),
    ("personality", libc::SYS_personality),
    ("vmsplice", libc::SYS_vmsplice),
];

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    {
        TargetArch::aarch64
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        TargetArch::x86_64
    }
}

/// The compiled filters, in the order to apply them (compiled once per process: a sandbox
/// server compiles them before its first sandbox, which inherit them).
pub fn programs() -> Result<Vec<BpfProgram>, String> {
    static PROGRAMS: std::sync::OnceLock<Result<Vec<BpfProgram>, String>> =
        std::sync::OnceLock::new();
    PROGRAMS.get_or_init(compile).clone()
}

fn compile() -> Result<Vec<BpfProgram>, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, n)| (*n, vec![])).collect();
    // clone(flags) with CLONE_NEWUSER (or any other namespace flag): refused.
    let ns_flags = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP) as u64;
    let mut clone_rules = Vec::new();
    for flag in [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ] {
        let f = flag as u64;
        debug_assert!(ns_flags & f != 0);
        clone_rules.push(
            SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(f),
                f,
            )
            .map_err(|e| e.to_string())?])
            .map_err(|e| e.to_string())?,
        );
    }
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch(),
    )
    .map_err(|e| e.to_string())?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch(),
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![
        deny.try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
        clone3
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
        socket_filter()?
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?,
    ])
}

/// Socket families a sandboxed program may open: the ones the languages' runtimes use.
/// Every other family (`AF_VSOCK`, `AF_PACKET`, `AF_BLUETOOTH`, `AF_ALG`, ...) reaches
/// past the network namespace or into kernel code no program under test needs, so it is
/// refused by list, not by exception.
pub const SOCKET_FAMILIES: &[(&str, i32)] = &[
    ("AF_UNIX", libc::AF_UNIX),
    ("AF_INET", libc::AF_INET),
    ("AF_INET6", libc::AF_INET6),
    ("AF_NETLINK", libc::AF_NETLINK),
];

/// The only netlink protocol allowed: routing (interfaces and addresses, what `getifaddrs`
/// and Java's network classes read).
pub const NETLINK_PROTOCOLS: &[i32] = &[libc::NETLINK_ROUTE];

/// `socket` and `socketpair` of a family outside [`SOCKET_FAMILIES`], and netlink sockets of
/// another protocol than [`NETLINK_PROTOCOLS`], fail with EAFNOSUPPORT.
fn socket_filter() -> Result<SeccompFilter, String> {
    let cond = |arg: u8, op: SeccompCmpOp, v: i32| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, v as u64).map_err(|e| e.to_string())
    };
    let mut rules = BTreeMap::new();
    for sys in [libc::SYS_socket, libc::SYS_socketpair] {
        let other_family = SOCKET_FAMILIES
            .iter()
            .map(|(_, f)| cond(0, SeccompCmpOp::Ne, *f))
            .collect::<Result<Vec<_>, _>>()?;
        let mut other_netlink = vec![cond(0, SeccompCmpOp::Eq, libc::AF_NETLINK)?];
        for p in NETLINK_PROTOCOLS {
            other_netlink.push(cond(2, SeccompCmpOp::Ne, *p)?);
        }
        rules.insert(
            sys,
            vec![
                SeccompRule::new(other_family).map_err(|e| e.to_string())?,
                SeccompRule::new(other_netlink).map_err(|e| e.to_string())?,
            ],
        );
    }
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
        arch(),
    )
    .map_err(|e| e.to_string())
}

/// Applies the filters to the calling thread (no_new_privs must be set already).
pub fn apply(programs: &[BpfProgram]) -> Result<(), String> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_compile() {
        let p = super::programs().expect("filters compile");
        assert_eq!(p.len(), 3);
        assert!(!p[0].is_empty());
    }
}
