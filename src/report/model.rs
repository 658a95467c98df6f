//! The report data model (SPEC §4): what the runner produces for each job and run.
//! `schemas/report.schema.json` is generated from these types.

use crate::spec::types::{BackendKind, Lang};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// SPEC §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed,
    Timeout,
    Error,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Error => "error",
            Status::Skipped => "skipped",
        }
    }
    /// Counts as success for the exit code.
    pub fn is_ok(self) -> bool {
        matches!(self, Status::Passed | Status::Skipped)
    }
}

/// Where a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Prepare,
    Compile,
    Run,
}

/// One `expect` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckResult {
    /// e.g. `exit_code`, `stdout`, `stdout_contains`, `file:out.json:json`.
    pub kind: String,
    pub passed: bool,
    pub message: String,
    /// Expected value, when the check compares text (used for diffs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Actual value, when the check compares text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
}

/// The result of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobReport {
    pub name: String,
    pub file: String,
    pub lang: Lang,
    pub backend: BackendKind,
    /// Image or environment the job ran in (`host` for native).
    #[serde(default)]
    pub image: Option<String>,
    pub status: Status,
    /// The phase the job reached (None when skipped).
    #[serde(default)]
    pub phase: Option<Phase>,
    /// Exit code of the last step that ran (None when killed or never started).
    #[serde(default)]
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    /// Why, for error and timeout (and failed when a limit was hit or compilation failed).
    #[serde(default)]
    pub message: Option<String>,
    pub checks: Vec<CheckResult>,
    /// Host paths of the collected artifacts.
    pub artifacts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Signal that ended the program, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub timeout: usize,
    pub error: usize,
    pub skipped: usize,
}

/// pass@k of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupReport {
    pub key: String,
    /// Samples in the group.
    pub n: usize,
    /// Samples that passed.
    pub passed: usize,
    /// k → pass@k (only for k ≤ n).
    pub pass_at: IndexMap<String, f64>,
}

/// The whole JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "llm-sandbox report")]
pub struct Report {
    /// Report format version (1).
    pub version: u32,
    /// RFC 3339 timestamp.
    pub started_at: String,
    pub duration_ms: u64,
    pub summary: Summary,
    pub jobs: Vec<JobReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupReport>>,
    /// k → mean pass@k over groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_at: Option<IndexMap<String, f64>>,
}

/// The one contract between the runner and the reporters (nextest's model).
#[derive(Debug, Clone)]
pub enum Event {
    RunStarted { total: usize },
    JobStarted { id: usize, name: String },
    JobFinished { id: usize, report: Box<JobReport> },
    RunFinished { duration_ms: u64, interrupted: bool },
}
