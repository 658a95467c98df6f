//! The seccomp filter of the program steps: deny what untrusted code never needs.
//!
//! One classic BPF program ([`policy`]) decides: the deny list ([`DENIED`]) answers EPERM,
//! and so does `clone` with a namespace flag; `clone3` answers ENOSYS so that libc falls
//! back to `clone`, whose flags the filter can inspect; sockets are allowed by family
//! ([`SOCKET_FAMILIES`], netlink only for [`NETLINK_PROTOCOLS`]): any other answers
//! EAFNOSUPPORT; on x86_64 every x32 system call (bit 30 of the number) answers ENOSYS, as
//! on a kernel without the x32 ABI (the numbers compared are x86_64's: an x32 number of a
//! denied call would not match them); another architecture kills the process. The deny
//! list is searched as a binary tree: the kernel emulates the filter for every system call
//! number when it is installed (to cache what is always allowed), once per job, and a
//! linear list of 340 instructions made that a tenth of a millisecond.

use seccompiler::{sock_filter, BpfProgram};

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

/// `AUDIT_ARCH_*` of this machine (what `seccomp_data.arch` holds for a native call).
const ARCH: u32 = if cfg!(target_arch = "aarch64") {
    183 | 0x8000_0000 | 0x4000_0000
} else {
    62 | 0x8000_0000 | 0x4000_0000
};
/// The x32 ABI's bit in a system call number (x86_64 only).
const X32_BIT: u32 = 0x4000_0000;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// The compiled filter (compiled once per process: a sandbox server compiles it before its
/// first sandbox, which inherit it).
pub fn program() -> &'static BpfProgram {
    static PROGRAM: std::sync::OnceLock<BpfProgram> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(policy)
}

/// Where a jump goes.
#[derive(Clone, Copy, PartialEq)]
enum To {
    Next,
    Allow,
    Eperm,
    Enosys,
    Eafnosupport,
    Kill,
    /// An instruction of the program, by index.
    At(usize),
}

/// The program being written: instructions whose jump targets are resolved at the end.
#[derive(Default)]
struct Asm {
    code: Vec<(u16, u32, To, To)>,
}

const LD_W_ABS: u16 = 0x20;
const JEQ: u16 = 0x15;
const JGE: u16 = 0x35;
const JSET: u16 = 0x45;
const RET: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH_AT: u32 = 4;
/// The low 32 bits of argument `i` (little-endian).
const fn arg(i: u32) -> u32 {
    16 + 8 * i
}

impl Asm {
    fn load(&mut self, at: u32) {
        self.code.push((LD_W_ABS, at, To::Next, To::Next));
    }
    fn jump(&mut self, op: u16, k: u32, yes: To, no: To) {
        self.code.push((op, k, yes, no));
    }
    fn here(&self) -> usize {
        self.code.len()
    }

    /// A binary search of the sorted `nrs` (the number loaded): EPERM when found, `no` when
    /// not.
    fn search(&mut self, nrs: &[u32], no: To) {
        // (Halves of a non-empty list are not empty; the deny list is not.)
        assert!(!nrs.is_empty(), "an empty seccomp deny list");
        if nrs.len() <= 3 {
            for (i, n) in nrs.iter().enumerate() {
                let miss = if i + 1 == nrs.len() { no } else { To::Next };
                self.jump(JEQ, *n, To::Eperm, miss);
            }
            return;
        }
        let mid = nrs.len() / 2;
        let at = self.here();
        // nr >= nrs[mid]: the upper half, patched below; else the lower half, next.
        self.jump(JGE, nrs[mid], To::Next, To::Next);
        self.search(&nrs[..mid], no);
        let upper = self.here();
        self.code[at].2 = To::At(upper);
        self.search(&nrs[mid..], no);
    }

    /// The instructions, with the returns at the end and every jump resolved (classic
    /// BPF jumps forward at most 255 instructions: the program is far shorter).
    fn finish(mut self) -> BpfProgram {
        let body = self.code.len();
        let returns = [
            (To::Allow, RET_ALLOW),
            (To::Eperm, RET_ERRNO | libc::EPERM as u32),
            (To::Enosys, RET_ERRNO | libc::ENOSYS as u32),
            (To::Eafnosupport, RET_ERRNO | libc::EAFNOSUPPORT as u32),
            (To::Kill, RET_KILL_PROCESS),
        ];
        for (_, k) in &returns {
            self.code.push((RET, *k, To::Next, To::Next));
        }
        let index = |t: To, from: usize| -> usize {
            match t {
                To::Next => from + 1,
                To::At(i) => i,
                other => body + returns.iter().position(|(r, _)| *r == other).unwrap_or(0),
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(i, &(code, k, yes, no))| {
                let off = |t: To| {
                    let d = index(t, i) - (i + 1);
                    u8::try_from(d).expect("a seccomp jump within 255 instructions")
                };
                let (jt, jf) = if code == JEQ || code == JGE || code == JSET {
                    (off(yes), off(no))
                } else {
                    (0, 0)
                };
                sock_filter { code, jt, jf, k }
            })
            .collect()
    }
}

/// The whole policy as one program (module doc).
pub fn policy() -> BpfProgram {
    let mut a = Asm::default();
    a.load(ARCH_AT);
    a.jump(JEQ, ARCH, To::Next, To::Kill);
    a.load(NR);
    if cfg!(target_arch = "x86_64") {
        a.jump(JSET, X32_BIT, To::Enosys, To::Next);
    }
    a.jump(JEQ, libc::SYS_clone3 as u32, To::Enosys, To::Next);
    let clone = a.here();
    a.jump(JEQ, libc::SYS_clone as u32, To::Next, To::Next);
    let socket = a.here();
    a.jump(JEQ, libc::SYS_socket as u32, To::Next, To::Next);
    a.jump(JEQ, libc::SYS_socketpair as u32, To::Next, To::Next);
    let mut denied: Vec<u32> = DENIED.iter().map(|(_, n)| *n as u32).collect();
    denied.sort_unstable();
    denied.dedup();
    a.search(&denied, To::Allow);
    // clone: any namespace flag (all in the low word of its flags) is refused.
    a.code[clone].2 = To::At(a.here());
    let ns = (libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP) as u32;
    a.load(arg(0));
    a.jump(JSET, ns, To::Eperm, To::Allow);
    // socket, socketpair: by family; netlink by protocol.
    a.code[socket].2 = To::At(a.here());
    a.code[socket + 1].2 = To::At(a.here());
    a.load(arg(0));
    for (_, family) in SOCKET_FAMILIES
        .iter()
        .filter(|(_, f)| *f != libc::AF_NETLINK)
    {
        a.jump(JEQ, *family as u32, To::Allow, To::Next);
    }
    a.jump(JEQ, libc::AF_NETLINK as u32, To::Next, To::Eafnosupport);
    a.load(arg(2));
    for (i, p) in NETLINK_PROTOCOLS.iter().enumerate() {
        let miss = if i + 1 == NETLINK_PROTOCOLS.len() {
            To::Eafnosupport
        } else {
            To::Next
        };
        a.jump(JEQ, *p as u32, To::Allow, miss);
    }
    a.finish()
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

/// Applies the filter to the calling thread (no_new_privs must be set already).
pub fn apply(program: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(program).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel answers for a call: a classic BPF interpreter of the instructions
    /// [`policy`] uses (any other fails the test).
    fn run(prog: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                JEQ | JGE | JSET => {
                    let taken = match i.code {
                        JEQ => acc == i.k,
                        JGE => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                RET => return i.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    /// The policy written plainly.
    fn expected(nr: u32, args: [u64; 6]) -> u32 {
        let errno = |e: i32| RET_ERRNO | e as u32;
        if cfg!(target_arch = "x86_64") && nr & X32_BIT != 0 {
            return errno(libc::ENOSYS);
        }
        let nr = i64::from(nr);
        if nr == libc::SYS_clone3 {
            return errno(libc::ENOSYS);
        }
        if DENIED.iter().any(|(_, n)| *n == nr) {
            return errno(libc::EPERM);
        }
        if nr == libc::SYS_clone {
            let ns = libc::CLONE_NEWUSER
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWCGROUP;
            if args[0] & ns as u64 != 0 {
                return errno(libc::EPERM);
            }
        }
        if nr == libc::SYS_socket || nr == libc::SYS_socketpair {
            let family = args[0] as u32 as i32;
            let known = SOCKET_FAMILIES.iter().any(|(_, f)| *f == family);
            let netlink_ok =
                family != libc::AF_NETLINK || NETLINK_PROTOCOLS.contains(&(args[2] as u32 as i32));
            if !known || !netlink_ok {
                return errno(libc::EAFNOSUPPORT);
            }
        }
        RET_ALLOW
    }

    #[test]
    fn the_program_decides_every_call_as_the_policy_says() {
        let prog = policy();
        assert!(prog.len() < 150, "{} instructions", prog.len());
        let mut args_set: Vec<[u64; 6]> = vec![
            [0; 6],
            [libc::SIGCHLD as u64, 0, 0, 0, 0, 0],
            [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0],
            [(libc::CLONE_NEWNET | libc::CLONE_VM) as u64, 0, 0, 0, 0, 0],
            [libc::CLONE_NEWCGROUP as u64 | (1 << 40), 0, 0, 0, 0, 0],
            [libc::AF_UNIX as u64, 1, 0, 0, 0, 0],
            [libc::AF_INET6 as u64, 2, 0, 0, 0, 0],
            [libc::AF_PACKET as u64, 3, 0, 0, 0, 0],
            [libc::AF_VSOCK as u64, 1, 0, 0, 0, 0],
            [
                libc::AF_NETLINK as u64,
                3,
                libc::NETLINK_ROUTE as u64,
                0,
                0,
                0,
            ],
            [
                libc::AF_NETLINK as u64,
                3,
                libc::NETLINK_AUDIT as u64,
                0,
                0,
                0,
            ],
            [libc::AF_INET as u64 | (1 << 32), 1, 0, 0, 0, 0],
        ];
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWCGROUP,
        ] {
            args_set.push([flag as u64 | libc::SIGCHLD as u64, 0, 0, 0, 0, 0]);
        }
        for (_, family) in SOCKET_FAMILIES {
            args_set.push([*family as u64, 1, 0, 0, 0, 0]);
        }
        let mut numbers: Vec<u32> = (0..1024).collect();
        numbers.extend([
            X32_BIT,
            X32_BIT | libc::SYS_mount as u32,
            u32::MAX,
            0x8000_0000,
        ]);
        for nr in numbers {
            for args in &args_set {
                assert_eq!(
                    run(&prog, nr, ARCH, *args),
                    expected(nr, *args),
                    "system call {nr:#x} with {args:?}"
                );
            }
        }
        // Another architecture's calls (i386 on x86_64) kill the process.
        assert_eq!(
            run(&prog, libc::SYS_getpid as u32, 0x4000_0003, [0; 6]),
            RET_KILL_PROCESS
        );
    }
}
