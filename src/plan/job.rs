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
        }
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
            backends: Arc::new(Default::default()),
            deps: Arc::new(vec![]),
        }
    }
}
