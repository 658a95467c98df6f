//! A concrete job: defaults merged, matrix/dataset expanded, templates rendered, paths
//! resolved. This is what the runner and every backend consume.

use crate::spec::types::{BackendKind, Lang};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Resolved limits of the run step (defaults filled in).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedLimits {
    pub memory: u64,
    pub cpus: f64,
    pub pids: u64,
    pub output: u64,
    pub disk: u64,
    pub open_files: u64,
    /// CPU time of the run step's processes, if limited ([`ResolvedLimits::cpu_limit_ms`]).
    pub cpu_time: Option<Duration>,
}

impl Default for ResolvedLimits {
    fn default() -> Self {
        ResolvedLimits {
            memory: 512 << 20,
            cpus: 1.0,
            pids: 128,
            output: 1 << 20,
            disk: 64 << 20,
            open_files: 256,
            cpu_time: None,
        }
    }
}

/// The CPU-time limit that only backs up a wall-clock `timeout` (seconds): what every
/// process of a job's sandbox gets where a limit is set once for all its steps.
pub fn wall_cpu_limit_secs(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64).div_ceil(1000) + 1
}

impl ResolvedLimits {
    /// The CPU time the run step's processes may use, in milliseconds: `cpu_time`, or else
    /// the wall-clock `timeout` plus a second (a program busy with a thread or two more than
    /// the wall clock allows is stopped by its timeout; this catches the rest). Every
    /// backend enforces it with RLIMIT_CPU in whole seconds ([`Self::cpu_rlimit_secs`]) and
    /// the report calls a run step whose measured CPU time reached `cpu_time` a timeout.
    pub fn cpu_limit_ms(&self, timeout: Duration) -> u64 {
        match self.cpu_time {
            Some(c) => c.as_millis() as u64,
            None => wall_cpu_limit_secs(timeout) * 1000,
        }
    }

    /// RLIMIT_CPU of the run step's processes (seconds, rounded up).
    pub fn cpu_rlimit_secs(&self, timeout: Duration) -> u64 {
        self.cpu_limit_ms(timeout).div_ceil(1000).max(1)
    }
}

/// An input file to copy into the workdir.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputFile {
    /// Absolute host path of a regular file.
    pub src: PathBuf,
    /// Path relative to `/sandbox` (no `..`, not absolute).
    pub dest: String,
}

/// Checks on a workdir file, rendered and validated.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct FileCheck {
    /// Path relative to `/sandbox`.
    pub path: String,
    pub exists: Option<bool>,
    pub equals: Option<String>,
    pub contains: Vec<String>,
    pub regex: Option<String>,
    pub json: Option<serde_json::Value>,
    pub sha256: Option<String>,
}

/// How an expected `stdout` is compared (README, "Test cases").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compare {
    /// Trailing whitespace of each line and trailing blank lines ignored (the judge
    /// convention).
    #[default]
    Lines,
    /// Byte for byte.
    Exact,
    /// The same whitespace-separated tokens.
    Tokens,
    /// Tokens; two numeric tokens are equal within this absolute or relative difference.
    Float(f64),
}

/// A case's own checks, added to its job's (`None`/empty: the job's hold).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct CaseExpect {
    pub exit_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub stdout_exact: Option<String>,
    pub stdout_contains: Vec<String>,
    pub stderr_contains: Vec<String>,
    pub stdout_regex: Option<String>,
    pub stderr_regex: Option<String>,
}

/// A job's checker program (README, "Test cases").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checker {
    pub lang: Lang,
    pub code: String,
}

/// One test case of a job (README, "Test cases").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Case {
    pub name: String,
    /// Standard input (None: empty).
    pub stdin: Option<String>,
    /// Replaces the job's `args`.
    pub args: Option<Vec<String>>,
    pub expect: CaseExpect,
}

impl ResolvedExpect {
    /// The job's checks with a case's added: a case's value replaces the job's, its lists
    /// add to the job's.
    pub fn with_case(&self, c: &CaseExpect) -> ResolvedExpect {
        let mut e = self.clone();
        if let Some(x) = c.exit_code {
            e.exit_code = x;
        }
        for (mine, theirs) in [
            (&mut e.stdout, &c.stdout),
            (&mut e.stderr, &c.stderr),
            (&mut e.stdout_exact, &c.stdout_exact),
            (&mut e.stdout_regex, &c.stdout_regex),
            (&mut e.stderr_regex, &c.stderr_regex),
        ] {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        e.stdout_contains.extend(c.stdout_contains.iter().cloned());
        e.stderr_contains.extend(c.stderr_contains.iter().cloned());
        e
    }
}

/// Which steps of a job run: all of them, only what makes the program (setup, compile:
/// the build of a job with cases, whose `/sandbox` is kept), or only the run step (a case,
/// its program built before).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    #[default]
    All,
    Build,
    Run,
}

impl Part {
    /// Whether a step of `kind` runs.
    pub fn wants(self, kind: crate::sandbox::StepKind) -> bool {
        use crate::sandbox::StepKind;
        match self {
            Part::All => true,
            Part::Build => kind != StepKind::Run,
            Part::Run => kind == StepKind::Run,
        }
    }
}

/// `expect`, rendered; regexes already validated at plan time.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ResolvedExpect {
    pub exit_code: i32,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub stdout_exact: Option<String>,
    pub stdout_contains: Vec<String>,
    pub stderr_contains: Vec<String>,
    pub stdout_regex: Option<String>,
    pub stderr_regex: Option<String>,
    pub files: Vec<FileCheck>,
    /// How `stdout` is compared.
    pub compare: Compare,
}

/// Per-file backend settings, shared by all jobs of a file.
pub type SharedBackends = Arc<crate::spec::types::BackendsConfig>;

/// One runnable job.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedJob {
    /// Position in the whole plan (0-based, stable: files in sorted order, jobs in file order).
    pub id: usize,
    pub name: String,
    /// The job file, as given on the command line (relative when it was relative).
    pub file: PathBuf,
    /// The 1-based line of its entry in the job file (its `name`), when known.
    pub line: Option<usize>,
    pub lang: Lang,
    pub backend: BackendKind,
    /// Explicit image (None: the language's default for container backends).
    pub image: Option<String>,
    /// Absolute path of the Dockerfile.
    pub dockerfile: Option<PathBuf>,
    pub keep_template: bool,
    pub libraries: Vec<String>,
    pub setup: Vec<String>,
    pub files: Vec<InputFile>,
    /// The program's source text.
    pub code: String,
    pub args: Vec<String>,
    pub stdin: Option<String>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub limits: ResolvedLimits,
    pub network: bool,
    pub artifacts: Vec<String>,
    pub expect: ResolvedExpect,
    /// Rendered group key, when the job has a `group`.
    pub group: Option<String>,
    pub tags: Vec<String>,
    /// Some(reason) when the job is skipped.
    pub skip: Option<String>,
    pub pod_manifest: Option<serde_json::Value>,
    /// Test cases: the program is built once and run once per case (README, "Test
    /// cases"); empty: the job runs once.
    pub cases: Vec<Case>,
    pub cases_stop: crate::spec::types::CasesStop,
    /// Judges each case's output (`checker INPUT OUTPUT ANSWER`).
    pub checker: Option<Checker>,
    /// Talks with the program of each case and decides it (`interactor INPUT OUTPUT
    /// [ANSWER]`, README "Test cases").
    pub interactor: Option<Checker>,
    /// Which of its steps run (a job with cases is run as its build, then its cases).
    pub part: Part,
    #[serde(skip)]
    pub backends: SharedBackends,
    /// What the job reads from disk (job file, program, dataset, inputs, Dockerfile and
    /// its context), for `watch`; shared by the rows of one `[[jobs]]` entry.
    #[serde(skip)]
    pub deps: Arc<Vec<super::deps::Dep>>,
}

impl PlannedJob {
    /// A one-off job (`exec`, the MCP server): defaults everywhere, no checks but exit 0.
    pub fn adhoc(
        lang: Lang,
        code: String,
        args: Vec<String>,
        timeout: Duration,
        network: bool,
    ) -> PlannedJob {
        PlannedJob {
            id: 0,
            name: "exec".into(),
            file: PathBuf::from("<exec>"),
            line: None,
            lang,
            backend: BackendKind::Native,
            image: None,
            dockerfile: None,
            keep_template: false,
            libraries: vec![],
            setup: vec![],
            files: vec![],
            code,
            args,
            stdin: None,
            env: vec![],
            timeout,
            limits: ResolvedLimits::default(),
            network,
            artifacts: vec![],
            expect: ResolvedExpect::default(),
            group: None,
            tags: vec![],
            skip: None,
            pod_manifest: None,
            cases: vec![],
            cases_stop: Default::default(),
            checker: None,
            interactor: None,
            part: Part::All,
            backends: Arc::new(Default::default()),
            deps: Arc::new(vec![]),
        }
    }
}
