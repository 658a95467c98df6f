//! User-mode networking for native sandboxes with `network = true`: such a sandbox has a
//! network namespace of its own (never its slot's: [`super::slotnet`]), with a
//! `slirp4netns` attached to it (started by the sandbox server once the sandbox is
//! cloned, stopped with it). The sandbox sees a `tap0` with 10.0.2.100/24, a default route
//! through 10.0.2.2 and a DNS forwarder at 10.0.2.3; its connections leave through the
//! host's stack as the runner's, but the host's loopback is not reachable
//! (`--disable-host-loopback`): a job with network reaches the outside (package indexes), never a service listening on the host's
//! 127.0.0.1. Where `slirp4netns` is missing such jobs are `error` with the fix, never put
//! in the host's namespace.

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The program that provides the network.
pub const PROGRAM: &str = "slirp4netns";

/// The address of the DNS forwarder inside the sandbox.
pub const DNS: &str = "10.0.2.3";

/// How long slirp4netns may take to configure the sandbox's `tap0`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to get the program, for messages.
pub const INSTALL_HINT: &str =
    "install slirp4netns (Debian/Ubuntu: `apt-get install slirp4netns`), or run the job with `backend = \"docker\"` (`exec`: `--backend docker`)";

/// Names the `slirp4netns` to start instead of looking it up (empty: none, as if it were not
/// installed).
pub const PROGRAM_ENV: &str = "LLM_SANDBOX_SLIRP4NETNS";

/// The `slirp4netns` the runner would start: [`PROGRAM_ENV`], else looked up in the system
/// directories and `PATH` (once per process).
pub fn find() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| match std::env::var_os(PROGRAM_ENV) {
            Some(p) if p.is_empty() => None,
            Some(p) => Some(PathBuf::from(p)),
            None => crate::lang::which(PROGRAM),
        })
        .clone()
}

/// [`crate::sandbox::SandboxConfig::user_net`] of a sandbox with or without network.
pub fn for_sandbox(network: bool) -> Option<PathBuf> {
    network.then(find).flatten()
}

/// A running `slirp4netns` for one sandbox; stopped when dropped.
pub struct UserNet {
    child: Pid,
    /// Closing it tells slirp4netns to exit (`--exit-fd`).
    _exit: OwnedFd,
}

impl Drop for UserNet {
    fn drop(&mut self) {
        let _ = kill(self.child, Signal::SIGKILL);
        let _ = waitpid(self.child, None);
    }
}

/// Attaches `program` (slirp4netns) to the network namespace of `pid` (the sandbox's init,
/// waiting for its sync), through the sandbox's own user namespace, and waits until its
/// `tap0` is configured.
pub fn start(program: &Path, pid: Pid) -> Result<UserNet, String> {
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (ready_r, ready_w) = nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
    let (exit_r, exit_w) = nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
    let (ready_raw, exit_raw) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
    let mut cmd = std::process::Command::new(program);
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",
        "--enable-seccomp",
        "--ready-fd=3",
        "--exit-fd=4",
    ])
    .arg(format!("--userns-path=/proc/{pid}/ns/user"))
    .arg(pid.to_string())
    .arg("tap0")
    .env_clear()
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::from(err_w));
    // SAFETY: only dup2/fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in [(ready_raw, 3), (exit_raw, 4)] {
                super::place_fd(from, to)?;
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    drop(cmd);
    drop((ready_w, exit_r));
    let net = UserNet {
        child: Pid::from_raw(child.id() as i32),
        _exit: exit_w,
    };
    // `child` is not waited for through std: [`UserNet`]'s drop reaps it.
    std::mem::forget(child);
    let mut pfd = [nix::poll::PollFd::new(
        ready_r.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let _ = nix::poll::poll(
        &mut pfd,
        nix::poll::PollTimeout::from(READY_TIMEOUT.as_millis() as u16),
    );
    let mut b = [0u8; 1];
    if matches!(nix::unistd::read(ready_r.as_raw_fd(), &mut b), Ok(1)) {
        return Ok(net);
    }
    drop(net);
    let mut why = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(err_r), &mut why);
    let why = why
        .lines()
        .filter(|l| !l.contains("experimental"))
        .collect::<Vec<_>>()
        .join("; ");
    let mut msg = format!(
        "{} could not give the sandbox its network{}",
        program.display(),
        if why.is_empty() {
            String::new()
        } else {
            format!(": {why}")
        }
    );
    if why.contains("/dev/net/tun") {
        msg.push_str(" (this user may not open /dev/net/tun: allow it, e.g. `chmod 0666 /dev/net/tun`, or run the job with `backend = \"docker\"`)");
    }
    Err(msg)
}
