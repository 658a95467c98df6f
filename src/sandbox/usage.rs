//! The resource figures of a step (README, "Resource figures"), measured the same way by
//! every process that runs steps itself (the native sandbox's init, the warm containers'
//! agent): the `wait4` rusage of the step's process tree. The runner of the step reaps
//! every process the step left (it is pid 1 of the sandbox, or a child subreaper), so its
//! `RUSAGE_CHILDREN` grows by exactly the step's processes' CPU time; the peak resident
//! memory is the largest of the step's processes (`ru_maxrss` of its own child, which
//! covers what that child waited for, and of the reaped orphans when their maximum rose).
//! Sandboxes that run each step as an exec get the same figures from their step shell
//! ([`crate::backend::step_shell`]).

use serde::{Deserialize, Serialize};

/// What a step's processes used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// User + system CPU time, in milliseconds.
    pub cpu_ms: u64,
    /// Peak resident memory of the largest process, in bytes.
    pub peak_memory_bytes: u64,
}

fn us(t: libc::timeval) -> u64 {
    (t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64
}

/// CPU time and largest peak (`ru_maxrss`, KiB → bytes) of a rusage.
pub fn of(ru: &libc::rusage) -> Usage {
    Usage {
        cpu_ms: (us(ru.ru_utime) + us(ru.ru_stime)) / 1000,
        peak_memory_bytes: (ru.ru_maxrss.max(0) as u64) << 10,
    }
}

/// What the calling process's reaped children used so far.
pub fn children() -> Usage {
    // SAFETY: getrusage into a zeroed struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        of(&ru)
    }
}

/// The usage of one step: `before` is [`children`] when it started, `own` the rusage
/// `wait4` gave for the step's own process (None when it was not reaped through wait4);
/// called once every process of the step has been reaped.
pub fn step(before: Usage, own: Option<Usage>) -> Usage {
    let after = children();
    let orphans_peak = if after.peak_memory_bytes > before.peak_memory_bytes {
        after.peak_memory_bytes
    } else {
        0
    };
    Usage {
        cpu_ms: after.cpu_ms.saturating_sub(before.cpu_ms),
        peak_memory_bytes: own.map_or(0, |u| u.peak_memory_bytes).max(orphans_peak),
    }
}

/// `wait4(pid, WNOHANG)`: the pid reaped, its wait status and rusage; None when nothing
/// was ready, Err (ECHILD) when there is no child left to wait for.
pub fn wait4_nohang(pid: libc::pid_t) -> std::io::Result<Option<(libc::pid_t, i32, Usage)>> {
    wait4(pid, libc::WNOHANG)
}

/// `wait4(pid)`, blocking until `pid` ends (None only when interrupted).
pub fn wait4_blocking(pid: libc::pid_t) -> std::io::Result<Option<(libc::pid_t, i32, Usage)>> {
    wait4(pid, 0)
}

/// How a reaped process ended, from its wait status: (exit code, signal); None for a
/// status that is not an end (stopped, continued).
pub fn ended(status: i32) -> Option<(Option<i32>, Option<i32>)> {
    if libc::WIFEXITED(status) {
        Some((Some(libc::WEXITSTATUS(status)), None))
    } else if libc::WIFSIGNALED(status) {
        Some((None, Some(libc::WTERMSIG(status))))
    } else {
        None
    }
}

fn wait4(pid: libc::pid_t, flags: i32) -> std::io::Result<Option<(libc::pid_t, i32, Usage)>> {
    let mut status = 0;
    // SAFETY: wait4 into a zeroed struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        match libc::wait4(pid, &mut status, flags, &mut ru) {
            0 => Ok(None),
            p if p > 0 => Ok(Some((p, status, of(&ru)))),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_spins_and_touches_memory_is_measured() {
        let before = children();
        // SAFETY: a plain fork; the child only computes, touches memory, reads its clock and
        // exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // No allocation after fork (the test process has threads): mmap and the clock.
            // SAFETY: an anonymous mapping, touched page by page, then _exit.
            unsafe {
                let len = 64usize << 20;
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                ) as *mut u8;
                if p.is_null() || p as isize == -1 {
                    libc::_exit(1);
                }
                for i in (0..len).step_by(4096) {
                    *p.add(i) = 1;
                }
                // 300 ms of its own CPU time (not of the wall clock: on a loaded machine
                // it would get less).
                let cpu = || {
                    let mut ts: libc::timespec = std::mem::zeroed();
                    libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts);
                    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
                };
                let t = cpu();
                let mut x = 0u64;
                while cpu() < t + 300 {
                    x = x.wrapping_add(std::hint::black_box(1));
                }
                std::hint::black_box(x);
                libc::_exit(0);
            }
        }
        let own = loop {
            match wait4_nohang(pid) {
                Ok(Some((_, _, u))) => break u,
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => panic!("the child vanished: {e}"),
            }
        };
        let u = step(before, Some(own));
        assert!(u.cpu_ms >= 250, "{u:?}");
        assert!(u.peak_memory_bytes >= 64 << 20, "{u:?}");
    }
}
