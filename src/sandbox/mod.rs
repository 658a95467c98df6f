//! The native sandbox: Linux namespaces, no daemon.
//!
//! The tokio process never forks a sandbox itself. [`host::run`] spawns this same binary
//! with the hidden subcommand `__sandbox CONFIG` (see [`helper`]): a single-threaded helper
//! that clones the sandbox's init into new user, mount, pid, net, ipc, uts and cgroup
//! namespaces (as root, without network, its slot's network namespace instead of a new
//! one: [`slotnet`]), writes its id maps, puts it in a cgroup, and waits. The init ([`init`])
//! builds a minimal root (toolchain directories read-only, fresh tmpfs `/sandbox`, `/tmp`,
//! `/dev/shm`), pivots into it, runs each step (compile, run) as an unprivileged user with a
//! seccomp filter and rlimits, kills every process of the namespace after each step,
//! and finally copies the requested files out without following symlinks.
//!
//! Results travel on a control pipe (fd 3) as JSON lines ([`proto::Msg`]); stdout and stderr
//! of the run step are the helper's own fds 1 and 2, read by the host side with caps.

pub mod cgroup;
pub mod collect;
pub mod helper;
pub mod host;
pub mod init;
pub mod landlock;
pub mod netview;
pub mod proto;
pub mod pyembed;
pub mod seccomp;
pub mod slotnet;
pub mod usage;
pub mod usernet;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The fd number of the control pipe in the helper and the init.
pub const CONTROL_FD: i32 = 3;
/// The fds of one request to a sandbox server: the job's stdin, stdout, stderr, control
/// pipe, and its configuration (a memfd holding [`SandboxConfig`] as JSON).
pub const REQUEST_FDS: usize = 5;
/// The uid and gid the program runs as inside the sandbox.
pub const SANDBOX_UID: u32 = 1000;
/// Name of the hidden subcommand.
pub const HELPER_SUBCOMMAND: &str = "__sandbox";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Compile,
    Run,
    /// Setup / prepare commands (output captured like compile).
    Setup,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub kind: StepKind,
    /// argv; argv[0] is an absolute path or a name looked up in `path`.
    pub argv: Vec<String>,
    pub timeout_ms: u64,
    /// For `Run`: stdin, stdout and stderr are the helper's fds 0, 1, 2. Other steps get
    /// /dev/null as stdin and their merged output captured (capped) into the step message.
    pub capture_cap: u64,
    /// Run as root inside the sandbox (prepare steps only); default false.
    #[serde(default)]
    pub as_root: bool,
    /// Apply the run limits (address space, processes, CPU time) to this step.
    #[serde(default = "yes")]
    pub limited: bool,
    /// RLIMIT_CPU of the step's processes, in seconds ([`crate::plan::job::ResolvedLimits::cpu_rlimit_secs`]).
    #[serde(default)]
    pub cpu_seconds: Option<u64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    pub src: PathBuf,
    pub dest: PathBuf,
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxLimits {
    pub memory: u64,
    pub cpus: f64,
    pub pids: u64,
    pub disk: u64,
    pub open_files: u64,
    /// Use RLIMIT_AS = memory × 2 when no memory cgroup is available.
    pub address_space_fallback: bool,
}

/// Everything the helper needs; sent by the host as JSON in a memfd with each request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Owner-labelled id of this sandbox (also its cgroup name).
    pub id: String,
    /// An empty host directory the init mounts its new root on.
    pub root_mount: PathBuf,
    /// Host directory whose contents are copied into `/sandbox` before the first step.
    pub inputs_dir: Option<PathBuf>,
    /// Host directory the requested files are copied to after the last step.
    pub out_dir: PathBuf,
    /// Host directory bind-mounted as `/sandbox` instead of a fresh tmpfs (sessions).
    #[serde(default)]
    pub persistent_workdir: Option<PathBuf>,
    /// Read-only binds besides the system directories (toolchains, `backends.native.bind`).
    pub binds: Vec<Bind>,
    /// Use this directory as `/` instead of the host's system directories.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    pub path: Vec<String>,
    pub env: Vec<(String, String)>,
    pub steps: Vec<Step>,
    pub limits: SandboxLimits,
    pub network: bool,
    /// With `network`: the `slirp4netns` that gives the sandbox's own network namespace its
    /// user-mode network ([`usernet`]), resolved by the runner.
    #[serde(default)]
    pub user_net: Option<PathBuf>,
    /// Glob patterns (relative to `/sandbox`) of files to copy out.
    pub collect_globs: Vec<String>,
    /// Exact relative paths to copy out (files named by `expect.files`).
    pub collect_paths: Vec<String>,
    /// Cap of the bytes copied out in total.
    pub collect_cap: u64,
    /// Run `python3` steps in the server's preloaded interpreter ([`pyembed`]).
    #[serde(default)]
    pub preload: bool,
    /// The modules that interpreter imports ahead (`backends.native.preload.modules`).
    #[serde(default)]
    pub preload_modules: Vec<String>,
}

/// `prog` looked up in `path` as an `execve` of it would be (a name with a `/` as it is),
/// for the init's steps and the preloaded interpreter alike.
pub(crate) fn resolve(prog: &str, path: &[String]) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let c = |b: &[u8]| std::ffi::CString::new(b).unwrap_or_default();
    if prog.contains('/') {
        return c(prog.as_bytes());
    }
    for dir in path {
        let p = std::path::Path::new(dir).join(prog);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() && m.mode() & 0o111 != 0 {
                return c(p.as_os_str().as_bytes());
            }
        }
    }
    c(prog.as_bytes())
}

/// Makes the calling process (a job's step, between fork and exec) the OOM killer's first
/// choice: `oom_score_adj` 1000, which any process may raise itself to. Async-signal-safe.
pub fn oom_first() {
    // SAFETY: open/write/close of a proc file with a NUL-terminated path.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr() as *const libc::c_void, 4);
            libc::close(fd);
        }
    }
}

/// A stack for `clone(2)` children, mapped on first use and kept for the process's life
/// (pages cost only when touched), with an inaccessible guard page below it: a stack
/// overflow is a clean SIGSEGV, never a write into other memory.
pub(crate) struct CloneStack {
    size: usize,
    base: std::sync::Mutex<usize>,
}

impl CloneStack {
    pub(crate) const fn new(size: usize) -> CloneStack {
        CloneStack {
            size,
            base: std::sync::Mutex::new(0),
        }
    }

    /// `clone(2)` of `cb` on this stack, SIGCHLD to the parent when the child ends.
    ///
    /// # Safety
    /// Nothing else may run on this stack while the child does: with `CLONE_VM` that
    /// includes this process (use another `CloneStack` than the one it runs on), without
    /// it the child has its own copy.
    pub(crate) unsafe fn clone(
        &self,
        cb: nix::sched::CloneCb<'_>,
        flags: nix::sched::CloneFlags,
    ) -> nix::Result<nix::unistd::Pid> {
        let page = 4096;
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        if *base == 0 {
            // SAFETY: a new private anonymous mapping; its lowest page is made inaccessible.
            let m = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    self.size + page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                    -1,
                    0,
                )
            };
            if m == libc::MAP_FAILED {
                return Err(nix::Error::last());
            }
            // SAFETY: the first page of the mapping made above.
            if unsafe { libc::mprotect(m, page, libc::PROT_NONE) } != 0 {
                return Err(nix::Error::last());
            }
            *base = m as usize + page;
        }
        // SAFETY: the mapping above lives for the whole process (never unmapped); what
        // runs on it is the caller's promise.
        unsafe {
            let s = std::slice::from_raw_parts_mut(*base as *mut u8, self.size);
            nix::sched::clone(cb, s, flags, Some(libc::SIGCHLD))
        }
    }
}

/// Sets a resource limit of the calling process (a step between fork and exec).
/// Async-signal-safe.
pub fn set_rlimit(res: libc::__rlimit_resource_t, soft: u64, hard: u64) {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit with a valid struct.
    unsafe {
        libc::setrlimit(res, &r);
    }
}

/// The CPU-time limit of a step's processes ([`Step::cpu_seconds`]): SIGXCPU at `secs`
/// (what the report reads as the CPU limit), SIGKILL a second later for a program that
/// ignores it. Async-signal-safe.
pub fn set_cpu_rlimit(secs: u64) {
    set_rlimit(libc::RLIMIT_CPU, secs, secs + 1);
}

/// Puts `from` at fd `to`, without close-on-exec, in a child between fork and exec (what it
/// inherits there). Async-signal-safe.
pub(crate) fn place_fd(from: i32, to: i32) -> std::io::Result<()> {
    // SAFETY: fcntl/dup2 on fds of this process.
    unsafe {
        if from == to {
            let flags = libc::fcntl(to, libc::F_GETFD);
            libc::fcntl(to, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
        } else if libc::dup2(from, to) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Entry used by `main`: if argv is `__sandbox CONFIG`, run the helper and never return.
pub fn maybe_run_helper() {
    let mut args = std::env::args_os();
    let _exe = args.next();
    if args.next().as_deref() == Some(std::ffi::OsStr::new(HELPER_SUBCOMMAND)) {
        let code = helper::main();
        std::process::exit(code);
    }
}
