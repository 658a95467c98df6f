//! Backends: where a job's sandbox lives. `native` (Linux namespaces, the default) is
//! built in; the container backends plug in here.

pub mod cases;
pub mod clean;
pub mod container_job;
pub mod docker;
pub mod error;
pub mod kubernetes;
pub mod native;
pub mod pool;
pub mod step_shell;
pub mod tarball;

pub use error::Error;

use crate::plan::PlannedJob;
use crate::report::model::{JobReport, Phase, Status};
use crate::spec::types::BackendKind;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// What one run, one [`crate::Session`], one `llm-sandbox exec` or one MCP server owns of
/// the backends: the engines it connected (and the images it built), its warm pools, the
/// clusters it used and their pod pools. Two scopes in one process share none of it, and
/// the end of one ([`Scope::finish`]) removes only what it made: its containers and pods
/// carry its id as a label (README, "Architecture").
pub struct Scope {
    /// Unique in this process, and among processes (it begins with the owner prefix).
    pub id: String,
    pub(crate) engines: std::sync::Mutex<Vec<docker::engine::EngineSlot>>,
    pub(crate) docker_pools: std::sync::Mutex<Vec<docker::pool::KeyedPool>>,
    pub(crate) clusters: tokio::sync::Mutex<Vec<std::sync::Arc<kubernetes::Cluster>>>,
    pub(crate) pod_pools: std::sync::Mutex<Vec<kubernetes::KeyedPodPool>>,
    /// The native sandbox servers.
    pub(crate) servers: crate::sandbox::host::Servers,
    /// Checker programs built in this scope (each once: README, "Test cases").
    pub(crate) checkers: cases::BuiltCheckers,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope").field("id", &self.id).finish()
    }
}

impl Scope {
    pub fn new() -> std::sync::Arc<Scope> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::sync::Arc::new(Scope {
            id: format!("{}-s{n}", crate::owner::prefix()),
            engines: Default::default(),
            docker_pools: Default::default(),
            clusters: Default::default(),
            pod_pools: Default::default(),
            servers: Default::default(),
            checkers: Default::default(),
        })
    }

    /// The end of this scope: every backend removes what it made in it
    /// ([`Backend::finish`]).
    pub async fn finish(&self) {
        // Container engines and clusters first, then the native sandbox servers.
        for kind in [
            BackendKind::Docker,
            BackendKind::Podman,
            BackendKind::Kubernetes,
            BackendKind::Native,
        ] {
            of(kind).finish(self).await;
        }
    }
}

/// What every backend needs from the runner.
#[derive(Debug, Clone)]
pub struct RunCtx {
    /// What this run owns of the backends (engines, pools, clusters).
    pub scope: std::sync::Arc<Scope>,
    /// This run's private, owner-labelled temporary directory.
    pub run_dir: PathBuf,
    /// Where artifacts go: `<artifacts_root>/<job name>/…`.
    pub artifacts_root: PathBuf,
    pub cancel: CancellationToken,
    /// One new container per job on container backends (no warm pool).
    pub fresh_containers: bool,
    /// How many jobs run at once (warm pools start that many containers ahead).
    pub parallelism: usize,
    /// The backend's job slots (one held by every running job): a job with test cases runs
    /// more of its cases at once on slots no other job is using.
    pub slots: Option<std::sync::Arc<tokio::sync::Semaphore>>,
}

/// What the runner needs of a backend: one implementation per backend, found through
/// [`of`] (the one place a [`BackendKind`] is turned into code to run). A new backend is
/// one more implementation and one more arm there.
pub trait Backend: Sync {
    /// Runs one job and returns its report (never panics, never errs: what goes wrong
    /// becomes status `error` with a message that says how to fix it). With `wire`, the run
    /// step's stdin and stdout are connected through it (an interactor and its program:
    /// README, "Test cases").
    fn run_job<'a>(
        &'a self,
        job: &'a PlannedJob,
        ctx: &'a RunCtx,
        wire: Option<Wire>,
    ) -> BoxFuture<'a, JobReport>;

    /// The environment `job` needs made before it runs (an image, a template, warm
    /// sandboxes), as a key (jobs with the same key share it); None when there is nothing
    /// to prepare ahead.
    fn prepare_key(&self, _job: &PlannedJob) -> Option<String> {
        None
    }

    /// Makes that environment (failures are left to the jobs to report). `demand`: how many
    /// jobs will use it, one sandbox each (None: some may use more, e.g. test cases).
    fn prepare_ahead<'a>(
        &'a self,
        _job: &'a PlannedJob,
        _demand: Option<usize>,
        _ctx: &'a RunCtx,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    /// The end of a scope (a run, a session): removes what it left (sandboxes, images
    /// built without `keep_template`; native: the idle sandbox servers).
    fn finish<'a>(&'a self, scope: &'a Scope) -> BoxFuture<'a, ()>;

    /// `llm-sandbox doctor`: whether this backend works here (what it found), or why not
    /// and how to set it up ([`Error::Unavailable`]). Changes nothing.
    fn doctor(&self) -> BoxFuture<'_, Result<String, Error>>;
}

/// A program's standard input and output connected to another program's, both running
/// (an interactor and the program of a test case: README, "Test cases"): its run step's
/// stdin is fed from `stdin` as chunks come (the channel's end closes it), and its stdout
/// and stderr go to `output` as they come (and into its report, up to the output limit).
/// An empty chunk on `output` is the end of its stream: every process holding it closed it
/// (or ended), so the other program can be given an end of input while this one still
/// runs. The native sandbox and the warm containers' agent tell it; steps run through an
/// engine's exec (fresh containers, containers without the agent, Kubernetes pods) cannot
/// (the exec's stream ends only with its process), and there the end of `output` is the
/// only end.
pub struct Wire {
    pub stdin: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub output: crate::stream::ChunkSender,
}

/// A boxed future of a [`Backend`] method.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

struct Native;
struct Container(BackendKind);
struct Kubernetes;

impl Backend for Native {
    fn run_job<'a>(
        &'a self,
        job: &'a PlannedJob,
        ctx: &'a RunCtx,
        wire: Option<Wire>,
    ) -> BoxFuture<'a, JobReport> {
        Box::pin(native::run_job(job, ctx, wire))
    }
    fn finish<'a>(&'a self, scope: &'a Scope) -> BoxFuture<'a, ()> {
        Box::pin(scope.servers.shutdown())
    }
    fn doctor(&self) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(native::doctor())
    }
}

/// Docker and Podman: one implementation, the engine told apart by the kind.
impl Backend for Container {
    fn run_job<'a>(
        &'a self,
        job: &'a PlannedJob,
        ctx: &'a RunCtx,
        wire: Option<Wire>,
    ) -> BoxFuture<'a, JobReport> {
        Box::pin(docker::run_job(job, ctx, self.0, wire))
    }
    fn prepare_key(&self, job: &PlannedJob) -> Option<String> {
        Some(docker::prepare_key(job))
    }
    fn prepare_ahead<'a>(
        &'a self,
        job: &'a PlannedJob,
        demand: Option<usize>,
        ctx: &'a RunCtx,
    ) -> BoxFuture<'a, ()> {
        Box::pin(docker::prepare_ahead(job, demand, ctx))
    }
    fn finish<'a>(&'a self, scope: &'a Scope) -> BoxFuture<'a, ()> {
        // Docker's and Podman's pools and engines end together.
        if self.0 == BackendKind::Docker {
            Box::pin(docker::finish(scope))
        } else {
            Box::pin(async {})
        }
    }
    /// The engine a job without `backends` settings would use, and its default images.
    fn doctor(&self) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(docker::engine::doctor(self.0))
    }
}

impl Backend for Kubernetes {
    fn run_job<'a>(
        &'a self,
        job: &'a PlannedJob,
        ctx: &'a RunCtx,
        wire: Option<Wire>,
    ) -> BoxFuture<'a, JobReport> {
        Box::pin(kubernetes::run_job(job, ctx, wire))
    }
    fn prepare_key(&self, job: &PlannedJob) -> Option<String> {
        Some(kubernetes::prepare_key(job))
    }
    fn prepare_ahead<'a>(
        &'a self,
        job: &'a PlannedJob,
        demand: Option<usize>,
        ctx: &'a RunCtx,
    ) -> BoxFuture<'a, ()> {
        Box::pin(kubernetes::prepare_ahead(job, demand, ctx))
    }
    fn finish<'a>(&'a self, scope: &'a Scope) -> BoxFuture<'a, ()> {
        Box::pin(kubernetes::finish(scope))
    }
    /// The cluster of $KUBECONFIG, ~/.kube/config or in-cluster, and its version.
    fn doctor(&self) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(async {
            kubernetes::probe().await?.ok_or_else(|| {
                Error::Unavailable("no cluster configured ($KUBECONFIG, ~/.kube/config, in-cluster, or `backends.kubernetes.kubeconfig` in a job file)".into())
            })
        })
    }
}

/// The backend of a kind: the registry.
pub fn of(kind: BackendKind) -> &'static dyn Backend {
    match kind {
        BackendKind::Native => &Native,
        BackendKind::Docker => &Container(BackendKind::Docker),
        BackendKind::Podman => &Container(BackendKind::Podman),
        BackendKind::Kubernetes => &Kubernetes,
    }
}

/// Runs one job on its backend and returns its report.
pub async fn run_job(job: &PlannedJob, ctx: &RunCtx) -> JobReport {
    let backend = of(job.backend);
    if !job.cases.is_empty() {
        // Built once, then a run per case: the same on every backend.
        return cases::run(backend, job, ctx).await;
    }
    backend.run_job(job, ctx, None).await
}

/// Starts preparing the environments of jobs ([`Backend::prepare_ahead`]: image pulls and
/// builds, templates, warm containers) in the background, once per distinct environment,
/// so that it overlaps with jobs already running. Failures are left to the jobs to report.
/// `parallelism` says how many jobs of a backend run at once (warm pools start that many);
/// each environment is told how many jobs will use it, unless a job may use it more than
/// once (test cases; `retries` above 0).
pub fn prepare_ahead<'a>(
    jobs: impl IntoIterator<Item = &'a PlannedJob>,
    ctx: &RunCtx,
    parallelism: impl Fn(BackendKind) -> usize,
    retries: u32,
) -> tokio::task::JoinSet<()> {
    // Per environment: its first job, and how many jobs use it (None: no bound).
    let mut envs: Vec<(String, &PlannedJob, Option<usize>)> = Vec::new();
    for job in jobs.into_iter().filter(|j| j.skip.is_none()) {
        let Some(key) = of(job.backend).prepare_key(job) else {
            continue;
        };
        let once = (job.cases.is_empty() && retries == 0).then_some(1);
        match envs.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, _, n)) => *n = n.zip(once).map(|(a, b)| a + b),
            None => envs.push((key, job, once)),
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for (_, job, demand) in envs {
        let backend = of(job.backend);
        let ctx = RunCtx {
            parallelism: parallelism(job.backend),
            ..ctx.clone()
        };
        let job = job.clone();
        set.spawn(async move { backend.prepare_ahead(&job, demand, &ctx).await });
    }
    set
}

/// What one ad hoc program produced (`Session::run`, `execute_command`, `llm-sandbox
/// exec`): the result type of the backends' one-off runs, re-exported by `session`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    /// None when the program was killed by a signal or timed out.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub duration: std::time::Duration,
    /// The compile step's output when compilation failed.
    pub compile_output: Option<String>,
    /// stdout or stderr went past the output limit (`limits.output`, per stream): what
    /// came before it is kept (streaming: exactly the chunks sent), and the program was
    /// stopped.
    pub output_truncated: bool,
    /// CPU time of the program's processes, in milliseconds (README, "Resource figures");
    /// None where it was not measured (a streamed call on a container or a pod).
    pub cpu_ms: Option<u64>,
    /// Peak resident memory of the program's largest process, in bytes; native only.
    pub peak_memory_bytes: Option<u64>,
}

/// The host's proxy settings, which every backend's prepare phase (library installs) sees.
pub const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// The environment of a sandbox's steps on every backend: fixed variables, the language's,
/// then the job's own (which win); `path` is PATH when the backend sets it. Nothing of
/// the runner's environment leaks in.
pub fn sandbox_env(
    lang: crate::spec::types::Lang,
    job_env: &[(String, String)],
    path: Option<String>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        path.map(|p| ("PATH".to_string(), p)).into_iter().collect();
    for (k, v) in [
        ("HOME", "/sandbox"),
        ("TMPDIR", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("USER", "sandbox"),
        ("LOGNAME", "sandbox"),
        ("SHELL", "/bin/sh"),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    for (k, v) in crate::lang::spec(lang).env {
        env.push((k.to_string(), v.to_string()));
    }
    for (k, v) in job_env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// A report for a job that could not run.
/// The report of a job whose environment could not be made: status `error` in the
/// prepare phase, the build's log (when there is one) as its stderr.
pub fn prepare_error_report(job: &PlannedJob, e: Error) -> JobReport {
    match e {
        Error::Prepare { message, log } => {
            let mut r = error_report(job, Phase::Prepare, message);
            r.stderr = log.unwrap_or_default();
            r
        }
        e => error_report(job, Phase::Prepare, e),
    }
}

pub fn error_report(job: &PlannedJob, phase: Phase, message: impl std::fmt::Display) -> JobReport {
    let message = message.to_string();
    JobReport {
        name: job.name.clone(),
        file: job.file.display().to_string(),
        line: job.line,
        lang: job.lang,
        backend: job.backend,
        image: job.image.clone(),
        status: Status::Error,
        phase: Some(phase),
        exit_code: None,
        duration_ms: 0,
        stdout: String::new(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        message: Some(message),
        checks: vec![],
        artifacts: vec![],
        group: job.group.clone(),
        tags: job.tags.clone(),
        signal: None,
        cpu_ms: None,
        peak_memory_bytes: None,
        cases_total: None,
        cases_passed: None,
        cases: vec![],
        flaky: false,
        attempts: None,
    }
}

/// A file-system-safe directory name for a job's artifacts.
pub fn sanitize_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.as_str() {
        "" | "." | ".." => "_".to_string(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sanitize() {
        assert_eq!(super::sanitize_name("a/b c"), "a_b_c");
        assert_eq!(super::sanitize_name(".."), "_");
        assert_eq!(super::sanitize_name("x-1.py"), "x-1.py");
    }
}
