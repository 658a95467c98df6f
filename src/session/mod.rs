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

mod container;
mod native;

use crate::lang;
use crate::plan::job::ResolvedLimits;
use crate::sandbox::{Step, StepKind};
use crate::spec::types::{BackendKind, Lang};
use crate::stream::{ChunkSender, OutputChunk};
use futures_util::Stream;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
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
    /// Its cancel token was cancelled while a program ran: the program was stopped.
    #[error("interrupted: the program was stopped")]
    Interrupted,
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

/// A backend's error, with its kind kept.
impl From<crate::backend::Error> for SessionError {
    fn from(e: crate::backend::Error) -> Self {
        use crate::backend::Error as E;
        match e {
            E::Unavailable(m) | E::Engine(m) => SessionError::Engine(m),
            E::Prepare { message, log } => SessionError::Prepare {
                message,
                log: log.unwrap_or_default(),
            },
            E::Sandbox(m) | E::Protocol(m) => SessionError::Sandbox(m),
            E::Interrupted => SessionError::Interrupted,
        }
    }
}

/// How [`exec_job`] ended.
#[derive(Debug, Default)]
pub struct ExecEnd {
    /// Exit code (a signal N shows as 128+N, with `signal` set), timeout, compile output;
    /// `stdout`/`stderr` stay empty (the output went to the chunk channel).
    pub output: ExecOutput,
    /// Interrupted (`cancel`): the sandbox was stopped and removed.
    pub cancelled: bool,
}

/// `llm-sandbox exec` on a container engine or a cluster: `job`'s program (an ad hoc job,
/// [`crate::plan::PlannedJob::adhoc`]) in a session of its own, compiled and run with its
/// arguments; the run step's output goes to `out` only (no output cap, as on native), as
/// it comes where the sandbox streams (containers) and when it ends where it does not
/// (pods). `stdin` is forwarded as it comes (pods: read to its end first). Everything the
/// session made is removed in every case, `cancel` included.
pub async fn exec_job(
    job: &crate::plan::PlannedJob,
    stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    out: ChunkSender,
    cancel: &CancellationToken,
) -> Result<ExecEnd, SessionError> {
    let mut b = Session::builder()
        .lang(job.lang)
        .backend(job.backend)
        .timeout(job.timeout)
        .network(job.network)
        .limits(ResolvedLimits {
            output: u64::MAX,
            ..job.limits.clone()
        });
    b.image = job.image.clone();
    b.dockerfile = job.dockerfile.clone();
    b.libraries = job.libraries.clone();
    b.keep_template = job.keep_template;
    b.env = job.env.clone();
    if let Some(d) = &job.backends.docker {
        b.docker_host = d.host.clone();
        b.tls = d.tls.clone();
    }
    if let Some(p) = &job.backends.podman {
        b.podman_socket = p.socket.clone();
    }
    let interrupted = || {
        Ok(ExecEnd {
            cancelled: true,
            ..Default::default()
        })
    };
    let mut s = tokio::select! {
        s = b.open() => s?,
        _ = cancel.cancelled() => return interrupted(),
    };
    let stop = s.cancel_token();
    let relay = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            stop.cancel();
        })
    };
    let stdin = stdin.map_or(Input::None, Input::Stream);
    let r = s
        .run_program(&job.code, &job.args, &[], stdin, Some(out), true)
        .await;
    relay.abort();
    let _ = s.close().await;
    match r {
        Ok(output) => Ok(ExecEnd {
            output,
            cancelled: false,
        }),
        Err(SessionError::Interrupted) => interrupted(),
        Err(_) if cancel.is_cancelled() => interrupted(),
        Err(e) => Err(e),
    }
}

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

    pub async fn open(mut self) -> Result<Session, SessionError> {
        let cancel = CancellationToken::new();
        let inner: Box<dyn SessionSandbox> = match self.backend {
            BackendKind::Native => Box::new(native::NativeSession::open(&self)?),
            BackendKind::Docker | BackendKind::Podman => {
                Box::new(container::open_docker(&mut self, &cancel).await?)
            }
            BackendKind::Kubernetes => Box::new(container::open_kube(&mut self, &cancel).await?),
        };
        Ok(Session {
            b: self,
            inner,
            cancel,
        })
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, SessionError>> + Send + 'a>>;

/// A program's standard input.
pub(crate) enum Input {
    None,
    Bytes(Vec<u8>),
    /// As it comes (closing the channel closes it): forwarded live where the sandbox's
    /// execs stream, else read to its end first.
    Stream(tokio::sync::mpsc::Receiver<Vec<u8>>),
}

impl Input {
    fn of(stdin: Option<&[u8]>) -> Input {
        stdin.map_or(Input::None, |b| Input::Bytes(b.to_vec()))
    }

    /// All of it.
    async fn all(self) -> Option<Vec<u8>> {
        match self {
            Input::None => None,
            Input::Bytes(b) => Some(b),
            Input::Stream(mut rx) => {
                let mut all = Vec::new();
                while let Some(chunk) = rx.recv().await {
                    all.extend_from_slice(&chunk);
                }
                Some(all)
            }
        }
    }
}

/// One backend's side of a session: `native` (a fresh sandbox per call over a kept host
/// workdir) or one container or pod ([`container::ContainerSession`], written once over
/// the job pipeline's [`crate::backend::container_job::ContainerSandbox`]). Everything
/// else of [`Session`] is the same on every backend.
trait SessionSandbox: Send {
    /// Puts `code` in the workdir as `source` (after installing the `libs` the sandbox lacks)
    /// and returns the steps that compile and run it with `args`.
    #[allow(clippy::too_many_arguments)]
    fn program<'a>(
        &'a mut self,
        b: &'a SessionBuilder,
        source: &'a str,
        code: &'a str,
        args: &'a [String],
        libs: &'a [String],
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, Vec<Step>>;
    /// Runs `steps` (the last one's status and output are the result; a failed compile
    /// step stops them). `live`: the run step's output as it comes; `discard`: then kept
    /// nowhere else.
    fn exec<'a>(
        &'a mut self,
        b: &'a SessionBuilder,
        steps: Vec<Step>,
        stdin: Input,
        live: Option<ChunkSender>,
        discard: bool,
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, ExecOutput>;
    /// Copies the host file `src` to `rel` under `/sandbox`.
    fn copy_in<'a>(
        &'a mut self,
        src: &'a Path,
        rel: &'a Path,
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, ()>;
    /// Copies the regular file `rel` under `/sandbox` (at most `cap` bytes; symlinks never
    /// followed) to the host path `dest`.
    fn copy_out<'a>(
        &'a mut self,
        rel: &'a Path,
        dest: &'a Path,
        cap: u64,
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, ()>;
    /// The plots saved so far, removed from the workdir.
    fn take_plots<'a>(
        &'a mut self,
        cap: u64,
        cancel: &'a CancellationToken,
    ) -> BoxFut<'a, Vec<crate::plots::Plot>>;
    /// Removes everything the session made.
    fn close(&mut self) -> BoxFut<'_, ()>;
    /// The session was dropped without `close`: what it made goes away in the background.
    fn abandon(&mut self);
}

/// A sandbox session (README, "Library API"): on `native`, every call runs in a fresh namespace sandbox
/// sharing a host workdir; on `docker`, one hardened container lives as long as the session.
pub struct Session {
    b: SessionBuilder,
    inner: Box<dyn SessionSandbox>,
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
        self.run_program(code, &[], &libs, Input::of(stdin), live, false)
            .await
    }

    /// Puts `code` in, then compiles and runs it with `args`.
    async fn run_program(
        &mut self,
        code: &str,
        args: &[String],
        libs: &[String],
        stdin: Input,
        live: Option<ChunkSender>,
        discard: bool,
    ) -> Result<ExecOutput, SessionError> {
        for l in libs {
            crate::plan::expand::check_library_name(l).map_err(|why| {
                SessionError::BadPath(l.clone(), format!("invalid library name: {why}"))
            })?;
        }
        let source = lang::source_file(self.b.lang, code);
        let steps = self
            .inner
            .program(&self.b, &source, code, args, libs, &self.cancel)
            .await?;
        self.inner
            .exec(&self.b, steps, stdin, live, discard, &self.cancel)
            .await
    }

    async fn exec(
        &mut self,
        steps: Vec<Step>,
        stdin: Option<Vec<u8>>,
        live: Option<ChunkSender>,
    ) -> Result<ExecOutput, SessionError> {
        let stdin = stdin.map_or(Input::None, Input::Bytes);
        self.inner
            .exec(&self.b, steps, stdin, live, false, &self.cancel)
            .await
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
        self.inner.copy_in(src.as_ref(), &rel, &self.cancel).await
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
        let cap = self.b.limits.disk;
        self.inner
            .copy_out(&rel, dest.as_ref(), cap, &self.cancel)
            .await
            .map_err(|e| match e {
                SessionError::BadPath(_, why) => SessionError::BadPath(src.into(), why),
                e => e,
            })
    }

    /// The figures python programs saved since the last call (matplotlib's `show()`, and
    /// figures left open at exit; see [`crate::plots`]), oldest first, at most
    /// [`crate::plots::MAX_PLOTS`]; they are removed from the workdir.
    pub async fn take_plots(&mut self) -> Result<Vec<crate::plots::Plot>, SessionError> {
        let cap = self.b.limits.disk;
        self.inner.take_plots(cap, &self.cancel).await
    }

    /// Ends the session and removes everything it created.
    pub async fn close(mut self) -> Result<(), SessionError> {
        self.cancel.cancel();
        let r = self.inner.close().await;
        // The scope's native sandbox servers, unless another session shares the scope
        // (the MCP server's sessions).
        if std::sync::Arc::strong_count(&self.b.scope) == 1 {
            self.b.scope.servers.shutdown().await;
        }
        r
    }
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
        // Dropped without `close`: a container stops as soon as its keep-alive stream
        // closes, a pod is deleted in the background, a native workdir is removed.
        self.inner.abandon();
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
