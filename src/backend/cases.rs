//! Jobs with test cases (README, "Test cases"), written once above every backend: the
//! program is built once — the job's setup and compile steps, run as a job of its own whose
//! `/sandbox` is copied out — then every case is a job of its own that runs only the run
//! step, in a fresh sandbox, with the built files as its inputs, the case's stdin, args and
//! checks, and the job's timeout and limits. What isolates one job from the next (a fresh
//! native sandbox, a warm container proven clean) isolates one case from the next.

use super::{sanitize_name, Backend, RunCtx};
use crate::lang::JudgeWrapper;
use crate::plan::job::{Case, Checker, InputFile, Part, PlannedJob, ResolvedExpect};
use crate::report::model::{CaseReport, CheckResult, JobReport, Phase, Status};
use crate::spec::types::{BackendKind, CasesStop};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// A scope's built checkers, by what they are made from: their files (as a case's inputs
/// are), or why the checker could not be built.
pub(crate) type BuiltCheckers =
    tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Result<Vec<InputFile>, String>>>>>;

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
    // The job's checker and interactor, each built once.
    let mut built = [None, None];
    for (slot, (role, h)) in built
        .iter_mut()
        .zip([("checker", &job.checker), ("interactor", &job.interactor)])
    {
        let Some(h) = h else { continue };
        match checker_files(backend, job, h, role, ctx).await {
            Ok(files) => *slot = Some((h, files)),
            Err(why) => {
                let mut r = super::error_report(job, Phase::Prepare, why);
                r.cases_total = Some(job.cases.len());
                r.cases_passed = Some(0);
                r.duration_ms = started.elapsed().as_millis() as u64;
                return r;
            }
        }
    }
    let [checker, interactor] = built
        .each_ref()
        .map(|b| b.as_ref().map(|(h, files)| (*h, files.as_slice())));
    // The cases, in order; as many at once as the backend has free job slots (this job's
    // own, and any other job does not use right now).
    let mut results: Vec<Option<JobReport>> = vec![None; job.cases.len()];
    let mut running = futures_util::stream::FuturesUnordered::new();
    let mut next = 0;
    let mut stopped = false;
    loop {
        while next < job.cases.len() && !stopped && !ctx.cancel.is_cancelled() {
            let extra = if running.is_empty() {
                None
            } else {
                let n = slots_of(job, ctx.parallelism);
                match ctx
                    .slots
                    .as_ref()
                    .map(|s| s.clone().try_acquire_many_owned(n))
                {
                    Some(Ok(p)) => Some(p),
                    _ => break,
                }
            };
            let (i, c) = (next, &job.cases[next]);
            next += 1;
            let judged = checker.is_some() || interactor.is_some();
            let case_job = case_job(job, c, part, &files, judged);
            running.push(async move {
                let (cj, answer) = case_job;
                let answer = answer.as_deref();
                let dir = ctx.run_dir.join(format!("check-{}-{i}", job.id));
                // The program (with its interactor), then the checker of what it wrote
                // (with an interactor: of what the interactor wrote to its OUTPUT file).
                let (mut r, output) = match interactor {
                    Some((it, files)) => {
                        let keep = checker.is_some();
                        interact(backend, job, it, files, c, &cj, answer, keep, &dir, ctx).await
                    }
                    None => (backend.run_job(&cj, ctx, None).await, None),
                };
                if let (Some((ch, files)), Status::Passed) = (checker, r.status) {
                    let output = output.unwrap_or_else(|| r.stdout.clone());
                    judge(
                        backend, job, ch, files, c, &output, answer, &dir, &mut r, ctx,
                    )
                    .await;
                }
                if judged {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                drop(extra);
                (i, r)
            });
        }
        let Some((i, r)) = futures_util::StreamExt::next(&mut running).await else {
            break;
        };
        if r.status != Status::Passed && job.cases_stop == CasesStop::FirstFailure {
            stopped = true;
        }
        results[i] = Some(r);
    }
    // In order, up to the first gap (a case not run) or, with `first-failure`, the first
    // case that did not pass: the same report whichever case ended first.
    let mut ran: Vec<JobReport> = Vec::with_capacity(job.cases.len());
    for r in results {
        let Some(r) = r else { break };
        let failed = r.status != Status::Passed;
        ran.push(r);
        if failed && job.cases_stop == CasesStop::FirstFailure {
            break;
        }
    }
    report(job, ran, started)
}

/// How many of its backend's job slots (`-j`) a job holds while it runs: a case of an
/// interactive job runs two sandboxes at once (the program and its interactor), any other
/// job one at a time (a checker runs after its case's program ended). Never more than the
/// backend has (`slots`): with `-j 1` an interactive job still runs, over by one.
pub fn slots_of(job: &PlannedJob, slots: usize) -> u32 {
    let at_once = if job.interactor.is_some() && !job.cases.is_empty() {
        2
    } else {
        1
    };
    at_once.min(slots.max(1)) as u32
}

/// A case as a job of its own (built files as inputs, only its run step when built), and
/// its expected stdout when a checker judges it (then it is the ANSWER file, not compared).
fn case_job(
    job: &PlannedJob,
    c: &Case,
    part: Part,
    files: &[InputFile],
    checked: bool,
) -> (PlannedJob, Option<String>) {
    let mut cj = job.clone();
    cj.cases = vec![];
    cj.part = part;
    cj.name = format!("{}/{}", job.name, c.name);
    cj.stdin = c.stdin.clone().or_else(|| job.stdin.clone());
    if let Some(a) = &c.args {
        cj.args = a.clone();
    }
    cj.expect = job.expect.with_case(&c.expect);
    let answer = if checked {
        cj.expect.stdout.take()
    } else {
        None
    };
    cj.files = files.to_vec();
    (cj, answer)
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
    let r = backend.run_job(&b, &bctx, None).await;
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
    if let Some(i) = first_bad {
        r.message = Some(format!("case {}: {}", job.cases[i].name, ran[i].why()));
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

/// The files of the checker or interactor (`role`), built once per scope (compiled: its
/// build; interpreted: its source).
async fn checker_files(
    backend: &dyn Backend,
    job: &PlannedJob,
    ch: &Checker,
    role: &str,
    ctx: &RunCtx,
) -> Result<Vec<InputFile>, String> {
    use sha2::Digest;
    let cj = checker_job(job, ch, role);
    let key = format!(
        "{}|{:?}|{}|{:x}",
        job.backend,
        job.backends.docker.as_ref().and_then(|d| d.host.clone()),
        ch.lang,
        sha2::Sha256::digest(ch.code.as_bytes())
    );
    let cell = ctx
        .scope
        .checkers
        .lock()
        .await
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_init(|| async {
        if !needs_build(&cj) {
            let dir = ctx.run_dir.join(format!("{role}-{}", job.id));
            let src = dir.join("source");
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&src, &ch.code))
                .map_err(|e| format!("cannot write the {role}'s program: {e}"))?;
            // With a judge wrapper that runs it, the wrapper is the source file
            // (`checker_job`); one that the runtime loads first goes beside it.
            let wrapper = crate::lang::spec(ch.lang).judge_wrapper.as_ref();
            let dest = match wrapper {
                Some(JudgeWrapper::Runs { program, .. }) => program.to_string(),
                _ => crate::lang::source_file(ch.lang, &ch.code),
            };
            let mut files = vec![InputFile { src, dest }];
            if let Some(JudgeWrapper::Preloads { name, source, .. }) = wrapper {
                let hook = dir.join(name);
                std::fs::write(&hook, source)
                    .map_err(|e| format!("cannot write the {role}'s {name}: {e}"))?;
                files.push(InputFile {
                    src: hook,
                    dest: name.to_string(),
                });
            }
            return Ok(files);
        }
        build(backend, &cj, ctx).await.map_err(|r| {
            format!(
                "the {role} ({}) could not be built: {}{}",
                ch.lang,
                r.message.unwrap_or_default(),
                if r.stderr.is_empty() {
                    String::new()
                } else {
                    format!("\n{}", r.stderr)
                }
            )
        })
    })
    .await
    .clone()
}

/// The checker or interactor (`role`) as a job of `job`'s backend: its own language (and
/// default image), the job's limits and timeout.
fn checker_job(job: &PlannedJob, ch: &Checker, role: &str) -> PlannedJob {
    // In a language whose uncaught errors exit 1, a crash is made an `error` (the checker
    // failed), not a wrong answer: its wrapper runs the program (written under another
    // name: `checker_files`), or its runtime loads a hook first.
    let wrapper = crate::lang::spec(ch.lang).judge_wrapper.as_ref();
    let code = match wrapper {
        Some(JudgeWrapper::Runs { source, .. }) => source.to_string(),
        _ => ch.code.clone(),
    };
    let mut cj = PlannedJob::adhoc(ch.lang, code, vec![], job.timeout, false);
    if let Some(JudgeWrapper::Preloads { env, value, .. }) = wrapper {
        cj.env.push((env.to_string(), value.to_string()));
    }
    cj.id = job.id;
    cj.name = format!("{}/{role}", job.name);
    cj.file = job.file.clone();
    cj.backend = job.backend;
    cj.backends = job.backends.clone();
    cj.limits = job.limits.clone();
    cj
}

/// One case of an interactive problem: the program (`cj`) and `interactor INPUT OUTPUT
/// [ANSWER]` (INPUT the case's input, ANSWER its expected output when it has one) run at
/// once, each in a sandbox of its own, the program's stdout the interactor's stdin and the
/// interactor's stdout the program's stdin (the runner carries the bytes as they come).
/// The interactor's exit code decides (testlib's convention, as a checker's): 1 wrong
/// answer and 2 presentation error: `failed` (a program that exited with an error after the
/// interactor stopped talking to it too), unless the program was killed (its timeout, memory
/// limit or a signal: that stays its verdict); 0: the program's own result (its exit code,
/// time and memory); anything else, or no end in time while the program ended: `error`,
/// the interactor failed.
#[allow(clippy::too_many_arguments)]
async fn interact(
    backend: &dyn Backend,
    job: &PlannedJob,
    it: &Checker,
    files: &[InputFile],
    case: &Case,
    cj: &PlannedJob,
    answer: Option<&str>,
    keep_output: bool,
    dir: &Path,
    ctx: &RunCtx,
) -> (JobReport, Option<String>) {
    let mut named = vec![("input.txt", input_of(job, case))];
    let mut args = vec!["input.txt", "output.txt"];
    if let Some(a) = answer {
        named.push(("answer.txt", a));
        args.push("answer.txt");
    }
    let mut ij = match helper_job(job, it, "interactor", files, case, &named, &args, dir) {
        Ok(j) => j,
        Err(why) => return (super::error_report(cj, Phase::Prepare, why), None),
    };
    // Time to decide after the program's own timeout ended it.
    ij.timeout = job.timeout + std::time::Duration::from_secs(1);
    // What it writes to OUTPUT, for the checker.
    let ictx = RunCtx {
        artifacts_root: dir.join("interactor"),
        ..ctx.clone()
    };
    if keep_output {
        ij.artifacts = vec!["output.txt".into()];
    }
    let mut pj = cj.clone();
    pj.stdin = None;
    let (to_program, program_in) = tokio::sync::mpsc::channel(crate::stream::CHANNEL_DEPTH);
    let (to_interactor, interactor_in) = tokio::sync::mpsc::channel(crate::stream::CHANNEL_DEPTH);
    let (program_out, from_program) = crate::stream::channel();
    let (interactor_out, from_interactor) = crate::stream::channel();
    let (mut r, i, carried, _) = tokio::join!(
        backend.run_job(
            &pj,
            ctx,
            Some(super::Wire {
                stdin: program_in,
                output: program_out
            })
        ),
        backend.run_job(
            &ij,
            &ictx,
            Some(super::Wire {
                stdin: interactor_in,
                output: interactor_out
            })
        ),
        carry(from_program, to_interactor),
        carry(from_interactor, to_program),
    );
    r.name = cj.name.clone();
    if r.status == Status::Error {
        return (r, None);
    }
    // Both waited for the other (or the program was too slow): the program's timeout.
    if i.status == Status::Timeout && r.status == Status::Timeout {
        return (flush_hint(r, carried), None);
    }
    let output = keep_output.then(|| {
        i.artifacts
            .iter()
            .find(|a| Path::new(a).file_name() == Some("output.txt".as_ref()))
            .and_then(|a| std::fs::read_to_string(a).ok())
            .unwrap_or_default()
    });
    // A program killed (time, memory, a signal) keeps its own verdict: what the
    // interactor said of the output it cut short is a consequence.
    let killed = r.status == Status::Timeout || r.signal.is_some();
    match said(&i, "interactor", "the interactor accepted", " (interactor)") {
        Ok(verdict) => record(&mut r, "interactor", verdict, !killed),
        Err(why) => {
            r.status = Status::Error;
            r.message = Some(why);
        }
    }
    (flush_hint(r, carried), output)
}

/// What the checker or interactor (`role`; `h`, its report) said, testlib's convention:
/// exit 0 accepted (`accepted`, and its stderr), 1 wrong answer and 2 presentation error
/// (its stderr the reason, `tag` after the kind). Err: it failed (another exit, a timeout,
/// an error), the message saying how.
fn said(
    h: &JobReport,
    role: &str,
    accepted: &str,
    tag: &str,
) -> Result<Result<String, String>, String> {
    let words = h.stderr.trim().to_string();
    match (h.status, h.exit_code) {
        (Status::Passed | Status::Failed, Some(0)) if words.is_empty() => {
            Ok(Ok(accepted.to_string()))
        }
        (Status::Passed | Status::Failed, Some(0)) => Ok(Ok(format!("{accepted}: {words}"))),
        (Status::Failed, Some(1)) => Ok(Err(format!("wrong answer{tag}: {words}"))),
        (Status::Failed, Some(2)) => Ok(Err(format!("presentation error{tag}: {words}"))),
        _ => Err(format!(
            "the {role} failed ({}): {}",
            h.exit_code
                .map(|e| format!("exit code {e}"))
                .unwrap_or_else(|| h.status.as_str().to_string()),
            h.message
                .clone()
                .filter(|_| words.is_empty())
                .unwrap_or(words)
        )),
    }
}

/// A checker's or interactor's (`kind`) verdict as a check of the case; a rejection
/// fails the case when it `decides`.
fn record(r: &mut JobReport, kind: &str, verdict: Result<String, String>, decides: bool) {
    let (passed, message) = match verdict {
        Ok(m) => (true, m),
        Err(m) => (false, m),
    };
    r.checks.push(CheckResult {
        kind: kind.into(),
        passed,
        message: message.clone(),
        expected: None,
        actual: None,
    });
    if !passed && decides {
        r.status = Status::Failed;
        r.message = Some(message);
    }
}

/// A case's input (its stdin, else the job's): the INPUT file of its checker or
/// interactor.
fn input_of<'a>(job: &'a PlannedJob, case: &'a Case) -> &'a str {
    case.stdin.as_deref().or(job.stdin.as_deref()).unwrap_or("")
}

/// The checker's or interactor's (`role`) job for one case: its built `files`, the
/// `named` files (written into `dir`) beside them, run with `args`. Err: a file could not
/// be written.
#[allow(clippy::too_many_arguments)]
fn helper_job(
    job: &PlannedJob,
    ch: &Checker,
    role: &str,
    files: &[InputFile],
    case: &Case,
    named: &[(&str, &str)],
    args: &[&str],
    dir: &Path,
) -> Result<PlannedJob, String> {
    let mut hj = checker_job(job, ch, role);
    hj.name = format!("{}/{}/{role}", job.name, case.name);
    hj.part = if needs_build(&hj) {
        Part::Run
    } else {
        Part::All
    };
    hj.files = files.to_vec();
    for (name, text) in named {
        let src = dir.join(name);
        std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&src, text))
            .map_err(|e| format!("cannot write the {role}'s {name}: {e}"))?;
        hj.files.push(InputFile {
            src,
            dest: name.to_string(),
        });
    }
    hj.args = args.iter().map(|a| a.to_string()).collect();
    Ok(hj)
}

/// A program of an interactive case that timed out having written nothing the interactor
/// got: most likely its output waited in a buffer (its stdout is a pipe), which it says.
fn flush_hint(mut r: JobReport, carried: u64) -> JobReport {
    if r.status == Status::Timeout && carried == 0 {
        let m = r.message.take().unwrap_or_default();
        r.message = Some(format!("{m}; the interactor got nothing from the program: an interactive program must flush its output after each line (its stdout is a pipe, not a terminal)"));
    }
    r
}

/// Carries one program's stdout, as it comes, to the other's stdin; the end of the one
/// (its empty chunk: every process of it closed its stdout, or the job ended) is the end
/// of the other. Reads on after the other stopped reading (so that the writer is never
/// blocked by a reader that is gone). Returns how many bytes it carried.
async fn carry(
    mut from: tokio::sync::mpsc::Receiver<crate::stream::OutputChunk>,
    to: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> u64 {
    let mut to = Some(to);
    let mut carried = 0;
    while let Some(c) = from.recv().await {
        if c.stream != crate::stream::StdStream::Stdout {
            continue;
        }
        if c.data.is_empty() {
            to = None;
        }
        if let Some(t) = &to {
            let n = c.data.len() as u64;
            if t.send(c.data).await.is_err() {
                to = None;
            } else {
                carried += n;
            }
        }
    }
    carried
}

/// Runs the checker on one case that ran (`r`, passed so far): `checker INPUT OUTPUT
/// ANSWER` in a sandbox of its own (OUTPUT: `output`, the program's stdout or what its
/// interactor wrote); its verdict becomes a check of the case (exit 0
/// accepted; 1 wrong answer and 2 presentation error: `failed`, the checker's stderr the
/// message; anything else: `error`, the checker failed).
#[allow(clippy::too_many_arguments)]
async fn judge(
    backend: &dyn Backend,
    job: &PlannedJob,
    ch: &Checker,
    files: &[InputFile],
    case: &Case,
    output: &str,
    answer: Option<&str>,
    dir: &Path,
    r: &mut JobReport,
    ctx: &RunCtx,
) {
    const NAMES: [&str; 3] = ["input.txt", "output.txt", "answer.txt"];
    let texts = [input_of(job, case), output, answer.unwrap_or("")];
    let named: Vec<(&str, &str)> = NAMES.into_iter().zip(texts).collect();
    let cj = match helper_job(job, ch, "checker", files, case, &named, &NAMES, dir) {
        Ok(j) => j,
        Err(why) => {
            r.status = Status::Error;
            r.message = Some(why);
            return;
        }
    };
    let c = backend.run_job(&cj, ctx, None).await;
    match said(&c, "checker", "the checker accepted the output", "") {
        Ok(verdict) => record(r, "checker", verdict, true),
        Err(why) => {
            r.status = Status::Error;
            r.message = Some(why);
        }
    }
}
