//! One job in a sandbox of the container kind, written once: a Docker or Podman container
//! (without the agent) or a Kubernetes pod. The files go in as a tar, each step (compile,
//! run) is an exec, the end of the job is one exec of [`super::clean::SCRIPT`] (kill what is
//! left, read the cgroup's counters, pack the files to copy out, and for a warm sandbox
//! clean it and prove it clean), the files come out as a tar; the report is made from what
//! happened, as on every other backend. The backends provide the primitives
//! ([`ContainerSandbox`]).

use super::clean;
use super::native::{copy_artifacts, to_report};
use super::tarball;
use super::{error_report, step_shell, Error, RunCtx};
use crate::lang::{self, HostToolchain};
use crate::plan::PlannedJob;
use crate::report::model::{JobReport, Phase, Status};
use crate::sandbox::host::Outcome;
use crate::sandbox::proto::{LimitEvents, Msg, StepResult};
use crate::sandbox::{Step, StepKind};
use crate::spec::types::Lang;
use crate::stream::{ChunkSender, StdStream};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What a warm sandbox keeps between jobs, the same for containers and pods.
#[derive(Debug, Default)]
pub struct Reuse {
    /// Jobs run in it so far.
    pub uses: u32,
    /// The cgroup's counters after the previous job (OOM kills, pids-limit hits, memory
    /// peak), so that each job sees only its own.
    pub counters: clean::Counters,
    /// Its writable places' roots as made, for [`clean::proven`] (warm sandboxes).
    pub fresh: Option<Vec<clean::Root>>,
}

/// How one step's program is started and fed: the job's language and environment, its
/// open-files limit, its standard input, the job's files (when this step is to put them
/// in: see [`ContainerSandbox::inline_inputs_max`]; taken when it did), whether its figures
/// are to be measured, and what travels live.
pub struct StepIo<'a> {
    pub lang: Lang,
    pub env: &'a [(String, String)],
    pub open_files: u64,
    /// None: empty.
    pub stdin: Option<&'a [u8]>,
    pub inputs: &'a mut Option<Vec<u8>>,
    /// The step's figures are to be appended to its stderr (the exec captures up to
    /// [`step_shell::TRAILER_MAX`] more of it).
    pub measure: Option<&'a step_shell::Measure>,
    /// Output as it comes, stdin as it comes.
    pub live: Live,
}

/// What the job pipeline and the library's sessions need of a container or a pod: the
/// primitives (exec, remove), written once per backend; copying files in and out is
/// written here, once, on top of them.
pub trait ContainerSandbox: Send + Sized {
    /// Its name (messages, the folder of the files it gives back).
    fn name(&self) -> &str;
    /// It was killed (timeout, output flood, cancel): nothing more runs in it.
    fn is_dead(&self) -> bool;
    /// What it keeps between jobs.
    fn reuse(&mut self) -> &mut Reuse;
    /// How its limits are enforced, for the report (`container cgroup`, `pod cgroup`).
    fn enforcement(&self) -> &'static str;
    /// Inputs up to this size (a tar) may travel with the first step ([`Self::run_step`]);
    /// larger ones are put in first ([`Self::put_tar`]).
    fn inline_inputs_max(&self) -> usize {
        0
    }
    /// Runs `argv` as the sandbox user in `/sandbox`, as it is (no step shell): stdin from
    /// `stdin`, each stream captured up to `cap` bytes. Past the cap, past `timeout` or on
    /// `cancel` its processes are killed. `Err` when it cannot run at all.
    fn exec(
        &mut self,
        argv: &[String],
        stdin: Option<&[u8]>,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<ExecResult, Error>> + Send;
    /// Runs one step as the sandbox user with the job's environment and limits, behind
    /// the [`step_shell::StepShell`] prologue.
    fn run_step(
        &mut self,
        step: &Step,
        io: StepIo<'_>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<ExecResult, Error>> + Send;
    /// Runs [`clean::SCRIPT`] (`argv`) at the end of a job (as root to `clean` a warm
    /// container, where that is how its user is set).
    fn end_exec(
        &mut self,
        argv: &[String],
        clean: bool,
        cap: u64,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<ExecResult, Error>> + Send;
    /// Removes it, and whatever still runs in it.
    fn remove(self) -> impl Future<Output = ()> + Send;

    /// Unpacks a tar into `/sandbox` (as the sandbox user).
    fn put_tar(
        &mut self,
        tar: &[u8],
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async move {
            let argv = tarball::untar_argv();
            let r = self
                .exec(&argv, Some(tar), 1 << 16, TAR_TIMEOUT, cancel)
                .await?;
            if r.cancelled {
                return Err(Error::Interrupted);
            }
            if r.exit_code != Some(0) {
                return Err(Error::Sandbox(format!(
                    "copying the files into {} failed (tar: exit {:?}): {}",
                    self.name(),
                    r.exit_code,
                    String::from_utf8_lossy(&r.stderr).trim()
                )));
            }
            Ok(())
        }
    }

    /// A tar of `path` (relative to `/sandbox`; symlinks stored as links, never followed,
    /// and refused as components of `path`), its files at most `cap` bytes.
    fn get_tar(
        &mut self,
        path: &str,
        cap: u64,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Vec<u8>, Error>> + Send {
        async move {
            let argv = tarball::tar_argv(path);
            // Room for the tar's own headers.
            let room = cap.saturating_add(1 << 20);
            let r = self.exec(&argv, None, room, TAR_TIMEOUT, cancel).await?;
            if r.cancelled {
                return Err(Error::Interrupted);
            }
            if r.output_limit_hit {
                return Err(Error::Sandbox(format!(
                    "larger than {}",
                    crate::spec::units::format_size(cap)
                )));
            }
            if r.exit_code != Some(0) {
                return Err(Error::Sandbox(format!(
                    "tar: exit {:?}: {}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stderr).trim()
                )));
            }
            Ok(r.stdout)
        }
    }
}

/// How long copying files in or out may take.
const TAR_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `job` in `s` and makes its report. With `warm`, the sandbox is cleaned afterwards
/// and `reusable` says whether that was proven. `image` names the image in messages. With
/// `wire`, the run step's stdin and stdout are connected through it ([`super::Wire`]).
pub async fn run<S: ContainerSandbox>(
    s: &mut S,
    job: &PlannedJob,
    ctx: &RunCtx,
    image: &str,
    warm: bool,
    reusable: &mut bool,
    mut wire: Option<super::Wire>,
) -> JobReport {
    s.reuse().uses = s.reuse().uses.saturating_add(1);
    let cancel = &ctx.cancel;
    let started = Instant::now();
    let source = lang::source_file(job.lang, &job.code);
    let tar = match input_tar(job, &source) {
        Ok(t) => t,
        Err(e) => return super::prepare_error_report(job, e),
    };
    let mut inputs = None;
    if tar.len() <= s.inline_inputs_max() {
        inputs = Some(tar);
    } else if let Err(e) = s.put_tar(&tar, cancel).await {
        if e == Error::Interrupted || cancel.is_cancelled() {
            return interrupted(job);
        }
        return error_report(job, Phase::Prepare, e.to_string());
    }
    let plots = crate::plots::wanted(job);
    let env = base_env(job.lang, &job.env, plots);
    let mut msgs = Vec::new();
    let mut outcome = Outcome::default();
    let mut last_run: Option<ExecResult> = None;
    for step in job_steps(job, &source, plots) {
        let run = step.kind == StepKind::Run;
        let measure = run.then(step_shell::Measure::new);
        let io = StepIo {
            lang: job.lang,
            env: &env,
            open_files: job.limits.open_files,
            stdin: run.then(|| job.stdin.as_deref().unwrap_or("").as_bytes()),
            inputs: &mut inputs,
            measure: measure.as_ref(),
            live: match if run { wire.take() } else { None } {
                Some(w) => Live {
                    tx: Some(w.output),
                    discard: false,
                    stdin: Some(w.stdin),
                },
                None => Live::default(),
            },
        };
        let mut r = match s.run_step(&step, io, cancel).await {
            Ok(r) => r,
            Err(Error::Interrupted) => return interrupted(job),
            Err(_) if cancel.is_cancelled() => return interrupted(job),
            Err(e) => return error_report(job, phase_of(step.kind), e.to_string()),
        };
        if r.cancelled {
            return interrupted(job);
        }
        let usage = measure.and_then(|m| m.take(&mut r.stderr));
        cap_again(&mut r, step.capture_cap);
        let mut sr = step_result(step.kind, &r, step.capture_cap);
        sr.usage = usage;
        sr.spawn_error = spawn_error(&step, &r, image);
        let ok = r.exit_code == Some(0) && !r.timed_out && !r.output_limit_hit;
        msgs.push(Msg::Step(sr));
        if run {
            outcome.stdout_truncated = r.stdout_truncated;
            outcome.stderr_truncated = r.stderr_truncated;
            outcome.output_limit_hit = r.output_limit_hit;
            last_run = Some(r);
        } else if !ok {
            break;
        }
    }
    let collect = !crate::plots::artifact_globs(job).is_empty() || !job.expect.files.is_empty();
    // After a run step, always: the end-of-job script reads the cgroup's memory peak.
    // And to copy the files out (a build's whole `/sandbox`).
    let needs_finish = !s.is_dead() && (warm || last_run.is_some() || collect);
    if needs_finish {
        match finish(s, collect, warm, job.limits.disk, cancel).await {
            Ok((limits, tar, clean)) => {
                *reusable = clean;
                if let Some(u) = msgs.iter_mut().find_map(|m| match m {
                    Msg::Step(sr) if sr.kind == Some(StepKind::Run) => sr.usage.as_mut(),
                    _ => None,
                }) {
                    u.peak_memory_bytes = limits.memory_peak.unwrap_or(0);
                }
                msgs.push(Msg::Limits(limits));
                if let Some(tar) = tar {
                    match collected(job, ctx, s.name(), &tar) {
                        Ok((msg, dir)) => {
                            msgs.push(msg);
                            outcome.out_dir = Some(dir);
                        }
                        Err(e) => return error_report(job, Phase::Run, e),
                    }
                }
            }
            Err(Error::Interrupted) => return interrupted(job),
            Err(_) if cancel.is_cancelled() => return interrupted(job),
            Err(e) => tracing::debug!("the end of the job in {} failed: {e}", s.name()),
        }
    }
    if let Some(r) = last_run {
        outcome.stdout = r.stdout;
        outcome.stderr = r.stderr;
    }
    outcome.msgs = msgs;
    outcome.wall = started.elapsed();
    report_of(job, ctx, &outcome)
}

/// The cap again on what a measured step captured (it may capture
/// [`step_shell::TRAILER_MAX`] bytes more per stream, for the figures): a stream past it is
/// cut and the step's output limit hit, as if the exec had stopped there.
pub(crate) fn cap_again(r: &mut ExecResult, cap: u64) {
    for (buf, truncated) in [
        (&mut r.stdout, &mut r.stdout_truncated),
        (&mut r.stderr, &mut r.stderr_truncated),
    ] {
        if buf.len() as u64 > cap {
            buf.truncate(cap as usize);
            *truncated = true;
            r.output_limit_hit = true;
        }
    }
}

/// Why a step's program could not start, from what its exec said: 127 from a compile or
/// setup step is a program missing in the image; 126, or 127 with the runtime's own
/// complaint, a program that cannot be executed there.
fn spawn_error(step: &Step, r: &ExecResult, image: &str) -> Option<String> {
    let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    let out = String::from_utf8_lossy(&r.stdout);
    let runtime_failed =
        out.contains("OCI runtime exec failed") || out.contains("executable file not found");
    if r.exit_code == Some(126) || (r.exit_code == Some(127) && runtime_failed) {
        let why = if runtime_failed {
            said(&r.stdout)
        } else {
            said(&r.stderr)
        };
        return Some(format!(
            "`{}` could not be started in image `{image}`: {why}",
            step.argv[0]
        ));
    }
    (r.exit_code == Some(127) && step.kind != StepKind::Run).then(|| {
        format!(
            "`{}` was not found in image `{image}`: {}",
            step.argv[0],
            said(&r.stderr)
        )
    })
}

/// The end of a job: [`clean::SCRIPT`] through [`ContainerSandbox::end_exec`]. Returns the
/// limit events since the last job, the tar of the files to copy out (`collect`), and
/// (`clean`) whether the sandbox was proven clean.
async fn finish<S: ContainerSandbox>(
    s: &mut S,
    collect: bool,
    clean: bool,
    cap: u64,
    cancel: &CancellationToken,
) -> Result<(LimitEvents, Option<Vec<u8>>, bool), Error> {
    let argv = clean::script_argv(if clean { "clean" } else { "end" }, collect);
    let r = s.end_exec(&argv, clean, cap, cancel).await?;
    let out = clean::parse(&String::from_utf8_lossy(&r.stderr));
    let before = s.reuse().counters;
    let now = clean::Counters {
        oom_kills: out.oom_kills.unwrap_or(before.oom_kills),
        pids_max: out.pids_max.unwrap_or(before.pids_max),
        memory_peak: out.memory_peak.or(before.memory_peak),
    };
    let limits = LimitEvents {
        enforcement: s.enforcement().into(),
        oom_killed: now.oom_kills > before.oom_kills,
        pids_limit_hit: now.pids_max > before.pids_max,
        memory_peak: before.job_peak(out.memory_peak),
    };
    s.reuse().counters = now;
    let ok = r.exit_code == Some(0) && !r.output_limit_hit && !r.timed_out;
    let fresh = s.reuse().fresh.take();
    let proven = clean && ok && clean::proven(&out, fresh.as_deref(), s.name());
    s.reuse().fresh = fresh;
    Ok((limits, (collect && ok).then_some(r.stdout), proven))
}

/// How long the end of a job may take.
pub const END_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment of every step: the language's variables and the job's own; nothing of
/// the runner's environment. The image's PATH is kept.
/// With `plots`, python's plot capture is set up (see [`steps`]).
pub fn base_env(lang: Lang, job_env: &[(String, String)], plots: bool) -> Vec<(String, String)> {
    let mut env = super::sandbox_env(lang, job_env, None);
    if plots && lang == Lang::Python {
        // Plot capture: the run step writes the hook to CONTAINER_HOOK_DIR (see `steps`).
        crate::plots::add_to_env(&mut env, crate::plots::CONTAINER_HOOK_DIR);
        env.push((PLOT_HOOK_VAR.into(), crate::plots::HOOK.into()));
    }
    env
}

/// The plot hook's source, which python run steps write to a file before starting.
const PLOT_HOOK_VAR: &str = "LLM_SANDBOX_PLOT_HOOK";

/// Python's run step behind a prologue that writes the plot hook (from the environment,
/// so any image with `/bin/sh` gets it, with no extra exec), then `exec`s the program.
fn with_plot_hook(argv: Vec<String>) -> Vec<String> {
    let dir = crate::plots::CONTAINER_HOOK_DIR;
    let script = format!(
        "{{ [ -d {dir} ] || mkdir -p {dir}; }} 2>/dev/null && printf '%s' \"${PLOT_HOOK_VAR}\" > {dir}/sitecustomize.py 2>/dev/null; unset {PLOT_HOOK_VAR}; exec \"$@\""
    );
    let mut a: Vec<String> = vec!["/bin/sh".into(), "-c".into(), script, "sh".into()];
    a.extend(argv);
    a
}

/// The compile and run steps, with programs looked up in the image's PATH.
pub fn steps(
    lang: Lang,
    source: &str,
    code: &str,
    limits: &crate::plan::job::ResolvedLimits,
    timeout: Duration,
    args: &[String],
    plots: bool,
) -> Vec<crate::sandbox::Step> {
    let spec = lang::spec(lang);
    let tc = HostToolchain {
        programs: spec.tools.iter().map(std::path::PathBuf::from).collect(),
        binds: vec![],
        path: vec![],
        compile_extra: spec
            .container_compile_extra
            .iter()
            .map(|a| a.to_string())
            .collect(),
    };
    let mut steps = super::native::program_steps(lang, &tc, source, code, limits, timeout, args);
    if plots && lang == Lang::Python {
        for s in steps.iter_mut().filter(|s| s.kind == StepKind::Run) {
            s.argv = with_plot_hook(std::mem::take(&mut s.argv));
        }
    }
    steps
}

/// [`steps`] of a planned job (`source`: its program's file name; `plots`: Python's plot
/// hook wanted).
pub fn job_steps(job: &PlannedJob, source: &str, plots: bool) -> Vec<crate::sandbox::Step> {
    let mut all = steps(
        job.lang,
        source,
        &job.code,
        &job.limits,
        job.timeout,
        &job.args,
        plots,
    );
    all.retain(|s| job.part.wants(s.kind));
    all
}

/// Docker reports a process killed by signal N as exit code 128+N.
pub fn signal_of_exit(code: Option<i32>) -> Option<i32> {
    code.filter(|c| (129..=128 + 31).contains(c))
        .map(|c| c - 128)
}

pub(crate) fn step_result(kind: StepKind, r: &ExecResult, merged_cap: u64) -> StepResult {
    let code = r.exit_code.map(|c| c as i32);
    let signal = signal_of_exit(code);
    let mut output = Vec::new();
    if kind != StepKind::Run {
        output.extend_from_slice(&r.stdout);
        output.extend_from_slice(&r.stderr);
        output.truncate(merged_cap as usize);
    }
    StepResult {
        kind: Some(kind),
        exit_code: code,
        signal,
        timed_out: r.timed_out,
        duration_ms: r.duration.as_millis() as u64,
        output: String::from_utf8_lossy(&output).into_owned(),
        output_truncated: r.stdout_truncated || r.stderr_truncated,
        spawn_error: None,
        usage: None,
    }
}

/// Unpacks the workdir's tar (safely) into a directory of the run.
pub(crate) fn collected(
    job: &PlannedJob,
    ctx: &RunCtx,
    id: &str,
    tar: &[u8],
) -> Result<(Msg, std::path::PathBuf), Error> {
    let dir = ctx
        .run_dir
        .join(format!("{}-{}-out", id.get(..12).unwrap_or(id), job.id));
    let _ = std::fs::remove_dir_all(&dir);
    match std::fs::create_dir_all(&dir).and_then(|_| tarball::extract(tar, &dir, job.limits.disk)) {
        Ok(x) => {
            let refused = x
                .refused
                .into_iter()
                .filter(|(p, _)| wanted(job, p))
                .collect();
            Ok((
                Msg::Collected {
                    files: x.files,
                    refused,
                },
                dir,
            ))
        }
        Err(e) => Err(Error::Sandbox(format!(
            "cannot unpack the files copied out of the container: {e}"
        ))),
    }
}

/// The job's report from what happened in its container; artifacts copied out.
pub(crate) fn report_of(job: &PlannedJob, ctx: &RunCtx, outcome: &Outcome) -> JobReport {
    let mut report = to_report(job, outcome);
    if let Some(dir) = &outcome.out_dir {
        if !crate::plots::artifact_globs(job).is_empty() && report.status != Status::Error {
            match copy_artifacts(job, dir, &ctx.artifacts_root) {
                Ok(a) => report.artifacts = a,
                Err(e) => {
                    report.status = Status::Error;
                    report.message = Some(format!("cannot copy the artifacts out: {e}"));
                }
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
    report
}

/// The tar of the job's program and input files.
pub(crate) fn input_tar(job: &PlannedJob, source: &str) -> Result<Vec<u8>, Error> {
    let mut entries = vec![(source.to_string(), job.code.as_bytes().to_vec(), 0o644)];
    for f in &job.files {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(&f.src).map_err(|e| Error::Prepare {
            message: format!("cannot read the input file {}: {e}", f.src.display()),
            log: None,
        })?;
        let mode = std::fs::metadata(&f.src)
            .map(|m| m.permissions().mode() & 0o755)
            .unwrap_or(0o644);
        entries.push((f.dest.clone(), data, mode | 0o644));
    }
    tarball::build(&entries).map_err(|e| Error::Prepare {
        message: format!("cannot pack the input files: {e}"),
        log: None,
    })
}

/// Whether a refused path matters to the job (an artifact glob or a checked file).
fn wanted(job: &PlannedJob, path: &str) -> bool {
    job.expect.files.iter().any(|f| f.path == path)
        || job.artifacts.iter().any(|g| {
            globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .is_ok_and(|g| g.compile_matcher().is_match(path))
        })
}

pub(crate) fn phase_of(kind: StepKind) -> Phase {
    match kind {
        StepKind::Setup => Phase::Prepare,
        StepKind::Compile => Phase::Compile,
        _ => Phase::Run,
    }
}

pub(crate) fn interrupted(job: &PlannedJob) -> JobReport {
    error_report(
        job,
        Phase::Run,
        "interrupted: the run was cancelled before this job finished",
    )
}

/// What one exec produced.
#[derive(Debug, Default, Clone)]
pub struct ExecResult {
    pub exit_code: Option<i64>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Output went past the cap: the container was killed.
    pub output_limit_hit: bool,
    pub timed_out: bool,
    pub cancelled: bool,
    pub duration: Duration,
}

/// What an exec keeps of its output, the same for containers and pods: up to `cap` bytes
/// per stream (in the [`ExecResult`] unless `discard`), the kept bytes also handed to the
/// live reader `tx`.
pub(crate) struct OutputTap {
    cap: u64,
    discard: bool,
    kept: [u64; 2],
    tx: Option<ChunkSender>,
}

impl OutputTap {
    pub(crate) fn new(cap: u64, discard: bool, tx: Option<ChunkSender>) -> OutputTap {
        OutputTap {
            cap,
            discard,
            kept: [0, 0],
            tx,
        }
    }

    /// Takes one piece of `stream` ([`OutputTap::take`]) and hands the part kept to the
    /// live reader, waiting for it (a slow reader slows the program down) but not past
    /// `deadline` or `cancel` (marked in `r`). True when the exec is to stop here.
    pub(crate) async fn pass(
        &mut self,
        r: &mut ExecResult,
        stream: StdStream,
        data: &[u8],
        deadline: std::pin::Pin<&mut tokio::time::Sleep>,
        cancel: &CancellationToken,
    ) -> bool {
        let (part, over) = self.take(r, stream, data);
        if let (Some(tx), false) = (&self.tx, part.is_empty()) {
            let chunk = crate::stream::OutputChunk {
                stream,
                data: part.to_vec(),
            };
            tokio::select! {
                _ = tx.send(chunk) => {}
                _ = deadline => { r.timed_out = true; return true; }
                _ = cancel.cancelled() => { r.cancelled = true; return true; }
            }
        }
        over
    }

    /// Takes one piece of `stream`: returns the part kept (to hand to a live reader) and
    /// whether the piece went past the cap (then the stream is truncated and the output
    /// limit hit: the exec is to stop).
    pub(crate) fn take<'d>(
        &mut self,
        r: &mut ExecResult,
        stream: StdStream,
        data: &'d [u8],
    ) -> (&'d [u8], bool) {
        let i = usize::from(stream == StdStream::Stderr);
        let room = self.cap.saturating_sub(self.kept[i]);
        let over = data.len() as u64 > room;
        let part = &data[..(data.len() as u64).min(room) as usize];
        self.kept[i] += part.len() as u64;
        let (buf, truncated) = match stream {
            StdStream::Stdout => (&mut r.stdout, &mut r.stdout_truncated),
            StdStream::Stderr => (&mut r.stderr, &mut r.stderr_truncated),
        };
        if !self.discard {
            buf.extend_from_slice(part);
        }
        if over {
            *truncated = true;
            r.output_limit_hit = true;
        }
        (part, over)
    }
}

/// Streaming options of an exec (the default: none, everything buffered).
#[derive(Default)]
pub struct Live {
    /// Receives stdout and stderr as they come (within the cap).
    pub tx: Option<ChunkSender>,
    /// Keep nothing in the result's `stdout`/`stderr` (the output only goes to `tx`; the
    /// cap still applies).
    pub discard: bool,
    /// The program's stdin as it comes (closing the channel closes its stdin); instead of
    /// the bytes given to the exec.
    pub stdin: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
}

#[cfg(test)]
mod tests {
    //! The pipeline without an engine: a recording test double of a sandbox.
    use super::*;
    use crate::plan::PlannedJob;
    use crate::report::model::Status;

    /// Says what each call was, and answers as a sandbox whose compile step exits
    /// `compile_exit` and whose run step prints `hello` in 0.3 s of CPU.
    struct Fake {
        calls: Vec<String>,
        reuse: Reuse,
        compile_exit: i64,
    }

    impl Fake {
        fn new(compile_exit: i64) -> Fake {
            Fake {
                calls: vec![],
                reuse: Reuse::default(),
                compile_exit,
            }
        }
    }

    fn done(code: i64, stdout: &str, stderr: &str) -> ExecResult {
        ExecResult {
            exit_code: Some(code),
            stdout: stdout.into(),
            stderr: stderr.into(),
            ..Default::default()
        }
    }

    impl ContainerSandbox for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn is_dead(&self) -> bool {
            false
        }
        fn reuse(&mut self) -> &mut Reuse {
            &mut self.reuse
        }
        fn enforcement(&self) -> &'static str {
            "fake cgroup"
        }
        fn inline_inputs_max(&self) -> usize {
            1 << 20
        }
        async fn exec(
            &mut self,
            argv: &[String],
            _stdin: Option<&[u8]>,
            _cap: u64,
            _timeout: Duration,
            _cancel: &CancellationToken,
        ) -> Result<ExecResult, Error> {
            self.calls.push(format!("exec {}", argv[0]));
            Ok(done(0, "", ""))
        }
        async fn run_step(
            &mut self,
            step: &Step,
            io: StepIo<'_>,
            _cancel: &CancellationToken,
        ) -> Result<ExecResult, Error> {
            let inputs = io.inputs.take().map(|t| t.len());
            self.calls.push(format!(
                "{:?} inputs:{} stdin:{:?} measured:{}",
                step.kind,
                inputs.is_some(),
                io.stdin.map(|s| String::from_utf8_lossy(s).into_owned()),
                io.measure.is_some()
            ));
            Ok(match step.kind {
                StepKind::Compile => done(self.compile_exit, "", "main.c:1: error: nope\n"),
                _ => {
                    let trailer = io.measure.map(|m| m.trailer("0m0.250s", "0m0.050s"));
                    done(0, "hello\n", &trailer.unwrap_or_default())
                }
            })
        }
        async fn end_exec(
            &mut self,
            _argv: &[String],
            clean: bool,
            _cap: u64,
            _cancel: &CancellationToken,
        ) -> Result<ExecResult, Error> {
            self.calls.push(format!("end clean:{clean}"));
            Ok(done(0, "", "oom_kill 0\nmax 0\nmemory-peak 12345678\n"))
        }
        async fn remove(self) {}
    }

    fn ctx() -> (RunCtx, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ctx = RunCtx {
            scope: crate::backend::Scope::new(),
            run_dir: dir.path().to_path_buf(),
            artifacts_root: dir.path().join("artifacts"),
            cancel: CancellationToken::new(),
            fresh_containers: true,
            parallelism: 1,
            slots: None,
        };
        (ctx, dir)
    }

    fn job(lang: Lang, code: &str) -> PlannedJob {
        let mut j = PlannedJob::adhoc(lang, code.into(), vec![], Duration::from_secs(5), false);
        j.backend = crate::spec::types::BackendKind::Docker;
        j.stdin = Some("in".into());
        j.expect.stdout = Some("hello".into());
        j
    }

    #[tokio::test]
    async fn a_job_is_files_in_one_step_per_exec_then_the_end_exec() {
        let (ctx, _dir) = ctx();
        let mut s = Fake::new(0);
        let r = run(
            &mut s,
            &job(Lang::Python, "print('hello')"),
            &ctx,
            "img",
            false,
            &mut false,
            None,
        )
        .await;
        assert_eq!(r.status, Status::Passed, "{r:?}");
        assert_eq!(
            s.calls,
            [
                "Run inputs:true stdin:Some(\"in\") measured:true",
                "end clean:false"
            ]
        );
        // The figures: CPU from the step's trailer (cut off its stderr), the peak from the
        // end-of-job script.
        assert_eq!(r.cpu_ms, Some(300));
        assert_eq!(r.peak_memory_bytes, Some(12345678));
        assert_eq!(r.stderr, "");
        assert_eq!(s.reuse.uses, 1);
    }

    #[tokio::test]
    async fn a_failed_compile_step_ends_the_job_before_its_run_step() {
        let (ctx, _dir) = ctx();
        let mut s = Fake::new(1);
        let r = run(
            &mut s,
            &job(Lang::C, "int main(){}"),
            &ctx,
            "img",
            false,
            &mut false,
            None,
        )
        .await;
        assert_eq!(r.phase, Some(Phase::Compile), "{r:?}");
        assert_ne!(r.status, Status::Passed);
        assert!(
            r.stderr.contains("error: nope") || r.message.as_deref().unwrap_or("").contains("nope"),
            "{r:?}"
        );
        // No run step, and no end exec: nothing ran whose figures it could read.
        assert_eq!(s.calls, ["Compile inputs:true stdin:None measured:false"]);
    }

    #[tokio::test]
    async fn a_warm_sandbox_is_cleaned_and_reused_only_when_proven() {
        let (ctx, _dir) = ctx();
        let mut s = Fake::new(0);
        let mut reusable = true;
        let r = run(
            &mut s,
            &job(Lang::Python, "print('hello')"),
            &ctx,
            "img",
            true,
            &mut reusable,
            None,
        )
        .await;
        assert_eq!(r.status, Status::Passed, "{r:?}");
        assert_eq!(s.calls.last().map(String::as_str), Some("end clean:true"));
        // The fake's end exec proves nothing (no roots, no process evidence): not reused.
        assert!(!reusable);
    }
}
