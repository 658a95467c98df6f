//! The scheduler and executor: runs a plan's jobs concurrently on their backends and
//! emits [`Event`]s. It never prints; reporters consume the events.

pub mod journal;

pub use journal::{Journal, Results};

use crate::backend::{self, RunCtx};
use crate::owner;
pub use crate::owner::RunDir;
use crate::plan::{Plan, PlannedJob};
use crate::report::model::{Event, JobReport, Phase, Status};
use crate::spec::types::BackendKind;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Parallel jobs (default: the number of cores).
    pub jobs: usize,
    pub fail_fast: bool,
    /// `--artifacts DIR`.
    pub artifacts_dir: PathBuf,
    /// `--fresh-containers`: one new container per job on container backends.
    pub fresh_containers: bool,
    /// `--backend-jobs B=N`: a backend's own concurrency (default `jobs`).
    pub backend_jobs: Vec<(BackendKind, usize)>,
    /// `--retries N`: a job that fails, times out or errs runs again, up to N more times.
    pub retries: u32,
}

impl RunOptions {
    /// How many jobs of `backend` run at once.
    pub fn jobs_for(&self, backend: BackendKind) -> usize {
        self.backend_jobs
            .iter()
            .rev()
            .find(|(b, _)| *b == backend)
            .map(|(_, n)| *n)
            .unwrap_or(self.jobs)
            .max(1)
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: default_parallelism(),
            fail_fast: false,
            fresh_containers: false,
            backend_jobs: vec![],
            artifacts_dir: PathBuf::from(".llm-sandbox/artifacts"),
            retries: 0,
        }
    }
}

pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Removes everything dead runners on this host left: run directories and cgroups.
pub fn sweep_stale() {
    if let Ok(root) = owner::runs_root() {
        owner::sweep_stale_dirs(&root);
    }
    if let Ok(mode) = crate::sandbox::cgroup::detect() {
        crate::sandbox::cgroup::sweep_stale(&mode, &owner::hostname());
    }
}

/// A skipped job's report.
pub fn skipped_report(job: &PlannedJob, reason: &str) -> JobReport {
    let mut r = backend::error_report(job, Phase::Prepare, reason.to_string());
    r.status = Status::Skipped;
    r.phase = None;
    r
}

/// Runs every job of the plan; returns the reports in plan order ([`run_plan_into`], with
/// a temporary journal read back at the end).
pub async fn run_plan(
    plan: &Plan,
    opts: &RunOptions,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) -> std::io::Result<Vec<JobReport>> {
    let mut results = Results::new(Journal::temporary()?, &plan.jobs);
    run_plan_into(plan, opts, events, cancel, &mut results).await?;
    results.into_reports()
}

/// Runs every job of the plan that has no result in `results` yet (`--resume` put some
/// there), each one's result going to `results` (its journal) as it finishes. Events go to
/// `events` as jobs start and finish. Each backend has its own scheduler and concurrency
/// limit, so batches of different backends run at the same time; within a backend, jobs
/// start in plan order. Container images and templates are prepared ahead, while jobs run.
/// Cancelling `cancel` (Ctrl-C) stops scheduling and tears down the running sandboxes;
/// their jobs are reported as errors, the unstarted ones as skipped (neither is a result
/// `--resume` keeps). Jobs' ids are their positions in `plan.jobs`.
pub async fn run_plan_into(
    plan: &Plan,
    opts: &RunOptions,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
    results: &mut Results,
) -> std::io::Result<()> {
    sweep_stale();
    let run_dir = RunDir::create()?;
    let mut ctx = RunCtx {
        scope: backend::Scope::new(),
        run_dir: run_dir.path.clone(),
        artifacts_root: opts.artifacts_dir.clone(),
        cancel: cancel.clone(),
        fresh_containers: opts.fresh_containers,
        parallelism: opts.jobs.max(1),
        slots: None,
    };
    let todo: Vec<&PlannedJob> = plan.jobs.iter().filter(|j| !results.has(j.id)).collect();
    let _ = events.send(Event::RunStarted { total: todo.len() });
    let stop_scheduling = CancellationToken::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, JobReport)>();
    let mut per_backend: Vec<(BackendKind, Vec<PlannedJob>)> = Vec::new();
    for job in &todo {
        if let Some(reason) = &job.skip {
            let _ = done_tx.send((job.id, skipped_report(job, reason)));
            continue;
        }
        match per_backend.iter_mut().find(|(b, _)| *b == job.backend) {
            Some((_, v)) => v.push((*job).clone()),
            None => per_backend.push((job.backend, vec![(*job).clone()])),
        }
    }
    let mut prepare = backend::prepare_ahead(
        per_backend.iter().flat_map(|(_, js)| js.iter()),
        &ctx,
        |b| opts.jobs_for(b),
        opts.retries,
    );
    drop(todo);
    let mut schedulers = tokio::task::JoinSet::new();
    for (b, jobs) in per_backend {
        ctx.parallelism = opts.jobs_for(b);
        let sem = Arc::new(Semaphore::new(opts.jobs_for(b)));
        ctx.slots = Some(sem.clone());
        let sched = Scheduler {
            ctx: ctx.clone(),
            sem,
            stop: stop_scheduling.clone(),
            fail_fast: opts.fail_fast,
            retries: opts.retries,
            events: events.clone(),
            done: done_tx.clone(),
        };
        schedulers.spawn(sched.run(jobs));
    }
    drop(done_tx);
    let mut lost = None;
    while let Some((id, mut r)) = done_rx.recv().await {
        r.bound();
        // What did not run, or was stopped by the interruption, runs again on --resume.
        let unfinished = r.not_run() || (r.status == Status::Error && cancel.is_cancelled());
        if let Err(e) = results.add(&plan.jobs[id], !unfinished, &r) {
            tracing::error!(
                "cannot write the journal {}: {e}",
                results.journal.path.display()
            );
            lost.get_or_insert(e);
        }
        let _ = events.send(Event::JobFinished {
            id,
            report: Box::new(r),
        });
    }
    while let Some(res) = schedulers.join_next().await {
        if let Err(e) = res {
            return Err(std::io::Error::other(format!("a scheduler failed: {e}")));
        }
    }
    let synced = results.journal.sync();
    prepare.abort_all();
    ctx.scope.finish().await;
    drop(run_dir);
    match lost {
        Some(e) => Err(std::io::Error::other(format!(
            "results were lost: cannot write the journal {}: {e}",
            results.journal.path.display()
        ))),
        None => synced,
    }
}

/// What tells a program which attempt of its job it is (`--retries`).
pub const ATTEMPT_VAR: &str = "LLM_SANDBOX_ATTEMPT";

/// Runs `job`, and again while it fails, times out or errs, up to `retries` more times
/// (`--retries`, as nextest does): one that passes on a retry is `passed` and `flaky`;
/// `attempts` says how many runs it took. An interrupted run is not retried. With retries,
/// the program sees which attempt it is in `LLM_SANDBOX_ATTEMPT` (1, 2, ...).
async fn run_with_retries(job: &PlannedJob, ctx: &RunCtx, retries: u32) -> JobReport {
    if retries == 0 {
        return backend::run_job(job, ctx).await;
    }
    let attempt = |n: u32| {
        let mut j = job.clone();
        j.env.push((ATTEMPT_VAR.into(), n.to_string()));
        j
    };
    let mut r = backend::run_job(&attempt(1), ctx).await;
    let mut attempts = 1;
    while attempts <= retries
        && matches!(r.status, Status::Failed | Status::Timeout | Status::Error)
        && !ctx.cancel.is_cancelled()
    {
        tracing::info!("{}: {}; retrying", job.name, r.status.as_str());
        attempts += 1;
        r = backend::run_job(&attempt(attempts), ctx).await;
    }
    if attempts > 1 {
        r.attempts = Some(attempts);
        r.flaky = r.status == Status::Passed;
    }
    r
}

/// The scheduler of one backend: a slot per running job (two for an interactive one:
/// [`backend::cases::slots_of`]).
struct Scheduler {
    ctx: RunCtx,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
    fail_fast: bool,
    retries: u32,
    events: mpsc::UnboundedSender<Event>,
    done: mpsc::UnboundedSender<(usize, JobReport)>,
}

impl Scheduler {
    async fn run(self, jobs: Vec<PlannedJob>) {
        let mut set = tokio::task::JoinSet::new();
        for job in jobs {
            // Jobs start in plan order: a slot is taken before the job is spawned, so
            // --fail-fast never lets a later job overtake the one that fails.
            let slots = backend::cases::slots_of(&job, self.ctx.parallelism);
            let permit = tokio::select! {
                p = self.sem.clone().acquire_many_owned(slots) => p.ok(),
                _ = self.stop.cancelled() => None,
                _ = self.ctx.cancel.cancelled() => None,
            };
            let permit = match permit {
                Some(p) if !self.stop.is_cancelled() && !self.ctx.cancel.is_cancelled() => p,
                _ => {
                    let why = if self.ctx.cancel.is_cancelled() {
                        "the run was interrupted"
                    } else {
                        "--fail-fast stopped the run"
                    };
                    let why = format!("{}{why}", crate::report::model::NOT_RUN);
                    let _ = self.done.send((job.id, skipped_report(&job, &why)));
                    continue;
                }
            };
            let _ = self.events.send(Event::JobStarted {
                id: job.id,
                name: job.name.clone(),
            });
            let ctx = self.ctx.clone();
            let stop = self.stop.clone();
            let fail_fast = self.fail_fast;
            let retries = self.retries;
            let done = self.done.clone();
            set.spawn(async move {
                let r = run_with_retries(&job, &ctx, retries).await;
                if fail_fast && !r.status.is_ok() {
                    stop.cancel();
                }
                drop(permit);
                let _ = done.send((job.id, r));
            });
            // Reap finished tasks as we go (memory stays flat on long runs).
            while set.try_join_next().is_some() {}
        }
        while set.join_next().await.is_some() {}
    }
}
