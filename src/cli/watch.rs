//! `llm-sandbox watch`: a full run, then, whenever files change, a rerun of exactly the
//! jobs those files affect.
//!
//! * Expansion records what every job reads from disk ([`Dep`]: job file, program,
//!   template, dataset, inputs with their globs, Dockerfile and build context). A changed
//!   path re-plans the job files that depend on it (so templates are re-rendered, globs
//!   re-expanded, added/removed/renamed jobs seen) and reruns the jobs that depend on it;
//!   every other job keeps its last result.
//! * File-system events (notify: inotify on Linux; polling with `--poll`, or when the
//!   kernel's watch limits are reached) are collected until they settle: a trailing-edge
//!   throttle, so a burst of saves is one round. Changes that arrive while a round runs
//!   start one more round after it.
//! * A job file that becomes invalid shows its errors and is waited on; the jobs of the
//!   other files keep running. Ctrl-C (or SIGTERM) interrupts the round, tears its
//!   sandboxes down and exits 0; a second Ctrl-C exits at once.

use super::{execute, run_report, write_reports, RunArgs, SelectArgs};
use indexmap::IndexMap;
use llm_sandbox::exit_codes;
use llm_sandbox::plan::deps::{self, Dep, WatchDep};
use llm_sandbox::plan::{Plan, PlanOptions, PlannedJob};
use llm_sandbox::report::model::{JobReport, Status};
use llm_sandbox::spec::error::SpecError;
use notify::event::{EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Polling interval when the kernel's watch limits force polling.
const FALLBACK_POLL: Duration = Duration::from_millis(500);

/// Options of `watch` beyond `run`'s.
#[derive(clap::Args, Debug, Clone)]
pub(super) struct WatchArgs {
    /// Do not clear the screen before each round (it is cleared only on a terminal).
    #[arg(long)]
    no_clear: bool,
    /// How long changes must be quiet before a round starts (a burst of saves is one round).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = super::parse_duration)]
    debounce: Duration,
    /// Poll the files every INTERVAL (default 500ms) instead of kernel notifications: for
    /// network file systems and mounts that do not deliver events.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, require_equals = true,
          default_missing_value = "500ms", value_parser = super::parse_duration)]
    poll: Option<Duration>,
}

/// What changed since the last round.
#[derive(Debug, Default)]
struct Changes {
    /// Changed paths (canonical folders), relevant to some job file or job.
    paths: BTreeSet<PathBuf>,
    /// Everything counts as changed (the first round; the kernel dropped events).
    all: bool,
}

impl Changes {
    fn everything() -> Changes {
        Changes {
            paths: BTreeSet::new(),
            all: true,
        }
    }

    fn is_empty(&self) -> bool {
        !self.all && self.paths.is_empty()
    }
}

/// `llm-sandbox watch`.
pub(super) async fn watch(select: SelectArgs, args: RunArgs, w: WatchArgs) -> i32 {
    let paths = if select.paths.is_empty() {
        vec![PathBuf::from("jobs")]
    } else {
        select.paths.clone()
    };
    let mut bad = false;
    for p in &paths {
        if std::fs::metadata(p).is_err() {
            eprintln!(
                "error: {}: no such file or directory\n  help: give job files (.toml, .yaml, .yml) or directories containing them; the default is ./jobs",
                p.display()
            );
            bad = true;
        }
    }
    let plan_opts = PlanOptions {
        vars: select.vars.clone(),
        backend_override: select.backend,
        filters: select.filters.clone(),
        shard: select.shard,
    };
    // Options that are wrong whatever the files say (an invalid --filter).
    if let Err(errors) = llm_sandbox::plan::plan_loaded(&[], &plan_opts) {
        for e in render(errors) {
            eprintln!("{e}");
        }
        bad = true;
    }
    if bad {
        return exit_codes::BAD_INPUT;
    }

    let cancel = CancellationToken::new();
    if let Err(e) = handle_signals(&cancel) {
        eprintln!("error: cannot handle Ctrl-C: {e}");
        return exit_codes::JOBS_FAILED;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut fs = match Fs::new(w.poll, tx) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("error: {e}");
            return exit_codes::JOBS_FAILED;
        }
    };
    let mut state = State::new(paths, plan_opts, &args);
    let opts = args.run_options();
    let term = std::io::stderr().is_terminal();
    let clear = term && !w.no_clear;
    let mut changes = Changes::everything();
    loop {
        let round = state.plan_round(&changes);
        // Watch before running: a change made while the round runs starts the next one.
        fs.set(&state.watch_roots());
        if round.visible {
            state.round += 1;
            if clear {
                eprint!("\x1b[H\x1b[2J\x1b[3J");
            }
            eprintln!("{}", state.header(&round, &changes));
            for n in &round.notes {
                eprintln!("[watch] {n}");
            }
            for e in &round.errors {
                eprintln!("{e}");
            }
            let mut ran = None;
            if !round.plan.jobs.is_empty() {
                // (watch keeps every job's latest result in memory anyway)
                let mut results = match llm_sandbox::run::Journal::temporary() {
                    Ok(j) => llm_sandbox::run::Results::new(j, &round.plan.jobs),
                    Err(e) => {
                        eprintln!("error: cannot create a temporary file for the results: {e}");
                        break;
                    }
                };
                let outcome = execute(&round.plan, &opts, &args, &cancel, &mut results, None)
                    .await
                    .and_then(|(ran, interrupted)| {
                        let tally = results.tally.clone();
                        let jobs = results.into_reports().map_err(|e| e.to_string())?;
                        Ok((
                            run_report(&round.plan, &tally, &ran, jobs, &args),
                            interrupted,
                        ))
                    });
                match outcome {
                    Ok((report, interrupted)) => {
                        if interrupted {
                            break;
                        }
                        ran = Some(state.record(&report.jobs));
                        // The reports hold the latest result of every watched job, not
                        // only this round's.
                        let latest = state.latest(&report, args.pass_at.as_deref());
                        write_reports(&latest, &args.reports);
                    }
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            for line in state.footer(&round, ran.as_deref()) {
                eprintln!("{line}");
            }
        }
        if cancel.is_cancelled() {
            break;
        }
        match state
            .next_changes(&mut rx, &mut fs, &cancel, w.debounce)
            .await
        {
            Some(c) => changes = c,
            None => break,
        }
    }
    drop(fs);
    if cancel.is_cancelled() {
        eprintln!("[watch] interrupted: stopped");
    } else {
        eprintln!("[watch] stopped: the file-system watcher ended");
    }
    exit_codes::OK
}

/// Ctrl-C and SIGTERM cancel `cancel` (the running round's sandboxes are torn down); a
/// second Ctrl-C exits at once.
fn handle_signals(cancel: &CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let c = cancel.clone();
    tokio::spawn(async move {
        if int.recv().await.is_none() {
            return;
        }
        c.cancel();
        if int.recv().await.is_some() {
            eprintln!("\n[watch] interrupted again: exiting without waiting for the sandboxes");
            std::process::exit(exit_codes::INTERRUPTED);
        }
    });
    let c = cancel.clone();
    tokio::spawn(async move {
        if term.recv().await.is_some() {
            c.cancel();
        }
    });
    Ok(())
}

fn render(errors: Vec<SpecError>) -> Vec<String> {
    errors
        .into_iter()
        .map(|e| format!("{:?}", e.into_report()))
        .collect()
}

/// A path for humans: relative to the working directory when under it.
fn display(p: &Path, cwd: &Path) -> String {
    match p.strip_prefix(cwd) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => p.display().to_string(),
    }
}

/// One job file.
struct FileEntry {
    /// Its canonical path (event paths are canonical).
    canon: PathBuf,
    /// What its jobs depend on, resolved: a change there re-plans the file.
    deps: Vec<WatchDep>,
    /// Its selected jobs from its last successful plan.
    jobs: Vec<PlannedJob>,
    /// Its jobs before `--filter`.
    total: usize,
    /// The rendered errors of its last plan; None when it planned.
    errors: Option<Vec<String>>,
    /// Whether its jobs were part of the last round's plan (valid, no duplicate names).
    live: bool,
    /// The file as last parsed (for errors that involve several files).
    lf: Option<llm_sandbox::spec::load::LoadedFile>,
}

/// One round, planned.
struct Round {
    /// The jobs to run (ids renumbered).
    plan: Plan,
    /// Every job of the valid files.
    total: usize,
    /// Errors of job files and paths, rendered.
    errors: Vec<String>,
    notes: Vec<String>,
    /// Jobs that no longer exist (a job file changed or went away).
    removed: Vec<String>,
    /// Whether anything is worth showing (a silent round changed nothing).
    visible: bool,
}

/// The watch's memory between rounds.
struct State {
    args: Vec<PathBuf>,
    /// The arguments, canonical (as of the last round).
    arg_canon: Vec<PathBuf>,
    opts: PlanOptions,
    files: IndexMap<PathBuf, FileEntry>,
    /// The last result of every job, by name, with the job file it came from.
    results: IndexMap<String, (PathBuf, JobReport)>,
    last_errors: Vec<String>,
    last_notes: Vec<String>,
    /// Rounds shown so far.
    round: usize,
    cwd: PathBuf,
    /// Reports and artifacts this process writes: never a change.
    own_files: Vec<PathBuf>,
    own_dirs: Vec<PathBuf>,
}

impl State {
    fn new(args: Vec<PathBuf>, opts: PlanOptions, run: &RunArgs) -> State {
        let cwd = deps::canonical(Path::new("."));
        let own_files = [&run.reports.json, &run.reports.junit, &run.reports.html]
            .into_iter()
            .flatten()
            .filter(|d| *d != "-")
            .map(|d| deps::canonical(Path::new(d)))
            .collect();
        State {
            arg_canon: args.iter().map(|a| deps::canonical(a)).collect(),
            args,
            opts,
            files: IndexMap::new(),
            results: IndexMap::new(),
            last_errors: vec![],
            last_notes: vec![],
            round: 0,
            cwd,
            own_files,
            own_dirs: vec![deps::canonical(&run.artifacts_dir())],
        }
    }

    /// Re-plans what `ch` touches and picks the jobs to run.
    fn plan_round(&mut self, ch: &Changes) -> Round {
        let mut errors = vec![];
        let mut notes = vec![];
        let mut found: Vec<PathBuf> = vec![];
        let mut found_set: HashSet<PathBuf> = HashSet::new();
        self.arg_canon = self.args.iter().map(|a| deps::canonical(a)).collect();
        for a in &self.args {
            match llm_sandbox::plan::resolve_paths(std::slice::from_ref(a)) {
                Ok(files) => {
                    for f in files {
                        if found_set.insert(f.clone()) {
                            found.push(f);
                        }
                    }
                }
                Err(errs) => {
                    for e in errs {
                        if a.is_dir() && e.message.contains("contains no job files") {
                            notes.push(format!(
                                "{}: no job files yet; new .toml, .yaml and .yml files there are picked up",
                                a.display()
                            ));
                        } else {
                            errors.extend(render(vec![e]));
                        }
                    }
                }
            }
        }
        self.files.retain(|f, _| found_set.contains(f));
        let mut replanned: HashSet<PathBuf> = HashSet::new();
        for f in &found {
            let need = ch.all
                || match self.files.get(f) {
                    None => true,
                    Some(e) => ch.paths.iter().any(|p| e.deps.iter().any(|d| d.matches(p))),
                };
            if need {
                self.replan(f);
                replanned.insert(f.clone());
            }
        }
        // Job files in the order found (sorted per argument), jobs in plan order.
        let order: HashMap<&PathBuf, usize> =
            found.iter().enumerate().map(|(i, f)| (f, i)).collect();
        self.files
            .sort_by(|a, _, b, _| order.get(a).cmp(&order.get(b)));
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        let mut run: Vec<PlannedJob> = vec![];
        let mut total = 0;
        let mut resolved: HashMap<usize, Vec<WatchDep>> = HashMap::new();
        let mut live_now: Vec<(PathBuf, bool)> = vec![];
        for (f, e) in &self.files {
            if let Some(errs) = &e.errors {
                errors.extend(errs.iter().cloned());
                live_now.push((f.clone(), false));
                continue;
            }
            let others: Vec<&PathBuf> =
                e.jobs
                    .iter()
                    .filter_map(|j| seen.get(&j.name))
                    .fold(vec![], |mut v, o| {
                        if !v.contains(&o) {
                            v.push(o);
                        }
                        v
                    });
            if !others.is_empty() {
                errors.extend(self.duplicate_errors(&others, f));
                live_now.push((f.clone(), false));
                continue;
            }
            live_now.push((f.clone(), true));
            total += e.jobs.len();
            for j in &e.jobs {
                seen.insert(j.name.clone(), f.clone());
            }
            for j in &e.jobs {
                let rerun = ch.all
                    || !e.live
                    || self.results.get(&j.name).is_none_or(|(file, _)| file != f)
                    || (replanned.contains(f) && {
                        let key = std::sync::Arc::as_ptr(&j.deps) as usize;
                        let wd = resolved
                            .entry(key)
                            .or_insert_with(|| deps::resolve(&j.deps));
                        ch.paths.iter().any(|p| wd.iter().any(|d| d.matches(p)))
                    });
                if rerun {
                    run.push(j.clone());
                }
            }
        }
        for (f, live) in live_now {
            if let Some(e) = self.files.get_mut(&f) {
                e.live = live;
            }
        }
        // Jobs that are gone: not in any file's current (or, for a file with errors, last) plan.
        let known: HashSet<&str> = self
            .files
            .values()
            .flat_map(|e| e.jobs.iter().map(|j| j.name.as_str()))
            .collect();
        let removed: Vec<String> = self
            .results
            .keys()
            .filter(|n| !known.contains(n.as_str()))
            .cloned()
            .collect();
        for n in &removed {
            self.results.shift_remove(n);
        }
        for (i, j) in run.iter_mut().enumerate() {
            j.id = i;
        }
        let failed_again = replanned
            .iter()
            .any(|f| self.files.get(f).is_some_and(|e| e.errors.is_some()));
        let visible = ch.all
            || !run.is_empty()
            || !removed.is_empty()
            || failed_again
            || errors != self.last_errors
            || notes != self.last_notes;
        self.last_errors = errors.clone();
        self.last_notes = notes.clone();
        Round {
            plan: Plan {
                jobs: run,
                files: found,
                total_before_filter: self.files.values().map(|e| e.total).sum(),
                warnings: Vec::new(),
                job_set: String::new(),
                shard: None,
            },
            total,
            errors,
            notes,
            removed,
            visible,
        }
    }

    /// The errors of job names in `f` already used by the files `others`: the plan's own
    /// duplicate-name errors (with both locations), planning the files together.
    fn duplicate_errors(&self, others: &[&PathBuf], f: &Path) -> Vec<String> {
        let files: Vec<_> = others
            .iter()
            .map(|o| o.as_path())
            .chain([f])
            .filter_map(|p| self.files.get(p).and_then(|e| e.lf.clone()))
            .collect();
        let mut out = match llm_sandbox::plan::plan_loaded(&files, &self.opts) {
            Err(errs) => render(errs),
            Ok(_) => vec![],
        };
        if out.is_empty() {
            out.push(format!(
                "error: {}: job names already used by {}",
                f.display(),
                others
                    .iter()
                    .map(|o| o.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push(format!(
            "[watch] the jobs of {} wait until job names are unique across the watched files",
            f.display()
        ));
        out
    }

    /// Loads and plans one job file again.
    fn replan(&mut self, f: &Path) {
        let canon = deps::canonical(f);
        let entry = self
            .files
            .entry(f.to_path_buf())
            .or_insert_with(|| FileEntry {
                canon: canon.clone(),
                deps: vec![],
                jobs: vec![],
                total: 0,
                errors: None,
                live: false,
                lf: None,
            });
        entry.canon = canon;
        match llm_sandbox::spec::load::load_file_diag(f) {
            Err(e) => {
                // Unparsable: what it depended on before still counts, and the file itself.
                let own = deps::resolve(&[Dep::Path(f.to_path_buf())]);
                for d in own {
                    if !entry.deps.iter().any(|x| same_dep(x, &d)) {
                        entry.deps.push(d);
                    }
                }
                entry.errors = Some(render(vec![e]));
            }
            Ok(lf) => {
                entry.deps = deps::resolve(&deps::file_deps(&lf));
                match llm_sandbox::plan::plan_loaded(std::slice::from_ref(&lf), &self.opts) {
                    Ok(plan) => {
                        entry.jobs = plan.jobs;
                        entry.total = plan.total_before_filter;
                        entry.errors = None;
                    }
                    Err(errs) => entry.errors = Some(render(errs)),
                }
                entry.lf = Some(lf);
            }
        }
    }

    /// A report of the latest result of every job still watched (in file and job order),
    /// with this round's time.
    fn latest(
        &self,
        round: &llm_sandbox::Report,
        pass_at: Option<&[usize]>,
    ) -> llm_sandbox::Report {
        let jobs: Vec<JobReport> = self
            .files
            .values()
            .filter(|e| e.live)
            .flat_map(|e| e.jobs.iter())
            .filter_map(|j| self.results.get(&j.name).map(|(_, r)| r.clone()))
            .collect();
        llm_sandbox::report::json::with_jobs(round, jobs, pass_at)
    }

    /// Records a round's results; returns what changed status (for the footer).
    fn record(&mut self, reports: &[JobReport]) -> Vec<String> {
        let mut changed = vec![];
        // On the first run every job is new: that is no news.
        let first = self.results.is_empty();
        for r in reports {
            let file = PathBuf::from(&r.file);
            match self.results.get(&r.name) {
                None if first => {}
                None => changed.push(format!("{}: new, {}", r.name, r.status.as_str())),
                Some((_, prev)) if prev.status != r.status => changed.push(format!(
                    "{}: {} → {}",
                    r.name,
                    prev.status.as_str(),
                    r.status.as_str()
                )),
                Some(_) => {}
            }
            self.results.insert(r.name.clone(), (file, r.clone()));
        }
        changed
    }

    fn header(&self, round: &Round, ch: &Changes) -> String {
        let time = chrono::Local::now().format("%H:%M:%S");
        let what = if ch.all && self.round == 1 {
            "first run".to_string()
        } else if ch.all {
            "the file system asked for a rescan".to_string()
        } else {
            let shown: Vec<String> = ch
                .paths
                .iter()
                .take(3)
                .map(|p| display(p, &self.cwd))
                .collect();
            let more = ch.paths.len().saturating_sub(shown.len());
            format!(
                "changed: {}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                }
            )
        };
        let n = round.plan.jobs.len();
        let running = if n == 0 {
            "nothing to run".to_string()
        } else {
            format!(
                "running {n} of {} job{}",
                round.total,
                if round.total == 1 { "" } else { "s" }
            )
        };
        format!("[watch] round {} at {time}: {what}; {running}", self.round)
    }

    fn footer(&self, round: &Round, changed: Option<&[String]>) -> Vec<String> {
        let mut out = vec![];
        let mut changes: Vec<String> = changed.map(<[String]>::to_vec).unwrap_or_default();
        changes.extend(round.removed.iter().map(|n| format!("{n}: removed")));
        if !changes.is_empty() {
            out.push(format!("[watch] status changes: {}", changes.join("; ")));
        }
        // Totals over the jobs of the valid files, with their last results.
        let live: Vec<&JobReport> = self
            .files
            .values()
            .filter(|e| e.live)
            .flat_map(|e| e.jobs.iter())
            .filter_map(|j| self.results.get(&j.name).map(|(_, r)| r))
            .collect();
        if !live.is_empty() {
            let mut counts = [0usize; 5];
            for r in &live {
                counts[status_index(r.status)] += 1;
            }
            let ran = changed.map(|_| round.plan.jobs.len()).unwrap_or(0);
            let kept = live.len().saturating_sub(ran);
            out.push(format!(
                "[watch] all {} job{}: {} passed, {} failed, {} timeout, {} error, {} skipped ({ran} ran, {kept} kept {} last result)",
                live.len(),
                if live.len() == 1 { "" } else { "s" },
                counts[0],
                counts[1],
                counts[2],
                counts[3],
                counts[4],
                if kept == 1 { "its" } else { "their" }
            ));
            let ran_now: HashSet<&str> = round.plan.jobs.iter().map(|j| j.name.as_str()).collect();
            let stale: Vec<String> = live
                .iter()
                .filter(|r| !r.status.is_ok() && !ran_now.contains(r.name.as_str()))
                .map(|r| format!("{} ({})", r.name, r.status.as_str()))
                .collect();
            if !stale.is_empty() {
                out.push(format!(
                    "[watch] not passing since an earlier round: {}",
                    stale.join(", ")
                ));
            }
        }
        let invalid = self.files.values().filter(|e| e.errors.is_some()).count();
        let fix = match (invalid, round.errors.is_empty()) {
            (0, true) => String::new(),
            (0, false) => "; fix the errors above and save".to_string(),
            (1, _) => "; 1 job file has errors: fix it and save".to_string(),
            (k, _) => format!("; {k} job files have errors: fix them and save"),
        };
        out.push(format!(
            "[watch] round {} done{fix}; waiting for changes (Ctrl-C to stop)",
            self.round
        ));
        out
    }

    /// Where to watch: every dep of every job file, and the arguments (a folder for new
    /// job files). Folders inside a recursively watched one are left out.
    fn watch_roots(&self) -> BTreeMap<PathBuf, bool> {
        let mut want: BTreeMap<PathBuf, bool> = BTreeMap::new();
        let mut add = |(p, rec): (PathBuf, bool)| {
            let e = want.entry(p).or_insert(rec);
            *e |= rec;
        };
        for e in self.files.values() {
            for d in &e.deps {
                add(d.watch_root());
            }
        }
        for a in &self.args {
            let c = deps::canonical(a);
            let d = if c.is_dir() {
                WatchDep::Path(c)
            } else {
                deps::resolve(&[Dep::Path(a.clone())]).remove(0)
            };
            add(d.watch_root());
        }
        let recursive: Vec<PathBuf> = want
            .iter()
            .filter(|(_, r)| **r)
            .map(|(p, _)| p.clone())
            .collect();
        want.retain(|p, _| !recursive.iter().any(|r| p != r && p.starts_with(r)));
        want
    }

    /// Whether a change of `p` can matter: it is a dependency of a job file (or under
    /// one), or a job file appearing in (or a folder appearing in, or leaving) a watched
    /// folder.
    fn relevant(&self, p: &Path) -> bool {
        if self.is_own(p) {
            return false;
        }
        if self
            .files
            .values()
            .any(|e| e.deps.iter().any(|d| d.matches(p)))
        {
            return true;
        }
        self.arg_canon.iter().any(|c| {
            if c == p || c.starts_with(p) {
                return true;
            }
            let Ok(rel) = p.strip_prefix(c) else {
                return false;
            };
            // The folders a directory walk skips (hidden ones, target/).
            let skipped = rel.parent().is_some_and(|dirs| {
                dirs.components().any(|x| {
                    let s = x.as_os_str().to_string_lossy();
                    s.starts_with('.') || s == "target"
                })
            });
            if skipped || deps::is_litter(rel) {
                return false;
            }
            llm_sandbox::spec::load::is_job_file(p)
                || p.is_dir()
                || self.files.values().any(|e| e.canon.starts_with(p))
        })
    }

    /// Reports and artifacts this process writes (and the folders it creates for them).
    fn is_own(&self, p: &Path) -> bool {
        if self.own_files.iter().any(|f| f == p) {
            return true;
        }
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".llm-sandbox-report-"))
        {
            return true;
        }
        // The folders made for them below the working directory count too.
        let made_for = |o: &PathBuf| o.starts_with(p) && p.starts_with(&self.cwd) && p != self.cwd;
        self.own_dirs
            .iter()
            .any(|d| p.starts_with(d) || made_for(d))
            || self.own_files.iter().any(made_for)
    }

    /// Takes one event into `ch`; true when it added a relevant change.
    fn absorb(&self, ev: notify::Result<notify::Event>, ch: &mut Changes, fs: &mut Fs) -> bool {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                if let Some(msg) = limit_message(&e) {
                    fs.fall_back_to_polling(&msg, &self.watch_roots());
                } else {
                    eprintln!("[watch] warning: {e}");
                }
                return false;
            }
        };
        if ev.need_rescan() {
            ch.all = true;
            return true;
        }
        let gone = match ev.kind {
            EventKind::Access(_) => return false,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => true,
            _ => false,
        };
        // A folder's own modification (its mtime, when polling) says only that an entry
        // changed, and that entry has its own event.
        let modified = matches!(ev.kind, EventKind::Modify(_)) && !gone;
        let mut any = false;
        for p in &ev.paths {
            if gone {
                fs.forget(p);
            }
            if modified && p.is_dir() {
                continue;
            }
            if self.relevant(p) {
                ch.paths.insert(p.clone());
                any = true;
            }
        }
        any
    }

    /// Waits for relevant changes, then for them to settle (no new relevant change for
    /// `quiet`, at most about a second in all when changes never stop). None when
    /// cancelled.
    async fn next_changes(
        &self,
        rx: &mut mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
        fs: &mut Fs,
        cancel: &CancellationToken,
        quiet: Duration,
    ) -> Option<Changes> {
        let mut ch = Changes::default();
        // Changes made during the round are already queued: they start the next one.
        while ch.is_empty() {
            let ev = tokio::select! {
                biased;
                _ = cancel.cancelled() => return None,
                ev = rx.recv() => ev?,
            };
            self.absorb(ev, &mut ch, fs);
        }
        let deadline = Instant::now() + (quiet * 10).max(Duration::from_secs(1));
        let mut last = Instant::now();
        loop {
            let until = (last + quiet).min(deadline);
            if Instant::now() >= until {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep_until(until.into()) => break,
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        if self.absorb(ev, &mut ch, fs) {
                            last = Instant::now();
                        }
                    }
                    None => break,
                },
            }
        }
        Some(ch)
    }
}

fn same_dep(a: &WatchDep, b: &WatchDep) -> bool {
    match (a, b) {
        (WatchDep::Path(x), WatchDep::Path(y)) => x == y,
        _ => false,
    }
}

fn status_index(s: Status) -> usize {
    match s {
        Status::Passed => 0,
        Status::Failed => 1,
        Status::Timeout => 2,
        Status::Error => 3,
        Status::Skipped => 4,
    }
}

type FsEvent = notify::Result<notify::Event>;

/// The file-system watcher: kernel notifications, or polling.
struct Fs {
    watcher: Box<dyn Watcher + Send>,
    /// Some(interval) when polling.
    poll: Option<Duration>,
    /// What is watched, and whether recursively.
    watched: BTreeMap<PathBuf, bool>,
    /// Paths that could not be watched, said once.
    warned: HashSet<PathBuf>,
    tx: mpsc::UnboundedSender<FsEvent>,
}

fn handler(tx: mpsc::UnboundedSender<FsEvent>) -> impl notify::EventHandler {
    move |ev: FsEvent| {
        let _ = tx.send(ev);
    }
}

fn poller(
    interval: Duration,
    tx: mpsc::UnboundedSender<FsEvent>,
) -> notify::Result<Box<dyn Watcher + Send>> {
    // notify's poller keeps mtimes in whole seconds: without comparing contents, a save
    // within the same second as the previous one would go unnoticed.
    let cfg = notify::Config::default()
        .with_poll_interval(interval)
        .with_compare_contents(true);
    Ok(Box::new(notify::PollWatcher::new(handler(tx), cfg)?))
}

impl Fs {
    fn new(poll: Option<Duration>, tx: mpsc::UnboundedSender<FsEvent>) -> Result<Fs, String> {
        let (watcher, poll) = match poll {
            Some(i) => (
                poller(i, tx.clone()).map_err(|e| format!("cannot poll the file system: {e}"))?,
                Some(i),
            ),
            None => match notify::recommended_watcher(handler(tx.clone())) {
                Ok(w) => (Box::new(w) as Box<dyn Watcher + Send>, None),
                Err(e) => match limit_message(&e) {
                    Some(msg) => {
                        eprintln!(
                            "{msg}\n  falling back to polling every {}",
                            fmt_ms(FALLBACK_POLL)
                        );
                        (
                            poller(FALLBACK_POLL, tx.clone())
                                .map_err(|e| format!("cannot poll the file system: {e}"))?,
                            Some(FALLBACK_POLL),
                        )
                    }
                    None => return Err(format!("cannot watch the file system: {e}")),
                },
            },
        };
        Ok(Fs {
            watcher,
            poll,
            watched: BTreeMap::new(),
            warned: HashSet::new(),
            tx,
        })
    }

    /// Watches exactly `want` (folders, recursively or not).
    fn set(&mut self, want: &BTreeMap<PathBuf, bool>) {
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|(p, r)| want.get(*p) != Some(*r))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            let _ = self.watcher.unwatch(&p);
            self.watched.remove(&p);
        }
        for (p, rec) in want {
            if self.watched.contains_key(p) {
                continue;
            }
            let mode = if *rec {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match self.watcher.watch(p, mode) {
                Ok(()) => {
                    self.watched.insert(p.clone(), *rec);
                }
                Err(e) => {
                    if let Some(msg) = limit_message(&e) {
                        if self.poll.is_none() {
                            self.fall_back_to_polling(&msg, want);
                            return;
                        }
                    }
                    // Gone in between (it is watched through its folder next round), or
                    // unreadable: say so, once per path.
                    if !matches!(e.kind, notify::ErrorKind::PathNotFound)
                        && self.warned.insert(p.clone())
                    {
                        eprintln!("[watch] warning: cannot watch {}: {e}", p.display());
                    }
                }
            }
        }
    }

    /// The kernel refused more watches: say why and how to fix it, then poll instead.
    fn fall_back_to_polling(&mut self, msg: &str, want: &BTreeMap<PathBuf, bool>) {
        if self.poll.is_some() {
            return;
        }
        eprintln!(
            "{msg}\n  falling back to polling every {} (--poll chooses that from the start)",
            fmt_ms(FALLBACK_POLL)
        );
        match poller(FALLBACK_POLL, self.tx.clone()) {
            Ok(w) => {
                self.watcher = w;
                self.poll = Some(FALLBACK_POLL);
                self.watched.clear();
                self.set(want);
            }
            Err(e) => eprintln!("[watch] error: cannot poll the file system either: {e}"),
        }
    }

    /// A watched folder (or one above it) went away: watch it again at the next
    /// [`Fs::set`] (through its parent while it does not exist).
    fn forget(&mut self, p: &Path) {
        let gone: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|w| w.starts_with(p))
            .cloned()
            .collect();
        for w in gone {
            let _ = self.watcher.unwatch(&w);
            self.watched.remove(&w);
        }
    }
}

fn fmt_ms(d: Duration) -> String {
    llm_sandbox::spec::units::format_duration(d)
}

/// The actionable message for the kernel's watch limits (errno 28 ENOSPC: too many
/// watches; errno 24 EMFILE: too many inotify instances or open files); None for other
/// errors.
fn limit_message(e: &notify::Error) -> Option<String> {
    let errno = match &e.kind {
        notify::ErrorKind::MaxFilesWatch => libc::ENOSPC,
        notify::ErrorKind::Io(io) => match io.raw_os_error() {
            Some(c) if c == libc::ENOSPC || c == libc::EMFILE || c == libc::ENFILE => c,
            _ => return None,
        },
        _ => return None,
    };
    let sysctl = |k: &str| {
        std::fs::read_to_string(format!("/proc/sys/fs/inotify/{k}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    Some(if errno == libc::ENOSPC {
        format!(
            "[watch] error: the kernel's limit of file watches is reached (errno 28, ENOSPC; fs.inotify.max_user_watches = {}), so not every folder can be watched\n  help: raise it: `sudo sysctl fs.inotify.max_user_watches=524288` (to keep it across reboots: `echo fs.inotify.max_user_watches=524288 | sudo tee /etc/sysctl.d/90-inotify.conf`), or watch less: narrower paths, a .dockerignore for a large build context, fewer other programs watching files",
            sysctl("max_user_watches")
        )
    } else {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft.to_string())
            .unwrap_or_else(|_| "?".into());
        format!(
            "[watch] error: too many open files or file watchers (errno {errno}, {}; fs.inotify.max_user_instances = {}, open-file limit {nofile})\n  help: raise them: `sudo sysctl fs.inotify.max_user_instances=1024` (to keep it: `echo fs.inotify.max_user_instances=1024 | sudo tee /etc/sysctl.d/90-inotify.conf`) and `ulimit -n 65536`, or close other programs that watch files (editors, other watchers)",
            if errno == libc::EMFILE { "EMFILE" } else { "ENFILE" },
            sysctl("max_user_instances")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A watcher that refuses every watch the way inotify does at its limit, recording calls.
    struct Full(Arc<Mutex<Vec<PathBuf>>>);

    impl Watcher for Full {
        fn new<F: notify::EventHandler>(_: F, _: notify::Config) -> notify::Result<Self> {
            Ok(Full(Default::default()))
        }
        fn watch(&mut self, p: &Path, _: RecursiveMode) -> notify::Result<()> {
            self.0.lock().unwrap().push(p.to_path_buf());
            Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch))
        }
        fn unwatch(&mut self, _: &Path) -> notify::Result<()> {
            Ok(())
        }
        fn kind() -> notify::WatcherKind {
            notify::WatcherKind::NullWatcher
        }
    }

    #[test]
    fn watch_limits_fall_back_to_polling() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let calls = Arc::new(Mutex::new(vec![]));
        let mut fs = Fs {
            watcher: Box::new(Full(calls.clone())),
            poll: None,
            watched: BTreeMap::new(),
            warned: HashSet::new(),
            tx,
        };
        let d = tempfile::tempdir().unwrap();
        let want: BTreeMap<PathBuf, bool> = [
            (d.path().to_path_buf(), false),
            (std::env::temp_dir(), false),
        ]
        .into_iter()
        .collect();
        fs.set(&want);
        assert_eq!(calls.lock().unwrap().len(), 1, "stops at the first refusal");
        assert_eq!(fs.poll, Some(FALLBACK_POLL));
        assert_eq!(fs.watched.len(), 2, "everything watched by polling");
    }

    #[test]
    fn limit_messages_say_what_to_do() {
        let m = limit_message(&notify::Error::new(notify::ErrorKind::MaxFilesWatch)).unwrap();
        assert!(m.contains("errno 28"), "{m}");
        assert!(m.contains("fs.inotify.max_user_watches"), "{m}");
        let m = limit_message(&notify::Error::io(std::io::Error::from_raw_os_error(
            libc::EMFILE,
        )))
        .unwrap();
        assert!(m.contains("errno 24"), "{m}");
        assert!(
            m.contains("max_user_instances") && m.contains("ulimit -n"),
            "{m}"
        );
        assert!(limit_message(&notify::Error::path_not_found()).is_none());
        assert!(
            limit_message(&notify::Error::io(std::io::Error::from_raw_os_error(
                libc::EACCES
            )))
            .is_none()
        );
    }
}
