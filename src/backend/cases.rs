//! Jobs with test cases (README, "Test cases"), written once above every backend: the
//! program is built once — the job's setup and compile steps, run as a job of its own whose
//! `/sandbox` is copied out — then every case is a job of its own that runs only the run
//! step, in a fresh sandbox, with the built files as its inputs, the case's stdin, args and
//! checks, and the job's timeout and limits. What isolates one job from the next (a fresh
//! native sandbox, a warm container proven clean) isolates one case from the next.

use super::{sanitize_name, Backend, RunCtx};
use crate::plan::job::{InputFile, Part, PlannedJob, ResolvedExpect};
use crate::report::model::{CaseReport, JobReport, Status};
use crate::spec::types::{BackendKind, CasesStop};
use std::path::Path;
use std::time::Instant;

/// Runs `job`'s cases on `backend` and makes the job's report.
pub async fn run(backend: &dyn Backend, job: &PlannedJob, ctx: &RunCtx) -> JobReport {
    let started = Instant::now();
    let mut files = job.files.clone();
    let mut part = Part::All;
    if needs_build(job) {
        match build(backend, job, ctx).await {
            Ok(built) => {
                files.extend(built);
                part = Part::Run;
            }
            Err(mut r) => {
                // The program could not be made: no case ran.
                r.name = job.name.clone();
                r.cases_total = Some(job.cases.len());
                r.cases_passed = Some(0);
                r.duration_ms = started.elapsed().as_millis() as u64;
                return r;
            }
        }
    }
    let mut ran: Vec<JobReport> = Vec::with_capacity(job.cases.len());
    for c in &job.cases {
        let mut cj = job.clone();
        cj.cases = vec![];
        cj.part = part;
        cj.name = format!("{}/{}", job.name, c.name);
        cj.stdin = c.stdin.clone().or_else(|| job.stdin.clone());
        if let Some(a) = &c.args {
            cj.args = a.clone();
        }
        cj.expect = job.expect.with_case(&c.expect);
        cj.files = files.clone();
        let r = backend.run_job(&cj, ctx).await;
        let failed = r.status != Status::Passed;
        ran.push(r);
        if ctx.cancel.is_cancelled() || (failed && job.cases_stop == CasesStop::FirstFailure) {
            break;
        }
    }
    report(job, ran, started)
}

/// Whether the program is made before it runs: a compiled language, or `setup` commands
/// on native (on containers they are part of the image).
fn needs_build(job: &PlannedJob) -> bool {
    crate::lang::spec(job.lang).compile.is_some()
        || (job.backend == BackendKind::Native && !job.setup.is_empty())
}

/// Runs the job's setup and compile steps and copies its whole `/sandbox` out (into the
/// run's directory); returns the files, as inputs of the cases. Err: the build's report.
async fn build(
    backend: &dyn Backend,
    job: &PlannedJob,
    ctx: &RunCtx,
) -> Result<Vec<InputFile>, JobReport> {
    let mut b = job.clone();
    b.cases = vec![];
    b.part = Part::Build;
    b.stdin = None;
    b.expect = ResolvedExpect::default();
    b.artifacts = vec!["**".into()];
    let root = ctx.run_dir.join(format!("build-{}", job.id));
    let bctx = RunCtx {
        artifacts_root: root.clone(),
        ..ctx.clone()
    };
    let r = backend.run_job(&b, &bctx).await;
    if r.status != Status::Passed {
        return Err(r);
    }
    let dir = root.join(sanitize_name(&b.name));
    Ok(r.artifacts
        .iter()
        .filter_map(|a| {
            let rel = Path::new(a).strip_prefix(&dir).ok()?;
            Some(InputFile {
                src: a.into(),
                dest: rel.to_string_lossy().into_owned(),
            })
        })
        .collect())
}

/// The job's report from its cases': passed when every case passed; otherwise the first
/// case that did not pass gives its status, message, output and checks.
fn report(job: &PlannedJob, ran: Vec<JobReport>, started: Instant) -> JobReport {
    let total = job.cases.len();
    let passed = ran.iter().filter(|r| r.status == Status::Passed).count();
    let first_bad = ran.iter().position(|r| r.status != Status::Passed);
    let mut r = match first_bad.or(ran.len().checked_sub(1)) {
        Some(i) => ran[i].clone(),
        // Interrupted before the first case.
        None => super::container_job::interrupted(job),
    };
    r.name = job.name.clone();
    r.duration_ms = started.elapsed().as_millis() as u64;
    r.cases_total = Some(total);
    r.cases_passed = Some(passed);
    if let (Some(i), Some(m)) = (first_bad, r.message.take()) {
        r.message = Some(format!("case {}: {m}", job.cases[i].name));
    } else if let Some(i) = first_bad {
        let why = ran[i]
            .checks
            .iter()
            .find(|c| !c.passed)
            .map(|c| c.message.clone())
            .unwrap_or_else(|| ran[i].status.as_str().to_string());
        r.message = Some(format!("case {}: {why}", job.cases[i].name));
    } else if passed == total {
        r.message = None;
    } else {
        // Every case that ran passed, but not all ran (interrupted).
        r.status = Status::Error;
        r.message = Some(format!("interrupted after {} of {total} cases", ran.len()));
    }
    // The figures of the job: the CPU of all its cases, the largest peak.
    r.cpu_ms = ran.iter().map(|c| c.cpu_ms).sum();
    r.peak_memory_bytes = ran.iter().filter_map(|c| c.peak_memory_bytes).max();
    r.artifacts = ran.iter().flat_map(|c| c.artifacts.clone()).collect();
    let not_run = job.cases[ran.len()..].iter().map(|case| CaseReport {
        name: case.name.clone(),
        status: Status::Skipped,
        exit_code: None,
        duration_ms: 0,
        cpu_ms: None,
        peak_memory_bytes: None,
        message: Some(match job.cases_stop {
            CasesStop::FirstFailure => {
                "not run: an earlier case did not pass (cases_stop = \"first-failure\")".into()
            }
            CasesStop::Never => "not run: interrupted".into(),
        }),
        checks: vec![],
        stdout: String::new(),
        stderr: String::new(),
    });
    let not_run: Vec<CaseReport> = not_run.collect();
    r.cases = ran
        .into_iter()
        .zip(&job.cases)
        .map(|(c, case)| {
            let keep = c.status != Status::Passed;
            CaseReport {
                name: case.name.clone(),
                status: c.status,
                exit_code: c.exit_code,
                duration_ms: c.duration_ms,
                cpu_ms: c.cpu_ms,
                peak_memory_bytes: c.peak_memory_bytes,
                message: c.message,
                checks: c.checks,
                stdout: if keep { c.stdout } else { String::new() },
                stderr: if keep { c.stderr } else { String::new() },
            }
        })
        .chain(not_run)
        .collect();
    r
}
