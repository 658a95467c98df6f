//! One job in a sandbox of the container kind, written once: a Docker or Podman container
//! (without the agent) or a Kubernetes pod. The files go in as a tar, each step (compile,
//! run) is an exec, the end of the job is one exec of [`super::clean::SCRIPT`] (kill what is
//! left, read the cgroup's counters, pack the files to copy out, and for a warm sandbox
//! clean it and prove it clean), the files come out as a tar; the report is made from what
//! happened, as on every other backend. The backends provide the primitives
//! ([`ContainerSandbox`]).

use super::clean;
use super::docker::{self, container::ExecResult, step_result};
use super::{error_report, step_shell, RunCtx};
use crate::lang;
use crate::plan::PlannedJob;
use crate::report::model::{JobReport, Phase};
use crate::sandbox::host::Outcome;
use crate::sandbox::proto::{LimitEvents, Msg};
use crate::sandbox::{Step, StepKind};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the job pipeline needs of a container or a pod.
pub trait ContainerSandbox: Send {
    /// Its name (messages, the folder of the files it gives back).
    fn name(&self) -> &str;
    /// It was killed (timeout, output flood, cancel): nothing more runs in it.
    fn is_dead(&self) -> bool;
    /// Counts one more job run in it.
    fn count_job(&mut self);
    /// The cgroup's counters seen after the previous job.
    fn counters(&mut self) -> &mut clean::Counters;
    /// Its writable places' roots as made (warm sandboxes), for [`clean::proven`].
    fn fresh(&self) -> Option<&[clean::Root]>;
    /// How its limits are enforced, for the report (`container cgroup`, `pod cgroup`).
    fn enforcement(&self) -> &'static str;
    /// Inputs up to this size (a tar) may travel with the first step ([`Self::run_step`]);
    /// larger ones are put in first ([`Self::put_tar`]).
    fn inline_inputs_max(&self) -> usize {
        0
    }
    /// Unpacks a tar into `/sandbox`.
    fn put_tar(
        &mut self,
        tar: &[u8],
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Runs one step as the sandbox user with the job's environment and limits, behind
    /// the [`step_shell::StepShell`] prologue. `inputs`: the job's files, when this step is
    /// to put them in ([`Self::inline_inputs_max`]); taken when it did. `measure`: the
    /// step's figures are to be appended to its stderr (the exec captures up to
    /// [`step_shell::TRAILER_MAX`] more of it).
    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &mut self,
        job: &PlannedJob,
        step: &Step,
        env: &[(String, String)],
        inputs: &mut Option<Vec<u8>>,
        measure: Option<&step_shell::Measure>,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<ExecResult, String>> + Send;
    /// Runs [`clean::SCRIPT`] (`argv`) at the end of a job (as root to `clean` a warm
    /// container, where that is how its user is set).
    fn end_exec(
        &mut self,
        argv: &[String],
        clean: bool,
        cap: u64,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<ExecResult, String>> + Send;
}

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
    s.count_job();
    let cancel = &ctx.cancel;
    let started = Instant::now();
    let source = lang::source_file(job.lang, &job.code);
    let tar = match docker::input_tar(job, &source) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let mut inputs = None;
    if tar.len() <= s.inline_inputs_max() {
        inputs = Some(tar);
    } else if let Err(e) = s.put_tar(&tar, cancel).await {
        if cancel.is_cancelled() {
            return docker::interrupted(job);
        }
        return error_report(job, Phase::Prepare, e);
    }
    let plots = crate::plots::wanted(job);
    let env = docker::base_env(job.lang, &job.env, plots);
    let mut msgs = Vec::new();
    let mut outcome = Outcome::default();
    let mut last_run: Option<ExecResult> = None;
    for step in docker::job_steps(job, &source, plots) {
        let run = step.kind == StepKind::Run;
        let measure = run.then(step_shell::Measure::new);
        let mut r = match s
            .run_step(job, &step, &env, &mut inputs, measure.as_ref(), cancel)
            .await
        {
            Ok(r) => r,
            Err(_) if cancel.is_cancelled() => return docker::interrupted(job),
            Err(e) => return error_report(job, docker::phase_of(step.kind), e),
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
                        Err(r) => return *r,
                    }
                }
            }
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
fn cap_again(r: &mut ExecResult, cap: u64) {
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
) -> Result<(LimitEvents, Option<Vec<u8>>, bool), String> {
    let argv = clean::script_argv(if clean { "clean" } else { "end" }, collect);
    let r = s.end_exec(&argv, clean, cap, cancel).await?;
    let out = clean::parse(&String::from_utf8_lossy(&r.stderr));
    let before = *s.counters();
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
    *s.counters() = now;
    let ok = r.exit_code == Some(0) && !r.output_limit_hit && !r.timed_out;
    let proven = clean && ok && clean::proven(&out, s.fresh(), s.name());
    Ok((limits, (collect && ok).then_some(r.stdout), proven))
}

/// How long the end of a job may take.
pub const END_TIMEOUT: Duration = Duration::from_secs(60);
