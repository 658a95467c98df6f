//! Landlock, the second wall (Linux 5.13+): even if a mount or a bind escaped the first
//! one, the program may only write beneath `/sandbox`, `/tmp`, `/dev/shm` (and the device
//! nodes of `/dev`); everything else is read and execute only. On ABI 6+ signals and
//! abstract unix sockets are also scoped to the sandbox. Raw syscalls; no dependency.

use std::ffi::CString;

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

const EXECUTE: u64 = 1 << 0;
const WRITE_FILE: u64 = 1 << 1;
const READ_FILE: u64 = 1 << 2;
const READ_DIR: u64 = 1 << 3;
const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of this kernel (0: not available).
pub fn abi() -> i64 {
    // SAFETY: the documented version query: NULL attr, size 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    r.max(0)
}

/// Every filesystem right this ABI knows.
fn all_fs(abi: i64) -> u64 {
    let mut v = (1 << 13) - 1; // ABI 1: execute .. make_sym
    if abi >= 2 {
        v |= 1 << 13; // refer
    }
    if abi >= 3 {
        v |= TRUNCATE;
    }
    if abi >= 5 {
        v |= IOCTL_DEV;
    }
    v
}

/// Restricts the calling thread (no_new_privs must be set). Returns Ok(false) when the
/// kernel has no Landlock.
pub fn restrict(writable: &[&str]) -> Result<bool, String> {
    let abi = abi();
    if abi < 1 {
        return Ok(false);
    }
    let handled = all_fs(abi);
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: 0,
        scoped: if abi >= 6 {
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        } else {
            0
        },
    };
    let size = if abi >= 6 {
        24
    } else if abi >= 4 {
        16
    } else {
        8
    };
    // SAFETY: attr lives for the call; size matches the fields this ABI reads.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size as usize,
            0u32,
        )
    };
    if fd < 0 {
        return Err(format!(
            "landlock_create_ruleset: {}",
            std::io::Error::last_os_error()
        ));
    }
    let fd = fd as i32;
    let add = |path: &str, access: u64| -> Result<(), String> {
        let c = CString::new(path).map_err(|e| e.to_string())?;
        // SAFETY: opening a path for reference only.
        let pfd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if pfd < 0 {
            return Ok(()); // not present in this sandbox: nothing to allow
        }
        let rule = PathBeneathAttr {
            allowed_access: access & handled,
            parent_fd: pfd,
        };
        // SAFETY: rule lives for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                fd,
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            )
        };
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our own fd.
        unsafe { libc::close(pfd) };
        if r < 0 {
            return Err(format!("landlock_add_rule {path}: {e}"));
        }
        Ok(())
    };
    let result = (|| {
        add("/", EXECUTE | READ_FILE | READ_DIR)?;
        add("/dev", READ_FILE | READ_DIR)?;
        // Rules attach to inodes: the device nodes are bind mounts of the host's.
        for node in [
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
        ] {
            add(node, READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV)?;
        }
        for p in writable {
            add(p, handled)?;
        }
        // SAFETY: plain syscall on our ruleset fd.
        let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
        if r < 0 {
            return Err(format!(
                "landlock_restrict_self: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(true)
    })();
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    result
}
