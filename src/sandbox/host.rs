//! The host side: spawns the helper, feeds stdin, reads stdout/stderr with caps and the
//! control pipe, and enforces a backstop timeout. Async; never forks by itself.

use super::proto::{self, Msg};
use super::{SandboxConfig, CONTROL_FD, HELPER_SUBCOMMAND};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
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

async fn read_capped<R: AsyncRead + Unpin>(
    mut r: R,
    cap: u64,
    over: tokio::sync::mpsc::Sender<()>,
) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = (cap as usize).saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
                if n > room && !truncated {
                    truncated = true;
                    let _ = over.try_send(());
                }
            }
        }
    }
    (out, truncated)
}

/// How the run step's stdio is connected.
#[derive(Debug, Clone)]
pub enum Io {
    /// stdin from these bytes (or /dev/null), stdout and stderr captured up to `cap` each.
    Capture { stdin: Option<Vec<u8>>, cap: u64 },
    /// The runner's own stdin, stdout and stderr (`exec`: output streams as it comes).
    Inherit,
}

/// Runs one sandbox described by `cfg` (already written to `cfg_path`).
pub async fn run(
    cfg: &SandboxConfig,
    cfg_path: &Path,
    stdin: Option<Vec<u8>>,
    output_cap: u64,
    cancel: &CancellationToken,
) -> std::io::Result<Outcome> {
    run_with(
        cfg,
        cfg_path,
        Io::Capture {
            stdin,
            cap: output_cap,
        },
        cancel,
    )
    .await
}

/// Runs one sandbox with the given stdio.
pub async fn run_with(
    cfg: &SandboxConfig,
    cfg_path: &Path,
    io: Io,
    cancel: &CancellationToken,
) -> std::io::Result<Outcome> {
    let (stdin, output_cap, inherit) = match io {
        Io::Capture { stdin, cap } => (stdin, cap, false),
        Io::Inherit => (None, u64::MAX, true),
    };
    let started = Instant::now();
    let (ctl_r, ctl_w): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let ctl_w_raw = ctl_w.as_raw_fd();
    let mut cmd = tokio::process::Command::new(helper_path());
    cmd.arg(HELPER_SUBCOMMAND)
        .arg(cfg_path)
        .env_clear()
        .stdin(if inherit {
            Stdio::inherit()
        } else if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if inherit {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .stderr(if inherit {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if ctl_w_raw == CONTROL_FD {
                let flags = libc::fcntl(CONTROL_FD, libc::F_GETFD);
                libc::fcntl(CONTROL_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(ctl_w_raw, CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(ctl_w);
    let pid = child.id().map(|p| p as i32);

    let stdin_task = match (child.stdin.take(), stdin) {
        (Some(mut w), Some(data)) => Some(tokio::spawn(async move {
            let _ = w.write_all(&data).await;
            let _ = w.shutdown().await;
        })),
        _ => None,
    };
    let (over_tx, mut over_rx) = tokio::sync::mpsc::channel::<()>(2);
    let out_task = child
        .stdout
        .take()
        .map(|o| tokio::spawn(read_capped(o, output_cap, over_tx.clone())));
    let err_task = child
        .stderr
        .take()
        .map(|e| tokio::spawn(read_capped(e, output_cap, over_tx)));
    let ctl = tokio::net::unix::pipe::Receiver::from_owned_fd(ctl_r)?;
    let ctl_task = tokio::spawn(async move {
        let mut v = Vec::new();
        let mut ctl = ctl;
        let _ = ctl.read_to_end(&mut v).await;
        v
    });

    let total: u64 = cfg.steps.iter().map(|s| s.timeout_ms).sum();
    let backstop = tokio::time::sleep(Duration::from_millis(total + 30_000));
    tokio::pin!(backstop);
    let term = |pid: Option<i32>| {
        if let Some(p) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    };
    let mut outcome = Outcome::default();
    let status = loop {
        tokio::select! {
            st = child.wait() => break st.ok(),
            Some(()) = over_rx.recv(), if !outcome.output_limit_hit => {
                outcome.output_limit_hit = true;
                term(pid);
            }
            _ = cancel.cancelled(), if !outcome.cancelled => {
                outcome.cancelled = true;
                term(pid);
            }
            _ = &mut backstop => {
                let _ = child.start_kill();
            }
        }
    };
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
    let ctl = ctl_task.await.unwrap_or_default();
    outcome.msgs = proto::parse_all(&ctl);
    outcome.stdout = stdout;
    outcome.stderr = stderr;
    outcome.stdout_truncated = so_t;
    outcome.stderr_truncated = se_t;
    outcome.wall = started.elapsed();
    outcome.helper_status = status;
    outcome.out_dir = Some(cfg.out_dir.clone());
    Ok(outcome)
}
