//! The library API (README, "Library API"): a sandbox session in which code and commands run one after
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
//! private to the session, bind-mounted as `/sandbox`, so its size is not limited. On
//! docker a hardened container, on kubernetes a hardened pod (a caller's `kube::Client`
//! through [`SessionBuilder::kube_client`]) lives as long as the session.
//!
//! Streaming: [`Session::run_streaming`] and [`Session::execute_command_streaming`] hand
//! the output to a callback as it is produced ([`crate::stream`]), `run_stream` and
//! `execute_command_stream` yield it as a `Stream` of [`OutputEvent`]s; both end with the
//! same buffered [`ExecOutput`] (exact exit code, signal, timeout flag).

use crate::backend::docker;
use crate::backend::kubernetes;
use crate::backend::native::{program_steps, sandbox_id};
use crate::lang::{self, HostToolchain};
use crate::owner::RunDir;
use crate::plan::job::ResolvedLimits;
use crate::sandbox::host;
use crate::sandbox::proto::Msg;
use crate::sandbox::{Step, StepKind};
use crate::spec::types::{BackendKind, Lang};
use crate::stream::{ChunkSender, OutputChunk};
use futures_util::Stream;
use std::future::Future;
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
    /// The container engine refused or failed (message says which and how to fix it).
    #[error("{0}")]
    Engine(String),
    /// The prepare phase (image build, libraries) failed; the log is attached.
    #[error("{message}\n{log}")]
    Prepare { message: String, log: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub use crate::backend::ExecOutput;

/// What a streaming call's [`futures_util::Stream`] yields: output chunks as they come,
/// then exactly one `Done` with the buffered result (exit code, signal, timeout flag).
#[derive(Debug)]
pub enum OutputEvent {
    Output(OutputChunk),
    Done(Result<ExecOutput, SessionError>),
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

#[derive(Clone)]
pub struct SessionBuilder {
    lang: Lang,
    backend: BackendKind,
    image: Option<String>,
    keep_template: bool,
    limits: ResolvedLimits,
    timeout: Duration,
    network: bool,
    env: Vec<(String, String)>,
    libraries: Vec<String>,
    dockerfile: Option<PathBuf>,
    docker_host: Option<String>,
    podman_socket: Option<String>,
    tls: Option<crate::spec::types::TlsConfig>,
    client: Option<bollard::Docker>,
    kube_client: Option<kube::Client>,
    namespace: Option<String>,
    /// What the session owns of the backends (its engine connection, its cluster): its
    /// own, unless the MCP server shares one among its sessions.
    scope: std::sync::Arc<crate::backend::Scope>,
}

impl std::fmt::Debug for SessionBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("lang", &self.lang)
            .field("backend", &self.backend)
            .field("image", &self.image)
            .field("dockerfile", &self.dockerfile)
            .field("docker_host", &self.docker_host)
            .field("caller_client", &self.client.is_some())
            .field("caller_kube_client", &self.kube_client.is_some())
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
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
            libraries: vec![],
            dockerfile: None,
            docker_host: None,
            podman_socket: None,
            tls: None,
            client: None,
            kube_client: None,
            namespace: None,
            scope: crate::backend::Scope::new(),
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

    /// Libraries installed in the prepare phase (container backends: a template image).
    pub fn libraries<S: AsRef<str>>(mut self, libs: &[S]) -> Self {
        self.libraries = libs.iter().map(|l| l.as_ref().to_string()).collect();
        self
    }
    /// Build the sandbox image from a Dockerfile (its folder is the build context).
    pub fn dockerfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.dockerfile = Some(path.into());
        self
    }
    /// The Docker host (`unix:///…` or `tcp://host:port`); default `$DOCKER_HOST`, then the
    /// local socket.
    pub fn docker_host(mut self, host: impl Into<String>) -> Self {
        self.docker_host = Some(host.into());
        self
    }
    /// The Podman API socket (`unix:///…`, a path, or `tcp://host:port`); default
    /// `$CONTAINER_HOST`, then the rootful socket, then the rootless one.
    pub fn podman_socket(mut self, socket: impl Into<String>) -> Self {
        self.podman_socket = Some(socket.into());
        self
    }
    /// TLS material for a `tcp://` Docker host (paths).
    pub fn tls(
        mut self,
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Self {
        let s = |p: &dyn AsRef<Path>| Some(p.as_ref().display().to_string());
        self.tls = Some(crate::spec::types::TlsConfig {
            ca: s(&ca),
            cert: s(&cert),
            key: s(&key),
        });
        self
    }
    /// A bollard client the caller built (any host, any TLS setup; a client of Podman's
    /// API service with `backend(BackendKind::Podman)`).
    pub fn docker_client(mut self, client: bollard::Docker) -> Self {
        self.client = Some(client);
        self
    }

    /// Kubernetes: a kube client the caller built (any cluster, any authentication);
    /// without one, `$KUBECONFIG` / `~/.kube/config`, then the in-cluster configuration.
    pub fn kube_client(mut self, client: kube::Client) -> Self {
        self.kube_client = Some(client);
        self
    }

    /// Kubernetes: the namespace of the session's pod (default: the client's or the
    /// kubeconfig context's).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Opens the session in `scope` (the MCP server's, whose end removes what is left).
    pub(crate) fn in_scope(mut self, scope: std::sync::Arc<crate::backend::Scope>) -> Self {
        self.scope = scope;
        self
    }

    pub async fn open(self) -> Result<Session, SessionError> {
        match self.backend {
            BackendKind::Native => self.open_native().await,
            BackendKind::Docker | BackendKind::Podman => self.open_docker().await,
            BackendKind::Kubernetes => self.open_kube().await,
        }
    }

    async fn open_native(self) -> Result<Session, SessionError> {
        if !self.libraries.is_empty() {
            return Err(SessionError::Libraries(self.libraries.clone()));
        }
        let tc = lang::probe_cached(self.lang).map_err(SessionError::Toolchain)?;
        let dir = RunDir::create()?;
        let workdir = dir.path.join("workdir");
        std::fs::create_dir_all(&workdir)?;
        if nix::unistd::geteuid().is_root() {
            let id = crate::sandbox::helper::UNPRIVILEGED_HOST_ID;
            std::os::unix::fs::chown(&workdir, Some(id), Some(id))?;
        }
        let plot_hook = match self.lang {
            Lang::Python => Some(crate::plots::write_hook(&dir.path)?),
            _ => None,
        };
        Ok(Session {
            b: self,
            inner: Inner::Native(NativeState {
                tc,
                dir: Some(dir),
                workdir,
                plot_hook,
            }),
            cancel: CancellationToken::new(),
        })
    }

    async fn open_docker(mut self) -> Result<Session, SessionError> {
        let kind = self.backend;
        let engine = match self.client.take() {
            Some(c) => docker::engine::from_client(c, kind, &self.scope).await,
            None => {
                let base = std::env::current_dir().unwrap_or_default();
                let ep = if kind == BackendKind::Podman {
                    docker::engine::Endpoint::resolve_podman(self.podman_socket.as_deref(), &base)
                        .map(|(e, _)| e)
                } else {
                    docker::engine::Endpoint::resolve(
                        self.docker_host.as_deref(),
                        self.tls.as_ref(),
                        &base,
                    )
                }
                .map_err(SessionError::Engine)?;
                docker::engine::connect(&self.scope, &ep, kind).await
            }
        }
        .map_err(SessionError::Engine)?;
        let base = match &self.dockerfile {
            Some(df) => {
                let df = std::path::absolute(df)?;
                engine
                    .build_dockerfile(&df, self.keep_template)
                    .await
                    .map_err(SessionError::Engine)?
            }
            None => {
                let image = self
                    .image
                    .clone()
                    .unwrap_or_else(|| lang::spec(self.lang).default_image.to_string());
                engine
                    .ensure_image(&image)
                    .await
                    .map_err(SessionError::Engine)?;
                image
            }
        };
        let cancel = CancellationToken::new();
        let libs = self.libraries.clone();
        let mut state = DockerState {
            engine,
            base,
            libs: vec![],
            container: None,
        };
        state.switch(&self, &libs, &cancel).await?;
        Ok(Session {
            b: self,
            inner: Inner::Docker(state),
            cancel,
        })
    }
}

impl SessionBuilder {
    async fn open_kube(mut self) -> Result<Session, SessionError> {
        if !self.libraries.is_empty() || self.dockerfile.is_some() {
            return Err(SessionError::Engine(
                "`libraries` and `dockerfile` are not supported on the kubernetes backend: use an image that has what the code needs (`image(...)`)".into(),
            ));
        }
        let cluster = match self.kube_client.take() {
            Some(c) => kubernetes::from_client(c, self.namespace.clone(), &self.scope),
            None => {
                let cfg = crate::spec::types::KubernetesConfig {
                    namespace: self.namespace.clone(),
                    ..Default::default()
                };
                let base = std::env::current_dir().unwrap_or_default();
                kubernetes::connect(&self.scope, Some(&cfg), &base)
                    .await
                    .map_err(SessionError::Engine)?
            }
        };
        let image = self
            .image
            .clone()
            .unwrap_or_else(|| lang::spec(self.lang).default_image.to_string());
        let name = sandbox_id();
        let owner = kubernetes::owner_labels(&cluster);
        let spec = kubernetes::pod::build(&kubernetes::pod::PodParams {
            name: &name,
            image: &image,
            limits: &self.limits,
            network: self.network,
            kind: "session",
            job_name: None,
            deadline_secs: None,
            owner: &owner,
            manifest: None,
        })
        .map_err(SessionError::Engine)?;
        let cancel = CancellationToken::new();
        let ns = cluster.namespace.clone();
        let pod = kubernetes::SandboxPod::start(
            cluster,
            &ns,
            spec,
            kubernetes::DEFAULT_START_TIMEOUT,
            &cancel,
        )
        .await
        .map_err(SessionError::Engine)?;
        Ok(Session {
            b: self,
            inner: Inner::Kube(Some(pod)),
            cancel,
        })
    }
}

struct NativeState {
    tc: HostToolchain,
    dir: Option<RunDir>,
    workdir: PathBuf,
    /// The plot hook's directory (python), bound read-only into every sandbox.
    plot_hook: Option<PathBuf>,
}

struct DockerState {
    engine: std::sync::Arc<docker::engine::Engine>,
    /// The image without libraries.
    base: String,
    /// Libraries installed in the current container's image.
    libs: Vec<String>,
    container: Option<docker::container::Container>,
}

impl DockerState {
    /// Moves the session to a container whose image has `libs` (a template built in the
    /// prepare phase); the workdir's files come along.
    async fn switch(
        &mut self,
        b: &SessionBuilder,
        libs: &[String],
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let image = if libs.is_empty() {
            self.base.clone()
        } else {
            docker::template(
                &self.engine,
                &self.base,
                b.lang,
                libs,
                &[],
                b.keep_template,
                cancel,
            )
            .await
            .map_err(|(message, log)| SessionError::Prepare {
                message,
                log: log.unwrap_or_default(),
            })?
        };
        let spec = docker::container::ContainerSpec {
            image,
            user: "0:0".into(),
            env: docker::base_env(b.lang, &b.env, true),
            limits: b.limits.clone(),
            network: b.network,
            hardened: true,
            cpu_seconds: None,
            kind: "session",
            name: crate::backend::native::sandbox_id(),
            maintenance_caps: false,
            agent: None,
            preload: None,
        };
        let mut next = docker::container::Container::start(self.engine.clone(), &spec)
            .await
            .map_err(SessionError::Engine)?;
        next.keep_on_timeout = true;
        if let Some(mut old) = self.container.take() {
            let files = old.get_tar(".", b.limits.disk, cancel).await;
            old.remove().await;
            let files = files.map_err(SessionError::Sandbox)?;
            next.put_tar(&files, cancel)
                .await
                .map_err(SessionError::Sandbox)?;
        }
        self.container = Some(next);
        self.libs = libs.to_vec();
        Ok(())
    }
}

enum Inner {
    Native(NativeState),
    Docker(DockerState),
    /// The session's pod (None once closed).
    Kube(Option<kubernetes::SandboxPod>),
}

/// A sandbox session (README, "Library API"): on `native`, every call runs in a fresh namespace sandbox
/// sharing a host workdir; on `docker`, one hardened container lives as long as the session.
pub struct Session {
    b: SessionBuilder,
    inner: Inner,
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
    /// language compiles, and runs it. On container backends, `libraries` not yet in the
    /// session's image are installed in the prepare phase (a template image; the workdir's
    /// files move to a container of it).
    pub async fn run(
        &mut self,
        code: &str,
        libraries: &[&str],
    ) -> Result<ExecOutput, SessionError> {
        self.run_live(code, libraries, None, None).await
    }

    /// Like [`Session::run`], with `stdin` as the program's standard input.
    pub async fn run_with_stdin(
        &mut self,
        code: &str,
        libraries: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<ExecOutput, SessionError> {
        self.run_live(code, libraries, stdin, None).await
    }

    /// Like [`Session::run`], handing the program's output to `on_output` as it is
    /// produced (see [`crate::stream`]); the buffered result, with the exact exit code,
    /// comes at the end. Only the run step streams: a failed compilation's output is in
    /// `compile_output`.
    pub async fn run_streaming(
        &mut self,
        code: &str,
        libraries: &[&str],
        mut on_output: impl FnMut(OutputChunk),
    ) -> Result<ExecOutput, SessionError> {
        let (tx, rx) = crate::stream::channel();
        drive(
            self.run_live(code, libraries, None, Some(tx)),
            rx,
            &mut on_output,
        )
        .await
    }

    /// Like [`Session::run_streaming`], as a stream of [`OutputEvent`]s ending with
    /// `Done`.
    pub fn run_stream<'a>(
        &'a mut self,
        code: &'a str,
        libraries: &'a [&'a str],
    ) -> impl Stream<Item = OutputEvent> + Unpin + 'a {
        let (tx, rx) = crate::stream::channel();
        events(self.run_live(code, libraries, None, Some(tx)), rx)
    }

    async fn run_live(
        &mut self,
        code: &str,
        libraries: &[&str],
        stdin: Option<&[u8]>,
        live: Option<ChunkSender>,
    ) -> Result<ExecOutput, SessionError> {
        let libs: Vec<String> = libraries.iter().map(|s| s.to_string()).collect();
        for l in &libs {
            crate::plan::expand::check_library_name(l).map_err(|why| {
                SessionError::BadPath(l.clone(), format!("invalid library name: {why}"))
            })?;
        }
        let source = lang::source_file(self.b.lang, code);
        match &mut self.inner {
            Inner::Native(n) => {
                if !libs.is_empty() {
                    return Err(SessionError::Libraries(libs));
                }
                let mut f = open_beneath(&n.workdir, Path::new(&source), true)?;
                std::io::Write::write_all(&mut f, code.as_bytes())?;
                let steps = program_steps(
                    self.b.lang,
                    &n.tc,
                    &source,
                    code,
                    &self.b.limits,
                    self.b.timeout,
                    &[],
                );
                return self.exec(steps, stdin.map(<[u8]>::to_vec), live).await;
            }
            Inner::Docker(d) => {
                let missing: Vec<String> = libs
                    .iter()
                    .filter(|l| !d.libs.contains(l))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    let mut all = d.libs.clone();
                    all.extend(missing);
                    d.switch(&self.b, &all, &self.cancel).await?;
                }
            }
            Inner::Kube(_) => {
                if !libs.is_empty() {
                    return Err(SessionError::Engine(format!(
                        "libraries {libs:?}: not supported on the kubernetes backend (use an image that has them)"
                    )));
                }
            }
        }
        // Containers and pods: the code goes in as a tar stream, the steps exec in it.
        let tar = docker::tarball::build(&[(source.clone(), code.as_bytes().to_vec(), 0o644)])?;
        let cancel = self.cancel.clone();
        match &mut self.inner {
            Inner::Kube(_) => self.kube()?.put_tar(&tar, &cancel).await,
            _ => self.docker()?.put_tar(&tar, &cancel).await,
        }
        .map_err(SessionError::Sandbox)?;
        let steps = docker::steps(
            self.b.lang,
            &source,
            code,
            &self.b.limits,
            self.b.timeout,
            &[],
            true,
        );
        self.exec(steps, stdin.map(<[u8]>::to_vec), live).await
    }

    fn kube(&mut self) -> Result<&mut kubernetes::SandboxPod, SessionError> {
        match &mut self.inner {
            Inner::Kube(p) => p.as_mut().ok_or(SessionError::Closed),
            _ => Err(SessionError::Closed),
        }
    }

    fn docker(&mut self) -> Result<&mut docker::container::Container, SessionError> {
        match &mut self.inner {
            Inner::Docker(d) => d.container.as_mut().ok_or(SessionError::Closed),
            _ => Err(SessionError::Closed),
        }
    }

    fn run_step(&self, argv: Vec<String>) -> Step {
        Step {
            kind: StepKind::Run,
            argv,
            timeout_ms: self.b.timeout.as_millis() as u64,
            capture_cap: self.b.limits.output,
            as_root: false,
            limited: true,
            cpu_seconds: Some(self.b.limits.cpu_rlimit_secs(self.b.timeout)),
        }
    }

    /// Runs a shell command (`/bin/sh -c`) in the workdir.
    pub async fn execute_command(&mut self, command: &str) -> Result<ExecOutput, SessionError> {
        let step = self.run_step(vec!["/bin/sh".into(), "-c".into(), command.into()]);
        self.exec(vec![step], None, None).await
    }

    /// Like [`Session::execute_command`], handing the output to `on_output` as it is
    /// produced; the buffered result, with the exact exit code, comes at the end.
    pub async fn execute_command_streaming(
        &mut self,
        command: &str,
        on_output: impl FnMut(OutputChunk),
    ) -> Result<ExecOutput, SessionError> {
        self.execute_command_with_stdin_streaming(command, None, on_output)
            .await
    }

    /// Like [`Session::execute_command_streaming`], with `stdin` (None: empty).
    pub async fn execute_command_with_stdin_streaming(
        &mut self,
        command: &str,
        stdin: Option<&[u8]>,
        mut on_output: impl FnMut(OutputChunk),
    ) -> Result<ExecOutput, SessionError> {
        let step = self.run_step(vec!["/bin/sh".into(), "-c".into(), command.into()]);
        let (tx, rx) = crate::stream::channel();
        let stdin = stdin.map(<[u8]>::to_vec);
        drive(self.exec(vec![step], stdin, Some(tx)), rx, &mut on_output).await
    }

    /// Like [`Session::execute_command_streaming`], as a stream of [`OutputEvent`]s
    /// ending with `Done`.
    pub fn execute_command_stream<'a>(
        &'a mut self,
        command: &str,
        stdin: Option<&[u8]>,
    ) -> impl Stream<Item = OutputEvent> + Unpin + 'a {
        let step = self.run_step(vec!["/bin/sh".into(), "-c".into(), command.into()]);
        let (tx, rx) = crate::stream::channel();
        let stdin = stdin.map(<[u8]>::to_vec);
        events(self.exec(vec![step], stdin, Some(tx)), rx)
    }

    /// Like `execute_command`, with `stdin`.
    pub async fn execute_command_with_stdin(
        &mut self,
        command: &str,
        stdin: &[u8],
    ) -> Result<ExecOutput, SessionError> {
        let step = self.run_step(vec!["/bin/sh".into(), "-c".into(), command.into()]);
        self.exec(vec![step], Some(stdin.to_vec()), None).await
    }

    /// Copies a host file into the sandbox (`dest` under `/sandbox`).
    pub async fn copy_to_runtime(
        &mut self,
        src: impl AsRef<Path>,
        dest: &str,
    ) -> Result<(), SessionError> {
        let rel = sandbox_rel(dest)?;
        match &self.inner {
            Inner::Native(n) => {
                let mut from = std::fs::File::open(src.as_ref())?;
                let mut to = open_beneath(&n.workdir, &rel, true)?;
                std::io::copy(&mut from, &mut to)?;
                Ok(())
            }
            Inner::Docker(_) | Inner::Kube(_) => {
                use std::os::unix::fs::PermissionsExt;
                let data = std::fs::read(src.as_ref())?;
                let mode = std::fs::metadata(src.as_ref())?.permissions().mode() & 0o755 | 0o644;
                let tar = docker::tarball::build(&[(rel.display().to_string(), data, mode)])?;
                let cancel = self.cancel.clone();
                if let Inner::Kube(_) = self.inner {
                    return self
                        .kube()?
                        .put_tar(&tar, &cancel)
                        .await
                        .map_err(SessionError::Sandbox);
                }
                self.docker()?
                    .put_tar(&tar, &cancel)
                    .await
                    .map_err(SessionError::Sandbox)
            }
        }
    }

    /// Copies a file out of the sandbox (`src` under `/sandbox`) to a host path. Symlinks
    /// planted in the sandbox are never followed.
    pub async fn copy_from_runtime(
        &mut self,
        src: &str,
        dest: impl AsRef<Path>,
    ) -> Result<(), SessionError> {
        let rel = sandbox_rel(src)?;
        if let Some(p) = dest.as_ref().parent() {
            if !p.as_os_str().is_empty() {
                std::fs::create_dir_all(p)?;
            }
        }
        match &self.inner {
            Inner::Native(n) => {
                let mut from = open_beneath(&n.workdir, &rel, false)?;
                let mut to = std::fs::File::create(dest.as_ref())?;
                std::io::copy(&mut from, &mut to)?;
                Ok(())
            }
            Inner::Docker(_) | Inner::Kube(_) => {
                let cap = self.b.limits.disk;
                let cancel = self.cancel.clone();
                let shown = rel.display().to_string();
                let tar = if let Inner::Kube(_) = self.inner {
                    self.kube()?.get_tar(&shown, cap, &cancel).await
                } else {
                    self.docker()?.get_tar(&shown, cap, &cancel).await
                }
                .map_err(|e| SessionError::BadPath(src.into(), e))?;
                let tmp = tempfile::tempdir()?;
                let x = docker::tarball::extract(tar.as_slice(), tmp.path(), cap)?;
                if let Some((_, why)) = x.refused.iter().find(|(p, _)| *p == shown) {
                    return Err(SessionError::BadPath(src.into(), why.clone()));
                }
                if !x.files.contains(&shown) {
                    return Err(SessionError::BadPath(
                        src.into(),
                        "not a regular file".into(),
                    ));
                }
                std::fs::copy(tmp.path().join(&rel), dest.as_ref())?;
                Ok(())
            }
        }
    }

    /// The figures python programs saved since the last call (matplotlib's `show()`, and
    /// figures left open at exit; see [`crate::plots`]), oldest first, at most
    /// [`crate::plots::MAX_PLOTS`]; they are removed from the workdir.
    pub async fn take_plots(&mut self) -> Result<Vec<crate::plots::Plot>, SessionError> {
        let cap = self.b.limits.disk;
        match &mut self.inner {
            Inner::Native(n) => {
                let plots = crate::plots::read_dir_safely(&n.workdir, cap)?;
                let dir = n.workdir.join(crate::plots::PLOTS_DIR);
                if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    std::fs::remove_dir_all(&dir)?;
                }
                Ok(plots)
            }
            Inner::Docker(_) | Inner::Kube(_) => {
                let cancel = self.cancel.clone();
                let dir = crate::plots::PLOTS_DIR;
                let kube = matches!(self.inner, Inner::Kube(_));
                let tar = if kube {
                    self.kube()?.get_tar(dir, cap, &cancel).await
                } else {
                    self.docker()?.get_tar(dir, cap, &cancel).await
                };
                // No plots (or a link the sandbox planted, which is never followed).
                let Ok(tar) = tar else { return Ok(vec![]) };
                let tmp = tempfile::tempdir()?;
                docker::tarball::extract(tar.as_slice(), tmp.path(), cap)?;
                let plots = crate::plots::read_dir_safely(tmp.path(), cap)?;
                let rm: Vec<String> = ["rm", "-rf", "--", dir]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                let t = Duration::from_secs(30);
                if kube {
                    self.kube()?.exec(&rm, None, 1 << 12, t, &cancel).await
                } else {
                    let user = Some(docker::SANDBOX_USER);
                    self.docker()?
                        .exec(&rm, user, &[], None, 1 << 12, t, &cancel)
                        .await
                }
                .map_err(SessionError::Sandbox)?;
                Ok(plots)
            }
        }
    }

    /// Ends the session and removes everything it created.
    pub async fn close(mut self) -> Result<(), SessionError> {
        self.cancel.cancel();
        match &mut self.inner {
            Inner::Native(n) => {
                n.dir.take();
            }
            Inner::Docker(d) => {
                if let Some(c) = d.container.take() {
                    c.remove().await;
                }
                d.engine.finish_session().await;
            }
            Inner::Kube(p) => {
                if let Some(p) = p.take() {
                    p.delete().await;
                }
            }
        }
        Ok(())
    }

    async fn exec(
        &mut self,
        steps: Vec<Step>,
        stdin: Option<Vec<u8>>,
        live: Option<ChunkSender>,
    ) -> Result<ExecOutput, SessionError> {
        if matches!(self.inner, Inner::Docker(_)) {
            return self.exec_docker(steps, stdin, live).await;
        }
        if matches!(self.inner, Inner::Kube(_)) {
            // The pod exec is not streamed yet: the chunks come when the command ends.
            let out = self.exec_kube(steps, stdin).await?;
            if let Some(tx) = live.filter(|_| out.compile_output.is_none()) {
                for (stream, text) in [
                    (crate::stream::StdStream::Stdout, &out.stdout),
                    (crate::stream::StdStream::Stderr, &out.stderr),
                ] {
                    if !text.is_empty() {
                        let data = text.as_bytes().to_vec();
                        let _ = tx.send(OutputChunk { stream, data }).await;
                    }
                }
            }
            return Ok(out);
        }
        let Inner::Native(n) = &self.inner else {
            return Err(SessionError::Closed);
        };
        let dir = n.dir.as_ref().ok_or(SessionError::Closed)?;
        let id = sandbox_id();
        let sdir = dir.path.join(&id);
        let l = &self.b.limits;
        let limits = crate::backend::native::sandbox_limits(self.b.lang, l);
        let mut cfg = crate::backend::native::sandbox_config(
            &id,
            &sdir,
            self.b.lang,
            &n.tc,
            &self.b.env,
            limits,
            self.b.network,
        )?;
        cfg.persistent_workdir = Some(n.workdir.clone());
        cfg.steps = steps;
        if let Some(hook) = &n.plot_hook {
            crate::backend::native::add_plot_hook(&mut cfg, hook.clone());
        }
        let o = match live {
            Some(tx) => host::run_streaming(&cfg, stdin, l.output, tx, &self.cancel).await,
            None => host::run(&cfg, stdin, l.output, &self.cancel).await,
        }?;
        let _ = std::fs::remove_dir_all(&sdir);
        let mut out = ExecOutput {
            duration: o.wall,
            ..Default::default()
        };
        if o.output_limit_hit {
            out.stdout = String::from_utf8_lossy(&o.stdout).into_owned();
            out.stderr = String::from_utf8_lossy(&o.stderr).into_owned();
            out.output_truncated = true;
            return Ok(out);
        }
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

    async fn exec_docker(
        &mut self,
        steps: Vec<Step>,
        stdin: Option<Vec<u8>>,
        live: Option<ChunkSender>,
    ) -> Result<ExecOutput, SessionError> {
        let cancel = self.cancel.clone();
        let c = self.docker()?;
        let mut out = ExecOutput::default();
        for step in steps {
            let input = match step.kind {
                StepKind::Run => Some(stdin.as_deref().unwrap_or(&[])),
                _ => None,
            };
            let r = c
                .exec_live(
                    &step.argv,
                    Some(docker::SANDBOX_USER),
                    &[],
                    input,
                    step.capture_cap,
                    Duration::from_millis(step.timeout_ms),
                    &cancel,
                    docker::container::Live {
                        tx: live.clone().filter(|_| step.kind == StepKind::Run),
                        ..Default::default()
                    },
                )
                .await
                .map_err(SessionError::Sandbox)?;
            if r.cancelled {
                return Err(SessionError::Closed);
            }
            if !fold_step(&mut out, step.kind, &r) {
                return Ok(out);
            }
        }
        Ok(out)
    }
}

impl Session {
    async fn exec_kube(
        &mut self,
        steps: Vec<Step>,
        stdin: Option<Vec<u8>>,
    ) -> Result<ExecOutput, SessionError> {
        let cancel = self.cancel.clone();
        let env = docker::base_env(self.b.lang, &self.b.env, true);
        let (lang, open_files) = (self.b.lang, self.b.limits.open_files);
        let p = self.kube()?;
        let mut out = ExecOutput::default();
        for step in steps {
            let input = match step.kind {
                StepKind::Run => Some(stdin.as_deref().unwrap_or(&[])),
                _ => None,
            };
            let argv = kubernetes::step_argv(lang, &step, &env, open_files, None);
            let r = p
                .exec(
                    &argv,
                    input,
                    step.capture_cap,
                    Duration::from_millis(step.timeout_ms),
                    &cancel,
                )
                .await
                .map_err(SessionError::Sandbox)?;
            if r.cancelled {
                return Err(SessionError::Closed);
            }
            if !fold_step(&mut out, step.kind, &r) {
                return Ok(out);
            }
        }
        Ok(out)
    }
}

/// Takes one container or pod step's result into the session's output (the last step's
/// status and output win). False when the steps stop here: a compile step failed, and
/// its merged output becomes `compile_output` and `stderr`.
fn fold_step(out: &mut ExecOutput, kind: StepKind, r: &docker::container::ExecResult) -> bool {
    out.duration += r.duration;
    out.exit_code = r.exit_code.map(|c| c as i32);
    out.timed_out = r.timed_out;
    out.signal = docker::signal_of_exit(out.exit_code);
    out.stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    out.stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    out.output_truncated = r.output_limit_hit || r.stdout_truncated || r.stderr_truncated;
    if kind == StepKind::Compile && (r.exit_code != Some(0) || r.timed_out) {
        let mut all = r.stdout.clone();
        all.extend_from_slice(&r.stderr);
        let text = String::from_utf8_lossy(&all).into_owned();
        out.compile_output = Some(text.clone());
        out.stderr = text;
        out.stdout.clear();
        return false;
    }
    true
}

/// Runs `fut` while handing the chunks it sends to `on_output` (in the caller's task).
async fn drive(
    fut: impl Future<Output = Result<ExecOutput, SessionError>>,
    mut rx: tokio::sync::mpsc::Receiver<OutputChunk>,
    on_output: &mut impl FnMut(OutputChunk),
) -> Result<ExecOutput, SessionError> {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            Some(c) = rx.recv() => on_output(c),
            r = &mut fut => {
                // Every sender is gone by now: what is left in the channel is the tail.
                while let Ok(c) = rx.try_recv() {
                    on_output(c);
                }
                return r;
            }
        }
    }
}

enum EventState<F> {
    Running(
        std::pin::Pin<Box<F>>,
        tokio::sync::mpsc::Receiver<OutputChunk>,
    ),
    Draining(
        tokio::sync::mpsc::Receiver<OutputChunk>,
        Result<ExecOutput, SessionError>,
    ),
    Finished,
}

/// `fut` and the chunks it sends, as a stream of events ending with `Done`.
fn events<'a>(
    fut: impl Future<Output = Result<ExecOutput, SessionError>> + 'a,
    rx: tokio::sync::mpsc::Receiver<OutputChunk>,
) -> impl Stream<Item = OutputEvent> + Unpin + 'a {
    Box::pin(futures_util::stream::unfold(
        EventState::Running(Box::pin(fut), rx),
        |state| async move {
            match state {
                EventState::Running(mut fut, mut rx) => {
                    tokio::select! {
                        biased;
                        Some(c) = rx.recv() => Some((OutputEvent::Output(c), EventState::Running(fut, rx))),
                        r = &mut fut => match rx.try_recv() {
                            Ok(c) => Some((OutputEvent::Output(c), EventState::Draining(rx, r))),
                            Err(_) => Some((OutputEvent::Done(r), EventState::Finished)),
                        },
                    }
                }
                EventState::Draining(mut rx, r) => match rx.try_recv() {
                    Ok(c) => Some((OutputEvent::Output(c), EventState::Draining(rx, r))),
                    Err(_) => Some((OutputEvent::Done(r), EventState::Finished)),
                },
                EventState::Finished => None,
            }
        },
    ))
}

impl Drop for Session {
    fn drop(&mut self) {
        // Kubernetes: a session dropped without `close` deletes its pod in the background.
        if let Inner::Kube(p) = &mut self.inner {
            if let (Some(p), Ok(h)) = (p.take(), tokio::runtime::Handle::try_current()) {
                h.spawn(async move { p.delete().await });
            }
        }
        // A session dropped without `close`: its container goes away in the background
        // (the container stops by itself as soon as its keep-alive stream closes).
        if let Inner::Docker(d) = &mut self.inner {
            d.container.take();
        }
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
