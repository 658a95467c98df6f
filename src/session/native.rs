//! A session on the native backend: every call runs in a fresh namespace sandbox whose
//! `/sandbox` is the session's host workdir (kept between calls, removed at the end).

use super::{BoxFut, Input, SessionBuilder, SessionError, SessionSandbox};
use crate::backend::native::{add_plot_hook, program_steps, sandbox_config, sandbox_id};
use crate::backend::ExecOutput;
use crate::lang::{self, HostToolchain};
use crate::owner::RunDir;
use crate::sandbox::host;
use crate::sandbox::proto::Msg;
use crate::sandbox::{Step, StepKind};
use crate::spec::types::Lang;
use crate::stream::ChunkSender;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

pub(super) struct NativeSession {
    tc: HostToolchain,
    dir: Option<RunDir>,
    workdir: PathBuf,
    /// The plot hook's directory (python), bound read-only into every sandbox.
    plot_hook: Option<PathBuf>,
}

impl NativeSession {
    pub(super) fn open(b: &SessionBuilder) -> Result<Self, SessionError> {
        if !b.libraries.is_empty() {
            return Err(SessionError::Libraries(b.libraries.clone()));
        }
        let tc = lang::probe_cached(b.lang).map_err(SessionError::Toolchain)?;
        let dir = RunDir::create()?;
        let workdir = dir.path.join("workdir");
        std::fs::create_dir_all(&workdir)?;
        if nix::unistd::geteuid().is_root() {
            let id = crate::sandbox::helper::UNPRIVILEGED_HOST_ID;
            std::os::unix::fs::chown(&workdir, Some(id), Some(id))?;
        }
        let plot_hook = match b.lang {
            Lang::Python => Some(crate::plots::write_hook(&dir.path)?),
            _ => None,
        };
        Ok(NativeSession {
            tc,
            dir: Some(dir),
            workdir,
            plot_hook,
        })
    }

    async fn exec_in(
        &mut self,
        b: &SessionBuilder,
        steps: Vec<Step>,
        stdin: Input,
        live: Option<ChunkSender>,
        cancel: &CancellationToken,
    ) -> Result<ExecOutput, SessionError> {
        let dir = self.dir.as_ref().ok_or(SessionError::Closed)?;
        let id = sandbox_id();
        let sdir = dir.path.join(&id);
        let limits = crate::backend::native::sandbox_limits(b.lang, &b.limits);
        let mut cfg = sandbox_config(&id, &sdir, b.lang, &self.tc, &b.env, limits, b.network)?;
        cfg.persistent_workdir = Some(self.workdir.clone());
        cfg.steps = steps;
        if let Some(hook) = &self.plot_hook {
            add_plot_hook(&mut cfg, hook.clone());
        }
        let stdin = stdin.all().await;
        let o = match live {
            Some(tx) => {
                host::run_streaming(&b.scope.servers, &cfg, stdin, b.limits.output, tx, cancel)
                    .await
            }
            None => host::run(&b.scope.servers, &cfg, stdin, b.limits.output, cancel).await,
        }?;
        let _ = std::fs::remove_dir_all(&sdir);
        let mut out = ExecOutput {
            duration: o.wall,
            ..Default::default()
        };
        if o.cancelled {
            return Err(SessionError::Interrupted);
        }
        if o.output_limit_hit {
            out.stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            out.stderr = String::from_utf8_lossy(&o.stderr).into_owned();
            out.output_truncated = true;
            return Ok(out);
        }
        let mut last = None;
        for m in &o.msgs {
            match (m, m.error_text()) {
                (Msg::Step(s), _) => last = Some(s.clone()),
                (_, Some(e)) if last.is_none() => return Err(SessionError::Sandbox(e)),
                _ => {}
            }
        }
        let last =
            last.ok_or_else(|| SessionError::Sandbox("the sandbox ended without a result".into()))?;
        if last.kind == Some(StepKind::Compile) {
            out.compile_output = Some(last.output.clone());
            out.stderr = last.output.clone();
        } else {
            out.stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            out.stderr = String::from_utf8_lossy(&o.stderr).into_owned();
            if let Some(u) = &last.usage {
                out.cpu_ms = Some(u.cpu_ms);
                out.peak_memory_bytes = Some(u.peak_memory_bytes).filter(|&p| p > 0);
            }
        }
        if let Some(e) = last.spawn_error {
            return Err(SessionError::Sandbox(e));
        }
        out.exit_code = last.exit_code;
        out.signal = last.signal;
        out.timed_out = last.timed_out;
        Ok(out)
    }
}

impl SessionSandbox for NativeSession {
    fn program<'a>(
        &'a mut self,
        b: &'a SessionBuilder,
        source: &'a str,
        code: &'a str,
        args: &'a [String],
        libs: &'a [String],
        _cancel: &'a CancellationToken,
    ) -> BoxFut<'a, Vec<Step>> {
        Box::pin(async move {
            if !libs.is_empty() {
                return Err(SessionError::Libraries(libs.to_vec()));
            }
            let mut f = open_beneath(&self.workdir, Path::new(source), true)?;
            std::io::Write::write_all(&mut f, code.as_bytes())?;
            Ok(program_steps(
                b.lang, &self.tc, source, code, &b.limits, b.timeout, args,
            ))
        })
    }

    fn exec<'a>(
        &'a mut self,
        b: &'a SessionBuilder,
        steps: Vec<Step>,
        stdin: Input,
        live: Option<ChunkSender>,
        _discard: bool,
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, ExecOutput> {
        Box::pin(self.exec_in(b, steps, stdin, live, cancel))
    }

    fn copy_in<'a>(
        &'a mut self,
        src: &'a Path,
        rel: &'a Path,
        _cancel: &'a CancellationToken,
    ) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut from = std::fs::File::open(src)?;
            let mut to = open_beneath(&self.workdir, rel, true)?;
            std::io::copy(&mut from, &mut to)?;
            Ok(())
        })
    }

    fn copy_out<'a>(
        &'a mut self,
        rel: &'a Path,
        dest: &'a Path,
        _cap: u64,
        _cancel: &'a CancellationToken,
    ) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut from = open_beneath(&self.workdir, rel, false)?;
            let mut to = std::fs::File::create(dest)?;
            std::io::copy(&mut from, &mut to)?;
            Ok(())
        })
    }

    fn take_plots<'a>(
        &'a mut self,
        cap: u64,
        _cancel: &'a CancellationToken,
    ) -> BoxFut<'a, Vec<crate::plots::Plot>> {
        Box::pin(async move {
            let plots = crate::plots::read_dir_safely(&self.workdir, cap)?;
            let dir = self.workdir.join(crate::plots::PLOTS_DIR);
            if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&dir)?;
            }
            Ok(plots)
        })
    }

    fn close(&mut self) -> BoxFut<'_, ()> {
        self.dir.take();
        Box::pin(async { Ok(()) })
    }

    fn abandon(&mut self) {
        self.dir.take();
    }
}

/// Opens `rel` under `root` without following any symlink (the sandbox may have planted some).
fn open_beneath(root: &Path, rel: &Path, create: bool) -> Result<std::fs::File, SessionError> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::Mode;
    let io = |e: nix::Error| SessionError::Io(std::io::Error::from(e));
    let mut dir = unsafe {
        OwnedFd::from_raw_fd(
            open(root, OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(io)?,
        )
    };
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let name = c.as_os_str();
        let last = i + 1 == comps.len();
        if !last {
            if create {
                let _ = nix::sys::stat::mkdirat(
                    Some(dir.as_raw_fd()),
                    name,
                    Mode::from_bits_truncate(0o755),
                );
            }
            let fd = openat(
                Some(dir.as_raw_fd()),
                name,
                OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| {
                SessionError::BadPath(
                    rel.display().to_string(),
                    format!("{e} (symbolic links are never followed)"),
                )
            })?;
            dir = unsafe { OwnedFd::from_raw_fd(fd) };
        } else {
            let flags = if create {
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_TRUNC
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC
            } else {
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC
            };
            let fd = openat(
                Some(dir.as_raw_fd()),
                name,
                flags,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(|e| {
                SessionError::BadPath(
                    rel.display().to_string(),
                    format!("{e} (symbolic links are never followed)"),
                )
            })?;
            let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            if !f.metadata()?.is_file() {
                return Err(SessionError::BadPath(
                    rel.display().to_string(),
                    "not a regular file".into(),
                ));
            }
            return Ok(f);
        }
    }
    Err(SessionError::BadPath(
        rel.display().to_string(),
        "names no file".into(),
    ))
}
