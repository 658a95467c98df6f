//! The sandbox server (`llm-sandbox __sandbox`): a single-threaded process, one per
//! concurrency slot, re-executed from the runner's binary. It receives requests on its
//! socket (fd 3: the job's stdin, stdout, stderr and control fds, and a memfd holding its
//! configuration; never a path to re-read),
//! clones each sandbox's init into new namespaces inside the slot's cgroup, writes the id
//! maps, waits (a `K` on the socket kills the sandbox), and reports on the control fd.
//! It dies with the runner (parent-death signal, or its socket closing).

use super::cgroup::{self, Cgroup};
use super::proto::{self, LimitEvents, Msg};
use super::{SandboxConfig, CONTROL_FD, SANDBOX_UID};
use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::IoSliceMut;
use std::os::fd::RawFd;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Host uid/gid the program runs as when the runner is root.
pub const UNPRIVILEGED_HOST_ID: u32 = 65534;

fn error(ctl: RawFd, message: impl Into<String>, hint: Option<String>) {
    proto::send(
        ctl,
        &Msg::Error {
            message: message.into(),
            hint,
        },
    );
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

/// The server's main loop. Returns the process exit code.
pub fn main() -> i32 {
    // Die with the runner, and refuse to run orphaned.
    let parent = nix::unistd::getppid();
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        return 1;
    }
    // SAFETY: fd 3 is the socket the runner gave us.
    let sock = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    if mask.thread_block().is_err() {
        return 1;
    }
    let Ok(sfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    else {
        return 1;
    };
    // The slot's cgroup: created and joined once; every sandbox is forked inside it.
    let slot_name = format!(
        "{}-slot-{}",
        std::env::args().nth(2).unwrap_or_else(|| "ls-0-0".into()),
        std::process::id()
    );
    // Never the OOM killer's choice (as root: others may not lower it): the memory limit of
    // the slot's cgroup covers this server and its sandboxes' inits too, and a job filling
    // its tmpfs mounts must lose its own processes, not the server (README, "Security").
    if nix::unistd::geteuid().is_root() {
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    }
    let cg = cgroup::detect()
        .ok()
        .and_then(|mode| Cgroup::create(&mode, &slot_name).ok())
        .filter(|cg| {
            let ok = cg.add(std::process::id() as i32).is_ok();
            if !ok {
                cg.destroy();
            }
            ok
        });
    // A server that may preload Python (started after a job asked for it) overwrites the
    // heap memory it frees from now on (M_PERTURB): a sandbox cloned from it keeps no earlier
    // job's configuration in its memory, which matters when its step does not execve.
    let preload_env = std::env::var(PRELOAD_ENV).ok().filter(|v| !v.is_empty());
    let preload_ok = preload_env.is_some();
    if preload_ok {
        super::pyembed::scrub_freed_memory(true);
    }
    // Read once here, inherited by every sandbox cloned from this server.
    super::init::snapshot_etc();
    let _ = super::seccomp::program();
    let warm_root = std::env::args_os()
        .nth(3)
        .map(PathBuf::from)
        .filter(|p| p.is_dir());
    // The warm sandboxes' root, built once (still single-threaded here: unshare needs it).
    if let Some(root) = &warm_root {
        super::init::prepare_template(root);
    }
    // As root: one network namespace for the slot's sandboxes without network, checked
    // after every job (see `slotnet`); else each sandbox gets its own.
    let mut slot_net = super::slotnet::SlotNet::new();
    // What the job that asked needs (its start-up variables, PATH, modules), when it could
    // use a preloaded interpreter: initialised now, before this server's first sandbox, so
    // that its first jobs do not start python3 (else it preloads after the first job).
    if let Some(req) = preload_env
        .as_deref()
        .and_then(|v| serde_json::from_str::<super::pyembed::Request>(v).ok())
    {
        super::pyembed::preload(req);
    }
    let mut warm: Option<Warm> = None;
    let mut code = 0;
    // A request's data is one byte; its fds carry the rest.
    let mut buf = [0u8; 16];
    let mut exiting: Vec<Pid> = Vec::new();
    loop {
        if warm.is_none() {
            if super::pyembed::loaded() {
                super::pyembed::scrub_stack();
            }
            if let Some(root) = &warm_root {
                warm = spawn_warm(root, slot_net.as_ref());
            }
        }
        let mut cmsg = nix::cmsg_space!([RawFd; super::REQUEST_FDS]);
        let (n, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => {
                    let mut fds = Vec::new();
                    if let Ok(cmsgs) = m.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(f) = c {
                                fds.extend(f);
                            }
                        }
                    }
                    (m.bytes, fds)
                }
                Err(nix::Error::EINTR) => continue,
                Err(_) => break,
            }
        };
        // SAFETY: the fds arrived with the message and are ours now.
        let fds: Vec<OwnedFd> = fds
            .into_iter()
            .map(|f| unsafe { OwnedFd::from_raw_fd(f) })
            .collect();
        if n == 0 {
            break;
        }
        if fds.len() != super::REQUEST_FDS {
            continue;
        }
        let mut fds = fds;
        let config = fds.pop().map(std::fs::File::from);
        // Inits whose sandboxes are torn down by now are reaped; the others stay pending
        // (each still counts as a pid of the slot's cgroup: see `own_pids`).
        exiting.retain(|pid| {
            matches!(
                waitpid(*pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        let server = ServerState {
            cg: cg.as_ref(),
            sock: &sock,
            sfd: &sfd,
            warm_root: warm_root.as_deref(),
            exiting: exiting.len() as u64,
            preload_ok,
            net: slot_net.as_ref(),
        };
        let mut preload = None;
        let (stop, reap) = serve_one(config, fds, &server, &mut warm, &mut preload);
        // No process of the job is left: the next job gets the slot's network namespace
        // only as it was when new (else a new one, and the warm sandbox cloned into the old
        // one goes).
        let touched = slot_net.as_mut().is_some_and(|n| !n.untouched());
        if touched {
            if !slot_net.as_mut().is_some_and(|n| n.renew()) {
                slot_net = None;
            }
            if let Some(w) = warm.take() {
                let _ = signal::kill(w.pid, Signal::SIGKILL);
                let _ = waitpid(w.pid, None);
            }
        }
        if let Some(req) = preload {
            // After the job that asked (which ran as usual): every sandbox cloned from now on
            // carries the interpreter.
            super::pyembed::scrub_stack();
            super::pyembed::preload(req);
        }
        if let Some(pid) = reap {
            // Its namespaces are torn down while the runner already has the result and the
            // next request may come: not waited for here.
            if matches!(
                waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            ) {
                exiting.push(pid);
            }
        }
        if stop {
            code = 1;
            break;
        }
    }
    if let Some(w) = warm.take() {
        let _ = signal::kill(w.pid, Signal::SIGKILL);
        let _ = waitpid(w.pid, None);
    }
    for pid in exiting {
        let _ = waitpid(pid, None);
    }
    if let Some(cg) = &cg {
        cg.leave_and_destroy();
    }
    code
}

/// Set in the environment of a server that may preload Python: `1`, or the JSON of the
/// [`super::pyembed::Request`] to preload when it starts.
pub const PRELOAD_ENV: &str = "LLM_SANDBOX_SERVER_PRELOAD";

/// A sandbox set up ahead of its job (see [`super::init::run_warm`]).
struct Warm {
    pid: Pid,
    job: OwnedFd,
    done: OwnedFd,
}

/// Every sandbox gets new namespaces of every kind. The network namespace is its own too, or
/// (as root, without network) its slot's, which no job leaves changed for the next
/// ([`super::slotnet`]); a job with network gets it through [`super::usernet`], never the
/// host's namespace.
const CLONE_FLAGS: CloneFlags = CloneFlags::CLONE_NEWUSER
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWCGROUP);

/// Closes every fd but `keep` (async-signal-safe: close_range over the gaps).
fn close_all_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    let mut from: u32 = 0;
    for k in keep {
        let k = k as u32;
        if k > from {
            // SAFETY: closing fds of our own process.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0u32) };
        }
        from = k + 1;
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

/// Hands a job to a warm sandbox: the config and its 4 fds.
fn send_job(
    w: &Warm,
    cfg: &SandboxConfig,
    rlimit_nproc: Option<u64>,
    fds: &[OwnedFd],
) -> Result<(), String> {
    use nix::sys::socket::{sendmsg, ControlMessage};
    let msg = serde_json::to_vec(&serde_json::json!({ "cfg": cfg, "rlimit_nproc": rlimit_nproc }))
        .map_err(|e| e.to_string())?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [std::io::IoSlice::new(&msg)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(w.job.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Clones the next sandbox before its job arrives: namespaces, id maps and the
/// job-independent setup happen while the server would otherwise wait.
fn spawn_warm(root: &std::path::Path, net: Option<&super::slotnet::SlotNet>) -> Option<Warm> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (job_ours, job_theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ok()?;
    let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    let (sync_r, sync_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    let raws = (
        job_theirs.as_raw_fd(),
        done_w.as_raw_fd(),
        sync_r.as_raw_fd(),
    );
    let root = root.to_path_buf();
    let cb = Box::new(move || -> isize {
        let (job_theirs, done_w, sync_r) = raws;
        // SAFETY: in the child of a single-threaded process; these fds are ours.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // Keep only our three fds: this sandbox is cloned while another job runs, whose
            // stdio and control pipes must not stay open here.
            close_all_except(&[sync_r, job_theirs, done_w]);
            // Hold 0-3 (the job's fds go there later) so that nothing the setup opens
            // lands on them.
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            for fd in 0..=3 {
                if fd != null {
                    libc::dup2(null, fd);
                }
            }
            if null > 3 {
                libc::close(null);
            }
            let (sync, job, done) = (
                OwnedFd::from_raw_fd(sync_r),
                OwnedFd::from_raw_fd(job_theirs),
                OwnedFd::from_raw_fd(done_w),
            );
            super::init::run_warm(&root, sync, job, done)
        }
    });
    let pid = clone_sandbox(cb, net).ok()?;
    drop((job_theirs, done_w, sync_r));
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    if write_id_maps(pid, euid, egid).is_err() || nix::unistd::write(&sync_w, b"1").is_err() {
        let _ = signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        return None;
    }
    Some(Warm {
        pid,
        job: job_ours,
        done: done_r,
    })
}

/// What a server keeps for its whole life.
struct ServerState<'a> {
    /// The slot's cgroup.
    cg: Option<&'a Cgroup>,
    /// The socket to the runner.
    sock: &'a OwnedFd,
    sfd: &'a SignalFd,
    /// Where warm sandboxes mount their root (none: no warm sandboxes).
    warm_root: Option<&'a std::path::Path>,
    /// Inits of earlier sandboxes not reaped yet (still pids of the slot's cgroup).
    exiting: u64,
    /// This server may preload Python (it scrubs freed memory).
    preload_ok: bool,
    /// The slot's network namespace, for sandboxes without network.
    net: Option<&'a super::slotnet::SlotNet>,
}

/// Runs one sandbox. Returns whether the server must stop (runner gone), and the init to
/// reap once the runner has its answer.
fn serve_one(
    config: Option<std::fs::File>,
    mut fds: Vec<OwnedFd>,
    server: &ServerState<'_>,
    warm_slot: &mut Option<Warm>,
    preload: &mut Option<super::pyembed::Request>,
) -> (bool, Option<Pid>) {
    let ServerState {
        cg,
        sock,
        sfd,
        warm_root,
        exiting,
        preload_ok,
        net,
    } = *server;
    let warm = warm_slot.take();
    let t0 = Instant::now();
    let ctl = fds[3].as_raw_fd();
    let mut phases: Vec<(String, u64)> = Vec::new();
    macro_rules! mark {
        ($name:expr) => {
            phases.push(($name.to_string(), t0.elapsed().as_micros() as u64))
        };
    }
    let read = |mut f: std::fs::File| -> Result<SandboxConfig, String> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut bytes).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    let mut cfg: SandboxConfig = match config.ok_or_else(|| "none sent".to_string()).and_then(read)
    {
        Ok(c) => c,
        Err(e) => {
            error(
                ctl,
                format!("cannot read the sandbox's configuration: {e}"),
                None,
            );
            return (false, None);
        }
    };
    // Limits: the slot's cgroup when there is one, rlimits otherwise. The server, the next
    // job's warm sandbox (cloned while this job runs) and the inits of earlier jobs still
    // exiting are more of its pids.
    let before = cg.map(|c| c.counters()).unwrap_or_default();
    // (slirp4netns, with its threads, for a job with network)
    let own_pids = if warm_root.is_some() { 2 } else { 1 } + exiting + 4 * u64::from(cfg.network);
    let cg = cg.filter(|c| {
        c.set_limits(
            cfg.limits.memory,
            cfg.limits.pids + own_pids,
            cfg.limits.cpus,
        )
        .is_ok()
    });
    if cg.is_some() {
        cfg.limits.address_space_fallback = false;
    }
    let rlimit_nproc = if cg.is_none() {
        Some(cfg.limits.pids + count_processes_of(nix::unistd::geteuid().as_raw()))
    } else {
        None
    };
    mark!("limits");
    *preload = if preload_ok {
        super::pyembed::request(&cfg)
    } else {
        None
    };
    // A warm sandbox takes the job when it can (no network, the host's system directories,
    // and with a template root every bind's mount point in it: `init::warm_fits`).
    let fits = || warm_root.is_some_and(|root| super::init::warm_fits(&cfg, root));
    let warm_used = match warm {
        Some(w) if fits() => match send_job(&w, &cfg, rlimit_nproc, &fds) {
            Ok(()) => Some((w.pid, w.done)),
            Err(_) => {
                let _ = signal::kill(w.pid, Signal::SIGKILL);
                let _ = waitpid(w.pid, None);
                None
            }
        },
        Some(w) => {
            // Kept for the next job that fits (it was set up before this job arrived, so it
            // holds nothing of it).
            *warm_slot = Some(w);
            None
        }
        None => None,
    };
    // A job with network: its slirp4netns, stopped when the job ends (dropped below).
    let mut user_net = None;
    let (child, done_r) = if let Some(x) = warm_used {
        mark!("warm");
        if let Some(root) = warm_root.filter(|_| !super::pyembed::loaded()) {
            // The next job's sandbox is set up while this one runs (not with a preloaded
            // interpreter: it would be cloned with this job's configuration in memory, and
            // its step does not execve; the serving loop clones it after this job instead).
            *warm_slot = spawn_warm(root, net);
        }
        x
    } else {
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        // The init says "done" on this pipe once its results are sent and every process of
        // the sandbox is dead: the runner gets its answer while the namespaces are torn down.
        let (done_r, done_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                error(ctl, format!("pipe: {e}"), None);
                return (false, None);
            }
        };
        let (sync_r, sync_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => {
                error(ctl, format!("pipe: {e}"), None);
                return (false, None);
            }
        };
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let (sfd_raw, sock_raw, sync_r_raw, sync_w_raw) = (
            sfd.as_fd().as_raw_fd(),
            sock.as_raw_fd(),
            sync_r.as_raw_fd(),
            sync_w.as_raw_fd(),
        );
        let (done_r_raw, done_w_raw) = (done_r.as_raw_fd(), done_w.as_raw_fd());
        let child_cfg = cfg.clone();
        let cb = Box::new(move || -> isize {
            // SAFETY: in the child (a copy of this single-threaded process): put the job's fds
            // in place as 0-3 (fd 3 was the server's socket: replaced), close the rest.
            // The init dies with the server (and so every process of the sandbox with it).
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                libc::close(sfd_raw);
                libc::close(sync_w_raw);
                for (i, fd) in raw.iter().enumerate() {
                    libc::dup2(*fd, i as i32);
                }
                for fd in &raw {
                    if *fd > 3 {
                        libc::close(*fd);
                    }
                }
                if sock_raw > 3 {
                    libc::close(sock_raw);
                }
            }
            unsafe {
                libc::close(done_r_raw);
            }
            let sync = unsafe { OwnedFd::from_raw_fd(sync_r_raw) };
            let done = unsafe { OwnedFd::from_raw_fd(done_w_raw) };
            super::init::run(&child_cfg, sync, done, rlimit_nproc)
        });
        let cloned = clone_sandbox(cb, net.filter(|_| !cfg.network));
        let child = match cloned {
            Ok(pid) => pid,
            Err(e) => {
                let hint = matches!(
                    e,
                    nix::Error::EPERM
                        | nix::Error::ENOSPC
                        | nix::Error::EACCES
                        | nix::Error::EINVAL
                )
                .then(userns_hint);
                error(
                    ctl,
                    format!("cannot create the sandbox's namespaces: clone: {e}"),
                    hint,
                );
                return (false, None);
            }
        };
        drop(sync_r);
        drop(done_w);
        mark!("clone");
        let setup = write_id_maps(child, euid, egid).map_err(|e| (e, Some(userns_hint())));
        mark!("maps");
        let setup = setup.and_then(|()| match (cfg.network, &cfg.user_net) {
            (false, _) => Ok(None),
            (true, Some(program)) => super::usernet::start(program, child)
                .map(Some)
                .map_err(|e| (e, None)),
            (true, None) => Err((
                format!(
                    "`network = true` needs {} on the native backend (it is not installed)",
                    super::usernet::PROGRAM
                ),
                Some(super::usernet::INSTALL_HINT.to_string()),
            )),
        });
        let setup = setup.and_then(|net| {
            nix::unistd::write(&sync_w, b"1")
                .map(|_| net)
                .map_err(|e| (format!("sync: {e}"), None))
        });
        drop(sync_w);
        match setup {
            Ok(net) => {
                if net.is_some() {
                    mark!("network");
                }
                user_net = net;
            }
            Err((e, hint)) => {
                let _ = signal::kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                error(ctl, e, hint);
                return (false, None);
            }
        }

        (child, done_r)
    };
    // The init has the job's stdin, stdout and stderr: this server's copies go, so that
    // their ends are the sandbox's (`init::release_stdio`); the control fd stays, for the
    // answer.
    drop(fds.drain(..3));
    // Wait for the init; a backstop beyond the steps' own timeouts.
    let total: u64 = cfg.steps.iter().map(|s| s.timeout_ms).sum();
    let backstop = Duration::from_millis(total + 15_000);
    let mut killed_for = None;
    let mut stop_server = false;
    let mut reap_later = None;
    loop {
        let left = backstop.saturating_sub(t0.elapsed());
        if left.is_zero() && killed_for.is_none() {
            let _ = signal::kill(child, Signal::SIGKILL);
            killed_for = Some("the sandbox did not finish in time and was killed");
        }
        let ms = if left.is_zero() {
            100
        } else {
            left.as_millis().min(60_000) as u16
        };
        let mut pfds = [
            nix::poll::PollFd::new(sfd.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(sock.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(done_r.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        let _ = nix::poll::poll(&mut pfds, nix::poll::PollTimeout::from(ms));
        let sock_ready = pfds[1].revents().is_some_and(|r| !r.is_empty());
        if pfds[2].revents().is_some_and(|r| !r.is_empty()) && killed_for.is_none() {
            let mut b = [0u8; 1];
            if matches!(nix::unistd::read(done_r.as_raw_fd(), &mut b), Ok(1)) {
                // Results are out and the sandbox's processes are dead; reap it later.
                reap_later = Some(child);
                break;
            }
        }
        while let Ok(Some(si)) = sfd.read_signal() {
            let sig = si.ssi_signo as i32;
            if sig == libc::SIGTERM || sig == libc::SIGINT || sig == libc::SIGHUP {
                let _ = signal::kill(child, Signal::SIGKILL);
                killed_for.get_or_insert("the sandbox was stopped by the runner");
                stop_server = true;
            }
        }
        if sock_ready {
            let mut b = [0u8; 16];
            match nix::sys::socket::recv(sock.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT) {
                Ok(0) | Err(nix::Error::ECONNRESET) => {
                    // The runner is gone.
                    let _ = signal::kill(child, Signal::SIGKILL);
                    killed_for.get_or_insert("the sandbox was stopped by the runner");
                    stop_server = true;
                }
                Ok(_) => {
                    let _ = signal::kill(child, Signal::SIGKILL);
                    killed_for.get_or_insert("the sandbox was stopped by the runner");
                }
                Err(_) => {}
            }
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => continue,
            Ok(_) | Err(_) => break,
        }
    }
    mark!(if reap_later.is_some() {
        "init-done"
    } else {
        "init-exited"
    });
    drop(user_net);
    let mut limits = LimitEvents {
        enforcement: "rlimits".into(),
        ..Default::default()
    };
    if let Some(cg) = cg {
        let after = cg.counters();
        limits.enforcement = cg.mode.short().into();
        limits.oom_killed = after.oom_kills > before.oom_kills;
        limits.pids_limit_hit = after.pids_max > before.pids_max;
        limits.memory_peak = cg.memory_peak();
    }
    proto::send(ctl, &Msg::Limits(limits));
    if let Some(why) = killed_for {
        proto::send(
            ctl,
            &Msg::Error {
                message: why.into(),
                hint: None,
            },
        );
    }
    mark!("done");
    proto::send(ctl, &Msg::Timing { phases });
    (stop_server, reap_later)
}

/// The sandboxes' stack: the init runs on it, and so do the processes it forks for the
/// steps (a preloaded Python step runs the program on it). 8 MiB, mapped once per server
/// ([`super::CloneStack`]).
static SANDBOX_STACK: super::CloneStack = super::CloneStack::new(8 << 20);

/// `clone(2)` on one stack kept for the server's life: a fresh one per sandbox cost a
/// zeroing and its page faults each time (the child has its own copy of it anyway).
fn clone_with_stack(cb: nix::sched::CloneCb<'_>, flags: CloneFlags) -> nix::Result<Pid> {
    // SAFETY: the server is single-threaded, and the child gets a copy of this address
    // space (no CLONE_VM): the stack is the child's own from then on.
    unsafe { SANDBOX_STACK.clone(cb, flags) }
}

/// Clones a sandbox's init into new namespaces of every kind, or, given the slot's network
/// namespace, into that one and new ones of every other kind.
fn clone_sandbox(
    cb: nix::sched::CloneCb<'_>,
    net: Option<&super::slotnet::SlotNet>,
) -> nix::Result<Pid> {
    use std::sync::atomic::Ordering;
    match net.filter(|n| n.enter()) {
        Some(n) => {
            super::init::IN_SLOT_NET.store(true, Ordering::Relaxed);
            let r = clone_with_stack(cb, CLONE_FLAGS.difference(CloneFlags::CLONE_NEWNET));
            n.leave();
            super::init::IN_SLOT_NET.store(false, Ordering::Relaxed);
            r
        }
        None => clone_with_stack(cb, CLONE_FLAGS),
    }
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
