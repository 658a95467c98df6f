//! The single-threaded helper (`llm-sandbox __sandbox CONFIG`): clones the init into new
//! namespaces, writes its id maps, applies the cgroup, waits, and reports.

use super::cgroup::{self, Cgroup};
use super::proto::{self, LimitEvents, Msg};
use super::{SandboxConfig, CONTROL_FD, SANDBOX_UID};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Host uid/gid the program runs as when the runner is root.
pub const UNPRIVILEGED_HOST_ID: u32 = 65534;

fn error(message: impl Into<String>, hint: Option<String>) -> i32 {
    proto::send(
        CONTROL_FD,
        &Msg::Error {
            message: message.into(),
            hint,
        },
    );
    1
}

/// Hint for a failed user-namespace clone.
pub fn userns_hint() -> String {
    let mut hint = String::from("unprivileged user namespaces are not allowed on this machine");
    if std::fs::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
    {
        hint.push_str(" (AppArmor: kernel.apparmor_restrict_unprivileged_userns=1); allow them with `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`");
    } else if std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        hint.push_str(" (kernel.unprivileged_userns_clone=0); allow them with `sudo sysctl -w kernel.unprivileged_userns_clone=1`");
    } else if std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        hint.push_str(" (user.max_user_namespaces=0); allow them with `sudo sysctl -w user.max_user_namespaces=15000`");
    }
    hint.push_str(", or run the job with `backend = \"docker\"`");
    hint
}

pub fn main(config: Option<PathBuf>) -> i32 {
    let t0 = Instant::now();
    let mut phases: Vec<(String, u64)> = Vec::new();
    macro_rules! mark {
        ($name:expr) => {
            phases.push(($name.to_string(), t0.elapsed().as_micros() as u64))
        };
    }
    // Die with the runner, and refuse to run orphaned.
    let parent = nix::unistd::getppid();
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        return 1;
    }
    let Some(config) = config else {
        return error("usage: __sandbox CONFIG", None);
    };
    let mut cfg: SandboxConfig = match std::fs::read(&config)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            return error(
                format!("cannot read sandbox config {}: {e}", config.display()),
                None,
            )
        }
    };

    // Signals arrive on a signalfd; the init inherits the mask and sets its own up.
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    if let Err(e) = mask.thread_block() {
        return error(format!("sigprocmask: {e}"), None);
    }
    let sfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(e) => return error(format!("signalfd: {e}"), None),
    };

    // Limits: a cgroup when we can have one, rlimits otherwise.
    let cg = cgroup::detect().ok().and_then(|mode| {
        Cgroup::create(
            &mode,
            &cfg.id,
            cfg.limits.memory,
            cfg.limits.pids,
            cfg.limits.cpus,
        )
        .ok()
    });
    mark!("cgroup");
    if cg.is_some() {
        cfg.limits.address_space_fallback = false;
    }
    let rlimit_nproc = if cg.is_none() {
        Some(cfg.limits.pids + count_processes_of(nix::unistd::geteuid().as_raw()))
    } else {
        None
    };

    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let (sync_r, sync_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return error(format!("pipe: {e}"), None),
    };

    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    if !cfg.network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let started = Instant::now();
    let mut stack = vec![0u8; 256 * 1024];
    let sfd_raw = sfd.as_fd().as_raw_fd();
    let sync_r_raw = sync_r.as_raw_fd();
    let sync_w_raw = sync_w.as_raw_fd();
    let child_cfg = cfg.clone();
    let cb = Box::new(move || -> isize {
        // SAFETY: in the child (a copy of this single-threaded process); these fds are ours.
        // The init dies with the helper (and so every process of the sandbox with it).
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            libc::close(sfd_raw);
            libc::close(sync_w_raw);
        }
        let sync = unsafe { OwnedFd::from_raw_fd(sync_r_raw) };
        super::init::run(&child_cfg, sync, rlimit_nproc)
    });
    // SAFETY: this process is single-threaded; the callback only uses async-signal-safe
    // operations until it has become the sandbox's own init.
    let child = match unsafe { nix::sched::clone(cb, &mut stack, flags, Some(libc::SIGCHLD)) } {
        Ok(pid) => pid,
        Err(e) => {
            if let Some(cg) = &cg {
                cg.destroy();
            }
            let hint = matches!(
                e,
                nix::Error::EPERM | nix::Error::ENOSPC | nix::Error::EACCES | nix::Error::EINVAL
            )
            .then(userns_hint);
            return error(
                format!("cannot create the sandbox's namespaces: clone: {e}"),
                hint,
            );
        }
    };
    drop(sync_r);
    mark!("clone");

    let setup = (|| -> Result<(), String> {
        write_id_maps(child, euid, egid)?;
        phases.push(("idmaps".into(), t0.elapsed().as_micros() as u64));
        if let Some(cg) = &cg {
            cg.add(child.as_raw())
                .map_err(|e| format!("cannot move the sandbox into its cgroup: {e}"))?;
        }
        nix::unistd::write(&sync_w, b"1").map_err(|e| format!("sync: {e}"))?;
        Ok(())
    })();
    drop(sync_w);
    mark!("maps");
    if let Err(e) = setup {
        let _ = signal::kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        if let Some(cg) = &cg {
            cg.destroy();
        }
        return error(e, Some(userns_hint()));
    }

    // Wait for the init; a backstop beyond the steps' own timeouts.
    let total: u64 = cfg.steps.iter().map(|s| s.timeout_ms).sum();
    let backstop = Duration::from_millis(total + 15_000);
    let mut killed_for = None;
    loop {
        let left = backstop.saturating_sub(started.elapsed());
        if left.is_zero() {
            let _ = signal::kill(child, Signal::SIGKILL);
            killed_for.get_or_insert("the sandbox did not finish in time and was killed");
        }
        let mut fds = [nix::poll::PollFd::new(
            sfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = left
            .as_millis()
            .min(60_000)
            .max(if left.is_zero() { 100 } else { 0 }) as u16;
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
        while let Ok(Some(si)) = sfd.read_signal() {
            let sig = si.ssi_signo as i32;
            if sig == libc::SIGTERM || sig == libc::SIGINT || sig == libc::SIGHUP {
                let _ = signal::kill(child, Signal::SIGKILL);
                killed_for.get_or_insert("the sandbox was stopped by the runner");
            }
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => continue,
            Ok(_) | Err(_) => break,
        }
    }
    let mut limits = LimitEvents {
        enforcement: "rlimits".into(),
        ..Default::default()
    };
    if let Some(cg) = &cg {
        limits.enforcement = cg.mode.short().into();
        limits.oom_killed = cg.oom_killed();
        limits.pids_limit_hit = cg.pids_limit_hit();
        limits.memory_peak = cg.memory_peak();
        cg.destroy();
    }
    mark!("cgroup-removed");
    proto::send(CONTROL_FD, &Msg::Limits(limits));
    proto::send(CONTROL_FD, &Msg::Timing { phases });
    if let Some(why) = killed_for {
        proto::send(
            CONTROL_FD,
            &Msg::Error {
                message: why.into(),
                hint: None,
            },
        );
    }
    0
}

fn write_id_maps(child: Pid, euid: u32, egid: u32) -> Result<(), String> {
    let base = format!("/proc/{}", child.as_raw());
    let (uid_map, gid_map) = if euid == 0 {
        (
            format!("0 0 1\n{SANDBOX_UID} {UNPRIVILEGED_HOST_ID} 1\n"),
            format!("0 0 1\n{SANDBOX_UID} {UNPRIVILEGED_HOST_ID} 1\n"),
        )
    } else {
        std::fs::write(format!("{base}/setgroups"), "deny")
            .map_err(|e| format!("cannot write setgroups of the sandbox: {e}"))?;
        (
            format!("{SANDBOX_UID} {euid} 1\n"),
            format!("{SANDBOX_UID} {egid} 1\n"),
        )
    };
    std::fs::write(format!("{base}/uid_map"), uid_map)
        .map_err(|e| format!("cannot write the sandbox's uid_map: {e}"))?;
    std::fs::write(format!("{base}/gid_map"), gid_map)
        .map_err(|e| format!("cannot write the sandbox's gid_map: {e}"))?;
    Ok(())
}

fn count_processes_of(uid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .filter(|e| e.metadata().map(|m| m.uid() == uid).unwrap_or(false))
                .count() as u64
        })
        .unwrap_or(0)
}
