//! clap definitions and the commands. The only place that knows about terminals and exit
//! codes.

// The print macros of this module and its children ignore a closed stream: after
// `llm-sandbox run ... 2>&1 | head` ends `head`, the run still finishes (reports written,
// sandboxes removed) and exits with its own code; std's macros panic on the failed write.
// `plan`, `schema` and `doctor` end quietly on SIGPIPE instead (`quiet_on_closed_stdout`).
macro_rules! write_or_drop {
    ($stream:expr, $($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(&mut $stream, format_args!($($arg)*));
    }};
}
macro_rules! eprintln {
    () => { write_or_drop!(std::io::stderr(), "\n") };
    ($($arg:tt)*) => { write_or_drop!(std::io::stderr(), "{}\n", format_args!($($arg)*)) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { write_or_drop!(std::io::stderr(), $($arg)*) };
}
macro_rules! println {
    () => { write_or_drop!(std::io::stdout(), "\n") };
    ($($arg:tt)*) => { write_or_drop!(std::io::stdout(), "{}\n", format_args!($($arg)*)) };
}
macro_rules! print {
    ($($arg:tt)*) => { write_or_drop!(std::io::stdout(), $($arg)*) };
}

mod doctor;
mod watch;

use clap::{Parser, Subcommand, ValueEnum};
use llm_sandbox::exit_codes;
use llm_sandbox::plan::{Plan, PlanOptions, PlannedJob};
use llm_sandbox::report::model::Event;
use llm_sandbox::report::terminal::TerminalReporter;
use llm_sandbox::report::{Jobs, Streamed};
use llm_sandbox::run::{RunDir, RunOptions};
use llm_sandbox::spec::types::{BackendKind, Lang};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "llm-sandbox",
    version,
    about = "Run untrusted (LLM-written) code in sandboxes, driven by TOML/YAML job files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct SelectArgs {
    /// Job files or directories (default: ./jobs).
    paths: Vec<PathBuf>,
    /// Override every job's backend.
    #[arg(long, value_parser = parse_backend)]
    backend: Option<BackendKind>,
    /// Select jobs: a name glob, or tag:NAME (repeatable; any match selects); !GLOB or
    /// !tag:NAME excludes. A selection with no job is an error.
    #[arg(long = "filter", value_name = "EXPR")]
    filters: Vec<String>,
    /// Only shard I of N of the selected jobs (1-based; by a hash of the job name, the
    /// same on every machine): N machines with 1/N .. N/N run each job once.
    #[arg(long, value_name = "I/N", value_parser = llm_sandbox::plan::Shard::parse)]
    shard: Option<llm_sandbox::plan::Shard>,
    /// Override a template variable (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
}

/// How jobs run and what is reported (`run`, and every round of `watch`).
#[derive(clap::Args, Debug, Clone, Default)]
struct RunArgs {
    /// Parallel jobs (default: the number of cores).
    #[arg(short = 'j', long = "jobs")]
    jobs: Option<usize>,
    #[command(flatten)]
    reports: Dests,
    /// Artifacts directory (default .llm-sandbox/artifacts).
    #[arg(long, value_name = "DIR")]
    artifacts: Option<PathBuf>,
    /// pass@k values over groups, e.g. 1,10.
    #[arg(long = "pass-at", value_delimiter = ',', value_parser = parse_k)]
    pass_at: Option<Vec<usize>>,
    /// Stop scheduling after the first job that does not pass.
    #[arg(long)]
    fail_fast: bool,
    /// Run a job that fails, times out or errs again, up to N more times; one that passes
    /// on a retry is `passed` and `flaky`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,
    /// Continue the last interrupted run of the same job set: jobs with a result in its
    /// journal (.llm-sandbox/journal/) are not run again, and are in the reports.
    #[arg(long)]
    resume: bool,
    /// Only the jobs that did not pass in the last run (.llm-sandbox/last-report.json), or
    /// in REPORT (`--rerun-failed=REPORT`, a JSON report).
    #[arg(long, value_name = "REPORT", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    rerun_failed: Option<String>,
    /// Container backends: one new container per job instead of warm containers
    /// (each proven clean between jobs).
    #[arg(long)]
    fresh_containers: bool,
    /// A backend's own concurrency, e.g. `docker=4` (repeatable; default `-j`).
    #[arg(long = "backend-jobs", value_name = "BACKEND=N", value_delimiter = ',', value_parser = parse_backend_jobs)]
    backend_jobs: Vec<(BackendKind, usize)>,
    /// Print only failures and the summary.
    #[arg(short, long)]
    quiet: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl RunArgs {
    /// What clap cannot check: one report at most on stdout.
    fn check(&self) -> Result<(), String> {
        self.reports.one_on_stdout()
    }

    fn run_options(&self) -> RunOptions {
        RunOptions {
            jobs: self
                .jobs
                .unwrap_or_else(llm_sandbox::run::default_parallelism)
                .max(1),
            fail_fast: self.fail_fast,
            artifacts_dir: self.artifacts_dir(),
            fresh_containers: self.fresh_containers,
            backend_jobs: self.backend_jobs.clone(),
            retries: self.retries,
        }
    }

    fn artifacts_dir(&self) -> PathBuf {
        self.artifacts
            .clone()
            .unwrap_or_else(|| PathBuf::from(".llm-sandbox/artifacts"))
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run jobs and report.
    Run {
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Parse, check and render every job; runs nothing.
    Validate {
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Show the expanded jobs and their batches.
    Plan {
        #[command(flatten)]
        select: SelectArgs,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Parallel jobs the plan assumes (default: the number of cores).
        #[arg(short = 'j', long = "jobs")]
        jobs: Option<usize>,
        /// A backend's own concurrency, e.g. `docker=4` (repeatable; default `-j`).
        #[arg(long = "backend-jobs", value_name = "BACKEND=N", value_delimiter = ',', value_parser = parse_backend_jobs)]
        backend_jobs: Vec<(BackendKind, usize)>,
    },
    /// Run, then rerun exactly the jobs whose inputs change.
    Watch {
        #[command(flatten)]
        select: SelectArgs,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        watch: watch::WatchArgs,
    },
    /// Run one program; its output streams as it comes.
    Exec {
        /// Language of the program (a name or an alias: py, js, ts, c++...); default: from
        /// FILE's extension.
        #[arg(long, value_parser = parse_lang)]
        lang: Option<Lang>,
        /// Where it runs: native (default), docker, podman or kubernetes.
        #[arg(long, value_parser = parse_backend)]
        backend: Option<BackendKind>,
        /// The program's code.
        #[arg(short = 'c', long = "code", conflicts_with = "file")]
        code: Option<String>,
        /// A file with the program, or - for standard input.
        file: Option<PathBuf>,
        /// Wall-clock limit (e.g. 10s).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// Allow network access.
        #[arg(long)]
        network: bool,
        /// Arguments of the program (after --).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// One report from the JSON reports of a job set's shards (`run --shard I/N`): jobs
    /// joined, summary and pass@k recomputed from the jobs.
    Merge {
        /// The shards' JSON reports (`run --shard I/N --json FILE`).
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Where the merged report goes.
        #[command(flatten)]
        to: Dests,
        /// pass@k values (default: those of the merged reports).
        #[arg(long = "pass-at", value_delimiter = ',', value_parser = parse_k)]
        pass_at: Option<Vec<usize>>,
    },
    /// Print a JSON Schema.
    Schema {
        #[arg(value_enum, default_value_t = SchemaKind::Job)]
        kind: SchemaKind,
    },
    /// Which backends and languages work here, and why not.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Model Context Protocol server on stdio: tools run_code and list_languages.
    Mcp(llm_sandbox::mcp::McpArgs),
    /// Print a shell completion script (e.g. `llm-sandbox completions bash >
    /// ~/.local/share/bash-completion/completions/llm-sandbox`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq)]
enum Format {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum SchemaKind {
    Job,
    Report,
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    BackendKind::parse(s)
        .ok_or_else(|| format!("unknown backend {s:?}; valid: native, docker, podman, kubernetes"))
}

fn parse_lang(s: &str) -> Result<Lang, String> {
    llm_sandbox::lang::parse_name(s).ok_or_else(|| {
        format!(
            "unknown language {s:?}; valid: {}",
            Lang::ALL
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if k.is_empty() {
        return Err(format!("empty variable name in {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_backend_jobs(s: &str) -> Result<(BackendKind, usize), String> {
    let (b, n) = s
        .split_once('=')
        .ok_or_else(|| format!("expected BACKEND=N (e.g. docker=4), got {s:?}"))?;
    let backend = BackendKind::parse(b.trim()).ok_or_else(|| {
        format!(
            "unknown backend {:?} (one of native, docker, podman, kubernetes)",
            b.trim()
        )
    })?;
    match n.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok((backend, n)),
        _ => Err(format!(
            "{b}: the number of jobs must be a positive integer, got {n:?}"
        )),
    }
}

fn parse_k(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(k) if k >= 1 => Ok(k),
        _ => Err(format!("pass@k needs positive integers, got {s:?}")),
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    llm_sandbox::spec::units::parse_duration(s)
}

/// Error rendering: wrapped to the terminal on a TTY; never wrapped when stderr is a file or a
/// pipe, so a path or message stays greppable on one line in CI logs.
fn install_error_hook() {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let _ = miette::set_hook(Box::new(move |_| {
        let opts = miette::MietteHandlerOpts::new();
        let opts = if tty {
            opts
        } else {
            opts.wrap_lines(false).color(false).unicode(true)
        };
        Box::new(opts.build())
    }));
}

/// Diagnostics on stderr when `LLM_SANDBOX_LOG` (or `RUST_LOG`) asks for them, e.g.
/// `LLM_SANDBOX_LOG=llm_sandbox=debug`.
fn install_logging() {
    let filter = std::env::var("LLM_SANDBOX_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok();
    if let Some(f) = filter {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .with_writer(std::io::stderr)
            // A closed stderr (`2>&1 | head`) must not panic the task that logged: the
            // subscriber would report its failed write with `eprint!`, which panics.
            .log_internal_errors(false)
            .try_init();
    }
}

pub fn main() -> i32 {
    install_error_hook();
    install_logging();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit_codes::BAD_INPUT
            } else {
                exit_codes::OK
            };
            let _ = e.print();
            return code;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit_codes::JOBS_FAILED;
        }
    };
    rt.block_on(dispatch(cli.command))
}

async fn dispatch(cmd: Command) -> i32 {
    match cmd {
        Command::Run { select, run: args } => {
            if let Err(e) = args.check() {
                eprintln!("error: {e}");
                return exit_codes::BAD_INPUT;
            }
            let Some(mut plan) = load_plan(&select) else {
                return exit_codes::BAD_INPUT;
            };
            if let Some(from) = &args.rerun_failed {
                match only_failed(&mut plan, from) {
                    Ok(0) => return exit_codes::OK,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        return exit_codes::BAD_INPUT;
                    }
                }
            }
            run(plan, &args).await
        }
        Command::Validate { select } => {
            let Some(plan) = load_plan(&select) else {
                return exit_codes::BAD_INPUT;
            };
            eprintln!(
                "{} job file(s), {} job(s) valid{}",
                plan.files.len(),
                plan.total_before_filter,
                if plan.jobs.len() != plan.total_before_filter {
                    format!(" ({} selected)", plan.jobs.len())
                } else {
                    String::new()
                }
            );
            exit_codes::OK
        }
        Command::Plan {
            select,
            format,
            jobs,
            backend_jobs,
        } => {
            let Some(plan) = load_plan(&select) else {
                return exit_codes::BAD_INPUT;
            };
            let opts = RunOptions {
                jobs: jobs
                    .unwrap_or_else(llm_sandbox::run::default_parallelism)
                    .max(1),
                backend_jobs,
                ..RunOptions::default()
            };
            quiet_on_closed_stdout();
            print_plan(&plan, format, &opts);
            exit_codes::OK
        }
        Command::Watch {
            select,
            run: args,
            watch: w,
        } => {
            if let Err(e) = args.check() {
                eprintln!("error: {e}");
                return exit_codes::BAD_INPUT;
            }
            watch::watch(select, args, w).await
        }
        Command::Mcp(args) => llm_sandbox::mcp::serve(args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            quiet_on_closed_stdout();
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "llm-sandbox",
                &mut std::io::stdout(),
            );
            exit_codes::OK
        }
        Command::Exec {
            lang,
            backend,
            code,
            file,
            timeout,
            network,
            args,
        } => exec(lang, backend, code, file, timeout, network, args).await,
        Command::Merge {
            reports,
            to,
            pass_at,
        } => merge(&reports, &to, pass_at),
        Command::Schema { kind } => {
            let v = match kind {
                SchemaKind::Job => llm_sandbox::schema::job_schema(),
                SchemaKind::Report => llm_sandbox::schema::report_schema(),
            };
            quiet_on_closed_stdout();
            print!("{}", llm_sandbox::schema::to_pretty(&v));
            exit_codes::OK
        }
        Command::Doctor { json } => doctor::run(json),
    }
}

/// For commands that only print (`plan`, `schema`, `doctor`'s report): a closed stdout
/// (`llm-sandbox plan | head`) ends the process quietly, as for any Unix filter, instead
/// of a panic in `println!`. Not for commands that run sandboxes: there a program closing
/// its stdin must not kill the runner.
pub(crate) fn quiet_on_closed_stdout() {
    // SAFETY: restoring the default disposition of one signal; no handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn load_plan(select: &SelectArgs) -> Option<Plan> {
    let paths = if select.paths.is_empty() {
        vec![PathBuf::from("jobs")]
    } else {
        select.paths.clone()
    };
    let opts = PlanOptions {
        vars: select.vars.clone(),
        backend_override: select.backend,
        filters: select.filters.clone(),
        shard: select.shard,
    };
    match llm_sandbox::plan::plan_paths(&paths, &opts) {
        Ok(p) => {
            for w in &p.warnings {
                eprintln!("warning: {w}");
            }
            Some(p)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e:?}");
            }
            eprintln!("error: {} problem(s) found; nothing was run", errors.len());
            None
        }
    }
}

/// The backends of the plan's jobs, in order of first use.
fn backends_used(plan: &Plan) -> Vec<BackendKind> {
    let mut v = Vec::new();
    for j in plan.jobs.iter().filter(|j| j.skip.is_none()) {
        if !v.contains(&j.backend) {
            v.push(j.backend);
        }
    }
    v
}

/// Batches: jobs sharing a prepared environment (backend, image, libraries, setup).
fn batches(plan: &Plan) -> Vec<(String, Vec<&PlannedJob>)> {
    let mut out: Vec<(String, Vec<&PlannedJob>)> = Vec::new();
    for j in &plan.jobs {
        let env = match j.backend {
            BackendKind::Native => format!("native/{}", j.lang),
            b => format!(
                "{b}/{}",
                j.dockerfile
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .or_else(|| j.image.clone())
                    .unwrap_or_else(|| llm_sandbox::lang::spec(j.lang).default_image.to_string())
            ),
        };
        let mut key = env;
        if !j.libraries.is_empty() {
            key.push_str(&format!(" +libraries[{}]", j.libraries.join(",")));
        }
        if !j.setup.is_empty() {
            key.push_str(&format!(" +setup[{}]", j.setup.len()));
        }
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(j),
            None => out.push((key, vec![j])),
        }
    }
    out
}

/// One job of `plan --format json` (borrowed: the output streams, nothing is copied).
#[derive(serde::Serialize)]
struct PlanJobView<'a> {
    id: usize,
    name: &'a str,
    file: std::borrow::Cow<'a, str>,
    lang: llm_sandbox::Lang,
    backend: BackendKind,
    image: &'a Option<String>,
    timeout_ms: u64,
    limits: &'a llm_sandbox::plan::job::ResolvedLimits,
    network: bool,
    group: &'a Option<String>,
    tags: &'a [String],
    skip: &'a Option<String>,
    args: &'a [String],
    stdin: &'a Option<String>,
    env: indexmap::IndexMap<&'a str, &'a str>,
    files: Vec<&'a str>,
    artifacts: &'a [String],
    code: &'a str,
    expect: &'a llm_sandbox::plan::job::ResolvedExpect,
}

#[derive(serde::Serialize)]
struct BatchView<'a> {
    key: &'a str,
    backend: BackendKind,
    jobs: Vec<&'a str>,
}

#[derive(serde::Serialize)]
struct PlanView<'a> {
    files: Vec<std::borrow::Cow<'a, str>>,
    total: usize,
    concurrency: serde_json::Value,
    batches: Vec<BatchView<'a>>,
    #[serde(serialize_with = "serialize_jobs")]
    jobs: &'a [PlannedJob],
}

fn serialize_jobs<S: serde::Serializer>(jobs: &&[PlannedJob], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(jobs.iter().map(|j| {
        PlanJobView {
            id: j.id,
            name: &j.name,
            file: j.file.to_string_lossy(),
            lang: j.lang,
            backend: j.backend,
            image: &j.image,
            timeout_ms: j.timeout.as_millis() as u64,
            limits: &j.limits,
            network: j.network,
            group: &j.group,
            tags: &j.tags,
            skip: &j.skip,
            args: &j.args,
            stdin: &j.stdin,
            env: j
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            files: j.files.iter().map(|f| f.dest.as_str()).collect(),
            artifacts: &j.artifacts,
            code: &j.code,
            expect: &j.expect,
        }
    }))
}

fn print_plan(plan: &Plan, format: Format, opts: &RunOptions) {
    use std::io::Write;
    let batches = batches(plan);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    if format == Format::Json {
        let view = PlanView {
            files: plan.files.iter().map(|f| f.to_string_lossy()).collect(),
            total: plan.jobs.len(),
            concurrency: backends_used(plan)
                .into_iter()
                .map(|b| (b.to_string(), serde_json::json!(opts.jobs_for(b))))
                .collect(),
            batches: batches
                .iter()
                .map(|(k, js)| BatchView {
                    key: k,
                    backend: js[0].backend,
                    jobs: js.iter().map(|j| j.name.as_str()).collect(),
                })
                .collect(),
            jobs: &plan.jobs,
        };
        let _ = serde_json::to_writer_pretty(&mut out, &view);
        let _ = writeln!(out);
        let _ = out.flush();
        return;
    }
    let limits: Vec<String> = backends_used(plan)
        .into_iter()
        .map(|b| format!("{b} runs {} at a time", opts.jobs_for(b)))
        .collect();
    let _ = writeln!(
        out,
        "{} job(s) from {} file(s), {} batch(es); {}",
        plan.jobs.len(),
        plan.files.len(),
        batches.len(),
        if limits.is_empty() {
            "nothing to run".to_string()
        } else {
            limits.join(", ")
        }
    );
    for (key, js) in &batches {
        let _ = writeln!(out, "\nbatch {key} ({} job(s))", js.len());
        for j in js {
            let mut extra = String::new();
            if let Some(g) = &j.group {
                extra.push_str(&format!(" group={g}"));
            }
            if let Some(s) = &j.skip {
                extra.push_str(&format!(" skip={s:?}"));
            }
            let _ = writeln!(
                out,
                "  {:<40} {:<10} {} timeout={}{}",
                j.name,
                j.lang.as_str(),
                j.file.display(),
                llm_sandbox::spec::units::format_duration(j.timeout),
                extra
            );
        }
    }
    let _ = out.flush();
}

async fn run(plan: Plan, args: &RunArgs) -> i32 {
    let cancel = CancellationToken::new();
    {
        let c1 = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: stopping the running sandboxes and writing the reports of what finished");
                c1.cancel();
            }
        });
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                if s.recv().await.is_some() {
                    cancel.cancel();
                }
            }
        });
    }
    let opts = args.run_options();
    // The journal of this job set (and shard): results as they finish, for --resume; the
    // reports are written from it.
    let set = match plan.shard {
        Some(s) => format!("{}-shard-{}-of-{}", plan.job_set, s.index, s.count),
        None => plan.job_set.clone(),
    };
    let journal_path = llm_sandbox::run::journal::path_of(Path::new(".llm-sandbox"), &set);
    let existed = journal_path.exists();
    llm_sandbox::run::journal::prune(&journal_path);
    let journal = match llm_sandbox::run::Journal::open(&journal_path, args.resume) {
        Ok(j) => j,
        Err(e) => {
            eprintln!(
                "warning: cannot write the journal {} ({e}): this run cannot be resumed",
                journal_path.display()
            );
            match llm_sandbox::run::Journal::temporary() {
                Ok(j) => j,
                Err(e) => {
                    eprintln!("error: cannot create a temporary file for the results: {e}");
                    return exit_codes::JOBS_FAILED;
                }
            }
        }
    };
    let mut plan = plan;
    for (i, j) in plan.jobs.iter_mut().enumerate() {
        j.id = i;
    }
    let mut results = llm_sandbox::run::Results::new(journal, &plan.jobs);
    let resumed = if args.resume {
        resume(&plan, &mut results, existed)
    } else {
        None
    };
    let (ran, interrupted) = match execute(&plan, &opts, args, &cancel, &mut results, resumed).await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit_codes::JOBS_FAILED;
        }
    };
    // The reports hold every job (those `--resume` kept too), read back from the journal.
    let jobs = results.jobs();
    let report = run_report(&plan, &results.tally, &ran, Streamed(&jobs), args);
    // Kept for `--rerun-failed` without a REPORT.
    if let Err(e) = std::fs::create_dir_all(".llm-sandbox")
        .and_then(|_| llm_sandbox::report::json::write_json(&report, LAST_REPORT))
    {
        tracing::warn!("cannot keep the report in {LAST_REPORT}: {e}");
    }
    let mut code = if results.tally.all_ok() {
        exit_codes::OK
    } else {
        exit_codes::JOBS_FAILED
    };
    if !write_reports(&report, &args.reports) {
        code = exit_codes::JOBS_FAILED;
    }
    if interrupted {
        return exit_codes::INTERRUPTED;
    }
    code
}

/// When a run started, and how long it took.
struct Ran {
    started_at: chrono::DateTime<chrono::Utc>,
    duration_ms: u64,
}

/// The report of a run of `plan`: counted by `tally`, its jobs `jobs`.
fn run_report<J>(
    plan: &Plan,
    tally: &llm_sandbox::report::Tally,
    ran: &Ran,
    jobs: J,
    args: &RunArgs,
) -> llm_sandbox::Report<J> {
    let mut report = llm_sandbox::report::json::report_of(
        tally,
        ran.started_at,
        ran.duration_ms,
        jobs,
        args.pass_at.as_deref(),
    );
    report.job_set = Some(plan.job_set.clone()).filter(|s| !s.is_empty());
    report.shard = plan.shard.map(|s| s.to_string());
    report
}

/// Runs the jobs of `plan` that have no result in `results` yet: each job's line on stderr
/// as it finishes (with why, for those that did not pass), then the summary (of `resumed`
/// too). Returns when it ran and whether `cancel` interrupted it; Err when the runner
/// itself could not start, or lost results.
async fn execute(
    plan: &Plan,
    opts: &RunOptions,
    args: &RunArgs,
    cancel: &CancellationToken,
    results: &mut llm_sandbox::run::Results,
    resumed: Option<llm_sandbox::run::journal::Resumed>,
) -> Result<(Ran, bool), String> {
    let started_at = chrono::Utc::now();
    let t0 = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let mut reporter = TerminalReporter::stderr(args.quiet, args.no_progress, args.pass_at.clone());
    // Under GitHub Actions, failures are also workflow annotations (on stderr, which the
    // runner reads too: stdout may carry a report).
    let github = llm_sandbox::report::github::enabled();
    let printer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if let (true, Event::JobFinished { report, .. }) = (github, &ev) {
                if let Some(a) = llm_sandbox::report::github::annotation(report) {
                    eprintln!("{a}");
                }
            }
            reporter.handle(&ev);
        }
        reporter
    });
    if let Some(r) = resumed {
        let _ = tx.send(Event::Resumed {
            tally: r.tally,
            not_passed: r.not_passed,
        });
    }
    let outcome =
        llm_sandbox::run::run_plan_into(plan, opts, tx.clone(), cancel.clone(), results).await;
    let duration_ms = t0.elapsed().as_millis() as u64;
    let interrupted = cancel.is_cancelled();
    let _ = tx.send(Event::RunFinished {
        duration_ms,
        interrupted,
    });
    drop(tx);
    let _ = printer.await;
    outcome.map_err(|e| e.to_string())?;
    Ok((
        Ran {
            started_at,
            duration_ms,
        },
        interrupted,
    ))
}

/// `--resume`: takes the results the journal of this job set already has (matched by what
/// decides their outcome: `run::journal::Keys`) as theirs. Says what it found: how many are
/// done, which jobs are new or changed since.
fn resume(
    plan: &Plan,
    results: &mut llm_sandbox::run::Results,
    existed: bool,
) -> Option<llm_sandbox::run::journal::Resumed> {
    let path = results.journal.path.clone();
    if !existed {
        eprintln!(
            "--resume: no journal of this job set ({} does not exist): running every job",
            path.display()
        );
        return None;
    }
    let r = match results.resume(&plan.jobs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "--resume: cannot read the journal {} ({e}): running every job",
                path.display()
            );
            return None;
        }
    };
    if r.bad > 0 {
        eprintln!(
            "warning: --resume: skipped {} unreadable line(s) of {} (a run killed while writing one?)",
            r.bad,
            path.display()
        );
    }
    let kept = r.tally.summary.total;
    let run = plan.jobs.len() - kept;
    let shown: Vec<&str> = r.changed.iter().take(10).map(String::as_str).collect();
    eprintln!(
        "--resume: {kept} of {} jobs have a result in {}; running {run}{}{}",
        plan.jobs.len(),
        path.display(),
        if r.changed.is_empty() {
            String::new()
        } else {
            format!(
                "; changed since: {}{}",
                shown.join(", "),
                if r.changed.len() > shown.len() {
                    format!(" and {} more", r.changed.len() - shown.len())
                } else {
                    String::new()
                }
            )
        },
        if r.new > 0 && (kept > 0 || !r.changed.is_empty()) {
            format!("; {} not run before", r.new)
        } else {
            String::new()
        }
    );
    Some(r)
}

/// Where every `run` keeps its JSON report, for `--rerun-failed` without a REPORT.
const LAST_REPORT: &str = ".llm-sandbox/last-report.json";

/// `--rerun-failed [REPORT]`: keeps the planned jobs that did not pass in REPORT (failed,
/// timed out, errors, and those an interrupted run never started). Returns how many.
fn only_failed(plan: &mut Plan, from: &str) -> Result<usize, String> {
    let path = if from.is_empty() { LAST_REPORT } else { from };
    let text = std::fs::File::open(path).map_err(|e| {
        if from.is_empty() {
            format!("--rerun-failed: no report of a last run ({LAST_REPORT}: {e}); run the jobs first, or give a report: --rerun-failed REPORT.json")
        } else {
            format!("--rerun-failed: cannot read {path}: {e}")
        }
    })?;
    // Only what says whether a job passed is read (a report's outputs can be large).
    #[derive(serde::Deserialize)]
    struct Job {
        name: String,
        status: llm_sandbox::Status,
        #[serde(default)]
        message: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Jobs {
        jobs: Vec<Job>,
    }
    let report: Jobs = serde_json::from_reader(std::io::BufReader::new(text))
        .map_err(|e| format!("--rerun-failed: {path} is not an llm-sandbox JSON report: {e}"))?;
    let not_run =
        |j: &Job| llm_sandbox::report::model::never_started(j.status, j.message.as_deref());
    let failed: std::collections::HashSet<&str> = report
        .jobs
        .iter()
        .filter(|j| !j.status.is_ok() || not_run(j))
        .map(|j| j.name.as_str())
        .collect();
    // (run() numbers the jobs left.)
    plan.jobs.retain(|j| failed.contains(j.name.as_str()));
    let gone = failed.len() - plan.jobs.len();
    eprintln!(
        "--rerun-failed: {} of the {} jobs that did not pass in {path}{}",
        plan.jobs.len(),
        failed.len(),
        if gone > 0 {
            format!(" ({gone} are not in the selected job files any more)")
        } else {
            String::new()
        }
    );
    if failed.is_empty() {
        eprintln!("nothing to rerun: every job of {path} passed");
    }
    Ok(plan.jobs.len())
}

/// `llm-sandbox merge`: reads the shards' reports, checks that they are of one job set and
/// one report version and that no job is in two of them, and writes one report.
fn merge(paths: &[PathBuf], dests: &Dests, pass_at: Option<Vec<usize>>) -> i32 {
    use llm_sandbox::report::json::REPORT_VERSION;
    if let Err(e) = dests.one_on_stdout() {
        eprintln!("error: {e}");
        return exit_codes::BAD_INPUT;
    }
    let mut reports = Vec::new();
    for p in paths {
        let read = std::fs::read(p).map_err(|e| e.to_string()).and_then(|b| {
            serde_json::from_slice::<llm_sandbox::Report>(&b).map_err(|e| {
                format!("not an llm-sandbox JSON report ({e}); give the files of `run --json FILE`")
            })
        });
        match read {
            Ok(r) if r.version != REPORT_VERSION => {
                eprintln!(
                    "error: {}: report version {}, this llm-sandbox reads version {REPORT_VERSION}; merge reports of one llm-sandbox version",
                    p.display(),
                    r.version
                );
                return exit_codes::BAD_INPUT;
            }
            Ok(r) => reports.push((p, r)),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return exit_codes::BAD_INPUT;
            }
        }
    }
    let (first_path, first) = &reports[0];
    for (p, r) in &reports[1..] {
        if r.job_set != first.job_set {
            eprintln!(
                "error: {} and {} are reports of different job sets ({} and {}): merge the shards of one `run` (same files, filters and variables)",
                first_path.display(),
                p.display(),
                first.job_set.as_deref().unwrap_or("unknown"),
                r.job_set.as_deref().unwrap_or("unknown")
            );
            return exit_codes::BAD_INPUT;
        }
    }
    let mut seen: std::collections::HashMap<String, &PathBuf> = Default::default();
    for (p, r) in &reports {
        for j in &r.jobs {
            if let Some(other) = seen.insert(j.name.clone(), p) {
                eprintln!(
                    "error: job `{}` is in both {} and {}: each job must be in one shard (the same shard given twice?)",
                    j.name,
                    other.display(),
                    p.display()
                );
                return exit_codes::BAD_INPUT;
            }
        }
    }
    let ks: Option<Vec<usize>> = pass_at.or_else(|| {
        first
            .pass_at
            .as_ref()
            .map(|m| m.keys().filter_map(|k| k.parse().ok()).collect())
    });
    let started = reports
        .iter()
        .filter_map(|(_, r)| chrono::DateTime::parse_from_rfc3339(&r.started_at).ok())
        .min()
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(chrono::Utc::now);
    let duration_ms = reports
        .iter()
        .map(|(_, r)| r.duration_ms)
        .max()
        .unwrap_or(0);
    let job_set = first.job_set.clone();
    let mut jobs: Vec<llm_sandbox::JobReport> =
        reports.into_iter().flat_map(|(_, r)| r.jobs).collect();
    // The unsharded run's order: by job file, then the job's line, then name.
    jobs.sort_by(|a, b| (&a.file, a.line, &a.name).cmp(&(&b.file, b.line, &b.name)));
    let mut report =
        llm_sandbox::report::json::build_report(started, duration_ms, jobs, ks.as_deref());
    report.job_set = job_set;
    let s = &report.summary;
    eprintln!(
        "merged {} reports: {} jobs: {} passed, {} failed, {} timeout, {} error, {} skipped{}",
        paths.len(),
        s.total,
        s.passed,
        s.failed,
        s.timeout,
        s.error,
        s.skipped,
        report
            .pass_at
            .as_ref()
            .map(|m| m
                .iter()
                .map(|(k, v)| format!("; pass@{k} {v:.3}"))
                .collect::<String>())
            .unwrap_or_default()
    );
    if !write_reports(&report, dests) {
        return exit_codes::JOBS_FAILED;
    }
    if report.jobs.iter().all(|j| j.status.is_ok()) {
        exit_codes::OK
    } else {
        exit_codes::JOBS_FAILED
    }
}

/// Where the reports go: `--json`, `--junit`, `--html` (a file, `-` for stdout), on `run`,
/// `watch` and `merge`.
#[derive(clap::Args, Debug, Clone, Default)]
struct Dests {
    /// Write the JSON report to FILE (- for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// Write the JUnit XML report to FILE (- for stdout).
    #[arg(long, value_name = "FILE")]
    junit: Option<String>,
    /// Write a self-contained HTML report to FILE (- for stdout).
    #[arg(long, value_name = "FILE")]
    html: Option<String>,
}

impl Dests {
    /// At most one report on stdout.
    fn one_on_stdout(&self) -> Result<(), String> {
        let on_stdout: Vec<&str> = [
            ("--json -", &self.json),
            ("--junit -", &self.junit),
            ("--html -", &self.html),
        ]
        .into_iter()
        .filter(|(_, d)| d.as_deref() == Some("-"))
        .map(|(flag, _)| flag)
        .collect();
        if on_stdout.len() > 1 {
            return Err(format!(
                "{} would all write to stdout: give all but one of them a file (e.g. --junit report.xml)",
                on_stdout.join(" and ")
            ));
        }
        Ok(())
    }
}

/// Writes the reports `dests` asks for; false (and why, on stderr) when one could not be
/// written.
fn write_reports<J: Jobs + serde::Serialize>(
    report: &llm_sandbox::Report<J>,
    dests: &Dests,
) -> bool {
    use llm_sandbox::report::{html, json, junit};
    let mut ok = true;
    let mut write = |what: &str, dest: Option<&str>, f: &dyn Fn(&str) -> std::io::Result<()>| {
        if let Some(dest) = dest {
            if let Err(e) = f(dest) {
                eprintln!("error: cannot write the {what} report to {dest}: {e}");
                ok = false;
            }
        }
    };
    write("JSON", dests.json.as_deref(), &|d| {
        json::write_json(report, d)
    });
    write("JUnit", dests.junit.as_deref(), &|d| {
        junit::write_junit(report, d)
    });
    write("HTML", dests.html.as_deref(), &|d| {
        html::write_html(report, d)
    });
    ok
}

async fn exec(
    lang: Option<Lang>,
    backend: Option<BackendKind>,
    code: Option<String>,
    file: Option<PathBuf>,
    timeout: std::time::Duration,
    network: bool,
    args: Vec<String>,
) -> i32 {
    // `-`: the program comes from stdin, so the program itself gets none.
    let program_on_stdin = file.as_ref().is_some_and(|f| f.as_os_str() == "-");
    let lang = match lang.or_else(|| file.as_deref().and_then(llm_sandbox::lang::by_extension)) {
        Some(l) => l,
        None => {
            eprintln!(
                "error: give the language with --lang ({}){}",
                Lang::ALL.map(|l| l.as_str()).join(", "),
                match &file {
                    Some(f) if f.as_os_str() != "-" =>
                        format!(": the extension of {} names none", f.display()),
                    _ => String::new(),
                }
            );
            return exit_codes::BAD_INPUT;
        }
    };
    let code = match (code, file) {
        (Some(c), _) => c,
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                eprintln!("error: cannot read the program from standard input: {e}");
                return exit_codes::BAD_INPUT;
            }
            s
        }
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", f.display());
                return exit_codes::BAD_INPUT;
            }
        },
        (None, None) => {
            eprintln!("error: give the program with -c CODE, a FILE, or - for standard input");
            return exit_codes::BAD_INPUT;
        }
    };
    let backend = backend.unwrap_or_default();
    if backend != BackendKind::Native {
        // Containers and pods: through a library session of the backend.
        let mut job = llm_sandbox::plan::job::PlannedJob::adhoc(lang, code, args, timeout, network);
        job.backend = backend;
        return exec_engine(&job, !program_on_stdin).await;
    }
    let job = llm_sandbox::plan::job::PlannedJob::adhoc(lang, code, args, timeout, network);
    let dir = match RunDir::create() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot create a temporary directory: {e}");
            return exit_codes::JOBS_FAILED;
        }
    };
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
    }
    let outcome =
        llm_sandbox::backend::native::exec_inherit(&job, &dir.path.join("exec"), &cancel).await;
    drop(dir);
    match outcome {
        Err(e) => {
            let e = e.to_string().replace(
                llm_sandbox::lang::DOCKER_HINT,
                llm_sandbox::lang::DOCKER_HINT_CLI,
            );
            eprintln!("error: {e}");
            125
        }
        Ok(o) => {
            if std::env::var_os("LLM_SANDBOX_DEBUG").is_some() {
                eprintln!("llm-sandbox: wall {:?}; {:?}", o.wall, o.msgs);
            }
            if o.cancelled {
                eprintln!("llm-sandbox: interrupted; the sandbox was stopped");
                return exit_codes::INTERRUPTED;
            }
            let report = llm_sandbox::backend::native::to_report(&job, &o);
            use llm_sandbox::Status;
            match report.status {
                Status::Passed | Status::Failed
                    if report.phase == Some(llm_sandbox::report::model::Phase::Run) =>
                {
                    if let Some(m) = report
                        .message
                        .as_ref()
                        .filter(|_| report.signal.is_some() || o.output_limit_hit)
                    {
                        eprintln!("llm-sandbox: {m}");
                    }
                    report.exit_code.unwrap_or(128 + report.signal.unwrap_or(9))
                }
                Status::Timeout => {
                    eprintln!("llm-sandbox: {}", report.message.unwrap_or_default());
                    124
                }
                _ => {
                    if !report.stderr.is_empty() {
                        eprint!("{}", report.stderr);
                    }
                    eprintln!(
                        "llm-sandbox: {}",
                        report
                            .message
                            .unwrap_or_else(|| "the program could not run".into())
                    );
                    if report.phase == Some(llm_sandbox::report::model::Phase::Compile) {
                        1
                    } else {
                        125
                    }
                }
            }
        }
    }
}

/// `exec` on a container engine or a cluster: the program's stdout and stderr are written
/// to ours as they come (a pod's when it ends), our stdin is forwarded to it (unless the
/// program itself came from stdin), and its exit status becomes ours (124 on timeout,
/// 128+N for signal N, 130 on Ctrl-C, which removes the container or pod).
async fn exec_engine(job: &PlannedJob, forward_stdin: bool) -> i32 {
    use llm_sandbox::StdStream;
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
    }
    let stdin = forward_stdin.then(|| {
        // A plain thread: a blocking read of a terminal must not hold up the runtime's
        // shutdown (the process exits with it still blocked).
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let _ = std::thread::Builder::new()
            .name("exec-stdin".into())
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                let mut input = std::io::stdin();
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.blocking_send(buf[..n].to_vec()).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        rx
    });
    let (tx, mut rx) = llm_sandbox::stream::channel();
    let printer = async move {
        use std::io::Write;
        while let Some(c) = rx.recv().await {
            // Plain blocking writes: a terminal takes them at once, and a slow reader
            // should slow the program down. A closed stdout (`| head`) does not stop the
            // program (on native it gets SIGPIPE itself).
            let _ = match c.stream {
                StdStream::Stdout => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&c.data).and_then(|()| o.flush())
                }
                StdStream::Stderr => std::io::stderr().lock().write_all(&c.data),
            };
        }
    };
    let (r, ()) = tokio::join!(
        llm_sandbox::session::exec_job(job, stdin, tx, &cancel),
        printer
    );
    let end = match r {
        Ok(end) => end,
        Err(e) => {
            eprintln!("error: {e}");
            return 125;
        }
    };
    if end.cancelled {
        eprintln!("llm-sandbox: interrupted; the container was removed");
        return exit_codes::INTERRUPTED;
    }
    let o = end.output;
    if let Some(log) = &o.compile_output {
        eprint!("{log}");
        if o.timed_out {
            eprintln!("llm-sandbox: compilation timed out");
        } else {
            match o.exit_code {
                Some(c) => eprintln!("llm-sandbox: compilation failed (exit code {c})"),
                None => eprintln!("llm-sandbox: compilation failed"),
            }
        }
        return 1;
    }
    if o.timed_out {
        eprintln!(
            "llm-sandbox: timed out after {:?} (wall clock); the container was killed",
            job.timeout
        );
        return 124;
    }
    if let Some(sig) = o.signal {
        eprintln!(
            "llm-sandbox: the program was killed by signal {sig} ({})",
            llm_sandbox::backend::native::signal_name(sig)
        );
    }
    match o.exit_code {
        Some(code) => code,
        None => {
            eprintln!("llm-sandbox: the program's exit status is unknown");
            125
        }
    }
}
