//! One job in a sandbox of the container kind, written once: a Docker or Podman container
//! (without the agent) or a Kubernetes pod. The files go in as a tar, each step (compile,
//! run) is an exec, the end of the job is one exec of [`super::clean::SCRIPT`] (kill what is
//! left, read the cgroup's counters, pack the files to copy out, and for a warm sandbox
//! clean it and prove it clean), the files come out as a tar; the report is made from what
//! happened, as on every other backend. The backends provide the primitives
//! ([`ContainerSandbox`]).

use super::clean;
use super::docker::container::{ExecResult, Live};
use super::docker::{self, step_result, tarball};
use super::{error_report, step_shell, Error, RunCtx};
use crate::lang;
use crate::plan::PlannedJob;
use crate::report::model::{JobReport, Phase};
use crate::sandbox::host::Outcome;
use crate::sandbox::proto::{LimitEvents, Msg};
use crate::sandbox::{Step, StepKind};
use crate::spec::types::Lang;
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
    /// Output as it comes, stdin as it comes (containers; a pod gives its output at the
    /// end of the step, see [`ContainerSandbox::streams`]).
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
    /// Its execs hand their output over as it comes ([`StepIo::live`]).
    fn streams(&self) -> bool;
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
/// and `reusable` says whether that was proven. `image` names the image in messages.
pub async fn run<S: ContainerSandbox>(
    s: &mut S,
    job: &PlannedJob,
    ctx: &RunCtx,
    image: &str,
    warm: bool,
    reusable: &mut bool,
) -> JobReport {
    s.reuse().uses = s.reuse().uses.saturating_add(1);
    let cancel = &ctx.cancel;
    let started = Instant::now();
    let source = lang::source_file(job.lang, &job.code);
    let tar = match docker::input_tar(job, &source) {
        Ok(t) => t,
        Err(e) => return super::prepare_error_report(job, e),
    };
    let mut inputs = None;
    if tar.len() <= s.inline_inputs_max() {
        inputs = Some(tar);
    } else if let Err(e) = s.put_tar(&tar, cancel).await {
        if e == Error::Interrupted || cancel.is_cancelled() {
            return docker::interrupted(job);
        }
        return error_report(job, Phase::Prepare, e.to_string());
    }
    let plots = crate::plots::wanted(job);
    let env = docker::base_env(job.lang, &job.env, plots);
    let mut msgs = Vec::new();
    let mut outcome = Outcome::default();
    let mut last_run: Option<ExecResult> = None;
    for step in docker::job_steps(job, &source, plots) {
        let run = step.kind == StepKind::Run;
        let measure = run.then(step_shell::Measure::new);
        let io = StepIo {
            lang: job.lang,
            env: &env,
            open_files: job.limits.open_files,
            stdin: run.then(|| job.stdin.as_deref().unwrap_or("").as_bytes()),
            inputs: &mut inputs,
            measure: measure.as_ref(),
            live: Live::default(),
        };
        let mut r = match s.run_step(&step, io, cancel).await {
            Ok(r) => r,
            Err(Error::Interrupted) => return docker::interrupted(job),
            Err(_) if cancel.is_cancelled() => return docker::interrupted(job),
            Err(e) => return error_report(job, docker::phase_of(step.kind), e.to_string()),
        };
        if r.cancelled {
            return docker::interrupted(job);
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
    let needs_finish = !s.is_dead() && (warm || last_run.is_some());
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
                    match docker::collected(job, ctx, s.name(), &tar) {
                        Ok((msg, dir)) => {
                            msgs.push(msg);
                            outcome.out_dir = Some(dir);
                        }
                        Err(e) => return error_report(job, Phase::Run, e),
                    }
                }
            }
            Err(Error::Interrupted) => return docker::interrupted(job),
            Err(_) if cancel.is_cancelled() => return docker::interrupted(job),
            Err(e) => tracing::debug!("the end of the job in {} failed: {e}", s.name()),
        }
    }
    if let Some(r) = last_run {
        outcome.stdout = r.stdout;
        outcome.stderr = r.stderr;
    }
    outcome.msgs = msgs;
    outcome.wall = started.elapsed();
    docker::report_of(job, ctx, &outcome)
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
