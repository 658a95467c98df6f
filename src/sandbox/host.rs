//! The host side: spawns the helper, feeds stdin, reads stdout/stderr with caps and the
//! control pipe, and enforces a backstop timeout. Async; never forks by itself.

use super::proto::{self, Msg};
use super::{SandboxConfig, CONTROL_FD, HELPER_SUBCOMMAND};
use crate::stream::{ChunkSender, Feed, OutputChunk, StdStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// What a sandbox run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub msgs: Vec<Msg>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// stdout or stderr went past the output cap and the sandbox was stopped.
    pub output_limit_hit: bool,
    /// The run was cancelled (Ctrl-C, fail-fast).
    pub cancelled: bool,
    pub wall: Duration,
    /// The helper's own diagnostics when it died without a message.
    pub helper_status: Option<std::process::ExitStatus>,
    /// The host directory the requested files were copied to.
    pub out_dir: Option<PathBuf>,
}

/// The binary that implements `__sandbox`: `$LLM_SANDBOX_HELPER`, this executable when it is
/// llm-sandbox, else an `llm-sandbox` next to it (tests, examples) or on `$PATH`.
pub fn helper_path() -> PathBuf {
    if let Some(p) = std::env::var_os("LLM_SANDBOX_HELPER") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let is_us = exe
        .file_name()
        .map(|n| n.to_string_lossy().starts_with("llm-sandbox"))
        .unwrap_or(false);
    if is_us {
        return PathBuf::from("/proc/self/exe");
    }
    let mut dir = exe.parent().map(Path::to_path_buf);
    for _ in 0..3 {
        if let Some(d) = &dir {
            let cand = d.join("llm-sandbox");
            if cand.is_file() {
                return cand;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    crate::lang::which("llm-sandbox").unwrap_or(exe)
}

/// Where [`read_capped`] sends a stream's bytes as they come.
struct LiveStream {
    tx: ChunkSender,
    stream: StdStream,
    /// Also an empty chunk when the stream ends (a wired step: [`crate::backend::Wire`]);
    /// the public streaming API's consumers never get one.
    sends_end: bool,
}

/// Reads a stream to its end, keeping at most `cap` bytes; `live` also gets the kept bytes
/// as they come (nothing more is sent past the cap).
async fn read_capped<R: AsyncRead + Unpin>(
    mut r: R,
    cap: u64,
    over: tokio::sync::mpsc::Sender<()>,
    live: Option<LiveStream>,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = (cap as usize).saturating_sub(out.len());
                let kept = &buf[..n.min(room)];
                if let Some(live) = &live {
                    if !kept.is_empty() {
                        // A consumer that went away only stops the chunks, not the run.
                        let _ = live
                            .tx
                            .send(OutputChunk {
                                stream: live.stream,
                                data: kept.to_vec(),
                            })
                            .await;
                    }
                }
                out.extend_from_slice(kept);
                if n > room && !truncated {
                    truncated = true;
                    let _ = over.try_send(());
                }
            }
        }
    }
    if let Some(live) = live.filter(|l| l.sends_end) {
        let _ = live
            .tx
            .send(OutputChunk {
                stream: live.stream,
                data: Vec::new(),
            })
            .await;
    }
    (out, truncated)
}

/// How the run step's stdio is connected.
#[derive(Debug)]
pub enum Io {
    /// stdin from these bytes (or /dev/null), stdout and stderr captured up to `cap` each;
    /// with `live`, the captured bytes are also sent there as they come.
    Capture {
        stdin: Option<Vec<u8>>,
        cap: u64,
        live: Option<ChunkSender>,
    },
    /// stdin as it comes from `stdin` (its end closes it), stdout and stderr captured up to
    /// `cap` each and sent to `live` as they come (a program talking with an interactor:
    /// README, "Test cases").
    Wired {
        stdin: tokio::sync::mpsc::Receiver<Vec<u8>>,
        cap: u64,
        live: ChunkSender,
    },
    /// The runner's own stdin, stdout and stderr (`exec`: output streams as it comes).
    Inherit,
    /// The caller's own pipes (stdin, stdout, stderr), read and written by the caller as
    /// the program runs (examples/fake-apiserver streams them over a WebSocket).
    Fds {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
}

/// Runs one sandbox described by `cfg` on one of `servers`.
pub async fn run(
    servers: &Servers,
    cfg: &SandboxConfig,
    stdin: Option<Vec<u8>>,
    output_cap: u64,
    cancel: &CancellationToken,
) -> std::io::Result<Outcome> {
    run_with(
        servers,
        cfg,
        Io::Capture {
            stdin,
            cap: output_cap,
            live: None,
        },
        cancel,
    )
    .await
}

/// Like [`run`], sending the run step's stdout and stderr to `live` as they come.
pub async fn run_streaming(
    servers: &Servers,
    cfg: &SandboxConfig,
    stdin: Option<Vec<u8>>,
    output_cap: u64,
    live: ChunkSender,
    cancel: &CancellationToken,
) -> std::io::Result<Outcome> {
    run_with(
        servers,
        cfg,
        Io::Capture {
            stdin,
            cap: output_cap,
            live: Some(live),
        },
        cancel,
    )
    .await
}

/// Like [`run`], the run step's stdin fed from `stdin` as it comes and its stdout and
/// stderr sent to `live` as they come ([`Io::Wired`]).
pub async fn run_wired(
    servers: &Servers,
    cfg: &SandboxConfig,
    stdin: tokio::sync::mpsc::Receiver<Vec<u8>>,
    output_cap: u64,
    live: ChunkSender,
    cancel: &CancellationToken,
) -> std::io::Result<Outcome> {
    let io = Io::Wired {
        stdin,
        cap: output_cap,
        live,
    };
    run_with(servers, cfg, io, cancel).await
}

/// A sandbox server (see [`super::helper`]): one per concurrency slot, reused job after
/// job, so a job pays neither an exec of the helper nor a cgroup move.
struct Server {
    child: tokio::process::Child,
    sock: OwnedFd,
}

/// The sandbox servers of one scope (a run, a session, an `exec`; README,
/// "Architecture"): the idle ones, and the directory their warm sandboxes mount their
/// root on. Two scopes share no server, and the end of one ([`Servers::shutdown`]) stops
/// only its own. Dropped without a shutdown, its servers are killed (and what they left on
/// the host is swept by a later run).
pub struct Servers {
    idle: std::sync::Mutex<Vec<Server>>,
    /// `<owner prefix>-warm-<n>`, unique in this process.
    name: String,
    /// Set once a sandbox asks for preloaded Python: servers started from then on may
    /// preload (they scrub the memory they free from their start, which costs a little,
    /// so only then). The value of their [`super::helper::PRELOAD_ENV`]: the JSON of the
    /// last request a job could use (they preload it when they start), else `1`.
    preload: std::sync::Mutex<Option<String>>,
}

impl Default for Servers {
    fn default() -> Self {
        Servers::new()
    }
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Servers").field("name", &self.name).finish()
    }
}

impl Servers {
    pub fn new() -> Servers {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Servers {
            idle: Default::default(),
            name: format!("{}-warm-{n}", crate::owner::prefix()),
            preload: Default::default(),
        }
    }

    /// An owner-labelled directory these servers' warm sandboxes mount their root on (each
    /// in its own mount namespace; nothing appears in it on the host), below the runner's
    /// private root. None when that root cannot be used: servers then set every sandbox up
    /// when its job arrives. Made again when a server starts after [`Servers::shutdown`]
    /// removed it.
    fn warm_root(&self) -> Option<PathBuf> {
        let root = crate::owner::runs_root().ok()?;
        let dir = root.join(&self.name);
        if dir.join("owner.json").is_file() {
            return Some(dir);
        }
        std::fs::create_dir_all(&dir).ok()?;
        let o = crate::owner::Owner {
            tool: "llm-sandbox".into(),
            run_id: "warm".into(),
            host: crate::owner::hostname(),
            pid: std::process::id(),
            started_at: String::new(),
        };
        // Inside the mount point: each sandbox mounts its root over it, so the file is
        // only seen on the host (where stale-run sweeping reads it).
        let _ = std::fs::write(
            dir.join("owner.json"),
            serde_json::to_vec(&o).unwrap_or_default(),
        );
        Some(dir)
    }

    fn take(&self) -> std::io::Result<Server> {
        loop {
            let s = self.idle.lock().map(|mut p| p.pop()).unwrap_or(None);
            match s {
                Some(mut s) => {
                    if matches!(s.child.try_wait(), Ok(None)) {
                        return Ok(s);
                    }
                }
                None => return self.spawn(),
            }
        }
    }

    fn spawn(&self) -> std::io::Result<Server> {
        let preload = self.preload.lock().ok().and_then(|p| p.clone());
        spawn_server(self.warm_root(), preload)
    }

    /// A sandbox asks for preloaded Python: servers started from now on may preload, and
    /// preload its interpreter when they start if it could use one.
    fn ask_preload(&self, cfg: &SandboxConfig) {
        let request = super::pyembed::request(cfg).and_then(|r| serde_json::to_string(&r).ok());
        if let Ok(mut p) = self.preload.lock() {
            match request {
                Some(r) => *p = Some(r),
                None if p.is_none() => *p = Some("1".into()),
                None => {}
            }
        }
    }

    fn give_back(&self, mut s: Server) {
        if matches!(s.child.try_wait(), Ok(None)) {
            if let Ok(mut p) = self.idle.lock() {
                p.push(s);
            }
        }
    }

    /// Stops every idle server and removes what they kept on the host (their slot cgroups,
    /// the warm sandboxes' directory), so that a run leaves nothing for the next one to
    /// sweep. Each server is told by its socket closing, and removes its own cgroup as it
    /// exits; one that has not exited within a second is killed. A server busy with a job
    /// is not touched (it goes back to the idle ones, for the next shutdown or the drop).
    pub async fn shutdown(&self) {
        let servers: Vec<Server> = self
            .idle
            .lock()
            .map(|mut p| p.drain(..).collect())
            .unwrap_or_default();
        stop(servers).await;
        let in_use = self.idle.lock().map(|p| !p.is_empty()).unwrap_or(true);
        if !in_use {
            if let Ok(root) = crate::owner::runs_root() {
                let _ = std::fs::remove_dir_all(root.join(&self.name));
            }
        }
    }
}

impl Drop for Servers {
    /// Dropped without a shutdown (a session dropped without `close`): its idle servers
    /// are stopped in the background as [`Servers::shutdown`] would (killed at once
    /// outside a runtime).
    fn drop(&mut self) {
        let servers: Vec<Server> = self.idle.get_mut().map(std::mem::take).unwrap_or_default();
        let dir = crate::owner::runs_root().map(|r| r.join(&self.name));
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                stop(servers).await;
                if let Ok(dir) = dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
            });
        }
    }
}

/// Stops `servers`: each is told by its socket closing (and removes its own cgroup as it
/// exits); one that has not exited within a second is killed.
async fn stop(servers: Vec<Server>) {
    {
        let waits = servers.into_iter().map(|s| {
            let Server { mut child, sock } = s;
            drop(sock);
            async move {
                if tokio::time::timeout(Duration::from_secs(1), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        });
        futures_util::future::join_all(waits).await;
    }
}

fn spawn_server(warm_root: Option<PathBuf>, preload: Option<String>) -> std::io::Result<Server> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let theirs_raw = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(helper_path());
    cmd.arg(HELPER_SUBCOMMAND)
        .arg(crate::owner::prefix())
        .arg(warm_root.unwrap_or_default())
        .env_clear()
        .envs(preload.map(|p| (super::helper::PRELOAD_ENV, p)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || super::place_fd(theirs_raw, CONTROL_FD));
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok(Server { child, sock: ours })
}

/// The configuration as an anonymous file (memfd) holding its JSON: the server reads it
/// from the fd it receives, never from a path anyone could swap.
fn config_fd(cfg: &SandboxConfig) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    // SAFETY: memfd_create with a NUL-terminated name; the fd is new and ours.
    let fd = unsafe { libc::memfd_create(c"llm-sandbox-config".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(&serde_json::to_vec(cfg).map_err(std::io::Error::other)?)?;
    f.rewind()?;
    Ok(f.into())
}

/// One request: the job's stdin, stdout, stderr and control fds, then its configuration.
fn send_request(s: &Server, fds: [RawFd; super::REQUEST_FDS]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let iov = [std::io::IoSlice::new(b"J")];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(s.sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Runs one sandbox on servers of its own, stopped at its end (a one-off: `exec`,
/// `doctor`).
pub async fn run_once(
    cfg: &SandboxConfig,
    io: Io,
    cancel: &CancellationToken,
) -> std::io::Result<Outcome> {
    let servers = Servers::new();
    let o = run_with(&servers, cfg, io, cancel).await;
    servers.shutdown().await;
    o
}

/// Runs one sandbox with the given stdio.
pub async fn run_with(
    servers: &Servers,
    cfg: &SandboxConfig,
    io: Io,
    cancel: &CancellationToken,
) -> std::io::Result<Outcome> {
    use tokio::net::unix::pipe;
    let started = Instant::now();
    let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
    let (ctl_r, ctl_w) = nix::unistd::pipe2(cloexec)?;
    // (stdin for the sandbox, its stdout, its stderr, our stdout reader, our stderr reader,
    //  our stdin writer with its data, the output cap)
    type Fds = (
        OwnedFd,
        OwnedFd,
        OwnedFd,
        Option<OwnedFd>,
        Option<OwnedFd>,
        Option<(OwnedFd, Feed)>,
        u64,
    );
    // Captured output (and stdin from `feed`, or /dev/null).
    let captured = |feed: Option<Feed>, cap: u64| -> std::io::Result<Fds> {
        let (or, ow) = nix::unistd::pipe2(cloexec)?;
        let (er, ew) = nix::unistd::pipe2(cloexec)?;
        let (stdin, writer) = match feed {
            Some(f) => {
                let (sr, sw) = nix::unistd::pipe2(cloexec)?;
                (sr, Some((sw, f)))
            }
            None => (std::fs::File::open("/dev/null")?.into(), None),
        };
        Ok((stdin, ow, ew, Some(or), Some(er), writer, cap))
    };
    let mut live = None;
    // A wired step's stream ends are told to its wire (an empty chunk each).
    let mut ends = false;
    let (stdin_fd, stdout_fd, stderr_fd, out_r, err_r, stdin_writer, output_cap): Fds = match io {
        Io::Capture {
            stdin,
            cap,
            live: l,
        } => {
            live = l;
            captured(stdin.map(Feed::Bytes), cap)?
        }
        Io::Wired {
            stdin,
            cap,
            live: l,
        } => {
            live = Some(l);
            ends = true;
            captured(Some(Feed::Stream(stdin)), cap)?
        }
        Io::Inherit => {
            let dup = |fd: i32| -> std::io::Result<OwnedFd> {
                // SAFETY: duplicating our own standard fds.
                let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: a new fd nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(n) })
            };
            (dup(0)?, dup(1)?, dup(2)?, None, None, None, u64::MAX)
        }
        Io::Fds {
            stdin,
            stdout,
            stderr,
        } => (stdin, stdout, stderr, None, None, None, u64::MAX),
    };

    let cfg_fd = config_fd(cfg)?;
    if cfg.preload {
        servers.ask_preload(cfg);
    }
    let mut server = servers.take()?;
    let fds = [
        stdin_fd.as_raw_fd(),
        stdout_fd.as_raw_fd(),
        stderr_fd.as_raw_fd(),
        ctl_w.as_raw_fd(),
        cfg_fd.as_raw_fd(),
    ];
    if let Err(e) = send_request(&server, fds) {
        // A server that cannot take requests is replaced once.
        drop(server);
        server = servers.spawn()?;
        send_request(&server, fds).map_err(|_| e)?;
    }
    // The sandbox holds its own copies now.
    drop((stdin_fd, stdout_fd, stderr_fd, ctl_w, cfg_fd));

    let stdin_task = match stdin_writer {
        Some((w, feed)) => Some(feed.spawn(pipe::Sender::from_owned_fd(w)?)),
        None => None,
    };
    let (over_tx, mut over_rx) = tokio::sync::mpsc::channel::<()>(2);
    let out_task = match out_r {
        Some(fd) => Some(tokio::spawn(read_capped(
            pipe::Receiver::from_owned_fd(fd)?,
            output_cap,
            over_tx.clone(),
            live.clone().map(|tx| LiveStream {
                tx,
                stream: StdStream::Stdout,
                sends_end: ends,
            }),
        ))),
        None => None,
    };
    let err_task = match err_r {
        Some(fd) => Some(tokio::spawn(read_capped(
            pipe::Receiver::from_owned_fd(fd)?,
            output_cap,
            over_tx,
            live.take().map(|tx| LiveStream {
                tx,
                stream: StdStream::Stderr,
                sends_end: ends,
            }),
        ))),
        None => None,
    };
    let mut ctl = pipe::Receiver::from_owned_fd(ctl_r)?;
    let total: u64 = cfg.steps.iter().map(|s| s.timeout_ms).sum();
    let backstop = tokio::time::sleep(Duration::from_millis(total + 30_000));
    tokio::pin!(backstop);
    let kill = |s: &Server| {
        let _ = nix::sys::socket::send(
            s.sock.as_raw_fd(),
            b"K",
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        );
    };
    let mut outcome = Outcome::default();
    let mut ctl_bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut healthy = true;
    loop {
        tokio::select! {
            r = ctl.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => ctl_bytes.extend_from_slice(&buf[..n]),
            },
            Some(()) = over_rx.recv(), if !outcome.output_limit_hit => {
                outcome.output_limit_hit = true;
                kill(&server);
            }
            _ = cancel.cancelled(), if !outcome.cancelled => {
                outcome.cancelled = true;
                kill(&server);
            }
            _ = &mut backstop => {
                // The server itself is stuck: stop it (its sandbox dies with it).
                let _ = server.child.start_kill();
                healthy = false;
                break;
            }
        }
    }
    if let Some(t) = stdin_task {
        t.abort();
    }
    let (stdout, so_t) = match out_task {
        Some(t) => t.await.unwrap_or_default(),
        None => Default::default(),
    };
    let (stderr, se_t) = match err_task {
        Some(t) => t.await.unwrap_or_default(),
        None => Default::default(),
    };
    outcome.msgs = proto::parse_all(&ctl_bytes);
    if tracing::enabled!(tracing::Level::DEBUG) {
        // Where a sandbox's time went (`LLM_SANDBOX_LOG=debug`): the server's phases (µs
        // since it took the request), the init's setup and each step, and the runner's
        // whole round trip.
        for m in &outcome.msgs {
            match m {
                Msg::Timing { phases } => tracing::debug!(?phases, "sandbox server phases (us)"),
                Msg::Ready { setup_us } => tracing::debug!(setup_us, "sandbox set up"),
                Msg::Step(s) => {
                    tracing::debug!(kind = ?s.kind, duration_ms = s.duration_ms, "sandbox step")
                }
                _ => {}
            }
        }
        tracing::debug!(
            round_trip_us = started.elapsed().as_micros() as u64,
            "sandbox done"
        );
    }
    if !outcome.msgs.iter().any(|m| matches!(m, Msg::Timing { .. })) {
        // The server died mid-job.
        healthy = false;
        outcome.helper_status = server.child.try_wait().ok().flatten();
    }
    outcome.stdout = stdout;
    outcome.stderr = stderr;
    outcome.stdout_truncated = so_t;
    outcome.stderr_truncated = se_t;
    outcome.wall = started.elapsed();
    outcome.out_dir = Some(cfg.out_dir.clone());
    if healthy {
        servers.give_back(server);
    }
    Ok(outcome)
}
