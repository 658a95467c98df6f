//! The scheduler and executor: runs a plan's jobs concurrently on their backends and
//! emits [`Event`]s. It never prints; reporters consume the events.

pub mod owner;

use crate::backend::{self, RunCtx};
use crate::plan::{Plan, PlannedJob};
use crate::report::model::{Event, JobReport, Phase, Status};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: default_parallelism(),
            fail_fast: false,
            fresh_containers: false,
            artifacts_dir: PathBuf::from(".llm-sandbox/artifacts"),
        }
    }
}

pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The private temporary directory of one run, removed when dropped.
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn create() -> std::io::Result<RunDir> {
        let root = owner::runs_root();
        std::fs::create_dir_all(&root)?;
        let nonce: u32 = rand_u32();
        let path = root.join(format!("{}-{nonce:08x}", owner::prefix()));
        std::fs::create_dir_all(&path)?;
        let o = owner::Owner {
            tool: "llm-sandbox".into(),
            run_id: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            host: owner::hostname(),
            pid: std::process::id(),
            started_at: chrono::Utc::now().to_rfc3339(),
        };
        std::fs::write(
            path.join("owner.json"),
            serde_json::to_vec_pretty(&o).unwrap_or_default(),
        )?;
        Ok(RunDir { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u32
}

/// A skipped job's report.
pub fn skipped_report(job: &PlannedJob, reason: &str) -> JobReport {
    let mut r = backend::error_report(job, Phase::Prepare, reason.to_string());
    r.status = Status::Skipped;
    r.phase = None;
    r
}

/// Runs every job of the plan; returns the reports in plan order. Events go to `events`
/// as jobs start and finish. Cancelling `cancel` (Ctrl-C) stops scheduling and tears down
/// the running sandboxes; their jobs are reported as errors, the unstarted ones as skipped.
pub async fn run_plan(
    plan: &Plan,
    opts: &RunOptions,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) -> std::io::Result<Vec<JobReport>> {
    owner::sweep_stale();
    let run_dir = RunDir::create()?;
    let ctx = RunCtx {
        run_dir: run_dir.path.clone(),
        artifacts_root: opts.artifacts_dir.clone(),
        cancel: cancel.clone(),
        fresh_containers: opts.fresh_containers,
        parallelism: opts.jobs.max(1),
    };
    let _ = events.send(Event::RunStarted {
        total: plan.jobs.len(),
    });
    let sem = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let stop_scheduling = CancellationToken::new();
    let mut set = tokio::task::JoinSet::new();
    let mut reports: Vec<Option<JobReport>> = vec![None; plan.jobs.len()];
    let finished = |id: usize, r: JobReport, reports: &mut Vec<Option<JobReport>>| {
        let _ = events.send(Event::JobFinished {
            id,
            report: Box::new(r.clone()),
        });
        reports[id] = Some(r);
    };
    // Jobs start in plan order: the scheduler takes a slot for a job before it spawns it,
    // so --fail-fast never lets a later job overtake the one that fails.
    for job in plan.jobs.iter().cloned() {
        let id = job.id;
        if let Some(reason) = &job.skip {
            finished(id, skipped_report(&job, reason), &mut reports);
            continue;
        }
        // Wait for a slot, reporting the jobs that finish meanwhile as they do.
        let permit = loop {
            tokio::select! {
                p = sem.clone().acquire_owned() => break p.ok(),
                _ = stop_scheduling.cancelled() => break None,
                _ = cancel.cancelled() => break None,
                Some(res) = set.join_next() => match res {
                    Ok((done, r)) => finished(done, r, &mut reports),
                    Err(e) => return Err(std::io::Error::other(format!("a job task failed: {e}"))),
                },
            }
        };
        let permit = match permit {
            Some(p) if !stop_scheduling.is_cancelled() && !cancel.is_cancelled() => p,
            _ => {
                let why = if cancel.is_cancelled() {
                    "not run: the run was interrupted"
                } else {
                    "not run: --fail-fast stopped the run"
                };
                finished(id, skipped_report(&job, why), &mut reports);
                continue;
            }
        };
        let ctx = ctx.clone();
        let stop = stop_scheduling.clone();
        let fail_fast = opts.fail_fast;
        let _ = events.send(Event::JobStarted {
            id,
            name: job.name.clone(),
        });
        set.spawn(async move {
            let r = backend::run_job(&job, &ctx).await;
            if fail_fast && !r.status.is_ok() {
                stop.cancel();
            }
            drop(permit);
            (id, r)
        });
    }
    while let Some(res) = set.join_next().await {
        match res {
            Ok((id, r)) => finished(id, r, &mut reports),
            Err(e) => return Err(std::io::Error::other(format!("a job task failed: {e}"))),
        }
    }
    backend::finish_run().await;
    drop(run_dir);
    Ok(reports.into_iter().flatten().collect())
}
