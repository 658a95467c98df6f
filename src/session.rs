//! The library API (SPEC §5): a sandbox session in which code and commands run one after
//! another, sharing a workdir.
//!
//! ```no_run
//! # async fn demo() -> Result<(), llm_sandbox::session::SessionError> {
//! use llm_sandbox::{BackendKind, Lang, Session};
//! let mut s = Session::builder().lang(Lang::Python).backend(BackendKind::Native).open().await?;
//! let out = s.run("print('hi')", &[]).await?;
//! assert_eq!(out.stdout, "hi\n");
//! s.close().await?;
//! # Ok(()) }
//! ```
//!
//! On the native backend every `run`/`execute_command` starts a fresh namespace sandbox
//! (nothing but the workdir survives between them); the workdir is a host directory
//! private to the session, bind-mounted as `/sandbox`, so its size is not limited.

use crate::backend::native::{base_env, program_steps, sandbox_id};
use crate::lang::{self, HostToolchain};
use crate::plan::job::ResolvedLimits;
use crate::run::RunDir;
use crate::sandbox::host;
use crate::sandbox::proto::Msg;
use crate::sandbox::{SandboxConfig, SandboxLimits, Step, StepKind};
use crate::spec::types::{BackendKind, Lang};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the {0} backend is not available in this version of llm-sandbox")]
    BackendUnavailable(BackendKind),
    #[error("toolchain missing: {0}")]
    Toolchain(String),
    #[error("the session is closed")]
    Closed,
    #[error("invalid path {0:?}: {1}")]
    BadPath(String, String),
    #[error("sandbox error: {0}")]
    Sandbox(String),
    #[error("libraries are not supported on the native backend yet: {0:?}")]
    Libraries(Vec<String>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What one `run` or `execute_command` produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    /// None when the program was killed by a signal or timed out.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub duration: Duration,
    /// The compile step's output when compilation failed.
    pub compile_output: Option<String>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

#[derive(Debug, Clone)]
pub struct SessionBuilder {
    lang: Lang,
    backend: BackendKind,
    image: Option<String>,
    keep_template: bool,
    limits: ResolvedLimits,
    timeout: Duration,
    network: bool,
    env: Vec<(String, String)>,
}

impl Default for SessionBuilder {
    fn default() -> Self {
        SessionBuilder {
            lang: Lang::Python,
            backend: BackendKind::Native,
            image: None,
            keep_template: false,
            limits: ResolvedLimits::default(),
            timeout: Duration::from_secs(30),
            network: false,
            env: vec![],
        }
    }
}

impl SessionBuilder {
    pub fn lang(mut self, lang: Lang) -> Self {
        self.lang = lang;
        self
    }
    pub fn backend(mut self, b: BackendKind) -> Self {
        self.backend = b;
        self
    }
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }
    pub fn keep_template(mut self, keep: bool) -> Self {
        self.keep_template = keep;
        self
    }
    pub fn limits(mut self, limits: ResolvedLimits) -> Self {
        self.limits = limits;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn network(mut self, on: bool) -> Self {
        self.network = on;
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub async fn open(self) -> Result<Session, SessionError> {
        if self.backend != BackendKind::Native {
            return Err(SessionError::BackendUnavailable(self.backend));
        }
        let tc = lang::probe_cached(self.lang).map_err(SessionError::Toolchain)?;
        let dir = RunDir::create()?;
        let workdir = dir.path.join("workdir");
        std::fs::create_dir_all(&workdir)?;
        if nix::unistd::geteuid().is_root() {
            let id = crate::sandbox::helper::UNPRIVILEGED_HOST_ID;
            std::os::unix::fs::chown(&workdir, Some(id), Some(id))?;
        }
        Ok(Session {
            b: self,
            tc,
            dir: Some(dir),
            workdir,
            cancel: CancellationToken::new(),
        })
    }
}

/// A sandbox session (SPEC §5).
pub struct Session {
    b: SessionBuilder,
    tc: HostToolchain,
    dir: Option<RunDir>,
    workdir: PathBuf,
    cancel: CancellationToken,
}

/// Maps `/sandbox/x/y` or `x/y` to the relative path `x/y`; refuses `..` and other roots.
fn sandbox_rel(p: &str) -> Result<PathBuf, SessionError> {
    let path = Path::new(p);
    let rel = path.strip_prefix("/sandbox").unwrap_or(path);
    if rel.is_absolute() {
        return Err(SessionError::BadPath(
            p.into(),
            "only paths under /sandbox are reachable".into(),
        ));
    }
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(SessionError::BadPath(
                    p.into(),
                    "`..` is not allowed".into(),
                ))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(SessionError::BadPath(p.into(), "names no file".into()));
    }
    Ok(out)
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

impl Session {
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    pub fn lang(&self) -> Lang {
        self.b.lang
    }

    /// A token that stops whatever runs in this session when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Writes `code` as the language's source file in the workdir, compiles it when the
    /// language compiles, and runs it.
    pub async fn run(
        &mut self,
        code: &str,
        libraries: &[&str],
    ) -> Result<ExecOutput, SessionError> {
        if !libraries.is_empty() {
            return Err(SessionError::Libraries(
                libraries.iter().map(|s| s.to_string()).collect(),
            ));
        }
        let source = lang::source_file(self.b.lang, code);
        let mut f = open_beneath(&self.workdir, Path::new(&source), true)?;
        std::io::Write::write_all(&mut f, code.as_bytes())?;
        let steps = program_steps(
            self.b.lang,
            &self.tc,
            &source,
            code,
            &self.b.limits,
            self.b.timeout,
            &[],
        );
        self.exec(steps, None).await
    }

    fn run_step(&self, argv: Vec<String>) -> Step {
        Step {
            kind: StepKind::Run,
            argv,
            timeout_ms: self.b.timeout.as_millis() as u64,
            capture_cap: self.b.limits.output,
            as_root: false,
            limited: true,
        }
    }

    /// Runs a shell command (`/bin/sh -c`) in the workdir.
    pub async fn execute_command(&mut self, command: &str) -> Result<ExecOutput, SessionError> {
        let step = self.run_step(vec!["/bin/sh".into(), "-c".into(), command.into()]);
        self.exec(vec![step], None).await
    }

    /// Like `execute_command`, with `stdin`.
    pub async fn execute_command_with_stdin(
        &mut self,
        command: &str,
        stdin: &[u8],
    ) -> Result<ExecOutput, SessionError> {
        let step = self.run_step(vec!["/bin/sh".into(), "-c".into(), command.into()]);
        self.exec(vec![step], Some(stdin.to_vec())).await
    }

    /// Copies a host file into the sandbox (`dest` under `/sandbox`).
    pub async fn copy_to_runtime(
        &mut self,
        src: impl AsRef<Path>,
        dest: &str,
    ) -> Result<(), SessionError> {
        let rel = sandbox_rel(dest)?;
        let mut from = std::fs::File::open(src.as_ref())?;
        let mut to = open_beneath(&self.workdir, &rel, true)?;
        std::io::copy(&mut from, &mut to)?;
        Ok(())
    }

    /// Copies a file out of the sandbox (`src` under `/sandbox`) to a host path. Symlinks
    /// planted in the sandbox are never followed.
    pub async fn copy_from_runtime(
        &mut self,
        src: &str,
        dest: impl AsRef<Path>,
    ) -> Result<(), SessionError> {
        let rel = sandbox_rel(src)?;
        let mut from = open_beneath(&self.workdir, &rel, false)?;
        if let Some(p) = dest.as_ref().parent() {
            if !p.as_os_str().is_empty() {
                std::fs::create_dir_all(p)?;
            }
        }
        let mut to = std::fs::File::create(dest.as_ref())?;
        std::io::copy(&mut from, &mut to)?;
        Ok(())
    }

    /// Ends the session and removes everything it created.
    pub async fn close(mut self) -> Result<(), SessionError> {
        self.cancel.cancel();
        self.dir.take();
        Ok(())
    }

    async fn exec(
        &mut self,
        steps: Vec<Step>,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecOutput, SessionError> {
        let dir = self.dir.as_ref().ok_or(SessionError::Closed)?;
        let id = sandbox_id();
        let sdir = dir.path.join(&id);
        let (root, out) = (sdir.join("root"), sdir.join("out"));
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&out)?;
        let (env, path) = base_env(self.b.lang, &self.tc, &self.b.env);
        let l = &self.b.limits;
        let cfg = SandboxConfig {
            id,
            root_mount: root,
            inputs_dir: None,
            out_dir: out,
            persistent_workdir: Some(self.workdir.clone()),
            binds: self
                .tc
                .binds
                .iter()
                .map(|b| crate::sandbox::Bind {
                    src: b.clone(),
                    dest: b.clone(),
                    writable: false,
                })
                .collect(),
            rootfs: None,
            path,
            env,
            steps,
            limits: SandboxLimits {
                memory: l.memory,
                cpus: l.cpus,
                pids: l.pids,
                disk: l.disk,
                open_files: l.open_files,
                address_space_fallback: lang::spec(self.b.lang).address_space_limit_ok,
            },
            network: self.b.network,
            collect_globs: vec![],
            collect_paths: vec![],
            collect_cap: 0,
        };
        let cfg_path = sdir.join("config.json");
        std::fs::write(
            &cfg_path,
            serde_json::to_vec(&cfg).map_err(|e| SessionError::Sandbox(e.to_string()))?,
        )?;
        let o = host::run(&cfg, &cfg_path, stdin, l.output, &self.cancel).await?;
        let _ = std::fs::remove_dir_all(&sdir);
        let mut out = ExecOutput {
            duration: o.wall,
            ..Default::default()
        };
        let mut last = None;
        for m in &o.msgs {
            match m {
                Msg::Step(s) => last = Some(s.clone()),
                Msg::Error { message, hint } if last.is_none() => {
                    return Err(SessionError::Sandbox(match hint {
                        Some(h) => format!("{message}: {h}"),
                        None => message.clone(),
                    }))
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_paths() {
        assert_eq!(
            sandbox_rel("/sandbox/a/b.txt").unwrap(),
            PathBuf::from("a/b.txt")
        );
        assert_eq!(sandbox_rel("a.txt").unwrap(), PathBuf::from("a.txt"));
        assert!(sandbox_rel("/etc/passwd").is_err());
        assert!(sandbox_rel("/sandbox/../etc/passwd").is_err());
        assert!(sandbox_rel("/sandbox").is_err());
    }
}
