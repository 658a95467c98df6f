//! The sandbox's init: pid 1 of the new pid namespace, root of the new user namespace.
//! Builds the root filesystem, runs each step as the unprivileged sandbox user, reaps,
//! kills what a step leaves behind, and copies the requested files out.

use super::proto::{self, Msg, StepResult};
use super::{seccomp, set_rlimit, SandboxConfig, Step, StepKind, CONTROL_FD, SANDBOX_UID};
use crate::lang::SYSTEM_DIRS;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::waitpid;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Entries of the host's `/etc` shown read-only (exact names, or prefixes ending in `*`).
/// Everything else of `/etc` (shadow, sudoers, ssh keys, …) does not exist inside.
pub const ETC_ALLOW: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "java-*",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "localtime",
    "timezone",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "R",
    "fonts",
    "python3*",
    "perl",
    "mime.types",
    "protocols",
    "services",
    "os-release",
    "debian_version",
    "gemrc",
    "terminfo",
    "inputrc",
    "pip.conf",
    "npmrc",
    "matplotlibrc",
    "ImageMagick-6",
    "profile",
];

struct State {
    out_dir: OwnedFd,
    sfd: SignalFd,
    filter: &'static seccompiler::BpfProgram,
    rlimit_nproc: Option<u64>,
}

/// Read-only binds are made read-only all at once with `mount_setattr(AT_RECURSIVE)`
/// (Linux 5.12+) instead of one statvfs + remount each: set when the kernel has it.
static DEFER_RO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const AT_RECURSIVE: libc::c_uint = 0x8000;

fn mount_setattr_ro(path: &Path) -> std::io::Result<()> {
    mount_setattr(path, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, AT_RECURSIVE)
}

fn mount_setattr(path: &Path, set: u64, clear: u64, flags: libc::c_uint) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let p = cstr(path);
    // SAFETY: a valid path and attribute struct of the size we pass.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn have_mount_setattr() -> bool {
    // An invalid fd: EBADF when the syscall exists, ENOSYS when it does not.
    // SAFETY: no pointer is dereferenced with a NULL attr and size 0.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            0,
            std::ptr::null::<MountAttr>(),
            0usize,
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

fn err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

fn setup_failed(message: String) -> isize {
    proto::send(
        CONTROL_FD,
        &Msg::Error {
            message: format!("sandbox setup failed: {message}"),
            hint: None,
        },
    );
    1
}

fn wait_sync(sync: OwnedFd) -> bool {
    let mut b = [0u8; 1];
    let mut f = std::fs::File::from(sync);
    matches!(f.read(&mut b), Ok(1))
}

/// A sandbox cloned for a known job: the whole setup, then the steps.
pub fn run(cfg: &SandboxConfig, sync: OwnedFd, done: OwnedFd, rlimit_nproc: Option<u64>) -> isize {
    unperturb();
    // Wait for the server to write our id maps.
    if !wait_sync(sync) {
        return 1;
    }
    let t0 = Instant::now();
    let root = cfg.root_mount.as_path();
    let state = setup_base(root, cfg.rootfs.as_deref(), cfg.network)
        .and_then(|base| setup_job(cfg, root, base, rlimit_nproc));
    match state {
        Ok(state) => run_steps(cfg, state, t0, done),
        Err(e) => setup_failed(e),
    }
}

/// A warm sandbox: set up ahead of its job (no network, the host's system directories),
/// it then receives the job on `job` (the config as JSON, and its stdin, stdout, stderr and
/// control fds), which it puts in place as fds 0-3.
pub fn run_warm(root: &Path, sync: OwnedFd, job: OwnedFd, done: OwnedFd) -> isize {
    unperturb();
    if !wait_sync(sync) {
        return 1;
    }
    let base = if TEMPLATE.load(std::sync::atomic::Ordering::Relaxed) {
        setup_from_template(root)
    } else {
        setup_base(root, None, false)
    };
    // The job message's size first (a zeroed 1 MiB buffer cost page faults every time).
    let size = nix::sys::socket::recv(
        job.as_raw_fd(),
        &mut [0u8; 1],
        nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_TRUNC,
    );
    let Ok(size) = size else { return 1 };
    let mut buf = vec![0u8; size.max(1)];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, fds) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        match nix::sys::socket::recvmsg::<()>(
            job.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds = Vec::new();
                for c in m.cmsgs().into_iter().flatten() {
                    if let nix::sys::socket::ControlMessageOwned::ScmRights(f) = c {
                        fds.extend(f);
                    }
                }
                (m.bytes, fds)
            }
            Err(_) => return 1,
        }
    };
    if fds.len() != 4 {
        return 1;
    }
    // SAFETY: the fds arrived with the message; 0-3 become the job's stdio and control.
    unsafe {
        for (i, fd) in fds.iter().enumerate() {
            libc::dup2(*fd, i as i32);
        }
        for fd in &fds {
            if *fd > 3 {
                libc::close(*fd);
            }
        }
    }
    drop(job);
    let t0 = Instant::now();
    #[derive(serde::Deserialize)]
    struct Job {
        cfg: SandboxConfig,
        rlimit_nproc: Option<u64>,
    }
    let job: Job = match serde_json::from_slice(&buf[..n]) {
        Ok(j) => j,
        Err(e) => return setup_failed(format!("bad job message: {e}")),
    };
    match base.and_then(|base| setup_job(&job.cfg, root, base, job.rlimit_nproc)) {
        Ok(state) => run_steps(&job.cfg, state, t0, done),
        Err(e) => setup_failed(e),
    }
}

fn run_steps(cfg: &SandboxConfig, mut state: State, t0: Instant, done: OwnedFd) -> isize {
    proto::send(
        CONTROL_FD,
        &Msg::Ready {
            setup_us: t0.elapsed().as_micros() as u64,
        },
    );
    for step in &cfg.steps {
        let r = run_step(cfg, step, &mut state);
        let ok = r.exit_code == Some(0) && !r.timed_out && r.spawn_error.is_none();
        proto::send(CONTROL_FD, &Msg::Step(r));
        if !ok && step.kind != StepKind::Run {
            break;
        }
    }
    // Every process of the job is dead: what it left in /tmp and /dev/shm (and in /sandbox
    // when nothing is copied out of it) is memory of the slot's limit, which the init may
    // need now and the slot's next job must have back: it is freed before the server hears
    // "done" (see `free_tmpfs`).
    let nothing_to_collect = cfg.collect_globs.is_empty() && cfg.collect_paths.is_empty();
    for m in ["/tmp", "/dev/shm", "/sandbox"] {
        if m != "/sandbox" || (nothing_to_collect && cfg.persistent_workdir.is_none()) {
            free_tmpfs(m);
        }
    }
    let (files, refused) = collect(cfg, &state);
    proto::send(CONTROL_FD, &Msg::Collected { files, refused });
    // The job's stdio and control pipe end here, not when this process has exited (its
    // memory and namespaces are torn down after that): the runner sees their ends at once.
    for fd in 0..=CONTROL_FD {
        // SAFETY: closing this process's own fds; nothing uses them after this.
        unsafe { libc::close(fd) };
    }
    // Every process of the sandbox is dead (each step ends with kill + reap): tell the
    // server, which answers the runner while this process and its namespaces go away.
    let _ = nix::unistd::write(&done, b"1");
    0
}

/// The job's stdio (fds 0-2, which the run step got as its own) is the run step's alone
/// once it has started (the last step: nothing after it uses them): this process holds
/// /dev/null there instead, so the ends of the job's stdin and stdout are its processes'
/// (a program talking with an interactor that closes its stdout gives the other an end of
/// input while it still runs: `backend::Wire`; a writer to its stdin is told at once that
/// nobody reads any more).
fn release_stdio() {
    // SAFETY: plain fd calls on this process's own fds; the step's are its own copies.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return;
        }
        for fd in 0..=2 {
            libc::dup2(null, fd);
        }
        libc::close(null);
    }
}

/// A sandbox's memory holds no other job's data after its job arrives: the server's
/// scrubbing of freed memory (M_PERTURB) stops here, where it would only cost time.
fn unperturb() {
    super::pyembed::scrub_freed_memory(false);
}

fn bind_ro(src: &Path, dest: &Path, writable: bool) -> Result<(), String> {
    mount(
        Some(src),
        dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err(format!("bind {}", src.display())))?;
    if writable || DEFER_RO.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    // A remount inside a user namespace must keep the flags the source mount has locked.
    let st =
        nix::sys::statvfs::statvfs(dest).map_err(err(format!("statvfs {}", dest.display())))?;
    let f = st.flags();
    use nix::sys::statvfs::FsFlags;
    let mut flags =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    if f.contains(FsFlags::ST_NODEV) {
        flags |= MsFlags::MS_NODEV;
    }
    if f.contains(FsFlags::ST_NOEXEC) {
        flags |= MsFlags::MS_NOEXEC;
    }
    if f.contains(FsFlags::ST_NOATIME) {
        flags |= MsFlags::MS_NOATIME;
    }
    if f.contains(FsFlags::ST_NODIRATIME) {
        flags |= MsFlags::MS_NODIRATIME;
    }
    if f.contains(FsFlags::ST_RELATIME) {
        flags |= MsFlags::MS_RELATIME;
    }
    mount(None::<&str>, dest, None::<&str>, flags, None::<&str>)
        .map_err(err(format!("remount {} read-only", dest.display())))
}

/// Whether `dest` is below a system directory or `/etc`: binds of the host's own directories
/// there, where no mount point of a job's bind may be made (it would be on the host).
fn under_system_dir(dest: &Path) -> bool {
    SYSTEM_DIRS
        .iter()
        .chain(["/etc"].iter())
        .any(|d| dest.starts_with(d))
}

/// `dest` (a path inside the sandbox) below the root being built at `root`.
fn in_root(root: &Path, dest: &Path) -> std::path::PathBuf {
    root.join(dest.strip_prefix("/").unwrap_or(dest))
}

/// Recreates `host` (a directory, file or symlink) at `root/host` and binds it.
fn replicate(root: &Path, host: &Path, dest: &Path, writable: bool) -> Result<(), String> {
    let target = in_root(root, dest);
    let Ok(meta) = std::fs::symlink_metadata(host) else {
        return Ok(());
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(err(format!("mkdir {}", parent.display())))?;
    }
    if meta.file_type().is_symlink() {
        let link = std::fs::read_link(host).map_err(err(format!("readlink {}", host.display())))?;
        return symlink(&link, &target)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(err(format!("symlink {}", target.display())));
    }
    if meta.is_dir() {
        std::fs::create_dir_all(&target).map_err(err(format!("mkdir {}", target.display())))?;
    } else if !target.exists() {
        std::fs::write(&target, b"").map_err(err(format!("create {}", target.display())))?;
    }
    bind_ro(host, &target, writable)
}

/// Makes a mount we created ourselves read-only (and nosuid, plus `extra`).
fn remount_ro(path: &Path, extra: MsFlags) -> Result<(), String> {
    let flags =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | extra;
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(err(format!("remount {} read-only", path.display())))
}

fn tmpfs(dest: &Path, opts: &str, extra: MsFlags) -> Result<(), String> {
    std::fs::create_dir_all(dest).map_err(err(format!("mkdir {}", dest.display())))?;
    mount(
        Some("tmpfs"),
        dest,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
        Some(opts),
    )
    .map_err(err(format!("mount tmpfs on {}", dest.display())))
}

fn etc_allowed(name: &str) -> bool {
    ETC_ALLOW.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *a,
    })
}

/// What the first, job-independent part of the setup leaves for the second.
pub struct Base {
    sfd: SignalFd,
    filter: &'static seccompiler::BpfProgram,
}

/// The job-independent part of the setup: signals, a private mount tree, the root tmpfs on
/// `root` with the system directories and `/etc` (not yet read-only), a read-only `/dev`,
/// `/proc`, hostname, loopback, the seccomp filter. A warm sandbox has done this before
/// its job arrives. With `rootfs`, that directory is the root instead.
pub fn setup_base(root: &Path, rootfs: Option<&Path>, network: bool) -> Result<Base, String> {
    let sfd = own_session()?;
    make_mounts_private().map_err(err("make / private"))?;
    DEFER_RO.store(have_mount_setattr(), std::sync::atomic::Ordering::Relaxed);
    build_root(root, rootfs, network)?;
    finish_base(root, sfd)
}

/// Set in a sandbox server right before it clones a sandbox into its slot's network
/// namespace ([`super::slotnet`]), whose loopback is up already (and where the sandbox has
/// no capability): the clone's copy of this says so to its init.
pub static IN_SLOT_NET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Set in a sandbox server that built its warm sandboxes' root once ([`prepare_template`]);
/// every warm sandbox it clones inherits it and starts from that root.
static TEMPLATE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In a sandbox server (as root, with `mount_setattr`): builds, once, the job-independent
/// root of its warm sandboxes on `root`, read-only, in a mount namespace of its own (so
/// nothing of it is seen on the host). Each warm sandbox is cloned with a copy of it
/// instead of building its own (about 200 system calls and a tmpfs per job): its mounts are
/// locked read-only in the sandbox's user namespace (and its tmpfs belongs to the host's),
/// so no sandbox can change what the next one starts from; a sandbox's writable places
/// (`/sandbox`, `/tmp`, `/dev/shm`) and `/proc` are its own mounts, made per job as before.
/// False (and nothing changed but this server's mount namespace) when it cannot be built:
/// the warm sandboxes then build their own root.
pub fn prepare_template(root: &Path) -> bool {
    if !nix::unistd::geteuid().is_root() || !have_mount_setattr() {
        return false;
    }
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_err() {
        return false;
    }
    let built = make_mounts_private()
        .map_err(err("make / private"))
        .and_then(|()| build_root(root, None, false))
        .and_then(|()| mount_setattr_ro(root).map_err(err("make it read-only")));
    match built {
        Ok(()) => {
            DEFER_RO.store(true, std::sync::atomic::Ordering::Relaxed);
            TEMPLATE.store(true, std::sync::atomic::Ordering::Relaxed);
            true
        }
        Err(e) => {
            let _ = umount2(root, MntFlags::MNT_DETACH);
            eprintln!("llm-sandbox: warm sandboxes build their own root ({e})");
            false
        }
    }
}

/// Whether a warm sandbox of this server can take `cfg`: with a template root
/// ([`prepare_template`]) every bind must find its mount point there already (nothing can
/// be created in the read-only template); without one, any job without network or
/// `rootfs` can.
pub fn warm_fits(cfg: &SandboxConfig, root: &Path) -> bool {
    if cfg.network || cfg.rootfs.is_some() {
        return false;
    }
    if !TEMPLATE.load(std::sync::atomic::Ordering::Relaxed) {
        return true;
    }
    cfg.binds.iter().filter(|b| b.src.exists()).all(|b| {
        if under_system_dir(&b.dest) {
            // Skipped, or refused the same way by any sandbox (setup_job).
            return true;
        }
        match (
            std::fs::symlink_metadata(in_root(root, &b.dest)),
            std::fs::metadata(&b.src),
        ) {
            (Ok(t), Ok(s)) => t.is_dir() == s.is_dir() && !t.file_type().is_symlink(),
            _ => false,
        }
    })
}

/// A warm sandbox of a server with a template root: a bind of its copy of the template
/// (the copy itself is locked in this user namespace, and `pivot_root` refuses a locked
/// mount; the bind keeps the template's read-only flags, locked too), then what every
/// sandbox does for itself.
fn setup_from_template(root: &Path) -> Result<Base, String> {
    let sfd = own_session()?;
    // No remount: the copy's read-only flags are locked and carried over by the bind.
    bind_ro(root, root, true)?;
    finish_base(root, sfd)
}

/// A new session whose SIGCHLD the init reads from a signalfd.
fn own_session() -> Result<SignalFd, String> {
    nix::unistd::setsid().map_err(err("setsid"))?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(err("sigprocmask"))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(err("signalfd"))
}

/// The job-independent root on `root`: a tmpfs with the system directories and the allowed
/// part of `/etc` (or the job's `rootfs`), the mount points of the writable places and
/// `/proc`, and a read-only `/dev`. Shared by a sandbox building its own root and a server
/// building its template ([`prepare_template`]).
fn build_root(root: &Path, rootfs: Option<&Path>, network: bool) -> Result<(), String> {
    match rootfs {
        Some(rootfs) => bind_ro(rootfs, root, false)?,
        None => {
            tmpfs(root, "size=4m,nr_inodes=4096,mode=0755", MsFlags::empty())?;
            for d in SYSTEM_DIRS {
                replicate(root, Path::new(d), Path::new(d), false)?;
            }
            build_etc(root, network)?;
        }
    }
    for d in ["sandbox", "tmp", "dev", "proc"] {
        std::fs::create_dir_all(root.join(d)).map_err(err(format!("mkdir /{d}")))?;
    }
    build_dev(root)
}

/// What every sandbox does for itself on its root: its own `/proc` (of its pid namespace),
/// hostname, loopback, the per-user counts of its user namespace.
fn finish_base(root: &Path, sfd: SignalFd) -> Result<Base, String> {
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(err("mount /proc"))?;
    let _ = nix::unistd::sethostname("sandbox");
    if !IN_SLOT_NET.load(std::sync::atomic::Ordering::Relaxed) {
        loopback_up();
    }
    limit_user_counts(&root.join("proc"))?;
    Ok(Base {
        sfd,
        filter: seccomp::program(),
    })
}

/// Per-user kernel counts a sandbox could use up for others. The counts of a user namespace
/// are also charged to its owner in the parent namespace (the runner's user on the host):
/// without a bound here, a job holding 128 inotify instances leaves every host process of
/// that user with EMFILE. Each sandbox's own namespace gets small maxima (0 for new
/// namespaces, which its seccomp filter refuses anyway), so all sandboxes together hold a
/// bounded share of the host's per-user limits.
pub const USER_NS_MAXIMA: &[(&str, u64)] = &[
    ("max_user_namespaces", 0),
    ("max_mnt_namespaces", 0),
    ("max_pid_namespaces", 0),
    ("max_net_namespaces", 0),
    ("max_ipc_namespaces", 0),
    ("max_uts_namespaces", 0),
    ("max_cgroup_namespaces", 0),
    ("max_time_namespaces", 0),
    ("max_fanotify_groups", 0),
    ("max_fanotify_marks", 0),
];

/// The inotify maxima of one sandbox: an eighth of the host's per-user limits, shared out
/// over the machine's cores (the default number of concurrent sandboxes), at most 16
/// instances and 8192 watches: together they stay well below the host's limits.
pub fn inotify_maxima() -> (u64, u64) {
    let read = |p: &str, default: u64| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(default)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let share = |host: u64, top: u64| (host / 8 / cores).clamp(1, top);
    (
        share(read("/proc/sys/fs/inotify/max_user_instances", 128), 16),
        share(read("/proc/sys/fs/inotify/max_user_watches", 8192), 8192),
    )
}

/// [`inotify_maxima`], read once per sandbox server ([`snapshot_etc`]) and inherited.
static INOTIFY: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

fn limit_user_counts(proc: &Path) -> Result<(), String> {
    let (instances, watches) = *INOTIFY.get_or_init(inotify_maxima);
    let dir = proc.join("sys/user");
    for (name, value) in USER_NS_MAXIMA.iter().copied().chain([
        ("max_inotify_instances", instances),
        ("max_inotify_watches", watches),
    ]) {
        let p = dir.join(name);
        match std::fs::write(&p, value.to_string()) {
            Ok(()) => {}
            // An entry this kernel does not have.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("limit {}: {e}", p.display())),
        }
    }
    Ok(())
}

/// The job's part of the setup: its binds, the root made read-only, fresh `/sandbox`,
/// `/tmp` and `/dev/shm` of its sizes, its input files, the out dir, then the pivot.
fn setup_job(
    cfg: &SandboxConfig,
    root: &Path,
    base: Base,
    rlimit_nproc: Option<u64>,
) -> Result<State, String> {
    for b in &cfg.binds {
        // Below a system directory or /etc a mount point would have to be created inside
        // a bind of the host's own directory, i.e. on the host: refuse (or skip, when the
        // path is the host's own and so already visible).
        if under_system_dir(&b.dest) {
            if b.src == b.dest && !b.writable {
                continue;
            }
            return Err(format!(
                "cannot bind {} at {}: destinations below {} or /etc are not allowed",
                b.src.display(),
                b.dest.display(),
                SYSTEM_DIRS.join(", ")
            ));
        }
    }
    let bindable = |b: &&crate::sandbox::Bind| b.src.exists() && !under_system_dir(&b.dest);
    for b in cfg.binds.iter().filter(|b| !b.writable).filter(bindable) {
        replicate(root, &b.src, &b.dest, false)?;
    }
    // Mount points of the writable binds, while the root can still be written.
    for b in cfg.binds.iter().filter(|b| b.writable && b.src.is_dir()) {
        let target = in_root(root, &b.dest);
        std::fs::create_dir_all(&target).map_err(err(format!("mkdir {}", b.dest.display())))?;
    }
    if DEFER_RO.load(std::sync::atomic::Ordering::Relaxed) {
        mount_setattr_ro(root).map_err(err("make the root read-only"))?;
        // /proc stays writable, as a fresh proc mount is: a step makes itself the OOM
        // killer's choice there (exec_child), and what an unprivileged process may write
        // in it concerns only itself.
        mount_setattr(&root.join("proc"), 0, MOUNT_ATTR_RDONLY, 0)
            .map_err(err("keep /proc writable"))?;
    }
    for b in cfg.binds.iter().filter(|b| b.writable).filter(bindable) {
        replicate(root, &b.src, &b.dest, true)?;
    }
    let disk = cfg.limits.disk;
    let inodes = (disk / 4096).clamp(1024, 1 << 20);
    let sandbox = root.join("sandbox");
    match &cfg.persistent_workdir {
        Some(dir) => bind_ro(dir, &sandbox, true)?,
        None => tmpfs(
            &sandbox,
            &format!(
                "size={disk},nr_inodes={inodes},mode=0755,uid={SANDBOX_UID},gid={SANDBOX_UID}"
            ),
            MsFlags::empty(),
        )?,
    }
    tmpfs(
        &root.join("tmp"),
        &format!("size={disk},nr_inodes={inodes},mode=1777"),
        MsFlags::empty(),
    )?;
    tmpfs(
        &root.join("dev/shm"),
        &format!("size={disk},nr_inodes={inodes},mode=1777"),
        MsFlags::MS_NOEXEC,
    )?;
    if let Some(inputs) = &cfg.inputs_dir {
        copy_tree(inputs, &sandbox).map_err(err("copy input files into /sandbox"))?;
    }
    let out_dir = nix::fcntl::open(
        &cfg.out_dir,
        nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(err(format!("open {}", cfg.out_dir.display())))?;
    // SAFETY: `open` returned a new fd that nothing else owns.
    let out_dir = unsafe { OwnedFd::from_raw_fd(out_dir) };
    nix::unistd::chdir(root).map_err(err("chdir new root"))?;
    nix::unistd::pivot_root(".", ".").map_err(err("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(err("chdir /"))?;
    if cfg.rootfs.is_none() && !DEFER_RO.load(std::sync::atomic::Ordering::Relaxed) {
        remount_ro(Path::new("/"), MsFlags::MS_NODEV)?;
    }
    Ok(State {
        out_dir,
        sfd: base.sfd,
        filter: base.filter,
        rlimit_nproc,
    })
}

/// An allowed entry of the host's `/etc`: a small regular file's content, or a name that
/// is bound (directories, symlinks, large files).
enum EtcEntry {
    File {
        name: std::ffi::OsString,
        data: Vec<u8>,
        mode: u32,
    },
    Bound(std::ffi::OsString),
}

/// The allowed part of `/etc`, read once per sandbox server ([`snapshot_etc`]) and inherited
/// by every sandbox it clones, instead of each one listing `/etc` and copying its files.
static ETC: std::sync::OnceLock<Vec<EtcEntry>> = std::sync::OnceLock::new();

/// Reads the allowed part of `/etc` (and the host's inotify limits) now (a sandbox server,
/// before its first sandbox).
pub fn snapshot_etc() {
    ETC.get_or_init(read_etc);
    INOTIFY.get_or_init(inotify_maxima);
}

fn read_etc() -> Vec<EtcEntry> {
    let Ok(rd) = std::fs::read_dir("/etc") else {
        return Vec::new();
    };
    let mut names: Vec<_> = rd
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| etc_allowed(&n.to_string_lossy()))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let host = Path::new("/etc").join(&name);
            // Small regular files are copied (cheaper than a bind mount each); larger ones
            // (ld.so.cache, mime.types, services) are bound: copying them cost every
            // sandbox more. The root is made read-only afterwards all the same.
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.is_file() && m.len() <= 8 * 1024 => match std::fs::read(&host) {
                    Ok(data) => EtcEntry::File {
                        name,
                        data,
                        mode: m.permissions().mode() & 0o777,
                    },
                    Err(_) => EtcEntry::Bound(name),
                },
                _ => EtcEntry::Bound(name),
            }
        })
        .collect()
}

fn build_etc(root: &Path, network: bool) -> Result<(), String> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).map_err(err("mkdir /etc"))?;
    for entry in ETC.get_or_init(read_etc) {
        match entry {
            EtcEntry::File { name, data, mode } => {
                let target = etc.join(name);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(*mode)
                    .open(&target)
                    .and_then(|mut f| f.write_all(data))
                    .map_err(err(format!("write {}", target.display())))?;
            }
            EtcEntry::Bound(name) => {
                let host = Path::new("/etc").join(name);
                replicate(root, &host, &host, false)?;
            }
        }
    }
    if network {
        // The user-mode network's DNS forwarder (it asks the host's resolvers).
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {}\n", super::usernet::DNS),
        )
        .map_err(err("write /etc/resolv.conf"))?;
    }
    let write = |name: &str, content: &str| -> Result<(), String> {
        let p = etc.join(name);
        if p.exists() {
            return Ok(());
        }
        std::fs::write(&p, content).map_err(err(format!("write /etc/{name}")))
    };
    write(
        "passwd",
        &format!("root:x:0:0:root:/root:/bin/sh\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/sandbox:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
    )?;
    write(
        "group",
        &format!("root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:65534:\n"),
    )?;
    write("hostname", "sandbox\n")?;
    write(
        "hosts",
        "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n",
    )?;
    Ok(())
}

fn build_dev(root: &Path) -> Result<(), String> {
    let dev = root.join("dev");
    tmpfs(&dev, "size=64k,nr_inodes=64,mode=0755", MsFlags::MS_NOEXEC)?;
    for node in ["null", "zero", "full", "random", "urandom"] {
        let target = dev.join(node);
        std::fs::write(&target, b"").map_err(err(format!("create /dev/{node}")))?;
        mount(
            Some(&Path::new("/dev").join(node)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err(format!("bind /dev/{node}")))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).map_err(err(format!("symlink /dev/{name}")))?;
    }
    // /dev/shm gets the job's tmpfs later; /dev/mqueue and /dev/pts are not provided.
    std::fs::create_dir_all(dev.join("shm")).map_err(err("mkdir /dev/shm"))?;
    remount_ro(&dev, MsFlags::MS_NOEXEC)?;
    Ok(())
}

/// Copies the staged input files into `/sandbox`, owned by the sandbox user (iterative,
/// like [`walk`]).
fn copy_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    let mut pending = vec![(src.to_path_buf(), dest.to_path_buf())];
    while let Some((src, dest)) = pending.pop() {
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let to = dest.join(entry.file_name());
            if ft.is_dir() {
                std::fs::create_dir_all(&to)?;
                std::os::unix::fs::chown(&to, Some(SANDBOX_UID), Some(SANDBOX_UID))?;
                pending.push((entry.path(), to));
            } else if ft.is_file() {
                std::fs::copy(entry.path(), &to)?;
                std::os::unix::fs::chown(&to, Some(SANDBOX_UID), Some(SANDBOX_UID))?;
                let mode = entry.metadata()?.permissions().mode() & 0o755 | 0o644;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    Ok(())
}

pub(crate) fn loopback_up() {
    // SAFETY: plain ioctls on a socket we own, with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        }
        libc::close(fd);
    }
}

/// In the forked child: become the sandbox user and exec. Never returns.
/// The stack of a step's process until its execve ([`run_step`]): with CLONE_VM it cannot
/// be the one the init runs on.
static STEP_STACK: super::CloneStack = super::CloneStack::new(1 << 20);

fn exec_child(
    cfg: &SandboxConfig,
    step: &Step,
    state: &State,
    out: Option<RawFd>,
    err_pipe: RawFd,
) -> ! {
    let fail = |what: &str, e: i32| -> ! {
        let msg = format!("{what}: {}", std::io::Error::from_raw_os_error(e));
        // SAFETY: write to our own pipe, then exit without running destructors.
        unsafe {
            libc::write(err_pipe, msg.as_ptr() as *const _, msg.len());
            libc::_exit(127);
        }
    };
    // SAFETY: we are a freshly forked, single-threaded child; every call below is a plain
    // syscall wrapper.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::setpgid(0, 0);
        // The job's processes are the OOM killer's first choice in the sandbox's memory
        // limit, never the init or the sandbox server (README, "Security").
        super::oom_first();
        // stdio
        if let Some(o) = out {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            libc::dup2(null, 0);
            libc::dup2(o, 1);
            libc::dup2(o, 2);
        }
        libc::syscall(libc::SYS_close_range, 3u32, err_pipe as u32 - 1, 0u32);
        libc::syscall(libc::SYS_close_range, err_pipe as u32 + 1, u32::MAX, 0u32);
        let l = &cfg.limits;
        set_rlimit(libc::RLIMIT_CORE, 0, 0);
        set_rlimit(libc::RLIMIT_NOFILE, l.open_files, l.open_files);
        set_rlimit(libc::RLIMIT_FSIZE, l.disk, l.disk);
        set_rlimit(libc::RLIMIT_MSGQUEUE, 0, 0);
        if step.limited {
            if let Some(cpu) = step.cpu_seconds {
                super::set_cpu_rlimit(cpu);
            }
            if l.address_space_fallback {
                set_rlimit(
                    libc::RLIMIT_AS,
                    l.memory.saturating_mul(2),
                    l.memory.saturating_mul(2),
                );
            }
            if let Some(n) = state.rlimit_nproc {
                set_rlimit(libc::RLIMIT_NPROC, n, n);
            }
        }
        if libc::chdir(c"/sandbox".as_ptr()) != 0 {
            fail("chdir /sandbox", *libc::__errno_location());
        }
        if !step.as_root {
            // Capabilities: drop the bounding set while we still may, then the rest.
            for cap in 0..64 {
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            libc::setgroups(0, std::ptr::null());
            if libc::setresgid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID) != 0 {
                fail("setresgid", *libc::__errno_location());
            }
            if libc::setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID) != 0 {
                fail("setresuid", *libc::__errno_location());
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            #[repr(C)]
            struct Hdr {
                version: u32,
                pid: i32,
            }
            #[repr(C)]
            #[derive(Clone, Copy)]
            struct Data {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            let hdr = Hdr {
                version: 0x2008_0522,
                pid: 0,
            };
            let data = [Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2];
            libc::syscall(libc::SYS_capset, &hdr, data.as_ptr());
        }
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
    }
    let argv: Vec<CString> = step
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()).unwrap_or_default())
        .collect();
    let env: Vec<CString> = cfg
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap_or_default())
        .collect();
    let program = super::resolve(&step.argv[0], &cfg.path);
    let mut writable: Vec<String> = vec!["/sandbox".into(), "/tmp".into(), "/dev/shm".into()];
    writable.extend(
        cfg.binds
            .iter()
            .filter(|b| b.writable)
            .map(|b| b.dest.display().to_string()),
    );
    let writable: Vec<&str> = writable.iter().map(String::as_str).collect();
    if let Err(e) = super::landlock::restrict(&writable) {
        // SAFETY: as above.
        unsafe {
            libc::write(err_pipe, e.as_ptr() as *const _, e.len());
            libc::_exit(127);
        }
    }
    if let Err(e) = seccomp::apply(state.filter) {
        // SAFETY: as above.
        unsafe {
            libc::write(err_pipe, e.as_ptr() as *const _, e.len());
            libc::_exit(127);
        }
    }
    {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(program.as_bytes()));
        super::pyembed::run_if_preloaded(cfg, step, path, err_pipe);
    }
    let e = nix::unistd::execve(&program, &argv, &env).unwrap_err();
    fail(&format!("cannot execute {}", step.argv[0]), e as i32)
}

/// Kills every process of the namespace but us, and reaps them all.
fn kill_all_and_reap() {
    // SAFETY: kill(-1) from pid 1 signals every other process of the namespace.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
    }
    loop {
        match waitpid(None, None) {
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
    }
}

fn run_step(cfg: &SandboxConfig, step: &Step, state: &mut State) -> StepResult {
    let mut res = StepResult {
        kind: Some(step.kind),
        ..Default::default()
    };
    let capture = step.kind != StepKind::Run;
    let pipe = if capture {
        match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => Some(p),
            Err(e) => {
                res.spawn_error = Some(format!("pipe: {e}"));
                return res;
            }
        }
    } else {
        None
    };
    let (err_r, err_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            res.spawn_error = Some(format!("pipe: {e}"));
            return res;
        }
    };
    let usage_before = super::usage::children();
    let mut own_usage = None;
    let start = Instant::now();
    let out = pipe.as_ref().map(|(_, w)| w.as_raw_fd());
    let err_fd = err_w.as_raw_fd();
    // A step that execs (every one but a preloaded interpreter's, which runs the program in
    // the child itself) borrows this process's memory until its execve, this process
    // waiting meanwhile (CLONE_VM | CLONE_VFORK, as posix_spawn does): no copy of the page
    // tables, no copy-on-write faults, nothing to tear down at the execve. What it changes
    // before that (signal dispositions, fds, limits, credentials, Landlock, seccomp) is its
    // own: none of those is shared without further flags.
    let execs = !(cfg.preload
        && cfg.rootfs.is_none()
        && step.kind == StepKind::Run
        && super::pyembed::loaded());
    let spawned = if execs {
        let cb = Box::new(|| -> isize { exec_child(cfg, step, state, out, err_fd) });
        // SAFETY: the child runs on STEP_STACK, which this process never runs on, and this
        // process is suspended until the child's execve or exit (CLONE_VFORK).
        unsafe {
            STEP_STACK.clone(
                cb,
                nix::sched::CloneFlags::CLONE_VM | nix::sched::CloneFlags::CLONE_VFORK,
            )
        }
    } else {
        // SAFETY: init is single-threaded.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => exec_child(cfg, step, state, out, err_fd),
            Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child),
            Err(e) => Err(e),
        }
    };
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            res.spawn_error = Some(format!("fork: {e}"));
            return res;
        }
    };
    if step.kind == StepKind::Run && cfg.steps.last().is_some_and(|l| std::ptr::eq(l, step)) {
        release_stdio();
    }
    drop(err_w);
    let (mut out_r, out_w) = match pipe {
        Some((r, w)) => (Some(std::fs::File::from(r)), Some(w)),
        None => (None, None),
    };
    drop(out_w);
    let mut spawn_err = String::new();
    let _ = std::fs::File::from(err_r).read_to_string(&mut spawn_err);
    if !spawn_err.is_empty() {
        res.spawn_error = Some(spawn_err);
    }
    if let Some(r) = &out_r {
        let _ = nix::fcntl::fcntl(
            r.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
    }
    let deadline = start + Duration::from_millis(step.timeout_ms);
    let mut output = Vec::new();
    let mut status = None;
    // Only a captured step's output is read here (a run step's goes to the job's stdio):
    // the zeroed buffer would otherwise cost every job 64 KiB of memset and page faults.
    let mut buf = if out_r.is_some() {
        vec![0u8; 64 * 1024]
    } else {
        Vec::new()
    };
    while status.is_none() {
        let now = Instant::now();
        if now >= deadline {
            res.timed_out = true;
            break;
        }
        let left = (deadline - now).as_millis().min(u16::MAX as u128) as u16;
        {
            let mut fds = vec![nix::poll::PollFd::new(
                state.sfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            if let Some(r) = &out_r {
                fds.push(nix::poll::PollFd::new(
                    r.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                ));
            }
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(left));
        }
        while let Ok(Some(_)) = state.sfd.read_signal() {}
        if let Some(r) = out_r.as_mut() {
            drain(
                r,
                &mut output,
                &mut buf,
                step.capture_cap,
                &mut res.output_truncated,
            );
        }
        // wait4: the step's own process comes with its rusage (its peak memory).
        while let Ok(Some((pid, st, u))) = super::usage::wait4_nohang(-1) {
            if pid != child.as_raw() {
                continue;
            }
            if let Some(ended) = super::usage::ended(st) {
                status = Some(ended);
                own_usage = Some(u);
            }
        }
    }
    res.duration_ms = start.elapsed().as_millis() as u64;
    // The step is over: nothing it started may outlive it.
    kill_all_and_reap();
    if let Some(r) = out_r.as_mut() {
        drain(
            r,
            &mut output,
            &mut buf,
            step.capture_cap,
            &mut res.output_truncated,
        );
    }
    if let Some((code, sig)) = status {
        res.exit_code = code;
        res.signal = sig;
    }
    res.usage = Some(super::usage::step(usage_before, own_usage));
    res.output = String::from_utf8_lossy(&output).into_owned();
    res
}

fn drain(r: &mut std::fs::File, out: &mut Vec<u8>, buf: &mut [u8], cap: u64, truncated: &mut bool) {
    loop {
        match r.read(buf) {
            Ok(0) => return,
            Ok(n) => {
                let room = (cap as usize).saturating_sub(out.len());
                if n > room {
                    *truncated = true;
                }
                out.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Makes every mount of this process's mount namespace private: nothing mounted or unmounted
/// here propagates to the host's.
fn make_mounts_private() -> nix::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// Frees what a job left in one of its tmpfs mounts (every process of the job is dead):
/// nothing to do when it holds nothing but its root; a handful of files directly in it
/// (the job's own code and inputs, typically) are removed; anything else goes with the
/// mount (a lazy umount: its contents are freed at once). Each umount waits for an RCU grace
/// period (0.1-0.3 ms here, several per job when every mount went): removing a few files
/// costs a few microseconds.
fn free_tmpfs(mount: &str) {
    /// More entries than this, or any directory: the umount frees them faster.
    const FEW: usize = 16;
    let used = nix::sys::statvfs::statvfs(mount)
        .map(|st| st.files().saturating_sub(st.files_free()))
        .unwrap_or(u64::MAX);
    if used <= 1 || (used <= FEW as u64 + 1 && remove_flat(mount, FEW)) {
        return;
    }
    let _ = umount2(mount, MntFlags::MNT_DETACH);
}

/// Removes the entries of `dir` when there are at most `max` and none is a directory (they
/// are not followed: a symbolic link goes, not its target; no process of the job is left to
/// change them meanwhile). True when `dir` is empty then.
fn remove_flat(dir: &str, max: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut paths = Vec::new();
    for e in entries {
        let Ok(e) = e else { return false };
        if e.file_type().map_or(true, |t| t.is_dir()) || paths.len() == max {
            return false;
        }
        paths.push(e.path());
    }
    paths.iter().all(|p| std::fs::remove_file(p).is_ok())
}

/// Copies the requested files of `/sandbox` to the host's out dir. Every process of the
/// sandbox is dead by now; symlinks are never followed, only regular files are copied.
fn collect(cfg: &SandboxConfig, state: &State) -> (Vec<String>, Vec<(String, String)>) {
    let mut files = Vec::new();
    let wanted = super::collect::select(
        Path::new("/sandbox"),
        &cfg.collect_globs,
        &cfg.collect_paths,
    );
    let mut refused = wanted.refused;
    let mut total = 0u64;
    for rel in wanted.files {
        match copy_out(
            &rel,
            state.out_dir.as_raw_fd(),
            cfg.collect_cap.saturating_sub(total),
        ) {
            Ok(n) => {
                total += n;
                files.push(rel);
            }
            Err(e) => refused.push((rel, e)),
        }
    }
    (files, refused)
}

fn copy_out(rel: &str, out_dir: RawFd, room: u64) -> Result<u64, String> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    let src = nix::fcntl::open(
        &Path::new("/sandbox").join(rel),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| e.to_string())?;
    // SAFETY: fresh fd from open.
    let mut src = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(src) });
    let meta = src.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > room {
        return Err("the artifacts exceed the size limit".into());
    }
    // Create parent directories under the out dir, never following links.
    let mut dir: OwnedFd = nix::unistd::dup(out_dir)
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .map_err(|e| e.to_string())?;
    let parts: Vec<&str> = rel.split('/').collect();
    for comp in &parts[..parts.len() - 1] {
        let _ = nix::sys::stat::mkdirat(
            Some(dir.as_raw_fd()),
            *comp,
            Mode::from_bits_truncate(0o755),
        );
        let next = openat(
            Some(dir.as_raw_fd()),
            *comp,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| e.to_string())?;
        dir = unsafe { OwnedFd::from_raw_fd(next) };
    }
    let dst = openat(
        Some(dir.as_raw_fd()),
        parts[parts.len() - 1],
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| e.to_string())?;
    let mut dst = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(dst) });
    // Its permission bits as in the sandbox, at most rwxr-xr-x (a built program stays
    // executable: a job's cases run it).
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o755 | 0o644;
    dst.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| e.to_string())?;
    let n = std::io::copy(&mut (&mut src).take(room), &mut dst).map_err(|e| e.to_string())?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn etc_allowlist_excludes_secrets() {
        for bad in [
            "shadow",
            "gshadow",
            "sudoers",
            "ssh",
            "passwd",
            "group",
            "docker",
            "machine-id",
        ] {
            assert!(!super::etc_allowed(bad), "{bad}");
        }
        for good in [
            "ld.so.cache",
            "java-17-openjdk",
            "python3.11",
            "alternatives",
            "ssl",
        ] {
            assert!(super::etc_allowed(good), "{good}");
        }
    }

    #[test]
    fn resolve_uses_path() {
        let p = super::super::resolve("sh", &["/nonexistent".into(), "/bin".into()]);
        assert_eq!(p.to_str().unwrap(), "/bin/sh");
        assert_eq!(
            super::super::resolve("./main", &[]).to_str().unwrap(),
            "./main"
        );
    }

    #[test]
    fn only_a_few_flat_entries_are_removed_by_hand() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("kept");
        std::fs::write(&target, "x").unwrap();
        std::fs::write(d.path().join("main.py"), "pass").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("link")).unwrap();
        assert!(super::remove_flat(dir, 16));
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
        // A symbolic link goes, not what it points to.
        assert!(target.exists());

        // A directory, or more entries than asked: left for the umount.
        std::fs::create_dir(d.path().join("sub")).unwrap();
        assert!(!super::remove_flat(dir, 16));
        assert!(d.path().join("sub").exists());
        std::fs::remove_dir(d.path().join("sub")).unwrap();
        for i in 0..3 {
            std::fs::write(d.path().join(format!("f{i}")), "").unwrap();
        }
        assert!(!super::remove_flat(dir, 2));
        assert!(super::remove_flat(dir, 3));
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    }

    /// `free_tmpfs` on a real tmpfs (a private mount namespace of a forked child; needs
    /// root): nothing to do when empty, a few files removed by hand, more files or a
    /// directory unmounted -- each time the memory is back before it returns.
    #[test]
    fn a_jobs_tmpfs_is_freed_by_hand_or_by_umount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED a_jobs_tmpfs_is_freed_by_hand_or_by_umount: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let m = d.path().to_str().unwrap().to_string();
        type Fill = fn(&std::path::Path);
        let cases: [(&str, Fill, bool); 4] = [
            ("empty", |_| {}, false),
            (
                "few",
                |p| std::fs::write(p.join("big"), vec![1u8; 4 << 20]).unwrap(),
                false,
            ),
            (
                "many",
                |p| {
                    for i in 0..20 {
                        std::fs::write(p.join(format!("f{i}")), vec![1u8; 1 << 20]).unwrap();
                    }
                },
                true,
            ),
            (
                "nested",
                |p| {
                    std::fs::create_dir(p.join("a")).unwrap();
                    std::fs::write(p.join("a/big"), vec![1u8; 4 << 20]).unwrap();
                },
                true,
            ),
        ];
        for (name, fill, unmounted) in cases {
            // SAFETY: the child only sets up a mount, calls the function and exits.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    let ok = (|| -> Option<bool> {
                        use nix::mount::{mount, MsFlags};
                        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).ok()?;
                        super::make_mounts_private().ok()?;
                        mount(
                            Some("tmpfs"),
                            m.as_str(),
                            Some("tmpfs"),
                            MsFlags::empty(),
                            Some("size=64m"),
                        )
                        .ok()?;
                        fill(std::path::Path::new(&m));
                        super::free_tmpfs(&m);
                        let st = nix::sys::statfs::statfs(m.as_str()).ok()?;
                        let still_tmpfs = st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC;
                        let vst = nix::sys::statvfs::statvfs(m.as_str()).ok()?;
                        let used = vst.files() - vst.files_free();
                        Some(if unmounted {
                            !still_tmpfs
                        } else {
                            still_tmpfs && used == 1 && vst.blocks() == vst.blocks_free()
                        })
                    })();
                    // SAFETY: ends the forked child.
                    unsafe { libc::_exit(if ok == Some(true) { 0 } else { 1 }) }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let st = nix::sys::wait::waitpid(child, None).unwrap();
                    assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0), "{name}");
                }
            }
        }
    }
}
