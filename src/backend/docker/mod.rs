//! The Docker backend (bollard): one fresh hardened container per job, started once; the
//! program and input files go in as a tar stream, each step is an exec, the files to check
//! and the artifacts come out as a tar stream. Images: present → used, absent → pulled,
//! `dockerfile` → built by content hash; `libraries` and `setup` run in the prepare phase
//! (root, network) and are committed as a template image keyed by its inputs.
//!
//! The results are mapped onto the same step results as the native sandbox's, so a job
//! gets the same statuses and messages on every backend.

pub mod agent;
pub mod container;
pub mod engine;
pub mod frame;
pub mod pool;
pub mod seccomp;

use super::container_job::{
    base_env, collected, input_tar, interrupted, job_steps, report_of, step_result, ExecResult,
};
use super::{error_report, prepare_error_report, step_shell, Error, RunCtx};
use crate::lang::{self};
use crate::plan::PlannedJob;
use crate::report::model::{JobReport, Phase};
use crate::sandbox::host::Outcome;
use crate::sandbox::proto::{LimitEvents, Msg};
use crate::sandbox::StepKind;
use crate::spec::types::{BackendKind, Lang, Preload};
/// Inline inputs travel as standard, padded base64 (in an environment variable).
pub(crate) use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use container::{Container, ContainerSpec};
use engine::{Endpoint, Engine};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The sandbox user of the run phase ([`tarball::SANDBOX_UID`]).
pub const SANDBOX_USER: &str = "60999:60999";

/// How long the prepare phase (libraries, setup) may take.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(900);

/// The endpoint a job's settings (or the environment) name.
pub fn endpoint(job: &PlannedJob) -> Result<Endpoint, Error> {
    let base = job.file.parent().unwrap_or(Path::new("."));
    if job.backend == BackendKind::Podman {
        let p = job.backends.podman.as_ref();
        return Endpoint::resolve_podman(p.and_then(|p| p.socket.as_deref()), base).map(|(e, _)| e);
    }
    let d = job.backends.docker.as_ref();
    Endpoint::resolve(
        d.and_then(|d| d.host.as_deref()),
        d.and_then(|d| d.tls.as_ref()),
        base,
    )
}

/// The prepare phase's install command for `libraries` (names validated at plan time),
/// and the image changes it needs: the language table's ([`lang::LangSpec::container_install`]).
fn install_script(lang: Lang, libs: &[String]) -> Result<(String, Vec<String>), String> {
    let Some(install) = &lang::spec(lang).container_install else {
        return Err(format!(
            "`libraries` are not supported for {lang} on container backends (no package manager of its own): install them with `setup` commands or in a Dockerfile (`dockerfile = \"...\"`)"
        ));
    };
    Ok((
        install.command.replace("{libs}", &libs.join(" ")),
        install.changes.iter().map(|c| c.to_string()).collect(),
    ))
}

/// Package-manager settings of the host that the prepare phase sees (proxies, index):
/// read from the machine at run time, passed to the prepare exec only (never committed).
fn prepare_env() -> Vec<(String, String)> {
    const KEYS: &[&str] = &[
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
        "PIP_TRUSTED_HOST",
        "npm_config_registry",
        "NPM_CONFIG_REGISTRY",
    ];
    std::env::vars()
        .filter(|(k, _)| KEYS.contains(&k.as_str()) || super::PROXY_VARS.contains(&k.as_str()))
        .collect()
}

fn short_hash(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A unique container name owned by this runner.
fn container_name() -> String {
    super::native::sandbox_id()
}

/// The image before libraries: `dockerfile` built, or `image` (the language's default
/// when none) present or pulled.
pub async fn base_image(
    engine: &Engine,
    dockerfile: Option<&Path>,
    image: Option<&str>,
    lang: Lang,
    keep: bool,
) -> Result<String, Error> {
    if let Some(df) = dockerfile {
        return engine.build_dockerfile(df, keep).await;
    }
    let image = image.unwrap_or(lang::spec(lang).default_image).to_string();
    engine.ensure_image(&image).await?;
    Ok(image)
}

/// The image a job runs in: its Dockerfile built, or its image (default per language)
/// present or pulled, then the template with its libraries and setup.
pub async fn job_image(
    engine: &Arc<Engine>,
    job: &PlannedJob,
    cancel: &CancellationToken,
) -> Result<String, Error> {
    let base = base_image(
        engine,
        job.dockerfile.as_deref(),
        job.image.as_deref(),
        job.lang,
        job.keep_template,
    )
    .await?;
    if job.libraries.is_empty() && job.setup.is_empty() {
        return Ok(base);
    }
    template(
        engine,
        &base,
        job.lang,
        &job.libraries,
        &job.setup,
        job.keep_template,
        cancel,
    )
    .await
}

/// The prepare phase: `libraries` and `setup` as root with network in a container of `base`,
/// committed as `llm-sandbox/template:<hash of its inputs>` (kept) or a run-private tag
/// (removed at the end of the run). An existing template is reused.
pub async fn template(
    engine: &Arc<Engine>,
    base: &str,
    lang: Lang,
    libraries: &[String],
    setup: &[String],
    keep: bool,
    cancel: &CancellationToken,
) -> Result<String, Error> {
    let base_id = engine
        .image_id(base)
        .await
        .unwrap_or_else(|| base.to_string());
    let mut parts = vec![base_id.as_str(), lang.as_str(), "libs"];
    parts.extend(libraries.iter().map(String::as_str));
    parts.push("setup");
    parts.extend(setup.iter().map(String::as_str));
    let key = short_hash(&parts);
    let kept = format!("llm-sandbox/template:{key}");
    let private = format!("llm-sandbox/template:{key}-{}", crate::owner::prefix());
    let lock = engine.key_lock(&kept);
    let _g = lock.lock().await;
    if engine.image_id(&kept).await.is_some() {
        return Ok(kept);
    }
    if !keep && engine.image_id(&private).await.is_some() {
        return Ok(private);
    }
    let tag = if keep { kept } else { private };
    let mut script = String::from("set -e\n");
    let mut changes = vec![];
    if !libraries.is_empty() {
        let (cmd, ch) = install_script(lang, libraries)
            .map_err(|message| Error::Prepare { message, log: None })?;
        script.push_str(&cmd);
        script.push('\n');
        changes = ch;
    }
    for s in setup {
        script.push_str(s);
        script.push('\n');
    }
    let spec = ContainerSpec {
        image: base.to_string(),
        user: "0:0".into(),
        env: vec![],
        limits: Default::default(),
        network: true,
        hardened: false,
        cpu_seconds: None,
        kind: "prepare",
        name: container_name(),
        maintenance_caps: false,
        agent: None,
        preload: None,
    };
    let mut c = Container::start(engine.clone(), &spec).await?;
    let argv: Vec<String> = vec!["/bin/sh".into(), "-c".into(), script];
    let r = c
        .exec(
            &argv,
            Some("0:0"),
            &prepare_env(),
            None,
            1 << 20,
            PREPARE_TIMEOUT,
            cancel,
        )
        .await;
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            c.remove().await;
            return Err(e);
        }
    };
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    if r.exit_code != Some(0) {
        c.remove().await;
        let why = if r.cancelled {
            "interrupted".to_string()
        } else if r.timed_out {
            format!(
                "timed out after {}",
                crate::spec::units::format_duration(PREPARE_TIMEOUT)
            )
        } else {
            format!("exit code {}", r.exit_code.unwrap_or(-1))
        };
        let what = match (libraries.is_empty(), setup.is_empty()) {
            (false, true) => format!("installing the libraries {libraries:?}"),
            (true, false) => "the setup commands".to_string(),
            _ => format!("installing the libraries {libraries:?} or the setup commands"),
        };
        return Err(Error::Prepare {
            message: format!("{what} failed in the prepare phase ({why})"),
            log: Some(log),
        });
    }
    let (repo, t) = tag.rsplit_once(':').unwrap_or((tag.as_str(), "latest"));
    let mut all_changes = changes;
    // One label per instruction: Podman reads `LABEL a=1 b=2` as a = "1 b=2".
    all_changes.extend([
        format!("LABEL {}=template", engine::LABEL_KIND),
        format!("LABEL {}={keep}", engine::LABEL_KEEP),
        format!("LABEL {}={key}", engine::LABEL_KEY),
    ]);
    let joined = all_changes.join("\n");
    let opts = bollard::query_parameters::CommitContainerOptionsBuilder::default()
        .container(&c.id)
        .repo(repo)
        .tag(t)
        .pause(true)
        .changes(&joined)
        .build();
    let committed = engine
        .docker
        .commit_container(opts, bollard::models::ContainerConfig::default())
        .await;
    c.remove().await;
    committed.map_err(|e| {
        Error::Engine(format!(
            "cannot commit the template image: {}",
            crate::backend::error::error_chain(&e)
        ))
    })?;
    if !keep {
        engine.built_by_run(&tag);
    }
    Ok(tag)
}

/// The container of a job's run phase.
pub fn run_spec(job: &PlannedJob, image: &str, env: Vec<(String, String)>) -> ContainerSpec {
    ContainerSpec {
        image: image.to_string(),
        user: "0:0".into(),
        env,
        limits: job.limits.clone(),
        network: job.network,
        hardened: true,
        cpu_seconds: Some(crate::plan::job::wall_cpu_limit_secs(job.timeout)),
        kind: "job",
        name: container_name(),
        maintenance_caps: false,
        agent: None,
        preload: None,
    }
}

impl crate::backend::container_job::ContainerSandbox for Container {
    fn name(&self) -> &str {
        &self.id
    }

    fn is_dead(&self) -> bool {
        self.dead
    }

    fn reuse(&mut self) -> &mut crate::backend::container_job::Reuse {
        &mut self.reuse
    }

    fn enforcement(&self) -> &'static str {
        "container cgroup"
    }

    fn inline_inputs_max(&self) -> usize {
        step_shell::INLINE_INPUT_MAX
    }

    async fn exec(
        &mut self,
        argv: &[String],
        stdin: Option<&[u8]>,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, Error> {
        Container::exec(
            self,
            argv,
            Some(SANDBOX_USER),
            &[],
            stdin,
            cap,
            timeout,
            cancel,
        )
        .await
    }

    async fn remove(self) {
        Container::remove(self).await
    }

    /// Small inputs ride along with the first step (one exec less per job), base64 in its
    /// environment, unpacked by a shell prologue; an image where that fails (no `base64`)
    /// gets them through their own exec.
    async fn run_step(
        &mut self,
        step: &crate::sandbox::Step,
        io: crate::backend::container_job::StepIo<'_>,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, Error> {
        let timeout = Duration::from_millis(step.timeout_ms);
        let measure = io.measure;
        let cap = step
            .capture_cap
            .saturating_add(measure.map_or(0, |_| step_shell::TRAILER_MAX));
        let shell = |inline_input| step_shell::StepShell {
            inline_input,
            cpu_seconds: step.cpu_seconds,
            measure,
            ..Default::default()
        };
        // Streamed steps get their inputs in first (an inline attempt might have to be
        // repeated, and what streamed cannot be).
        let streamed = io.live.tx.is_some() || io.live.stdin.is_some();
        match io.inputs.take() {
            Some(tar) if streamed => self.put_tar(&tar, cancel).await?,
            Some(tar) => {
                let mut with = io.env.to_vec();
                with.push((step_shell::INLINE_VAR.into(), B64.encode(&tar)));
                let r = Container::exec(
                    self,
                    &shell(true).argv(&step.argv),
                    Some(SANDBOX_USER),
                    &with,
                    io.stdin,
                    cap,
                    timeout,
                    cancel,
                )
                .await?;
                if r.exit_code != Some(step_shell::UNPACK_FAILED)
                    || !String::from_utf8_lossy(&r.stderr).contains(step_shell::UNPACK_MARK)
                {
                    return Ok(r);
                }
                tracing::debug!("inline input failed; copying it in with its own exec");
                self.put_tar(&tar, cancel).await?;
            }
            None => {}
        }
        self.exec_live(
            &shell(false).argv(&step.argv),
            Some(SANDBOX_USER),
            io.env,
            io.stdin,
            cap,
            timeout,
            cancel,
            io.live,
        )
        .await
    }

    /// As root to clean a warm container (its processes are the sandbox user's); when the
    /// exec cannot start (the job left its pids limit exhausted), once more with room made
    /// (the container is then not reused: its limit changed).
    async fn end_exec(
        &mut self,
        argv: &[String],
        clean: bool,
        cap: u64,
        cancel: &CancellationToken,
    ) -> Result<ExecResult, Error> {
        let timeout = crate::backend::container_job::END_TIMEOUT;
        let user = if clean { "0:0" } else { SANDBOX_USER };
        let r = self
            .exec(argv, Some(user), &[], None, cap, timeout, cancel)
            .await;
        if r.is_ok() || self.dead {
            return r;
        }
        let up = bollard::models::ContainerUpdateBody {
            pids_limit: Some(self.pids_limit + 64),
            ..Default::default()
        };
        let _ = self.engine.docker.update_container(&self.id, up).await;
        self.reuse.uses = u32::MAX;
        self.exec(argv, Some(user), &[], None, cap, timeout, cancel)
            .await
    }
}

/// What makes two jobs share a prepared environment (for de-duplication): their image and
/// everything that tells their warm pools apart (see [`pool::Key`]: limits, network,
/// preload).
pub fn prepare_key(job: &PlannedJob) -> String {
    format!(
        "{}|{:?}|{:?}|{:?}|{}|{:?}|{:?}|{}|{}|{}|{}|{}|{}|{:?}",
        job.backend,
        endpoint(job).ok(),
        job.dockerfile,
        job.image,
        job.lang,
        job.libraries,
        job.setup,
        job.limits.memory,
        job.limits.pids,
        job.limits.disk,
        job.limits.cpus,
        job.limits.open_files,
        job.network,
        preload_of(job)
    )
}

/// Prepares a job's environment ahead of the job: its image (pull, build, template) and,
/// for warm containers, the pool's first containers (no more than the `demand`, the jobs
/// announced for it).
pub async fn prepare_ahead(job: &PlannedJob, demand: Option<usize>, ctx: &RunCtx) {
    let Ok(ep) = endpoint(job) else { return };
    let Ok(engine) = engine::connect(&ctx.scope, &ep, job.backend).await else {
        return;
    };
    let Ok(image) = job_image(&engine, job, &ctx.cancel).await else {
        return;
    };
    if warm_for(job, ctx) {
        let (spec, _) = pool_spec(job, &image, &engine);
        let pool = pool::pool(&ctx.scope, &engine, &spec);
        pool.expect(demand);
        pool.prewarm(ctx.parallelism);
    }
}

/// The binary to run as the warm containers' agent: this llm-sandbox, bind-mounted
/// read-only (local engines only; `LLM_SANDBOX_DOCKER_AGENT=0` turns it off and jobs use
/// one exec per step instead).
/// Looked up once per process (it is asked for every warm job).
fn agent_binary() -> Option<std::path::PathBuf> {
    static BIN: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if std::env::var("LLM_SANDBOX_DOCKER_AGENT").as_deref() == Ok("0") {
            return None;
        }
        let p = crate::sandbox::host::helper_path();
        let p = std::fs::canonicalize(&p).ok()?;
        p.is_file().then_some(p)
    })
    .clone()
}

/// The job's `warm`, `recycle_after` and `preload` settings of its engine
/// (`backends.docker` or `backends.podman`).
fn warm_settings(job: &PlannedJob) -> (Option<bool>, Option<u32>, Option<Preload>) {
    match job.backend {
        BackendKind::Podman => job
            .backends
            .podman
            .as_ref()
            .map(|p| (p.warm, p.recycle_after, p.preload.clone())),
        _ => job
            .backends
            .docker
            .as_ref()
            .map(|d| (d.warm, d.recycle_after, d.preload.clone())),
    }
    .unwrap_or_default()
}

/// Whether the job asks for preloaded Python on its engine, and the modules it imports ahead.
fn preload_of(job: &PlannedJob) -> Option<Vec<String>> {
    let p = warm_settings(job).2;
    crate::sandbox::pyembed::asked(job.lang, p.as_ref().map(Preload::on))
        .then(|| p.map(|p| p.modules()).unwrap_or_default())
}

fn warm_for(job: &PlannedJob, ctx: &RunCtx) -> bool {
    !ctx.fresh_containers && warm_settings(job).0.unwrap_or(true)
}

/// The container of a warm pool for `job`, and its recycling count.
fn warm_spec(job: &PlannedJob, image: &str) -> (ContainerSpec, u32) {
    let mut spec = run_spec(job, image, base_env(Lang::Bash, &[], false));
    // Per job, not per container: the CPU-time limit is set by the run step's wrapper.
    spec.cpu_seconds = None;
    spec.kind = "warm";
    spec.maintenance_caps = true;
    spec.agent = agent_binary();
    if let Some(modules) = preload_of(job) {
        // What a Python job's steps start with (its own `env` may differ: such a job then
        // starts python3 itself).
        spec.preload = Some(agent::AgentPreload {
            env: base_env(job.lang, &[], false),
            modules,
        });
    }
    let recycle = warm_settings(job)
        .1
        .unwrap_or(crate::backend::pool::DEFAULT_RECYCLE_AFTER)
        .max(1);
    (spec, recycle)
}

/// Runs one job (in a warm container, or a fresh one). With `wire`, its run step's stdin
/// and stdout are connected through it: the agent streams them as live pieces
/// ([`agent::LivePiece`]), a container without the agent through its exec.
pub async fn run_job(
    job: &PlannedJob,
    ctx: &RunCtx,
    kind: BackendKind,
    wire: Option<crate::backend::Wire>,
) -> JobReport {
    let started = Instant::now();
    let ep = match endpoint(job) {
        Ok(e) => e,
        Err(e) => return error_report(job, Phase::Prepare, e),
    };
    let engine = match engine::connect(&ctx.scope, &ep, kind).await {
        Ok(e) => e,
        Err(e) => return error_report(job, Phase::Prepare, e),
    };
    let image = match job_image(&engine, job, &ctx.cancel).await {
        Ok(i) => i,
        Err(e) => return prepare_error_report(job, e),
    };
    let mut report = if warm_for(job, ctx) {
        run_warm(&engine, job, ctx, &image, wire).await
    } else {
        run_in(&engine, job, ctx, &image, wire).await
    };
    report.image = Some(
        job.dockerfile
            .as_ref()
            .map(|_| image.clone())
            .or_else(|| job.image.clone())
            .unwrap_or_else(|| lang::spec(job.lang).default_image.to_string()),
    );
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

async fn run_in(
    engine: &Arc<Engine>,
    job: &PlannedJob,
    ctx: &RunCtx,
    image: &str,
    wire: Option<crate::backend::Wire>,
) -> JobReport {
    let env = base_env(job.lang, &job.env, crate::plots::wanted(job));
    let mut c = match Container::start(engine.clone(), &run_spec(job, image, env)).await {
        Ok(c) => c,
        Err(e) => return error_report(job, Phase::Prepare, e),
    };
    let report =
        crate::backend::container_job::run(&mut c, job, ctx, image, false, &mut false, wire).await;
    c.remove().await;
    report
}

/// The container of `job`'s warm pool on `engine` and its recycling count: with the agent
/// on a local engine (it is bind-mounted from this machine).
fn pool_spec(job: &PlannedJob, image: &str, engine: &Engine) -> (ContainerSpec, u32) {
    let (mut spec, recycle) = warm_spec(job, image);
    if !engine.local {
        spec.agent = None;
        spec.preload = None;
    }
    (spec, recycle)
}

/// A job in a warm container of the pool of its prepared environment.
async fn run_warm(
    engine: &Arc<Engine>,
    job: &PlannedJob,
    ctx: &RunCtx,
    image: &str,
    wire: Option<crate::backend::Wire>,
) -> JobReport {
    let (spec, recycle) = pool_spec(job, image, engine);
    let pool = pool::pool(&ctx.scope, engine, &spec);
    let (mut c, lease) = match pool.acquire(ctx.parallelism, recycle, &ctx.cancel).await {
        Ok(c) => c,
        Err(Error::Interrupted) => return interrupted(job),
        Err(e) => return error_report(job, Phase::Prepare, e),
    };
    let mut reusable = false;
    let report = if c.has_agent() {
        run_steps_agent(&mut c, job, ctx, &mut reusable, wire).await
    } else {
        crate::backend::container_job::run(&mut c, job, ctx, image, true, &mut reusable, wire).await
    };
    pool.release(c, lease, reusable && !ctx.cancel.is_cancelled())
        .await;
    report
}

/// A job through the container's agent: one request, one answer, no exec (with `wire`,
/// the run step's traffic between them).
async fn run_steps_agent(
    c: &mut Container,
    job: &PlannedJob,
    ctx: &RunCtx,
    reusable: &mut bool,
    wire: Option<crate::backend::Wire>,
) -> JobReport {
    c.reuse.uses = c.reuse.uses.saturating_add(1);
    let started = Instant::now();
    let source = lang::source_file(job.lang, &job.code);
    let tar = match input_tar(job, &source) {
        Ok(t) => t,
        Err(e) => return prepare_error_report(job, e),
    };
    let plots = crate::plots::wanted(job);
    let env = base_env(job.lang, &job.env, plots);
    let steps = job_steps(job, &source, plots);
    let kinds: Vec<StepKind> = steps.iter().map(|s| s.kind).collect();
    let total: u64 = steps.iter().map(|s| s.timeout_ms).sum();
    let request = agent::AgentJob {
        inputs: tar,
        steps: steps
            .iter()
            .map(|s| agent::AgentStep {
                argv: s.argv.clone(),
                env: env.clone(),
                stdin: match (s.kind, &job.stdin) {
                    (StepKind::Run, Some(x)) => x.as_bytes().to_vec(),
                    _ => vec![],
                },
                timeout_ms: s.timeout_ms,
                cap: s.capture_cap,
                cpu_seconds: s.cpu_seconds,
                open_files: job.limits.open_files,
                must_succeed: s.kind != StepKind::Run,
                live: s.kind == StepKind::Run && wire.is_some(),
            })
            .collect(),
        collect_globs: crate::plots::artifact_globs(job),
        collect_paths: job.expect.files.iter().map(|f| f.path.clone()).collect(),
        collect_cap: job.limits.disk,
        preload: preload_of(job).is_some(),
        preload_modules: preload_of(job).unwrap_or_default(),
    };
    let answer = c
        .agent_job(
            request,
            Duration::from_millis(total) + Duration::from_secs(30),
            &ctx.cancel,
            wire.map(|w| (w, Duration::from_millis(total))),
        )
        .await;
    if ctx.cancel.is_cancelled() {
        return interrupted(job);
    }
    let mut a = match answer {
        Ok(a) => a,
        Err(e) => return error_report(job, Phase::Run, e),
    };
    if let Some(e) = &a.error {
        if a.steps.is_empty() {
            return error_report(job, Phase::Prepare, e.clone());
        }
    }
    let mut outcome = Outcome::default();
    let mut msgs = Vec::new();
    for (kind, s) in kinds.iter().zip(a.steps.iter_mut()) {
        let r = ExecResult {
            exit_code: s
                .exit_code
                .map(i64::from)
                .or(s.signal.map(|g| 128 + i64::from(g))),
            stdout: std::mem::take(&mut s.stdout),
            stderr: std::mem::take(&mut s.stderr),
            stdout_truncated: s.stdout_truncated,
            stderr_truncated: s.stderr_truncated,
            output_limit_hit: s.output_limit_hit,
            timed_out: s.timed_out,
            cancelled: false,
            duration: Duration::from_millis(s.duration_ms),
        };
        let mut sr = step_result(*kind, &r, job.limits.output);
        sr.exit_code = s.exit_code;
        sr.signal = s.signal;
        sr.usage = s.usage;
        sr.spawn_error = s
            .spawn_error
            .clone()
            .filter(|_| *kind != StepKind::Run || s.exit_code.is_none());
        if *kind == StepKind::Run {
            outcome.stdout = r.stdout;
            outcome.stderr = r.stderr;
            outcome.stdout_truncated = r.stdout_truncated;
            outcome.stderr_truncated = r.stderr_truncated;
            outcome.output_limit_hit = r.output_limit_hit;
        }
        msgs.push(Msg::Step(sr));
    }
    let ev = LimitEvents {
        enforcement: "container cgroup".into(),
        oom_killed: a.oom_kills > c.reuse.counters.oom_kills,
        pids_limit_hit: a.pids_max_hits > c.reuse.counters.pids_max,
        ..Default::default()
    };
    c.reuse.counters.oom_kills = a.oom_kills;
    c.reuse.counters.pids_max = a.pids_max_hits;
    msgs.push(Msg::Limits(ev));
    if let Some(t) = a.tar.as_deref() {
        match collected(job, ctx, &c.id, t) {
            Ok((mut msg, dir)) => {
                if let Msg::Collected { refused, .. } = &mut msg {
                    refused.extend(a.refused.iter().cloned());
                }
                msgs.push(msg);
                outcome.out_dir = Some(dir);
            }
            Err(e) => return error_report(job, Phase::Run, e),
        }
    }
    if let Some(e) = &a.error {
        // The steps ran, what came after did not (packing the files).
        msgs.push(Msg::Error {
            message: e.clone(),
            hint: None,
        });
    }
    // A job that timed out or flooded its output takes its container down with it, as one
    // without an agent does (README, "Docker"): only a proven-clean container of a job
    // that ended by itself is reused.
    *reusable =
        a.clean && a.error.is_none() && !a.steps.iter().any(|s| s.timed_out || s.output_limit_hit);
    if let Some(why) = &a.unclean {
        tracing::debug!("warm container not clean: {why}");
    }
    outcome.msgs = msgs;
    outcome.wall = started.elapsed();
    report_of(job, ctx, &outcome)
}

/// The end of a run: removes what this run left on every engine it used.
pub async fn finish(scope: &crate::backend::Scope) {
    pool::drain_all(scope).await;
    for e in engine::connected(scope) {
        e.finish_run().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs whose warm pools differ never share a prepared environment (nor the count of
    /// jobs announced to it): open files and preload each tell them apart.
    #[test]
    fn jobs_of_different_warm_pools_have_different_prepare_keys() {
        let mut job = PlannedJob::adhoc(
            Lang::Python,
            "print(1)".into(),
            vec![],
            Duration::from_secs(5),
            false,
        );
        job.backend = BackendKind::Docker;
        let key = prepare_key(&job);
        assert_eq!(key, prepare_key(&job.clone()));
        let mut files = job.clone();
        files.limits.open_files += 1;
        let mut no_preload = job.clone();
        no_preload.backends = std::sync::Arc::new(crate::spec::types::BackendsConfig {
            docker: Some(crate::spec::types::DockerConfig {
                preload: Some(Preload::Switch(false)),
                ..Default::default()
            }),
            ..Default::default()
        });
        for other in [files, no_preload] {
            assert_ne!(key, prepare_key(&other), "{other:?}");
        }
    }
}
